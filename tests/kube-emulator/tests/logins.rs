//! Logins as the clusters people bring have them, through kube-rs and kubectl: exec credential
//! plugins with short-lived tokens, client certificates, a service account's files, and
//! kubeconfigs with several contexts in one file or across several.

#[allow(dead_code)] // each test binary uses its own part of it
mod common;

use std::path::Path;
use std::time::Duration;

use common::{client_for, client_in_context, emulator, kubectl, kubectl_pods, pod, write};
use erlbridge_kube_emulator::credential::run_plugin;
use erlbridge_kube_emulator::kubeconfig::{KubeContext, KubeUser, Kubeconfig};
use erlbridge_kube_emulator::{Access, Emulator};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

const PLUGIN: &str = env!("CARGO_BIN_EXE_kube-emulator-credential");

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

async fn names(pods: &Api<Pod>) -> Vec<String> {
    pods.list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

fn api_code<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> u16 {
    match result {
        Err(kube::Error::Api(s)) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn exec_plugin_tokens_expire_and_clients_log_in_again_through_the_plugin() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().expect("dir");
    let (issuer, log) = (
        dir.path().join("issuer.json"),
        dir.path().join("plugin.log"),
    );
    emu.enable_exec_logins(&issuer, "ci-bot", Duration::from_secs(2), Access::Full)
        .expect("exec logins");
    let kubeconfig = emu.exec_kubeconfig(Path::new(PLUGIN), &issuer, Some(&log), "default");

    let pods: Api<Pod> = Api::default_namespaced(client_for(&kubeconfig).await);
    assert_eq!(names(&pods).await.len(), 4);
    let calls = lines(&log);
    assert!(calls >= 1, "kube-rs ran the plugin");

    // A token the plugin minted works as a plain bearer token until it expires, then 401.
    let credential: serde_json::Value =
        serde_json::from_str(&run_plugin(&issuer, None).expect("plugin")).expect("json");
    let token = credential["status"]["token"].as_str().expect("token");
    let fixed: Api<Pod> = Api::default_namespaced(common::connect(&emu, token).await);
    fixed.get("app-0").await.expect("fresh token accepted");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(api_code(fixed.get("app-0").await), 401, "expired token");

    // The exec client is past its first token's expiry too, yet works: it ran the plugin again.
    pods.get("app-0").await.expect("re-authenticated");
    assert!(lines(&log) > calls, "the plugin was run again");

    // Only the plugin's tokens: anything else is 401, and so is a plugin run on another issuer.
    assert_eq!(
        api_code(
            Api::<Pod>::default_namespaced(
                common::connect(&emu, "kube-emulator-exec.v1.1.x.y").await
            )
            .get("app-0")
            .await
        ),
        401
    );
    let other = emulator().await;
    let other_issuer = dir.path().join("other.json");
    other
        .enable_exec_logins(
            &other_issuer,
            "ci-bot",
            Duration::from_secs(60),
            Access::Full,
        )
        .expect("exec logins");
    let foreign = emu.exec_kubeconfig(Path::new(PLUGIN), &other_issuer, None, "default");
    let foreign: Api<Pod> = Api::default_namespaced(client_for(&foreign).await);
    assert_eq!(api_code(foreign.get("app-0").await), 401);

    // kubectl runs the plugin too.
    let path = write(dir.path(), "kubeconfig", &kubeconfig);
    let before = lines(&log);
    let out = kubectl_pods(dir.path(), &path).await;
    assert!(out.contains("pod/app-0"), "{out}");
    assert!(lines(&log) > before, "kubectl ran the plugin");
}

#[tokio::test]
async fn client_certificates_from_the_cluster_ca_log_in_with_their_access() {
    let emu = emulator().await;
    let only_list = Access::Only(vec![("list".into(), "pods".into())]);
    let kubeconfig = emu
        .client_certificate_kubeconfig("alice", only_list, "default")
        .expect("certificate");
    let pods: Api<Pod> = Api::default_namespaced(client_for(&kubeconfig).await);
    assert_eq!(names(&pods).await.len(), 4);
    match pods.get("app-0").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403);
            assert!(
                s.message
                    .contains("User \"alice\" cannot get resource \"pods\""),
                "{}",
                s.message
            );
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }

    let dir = tempfile::tempdir().expect("dir");
    let path = write(dir.path(), "kubeconfig", &kubeconfig);
    let out = kubectl_pods(dir.path(), &path).await;
    assert_eq!(out.lines().count(), 4, "{out}");

    // A certificate another CA signed does not get through the handshake.
    let other = emulator().await;
    let stranger = other
        .issue_client_certificate("mallory", Access::Full)
        .expect("certificate");
    let forged = emu.kubeconfig_for(
        KubeUser::client_certificate("mallory", &stranger),
        "default",
    );
    let forged: Api<Pod> = Api::default_namespaced(client_for(&forged).await);
    assert!(
        !matches!(forged.get("app-0").await, Ok(_) | Err(kube::Error::Api(_))),
        "the TLS handshake fails"
    );
}

#[tokio::test]
async fn service_account_files_log_in_and_rotate() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().expect("dir");
    let sa = dir.path().join("serviceaccount");
    emu.add_token("sa-token-1", Access::Full);
    emu.write_service_account(&sa, "sa-token-1", "default")
        .expect("files");
    assert_eq!(
        std::fs::read_to_string(sa.join("namespace")).expect("ns"),
        "default"
    );
    assert_eq!(
        std::fs::read_to_string(sa.join("ca.crt")).expect("ca"),
        emu.ca_pem()
    );

    // What kube-rs's in-cluster config reads: the files, and https://HOST:PORT from the
    // environment; the serving certificate is valid for the API server's IP.
    let in_cluster = |token_file: &Path, ca: &Path| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "in-cluster",
            "clusters": [{"name": "in-cluster", "cluster": {
                "server": format!("https://{}:{}", emu.addr().ip(), emu.addr().port()),
                "certificate-authority": ca,
            }}],
            "users": [{"name": "sa", "user": {"tokenFile": token_file}}],
            "contexts": [{"name": "in-cluster", "context": {"cluster": "in-cluster", "user": "sa", "namespace": "default"}}],
        })
        .to_string()
    };
    let kubeconfig = in_cluster(&sa.join("token"), &sa.join("ca.crt"));
    let pods: Api<Pod> = Api::default_namespaced(client_for(&kubeconfig).await);
    pods.get("app-0")
        .await
        .expect("the service account logs in");

    emu.add_token("sa-token-2", Access::Full);
    emu.write_service_account(&sa, "sa-token-2", "default")
        .expect("rotate");
    emu.revoke_token("sa-token-1");
    assert_eq!(
        std::fs::read_to_string(sa.join("token")).expect("token"),
        "sa-token-2"
    );
    let rotated: Api<Pod> = Api::default_namespaced(client_for(&kubeconfig).await);
    rotated
        .get("app-0")
        .await
        .expect("the rotated token logs in");

    let path = write(dir.path(), "kubeconfig", &kubeconfig);
    let out = kubectl(
        dir.path(),
        &[],
        &["--kubeconfig", &path, "get", "pod", "app-0", "-o", "name"],
    )
    .await;
    assert!(out.contains("pod/app-0"), "{out}");
}

/// Two clusters, each with its own token and pods.
async fn two_clusters() -> (Emulator, Emulator, Kubeconfig) {
    let (one, two) = (emulator().await, emulator().await);
    two.add_token("token-two", Access::Full);
    two.apply_pod(pod("only-in-two", "127.0.0.9", "x"));
    let config = Kubeconfig::default()
        .context(KubeContext::new(
            "one",
            one.kube_cluster("cluster-one"),
            KubeUser::token("user-one", "good"),
            "default",
        ))
        .context(KubeContext::new(
            "two",
            two.kube_cluster("cluster-two"),
            KubeUser::token("user-two", "token-two"),
            "default",
        ));
    (one, two, config)
}

#[tokio::test]
async fn several_contexts_in_one_file_or_across_files_as_kubectl_merges_them() {
    let (_one, _two, config) = two_clusters().await;
    let whole = config.to_yaml();
    let current: Api<Pod> = Api::default_namespaced(client_for(&whole).await);
    assert!(!names(&current).await.contains(&"only-in-two".to_owned()));
    let second: Api<Pod> = Api::default_namespaced(client_in_context(&whole, Some("two")).await);
    assert!(names(&second).await.contains(&"only-in-two".to_owned()));

    let dir = tempfile::tempdir().expect("dir");
    let files: Vec<String> = config
        .split()
        .iter()
        .enumerate()
        .map(|(i, text)| write(dir.path(), &format!("config-{i}"), text))
        .collect();
    assert_eq!(files.len(), 2);
    let merged = kube::config::Kubeconfig::read_from(&files[0])
        .expect("first")
        .merge(kube::config::Kubeconfig::read_from(&files[1]).expect("second"))
        .expect("merge");
    assert_eq!(merged.current_context.as_deref(), Some("one"));
    assert_eq!(merged.contexts.len(), 2);

    let joined = files.join(":");
    let env = [("KUBECONFIG", joined.as_str())];
    let out = kubectl(dir.path(), &env, &["config", "current-context"]).await;
    assert_eq!(out.trim(), "one");
    let out = kubectl(
        dir.path(),
        &env,
        &["--context", "two", "get", "pods", "-o", "name"],
    )
    .await;
    assert!(out.contains("pod/only-in-two"), "{out}");
    let out = kubectl(dir.path(), &env, &["get", "pods", "-o", "name"]).await;
    assert!(
        !out.contains("only-in-two") && out.contains("pod/app-0"),
        "{out}"
    );
}
