//! What the test bed's own tests share: a workstation and cluster, and ways to look at the
//! cluster as clients do: kube-rs from a kubeconfig, EPMD's NAMES request through a kube-rs
//! port-forward, kubectl as a user.

use std::path::{Path, PathBuf};
use std::time::Duration;

use erlbridge_testbed::{Cluster, User, Workstation, require_root};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A workstation and the cluster `manifest` describes.
pub fn cluster(manifest: &str) -> (Workstation, Cluster) {
    require_root();
    let ws = Workstation::new().expect("workstation");
    let cluster = Cluster::start(&ws, manifest).expect("cluster");
    (ws, cluster)
}

/// A kube-rs client for a kubeconfig file's current context.
pub async fn client(kubeconfig: impl AsRef<Path>) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig.as_ref()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

/// The pods of the kubeconfig's namespace.
pub async fn pods(kubeconfig: impl AsRef<Path>) -> Api<Pod> {
    Api::default_namespaced(client(kubeconfig).await)
}

/// Everything a kube-rs port-forward to `pod`'s `port` says until it closes.
pub async fn forward_read(pods: &Api<Pod>, pod: &str, port: u16, request: &[u8]) -> Vec<u8> {
    let mut forward = pods.portforward(pod, &[port]).await.expect("portforward");
    let mut stream = forward.take_stream(port).expect("stream");
    stream.write_all(request).await.expect("request");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
        .await
        .expect("the pod answers and closes")
        .expect("read");
    reply
}

/// EPMD's NAMES request through a kube-rs port-forward to `port`: (name, port) pairs.
pub async fn epmd_names_on(pods: &Api<Pod>, pod: &str, port: u16) -> Vec<(String, u16)> {
    let reply = forward_read(pods, pod, port, &[0, 1, 110]).await;
    assert!(reply.len() >= 4, "{reply:?}");
    String::from_utf8_lossy(&reply[4..])
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("name ")?;
            let (name, port) = rest.split_once(" at port ")?;
            Some((name.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// EPMD's NAMES request through a kube-rs port-forward to 4369.
pub async fn epmd_names(pods: &Api<Pod>, pod: &str) -> Vec<(String, u16)> {
    epmd_names_on(pods, pod, 4369).await
}

/// [`epmd_names`] from the workstation, with `kubeconfig`.
pub fn epmd_names_from(ws: &Workstation, kubeconfig: PathBuf, pod: &str) -> Vec<(String, u16)> {
    let pod = pod.to_owned();
    ws.block_on(move || async move { epmd_names(&pods(kubeconfig).await, &pod).await })
        .expect("workstation")
}

/// `kubectl --kubeconfig KUBECONFIG ARGS` as `user` in the workstation: (code, stdout, stderr).
pub fn kubectl(
    ws: &Workstation,
    user: &User,
    kubeconfig: &Path,
    args: &[&str],
) -> (i32, String, String) {
    let kc = kubeconfig.display().to_string();
    let mut argv = vec!["kubectl", "--kubeconfig", &kc, "--request-timeout=10s"];
    argv.extend(args);
    ws.run_as(user, &argv).expect("kubectl")
}
