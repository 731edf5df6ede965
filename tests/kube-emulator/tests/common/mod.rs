//! What every test of the emulator starts from: an emulator with a few pods and two tokens, a
//! kube-rs client from a kubeconfig, and kubectl run against one.

use std::collections::BTreeMap;
use std::path::Path;

use erlbridge_kube_emulator::{Access, Emulator, PodDesc};
use kube::config::{KubeConfigOptions, Kubeconfig};

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

/// Runs kubectl with `env` (KUBECONFIG, ...), a scratch cache under `scratch`; returns whether
/// it succeeded, its stdout and its stderr.
pub async fn kubectl(
    scratch: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (bool, String, String) {
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
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.to_string_lossy().into_owned()
}
