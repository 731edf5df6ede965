//! Benchmark (needs root): a 100-pod StatefulSet of real Erlang nodes, with the API server at
//! a 0 ms and a 50 ms round trip (a relay holding each direction 25 ms, as from an office to a
//! cloud cluster), in one run: the time from `erlbridge up statefulset/app` to its ready event,
//! next to the same work done one pod at a time (`ERLBRIDGE_PARALLEL_ATTACHES=1`, the
//! baseline); the API requests a start spends; the time to follow one pod that moved; and the
//! port-forwards each new local connection costs, in both modes. Prints figures only.

use std::time::{Duration, Instant};

use erlbridge_kube_emulator::Logged;
use erlbridge_testbed::events::{self, Event, Ready};
use erlbridge_testbed::{Scenario, Spawned};

const PODS: usize = 100;
const COOKIE: &str = "monster";
const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 100
labels = { app = "app" }
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster" }
# A hundred nodes in a full mesh keep two cores busy with `global`'s bookkeeping for seconds
# after each change: the first node reaches the others, they do not all reach each other.
args = ["-connect_all", "false"]
"#;

/// Starts `erlbridge up ARGS --output json` as the scenario's user with `env` set; returns
/// it once ready, with how long that took.
fn up(s: &Scenario, env: &[&str], args: &[&str]) -> (Spawned, Ready, Duration) {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let mut argv: Vec<String> = vec!["env".into()];
    argv.extend(env.iter().map(|e| (*e).to_owned()));
    argv.extend(s.erlbridge("up", &args));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let started = Instant::now();
    let mut up = Spawned::start_capturing(s.ws.command_as(&s.user, &argv).expect("command"))
        .expect("erlbridge");
    let ready = events::ready(&mut up, Duration::from_secs(300));
    (up, ready, started.elapsed())
}

/// What a start asked of the API server, by kind.
fn kinds(requests: &[Logged]) -> String {
    let forwards = requests.iter().filter(|r| r.is_port_forward()).count();
    let watches = requests.iter().filter(|r| r.is_watch()).count();
    let lists = requests
        .iter()
        .filter(|r| !r.is_watch() && r.path.ends_with("/pods"))
        .count();
    let other = requests.len() - forwards - watches - lists;
    format!(
        "{} requests: {other} get of the target, {lists} list, {watches} watch, {forwards} \
         port-forwards ({:.1} per pod)",
        requests.len(),
        forwards as f64 / PODS as f64
    )
}

/// Waits (up to `at_most`) until the machine's CPUs are mostly idle for a second.
fn settle(at_most: Duration) {
    let busy = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let idle = fields.get(3)? + fields.get(4)?;
        Some((fields.iter().sum::<u64>() - idle, fields.iter().sum()))
    };
    let deadline = Instant::now() + at_most;
    while Instant::now() < deadline {
        let Some((b0, t0)) = busy() else { return };
        std::thread::sleep(Duration::from_secs(1));
        let Some((b1, t1)) = busy() else { return };
        if (b1 - b0) * 10 < (t1 - t0).max(1) {
            return;
        }
    }
}

fn finish(s: &Scenario, bridge: Spawned) {
    drop(bridge);
    s.wait_no_mappings(Duration::from_secs(10));
}

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut s = Scenario::start(MANIFEST, 61190);
    println!(
        "test cluster of {PODS} real Erlang nodes up in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let slow = s
        .cluster
        .slow_link(Duration::from_millis(25), "kubeconfig-50ms")?;
    // Measure on a quiet machine, with a warm helper and API server.
    settle(Duration::from_secs(60));
    let (bridge, _, _) = up(&s, &[], &["statefulset/app"]);
    finish(&s, bridge);
    let links = [
        ("0 ms", s.cluster.kubeconfig.display().to_string()),
        ("50 ms", slow.kubeconfig.display().to_string()),
    ];
    let target = "statefulset/app";

    println!("\ntime from `erlbridge up {target}` ({PODS} pods) to its ready event");
    println!(
        "{:<14} {:>16} {:>22} {:>10}",
        "round trip", "side by side", "one pod at a time", "speed-up"
    );
    let mut spent = Vec::new();
    for (rtt, kubeconfig) in &links {
        let before = s.cluster.emulator.requests().len();
        let handshakes = s.cluster.emulator.handshakes();
        let (bridge, ready, parallel) = up(&s, &[], &[target, "--kubeconfig", kubeconfig]);
        assert_eq!(ready.nodes.len(), PODS);
        let requests = s.cluster.emulator.requests().split_off(before);
        let after = s.cluster.emulator.handshakes();
        spent.push((
            *rtt,
            kinds(&requests),
            after.total - handshakes.total,
            after.resumed - handshakes.resumed,
        ));
        finish(&s, bridge);
        let (bridge, _, serial) = up(
            &s,
            &["ERLBRIDGE_PARALLEL_ATTACHES=1"],
            &[target, "--kubeconfig", kubeconfig],
        );
        finish(&s, bridge);
        println!(
            "{rtt:<14} {:>14.0}ms {:>20.0}ms {:>9.1}x",
            parallel.as_secs_f64() * 1e3,
            serial.as_secs_f64() * 1e3,
            serial.as_secs_f64() / parallel.as_secs_f64()
        );
    }
    println!("(targets: ready within 1 s at 0 ms and within 3 s at 50 ms)");

    println!(
        "\nwhat a start asked of the API server to ready (its one watch starts right after, as \
         the bridge begins to heal)"
    );
    for (rtt, kinds, handshakes, resumed) in &spent {
        println!("  {rtt:<6} {kinds}; {handshakes} TLS handshakes, {resumed} of them resumed");
    }

    // One pod moves (deleted, back with a new IP): followed how soon after the API server
    // shows it Running and Ready again, over the slow link.
    let (mut bridge, _, _) = up(&s, &[], &[target, "--kubeconfig", &links[1].1]);
    let mut heals = Vec::new();
    for pod in ["app-17", "app-42", "app-83"] {
        settle(Duration::from_secs(30));
        s.cluster.restart_pod_with_new_ip(pod)?;
        let ready_at = s.cluster.pod(pod).ready_since;
        events::wait(
            &mut bridge,
            Duration::from_secs(30),
            |e| matches!(e, Event::PodChanged { pod: p, .. } if p == pod),
        );
        heals.push(ready_at.elapsed());
    }
    heals.sort();
    println!(
        "\na moved pod followed over the 50 ms link, from Running and Ready to bridged: median \
         {:.0} ms of {} (target: within 1 s)",
        heals[heals.len() / 2].as_secs_f64() * 1e3,
        heals.len()
    );

    // New local connections: port-forwards per fresh local node, in each mode.
    let node = format!("app@{}", s.cluster.pod("app-0").ip());
    let fresh = 10;
    let before = s.cluster.emulator.port_forwards();
    for _ in 0..fresh {
        assert!(s.reaches(COOKIE, &node));
    }
    let nat = s.cluster.emulator.port_forwards() - before;
    finish(&s, bridge);
    let (bridge, ready, _) = up(
        &s,
        &[],
        &[target, "--kubeconfig", &links[1].1, "--mode", "epmd"],
    );
    let flags = ready.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let call =
        format!("{{net_kernel:connect_node('{node}'), rpc:call('{node}', erlang, node, [])}}");
    let before = s.cluster.emulator.port_forwards();
    for _ in 0..fresh {
        assert_eq!(s.local(COOKIE, &call, &flags), format!("{{true,'{node}'}}"));
    }
    let epmd = s.cluster.emulator.port_forwards() - before;
    finish(&s, bridge);
    println!(
        "\nport-forwards per new local connection ({fresh} fresh local nodes each): nat mode {:.1}, \
         epmd mode {:.1} (target: 1, the distribution connection's)",
        nat as f64 / fresh as f64,
        epmd as f64 / fresh as f64
    );
    Ok(())
}
