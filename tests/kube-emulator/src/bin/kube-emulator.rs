//! `kube-emulator --manifest FILE --kubeconfig OUT [--listen ADDR] [--netns NS] [--token T]
//! [--path-prefix P] [--proxy ADDR]`: serves a manifest's objects over the Kubernetes API until
//! interrupted, for poking at with kubectl or a client by hand. Pods get IPs from
//! 10.244.0.0/16 and fd00:10:244::/64 (by their `ip_family`) and are port-forwarded to
//! directly; the test bed (crate `erlbridge-testbed`) is what runs them as real Erlang nodes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use erlbridge_kube_emulator::kubeconfig::{KubeContext, KubeUser, Kubeconfig};
use erlbridge_kube_emulator::manifest::Manifest;
use erlbridge_kube_emulator::{Access, ConnectProxy, Emulator, IpFamily, PodDesc, StartOptions};

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
    /// Serve the API only under this path (e.g. `/k8s/clusters/c-abc`).
    #[arg(long)]
    path_prefix: Option<String>,
    /// Also run an HTTP CONNECT proxy on this address; the kubeconfig goes through it.
    #[arg(long)]
    proxy: Option<SocketAddr>,
}

/// Hands out pod addresses by family.
#[derive(Default)]
struct Addresses(u32);

impl Addresses {
    fn assign(&mut self, pod: &mut PodDesc) {
        if pod.ip.is_some() {
            return;
        }
        self.0 += 1;
        let n = 2 + self.0;
        let v4 = IpAddr::from(Ipv4Addr::from(0x0af4_0000u32 | n));
        let v6 = IpAddr::from(Ipv6Addr::from(
            (0xfd00_0010_0244_u128 << 80) | u128::from(n),
        ));
        (pod.ip, pod.second_ip) = match pod.ip_family {
            IpFamily::IPv4 => (Some(v4), None),
            IpFamily::IPv6 => (Some(v6), None),
            IpFamily::DualStack => (Some(v4), Some(v6)),
        };
    }
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
    let mut options = StartOptions::default();
    if let Some(prefix) = &args.path_prefix {
        options = options.path_prefix(prefix);
    }
    let emulator = Emulator::start_with(args.listen, args.netns.as_deref(), options).await?;
    emulator.add_token(&args.token, Access::Full);
    let mut addresses = Addresses::default();
    for (kind, workload) in manifest.workloads() {
        emulator.apply_workload(workload.desc(kind));
        for i in 0..workload.replicas {
            let mut pod = workload.pod(kind, i);
            addresses.assign(&mut pod);
            emulator.apply_pod(pod);
        }
    }
    for mut pod in manifest.pods {
        addresses.assign(&mut pod);
        emulator.apply_pod(pod);
    }
    for secret in manifest.secrets {
        emulator.apply_secret(secret);
    }
    let mut cluster = emulator.kube_cluster("erlbridge-test");
    if let Some(addr) = args.proxy {
        let proxy = ConnectProxy::start(addr, args.netns.as_deref(), None)
            .await
            .with_context(|| format!("cannot run the proxy on {addr}"))?;
        eprintln!("proxy on {}", proxy.url());
        cluster = cluster.with_proxy(&proxy.url());
    }
    let kubeconfig = Kubeconfig::default().context(KubeContext::new(
        "erlbridge-test",
        cluster,
        KubeUser::token("tester", &args.token),
        "default",
    ));
    std::fs::write(&args.kubeconfig, kubeconfig.to_yaml())?;
    eprintln!(
        "serving {} ; kubeconfig written to {} ; Ctrl-C stops",
        emulator.server_url(),
        args.kubeconfig.display()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
