//! Big StatefulSets over a real network link (a relay holding each direction 25 ms in front
//! of the API server, so every request, watch and port-forward crosses a 50 ms round trip):
//! pods are attached side by side and heal one by one without waiting for each other, a start
//! spends only the requests it needs, nat mode answers local nodes' EPMD queries itself, and a
//! long start shows its progress. Everything as an unprivileged uid, after the control.

use std::time::{Duration, Instant};

use erlbridge_kube_emulator::Logged;
use erlbridge_testbed::events::{self, Event, Mode};
use erlbridge_testbed::{Scenario, Spawned, Terminal};

const COOKIE: &str = "monster";
const BIG: usize = 30;

/// A StatefulSet `big` of `replicas` pods whose nodes register with epmd, on a port of their
/// choice or on `dist_port`.
fn manifest(replicas: usize, dist_port: Option<u16>) -> String {
    let port = dist_port.map_or(String::new(), |p| format!(", ERL_DIST_PORT = \"{p}\""));
    format!(
        r#"
[[statefulsets]]
name = "big"
replicas = {replicas}
labels = {{ app = "big" }}
env = {{ RELEASE_NODE = "big@$(POD_IP)", RELEASE_COOKIE = "monster"{port} }}
"#
    )
}

fn node(s: &Scenario, pod: &str) -> String {
    format!("big@{}", s.cluster.pod(pod).ip())
}

/// Waits for an event `matches` accepts, skipping others.
fn event(up: &mut Spawned, within: Duration, matches: impl Fn(&Event) -> bool) -> Event {
    events::wait(up, within, matches)
}

fn pod_of(e: &Event) -> Option<&str> {
    events::pod(e)
}

/// The requests made since `before` (an index into the log), by kind.
fn requests_since(s: &Scenario, before: usize) -> Vec<Logged> {
    s.cluster.emulator.requests().split_off(before)
}

#[test]
fn a_big_statefulset_over_a_slow_link_attaches_side_by_side_and_heals_pod_by_pod() {
    let mut s = Scenario::start(&manifest(BIG, None), 61180);
    let link = s
        .cluster
        .slow_link(Duration::from_millis(25), "kubeconfig-50ms")
        .expect("a slow link");
    let kubeconfig = link.kubeconfig.display().to_string();
    let pods: Vec<String> = (0..BIG).map(|i| format!("big-{i}")).collect();
    let names: Vec<String> = pods.iter().map(|p| node(&s, p)).collect();
    assert!(!s.reaches(COOKIE, &names[0]), "the control");

    // Ready, with every pod, in a stable order, having asked only what it needs: the target,
    // one list, one watch, and per pod one port-forward per EPMD query (NAMES, and the
    // PORT_PLEASE2 that says what a local node's query is answered with).
    let before = s.cluster.emulator.requests().len();
    let started = Instant::now();
    let (mut up, ready) = s.up(&[
        "statefulset/big",
        "--kubeconfig",
        &kubeconfig,
        "--request-timeout",
        "5s",
    ]);
    let took = started.elapsed();
    assert_eq!(ready.mode, Mode::Nat);
    let mut sorted = ready.nodes.clone();
    sorted.sort_by(|a, b| a.pod.cmp(&b.pod));
    assert_eq!(ready.nodes, sorted, "in a stable order");
    assert_eq!(ready.nodes.len(), BIG);
    let spent = requests_since(&s, before);
    let forwards = spent.iter().filter(|r| r.is_port_forward()).count();
    let watches = spent.iter().filter(|r| r.is_watch()).count();
    let others: Vec<&Logged> = spent
        .iter()
        .filter(|r| !r.is_port_forward() && !r.is_watch())
        .collect();
    assert_eq!(forwards, 2 * BIG, "{spent:?}");
    // The watch starts from the list's version as the bridge begins to heal.
    assert!(watches <= 1, "{spent:?}");
    assert!(
        others.len() == 2
            && others.iter().any(|r| r.path.ends_with("/statefulsets/big"))
            && others.iter().any(|r| r.path.ends_with("/pods")),
        "the target and one list: {others:?}"
    );
    eprintln!("{BIG} pods over a 50 ms round trip: ready after {took:?}");

    // Every node answers, from one hidden local node.
    let list = names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(",");
    let expr = format!("[rpc:call(N, erlang, node, []) || N <- [{list}]] =:= [{list}]");
    assert_eq!(s.local(COOKIE, &expr, &[]), "true");
    let watches = requests_since(&s, before)
        .iter()
        .filter(|r| r.is_watch())
        .count();
    assert_eq!(watches, 1, "one watch");

    // A pod whose attach hangs (its container restarted, its epmd answers nothing) holds no
    // other: a pod that moves meanwhile is followed at once, the hanging one is given up after
    // the request timeout and tried again until its epmd answers.
    s.cluster.pause_epmd("big-3", true).expect("pause");
    s.cluster.note_container_restart("big-3").expect("restart");
    std::thread::sleep(Duration::from_millis(300));
    s.cluster.restart_pod_with_new_ip("big-7").expect("move");
    let moved = s.cluster.pod("big-7").ready_since;
    let changed = event(&mut up, Duration::from_secs(10), |e| {
        matches!(e, Event::PodChanged { .. } | Event::PodUnreachable { .. })
    });
    assert!(
        matches!(&changed, Event::PodChanged { pod, .. } if pod == "big-7"),
        "the moved pod first: {changed:?}"
    );
    let followed = moved.elapsed();
    assert!(
        followed < Duration::from_secs(4),
        "followed after {followed:?}, not after the hanging pod's timeout"
    );
    let hung = event(&mut up, Duration::from_secs(15), |e| {
        matches!(e, Event::PodUnreachable { .. })
    });
    assert_eq!(pod_of(&hung), Some("big-3"), "{hung:?}");
    assert!(
        matches!(&hung, Event::PodUnreachable { message, .. } if message.contains("no answer within 5 s")),
        "{hung:?}"
    );
    s.cluster.pause_epmd("big-3", false).expect("resume");
    let back = event(&mut up, Duration::from_secs(15), |e| {
        matches!(e, Event::PodChanged { .. })
    });
    assert_eq!(pod_of(&back), Some("big-3"), "{back:?}");
    assert!(s.reaches(COOKIE, &node(&s, "big-3")));
    assert!(s.reaches(COOKIE, &node(&s, "big-7")));
    drop(up);
    s.wait_no_mappings(Duration::from_secs(5));

    // A start that cannot finish in time (a pod's epmd answers nothing) ends at
    // --ready-timeout and leaves nothing behind; every other pod was attached meanwhile.
    s.cluster.pause_epmd("big-5", true).expect("pause");
    let before = s.cluster.emulator.requests().len();
    let started = Instant::now();
    let (code, out, err) = s.run(
        &s.user,
        "up",
        &[
            "statefulset/big",
            "--kubeconfig",
            &kubeconfig,
            "--ready-timeout",
            "3",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 9, "{out}{err}");
    assert!(started.elapsed() < Duration::from_secs(8));
    // Every other pod was attached while the hanging one waited.
    let attached: Vec<usize> = events::all(&out)
        .into_iter()
        .filter_map(|e| match e {
            Event::Progress { attached, .. } => Some(attached),
            _ => None,
        })
        .collect();
    assert_eq!(attached.last(), Some(&(BIG - 1)), "{out}");
    let forwards = requests_since(&s, before)
        .iter()
        .filter(|r| r.is_port_forward())
        .count();
    assert_eq!(
        forwards,
        2 * BIG,
        "every pod was asked, the hanging one too"
    );
    s.wait_no_mappings(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.cluster.emulator.live_forwards() > 0 {
        assert!(Instant::now() < deadline, "port-forwards left open");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.cluster.pause_epmd("big-5", false).expect("resume");
}

#[test]
fn nat_mode_answers_epmd_queries_itself_and_follows_a_node_restarted_on_another_port() {
    let mut s = Scenario::start(&manifest(1, Some(9100)), 61181);
    let big0 = node(&s, "big-0");
    assert!(!s.reaches(COOKIE, &big0), "the control");
    let (mut up, ready) = s.up(&["big-0"]);
    assert_eq!(ready.mode, Mode::Nat);

    // Twenty fresh local nodes, one connection each: one port-forward each, the distribution
    // connection's (the EPMD query is answered here).
    let before = s.cluster.emulator.port_forwards();
    for _ in 0..20 {
        assert!(s.reaches(COOKIE, &big0));
    }
    assert_eq!(s.cluster.emulator.port_forwards() - before, 20);

    // The node restarts on another distribution port, same pod, same IP: erlbridge asks the
    // pod's epmd again, and local nodes reach it there.
    s.cluster
        .restart_container("big-0", Some(9200))
        .expect("restart");
    let changed = event(&mut up, Duration::from_secs(20), |e| {
        matches!(e, Event::PodChanged { .. })
    });
    let Event::PodChanged { nodes, .. } = changed else {
        unreachable!()
    };
    assert_eq!(nodes[0].dist_port, 9200);
    assert_eq!(nodes[0].ip.to_string(), s.cluster.pod("big-0").ip());
    assert!(s.reaches(COOKIE, &big0));
}

#[test]
fn a_long_start_shows_its_progress_on_a_terminal_and_as_events_and_not_in_a_file() {
    const PODS: usize = 12;
    let s = Scenario::start(&manifest(PODS, None), 61182);
    assert!(!s.reaches(COOKIE, &node(&s, "big-0")), "the control");
    // A slower link, so the start takes long enough to watch.
    let link = s
        .cluster
        .slow_link(Duration::from_millis(150), "kubeconfig-300ms")
        .expect("a slow link");
    let kubeconfig = link.kubeconfig.display().to_string();

    // On a terminal: a live line while attaching, gone once ready.
    let argv = s.erlbridge("up", &["statefulset/big", "--kubeconfig", &kubeconfig]);
    let terminal = Terminal::start(&s.ws, &s.user, &[], &argv);
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let screen = terminal.screen();
        if let Some(line) = screen.lines().find(|l| l.contains("attaching")) {
            break line.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no progress line; screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        line.starts_with("erlbridge: attaching ")
            && line.ends_with(&format!("/{PODS} pods of statefulset/big")),
        "{line}"
    );
    terminal.wait_for(&format!("{PODS} nodes bridged"));
    let screen = terminal.screen();
    assert!(!screen.contains("attaching"), "the line is gone:\n{screen}");
    drop(terminal);
    s.wait_no_mappings(Duration::from_secs(5));

    // JSON: progress events, at most a few a second.
    let started = Instant::now();
    let (up, ready) = s.up(&["statefulset/big", "--kubeconfig", &kubeconfig]);
    let took = started.elapsed();
    assert_eq!(ready.nodes.len(), PODS);
    let progress: Vec<(usize, usize)> = up
        .seen()
        .iter()
        .filter_map(|l| match events::parse(l) {
            Some(Event::Progress {
                attached,
                total,
                target,
            }) => {
                assert_eq!(target, "statefulset/big");
                Some((attached, total))
            }
            _ => None,
        })
        .collect();
    assert!(!progress.is_empty(), "{:?}", up.seen());
    assert!(
        progress.iter().all(|(a, t)| *t == PODS && *a <= PODS),
        "{progress:?}"
    );
    assert!(
        progress.len() as f64 <= took.as_secs_f64() * 4.0 + 1.0,
        "{} progress events in {took:?}",
        progress.len()
    );
    drop(up);
    s.wait_no_mappings(Duration::from_secs(5));

    // Text mode with stderr in a file: none of it.
    let errors = s.ws.home(&s.user).expect("home").join("stderr.txt");
    let mut argv = s.erlbridge(
        "up",
        &["statefulset/big", "--kubeconfig", &kubeconfig, "--", "true"],
    );
    argv.push(format!("2>{}", errors.display()));
    let script = argv
        .iter()
        .map(|a| {
            if a.starts_with("2>") {
                a.clone()
            } else {
                format!("'{a}'")
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let (code, out, err) = s.ws.run_as(&s.user, &["sh", "-c", &script]).expect("sh");
    assert_eq!(code, 0, "{out}{err}");
    let written = std::fs::read_to_string(&errors).expect("stderr file");
    assert!(written.contains("bridging statefulset/big"), "{written}");
    assert!(!written.contains("attaching"), "{written}");
}
