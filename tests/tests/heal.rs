//! erlbridge keeps a bridge working by itself: pods restarting with new IPs, new replicas,
//! forwards dropped by the API server, the API server failing for a while, the helper
//! restarting. Helper as root, client and local node as an unprivileged uid.

use std::time::{Duration, Instant};

use erlbridge_testbed::{Bins, Cluster, Helperd, Spawned, User, Workstation, require_root};
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

struct Scenario {
    helperd: Helperd,
    cluster: Cluster,
    ws: Workstation,
    bins: Bins,
    user: User,
}

fn scenario() -> Scenario {
    require_root();
    let bins = Bins::stage(&["erlbridge-helperd", "helper-probe", "erlbridge"]).expect("binaries");
    let ws = Workstation::new().expect("workstation");
    let cluster = Cluster::start(&ws, MANIFEST).expect("cluster");
    let helperd = Helperd::start(&ws, &bins, "").expect("helperd");
    Scenario {
        helperd,
        cluster,
        ws,
        bins,
        user: User::member(61030),
    }
}

impl Scenario {
    fn up(&self, target: &str) -> Spawned {
        let kubeconfig = self.cluster.kubeconfig.display().to_string();
        let socket = self.helperd.socket.display().to_string();
        let argv = [
            self.bins.path("erlbridge"),
            "up".into(),
            target.into(),
            "--kubeconfig".into(),
            kubeconfig,
            "--helper-socket".into(),
            socket,
            "--output".into(),
            "json".into(),
        ];
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut up = self.ws.spawn_as(&self.user, &argv).expect("erlbridge");
        up.wait_line(Duration::from_secs(60), |l| l.contains("\"ready\""))
            .expect("ready");
        up
    }

    /// Whether a fresh hidden local node connects to `node` and gets its name back by rpc.
    fn reaches(&self, node: &str) -> bool {
        let expr =
            format!("{{net_kernel:connect_node('{node}'), rpc:call('{node}', erlang, node, [])}}");
        self.ws
            .erl_eval(&self.user, COOKIE, &expr, &[])
            .is_ok_and(|r| r == format!("{{true,'{node}'}}"))
    }

    fn table(&self) -> String {
        self.ws.helper_table().unwrap_or_default()
    }
}

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
    let mut s = scenario();
    assert!(!s.reaches(&node(&s, "app-1")), "the control");
    let mut up = s.up("statefulset/app");
    assert!(s.reaches(&node(&s, "app-1")));

    let old_ip = s.cluster.pod("app-1").ip();
    let started = Instant::now();
    s.cluster.restart_pod_with_new_ip("app-1").expect("restart");
    let changed = event(&mut up, "pod_changed", Duration::from_secs(5));
    let new_node = node(&s, "app-1");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(changed["nodes"][0]["node"], new_node.as_str(), "{changed}");
    assert!(
        s.reaches(&new_node),
        "the new name is reachable without restarting erlbridge"
    );
    assert!(
        !s.table().contains(&format!("{old_ip} .")),
        "the old IP's rules are gone:\n{}",
        s.table()
    );

    s.cluster.scale("app", 5).expect("scale up");
    let mut added = Vec::new();
    while added.len() < 2 {
        let e = event(&mut up, "pod_added", Duration::from_secs(10));
        added.push(e["pod"].as_str().unwrap_or_default().to_owned());
    }
    added.sort();
    assert_eq!(added, ["app-3", "app-4"]);
    assert!(s.reaches(&node(&s, "app-3")));
    assert!(s.reaches(&node(&s, "app-4")));
}

#[test]
fn dropped_forwards_and_a_failing_api_server_heal_by_themselves() {
    let s = scenario();
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(&app0), "the control");
    let _up = s.up("app-0");
    assert!(s.reaches(&app0));

    s.cluster.emulator.drop_forwards();
    assert!(
        s.reaches(&app0),
        "a reconnect after every forward was dropped"
    );

    s.cluster
        .emulator
        .fail_requests(500, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(10) + Duration::from_millis(500));
    assert!(
        s.reaches(&app0),
        "the bridge works again once the API server does"
    );
}

#[test]
fn a_restarted_helper_gets_every_mapping_back() {
    let mut s = scenario();
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(&app0), "the control");
    let mut up = s.up("app-0");
    let before = s.table().matches(" : 127.0.0.1 . ").count();
    assert_eq!(before, 2);

    s.helperd.stop(Signal::SIGKILL).expect("killed");
    event(&mut up, "helper_lost", Duration::from_secs(5));
    let started = Instant::now();
    s.helperd.restart(&s.ws).expect("restart");
    event(&mut up, "helper_restored", Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        s.table().matches(" : 127.0.0.1 . ").count(),
        before,
        "{}",
        s.table()
    );
    assert!(s.reaches(&app0));
}
