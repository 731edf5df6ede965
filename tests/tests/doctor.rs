//! `erlbridge status` and `erlbridge doctor` on the test cluster: what they report on a healthy
//! setup, and each doctor check failing for its own reason, with its fix and exit code.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use erlbridge_kube_emulator::Access;
use erlbridge_testbed::{Scenario, User};
use nix::sys::signal::Signal;
use serde_json::Value;

const MANIFEST: &str = r#"
[[pods]]
name = "app-0"
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster" }
"#;

/// `erlbridge doctor app-0 --output json` as `user`: exit code and checks by name.
fn doctor(
    s: &Scenario,
    user: &User,
    kubeconfig: &std::path::Path,
) -> (i32, BTreeMap<String, Value>) {
    let kc = kubeconfig.display().to_string();
    let (code, out, err) = s.run(
        user,
        "doctor",
        &["app-0", "--kubeconfig", &kc, "--output", "json"],
    );
    assert!(out.contains("\"event\":\"summary\""), "{out}{err}");
    let checks = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "check")
        .map(|v| (v["check"].as_str().unwrap_or_default().to_owned(), v))
        .collect();
    (code, checks)
}

/// A check's `detail` or `fix`, as text ("" when absent).
fn text<'a>(checks: &'a BTreeMap<String, Value>, check: &str, key: &str) -> &'a str {
    checks[check][key].as_str().unwrap_or_default()
}

fn failing(checks: &BTreeMap<String, Value>) -> Vec<String> {
    checks
        .iter()
        .filter(|(_, v)| v["ok"] == false)
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
    assert_eq!(checks.len(), 7, "{checks:?}");
    assert!(
        text(&checks, "nftables", "detail").contains("nftables v"),
        "{checks:?}"
    );
    assert!(text(&checks, "route", "detail").contains(&s.cluster.pod("app-0").ip()));

    // A caller outside the group.
    let (code, checks) = doctor(&s, &User::outsider(61061), &kubeconfig);
    assert_eq!(code, 1);
    assert!(
        failing(&checks).contains(&"helper".to_owned()),
        "{checks:?}"
    );
    assert!(
        text(&checks, "helper", "fix").contains("usermod -aG erlbridge"),
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
        (1, vec!["rbac".to_owned()]),
        "{checks:?}"
    );
    assert!(
        text(&checks, "rbac", "detail").contains("create pods/portforward"),
        "{checks:?}"
    );
    assert!(text(&checks, "rbac", "fix").contains("Role"), "{checks:?}");

    // No route toward the pods.
    s.ws.set_default_route(false).expect("route");
    let (code, checks) = doctor(&s, &user, &kubeconfig);
    assert_eq!(
        (code, failing(&checks)),
        (1, vec!["route".to_owned()]),
        "{checks:?}"
    );
    assert!(
        text(&checks, "route", "fix").contains("default route"),
        "{checks:?}"
    );
    s.ws.set_default_route(true).expect("route");

    // The helper stopped.
    s.helperd.stop(Signal::SIGTERM).expect("stop");
    let (code, checks) = doctor(&s, &user, &kubeconfig);
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
        checks["kubernetes"]["ok"] == true,
        "the other checks still run: {checks:?}"
    );
}

#[test]
fn status_shows_the_callers_identity_policy_and_sessions() {
    let s = Scenario::start(MANIFEST, 61060);
    let (_up, _) = s.up(&["app-0"]);

    let (code, out, err) = s.run(&s.user, "status", &["--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(status["caller"]["uid"], 61060);
    assert_eq!(status["caller"]["allowed"], true);
    assert_eq!(status["helper"]["api_version"], 1);
    assert_eq!(status["policy"]["group"], "gid 61000");
    let sessions = status["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{status}");
    assert_eq!(sessions[0]["mappings"].as_array().map(Vec::len), Some(2));
    assert_eq!(sessions[0]["label"], "erlbridge up pod/app-0");

    // Another user sees none of them; root sees all.
    let other = User::member(61062);
    let (_, out, _) = s.run(&other, "status", &["--output", "json"]);
    let theirs: Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(theirs["sessions"].as_array().map(Vec::len), Some(0));
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
