//! Pod shapes of the test cluster, checked with real Erlang nodes, kube-rs and kubectl: nodes
//! without epmd, epmd on another port, IPv6 and dual-stack pods, sidecars. Needs root.

#[allow(dead_code)] // each test binary uses its own part of it
mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use erlbridge_testbed::cluster::{BRIDGE_V6, SIDECAR_GREETING};
use erlbridge_testbed::{Cluster, User, erlang, require_root};
use harness::{cluster, epmd_names, epmd_names_from, epmd_names_on, forward_read, kubectl, pods};

/// Whether a TCP connection to `addr` opens from inside namespace `ns` within 3 s.
fn connects(ns: &str, addr: SocketAddr) -> bool {
    erlbridge_kube_emulator::netns::within(ns, move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    })
    .is_ok()
}

/// Evaluates `expr` on a hidden node started in the cluster namespace (which reaches every
/// pod): a peer that is not one of the pods, set up as `dist` says (plain when `None`).
fn from_cluster_ns(cluster: &Cluster, expr: &str, dist: Option<&erlang::Dist>) -> String {
    let dist = dist.cloned().unwrap_or_default();
    let flags = dist.peer_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let argv = erlang::eval_argv("peer@10.244.0.1", "monster", expr, &flags);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = cluster
        .netns()
        .command(&argv)
        .env("HOME", "/tmp")
        .envs(dist.peer_env())
        .output()
        .expect("erl");
    erlang::parse_result(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|e| e)
}

const NO_EPMD: &str = r#"
[[statefulsets]]
name = "noepmd"
replicas = 2
labels = { app = "noepmd" }
ports = [{ name = "dist", port = 9100 }]
args = ["-start_epmd", "false", "-erl_epmd_port", "9100"]
env = { RELEASE_NODE = "noepmd@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[pods]]
name = "flags"
labels = { app = "flags" }
env = { RELEASE_NODE = "flags@$(POD_IP)", RELEASE_COOKIE = "monster", ERL_FLAGS = "-start_epmd false -erl_epmd_port 9200" }
"#;

#[test]
fn a_node_without_epmd_listens_on_its_fixed_port_and_peers_with_the_same_port_reach_it() {
    let (ws, cluster) = cluster(NO_EPMD);
    let (n0, n1) = (cluster.pod("noepmd-0"), cluster.pod("noepmd-1"));
    assert_eq!(n0.dist.epmdless_port, Some(9100));
    // The two pods' nodes found each other with no epmd anywhere.
    assert_eq!(n0.nodes().expect("nodes"), [format!("noepmd@{}", n1.ip())]);
    for pod in [n0, n1] {
        let names = pod
            .netns()
            .command(&["epmd", "-names"])
            .output()
            .expect("epmd");
        assert!(!names.status.success(), "no epmd runs in {}", pod.desc.name);
        assert!(connects(
            pod.netns().name(),
            format!("{}:9100", pod.ip()).parse().expect("addr")
        ));
    }
    // ERL_FLAGS in the pod's environment does the same.
    let flags = cluster.pod("flags");
    assert_eq!(flags.dist.epmdless_port, Some(9200));
    assert_eq!(
        flags.eval("node()").expect("eval"),
        format!("'flags@{}'", flags.ip())
    );

    // A peer outside the pods reaches it with the same flags; without them it cannot.
    let node = format!("noepmd@{}", n0.ip());
    let expr = format!("net_adm:ping('{node}')");
    assert_eq!(from_cluster_ns(&cluster, &expr, Some(&n0.dist)), "pong");
    assert_eq!(from_cluster_ns(&cluster, &expr, None), "pang");

    // The pod spec says how it runs.
    let user = User::outsider(61012);
    let (code, out, err) = kubectl(
        &ws,
        &user,
        &cluster.kubeconfig,
        &[
            "get",
            "pod",
            "noepmd-0",
            "-o",
            "jsonpath={.spec.containers[0].args}",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, r#"["-start_epmd","false","-erl_epmd_port","9100"]"#);
}

const EPMD_PORT: &str = r#"
[[statefulsets]]
name = "moved"
replicas = 2
labels = { app = "moved" }
ports = [{ name = "epmd", port = 4370 }]
env = { RELEASE_NODE = "moved@$(POD_IP)", RELEASE_COOKIE = "monster", ERL_EPMD_PORT = "4370" }
"#;

#[test]
fn epmd_on_another_port_serves_the_node_and_its_peers() {
    let (ws, cluster) = cluster(EPMD_PORT);
    let (m0, m1) = (cluster.pod("moved-0"), cluster.pod("moved-1"));
    assert_eq!(m0.dist.epmd_port, Some(4370));
    assert_eq!(m1.nodes().expect("nodes"), [format!("moved@{}", m0.ip())]);
    let on_4370 = m0
        .netns()
        .run(&["epmd", "-port", "4370", "-names"])
        .expect("epmd on 4370");
    assert!(on_4370.contains("name moved at port"), "{on_4370}");
    assert!(!connects(
        m0.netns().name(),
        "127.0.0.1:4369".parse().expect("addr")
    ));

    let kubeconfig = cluster.kubeconfig.clone();
    let names = ws
        .block_on(move || async move {
            let pods = pods(kubeconfig).await;
            epmd_names_on(&pods, "moved-0", 4370).await
        })
        .expect("workstation");
    assert_eq!(names.len(), 1);
    assert_eq!(names[0].0, "moved");
    // A peer with ERL_EPMD_PORT reaches it; one asking 4369 does not.
    let expr = format!("net_adm:ping('moved@{}')", m0.ip());
    assert_eq!(from_cluster_ns(&cluster, &expr, Some(&m0.dist)), "pong");
    assert_eq!(from_cluster_ns(&cluster, &expr, None), "pang");
}

const IPV6: &str = r#"
[[statefulsets]]
name = "v6"
replicas = 2
labels = { app = "v6" }
ip_family = "IPv6"
ports = [{ name = "epmd", port = 4369 }]
env = { RELEASE_NODE = "v6@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[statefulsets]]
name = "dual"
replicas = 2
labels = { app = "dual" }
ip_family = "DualStack"
ports = [{ name = "epmd", port = 4369 }]
env = { RELEASE_NODE = "dual@$(POD_IP)", RELEASE_COOKIE = "monster", ADDRESSES = "$(POD_IPS)" }
"#;

#[test]
fn ipv6_and_dual_stack_pods_form_clusters_the_workstation_cannot_reach() {
    let (ws, cluster) = cluster(IPV6);
    let (v0, v1) = (cluster.pod("v6-0"), cluster.pod("v6-1"));
    assert!(v0.ip().starts_with("fd00:10:244::"), "{}", v0.ip());
    assert_eq!(v0.ipv6(), Some(v0.ip()));
    assert!(v0.dist.ipv6);
    assert_eq!(v0.nodes().expect("nodes"), [format!("v6@{}", v1.ip())]);
    assert_eq!(
        v0.eval("node()").expect("eval"),
        format!("'v6@{}'", v0.ip())
    );

    let (d0, d1) = (cluster.pod("dual-0"), cluster.pod("dual-1"));
    let d0_v6 = d0.ipv6().expect("a dual-stack pod has an IPv6 address");
    assert!(
        d0.ip().starts_with("10.244."),
        "podIP is the IPv4 one: {}",
        d0.ip()
    );
    assert_eq!(d0.nodes().expect("nodes"), [format!("dual@{}", d1.ip())]);
    assert_eq!(
        d0.eval("os:getenv(\"ADDRESSES\")").expect("eval"),
        format!("\"{},{d0_v6}\"", d0.ip())
    );
    // Pods reach each other over IPv6 too, and the bridge.
    let expr = format!(
        "{{ok, A}} = inet:parse_address(\"{d0_v6}\"), element(1, gen_tcp:connect(A, 4369, [inet6], 3000))"
    );
    assert_eq!(d1.eval(&expr).expect("eval"), "ok");
    assert!(connects(
        cluster.netns().name(),
        SocketAddr::new(d0_v6.parse().expect("ip"), 4369)
    ));
    let route = v1
        .netns()
        .run(&["ip", "-6", "route", "show", "default"])
        .expect("route");
    assert!(route.contains(BRIDGE_V6), "{route}");

    // What the API shows.
    let user = User::outsider(61013);
    let (code, out, err) = kubectl(
        &ws,
        &user,
        &cluster.kubeconfig,
        &[
            "get",
            "pod",
            "dual-0",
            "-o",
            "jsonpath={.status.podIPs[*].ip}",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{} {d0_v6}", d0.ip()));
    let names = epmd_names_from(&ws, cluster.kubeconfig.clone(), "v6-0");
    assert_eq!(names.len(), 1);
    assert_eq!(names[0].0, "v6");

    // The control: the workstation has an IPv6 default route, to a void.
    let routes = ws
        .ns
        .run(&["ip", "-6", "route", "show", "default"])
        .expect("routes");
    assert!(routes.contains("default via"), "{routes}");
    for pod in [v0, d0] {
        let addr = SocketAddr::new(pod.ipv6().expect("v6").parse().expect("ip"), 4369);
        assert!(
            !connects(ws.ns.name(), addr),
            "the workstation reached {addr}"
        );
    }
    let expr = format!("net_kernel:connect_node('v6@{}')", v0.ip());
    let local = ws
        .erl_eval(&user, "monster", &expr, &["-proto_dist", "inet6_tcp"])
        .expect("local node");
    assert_eq!(local, "false");
}

const SIDECARS: &str = r#"
[[pods]]
name = "side"
labels = { app = "side" }
container = "release"
ports = [{ name = "epmd", port = 4369 }]
env = { RELEASE_NODE = "side@$(POD_IP)", RELEASE_COOKIE = "monster" }
sidecars = [{ name = "envoy", ports = [{ name = "http", port = 8080 }] }, { name = "idle" }]
"#;

#[test]
fn sidecars_come_first_and_answer_on_their_ports_beside_the_erlang_node() {
    let (ws, cluster) = cluster(SIDECARS);
    let side = cluster.pod("side");
    assert_eq!(
        side.eval("node()").expect("eval"),
        format!("'side@{}'", side.ip())
    );
    let user = User::outsider(61014);
    let (code, out, err) = kubectl(
        &ws,
        &user,
        &cluster.kubeconfig,
        &[
            "get",
            "pod",
            "side",
            "-o",
            "jsonpath={.spec.containers[*].name}",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "envoy idle release");
    let kubeconfig = cluster.kubeconfig.clone();
    let (greeting, names) = ws
        .block_on(move || async move {
            let pods = pods(kubeconfig).await;
            (
                forward_read(&pods, "side", 8080, b"").await,
                epmd_names(&pods, "side").await,
            )
        })
        .expect("workstation");
    assert_eq!(
        String::from_utf8_lossy(&greeting),
        format!("{SIDECAR_GREETING}envoy\n")
    );
    assert_eq!(names.len(), 1);
    assert_eq!(names[0].0, "side");
}

#[test]
fn a_node_that_cannot_start_fails_the_cluster_at_once() {
    require_root();
    let ws = erlbridge_testbed::Workstation::new().expect("workstation");
    // OTP 25 without epmd and without -erl_epmd_port: "register/listen error: econnrefused".
    let manifest = r#"
[[pods]]
name = "broken"
args = ["-start_epmd", "false", "-kernel", "inet_dist_listen_min", "9100", "inet_dist_listen_max", "9100"]
env = { RELEASE_NODE = "broken@$(POD_IP)" }
"#;
    let started = std::time::Instant::now();
    let err = Cluster::start(&ws, manifest)
        .err()
        .expect("the node cannot start");
    assert!(err.to_string().contains("exited"), "{err:#}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}
