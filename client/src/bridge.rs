//! The bridge: the network state of `erlbridge up` and nothing else. For each pod of the
//! target it asks the pod's epmd (through a port-forward) which nodes run there and on which
//! distribution ports, opens a local forward for the epmd port and every distribution port,
//! and has the helper redirect this user's connections to `podIP:port` onto them. Node names
//! are kept exactly (the distribution handshake checks them); only addresses are redirected.
//! DNS-named nodes get an ERL_INETRC file ([`crate::inetrc`]).
//!
//! Healing is the pure plan of [`crate::reconcile`] applied after every change of the pod
//! store ([`crate::watch`]), of the helper session, and when a failed pod is due for another
//! try. Forwards need no healing of their own: each accepted connection opens a fresh
//! port-forward stream.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{debug, info, info_span, warn};

use crate::discover::PodInfo;
use crate::epmd::{self, AskError};
use crate::forward::{self, Forward, ForwardError};
use crate::helper::{HelperError, Link};
use crate::inetrc::{Inetrc, InetrcError};
use crate::reconcile::{Action, PodState, next_retry, plan};
use crate::watch::PodWatch;

/// How long asking a pod's epmd may take.
const EPMD_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a pod that could not be bridged waits before the next try.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// The longest wait between two tries to reach a helper that went away.
const HELPER_RETRY_MAX: Duration = Duration::from_secs(2);

/// One bridged Erlang node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgedNode {
    /// Its full name, e.g. `app@10.244.1.8`.
    pub node: String,
    /// Its pod.
    pub pod: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's IP.
    pub ip: IpAddr,
    /// The pod's epmd port.
    pub epmd_port: u16,
    /// The node's distribution port.
    pub dist_port: u16,
}

/// What a bridged pod holds: its nodes, and per pod port its forward, whose address the helper
/// redirects to it.
#[derive(Debug)]
pub struct Held {
    nodes: Vec<BridgedNode>,
    forwards: Vec<(SocketAddr, Forward)>,
}

/// Why a pod could not be bridged.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A forward could not be opened.
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
    /// The helper could not be used.
    #[error(transparent)]
    Helper(#[from] HelperError),
    /// The ERL_INETRC file could not be written.
    #[error(transparent)]
    Inetrc(#[from] InetrcError),
}

/// A change the bridge made while up, for the user to read.
#[derive(Debug)]
pub enum Change {
    /// A pod (a new replica) is bridged.
    PodAdded {
        /// The pod.
        pod: String,
        /// Its nodes.
        nodes: Vec<BridgedNode>,
    },
    /// A pod came back (a new IP, or re-created): its nodes are bridged where it is now.
    PodChanged {
        /// The pod.
        pod: String,
        /// Its nodes.
        nodes: Vec<BridgedNode>,
    },
    /// A pod left the target; its nodes are no longer bridged.
    PodRemoved {
        /// The pod.
        pod: String,
        /// The nodes it had.
        nodes: Vec<BridgedNode>,
    },
    /// A ready pod could not be bridged (yet); it is tried again.
    PodUnreachable {
        /// The pod.
        pod: String,
        /// Why.
        error: BridgeError,
    },
    /// A connection to a bridged pod could not be forwarded, or a listener cannot accept.
    ConnectionFailed(forward::Failed),
    /// The helper went away; redirects are gone until it is back.
    HelperLost,
    /// The helper is back and every redirect restored.
    HelperRestored,
}

/// What the bridge looks like once up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Every bridged node, by pod name.
    pub nodes: Vec<BridgedNode>,
    /// The ERL_INETRC file for DNS-named nodes, if any.
    pub inetrc: Option<PathBuf>,
    /// Why each of the target's pods that is not bridged is left out.
    pub skipped: Vec<String>,
}

/// A live bridge. Dropping it closes the forwards and the helper session, whose end removes
/// every rule it added.
pub struct Bridge {
    pods: BTreeMap<String, PodState<Held>>,
    watch: PodWatch,
    helper: Link,
    api: Api<Pod>,
    inetrc: Option<Inetrc>,
    failures: (
        UnboundedSender<forward::Failed>,
        UnboundedReceiver<forward::Failed>,
    ),
    skipped: Vec<String>,
}

impl Bridge {
    /// Bridges every ready pod of the watch's first snapshot; returns once each is reachable.
    /// A pod that cannot be bridged fails the whole bridge, which then leaves nothing behind.
    pub async fn up(
        client: kube::Client,
        namespace: &str,
        watch: PodWatch,
        helper: Link,
    ) -> Result<Bridge, BridgeError> {
        let snapshot = watch.snapshot();
        let mut bridge = Bridge {
            pods: BTreeMap::new(),
            skipped: snapshot
                .values()
                .filter_map(|seen| seen.as_ref().err().cloned())
                .collect(),
            watch,
            helper,
            api: Api::namespaced(client, namespace),
            inetrc: None,
            failures: unbounded_channel(),
        };
        let generation = bridge.helper.generation();
        for action in plan(&snapshot, &bridge.pods, generation, Instant::now()) {
            if let Action::Bridge(info) = action {
                let held = bridge.attach(&info).await?;
                bridge.pods.insert(
                    info.name.clone(),
                    PodState::Bridged {
                        info,
                        held,
                        generation,
                    },
                );
            }
        }
        bridge.write_inetrc()?;
        info!(pods = bridge.pods.len(), "bridged");
        Ok(bridge)
    }

    /// What is bridged now.
    pub fn ready(&self) -> Ready {
        Ready {
            nodes: self.nodes(),
            inetrc: self.inetrc.as_ref().map(|f| f.path().to_owned()),
            skipped: self.skipped.clone(),
        }
    }

    /// Every bridged node, by pod name.
    pub fn nodes(&self) -> Vec<BridgedNode> {
        self.pods
            .values()
            .filter_map(|state| match state {
                PodState::Bridged { held, .. } => Some(held.nodes.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Keeps the bridge healed until cancelled: follows the target's pods (restarts with new
    /// IPs, new and removed replicas, re-lists) and the helper (restarts), reporting each change.
    pub async fn run(&mut self, mut report: impl FnMut(Change)) {
        let mut helper_back_at: Option<Instant> = None;
        let mut helper_delay = Duration::from_millis(100);
        loop {
            let retry_at = next_retry(&self.pods);
            let mut restored = false;
            tokio::select! {
                changed = self.watch.changed() => if !changed {
                    warn!("the pod watch ended; the bridge stays as it is");
                    return;
                },
                () = self.helper.ended(), if self.helper.is_live() => {
                    report(Change::HelperLost);
                    helper_back_at = Some(Instant::now());
                    helper_delay = Duration::from_millis(100);
                    continue;
                }
                () = sleep_until(helper_back_at), if helper_back_at.is_some() => {
                    match self.helper.reopen().await {
                        Ok(()) => {
                            helper_back_at = None;
                            restored = true;
                        }
                        Err(e) => {
                            debug!(error = %e, "the helper is not back yet");
                            helper_back_at = Some(Instant::now() + helper_delay);
                            helper_delay = (helper_delay * 2).min(HELPER_RETRY_MAX);
                            continue;
                        }
                    }
                }
                Some(failed) = self.failures.1.recv() => {
                    // Only for pods still bridged: a connection to a pod that is gone is moot.
                    if matches!(self.pods.get(&failed.pod), Some(PodState::Bridged { .. })) {
                        report(Change::ConnectionFailed(failed));
                    }
                    continue;
                }
                () = sleep_until(retry_at), if retry_at.is_some() => {}
            }
            for change in self.reconcile().await {
                report(change);
            }
            if restored {
                report(Change::HelperRestored);
            }
        }
    }

    /// Plans against the current snapshot and carries the plan out.
    async fn reconcile(&mut self) -> Vec<Change> {
        let snapshot = self.watch.snapshot();
        self.skipped = snapshot
            .values()
            .filter_map(|seen| seen.as_ref().err().cloned())
            .collect();
        let actions = plan(
            &snapshot,
            &self.pods,
            self.helper.generation(),
            Instant::now(),
        );
        let mut changes = Vec::new();
        let touched = !actions.is_empty();
        for action in actions {
            let span = info_span!("heal", ?action);
            let _guard = span.enter();
            match action {
                Action::Bridge(info) => {
                    let came_back = match self.pods.get(&info.name) {
                        Some(PodState::Gone) => true,
                        Some(PodState::Failing { came_back, .. }) => *came_back,
                        _ => false,
                    };
                    changes.extend(self.bridge(info, came_back).await);
                }
                Action::Rebridge(info) => {
                    self.unbridge(&info.name).await;
                    changes.extend(self.bridge(info, true).await);
                }
                Action::Drop(name) => changes.extend(self.drop_pod(&name).await),
                Action::Remap(name) => changes.extend(self.remap(&name).await),
            }
        }
        if touched && let Err(e) = self.write_inetrc() {
            warn!(error = %e, "could not update the inetrc file");
        }
        changes
    }

    /// Bridges one pod; a failure leaves it to be tried again, reported the first time only.
    async fn bridge(&mut self, info: PodInfo, came_back: bool) -> Option<Change> {
        let name = info.name.clone();
        match self.attach(&info).await {
            Ok(held) => {
                let nodes = held.nodes.clone();
                info!(pod = %name, ip = %info.ip, "bridged");
                let generation = self.helper.generation();
                self.pods.insert(
                    name.clone(),
                    PodState::Bridged {
                        info,
                        held,
                        generation,
                    },
                );
                Some(if came_back {
                    Change::PodChanged { pod: name, nodes }
                } else {
                    Change::PodAdded { pod: name, nodes }
                })
            }
            Err(error) => {
                let reported = matches!(self.pods.get(&name), Some(PodState::Failing { .. }));
                self.pods.insert(
                    name.clone(),
                    PodState::Failing {
                        info,
                        retry_at: Instant::now() + RETRY_EVERY,
                        came_back,
                    },
                );
                (!reported).then_some(Change::PodUnreachable { pod: name, error })
            }
        }
    }

    /// Asks the pod's epmd for its nodes, opens their forwards and redirects. On failure
    /// nothing of it stays.
    async fn attach(&mut self, pod: &PodInfo) -> Result<Held, BridgeError> {
        let registered = registered(&self.api, pod).await?;
        let mut ports = vec![pod.epmd_port];
        ports.extend(registered.iter().map(|r| r.port));
        let mut held = Held {
            nodes: registered
                .into_iter()
                .map(|node| BridgedNode {
                    node: format!("{}@{}", node.name, pod.host),
                    pod: pod.name.clone(),
                    namespace: pod.namespace.clone(),
                    ip: pod.ip,
                    epmd_port: pod.epmd_port,
                    dist_port: node.port,
                })
                .collect(),
            forwards: Vec::new(),
        };
        for port in ports {
            let addr = SocketAddr::new(pod.ip, port);
            let added = async {
                let forward = forward::listen(
                    self.api.clone(),
                    pod.name.clone(),
                    port,
                    self.failures.0.clone(),
                )
                .await?;
                self.helper.map(addr, forward.local.port()).await?;
                Ok::<_, BridgeError>(forward)
            }
            .await;
            match added {
                Ok(forward) => held.forwards.push((addr, forward)),
                Err(e) => {
                    self.detach(&pod.name, held).await;
                    return Err(e);
                }
            }
        }
        Ok(held)
    }

    /// Removes a pod's redirects; its forwards close when `held` is dropped.
    async fn detach(&mut self, pod: &str, held: Held) -> Vec<BridgedNode> {
        for (addr, _) in &held.forwards {
            if let Err(e) = self.helper.unmap(*addr).await {
                warn!(pod, %addr, error = %e, "could not remove a redirect");
            }
        }
        held.nodes
    }

    /// Unbridges a pod, keeping its name as seen.
    async fn unbridge(&mut self, name: &str) -> Vec<BridgedNode> {
        match self.pods.insert(name.to_owned(), PodState::Gone) {
            Some(PodState::Bridged { held, .. }) => self.detach(name, held).await,
            _ => Vec::new(),
        }
    }

    /// A pod left the target.
    async fn drop_pod(&mut self, name: &str) -> Option<Change> {
        match self.pods.get(name) {
            Some(PodState::Bridged { .. }) => {
                let nodes = self.unbridge(name).await;
                info!(pod = name, "unbridged");
                Some(Change::PodRemoved {
                    pod: name.to_owned(),
                    nodes,
                })
            }
            Some(PodState::Failing {
                came_back: false, ..
            }) => {
                self.pods.remove(name);
                None
            }
            _ => {
                self.pods.insert(name.to_owned(), PodState::Gone);
                None
            }
        }
    }

    /// Adds a bridged pod's redirects to the current helper session.
    async fn remap(&mut self, name: &str) -> Option<Change> {
        let generation = self.helper.generation();
        let Some(PodState::Bridged {
            held,
            generation: g,
            ..
        }) = self.pods.get_mut(name)
        else {
            return None;
        };
        let mut failed = None;
        for (addr, forward) in &held.forwards {
            if let Err(e) = self.helper.map(*addr, forward.local.port()).await {
                failed = Some(e);
                break;
            }
        }
        *g = generation;
        let error = failed?;
        // The helper no longer takes this pod (its policy changed, say): try it from scratch.
        if let Some(PodState::Bridged { info, held, .. }) = self.pods.remove(name) {
            self.detach(name, held).await;
            self.pods.insert(
                name.to_owned(),
                PodState::Failing {
                    info,
                    retry_at: Instant::now() + RETRY_EVERY,
                    came_back: true,
                },
            );
        }
        Some(Change::PodUnreachable {
            pod: name.to_owned(),
            error: error.into(),
        })
    }

    /// Writes the ERL_INETRC file for the bridged pods whose nodes use a DNS name.
    fn write_inetrc(&mut self) -> Result<(), InetrcError> {
        let hosts: Vec<(IpAddr, String)> = self
            .pods
            .values()
            .filter_map(|state| match state {
                PodState::Bridged { info, .. } if info.host.parse::<IpAddr>().is_err() => {
                    Some((info.ip, info.host.clone()))
                }
                _ => None,
            })
            .collect();
        if hosts.is_empty() && self.inetrc.is_none() {
            return Ok(());
        }
        self.inetrc.get_or_insert_with(Inetrc::new).write(&hosts)
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The nodes registered with the pod's epmd, asked through a port-forward.
async fn registered(pods: &Api<Pod>, pod: &PodInfo) -> Result<Vec<epmd::Registered>, BridgeError> {
    let no_epmd = |source: AskError| BridgeError::NoEpmd {
        pod: pod.name.clone(),
        port: pod.epmd_port,
        source,
    };
    let ask = async {
        let forward::Opened {
            io: mut stream,
            refused,
        } = forward::open_with_retries(pods, &pod.name, pod.epmd_port).await?;
        tokio::select! {
            names = epmd::names(&mut stream) => match names {
                Ok(Ok(names)) if names.is_empty() => Err(no_epmd(AskError::NoNodes)),
                Ok(Ok(names)) => Ok(names),
                Ok(Err(malformed)) => Err(no_epmd(malformed.into())),
                Err(e) => Err(no_epmd(e.into())),
            },
            Some(message) = refused => Err(no_epmd(AskError::Refused(message))),
        }
    };
    match tokio::time::timeout(EPMD_TIMEOUT, ask).await {
        Ok(result) => result,
        Err(_) => Err(no_epmd(AskError::Timeout(EPMD_TIMEOUT.as_secs()))),
    }
}
