//! `erlbridge up` end to end on the test cluster: helperd as root, erlbridge and the local
//! Erlang node as an unprivileged uid in the workstation, real Erlang nodes in the pods.
//! Every scenario first shows that without erlbridge the local node cannot reach the pod.

use std::time::Duration;

use erlbridge_kube_emulator::PodDesc;
use erlbridge_testbed::events::{self, BridgedNode, Event};
use erlbridge_testbed::{Helperd, Scenario, User, erlang};
use nix::sys::signal::Signal;

const COOKIE: &str = "monster";
const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 3
labels = { app = "app" }
ports = [{ name = "epmd", port = 4369 }, { name = "dist", port = 9100 }]
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster", ERL_DIST_PORT = "9100" }

[[pods]]
name = "solo"
labels = { app = "solo" }
ports = [{ name = "epmd", port = 4369 }]
env = { RELEASE_NODE = "solo@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[pods]]
name = "dns-0"
hostname = "dns-0"
subdomain = "dns"
labels = { app = "dns" }
env = { RELEASE_NODE = "dns@$(POD_NAME).dns.$(POD_NAMESPACE).svc.cluster.local", RELEASE_COOKIE = "monster" }

[[pods]]
name = "noepmd"
labels = { app = "noepmd" }
"#;

fn connect_and_call(node: &str) -> String {
    format!("{{net_kernel:connect_node('{node}'), rpc:call('{node}', erlang, node, [])}}")
}

#[test]
fn up_a_pod_then_a_local_node_reaches_it_and_the_rules_go_with_the_client() {
    let s = Scenario::start(MANIFEST, 61020);
    let ip = s.cluster.pod("app-0").ip();
    let node = format!("app@{ip}");
    assert_eq!(
        s.local(COOKIE, &format!("net_kernel:connect_node('{node}')"), &[]),
        "false",
        "the control"
    );

    let (up, ready) = s.up(&["app-0"]);
    assert_eq!(
        ready.nodes,
        [BridgedNode {
            node: node.clone(),
            pod: "app-0".into(),
            namespace: "default".into(),
            ip: ip.parse().expect("ip"),
            epmd_port: 4369,
            dist_port: 9100,
            alias: false,
            found: "epmd".into(),
        }]
    );
    assert_eq!(
        s.local(COOKIE, &connect_and_call(&node), &[]),
        format!("{{true,'{node}'}}")
    );
    assert_eq!(s.mappings(), 2, "epmd and distribution");

    up.signal(Signal::SIGINT);
    let mut up = up;
    assert_eq!(up.wait_exit(Duration::from_secs(5)).expect("exits"), 0);
    s.wait_no_mappings(Duration::from_secs(1));
    assert_eq!(
        s.local(COOKIE, &format!("net_kernel:connect_node('{node}')"), &[]),
        "false"
    );

    // A node on a random distribution port, and a client killed with SIGKILL.
    let solo = format!("solo@{}", s.cluster.pod("solo").ip());
    assert_eq!(
        s.local(COOKIE, &format!("net_kernel:connect_node('{solo}')"), &[]),
        "false",
        "the control"
    );
    let (up, ready) = s.up(&["pod/solo"]);
    let port = ready.nodes[0].dist_port;
    assert!(port > 1024 && port != 9100, "{ready:?}");
    assert_eq!(
        s.local(COOKIE, &connect_and_call(&solo), &[]),
        format!("{{true,'{solo}'}}")
    );
    up.signal(Signal::SIGKILL);
    s.wait_no_mappings(Duration::from_secs(1));
}

#[test]
fn a_statefulset_is_bridged_without_splitting_its_cluster() {
    let s = Scenario::start(MANIFEST, 61020);
    let names: Vec<String> = ["app-0", "app-1", "app-2"]
        .iter()
        .map(|p| format!("app@{}", s.cluster.pod(p).ip()))
        .collect();
    let peers_intact = |when: &str| s.assert_peers_intact(&["app-0", "app-1", "app-2"], when);
    peers_intact("before");
    assert_eq!(
        s.local(
            COOKIE,
            &format!("net_kernel:connect_node('{}')", names[0]),
            &[]
        ),
        "false",
        "the control"
    );

    let (up, ready) = s.up(&["statefulset/app"]);
    let mut bridged: Vec<String> = ready.nodes.iter().map(|n| n.node.clone()).collect();
    bridged.sort();
    let mut want = names.clone();
    want.sort();
    assert_eq!(bridged, want);

    // One hidden local node reaches all three, and holds the connections while the pods are
    // checked.
    let all = names
        .iter()
        .map(|n| format!("{{net_kernel:connect_node('{n}'), rpc:call('{n}', erlang, node, [])}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let pods_view = format!(
        "erpc:call('{}', fun() -> {{lists:sort(nodes()), lists:sort(nodes(hidden))}} end)",
        names[0]
    );
    let result = s.local(COOKIE, &format!("{{[{all}], {pods_view}}}"), &[]);
    for n in &names {
        assert!(
            result.contains(&format!("{{true,'{n}'}}")),
            "{n} in {result}"
        );
    }
    assert!(
        result.contains("local"),
        "the pod sees the local node only as hidden: {result}"
    );
    peers_intact("during");
    drop(up);
    s.wait_no_mappings(Duration::from_secs(2));
    peers_intact("after");
}

#[test]
fn a_selector_of_expressions_bridges_only_the_pods_it_selects() {
    const EXPRESSIONS: &str = r#"
[[statefulsets]]
name = "app"
replicas = 2
labels = { app = "app", tier = "backend" }
match_expressions = [
  { key = "app", operator = "In", values = ["app"] },
  { key = "tier", operator = "Exists" },
]
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[pods]]
name = "other-0"
labels = { app = "other" }
env = { RELEASE_NODE = "other@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[pods]]
name = "stray"
labels = { app = "app" }
env = { RELEASE_NODE = "stray@$(POD_IP)", RELEASE_COOKIE = "monster" }
"#;
    let s = Scenario::start(EXPRESSIONS, 61022);
    let other = format!("other@{}", s.cluster.pod("other-0").ip());
    assert!(!s.reaches(COOKIE, &other), "the control");
    let (_up, ready) = s.up(&["statefulset/app"]);
    let mut pods: Vec<&str> = ready.nodes.iter().map(|n| n.pod.as_str()).collect();
    pods.sort_unstable();
    assert_eq!(pods, ["app-0", "app-1"], "{ready:?}");
    assert_eq!(s.mappings(), 4, "epmd and distribution of two pods only");
    assert!(
        !s.reaches(COOKIE, &other),
        "another application's pod stays out"
    );
    let app1 = format!("app@{}", s.cluster.pod("app-1").ip());
    assert!(s.reaches(COOKIE, &app1));
}

#[test]
fn dns_named_nodes_connect_with_the_inetrc_erlbridge_writes() {
    let s = Scenario::start(MANIFEST, 61020);
    let node = "dns@dns-0.dns.default.svc.cluster.local";
    let control = s.local(COOKIE, &format!("net_kernel:connect_node('{node}')"), &[]);
    assert_eq!(control, "false", "the control");
    let (up, ready) = s.up(&["dns-0"]);
    assert_eq!(ready.nodes[0].node, node, "{ready:?}");
    let inetrc = ready.inetrc.expect("an inetrc file").display().to_string();
    let text = std::fs::read_to_string(&inetrc).expect("inetrc");
    let ip = s.cluster.pod("dns-0").ip().replace('.', ",");
    assert!(
        text.contains(&format!(
            "{{host, {{{ip}}}, [\"dns-0.dns.default.svc.cluster.local\"]}}."
        )),
        "{text}"
    );

    let inetrc_arg = format!("\"{inetrc}\"");
    let with_inetrc = ["-kernel", "inetrc", inetrc_arg.as_str()];
    assert_eq!(
        s.local(COOKIE, &connect_and_call(node), &with_inetrc),
        format!("{{true,'{node}'}}")
    );
    assert_eq!(
        s.local(COOKIE, &format!("net_kernel:connect_node('{node}')"), &[]),
        "false",
        "without it the name does not resolve"
    );
    let mut up = up;
    up.signal(Signal::SIGTERM);
    assert_eq!(up.wait_exit(Duration::from_secs(5)).expect("exits"), 0);
    s.wait_no_mappings(Duration::from_secs(1));
    assert!(
        !std::path::Path::new(&inetrc).exists(),
        "the inetrc file is removed at the end"
    );
}

#[test]
fn a_command_runs_against_the_pod_and_its_exit_code_is_erlbridges() {
    let s = Scenario::start(MANIFEST, 61020);
    let script = |code: u8| {
        format!(
            "N = list_to_atom(os:getenv(\"ERLBRIDGE_NODE\")), true = net_kernel:connect_node(N), \
             io:format(\"answer ~p~n\", [rpc:call(N, erlang, node, [])]), halt({code})."
        )
    };
    let node = format!("app@{}", s.cluster.pod("app-0").ip());
    let control = s.local(COOKIE, &format!("net_kernel:connect_node('{node}')"), &[]);
    assert_eq!(control, "false", "the control");
    for code in [0, 3] {
        let script = script(code);
        let mut args = vec!["app-0".to_owned()];
        args.extend(erlang::command_args(COOKIE, &script));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, out, err) = s.run(&s.user, "up", &args);
        assert_eq!(status, i32::from(code), "{out}{err}");
        assert!(out.contains(&format!("answer '{node}'")), "{out}{err}");
        assert!(
            err.contains(&format!("its rules are removed (exit {code})")),
            "the summary line: {err}"
        );
        s.wait_no_mappings(Duration::from_secs(1));
    }
}

#[test]
fn bad_input_gets_a_clear_error_an_exit_code_and_leaves_nothing() {
    let mut s = Scenario::start(MANIFEST, 61020);
    let mut pending: PodDesc = s.cluster.pod("noepmd").desc.clone();
    pending.name = "pending".into();
    pending.phase = "Pending".into();
    pending.ready = false;
    s.cluster.emulator.apply_pod(pending);
    let garbage = s.ws.scratch().join("garbage-kubeconfig");
    std::fs::write(&garbage, "this: [is not a kubeconfig").expect("write");
    let outsider = User::outsider(61021);
    let user = s.user.clone();
    let kc = |p: &std::path::Path| p.display().to_string();
    let (missing, garbage_s, forbidden) = (
        "/nonexistent/kubeconfig".to_owned(),
        kc(&garbage),
        kc(&s.cluster.no_rights_kubeconfig),
    );
    let cases: Vec<(&str, &User, Vec<&str>, i32, &str)> = vec![
        (
            "unknown pod",
            &user,
            vec!["nope"],
            3,
            "pod nope in namespace default not found",
        ),
        (
            "unknown StatefulSet",
            &user,
            vec!["sts/nope"],
            3,
            "statefulset nope",
        ),
        (
            "selector without pods",
            &user,
            vec!["-l", "app=nothing"],
            3,
            "no pod in namespace default has the labels app=nothing",
        ),
        ("pod not Running", &user, vec!["pending"], 4, "Pending"),
        (
            "pod without epmd",
            &user,
            vec!["noepmd"],
            4,
            "no epmd answering on port 4369",
        ),
        (
            "malformed TARGET",
            &user,
            vec!["svc/app"],
            2,
            "unsupported kind",
        ),
        (
            "malformed name",
            &user,
            vec!["App_0"],
            2,
            "not a valid Kubernetes name",
        ),
        (
            "kubeconfig missing",
            &user,
            vec!["app-0", "--kubeconfig", &missing],
            5,
            "/nonexistent/kubeconfig",
        ),
        (
            "kubeconfig invalid",
            &user,
            vec!["app-0", "--kubeconfig", &garbage_s],
            5,
            "cannot use the kubeconfig",
        ),
        (
            "forbidden token",
            &user,
            vec!["app-0", "--kubeconfig", &forbidden],
            6,
            "forbidden",
        ),
        (
            "caller not allowed",
            &outsider,
            vec!["app-0", "--mode", "nat"],
            7,
            "add you to group 61000 (usermod -aG 61000 <your user>)",
        ),
        (
            "helper not running",
            &user,
            vec![
                "app-0",
                "--mode",
                "nat",
                "--helper-socket",
                "/nonexistent/helper.sock",
            ],
            7,
            "is not reachable",
        ),
    ];
    for (name, who, args, code, message) in cases {
        let (status, out, err) = s.run(who, "up", &args);
        assert_eq!(status, code, "{name}: {out}{err}");
        assert!(
            format!("{out}{err}").contains(message),
            "{name}: {message:?} not in {out}{err}"
        );
        assert_eq!(s.mappings(), 0, "{name} left rules");
    }
    // The same in JSON: one error event with the code.
    let (status, out, _) = s.run(&user, "up", &["nope", "--output", "json"]);
    assert_eq!(status, 3);
    assert!(
        matches!(
            events::all(&out).as_slice(),
            [Event::Error { code: 3, kind, .. }] if kind == "target_not_found"
        ),
        "{out}"
    );

    // A helper whose policy refuses the pod network.
    s.helper().stop(Signal::SIGTERM).expect("stop");
    s.helperd = Some(
        Helperd::start(&s.ws, &s.bins, "allowed_cidrs = [\"192.168.0.0/16\"]").expect("helperd"),
    );
    let (status, out, err) = s.run(&user, "up", &["app-0"]);
    assert_eq!(status, 8, "{out}{err}");
    assert!(err.contains("allowed_cidrs"), "{err}");
    assert_eq!(s.mappings(), 0);
}
