//! `kube-emulator --manifest FILE --kubeconfig OUT [--listen ADDR] [--netns NS] [--token T]`:
//! serves a manifest's objects over the Kubernetes API until interrupted, for poking at with
//! kubectl or a client by hand. Pods get IPs from 10.244.0.0/16 and are port-forwarded to
//! directly; the test bed (crate `erlbridge-testbed`) is what runs them as real Erlang nodes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use erlbridge_kube_emulator::manifest::Manifest;
use erlbridge_kube_emulator::{Access, Emulator};

/// A Kubernetes API server emulator.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The manifest (TOML) of workloads, pods and secrets to serve.
    #[arg(long)]
    manifest: PathBuf,
    /// Where to write a kubeconfig for kubectl and kube-rs.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// A network namespace to listen in (`ip netns` name).
    #[arg(long)]
    netns: Option<String>,
    /// The bearer token the kubeconfig carries (given full access).
    #[arg(long, default_value = "erlbridge-test-token")]
    token: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-emulator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.manifest)
        .with_context(|| format!("cannot read {}", args.manifest.display()))?;
    let manifest =
        Manifest::parse(&text).with_context(|| format!("{}", args.manifest.display()))?;
    let emulator = Emulator::start(args.listen, args.netns.as_deref()).await?;
    emulator.add_token(&args.token, Access::Full);
    let mut next_ip = 2u32;
    let mut ip = || {
        next_ip += 1;
        IpAddr::from((0x0af4_0000u32 | next_ip).to_be_bytes())
    };
    for (kind, workload) in manifest.workloads() {
        emulator.apply_workload(workload.desc(kind));
        for i in 0..workload.replicas {
            let mut pod = workload.pod(kind, i);
            pod.ip = Some(ip());
            emulator.apply_pod(pod);
        }
    }
    for mut pod in manifest.pods {
        pod.ip = pod.ip.or_else(|| Some(ip()));
        emulator.apply_pod(pod);
    }
    for secret in manifest.secrets {
        emulator.apply_secret(secret);
    }
    std::fs::write(
        &args.kubeconfig,
        emulator.kubeconfig(&args.token, "default"),
    )?;
    eprintln!(
        "serving {} ; kubeconfig written to {} ; Ctrl-C stops",
        emulator.server_url(),
        args.kubeconfig.display()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
