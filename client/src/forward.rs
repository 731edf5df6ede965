//! Port-forwarding through the Kubernetes API: per (pod, port) a local listener on an
//! ephemeral 127.0.0.1 port; each accepted connection that the listener's admission lets in
//! (this user's own: [`crate::owner`]) gets its own port-forward stream (one WebSocket each, as
//! kube-rs opens them); any other is closed before anything is asked of the API server.
//! Accepted sockets get TCP_NODELAY, like the API connection itself (see `k8s`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedSender;
use tracing::debug;

use crate::k8s::{ApiError, Kube};
use crate::owner::{self, Admit};

/// Waits before each new try to open a port-forward for one connection; the API server may be
/// failing or stalled for a while (a restart, an overloaded control plane).
const RETRY_DELAYS: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// The longest pause between two tries to accept while the process is out of descriptors.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A connection that could not be forwarded after every retry, or a listener that cannot
/// accept for now.
#[derive(Debug)]
pub struct Failed {
    /// The pod.
    pub pod: String,
    /// The pod port.
    pub port: u16,
    /// What went wrong.
    pub error: ForwardError,
}

/// A local listener forwarding to one pod port.
#[derive(Debug)]
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
    /// The API refused or failed the port-forward request, or did not answer in time.
    #[error("cannot port-forward to pod {pod} port {port}")]
    Api {
        /// The pod.
        pod: String,
        /// The port.
        port: u16,
        /// What the API server did.
        #[source]
        source: ApiError,
    },
    /// The pod refused the port (nothing listens there).
    #[error("nothing listens on port {port} in pod {pod}")]
    Refused {
        /// The pod.
        pod: String,
        /// The port.
        port: u16,
    },
    /// The port-forward broke while erlbridge wrote to it.
    #[error("the port-forward to pod {pod} port {port} broke")]
    Broken {
        /// The pod.
        pod: String,
        /// The port.
        port: u16,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The local listener could not be bound.
    #[error("cannot listen on a local loopback port")]
    Listen(#[source] std::io::Error),
    /// The listener cannot accept connections (out of descriptors, say); it tries again.
    #[error(
        "cannot accept connections on {local} (pod {pod} port {port}); new connections wait \
         until it can again"
    )]
    Accept {
        /// The listener.
        local: SocketAddr,
        /// The pod.
        pod: String,
        /// The port.
        port: u16,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// An open port-forward stream to one pod port.
pub struct Opened {
    /// The stream's bytes.
    pub io: tokio::io::DuplexStream,
    /// Resolves with the kubelet's message if the pod refuses the port.
    pub refused: BoxFuture<'static, Option<String>>,
}

/// Opens one port-forward stream to `pod`:`port`, once, within the request timeout.
async fn open(kube: &Kube, pod: &str, port: u16) -> Result<Opened, ForwardError> {
    let api = |source| ForwardError::Api {
        pod: pod.to_owned(),
        port,
        source,
    };
    let pods = kube.pods();
    let mut forwarder = kube
        .call(pods.portforward(pod, &[port]))
        .await
        .map_err(api)?;
    let stream = forwarder
        .take_stream(port)
        .ok_or_else(|| ForwardError::Refused {
            pod: pod.to_owned(),
            port,
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
pub async fn open_with_retries(kube: &Kube, pod: &str, port: u16) -> Result<Opened, ForwardError> {
    let mut delays = RETRY_DELAYS.iter();
    loop {
        let error = match open(kube, pod, port).await {
            Ok(opened) => return Ok(opened),
            Err(e @ ForwardError::Refused { .. }) => return Err(e),
            Err(e) => e,
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

/// What a forward forwards to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The pod.
    pub pod: String,
    /// The pod's port.
    pub port: u16,
    /// The pod address (`podIP:port`) a redirect of this user's sends here, in nat mode: a
    /// connection it brings still names that address as its destination.
    pub redirected: SocketAddr,
}

/// Listens on an ephemeral port of `loopback` and forwards each connection `admit` lets in to
/// the target pod's port; connections that cannot be forwarded after every retry are reported
/// on `failures`.
pub async fn listen(
    kube: Kube,
    target: Target,
    loopback: IpAddr,
    failures: UnboundedSender<Failed>,
    admit: Arc<dyn Admit>,
) -> Result<Forward, ForwardError> {
    let Target {
        pod,
        port,
        redirected,
    } = target;
    let listener = TcpListener::bind((loopback, 0))
        .await
        .map_err(ForwardError::Listen)?;
    let local = listener.local_addr().map_err(ForwardError::Listen)?;
    let gate = Arc::new(owner::Listener {
        local,
        pod: redirected,
        serves: format!("pod {pod} port {port}"),
    });
    let reports = failures.clone();
    let serve = move |conn: TcpStream, peer: SocketAddr, pod: String| {
        let (kube, failures) = (kube.clone(), reports.clone());
        async move {
            if let Err(error) = relay(conn, &kube, &pod, port, &[]).await {
                debug!(%pod, port, %peer, error = %error, "a forwarded connection failed");
                let _ = failures.send(Failed { pod, port, error });
            }
        }
    };
    let task = tokio::spawn(accept_loop(
        listener, pod, port, gate, admit, failures, serve,
    ));
    Ok(Forward { local, task })
}

/// Accepts connections on `listener` (which serves `pod`'s `port`) for ever: each one `admit`
/// lets in is handed to `serve` in a task of its own, any other is closed at once. While the
/// process is out of descriptors (or memory), accepting pauses with backoff instead of
/// spinning, and the first failure of each such run is reported on `failures`.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    pod: String,
    port: u16,
    gate: Arc<owner::Listener>,
    admit: Arc<dyn Admit>,
    failures: UnboundedSender<Failed>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut backoff: Option<Duration> = None;
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if out_of_resources(&e) => {
                // accept() fails at once while a connection waits in the backlog: without a
                // pause this loop would spin. Report the first failure of a run only.
                let delay = match backoff {
                    None => {
                        debug!(%pod, port, error = %e, "cannot accept; backing off");
                        let error = ForwardError::Accept {
                            local: gate.local,
                            pod: pod.clone(),
                            port,
                            source: e,
                        };
                        let _ = failures.send(Failed {
                            pod: pod.clone(),
                            port,
                            error,
                        });
                        Duration::from_millis(10)
                    }
                    Some(delay) => (delay * 2).min(ACCEPT_BACKOFF_MAX),
                };
                backoff = Some(delay);
                tokio::time::sleep(delay).await;
                continue;
            }
            // The connection went away before it was accepted: nothing to do.
            Err(e) => {
                debug!(%pod, port, error = %e, "accept failed");
                continue;
            }
        };
        if backoff.take().is_some() {
            debug!(%pod, port, "accepting again");
        }
        let served = serve(conn, peer, pod.clone());
        let (admit, gate) = (admit.clone(), gate.clone());
        tokio::spawn(async move {
            // Not this user's connection: dropped, so closed at once, before anything is spent.
            if admit.admit(peer, &gate) {
                served.await;
            }
        });
    }
}

/// Whether an accept error means the process or system ran out of something (descriptors,
/// memory) rather than that one connection failed.
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Relays `conn` to `pod`:`port` through a port-forward of its own, sending `first` (what was
/// read of the connection already) ahead of the rest.
pub async fn relay(
    mut conn: TcpStream,
    kube: &Kube,
    pod: &str,
    port: u16,
    first: &[u8],
) -> Result<(), ForwardError> {
    use tokio::io::AsyncWriteExt as _;
    let _ = conn.set_nodelay(true);
    let Opened {
        io: mut upstream,
        refused,
    } = open_with_retries(kube, pod, port).await?;
    if let Err(source) = upstream.write_all(first).await {
        return Err(ForwardError::Broken {
            pod: pod.to_owned(),
            port,
            source,
        });
    }
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut conn, &mut upstream) => {
            debug!(pod, port, ?copied, "forwarded connection ended");
            Ok(())
        }
        Some(message) = refused => {
            debug!(pod, port, %message, "the pod refused the port");
            Err(ForwardError::Refused { pod: pod.to_owned(), port })
        }
    }
}
