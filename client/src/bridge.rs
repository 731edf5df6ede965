//! The bridge: the network state of `erlbridge up` and nothing else. For each pod of the
//! target it asks the pod's epmd (through a port-forward) which nodes run there and on which
//! distribution ports, opens a local forward for every distribution port (and the epmd port,
//! where a pod address is redirected), and makes each node reachable at its forward the way
//! [`crate::reach`] says: the helper's redirects, or the epmd module's map. Node names are
//! kept exactly (the distribution handshake checks them); only addresses change.
//!
//! Each pod is attached in a task of its own ([`attach`], at most [`attach::parallel`] at
//! once), so a big StatefulSet over a slow link is ready in a few round trips, and a pod whose
//! attach hangs holds no other's. Healing is the pure plan of [`crate::reconcile`] applied
//! after every change of the pod store ([`crate::watch`]), of the helper session, and when a
//! failed pod is due for another try; an attach's end is carried out as it comes. Forwards
//! need no healing of their own: each accepted connection opens a fresh port-forward stream.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::discover::{PodInfo, Snapshot, not_ready};
use crate::epmd;
use crate::forward::{self, Forward, ForwardError};
use crate::k8s::Kube;
use crate::mode::Mode;
use crate::nodes::NodesError;
use crate::owner::{OwnerOnly, Refused};
use crate::reach::{Reach, ReachError, Route};
use crate::reconcile::{Action, PodState, next_retry, plan};
use crate::watch::PodWatch;

pub mod attach;

/// How often a start tells its progress while nothing else changes.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
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
    /// Whether the pod's IP is on the loopback interface for this bridge (nat mode, on a host
    /// with no route to the pod network).
    #[serde(default)]
    pub alias: bool,
    /// How erlbridge found the node: `epmd` (the pod's epmd told it), or `no epmd: ...` and
    /// where the pod spec (or `--dist-port`) says it listens.
    #[serde(default = "by_epmd")]
    pub found: String,
}

fn by_epmd() -> String {
    "epmd".to_owned()
}

/// What a bridged pod holds: its nodes, where each is reached locally, and per pod port its
/// forward.
#[derive(Debug)]
pub struct Held {
    nodes: Vec<BridgedNode>,
    routes: Vec<Route>,
    listeners: Vec<(SocketAddr, Listener)>,
    alias: Option<IpAddr>,
}

/// What a redirected pod address reaches locally: a forward to a pod port, or erlbridge's
/// stand-in for the pod's epmd.
#[derive(Debug)]
enum Listener {
    Forward(Forward),
    Epmd(epmd::Responder),
}

impl Listener {
    fn port(&self) -> u16 {
        match self {
            Listener::Forward(f) => f.local.port(),
            Listener::Epmd(r) => r.local.port(),
        }
    }
}

/// Why a pod could not be bridged.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A forward could not be opened.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// The pod's nodes could not be found.
    #[error(transparent)]
    Nodes(NodesError),
    /// The pod's nodes could not be made reachable.
    #[error(transparent)]
    Reach(#[from] ReachError),
}

impl From<NodesError> for BridgeError {
    fn from(e: NodesError) -> BridgeError {
        match e {
            NodesError::Forward(e) => BridgeError::Forward(e),
            e => BridgeError::Nodes(e),
        }
    }
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
    /// A listener refused a connection that is not this user's (said once per uid).
    ConnectionRefused(Refused),
    /// The helper went away; redirects are gone until it is back.
    HelperLost,
    /// The helper is back and every redirect restored.
    HelperRestored,
}

/// How far a start is: pods attached of those to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Pods attached so far.
    pub attached: usize,
    /// Pods to attach.
    pub total: usize,
}

/// What the bridge looks like once up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// How local nodes reach the pod nodes.
    pub mode: Mode,
    /// Every bridged node, by pod name.
    pub nodes: Vec<BridgedNode>,
    /// The ERL_INETRC file for DNS-named nodes, if any (nat mode).
    pub inetrc: Option<PathBuf>,
    /// The flags a local node must be started with (epmd mode).
    pub erl_flags: Option<String>,
    /// Why each of the target's pods that is not bridged is left out.
    pub skipped: Vec<String>,
}

/// A live bridge. Dropping it stops the attaches in flight, closes the forwards and the
/// helper session, whose end removes every rule it added.
pub struct Bridge {
    pods: BTreeMap<String, PodState<Held>>,
    watch: PodWatch,
    reach: Reach,
    /// What each attach task needs.
    ctx: Arc<attach::Context>,
    /// The attaches in flight, and per pod the one whose end counts.
    tasks: JoinSet<Attached>,
    inflight: BTreeMap<String, (u64, AbortHandle)>,
    attempts: u64,
    failures: UnboundedReceiver<forward::Failed>,
    /// The connections the listeners refused, once per uid.
    refused: UnboundedReceiver<Refused>,
    /// The store as the last plan saw it.
    snapshot: Snapshot,
}

/// An attach task's end.
struct Attached {
    pod: String,
    attempt: u64,
    result: Result<attach::Prepared, BridgeError>,
}

impl Bridge {
    /// Bridges every ready pod of the watch's first snapshot, [`attach::parallel`] at a time,
    /// telling `progress` after each (and every quarter of a second); returns once each is
    /// reachable. A pod that cannot be bridged fails the whole bridge, which then leaves
    /// nothing behind (the attaches still in flight stop, their listeners close).
    pub async fn up(
        kube: Kube,
        watch: PodWatch,
        reach: Reach,
        mut progress: impl FnMut(Progress),
    ) -> Result<Bridge, BridgeError> {
        let (report, refused) = unbounded_channel();
        let (failed, failures) = unbounded_channel();
        let ctx = attach::Context {
            kube,
            failures: failed,
            admit: OwnerOnly::new(report),
            stands_in_for_epmd: reach.redirects_epmd(),
            limit: tokio::sync::Semaphore::new(attach::parallel()),
        };
        let mut bridge = Bridge {
            pods: BTreeMap::new(),
            snapshot: watch.snapshot(),
            watch,
            reach,
            ctx: Arc::new(ctx),
            tasks: JoinSet::new(),
            inflight: BTreeMap::new(),
            attempts: 0,
            failures,
            refused,
        };
        let generation = bridge.reach.generation();
        for action in plan(&bridge.snapshot, &bridge.pods, generation, Instant::now()) {
            if let Action::Bridge(info) = action {
                bridge.start_attach(info, false, false);
            }
        }
        let total = bridge.inflight.len();
        let mut attached = 0;
        // Progress is told after each attach, and again every so often, so that the last word
        // on it is never one a throttled reporter let pass.
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        loop {
            progress(Progress { attached, total });
            tokio::select! {
                done = next(&mut bridge.tasks) => match done {
                    None => break,
                    // The one way an attach ends, here too; a failure ends the start.
                    Some(done) => match bridge.attached(done).await {
                        Some(Change::PodUnreachable { error, .. }) => return Err(error),
                        Some(_) => attached += 1,
                        None => {}
                    },
                },
                _ = tick.tick() => {}
            }
        }
        bridge.publish()?;
        info!(pods = bridge.pods.len(), mode = %bridge.reach.mode(), "bridged");
        Ok(bridge)
    }

    /// What is bridged now.
    pub fn ready(&self) -> Ready {
        let nodes = self.nodes();
        let ipv6 = nodes.iter().any(|n| {
            n.node
                .split_once('@')
                .is_some_and(|(_, host)| host.parse::<std::net::Ipv6Addr>().is_ok())
        });
        Ready {
            mode: self.reach.mode(),
            nodes,
            inetrc: self.reach.inetrc(),
            erl_flags: self.reach.erl_flags(ipv6),
            skipped: not_ready(&self.snapshot),
        }
    }

    /// The private runtime directory (for files local nodes read), made now if no file
    /// needed it yet.
    pub fn runtime_dir(&mut self) -> Result<&std::path::Path, crate::runtime::RuntimeError> {
        Ok(self.reach.dir()?.path())
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
            let retry_at = next_retry(&self.snapshot, &self.pods);
            let mut restored = false;
            tokio::select! {
                changed = self.watch.changed() => if !changed {
                    warn!("the pod watch ended; the bridge stays as it is");
                    return;
                },
                Some(done) = next(&mut self.tasks), if !self.tasks.is_empty() => {
                    let pod = done.pod.clone();
                    let change = self.attached(done).instrument(info_span!("heal", %pod)).await;
                    if let Err(e) = self.publish() {
                        warn!(error = %e, "could not tell local nodes where the pods are now");
                    }
                    report_all(&mut report, change);
                    continue;
                }
                () = self.reach.ended(), if self.reach.is_live() => {
                    report(Change::HelperLost);
                    helper_back_at = Some(Instant::now());
                    helper_delay = Duration::from_millis(100);
                    continue;
                }
                () = sleep_until(helper_back_at), if helper_back_at.is_some() => {
                    match self.reach.reopen().await {
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
                Some(refused) = self.refused.recv() => {
                    report(Change::ConnectionRefused(refused));
                    continue;
                }
                Some(failed) = self.failures.recv() => {
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

    /// Plans against the current snapshot and carries the plan out: attaches start (and run
    /// on by themselves), drops and remaps are done at once.
    async fn reconcile(&mut self) -> Vec<Change> {
        self.snapshot = self.watch.snapshot();
        let actions = plan(
            &self.snapshot,
            &self.pods,
            self.reach.generation(),
            Instant::now(),
        );
        let mut changes = Vec::new();
        let touched = !actions.is_empty();
        for action in actions {
            let pod = match &action {
                Action::Bridge(info) | Action::Rebridge(info) => info.name.clone(),
                Action::Drop(name) | Action::Remap(name) => name.clone(),
            };
            let change = self
                .apply(action)
                .instrument(info_span!("heal", %pod))
                .await;
            changes.extend(change);
        }
        if touched && let Err(e) = self.publish() {
            warn!(error = %e, "could not tell local nodes where the pods are now");
        }
        changes
    }

    /// Carries out one step of the plan.
    async fn apply(&mut self, action: Action) -> Option<Change> {
        match action {
            Action::Bridge(info) => {
                let (came_back, retrying) = match self.pods.get(&info.name) {
                    Some(PodState::Gone) => (true, false),
                    Some(PodState::Failing { came_back, .. }) => (*came_back, true),
                    Some(PodState::Attaching {
                        came_back,
                        retrying,
                        ..
                    }) => (*came_back, *retrying),
                    _ => (false, false),
                };
                self.start_attach(info, came_back, retrying);
                None
            }
            Action::Rebridge(info) => {
                self.unbridge(&info.name).await;
                self.start_attach(info, true, false);
                None
            }
            Action::Drop(name) => self.drop_pod(&name).await,
            Action::Remap(name) => self.remap(&name).await,
        }
    }

    /// Starts attaching `info` in a task of its own, in place of any attach of it in flight.
    fn start_attach(&mut self, info: PodInfo, came_back: bool, retrying: bool) {
        self.stop_attach(&info.name);
        self.attempts += 1;
        let attempt = self.attempts;
        let (ctx, pod, task_info) = (self.ctx.clone(), info.name.clone(), info.clone());
        let task = self.tasks.spawn(
            async move {
                let result = attach::prepare(ctx, task_info).await;
                Attached {
                    pod,
                    attempt,
                    result,
                }
            }
            .instrument(info_span!("attach", pod = %info.name, ip = %info.ip)),
        );
        self.inflight.insert(info.name.clone(), (attempt, task));
        self.pods.insert(
            info.name.clone(),
            PodState::Attaching {
                info,
                came_back,
                retrying,
            },
        );
    }

    /// Stops the attach of `pod` in flight, if any.
    fn stop_attach(&mut self, pod: &str) {
        if let Some((_, task)) = self.inflight.remove(pod) {
            task.abort();
        }
    }

    /// An attach ended: the pod is bridged (its redirects made now), or it failed and is tried
    /// again, reported the first time only. The end of an attach that was replaced or stopped
    /// is dropped, with its listeners.
    async fn attached(&mut self, done: Attached) -> Option<Change> {
        match self.inflight.get(&done.pod) {
            Some((attempt, _)) if *attempt == done.attempt => {}
            _ => return None,
        }
        self.inflight.remove(&done.pod);
        let Some(PodState::Attaching {
            info,
            came_back,
            retrying,
        }) = self.pods.remove(&done.pod)
        else {
            return None;
        };
        let name = info.name.clone();
        let result = match done.result {
            Ok(prepared) => self.commit(&info, prepared).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(held) => {
                let nodes = held.nodes.clone();
                info!(pod = %name, ip = %info.ip, "bridged");
                let generation = self.reach.generation();
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
                self.pods.insert(
                    name.clone(),
                    PodState::Failing {
                        info,
                        retry_at: Instant::now() + RETRY_EVERY,
                        came_back,
                    },
                );
                (!retrying).then_some(Change::PodUnreachable { pod: name, error })
            }
        }
    }

    /// Makes an attached pod's listeners reachable the way [`Reach`] says (the helper's
    /// redirects, a loopback alias where the host has no route), and keeps them. On failure
    /// nothing of it stays.
    async fn commit(
        &mut self,
        pod: &PodInfo,
        prepared: attach::Prepared,
    ) -> Result<Held, BridgeError> {
        let attach::Prepared {
            nodes,
            found,
            listeners,
        } = prepared;
        let mut held = Held {
            nodes: Vec::new(),
            routes: Vec::new(),
            listeners: Vec::new(),
            alias: None,
        };
        if self.reach.expose(pod.ip).await? {
            held.alias = Some(pod.ip);
        }
        for (addr, listener) in listeners {
            if let Err(e) = self.reach.map(addr, listener.port()).await {
                self.detach(&pod.name, held).await;
                return Err(e.into());
            }
            held.listeners.push((addr, listener));
        }
        for node in nodes {
            let local_port = held
                .listeners
                .iter()
                .find(|(addr, l)| addr.port() == node.port && matches!(l, Listener::Forward(_)))
                .map_or(0, |(_, l)| l.port());
            held.routes.push(Route {
                alive: node.name.clone(),
                host: pod.host.clone(),
                ip: pod.ip,
                local_port,
                version: node.version,
            });
            held.nodes.push(BridgedNode {
                node: format!("{}@{}", node.name, pod.host),
                pod: pod.name.clone(),
                namespace: pod.namespace.clone(),
                ip: pod.ip,
                epmd_port: pod.epmd_port,
                dist_port: node.port,
                alias: held.alias.is_some(),
                found: found.to_string(),
            });
        }
        Ok(held)
    }

    /// Removes a pod's redirects and alias; its forwards close when `held` is dropped.
    async fn detach(&mut self, pod: &str, held: Held) -> Vec<BridgedNode> {
        for (addr, _) in &held.listeners {
            if let Err(e) = self.reach.unmap(*addr).await {
                warn!(pod, %addr, error = %e, "could not remove a redirect");
            }
        }
        if let Some(ip) = held.alias
            && let Err(e) = self.reach.unexpose(ip).await
        {
            warn!(pod, %ip, error = %e, "could not release a loopback alias");
        }
        held.nodes
    }

    /// Unbridges a pod, keeping its name as seen.
    async fn unbridge(&mut self, name: &str) -> Vec<BridgedNode> {
        self.stop_attach(name);
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
            Some(
                PodState::Failing {
                    came_back: false, ..
                }
                | PodState::Attaching {
                    came_back: false, ..
                },
            ) => {
                self.stop_attach(name);
                self.pods.remove(name);
                None
            }
            _ => {
                self.stop_attach(name);
                self.pods.insert(name.to_owned(), PodState::Gone);
                None
            }
        }
    }

    /// Adds a bridged pod's redirects to the current helper session.
    async fn remap(&mut self, name: &str) -> Option<Change> {
        let generation = self.reach.generation();
        let Some(PodState::Bridged {
            held,
            generation: g,
            ..
        }) = self.pods.get_mut(name)
        else {
            return None;
        };
        let mut failed = None;
        if let Some(ip) = held.alias
            && let Err(e) = self.reach.realias(ip).await
        {
            failed = Some(e);
        }
        for (addr, listener) in &held.listeners {
            if failed.is_some() {
                break;
            }
            if let Err(e) = self.reach.map(*addr, listener.port()).await {
                failed = Some(e);
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

    /// Tells local nodes where every bridged node is now.
    fn publish(&mut self) -> Result<(), ReachError> {
        let routes: Vec<Route> = self
            .pods
            .values()
            .filter_map(|state| match state {
                PodState::Bridged { held, .. } => Some(held.routes.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        self.reach.publish(&routes)
    }
}

/// The next attach to end, its tasks' panics passed on; `None` once there is none. A stopped
/// attach's end is skipped.
async fn next(tasks: &mut JoinSet<Attached>) -> Option<Attached> {
    loop {
        match tasks.join_next().await? {
            Ok(done) => return Some(done),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
}

fn report_all(report: &mut impl FnMut(Change), change: Option<Change>) {
    if let Some(change) = change {
        report(change);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
