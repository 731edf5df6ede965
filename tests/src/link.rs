//! A slow link to the API server, as from an office or a CI runner in another region to a
//! cloud cluster: a relay in the cluster namespace, in front of the emulator, that holds every
//! chunk it relays for a fixed time in each direction (this kernel has no netem). Requests,
//! watches and port-forwards all cross it; chunks keep their order and overlap in flight, as
//! on a real link with that round trip.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use erlbridge_kube_emulator::kubeconfig::{KubeContext, KubeUser, Kubeconfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use crate::cluster::{Cluster, TOKEN};

/// A delayed path to the API server; stops when dropped.
pub struct SlowLink {
    /// A kubeconfig (full access) whose server is the relay.
    pub kubeconfig: PathBuf,
    /// Where the relay listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Cluster {
    /// A relay to the API server that delays each direction by `one_way` (half the round
    /// trip), and a kubeconfig through it, written as `name` in the scratch directory:
    /// `let link = cluster.slow_link(Duration::from_millis(25), "kubeconfig-50ms")?;`
    pub fn slow_link(&self, one_way: Duration, name: &str) -> anyhow::Result<SlowLink> {
        let ns = self.netns().name().to_owned();
        let api = self.api_addr();
        let listener =
            erlbridge_kube_emulator::netns::bind(Some(&ns), SocketAddr::new(api.ip(), 0))?;
        let addr = listener.local_addr()?;
        let task = {
            let _entered = self.runtime.enter();
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let ns = ns.clone();
                    tokio::spawn(async move {
                        let Ok(server) =
                            erlbridge_kube_emulator::netns::connect(Some(ns), api).await
                        else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::join!(
                            delayed(client_read, server_write, one_way),
                            delayed(server_read, client_write, one_way)
                        );
                    });
                }
            })
        };
        let server = format!("https://{addr}");
        let kubeconfig = Kubeconfig::default()
            .context(KubeContext::new(
                "erlbridge-test",
                erlbridge_kube_emulator::kubeconfig::KubeCluster::new(
                    "erlbridge-test",
                    &server,
                    self.emulator.ca_pem(),
                ),
                KubeUser::token("tester", TOKEN),
                "default",
            ))
            .to_yaml();
        Ok(SlowLink {
            kubeconfig: self.write_file(name, &kubeconfig)?,
            addr,
            task,
        })
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read; the end, too.
async fn delayed(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = tokio::time::Instant::now() + delay;
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // The end is delayed as the data is: an empty chunk.
        let _ = tx.send((tokio::time::Instant::now() + delay, Vec::new()));
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if chunk.is_empty() {
                break;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
