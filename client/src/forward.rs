//! Port-forwarding through the Kubernetes API: per (pod, port) a local listener on an
//! ephemeral 127.0.0.1 port; each accepted connection gets its own port-forward stream (one
//! WebSocket each, as kube-rs opens them). Accepted sockets get TCP_NODELAY, like the API
//! connection itself (see `k8s`).

use std::net::{Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

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
}

/// Opens one port-forward stream to `pod`:`port`.
pub async fn open(
    pods: &Api<Pod>,
    pod: &str,
    port: u16,
) -> Result<
    (
        tokio::io::DuplexStream,
        impl std::future::Future<Output = Option<String>> + use<>,
    ),
    ForwardError,
> {
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
    let errors = async move {
        match error {
            Some(e) => e.await,
            None => None,
        }
    };
    // The forwarder's task runs on by itself; dropping the handle does not stop it.
    drop(forwarder);
    Ok((stream, errors))
}

/// Listens on an ephemeral 127.0.0.1 port and forwards each connection to `pod`:`port`.
pub async fn listen(pods: Api<Pod>, pod: String, port: u16) -> Result<Forward, ForwardError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(ForwardError::Listen)?;
    let local = listener.local_addr().map_err(ForwardError::Listen)?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((conn, peer)) = listener.accept().await else {
                continue;
            };
            let (pods, pod) = (pods.clone(), pod.clone());
            tokio::spawn(async move {
                if let Err(e) = relay(conn, &pods, &pod, port).await {
                    warn!(%pod, port, %peer, error = %e, "a forwarded connection failed");
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
    let (mut upstream, errors) = open(pods, pod, port).await?;
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut conn, &mut upstream) => {
            debug!(pod, port, ?copied, "forwarded connection ended");
            Ok(())
        }
        Some(message) = errors => Err(ForwardError::Refused { pod: pod.to_owned(), port, message }),
    }
}
