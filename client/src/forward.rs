//! Port-forwarding through the Kubernetes API: per (pod, port) a local listener on an
//! ephemeral 127.0.0.1 port; each accepted connection gets its own port-forward stream (one
//! WebSocket each, as kube-rs opens them). Accepted sockets get TCP_NODELAY, like the API
//! connection itself (see `k8s`).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, warn};

/// Waits before each new try to open a port-forward for one connection; the API server may be
/// failing or stalled for a while (a restart, an overloaded control plane).
const RETRY_DELAYS: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];
/// How long opening one port-forward may take before it counts as a failed try.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that could not be forwarded after every retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The pod.
    pub pod: String,
    /// The pod port.
    pub port: u16,
    /// The last reason.
    pub reason: String,
}

/// A local listener forwarding to one pod port.
pub struct Forward {
    /// Where it listens.
    pub local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a forward could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The API refused or failed the port-forward request.
    #[error("cannot port-forward to pod {pod} port {port}")]
    Api {
        /// The pod.
        pod: String,
        /// The port.
        port: u16,
        /// kube's reason.
        #[source]
        source: kube::Error,
    },
    /// The pod refused the port (nothing listens there).
    #[error("pod {pod} refused port {port}: {message}")]
    Refused {
        /// The pod.
        pod: String,
        /// The port.
        port: u16,
        /// The kubelet's error text.
        message: String,
    },
    /// The local listener could not be bound.
    #[error("cannot listen on 127.0.0.1")]
    Listen(#[source] std::io::Error),
    /// Opening the port-forward took too long (a stalled API server).
    #[error("port-forward to pod {pod} port {port} got no answer within {OPEN_TIMEOUT:?}")]
    Stalled {
        /// The pod.
        pod: String,
        /// The port.
        port: u16,
    },
}

/// An open port-forward stream to one pod port.
pub struct Opened {
    /// The stream's bytes.
    pub io: tokio::io::DuplexStream,
    /// Resolves with the kubelet's message if the pod refuses the port.
    pub refused: BoxFuture<'static, Option<String>>,
}

/// Opens one port-forward stream to `pod`:`port`, once.
async fn open(pods: &Api<Pod>, pod: &str, port: u16) -> Result<Opened, ForwardError> {
    let api = |source| ForwardError::Api {
        pod: pod.to_owned(),
        port,
        source,
    };
    let mut forwarder = pods.portforward(pod, &[port]).await.map_err(api)?;
    let stream = forwarder
        .take_stream(port)
        .ok_or_else(|| ForwardError::Refused {
            pod: pod.to_owned(),
            port,
            message: "no stream for the port".to_owned(),
        })?;
    let error = forwarder.take_error(port);
    let refused = async move {
        match error {
            Some(e) => e.await,
            None => None,
        }
    };
    // The forwarder's task runs on by itself; dropping the handle does not stop it.
    drop(forwarder);
    Ok(Opened {
        io: stream,
        refused: refused.boxed(),
    })
}

/// Opens a port-forward stream, trying again with backoff while the API server fails or
/// stalls. A pod that refuses the port is not retried: nothing listens there.
pub async fn open_with_retries(
    pods: &Api<Pod>,
    pod: &str,
    port: u16,
) -> Result<Opened, ForwardError> {
    let mut delays = RETRY_DELAYS.iter();
    loop {
        let error = match tokio::time::timeout(OPEN_TIMEOUT, open(pods, pod, port)).await {
            Ok(Ok(opened)) => return Ok(opened),
            Ok(Err(e @ ForwardError::Refused { .. })) => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => ForwardError::Stalled {
                pod: pod.to_owned(),
                port,
            },
        };
        match delays.next() {
            Some(delay) => {
                debug!(pod, port, error = %error, ?delay, "port-forward failed; trying again");
                tokio::time::sleep(*delay).await;
            }
            None => return Err(error),
        }
    }
}

/// Listens on an ephemeral 127.0.0.1 port and forwards each connection to `pod`:`port`;
/// connections that cannot be forwarded after every retry are reported on `failures`.
pub async fn listen(
    pods: Api<Pod>,
    pod: String,
    port: u16,
    failures: UnboundedSender<Failed>,
) -> Result<Forward, ForwardError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(ForwardError::Listen)?;
    let local = listener.local_addr().map_err(ForwardError::Listen)?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((conn, peer)) = listener.accept().await else {
                continue;
            };
            let (pods, pod, failures) = (pods.clone(), pod.clone(), failures.clone());
            tokio::spawn(async move {
                if let Err(e) = relay(conn, &pods, &pod, port).await {
                    warn!(%pod, port, %peer, error = %e, "a forwarded connection failed");
                    let reason = crate::up::chain(&e);
                    let _ = failures.send(Failed { pod, port, reason });
                }
            });
        }
    });
    Ok(Forward { local, task })
}

async fn relay(
    mut conn: TcpStream,
    pods: &Api<Pod>,
    pod: &str,
    port: u16,
) -> Result<(), ForwardError> {
    let _ = conn.set_nodelay(true);
    let Opened {
        io: mut upstream,
        refused,
    } = open_with_retries(pods, pod, port).await?;
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut conn, &mut upstream) => {
            debug!(pod, port, ?copied, "forwarded connection ended");
            Ok(())
        }
        Some(message) = refused => Err(ForwardError::Refused { pod: pod.to_owned(), port, message }),
    }
}
