//! erlbridge keeps a bridge working by itself: pods restarting with new IPs, new replicas,
//! forwards dropped by the API server, the API server failing for a while, the helper
//! restarting. Helper as root, client and local node as an unprivileged uid.

use std::time::{Duration, Instant};

use erlbridge_testbed::{Scenario, Spawned};
use nix::sys::signal::Signal;
use serde_json::Value;

const COOKIE: &str = "monster";
const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 3
labels = { app = "app" }
ports = [{ name = "epmd", port = 4369 }]
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster", ERL_DIST_PORT = "9100" }
"#;

/// Waits for a JSON event of kind `event` from erlbridge and returns it.
fn event(up: &mut Spawned, event: &str, within: Duration) -> Value {
    let tag = format!("\"event\":\"{event}\"");
    let line = up.wait_line(within, |l| l.contains(&tag)).expect(event);
    serde_json::from_str(&line).expect("JSON")
}

fn node(s: &Scenario, pod: &str) -> String {
    format!("app@{}", s.cluster.pod(pod).ip())
}

#[test]
fn restarts_with_new_ips_and_new_replicas_are_followed() {
    let mut s = Scenario::start(MANIFEST, 61030);
    assert!(!s.reaches(COOKIE, &node(&s, "app-1")), "the control");
    let mut up = s.up(&["statefulset/app"]).0;
    assert!(s.reaches(COOKIE, &node(&s, "app-1")));

    let old_ip = s.cluster.pod("app-1").ip();
    let started = Instant::now();
    s.cluster.restart_pod_with_new_ip("app-1").expect("restart");
    let changed = event(&mut up, "pod_changed", Duration::from_secs(5));
    let new_node = node(&s, "app-1");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(changed["nodes"][0]["node"], new_node.as_str(), "{changed}");
    assert!(
        s.reaches(COOKIE, &new_node),
        "the new name is reachable without restarting erlbridge"
    );
    assert!(
        !s.ws
            .helper_table()
            .unwrap_or_default()
            .contains(&format!("{old_ip} .")),
        "the old IP's rules are gone:\n{}",
        s.ws.helper_table().unwrap_or_default()
    );

    s.cluster.scale("app", 5).expect("scale up");
    let mut added = Vec::new();
    while added.len() < 2 {
        let e = event(&mut up, "pod_added", Duration::from_secs(10));
        added.push(e["pod"].as_str().unwrap_or_default().to_owned());
    }
    added.sort();
    assert_eq!(added, ["app-3", "app-4"]);
    assert!(s.reaches(COOKIE, &node(&s, "app-3")));
    assert!(s.reaches(COOKIE, &node(&s, "app-4")));

    // Scale down: the removed pods are unbridged and their rules go.
    let gone = [s.cluster.pod("app-3").ip(), s.cluster.pod("app-4").ip()];
    s.cluster.scale("app", 3).expect("scale down");
    let mut removed = Vec::new();
    while removed.len() < 2 {
        let e = event(&mut up, "pod_removed", Duration::from_secs(10));
        removed.push(e["pod"].as_str().unwrap_or_default().to_owned());
    }
    removed.sort();
    assert_eq!(removed, ["app-3", "app-4"]);
    let table = s.ws.helper_table().unwrap_or_default();
    for ip in gone {
        assert!(
            !table.contains(&format!("{ip} .")),
            "{ip}'s rules are gone:\n{table}"
        );
    }
    assert!(
        s.reaches(COOKIE, &node(&s, "app-0")),
        "the rest stays bridged"
    );
}

#[test]
fn dropped_forwards_and_a_failing_api_server_heal_by_themselves() {
    let s = Scenario::start(MANIFEST, 61030);
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(COOKIE, &app0), "the control");
    let _up = s.up(&["app-0"]).0;
    assert!(s.reaches(COOKIE, &app0));

    s.cluster.emulator.drop_forwards();
    assert!(
        s.reaches(COOKIE, &app0),
        "a reconnect after every forward was dropped"
    );

    // A short failure: a new connection is retried with backoff until the API answers again.
    s.cluster
        .emulator
        .fail_requests(500, Duration::from_secs(3));
    assert!(
        s.reaches(COOKIE, &app0),
        "a connection during a short API failure is retried"
    );

    s.cluster
        .emulator
        .fail_requests(500, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(10) + Duration::from_millis(500));
    assert!(
        s.reaches(COOKIE, &app0),
        "the bridge works again once the API server does"
    );

    // A stalled API server: --ready-timeout gives up in time, with its own exit code.
    s.cluster.emulator.stall_requests(Duration::from_secs(30));
    let started = Instant::now();
    let (code, out, err) = s.run(&s.user, "up", &["app-0", "--ready-timeout", "2"]);
    assert_eq!(code, 9, "{out}{err}");
    assert!(err.contains("not ready within --ready-timeout 2s"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_restarted_helper_gets_every_mapping_back() {
    let mut s = Scenario::start(MANIFEST, 61030);
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(COOKIE, &app0), "the control");
    let mut up = s.up(&["app-0"]).0;
    let before =
        s.ws.helper_table()
            .unwrap_or_default()
            .matches(" : 127.0.0.1 . ")
            .count();
    assert_eq!(before, 2);

    s.helperd.stop(Signal::SIGKILL).expect("killed");
    event(&mut up, "helper_lost", Duration::from_secs(5));
    let started = Instant::now();
    s.helperd.restart(&s.ws).expect("restart");
    event(&mut up, "helper_restored", Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        s.ws.helper_table()
            .unwrap_or_default()
            .matches(" : 127.0.0.1 . ")
            .count(),
        before,
        "{}",
        s.ws.helper_table().unwrap_or_default()
    );
    assert!(s.reaches(COOKIE, &app0));

    // A pod whose node died: connections fail, and erlbridge says so.
    s.cluster.kill_node("app-0").expect("kill");
    assert!(!s.reaches(COOKIE, &app0));
    let unreachable = event(&mut up, "pod_unreachable", Duration::from_secs(10));
    assert_eq!(unreachable["pod"], "app-0", "{unreachable}");
    assert!(
        unreachable["message"]
            .as_str()
            .unwrap_or_default()
            .contains("port 4369"),
        "{unreachable}"
    );
}
