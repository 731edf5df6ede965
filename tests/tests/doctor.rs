//! `erlbridge status` and `erlbridge doctor` on the test cluster: what they report on a healthy
//! setup, and each doctor check failing for its own reason, with its fix and exit code.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use erlbridge_kube_emulator::Access;
use erlbridge_testbed::events::{self, Event};
use erlbridge_testbed::{Scenario, User};
use nix::sys::signal::Signal;

const MANIFEST: &str = r#"
[[pods]]
name = "app-0"
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster" }
"#;

/// One check as doctor reported it.
#[derive(Debug)]
struct Check {
    ok: bool,
    detail: String,
    fix: Option<String>,
}

/// `erlbridge doctor app-0 --output json` as `user`: exit code and checks by name.
fn doctor(
    s: &Scenario,
    user: &User,
    kubeconfig: &std::path::Path,
) -> (i32, BTreeMap<String, Check>) {
    doctor_for(s, user, kubeconfig, "auto")
}

/// The same for `--mode MODE`.
fn doctor_for(
    s: &Scenario,
    user: &User,
    kubeconfig: &std::path::Path,
    mode: &str,
) -> (i32, BTreeMap<String, Check>) {
    let kc = kubeconfig.display().to_string();
    let (code, out, err) = s.run(
        user,
        "doctor",
        &[
            "app-0",
            "--kubeconfig",
            &kc,
            "--output",
            "json",
            "--mode",
            mode,
        ],
    );
    let events = events::all(&out);
    assert!(
        matches!(events.last(), Some(Event::Summary { .. })),
        "{out}{err}"
    );
    let checks = events
        .into_iter()
        .filter_map(|e| match e {
            Event::Check {
                check,
                ok,
                detail,
                fix,
            } => Some((check, Check { ok, detail, fix })),
            _ => None,
        })
        .collect();
    (code, checks)
}

/// A check's `detail` or `fix`, as text ("" when absent).
fn text<'a>(checks: &'a BTreeMap<String, Check>, check: &str, key: &str) -> &'a str {
    let check = &checks[check];
    match key {
        "detail" => &check.detail,
        _ => check.fix.as_deref().unwrap_or_default(),
    }
}

fn failing(checks: &BTreeMap<String, Check>) -> Vec<String> {
    checks
        .iter()
        .filter(|(_, c)| !c.ok)
        .map(|(k, _)| k.clone())
        .collect()
}

#[test]
fn doctor_passes_a_healthy_setup_and_names_each_problem_with_its_fix() {
    let mut s = Scenario::start(MANIFEST, 61060);
    let user = s.user.clone();
    let kubeconfig = s.cluster.kubeconfig.clone();
    let (code, checks) = doctor(&s, &user, &kubeconfig);
    assert_eq!(failing(&checks), Vec::<String>::new(), "{checks:?}");
    assert_eq!(code, 0);
    assert_eq!(checks.len(), 11, "{checks:?}");
    for step in ["target", "epmd", "policy"] {
        assert!(checks[step].ok, "{step}: {checks:?}");
    }
    assert!(
        text(&checks, "mode", "detail").starts_with("nat: erlbridge-helperd answers"),
        "{checks:?}"
    );
    assert!(
        text(&checks, "nftables", "detail").contains("nftables v"),
        "{checks:?}"
    );
    assert!(text(&checks, "route", "detail").contains(&s.cluster.pod("app-0").ip()));

    // A caller outside the group: nat fails, auto would use the epmd mode and says why.
    let (code, checks) = doctor(&s, &User::outsider(61061), &kubeconfig);
    assert_eq!(
        (code, failing(&checks)),
        (0, Vec::<String>::new()),
        "{checks:?}"
    );
    assert!(
        text(&checks, "mode", "detail")
            .starts_with("epmd, because you may not use erlbridge-helperd's socket"),
        "{checks:?}"
    );
    assert!(
        !checks.contains_key("route"),
        "the epmd mode needs no route: {checks:?}"
    );
    let (code, checks) = doctor_for(&s, &User::outsider(61061), &kubeconfig, "nat");
    assert_eq!(code, 1);
    assert!(
        failing(&checks).contains(&"helper".to_owned()),
        "{checks:?}"
    );
    assert!(
        text(&checks, "helper", "fix").contains("usermod -aG 61000 <your user>"),
        "{checks:?}"
    );

    // RBAC without port-forwarding.
    s.cluster.emulator.add_token(
        "read-only",
        Access::Only(
            ["get", "list", "watch"]
                .iter()
                .map(|v| ((*v).to_owned(), "pods".to_owned()))
                .collect(),
        ),
    );
    let read_only = s.ws.scratch().join("kubeconfig-read-only");
    std::fs::write(
        &read_only,
        s.cluster.emulator.kubeconfig("read-only", "default"),
    )
    .expect("write");
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, checks) = doctor(&s, &user, &read_only);
    assert_eq!(
        (code, failing(&checks)),
        (1, vec!["epmd".to_owned(), "rbac".to_owned()]),
        "the port-forward to ask the pod's epmd is refused too: {checks:?}"
    );
    assert!(
        text(&checks, "rbac", "detail").contains("create pods/portforward"),
        "{checks:?}"
    );
    assert!(text(&checks, "rbac", "fix").contains("Role"), "{checks:?}");

    // No route toward the pods, and the helper's aliases off: auto would use the epmd mode,
    // nat cannot work and says how to fix it.
    s.ws.set_default_route(false).expect("route");
    let (code, checks) = doctor(&s, &user, &kubeconfig);
    assert_eq!(
        (code, failing(&checks)),
        (0, Vec::<String>::new()),
        "{checks:?}"
    );
    assert!(
        text(&checks, "mode", "detail").starts_with("epmd, because no route to"),
        "{checks:?}"
    );
    let (code, checks) = doctor_for(&s, &user, &kubeconfig, "nat");
    assert_eq!(
        (code, failing(&checks)),
        (1, vec!["route".to_owned()]),
        "{checks:?}"
    );
    assert!(
        text(&checks, "route", "fix").contains("add a route toward 10.0.0.0/8")
            && text(&checks, "route", "fix").contains("aliases = true"),
        "{checks:?}"
    );
    s.ws.set_default_route(true).expect("route");

    // The helper stopped: auto would use the epmd mode; nat cannot work.
    s.helper().stop(Signal::SIGTERM).expect("stop");
    let (code, checks) = doctor(&s, &user, &kubeconfig);
    assert_eq!(code, 0, "{checks:?}");
    assert!(
        text(&checks, "mode", "detail").contains("is not reachable"),
        "{checks:?}"
    );
    let (code, checks) = doctor_for(&s, &user, &kubeconfig, "nat");
    assert_eq!(code, 1);
    assert!(
        failing(&checks).contains(&"helper".to_owned()),
        "{checks:?}"
    );
    assert!(
        text(&checks, "helper", "fix").contains("systemctl enable --now erlbridge-helperd.socket"),
        "{checks:?}"
    );
    assert!(
        checks["kubernetes"].ok,
        "the other checks still run: {checks:?}"
    );
}

#[test]
fn status_shows_the_callers_identity_policy_and_sessions() {
    let s = Scenario::start(MANIFEST, 61060);
    let (_up, _) = s.up(&["app-0"]);

    let (code, out, err) = s.run(&s.user, "status", &["--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let status = |out: &str| match events::all(out).as_slice() {
        [Event::Status(status)] => status.clone(),
        other => panic!("one status event, not {other:?}"),
    };
    let mine = status(&out);
    assert_eq!((mine.caller.uid, mine.caller.allowed), (61060, true));
    assert_eq!(mine.helper.api_version, 1);
    assert_eq!(mine.policy.group, "gid 61000");
    assert_eq!(mine.sessions.len(), 1, "{mine:?}");
    assert_eq!(mine.sessions[0].mappings.len(), 2);
    assert_eq!(mine.sessions[0].label, "erlbridge up pod/app-0");

    // Another user sees none of them; root sees all.
    let other = User::member(61062);
    let (_, out, _) = s.run(&other, "status", &["--output", "json"]);
    assert_eq!(status(&out).sessions.len(), 0);
    let argv = s.erlbridge("status", &[]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let root = s.ws.ns.run(&argv).expect("status as root");
    assert!(root.contains("session 1 of uid 61060"), "{root}");
    assert!(
        root.contains(&format!(
            "{}:4369 -> 127.0.0.1:",
            s.cluster.pod("app-0").ip()
        )),
        "{root}"
    );

    let (code, _, err) = s.run(&s.user, "status", &["--helper-socket", "/nonexistent.sock"]);
    assert_eq!(code, 7);
    assert!(err.contains("is not reachable"), "{err}");
}

#[test]
fn a_helper_that_could_not_start_is_told_apart_from_one_that_is_not_there() {
    let mut s = Scenario::start_without_helper(MANIFEST, 61063);
    s.helperd = Some(
        erlbridge_testbed::Helperd::start_activated(&s.ws, &s.bins, "idle_timeout_seconds = 0")
            .expect("a socket-activated helper with a bad config"),
    );
    let (code, out, err) = s.run(&s.user, "status", &[]);
    assert_eq!(code, 7, "{out}{err}");
    assert!(
        err.contains("the helper could not start: its config")
            && err.contains("is invalid: `idle_timeout_seconds`")
            && err.contains("sudo systemctl restart erlbridge-helperd")
            && err.contains("(see journalctl -u erlbridge-helperd)"),
        "{err}"
    );
    let (code, checks) = doctor_for(&s, &s.user.clone(), &s.cluster.kubeconfig.clone(), "nat");
    assert_eq!(code, 1);
    assert!(
        text(&checks, "helper", "detail").contains("the helper could not start")
            && text(&checks, "helper", "fix").contains("sudo systemctl restart erlbridge-helperd"),
        "{checks:?}"
    );
    // up (auto) goes on in the epmd mode and says why.
    let (code, _, err) = s.run(&s.user, "up", &["app-0", "--", "true"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("using mode epmd: the helper could not start"),
        "{err}"
    );
}
