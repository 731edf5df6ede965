//! What every test of the emulator starts from: an emulator with a few pods and two tokens, a
//! kube-rs client from a kubeconfig, and kubectl run against one.

use std::collections::BTreeMap;
use std::path::Path;

use std::time::Duration;

use erlbridge_kube_emulator::{Access, Emulator, PodDesc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A running pod with label `app=APP`.
pub fn pod(name: &str, ip: &str, app: &str) -> PodDesc {
    PodDesc {
        name: name.into(),
        namespace: "default".into(),
        labels: BTreeMap::from([("app".into(), app.into())]),
        ip: Some(ip.parse().expect("an IP")),
        ..PodDesc::default()
    }
}

/// A client for a kubeconfig's current context.
pub async fn client_for(kubeconfig: &str) -> kube::Client {
    client_in_context(kubeconfig, None).await
}

/// A client for a kubeconfig's `context` (its current one when `None`).
pub async fn client_in_context(kubeconfig: &str, context: Option<&str>) -> kube::Client {
    let kubeconfig = Kubeconfig::from_yaml(kubeconfig).expect("kubeconfig");
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

/// A client with `token`.
pub async fn connect(emu: &Emulator, token: &str) -> kube::Client {
    client_for(&emu.kubeconfig(token, "default")).await
}

/// Installs the TLS provider kube-rs and the emulator share.
pub fn tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An emulator on 127.0.0.1 with tokens `good` (full access) and `none` (no rights), and pods
/// app-0..2 (`app=app`) and web-3 (`app=web`).
pub async fn emulator() -> Emulator {
    tls();
    let emu = Emulator::start("127.0.0.1:0".parse().expect("an address"), None)
        .await
        .expect("start");
    populate(&emu);
    emu
}

/// Adds the tokens and pods [`emulator`] describes.
pub fn populate(emu: &Emulator) {
    emu.add_token("good", Access::Full);
    emu.add_token("none", Access::Nothing);
    for (i, app) in ["app", "app", "app", "web"].iter().enumerate() {
        emu.apply_pod(pod(
            &format!("{app}-{i}"),
            &format!("127.0.0.{}", i + 1),
            app,
        ));
    }
}

/// Runs kubectl with `env` (KUBECONFIG, ...) and a scratch cache under `scratch`; returns its
/// stdout, or panics with its stderr when it fails.
pub async fn kubectl(scratch: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = tokio::process::Command::new("kubectl")
        .args(args)
        .arg("--cache-dir")
        .arg(scratch.join("kubectl-cache"))
        .env_remove("KUBECONFIG")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .envs(env.iter().copied())
        .env("HOME", scratch)
        .output()
        .await
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl get pods -o name` with the kubeconfig at `path`.
pub async fn kubectl_pods(scratch: &Path, kubeconfig: &str) -> String {
    kubectl(
        scratch,
        &[],
        &["--kubeconfig", kubeconfig, "get", "pods", "-o", "name"],
    )
    .await
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.to_string_lossy().into_owned()
}

/// A pod-side server on `addr`: reads a line, answers it upper-cased, then closes. Returns its
/// port.
pub async fn echo_server(addr: &str) -> u16 {
    let server = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let port = server.local_addr().expect("bound").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = server.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let _ = conn.write_all(&buf[..n].to_ascii_uppercase()).await;
            });
        }
    });
    port
}

/// Sends `hello pod` through a forwarded stream to an [`echo_server`] and returns the answer.
pub async fn shout(stream: &mut (impl AsyncRead + AsyncWrite + Unpin)) -> String {
    stream.write_all(b"hello pod\n").await.expect("write");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
        .await
        .expect("the pod side closes, so the forward ends")
        .expect("read");
    answer
}

/// Opens a port-forward to `port` of pod `name` and [`shout`]s through it.
pub async fn forward_and_shout(pods: &Api<Pod>, name: &str, port: u16) -> String {
    let mut forward = pods.portforward(name, &[port]).await.expect("portforward");
    let mut stream = forward.take_stream(port).expect("stream");
    shout(&mut stream).await
}

/// The resource version of a list of every pod.
pub async fn list_version(pods: &Api<Pod>) -> String {
    pods.list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("a version")
}
