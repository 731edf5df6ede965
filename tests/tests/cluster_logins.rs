//! Logins and ways to the API server that the test bed sets up, checked with real kubectl (as
//! an unprivileged user) and kube-rs: the exec credential plugin, client certificates, several
//! contexts and files, a path prefix, in-cluster service accounts with rotation, a CONNECT
//! proxy as the only path, and an API server whose packets are dropped. Needs root.

#[allow(dead_code)] // each test binary uses its own part of it
mod harness;

use std::time::{Duration, Instant};

use erlbridge_kube_emulator::StartOptions;
use erlbridge_kube_emulator::credential::PLUGIN_NAME;
use erlbridge_testbed::logins::{
    CONTEXT_ELSEWHERE, CONTEXT_NO_RIGHTS, CONTEXT_STAGING, CONTEXT_TEST,
};
use erlbridge_testbed::{Bins, Cluster, User, Workstation, require_root};
use harness::{epmd_names_from, kubectl};

const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 1
labels = { app = "app" }
ports = [{ name = "epmd", port = 4369 }]
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster" }
"#;

fn cluster() -> (Workstation, Cluster) {
    harness::cluster(MANIFEST)
}

/// `kubectl get pods -o name` with `kubeconfig` (and `args`) as `user`: (code, stdout, stderr).
fn get_pods(
    ws: &Workstation,
    user: &User,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> (i32, String, String) {
    let mut argv = vec!["get", "pods", "-o", "name"];
    argv.extend(args);
    kubectl(ws, user, kubeconfig, &argv)
}

#[test]
fn the_exec_plugin_logs_the_user_in_again_when_its_token_expires() {
    let (ws, cluster) = cluster();
    let bins = Bins::stage(&[PLUGIN_NAME]).expect("binaries");
    let login = cluster
        .exec_login(&bins, Duration::from_secs(2))
        .expect("exec login");
    let user = User::outsider(61015);
    let (code, out, err) = get_pods(&ws, &user, &login.kubeconfig, &[]);
    assert_eq!((code, out.as_str()), (0, "pod/app-0\n"), "{err}");
    let calls = login.calls();
    assert!(calls >= 1, "the user ran the plugin");
    std::thread::sleep(Duration::from_millis(2100));
    let (code, _, err) = get_pods(&ws, &user, &login.kubeconfig, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(login.calls() > calls);

    // kube-rs runs it too, and its expired tokens are refused.
    let names = epmd_names_from(&ws, login.kubeconfig.clone(), "app-0");
    assert_eq!(names[0].0, "app");
}

#[test]
fn client_certificates_and_several_contexts_whole_or_split_across_files() {
    let (ws, cluster) = cluster();
    let user = User::outsider(61016);
    let cert = cluster
        .client_certificate_kubeconfig("alice")
        .expect("certificate");
    let (code, out, err) = get_pods(&ws, &user, &cert, &[]);
    assert_eq!((code, out.as_str()), (0, "pod/app-0\n"), "{err}");
    let names = epmd_names_from(&ws, cert, "app-0");
    assert_eq!(names[0].0, "app");

    let contexts = cluster.contexts(CONTEXT_ELSEWHERE).expect("contexts");
    let (code, _, err) = get_pods(&ws, &user, &contexts.whole, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("connection refused"), "{err}");
    let (code, out, err) = get_pods(&ws, &user, &contexts.whole, &["--context", CONTEXT_TEST]);
    assert_eq!((code, out.as_str()), (0, "pod/app-0\n"), "{err}");
    let (code, _, err) = get_pods(
        &ws,
        &user,
        &contexts.whole,
        &["--context", CONTEXT_NO_RIGHTS],
    );
    assert_ne!(code, 0);
    assert!(err.contains("Forbidden"), "{err}");
    let (code, out, err) = get_pods(&ws, &user, &contexts.whole, &["--context", CONTEXT_STAGING]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (_, out, _) = kubectl(
        &ws,
        &user,
        &contexts.whole,
        &[
            "config",
            "view",
            "--minify",
            "--context",
            CONTEXT_STAGING,
            "-o",
            "jsonpath={..namespace}",
        ],
    );
    assert_eq!(out, "staging");

    // The same across files, merged as kubectl merges KUBECONFIG.
    assert_eq!(contexts.split.len(), 4);
    let env = format!("KUBECONFIG={}", contexts.kubeconfig_env());
    let (code, out, err) = ws
        .run_as(
            &user,
            &["env", &env, "kubectl", "config", "current-context"],
        )
        .expect("kubectl");
    assert_eq!((code, out.trim()), (0, CONTEXT_ELSEWHERE), "{err}");
    let (code, out, err) = ws
        .run_as(
            &user,
            &[
                "env",
                &env,
                "kubectl",
                "--context",
                CONTEXT_TEST,
                "get",
                "pods",
                "-o",
                "name",
            ],
        )
        .expect("kubectl");
    assert_eq!((code, out.as_str()), (0, "pod/app-0\n"), "{err}");
    let split = contexts.split.clone();
    let current = ws
        .block_on(move || async move {
            let mut merged = kube::config::Kubeconfig::read_from(&split[0]).expect("first");
            for file in &split[1..] {
                merged = merged
                    .merge(kube::config::Kubeconfig::read_from(file).expect("file"))
                    .expect("merge");
            }
            merged.current_context
        })
        .expect("workstation");
    assert_eq!(current.as_deref(), Some(CONTEXT_ELSEWHERE));
}

#[test]
fn an_api_server_under_a_path_prefix_serves_everything_there() {
    require_root();
    let ws = Workstation::new().expect("workstation");
    let prefix = "/k8s/clusters/c-abc";
    let cluster = Cluster::start_with(&ws, MANIFEST, StartOptions::default().path_prefix(prefix))
        .expect("cluster");
    assert!(cluster.emulator.server_url().ends_with(prefix));
    let text = std::fs::read_to_string(&cluster.kubeconfig).expect("kubeconfig");
    assert!(text.contains(prefix), "{text}");
    let user = User::outsider(61017);
    let (code, out, err) = get_pods(&ws, &user, &cluster.kubeconfig, &[]);
    assert_eq!((code, out.as_str()), (0, "pod/app-0\n"), "{err}");
    let names = epmd_names_from(&ws, cluster.kubeconfig.clone(), "app-0");
    assert_eq!(names[0].0, "app");
}

#[test]
fn in_cluster_commands_see_the_service_account_and_its_rotation() {
    let (ws, cluster) = cluster();
    let host_had_secrets = std::path::Path::new("/run/secrets").exists();
    let mut sa = cluster.in_cluster().expect("service account");
    let user = User::outsider(61018);
    let (code, out, err) = sa
        .run_as(&ws, &user, &["kubectl", "get", "pods", "-o", "name"])
        .expect("kubectl");
    assert_eq!((code, out.as_str()), (0, "pod/app-0\n"), "{err}");
    let (code, out, err) = sa
        .run_as(
            &ws,
            &user,
            &["sh", "-c", "cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; id -u; echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"],
        )
        .expect("sh");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("default61018\n{}\n", cluster.api_addr()));

    // A command that runs across a rotation sees the new files, and logs in with them.
    let go = ws.scratch().join("rotated");
    let script = format!(
        "kubectl get pods -o name; while [ ! -e {} ]; do sleep 0.05; done; \
         cat /var/run/secrets/kubernetes.io/serviceaccount/token; echo; kubectl get pods -o name",
        go.display()
    );
    let mut job = sa
        .spawn_as(&ws, &user, &["sh", "-c", &script])
        .expect("job");
    job.wait_line(Duration::from_secs(20), |l| l == "pod/app-0")
        .expect("the first list");
    let old = sa.token().to_owned();
    let new = sa.rotate().expect("rotate");
    sa.revoke(&old);
    std::fs::write(&go, "").expect("go");
    job.wait_line(Duration::from_secs(20), |l| l == new)
        .expect("the new token");
    job.wait_line(Duration::from_secs(20), |l| l == "pod/app-0")
        .expect("the list with the new token");
    assert_eq!(job.wait_exit(Duration::from_secs(10)).expect("exit"), 0);
    // Nothing was made on the host.
    assert_eq!(
        std::path::Path::new("/run/secrets").exists(),
        host_had_secrets
    );
}

#[test]
fn a_connect_proxy_is_the_only_path_while_direct_packets_are_dropped() {
    let (ws, cluster) = cluster();
    let user = User::outsider(61019);
    let proxied = cluster
        .api_through_proxy(&ws, Some(("u", "p@ss")))
        .expect("proxy");
    let (code, out, err) = get_pods(&ws, &user, &proxied.kubeconfig, &[]);
    assert_eq!((code, out.as_str()), (0, "pod/app-0\n"), "{err}");
    let tunnels = proxied.proxy.tunnels();
    assert!(!tunnels.is_empty());
    assert!(
        tunnels
            .iter()
            .all(|t| t.target == cluster.api_addr().to_string() && t.user.as_deref() == Some("u"))
    );
    // HTTPS_PROXY with the plain kubeconfig goes through it too.
    let before = proxied.proxy.tunnels().len();
    let kc = cluster.kubeconfig.display().to_string();
    let https_proxy = format!("HTTPS_PROXY={}", proxied.url());
    let (code, out, err) = ws
        .run_as(
            &user,
            &[
                "env",
                &https_proxy,
                "kubectl",
                "--kubeconfig",
                &kc,
                "get",
                "pods",
                "-o",
                "name",
            ],
        )
        .expect("kubectl");
    assert_eq!((code, out.as_str()), (0, "pod/app-0\n"), "{err}");
    assert!(proxied.proxy.tunnels().len() > before);
    // The direct path hangs (dropped, not refused) until the proxy goes.
    let started = Instant::now();
    let (code, _, err) = get_pods(&ws, &user, &cluster.kubeconfig, &["--request-timeout=2s"]);
    assert_ne!(code, 0);
    assert!(started.elapsed() >= Duration::from_secs(2), "{err}");
    drop(proxied);
    let (code, _, err) = get_pods(&ws, &user, &cluster.kubeconfig, &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn an_api_server_that_drops_packets_leaves_connections_hanging_until_switched_back() {
    let (ws, cluster) = cluster();
    let api = cluster.api_addr();
    let connect = |within: Duration| {
        erlbridge_kube_emulator::netns::within(ws.ns.name(), move || {
            std::net::TcpStream::connect_timeout(&api, within)
        })
    };
    assert!(connect(Duration::from_secs(2)).is_ok());
    let down = ws.drop_packets_to(api).expect("drop");
    let started = Instant::now();
    let err = connect(Duration::from_secs(2)).expect_err("dropped");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let user = User::outsider(61021);
    let (code, _, err) = get_pods(&ws, &user, &cluster.kubeconfig, &["--request-timeout=2s"]);
    assert_ne!(code, 0);
    assert!(!err.contains("refused"), "{err}");
    drop(down);
    assert!(!ws.ruleset().expect("ruleset").contains("eb-drop"));
    let (code, out, err) = get_pods(&ws, &user, &cluster.kubeconfig, &[]);
    assert_eq!((code, out.as_str()), (0, "pod/app-0\n"), "{err}");
}
