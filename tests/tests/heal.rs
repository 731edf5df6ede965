//! erlbridge keeps a bridge working by itself: pods restarting with new IPs, new replicas,
//! forwards dropped by the API server, the API server failing for a while, the helper
//! restarting. Helper as root, client and local node as an unprivileged uid.

use std::time::{Duration, Instant};

use erlbridge_testbed::events::{self, Event};
use erlbridge_testbed::{Scenario, Spawned, listening_sockets};
use nix::sys::signal::Signal;

const COOKIE: &str = "monster";
const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 3
labels = { app = "app" }
ports = [{ name = "epmd", port = 4369 }]
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster", ERL_DIST_PORT = "9100" }
"#;

/// Waits for an event `matches` accepts from erlbridge and returns it.
fn event(up: &mut Spawned, matches: impl Fn(&Event) -> bool, within: Duration) -> Event {
    events::wait(up, within, matches)
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
    let changed = event(
        &mut up,
        |e| matches!(e, Event::PodChanged { .. }),
        Duration::from_secs(5),
    );
    let new_node = node(&s, "app-1");
    assert!(started.elapsed() < Duration::from_secs(10));
    let Event::PodChanged { pod, nodes } = changed else {
        unreachable!()
    };
    assert_eq!(
        (pod.as_str(), nodes[0].node.as_str()),
        ("app-1", new_node.as_str())
    );
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
        let e = event(
            &mut up,
            |e| matches!(e, Event::PodAdded { .. }),
            Duration::from_secs(10),
        );
        added.push(events::pod(&e).unwrap_or_default().to_owned());
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
        let e = event(
            &mut up,
            |e| matches!(e, Event::PodRemoved { .. }),
            Duration::from_secs(10),
        );
        removed.push(events::pod(&e).unwrap_or_default().to_owned());
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
fn a_pod_deleted_while_the_watch_was_expired_is_dropped_at_the_next_list() {
    const TWO: &str = r#"
[[statefulsets]]
name = "app"
replicas = 2
labels = { app = "app" }
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster", ERL_DIST_PORT = "9100" }
"#;
    let mut s = Scenario::start(TWO, 61032);
    let (app0, app1) = (node(&s, "app-0"), node(&s, "app-1"));
    let gone_ip = s.cluster.pod("app-1").ip();
    assert!(!s.reaches(COOKIE, &app1), "the control");
    let mut up = s.up(&["statefulset/app"]).0;
    assert!(s.reaches(COOKIE, &app1));
    assert_eq!(s.mappings(), 4);
    assert_eq!(
        listening_sockets(up.pid()),
        4,
        "epmd and distribution forwards of two pods"
    );

    // Every watch ends with 410 Gone; app-1 goes with no event a watch could carry.
    s.cluster.emulator.expire_watches(Duration::from_secs(3));
    s.cluster.remove_pod_silently("app-1").expect("removed");
    let removed = event(
        &mut up,
        |e| matches!(e, Event::PodRemoved { .. }),
        Duration::from_secs(5) + Duration::from_secs(3),
    );
    assert!(
        matches!(&removed, Event::PodRemoved { pod, nodes } if pod == "app-1" && nodes[0].node == app1),
        "{removed:?}"
    );
    let table = s.ws.helper_table().unwrap_or_default();
    assert!(
        !table.contains(&format!("{gone_ip} .")),
        "app-1's rules are gone:\n{table}"
    );
    assert_eq!(s.mappings(), 2, "{table}");
    assert_eq!(
        listening_sockets(up.pid()),
        2,
        "app-1's forwards are closed"
    );
    assert!(s.reaches(COOKIE, &app0), "the other pod still answers");
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

    s.helper().stop(Signal::SIGKILL).expect("killed");
    event(
        &mut up,
        |e| matches!(e, Event::HelperLost),
        Duration::from_secs(5),
    );
    let started = Instant::now();
    let ws = &s.ws;
    s.helperd
        .as_mut()
        .expect("a helper")
        .restart(ws)
        .expect("restart");
    event(
        &mut up,
        |e| matches!(e, Event::HelperRestored),
        Duration::from_secs(5),
    );
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

    // A pod whose node died: connections fail, and erlbridge says so. (Its epmd's answer
    // comes from erlbridge, which knows the node's port, 9100: the connection there fails.)
    s.cluster.kill_node("app-0").expect("kill");
    assert!(!s.reaches(COOKIE, &app0));
    let unreachable = event(
        &mut up,
        |e| matches!(e, Event::PodUnreachable { .. }),
        Duration::from_secs(10),
    );
    assert!(
        matches!(&unreachable, Event::PodUnreachable { pod, message }
            if pod == "app-0" && message.contains("port 9100")),
        "{unreachable:?}"
    );
}

/// CPU time (user + system) a process has used so far.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    // Clock ticks of 10 ms (USER_HZ is 100 on Linux).
    Duration::from_millis(ticks * 10)
}

#[test]
fn out_of_descriptors_the_listener_waits_instead_of_spinning_and_recovers() {
    let s = Scenario::start(MANIFEST, 61031);
    let app0 = node(&s, "app-0");
    let ip = s.cluster.pod("app-0").ip();
    assert!(!s.reaches(COOKIE, &app0), "the control");
    let mut argv = vec![
        "prlimit".to_owned(),
        "--nofile=48:48".to_owned(),
        "--".to_owned(),
    ];
    argv.extend(s.erlbridge("up", &["app-0", "--output", "json"]));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut up = s.ws.spawn_as(&s.user, &argv).expect("erlbridge");
    events::ready(&mut up, Duration::from_secs(60));
    assert!(s.reaches(COOKIE, &app0), "bridged under the limit");

    // Far more connections than descriptors (and fewer than the listen backlog): each accepted
    // one costs a descriptor and an API connection, so the listener runs out while connections
    // wait in its backlog.
    let hold = format!(
        "[gen_tcp:connect({{{}}}, 4369, [], 5000) || _ <- lists:seq(1, 100)], \
         io:format(\"holding~n\"), timer:sleep(infinity).",
        ip.replace('.', ",")
    );
    let mut holder =
        s.ws.spawn_as(&s.user, &["erl", "-noshell", "-noinput", "-eval", &hold])
            .expect("holder");
    holder
        .wait_line(Duration::from_secs(60), |l| l == "holding")
        .expect("connections held");
    let warning = event(
        &mut up,
        |e| matches!(e, Event::Warning { .. }),
        Duration::from_secs(10),
    );
    assert!(
        matches!(&warning, Event::Warning { message } if message.contains("cannot accept connections")),
        "{warning:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_time(up.pid());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_time(up.pid()) - before;
    assert!(
        used < Duration::from_millis(600),
        "erlbridge used {used:?} of CPU in 3 s while out of descriptors"
    );
    let warnings = up
        .seen()
        .iter()
        .filter(|l| matches!(events::parse(l), Some(Event::Warning { .. })))
        .count();
    assert_eq!(warnings, 1, "reported once: {:?}", up.seen());

    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.reaches(COOKIE, &app0) {
        assert!(Instant::now() < deadline, "the bridge did not recover");
        std::thread::sleep(Duration::from_millis(200));
    }
}
