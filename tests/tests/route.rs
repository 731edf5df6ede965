//! A workstation with no route to the pod network (its default route removed; the API server
//! still reachable on its own link): the helper's loopback aliases make the pods connectable in
//! nat mode; with aliases off, auto takes the epmd mode and nat stops with the fix. Helper as
//! root, everything else as an unprivileged uid; every scenario first shows that a plain
//! connect to the pod fails with "Network is unreachable".

use std::time::{Duration, Instant};

use erlbridge_testbed::events::{self, Event, Mode};
use erlbridge_testbed::{Scenario, User};
use nix::sys::signal::Signal;

const COOKIE: &str = "monster";
const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 2
labels = { app = "app" }
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster", ERL_DIST_PORT = "9100" }
"#;

fn node(s: &Scenario, pod: &str) -> String {
    format!("app@{}", s.cluster.pod(pod).ip())
}

/// What a plain TCP connect to the pod's distribution port gives `user` (epmd's port would
/// reach the workstation's own epmd once the pod IP is a local address).
fn plain_connect(s: &Scenario, user: &User, pod: &str) -> String {
    let ip = s.cluster.pod(pod).ip().replace('.', ",");
    let expr = format!("gen_tcp:connect({{{ip}}}, 9100, [], 3000)");
    s.ws.erl_eval(user, COOKIE, &expr, &[]).expect("local node")
}

fn on_lo(s: &Scenario, ip: &str) -> bool {
    let lo =
        s.ws.ns
            .run(&["ip", "-4", "addr", "show", "dev", "lo"])
            .unwrap_or_default();
    lo.contains(&format!("inet {ip}/32"))
}

fn wait(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn without_a_route_a_loopback_alias_makes_the_pods_reachable_for_their_user_only() {
    let mut s = Scenario::start_with_helper_config(MANIFEST, 61080, "aliases = true");
    s.ws.set_default_route(false).expect("no default route");
    assert_eq!(
        plain_connect(&s, &s.user, "app-0"),
        "{error,enetunreach}",
        "the control"
    );
    let app0 = node(&s, "app-0");
    let ip0 = s.cluster.pod("app-0").ip();

    let (up, ready) = s.up(&["app-0", "--mode", "nat"]);
    assert_eq!(ready.mode, Mode::Nat);
    assert!(ready.nodes.iter().all(|n| n.alias), "{ready:?}");
    assert!(on_lo(&s, &ip0), "the alias is on lo while the bridge runs");
    assert!(s.reaches(COOKIE, &app0), "rpc:call answers");
    let other = User::member(61081);
    assert!(
        plain_connect(&s, &other, "app-0").contains("econnrefused"),
        "another uid's connect is refused, not redirected"
    );
    up.signal(Signal::SIGKILL);
    wait(
        "the alias gone after kill -9",
        Duration::from_secs(1),
        || !on_lo(&s, &ip0),
    );
    s.wait_no_mappings(Duration::from_secs(1));

    // A StatefulSet of two in auto mode, a pod back at a new IP, then a route appearing.
    let (mut up, ready) = s.up(&["statefulset/app"]);
    assert_eq!(
        ready.mode,
        Mode::Nat,
        "auto keeps nat when aliases are allowed"
    );
    assert_eq!(ready.nodes.len(), 2);
    assert!(ready.nodes.iter().all(|n| n.alias), "{ready:?}");
    assert!(s.reaches(COOKIE, &node(&s, "app-1")));
    let old = s.cluster.pod("app-1").ip();
    s.cluster.restart_pod_with_new_ip("app-1").expect("restart");
    let changed = events::wait(&mut up, Duration::from_secs(10), |e| {
        matches!(e, Event::PodChanged { .. })
    });
    let new = s.cluster.pod("app-1").ip();
    assert!(
        matches!(&changed, Event::PodChanged { nodes, .. } if nodes[0].alias && nodes[0].ip.to_string() == new),
        "{changed:?}"
    );
    assert!(
        on_lo(&s, &new) && !on_lo(&s, &old),
        "the old alias went, the new came"
    );
    assert!(s.reaches(COOKIE, &node(&s, "app-1")));
    s.ws.set_default_route(true).expect("a route appears");
    assert!(
        s.reaches(COOKIE, &node(&s, "app-0")),
        "still working once the host has a route; the alias stays"
    );
    assert!(on_lo(&s, &ip0));
    drop(up);
    wait(
        "the aliases gone with the bridge",
        Duration::from_secs(1),
        || !on_lo(&s, &ip0) && !on_lo(&s, &new),
    );
}

#[test]
fn with_aliases_off_auto_takes_the_epmd_mode_and_nat_stops_with_the_fix() {
    let s = Scenario::start(MANIFEST, 61082);
    s.ws.set_default_route(false).expect("no default route");
    assert_eq!(
        plain_connect(&s, &s.user, "app-0"),
        "{error,enetunreach}",
        "the control"
    );
    let app0 = node(&s, "app-0");
    let ip0 = s.cluster.pod("app-0").ip();

    let (mut up, ready) = s.up(&["app-0"]);
    assert_eq!(ready.mode, Mode::Epmd);
    let said = up.seen().join("\n");
    assert!(
        said.contains(&format!(
            "using mode epmd: no route to {ip0} on this host, and erlbridge-helperd may not add loopback aliases"
        )),
        "{said}"
    );
    let flags = ready.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let call =
        format!("{{net_kernel:connect_node('{app0}'), rpc:call('{app0}', erlang, node, [])}}");
    assert_eq!(s.local(COOKIE, &call, &flags), format!("{{true,'{app0}'}}"));
    assert_eq!(s.mappings(), 0);
    up.signal(Signal::SIGTERM);
    up.wait_exit(Duration::from_secs(5)).expect("ends");

    let (code, out, err) = s.run(
        &s.user,
        "up",
        &["app-0", "--mode", "nat", "--output", "json"],
    );
    assert_eq!(code, 10, "{out}{err}");
    let said = events::all(&out);
    assert!(
        !said.iter().any(|e| matches!(e, Event::Ready { .. })),
        "it fails before ready: {out}"
    );
    assert!(
        said.iter()
            .any(|e| matches!(e, Event::Error { code: 10, kind, message }
            if kind == "no_route"
                && message.contains(&format!("no route to {ip0} on this host"))
                && message.contains("add a route toward 10.0.0.0/8")
                && message.contains("`aliases = true` in helperd.toml")
                && message.contains("--mode epmd"))),
        "{out}"
    );
    assert_eq!(s.mappings(), 0, "nothing left behind");
    assert!(!on_lo(&s, &ip0));

    // doctor says the same, by the same decision.
    for (mode, code, expect) in [
        ("auto", 0, "epmd, because no route to"),
        ("nat", 1, "nat (--mode nat)"),
    ] {
        let (got, out, err) = s.run(
            &s.user,
            "doctor",
            &["app-0", "--mode", mode, "--output", "json"],
        );
        assert_eq!(got, code, "{mode}: {out}{err}");
        let checks = events::all(&out);
        assert!(
            checks.iter().any(|e| matches!(e, Event::Check { check, detail, .. } if check == "mode" && detail.starts_with(expect))),
            "{mode}: {out}"
        );
        if mode == "nat" {
            assert!(
                checks.iter().any(
                    |e| matches!(e, Event::Check { check, ok: false, fix: Some(fix), .. }
                    if check == "route" && fix.contains("aliases = true"))
                ),
                "{out}"
            );
        }
    }
}
