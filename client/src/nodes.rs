//! Which Erlang nodes a pod runs, and what a local node's EPMD query for each is answered
//! with (its distribution port and protocol version): asked from the pod's epmd through
//! port-forwards, one per EPMD query (NAMES for the nodes, PORT_PLEASE2 for each node's
//! version, the one of the node the pod spec names side by side with NAMES), or, for a node
//! that runs without epmd, read from the pod's spec or `--dist-port`. `up` and `doctor` find
//! them the same way.

use std::fmt;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use tracing::debug;

use crate::discover::{Epmdless, PodInfo};
use crate::epmd::{self, AskError, Known, Malformed, PortInfo, Registered};
use crate::forward::{self, ForwardError};
use crate::k8s::Kube;

/// How long asking a pod's epmd may take when `--request-timeout` sets no bound.
const EPMD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// How long a refusal may follow the end of the stream it ends.
const REFUSAL_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The distribution version of OTP 23 and newer, for nodes whose epmd cannot be asked.
const DIST_VERSION: u16 = 6;

/// Why a pod's nodes could not be found.
#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    /// No port-forward to the pod's epmd could be opened.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// The pod's epmd did not tell its nodes.
    #[error("pod {pod} has no epmd answering on port {port}")]
    NoEpmd {
        /// The pod.
        pod: String,
        /// The epmd port.
        port: u16,
        /// What happened.
        #[source]
        source: AskError,
    },
}

/// How a pod's nodes were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Its epmd told them.
    Epmd,
    /// It runs no epmd; its spec (or `--dist-port`) said where, as the text tells.
    Spec(String),
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Epmd => f.write_str("epmd"),
            Found::Spec(from) => write!(f, "no epmd: {from}"),
        }
    }
}

fn no_epmd(pod: &PodInfo, source: AskError) -> NodesError {
    NodesError::NoEpmd {
        pod: pod.name.clone(),
        port: pod.epmd_port,
        source,
    }
}

/// The pod's nodes (name, distribution port, version) and how they were found: from its epmd,
/// or, where it runs none, from what its spec (or `--dist-port`, which skips asking) says of
/// a node without epmd.
pub async fn find(kube: &Kube, pod: &PodInfo) -> Result<(Vec<Known>, Found), NodesError> {
    let from_spec = |epmdless: &Epmdless| match &pod.alive {
        Some(alive) => Ok((
            vec![Known {
                name: alive.clone(),
                port: epmdless.port,
                version: DIST_VERSION,
            }],
            Found::Spec(epmdless.from.clone()),
        )),
        None => Err(no_epmd(pod, AskError::Unnamed(epmdless.from.clone()))),
    };
    if let Some(epmdless) = pod.epmdless.as_ref().filter(|e| e.forced) {
        return from_spec(epmdless);
    }
    // The node the spec names is asked for beside NAMES: no round trip waits for another.
    // (Not where the spec says the node may run without epmd: that costs a second failure.)
    let names = ask(kube, pod, |s| epmd::names(s).boxed());
    let predicted = async {
        match (&pod.alive, &pod.epmdless) {
            (Some(alive), None) => Some((alive.clone(), port_please(kube, pod, alive).await)),
            _ => None,
        }
    };
    let (names, predicted) = futures::join!(names, predicted);
    let registered = match (names, &pod.epmdless) {
        (Ok(names), _) if !names.is_empty() => names,
        (Ok(_) | Err(NodesError::NoEpmd { .. }), Some(epmdless)) => return from_spec(epmdless),
        (Ok(_), None) => return Err(no_epmd(pod, AskError::NoNodes)),
        (Err(e), _) => return Err(e),
    };
    let mut known = Vec::with_capacity(registered.len());
    for Registered { name, port } in registered {
        let answer = match &predicted {
            Some((alive, Ok(answer))) if *alive == name => *answer,
            _ => port_please(kube, pod, &name).await?,
        };
        let version = match answer {
            // The node restarted on another port between the two answers: this one is newer.
            Some(info) if info.port != port => {
                debug!(pod = %pod.name, node = %name, "the node moved between NAMES and PORT_PLEASE2");
                info.version
            }
            Some(info) => info.version,
            None => DIST_VERSION,
        };
        known.push(Known {
            name,
            port: answer.map_or(port, |a| a.port),
            version,
        });
    }
    Ok((known, Found::Epmd))
}

/// What the pod's epmd says of node `alive` (`None`: it knows no such node).
async fn port_please(
    kube: &Kube,
    pod: &PodInfo,
    alive: &str,
) -> Result<Option<PortInfo>, NodesError> {
    let alive = alive.to_owned();
    ask(kube, pod, move |s| {
        async move { epmd::port_please(s, &alive).await }.boxed()
    })
    .await
}

/// What `query` reads from the pod's epmd, asked through a port-forward of its own.
pub async fn ask<T>(
    kube: &Kube,
    pod: &PodInfo,
    query: impl for<'s> FnOnce(
        &'s mut tokio::io::DuplexStream,
    ) -> BoxFuture<'s, std::io::Result<Result<T, Malformed>>>,
) -> Result<T, NodesError> {
    let asked = async {
        let forward::Opened {
            io: mut stream,
            mut refused,
        } = forward::open_with_retries(kube, &pod.name, pod.epmd_port).await?;
        let failed = tokio::select! {
            answer = query(&mut stream) => match answer {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(malformed)) => malformed.into(),
                Err(e) => e.into(),
            },
            Some(message) = &mut refused => {
                debug!(pod = %pod.name, %message, "the pod refused its epmd port");
                AskError::Refused
            }
        };
        // A refused port also ends the stream, and the refusal may come just after the end.
        if !matches!(failed, AskError::Refused)
            && let Ok(Some(message)) = tokio::time::timeout(REFUSAL_GRACE, &mut refused).await
        {
            debug!(pod = %pod.name, %message, "the pod refused its epmd port");
            return Err(no_epmd(pod, AskError::Refused));
        }
        Err(no_epmd(pod, failed))
    };
    // Bounded by the request timeout: a pod whose epmd does not answer is retried by the
    // bridge's plan, without holding anything else.
    let limit = kube.timeout.unwrap_or(EPMD_TIMEOUT);
    match tokio::time::timeout(limit, asked).await {
        Ok(result) => result,
        Err(_) => Err(no_epmd(pod, AskError::Timeout(limit.as_secs()))),
    }
}
