//! Attaching one pod, the part that talks to the cluster: ask the pod's epmd which nodes run
//! there and what a local node's query for each is answered with ([`nodes::find`]), and open
//! the local listeners they need: a forward per distribution port, and in nat mode erlbridge's
//! stand-in for the pod's epmd ([`epmd::Responder`]). Each pod's attach is a task of its own,
//! at most [`parallel`] at once, so a slow pod (a remote link, an epmd that does not answer
//! before the request timeout) holds no other; [`super::Bridge`] then makes the listeners
//! reachable (the helper's redirects) and keeps the pod. Nothing here touches the helper.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedSender;

use super::{BridgeError, Listener};
use crate::discover::{EPMD_PORT, PodInfo};
use crate::epmd::{self, Known};
use crate::forward::{self, ForwardError};
use crate::k8s::Kube;
use crate::nodes::{self, Found};
use crate::owner::Admit;

/// How many pods are attached at once, unless `ERLBRIDGE_PARALLEL_ATTACHES` says otherwise:
/// a pod running one node costs two port-forwards (its epmd asked for the list and for the
/// node, side by side), so about 32 upgrades are in flight against the API server and the
/// kubelets, which they take in stride, and a 100-pod StatefulSet 50 ms away is attached in
/// about a second and a half.
pub const PARALLEL: usize = 16;

/// The environment variable that sets how many pods are attached at once (1 and up).
pub const ENV_PARALLEL: &str = "ERLBRIDGE_PARALLEL_ATTACHES";

/// How many pods are attached at once: [`ENV_PARALLEL`], else [`PARALLEL`].
pub fn parallel() -> usize {
    std::env::var(ENV_PARALLEL)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(PARALLEL)
}

/// What every attach needs, shared by the tasks.
pub(super) struct Context {
    pub(super) kube: Kube,
    /// Where forwards report connections they could not forward.
    pub(super) failures: UnboundedSender<forward::Failed>,
    /// Who the listeners serve.
    pub(super) admit: Arc<dyn Admit>,
    /// Whether pods' epmd addresses are redirected too (nat mode): then erlbridge stands in for
    /// each pod's epmd.
    pub(super) stands_in_for_epmd: bool,
    /// The bound on attaches in flight.
    pub(super) limit: Semaphore,
}

/// A pod attached as far as the cluster goes: its nodes, and a listener per pod address that
/// is to reach one (`podIP:port`).
pub(super) struct Prepared {
    pub(super) nodes: Vec<Known>,
    pub(super) found: Found,
    pub(super) listeners: Vec<(SocketAddr, Listener)>,
}

/// The loopback address of `ip`'s family, where its listeners are.
fn loopback(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    }
}

/// Asks `pod`'s epmd for its nodes and opens their listeners, once a place among the attaches
/// in flight is free. On failure nothing of it stays (the listeners close as they drop).
pub(super) async fn prepare(ctx: Arc<Context>, pod: PodInfo) -> Result<Prepared, BridgeError> {
    let _turn = ctx.limit.acquire().await;
    let (nodes, found) = nodes::find(&ctx.kube, &pod).await?;
    let loopback = loopback(pod.ip);
    let mut listeners = Vec::new();
    if ctx.stands_in_for_epmd {
        // A local node asks the pod's address on its own epmd port (4369); the pod's epmd may
        // listen elsewhere (that address is redirected too), or not at all.
        let mut ports = vec![EPMD_PORT];
        let epmd = match &found {
            Found::Epmd => {
                if pod.epmd_port != EPMD_PORT {
                    ports.push(pod.epmd_port);
                }
                Some((ctx.kube.clone(), pod.epmd_port))
            }
            Found::Spec(_) => None,
        };
        for port in ports {
            let redirected = SocketAddr::new(pod.ip, port);
            let stand = epmd::Stand {
                pod: pod.name.clone(),
                redirected,
                nodes: nodes.clone(),
                epmd: epmd.clone(),
            };
            let responder =
                epmd::Responder::start(loopback, stand, ctx.admit.clone(), ctx.failures.clone())
                    .await
                    .map_err(ForwardError::Listen)?;
            listeners.push((redirected, Listener::Epmd(responder)));
        }
    }
    for node in &nodes {
        let redirected = SocketAddr::new(pod.ip, node.port);
        let target = forward::Target {
            pod: pod.name.clone(),
            port: node.port,
            redirected,
        };
        let forward = forward::listen(
            ctx.kube.clone(),
            target,
            loopback,
            ctx.failures.clone(),
            ctx.admit.clone(),
        )
        .await?;
        listeners.push((redirected, Listener::Forward(forward)));
    }
    Ok(Prepared {
        nodes,
        found,
        listeners,
    })
}
