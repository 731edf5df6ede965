//! Benchmark (needs root): port-forward through the API emulator (kube-rs client in the
//! workstation, WebSocket to the emulator, relay into the pod) next to a direct connection from
//! the cluster namespace to the pod: connection setup, small round trips and bulk throughput.
//! Later measurements of erlbridge's bridge can be read against these. Then what the owner
//! check of erlbridge's listeners costs: connect latency through erlbridge's forward with the
//! check and with a listener that admits anyone, interleaved in one run, and the check alone.
//! Prints figures only.

use std::time::{Duration, Instant};

use erlbridge::owner::{Admit, Listener, OwnerOnly};
use erlbridge_testbed::{Bins, Cluster, Workstation, require_root};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PORT: u16 = 7000;
const CONNECTIONS: usize = 50;
const ROUND_TRIPS: usize = 2000;
const BULK: u64 = 256 << 20;
/// Connections per kind of listener, in the owner check's measurement.
const CHECKED_CONNECTIONS: usize = 200;

const MANIFEST: &str = r#"
[[pods]]
name = "sink"
labels = { app = "sink" }
"#;

#[derive(Debug, Clone, Copy)]
struct Figures {
    setup_p50: Duration,
    rtt_p50: Duration,
    rtt_p99: Duration,
    mb_per_s: f64,
}

async fn request<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, len: u64, chunk: &[u8]) {
    s.write_u64(len).await.expect("len");
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
        s.write_all(&chunk[..n]).await.expect("data");
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.expect("ack");
}

fn p(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// Measures with `open` as the way to get a connection to the pod's sink.
async fn measure<S, F, Fut>(open: F) -> Figures
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    let chunk = vec![7u8; 256 * 1024];
    let mut setups = Vec::new();
    for _ in 0..CONNECTIONS {
        let start = Instant::now();
        let mut s = open().await;
        request(&mut s, 1, &chunk).await;
        setups.push(start.elapsed());
    }
    let mut s = open().await;
    let mut rtts = Vec::new();
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        request(&mut s, 64, &chunk).await;
        rtts.push(start.elapsed());
    }
    let start = Instant::now();
    request(&mut s, BULK, &chunk).await;
    let bulk = start.elapsed();
    Figures {
        setup_p50: p(&mut setups, 0.5),
        rtt_p50: p(&mut rtts, 0.5),
        rtt_p99: p(&mut rtts, 0.99),
        mb_per_s: BULK as f64 / (1 << 20) as f64 / bulk.as_secs_f64(),
    }
}

/// A listener that lets anyone in: erlbridge's forwards before the owner check.
struct Anyone;

impl Admit for Anyone {
    fn admit(&self, _: std::net::SocketAddr, _: &Listener) -> bool {
        true
    }
}

/// Connect latency (connect, then one small request answered through the port-forward)
/// through erlbridge's forward listener, with the owner check and admitting anyone,
/// interleaved; and the check alone. (p50 checked, p50 open, p50 of the check.)
async fn owner_check(
    kubeconfig: std::path::PathBuf,
    pod_addr: std::net::SocketAddr,
) -> (Duration, Duration, Duration) {
    let kube = erlbridge::k8s::connect(&erlbridge::k8s::ClusterOptions {
        kubeconfig: Some(kubeconfig),
        ..Default::default()
    })
    .await
    .expect("client");
    let (failures, _failed) = tokio::sync::mpsc::unbounded_channel();
    let (report, _refused) = tokio::sync::mpsc::unbounded_channel();
    let listen = |admit: std::sync::Arc<dyn Admit>| {
        let target = erlbridge::forward::Target {
            pod: "sink".into(),
            port: PORT,
            redirected: pod_addr,
        };
        erlbridge::forward::listen(
            kube.clone(),
            target,
            std::net::Ipv4Addr::LOCALHOST.into(),
            failures.clone(),
            admit,
        )
    };
    let checked = listen(OwnerOnly::new(report)).await.expect("listen");
    let open = listen(std::sync::Arc::new(Anyone)).await.expect("listen");
    let chunk = vec![7u8; 64];
    let connect = |at: std::net::SocketAddr| {
        let chunk = chunk.clone();
        async move {
            let start = Instant::now();
            let mut s = tokio::net::TcpStream::connect(at).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            request(&mut s, 1, &chunk).await;
            start.elapsed()
        }
    };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..CHECKED_CONNECTIONS {
        with.push(connect(checked.local).await);
        without.push(connect(open.local).await);
    }
    // The check alone, on a live connection of this process's.
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let _client =
        std::net::TcpStream::connect(server.local_addr().expect("addr")).expect("connect");
    let (_accepted, peer) = server.accept().expect("accept");
    let local = server.local_addr().expect("addr");
    let mut alone = Vec::new();
    for _ in 0..1000 {
        let start = Instant::now();
        let owner = erlbridge::owner::owner_of(peer, &[local, pod_addr]).expect("lookup");
        alone.push(start.elapsed());
        assert!(owner.is_some());
    }
    (p(&mut with, 0.5), p(&mut without, 0.5), p(&mut alone, 0.5))
}

fn main() -> anyhow::Result<()> {
    require_root();
    let bins = Bins::stage(&["helper-probe"])?;
    let ws = Workstation::new()?;
    let cluster = Cluster::start(&ws, MANIFEST)?;
    let pod = cluster.pod("sink");
    let addr = format!("0.0.0.0:{PORT}");
    let mut sink = erlbridge_testbed::Spawned::start(pod.netns().command(&[
        &bins.path("helper-probe"),
        "sink",
        &addr,
    ]))?;
    sink.wait_line(Duration::from_secs(5), |l| l.contains("listening"))?;

    let pod_addr: std::net::SocketAddr = format!("{}:{PORT}", pod.ip()).parse()?;
    let direct =
        erlbridge_kube_emulator::netns::within(cluster.namespace_names()[0].as_str(), move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(runtime.block_on(measure(|| async move {
                let s = tokio::net::TcpStream::connect(pod_addr)
                    .await
                    .expect("direct");
                s.set_nodelay(true).expect("nodelay");
                s
            })))
        })?;

    let through = |nodelay: bool| {
        let kubeconfig = cluster.kubeconfig.clone();
        ws.block_on(move || async move {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .expect("config");
            let client = if nodelay {
                erlbridge::k8s::client(config, None).expect("erlbridge's client")
            } else {
                kube::Client::try_from(config).expect("kube-rs's default client")
            };
            let pods: Api<Pod> = Api::default_namespaced(client);
            measure(|| {
                let pods = pods.clone();
                async move {
                    let mut forward = pods
                        .portforward("sink", &[PORT])
                        .await
                        .expect("portforward");
                    forward.take_stream(PORT).expect("stream")
                }
            })
            .await
        })
    };
    let default_client = through(false)?;
    let forwarded = through(true)?;
    let kubeconfig = cluster.kubeconfig.clone();
    let (checked, open, check) = ws.block_on(move || owner_check(kubeconfig, pod_addr))?;

    println!(
        "port-forward through the API emulator vs a direct connection from the cluster namespace"
    );
    println!(
        "{:<24} {:>12} {:>12} {:>12} {:>12}",
        "", "setup p50", "64B rtt p50", "rtt p99", "bulk MB/s"
    );
    for (name, f) in [
        ("direct (baseline)", direct),
        ("kube-rs default client", default_client),
        ("erlbridge's client", forwarded),
    ] {
        println!(
            "{name:<24} {:>10.3}ms {:>10.3}ms {:>10.3}ms {:>12.0}",
            f.setup_p50.as_secs_f64() * 1e3,
            f.rtt_p50.as_secs_f64() * 1e3,
            f.rtt_p99.as_secs_f64() * 1e3,
            f.mb_per_s
        );
    }
    println!(
        "(erlbridge's client sets TCP_NODELAY on the API connection; kube-rs's default does not)"
    );
    println!(
        "ratios erlbridge forward/direct: setup {:.1}x, rtt {:.1}x, throughput {:.2}x",
        forwarded.setup_p50.as_secs_f64() / direct.setup_p50.as_secs_f64(),
        forwarded.rtt_p50.as_secs_f64() / direct.rtt_p50.as_secs_f64(),
        forwarded.mb_per_s / direct.mb_per_s
    );
    println!(
        "\nconnect latency through erlbridge's forward listener ({CHECKED_CONNECTIONS} connections \
         each, interleaved; connect plus one request through a new port-forward)"
    );
    println!(
        "  admitting anyone (before the owner check): p50 {:>8.3}ms",
        open.as_secs_f64() * 1e3
    );
    println!(
        "  owner's connections only (the check):     p50 {:>8.3}ms  ({:.2}x)",
        checked.as_secs_f64() * 1e3,
        checked.as_secs_f64() / open.as_secs_f64()
    );
    println!(
        "  the check alone (sock_diag lookup):        p50 {:>8.3}ms  ({:.1}% of a connect)",
        check.as_secs_f64() * 1e3,
        100.0 * check.as_secs_f64() / open.as_secs_f64()
    );
    Ok(())
}
