//! The clusters people bring: exec-plugin and certificate logins, several contexts and
//! kubeconfig files, in-cluster CI with a rotating token, an API server behind a path prefix
//! or a proxy, and pods whose nodes run without epmd, with epmd elsewhere, beside sidecars,
//! or on IPv6. Each end to end as an unprivileged uid, after the control.

use std::time::Duration;

use erlbridge_kube_emulator::StartOptions;
use erlbridge_testbed::events::{self, Event, Mode};
use erlbridge_testbed::logins::CONTEXT_STAGING;
use erlbridge_testbed::{Scenario, erlang};

const COOKIE: &str = "monster";
const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 1
labels = { app = "app" }
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[pods]]
name = "db-0"
namespace = "staging"
labels = { app = "db" }
env = { RELEASE_NODE = "db@$(POD_IP)", RELEASE_COOKIE = "monster" }
"#;

fn node(s: &Scenario, pod: &str) -> String {
    format!("app@{}", s.cluster.pod(pod).ip())
}

/// `erlbridge up ARGS` as the user with `env` set and no `--kubeconfig` added.
fn up_with_env(s: &Scenario, env: &[&str], args: &[&str]) -> (i32, String, String) {
    let mut argv: Vec<String> = vec!["env".into()];
    argv.extend(env.iter().map(|e| (*e).to_owned()));
    argv.extend([s.bins.path("erlbridge"), "up".into()]);
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv.extend(["--helper-socket".into(), s.helper_socket()]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (code, out, err) = s.ws.run_as(&s.user, &argv).expect("erlbridge");
    events::assert_plain(&out);
    events::assert_plain(&err);
    (code, out, err)
}

/// A script for `-- CMD` that reaches the bridged node and exits 0.
const REACH: &str = "N = list_to_atom(os:getenv(\"ERLBRIDGE_NODE\")), \
    true = net_kernel:connect_node(N), N = rpc:call(N, erlang, node, []), halt(0).";

/// `-- CMD` that reaches the bridged node (as `erlang::command_args` builds it).
const REACH_CMD: [&str; 10] = [
    "--",
    "erl",
    "-name",
    "ci@127.0.0.1",
    "-hidden",
    "-setcookie",
    COOKIE,
    "-noshell",
    "-eval",
    REACH,
];

#[test]
fn exec_plugin_and_certificate_logins_keep_working_past_their_token() {
    let mut s = Scenario::start(MANIFEST, 61130);
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(COOKIE, &app0), "the control");

    // Tokens from the exec plugin live 3 s; the bridge outlives several.
    let login = s
        .cluster
        .exec_login(&s.bins, Duration::from_secs(3))
        .expect("exec login");
    let kc = login.kubeconfig.display().to_string();
    let (mut up, _) = s.up(&["statefulset/app", "--kubeconfig", &kc]);
    let first = login.calls();
    assert!(first >= 1, "the plugin ran");
    std::thread::sleep(Duration::from_secs(7));
    assert!(s.reaches(COOKIE, &app0), "a new port-forward logs in again");
    s.cluster.restart_pod_with_new_ip("app-0").expect("restart");
    events::wait(&mut up, Duration::from_secs(15), |e| {
        matches!(e, Event::PodChanged { .. })
    });
    assert!(
        s.reaches(COOKIE, &node(&s, "app-0")),
        "the watch logged in again"
    );
    assert!(login.calls() > first, "the plugin ran again");
    drop(up);

    // A client certificate signed by the cluster's CA.
    let kc = s
        .cluster
        .client_certificate_kubeconfig("alice")
        .expect("certificate");
    let mut args = vec!["app-0", "--kubeconfig"];
    let kc = kc.display().to_string();
    args.push(&kc);
    args.extend(REACH_CMD);
    let (code, out, err) = s.run(&s.user, "up", &args);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn contexts_and_several_kubeconfig_files_resolve_as_kubectls() {
    let s = Scenario::start(MANIFEST, 61131);
    let db = format!("db@{}", s.cluster.pod("staging/db-0").ip());
    assert!(!s.reaches(COOKIE, &db), "the control");
    let contexts = s
        .cluster
        .contexts(erlbridge_testbed::logins::CONTEXT_TEST)
        .expect("contexts");
    let whole = contexts.whole.display().to_string();
    // --context in one file with several: its namespace is staging.
    let mut args = vec!["db-0", "--kubeconfig", &whole, "--context", CONTEXT_STAGING];
    args.extend(REACH_CMD);
    let (code, out, err) = up_with_env(&s, &[], &args);
    assert_eq!(code, 0, "{out}{err}");
    // KUBECONFIG naming several files, merged: the first file's current context, then
    // --context from another file.
    let env = format!("KUBECONFIG={}", contexts.kubeconfig_env());
    let mut args = vec!["app-0"];
    args.extend(REACH_CMD);
    let (code, out, err) = up_with_env(&s, &[&env], &args);
    assert_eq!(code, 0, "{out}{err}");
    let mut args = vec!["db-0", "--context", CONTEXT_STAGING];
    args.extend(REACH_CMD);
    let (code, out, err) = up_with_env(&s, &[&env], &args);
    assert_eq!(code, 0, "{out}{err}");
    // A context that is not there: said plainly.
    let (code, _, err) = up_with_env(&s, &[&env], &["app-0", "--context", "nope"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("nope"), "{err}");

    // A listed file that does not exist is skipped, as kubectl skips it; the rest merge the
    // same way.
    let missing = s.ws.scratch().join("no-such.kc").display().to_string();
    let env = format!("KUBECONFIG={missing}:{}", contexts.kubeconfig_env());
    for target in [
        ["app-0"].as_slice(),
        &["db-0", "--context", CONTEXT_STAGING],
    ] {
        let mut args = target.to_vec();
        args.extend(REACH_CMD);
        let (code, out, err) = up_with_env(&s, &[&env], &args);
        assert_eq!(code, 0, "{target:?}: {out}{err}");
    }
    // One that exists but is no kubeconfig is an error that names it; none at all, too.
    let broken = s
        .cluster
        .write_file("broken.kc", "clusters: [")
        .expect("write");
    let env = format!(
        "KUBECONFIG={}:{}",
        broken.display(),
        contexts.kubeconfig_env()
    );
    let (code, _, err) = up_with_env(&s, &[&env], &["app-0"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains(&broken.display().to_string()), "{err}");
    let env = format!("KUBECONFIG={missing}");
    let (code, _, err) = up_with_env(&s, &[&env], &["app-0"]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("none of the files KUBECONFIG lists exists"),
        "{err}"
    );
    // --kubeconfig wins over KUBECONFIG, broken or not, as for kubectl.
    let env = format!("KUBECONFIG={}", broken.display());
    let mut args = vec!["app-0", "--kubeconfig", &whole];
    args.extend(REACH_CMD);
    let (code, out, err) = up_with_env(&s, &[&env], &args);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn in_cluster_ci_with_a_rotating_service_account_token() {
    let s = Scenario::start(MANIFEST, 61132);
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(COOKIE, &app0), "the control");
    let mut sa = s.cluster.in_cluster().expect("service account");
    let socket = s.helper_socket();
    let argv = [
        s.bins.path("erlbridge"),
        "up".into(),
        "statefulset/app".into(),
        "--output".into(),
        "json".into(),
        "--helper-socket".into(),
        socket,
    ];
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut up = sa
        .spawn_as(&s.ws, &s.user, &argv)
        .expect("erlbridge in a pod");
    events::ready(&mut up, Duration::from_secs(60));
    assert!(s.reaches(COOKIE, &app0));
    // The token is rotated; once kube-rs read the new file (within a minute), the old goes.
    let old = sa.token().to_owned();
    sa.rotate().expect("rotate");
    std::thread::sleep(Duration::from_secs(65));
    sa.revoke(&old);
    assert!(
        s.reaches(COOKIE, &app0),
        "new port-forwards use the new token"
    );
    let mut cluster = s.cluster;
    cluster.restart_pod_with_new_ip("app-0").expect("restart");
    events::wait(&mut up, Duration::from_secs(20), |e| {
        matches!(e, Event::PodChanged { .. })
    });
}

#[test]
fn an_api_server_behind_a_path_prefix() {
    let s = Scenario::start_with_api(
        MANIFEST,
        61133,
        StartOptions::default().path_prefix("/k8s/clusters/c-abc"),
        true,
    );
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(COOKIE, &app0), "the control");
    let kubeconfig = std::fs::read_to_string(&s.cluster.kubeconfig).expect("kubeconfig");
    assert!(kubeconfig.contains("/k8s/clusters/c-abc"), "{kubeconfig}");
    let (mut up, _) = s.up(&["statefulset/app"]);
    assert!(s.reaches(COOKIE, &app0), "port-forwards carry the prefix");
    let mut cluster = s.cluster;
    cluster.restart_pod_with_new_ip("app-0").expect("restart");
    events::wait(&mut up, Duration::from_secs(15), |e| {
        matches!(e, Event::PodChanged { .. })
    });
}

#[test]
fn proxies_from_the_kubeconfig_or_the_environment_and_no_proxy() {
    let s = Scenario::start(MANIFEST, 61134);
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(COOKIE, &app0), "the control");
    let proxied = s
        .cluster
        .api_through_proxy(&s.ws, Some(("erl", "br1dge")))
        .expect("proxy");
    // Direct packets to the API server are dropped now: only the proxy's path works.
    let (code, _, err) = s.run(&s.user, "up", &["app-0", "--request-timeout", "2s"]);
    assert_eq!(code, 5, "the control: no direct path: {err}");
    let kc = proxied.kubeconfig.display().to_string();
    let mut args = vec!["app-0", "--kubeconfig", &kc];
    args.extend(REACH_CMD);
    let (code, out, err) = s.run(&s.user, "up", &args);
    assert_eq!(code, 0, "proxy-url: {out}{err}");
    let tunnels = proxied.proxy.tunnels();
    assert!(
        tunnels
            .iter()
            .any(|t| t.target.contains("6443") && t.user.as_deref() == Some("erl")),
        "{tunnels:?}"
    );
    let direct = s.cluster.kubeconfig.display().to_string();
    let proxy = format!("HTTPS_PROXY={}", proxied.url());
    let mut args = vec!["app-0", "--kubeconfig", &direct];
    args.extend(REACH_CMD);
    let (code, out, err) = up_with_env(&s, &[&proxy], &args);
    assert_eq!(code, 0, "HTTPS_PROXY: {out}{err}");
    // NO_PROXY naming the API server: erlbridge goes direct, where packets are dropped.
    let (code, _, err) = up_with_env(
        &s,
        &[&proxy, "NO_PROXY=172.31.255.1"],
        &["app-0", "--kubeconfig", &direct, "--request-timeout", "2s"],
    );
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("did not answer in 2 s"), "{err}");
}

const SHAPES: &str = r#"
[[pods]]
name = "noepmd-0"
labels = { app = "noepmd" }
args = ["-start_epmd", "false", "-erl_epmd_port", "9100"]
env = { RELEASE_NODE = "noepmd@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[pods]]
name = "moved-0"
labels = { app = "moved" }
env = { RELEASE_NODE = "moved@$(POD_IP)", RELEASE_COOKIE = "monster", ERL_EPMD_PORT = "4370" }

[[pods]]
name = "side-0"
labels = { app = "side" }
sidecars = [{ name = "envoy", ports = [{ port = 15001 }], env = { RELEASE_COOKIE = "not-this-one" } }]
env = { RELEASE_NODE = "side@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[pods]]
name = "v6-0"
labels = { app = "v6" }
ip_family = "IPv6"
env = { RELEASE_NODE = "v6@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[pods]]
name = "dual-0"
labels = { app = "dual" }
ip_family = "DualStack"
env = { RELEASE_NODE = "dual@$(POD_IP)", RELEASE_COOKIE = "monster" }
"#;

#[test]
fn pods_without_epmd_with_epmd_elsewhere_with_sidecars_and_on_ipv6() {
    let s = Scenario::start(SHAPES, 61135);
    for (pod, alive) in [
        ("noepmd-0", "noepmd"),
        ("moved-0", "moved"),
        ("side-0", "side"),
        ("dual-0", "dual"),
    ] {
        let target = format!("{alive}@{}", s.cluster.pod(pod).ip());
        assert!(!s.reaches(COOKIE, &target), "the control for {pod}");
        // The cookie comes from the Erlang container, not the sidecar.
        let (up, ready) = s.up(&[pod]);
        assert_eq!(ready.nodes[0].node, target, "{pod}");
        assert!(s.reaches(COOKIE, &target), "{pod}");
        if pod == "noepmd-0" {
            assert!(
                ready.nodes[0].found.contains("-erl_epmd_port 9100"),
                "erlbridge says how it found the node: {ready:?}"
            );
            assert_eq!(ready.nodes[0].dist_port, 9100);
        }
        drop(up);
        s.wait_no_mappings(Duration::from_secs(2));
    }
    // Without epmd in the no-helper mode too.
    let noepmd = format!("noepmd@{}", s.cluster.pod("noepmd-0").ip());
    let (up, ready) = s.up(&["noepmd-0", "--mode", "epmd"]);
    let flags = ready.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let call =
        format!("{{net_kernel:connect_node('{noepmd}'), rpc:call('{noepmd}', erlang, node, [])}}");
    assert_eq!(
        s.local(COOKIE, &call, &flags),
        format!("{{true,'{noepmd}'}}")
    );
    drop(up);

    // IPv6: the node is app@fd00:...; local nodes need inet6 distribution, which erlbridge
    // says and sets.
    let v6 = format!("v6@{}", s.cluster.pod("v6-0").ip());
    let inet6 = ["-proto_dist", "inet6_tcp"];
    let call = format!("{{net_kernel:connect_node('{v6}'), rpc:call('{v6}', erlang, node, [])}}");
    assert_eq!(
        s.local(COOKIE, &format!("net_kernel:connect_node('{v6}')"), &inet6),
        "false",
        "the control"
    );
    let (up, ready) = s.up(&["v6-0"]);
    assert_eq!(
        (ready.mode, ready.erl_flags.as_deref()),
        (Mode::Nat, Some("-proto_dist inet6_tcp"))
    );
    assert_eq!(s.local(COOKIE, &call, &inet6), format!("{{true,'{v6}'}}"));
    drop(up);
    s.wait_no_mappings(Duration::from_secs(2));
    let script = format!(
        "true = net_kernel:connect_node('{v6}'), io:format(\"~s~n\", [os:getenv(\"ERL_AFLAGS\")]), halt(0)."
    );
    let mut args = vec!["v6-0".to_owned()];
    args.extend(erlang::command_args(COOKIE, &script));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = s.run(&s.user, "up", &args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("-proto_dist inet6_tcp"), "{out}");
    s.wait_no_mappings(Duration::from_secs(2));
}
