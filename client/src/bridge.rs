//! `erlbridge up`: discover the target's pods, ask each pod's epmd (through a port-forward)
//! which nodes run there and on which distribution ports, open a local forward for every
//! epmd and distribution port, and ask the helper to redirect this user's connections to
//! `podIP:port` onto them. Node names are kept exactly (the distribution handshake checks
//! them); only addresses are redirected. DNS-named nodes get an ERL_INETRC file.
//!
//! Once up, [`Bridge::run`] keeps it healed: it watches the target's pods and re-bridges a pod
//! that comes back with a new IP, bridges new replicas and drops removed ones, and restores every
//! redirect after the helper restarts. Forwards need no healing of their own: each accepted
//! connection opens a fresh port-forward stream.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{debug, info, warn};

use crate::cookie::{CookieError, CookieSource};
use crate::discover::{DiscoverError, NodeHost, PodInfo, Target, discover, pod_info, selector_of};
use crate::epmd;
use crate::forward::{self, Forward, ForwardError};
use crate::helper::{HelperError, Link};
use crate::k8s::{ClusterOptions, K8sError};

/// How long asking a pod's epmd may take.
const EPMD_TIMEOUT: Duration = Duration::from_secs(15);

/// What `erlbridge up` was asked to do.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Where the cluster is.
    pub cluster: ClusterOptions,
    /// What to bridge.
    pub target: Target,
    /// Which host part node names use; `None` means what the pods' environment says.
    pub node_host: Option<NodeHost>,
    /// The helper's socket.
    pub helper_socket: PathBuf,
    /// Where the cookie comes from; `None`: the pods' RELEASE_COOKIE, if any.
    pub cookie_from: Option<CookieSource>,
}

/// One bridged Erlang node.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// One bridged pod: its facts, its nodes, its forwards and the addresses the helper redirects.
struct PodBridge {
    info: PodInfo,
    nodes: Vec<BridgedNode>,
    mapped: Vec<SocketAddr>,
    _forwards: Vec<Forward>,
}

/// A change the bridge made while up, for the user to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A pod (a new replica, or one back after a restart) is bridged.
    PodAdded(Vec<BridgedNode>),
    /// A pod came back with a new IP: its nodes are bridged at the new address.
    PodChanged(Vec<BridgedNode>),
    /// A pod is gone; its nodes are no longer bridged.
    PodRemoved(Vec<BridgedNode>),
    /// A ready pod could not be bridged (yet); it is tried again.
    PodUnreachable {
        /// The pod.
        pod: String,
        /// Why.
        reason: String,
    },
    /// The helper went away; redirects are gone until it is back.
    HelperLost,
    /// The helper is back and every redirect restored.
    HelperRestored,
}

/// A live bridge. Dropping it closes the forwards and the helper session, whose end removes
/// every rule it added.
pub struct Bridge {
    pods: BTreeMap<String, PodBridge>,
    /// Pods of the target that were not ready at start, and why.
    pub skipped: Vec<String>,
    /// The ERL_INETRC file for DNS-named nodes, if any.
    pub inetrc: Option<PathBuf>,
    /// The nodes' cookie, when known (never logged, never in JSON output).
    pub cookie: Option<String>,
    helper: Link,
    client: kube::Client,
    namespace: String,
    opts: UpOptions,
    retry: BTreeMap<String, PodInfo>,
    failures: (
        UnboundedSender<forward::Failed>,
        UnboundedReceiver<forward::Failed>,
    ),
    /// Every pod name bridged so far: one that comes back (a StatefulSet pod re-created with a
    /// new IP) is reported as changed, not as new.
    seen: std::collections::BTreeSet<String>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(path) = &self.inetrc {
            let _ = std::fs::remove_file(path);
        }
    }
}
/// Why `erlbridge up` failed.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// No Kubernetes client could be made.
    #[error(transparent)]
    Cluster(#[from] K8sError),
    /// The target could not be resolved.
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    /// A forward could not be opened.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// A pod has no epmd answering.
    #[error("pod {pod} has no epmd answering on port {port}: {reason}")]
    NoEpmd {
        /// The pod.
        pod: String,
        /// The epmd port.
        port: u16,
        /// What happened.
        reason: String,
    },
    /// The helper could not be used.
    #[error(transparent)]
    Helper(#[from] HelperError),
    /// The cookie could not be had.
    #[error(transparent)]
    Cookie(#[from] CookieError),
    /// The ERL_INETRC file could not be written.
    #[error("cannot write {0}")]
    Inetrc(PathBuf, #[source] std::io::Error),
}

/// The nodes registered with the pod's epmd, asked through a port-forward.
async fn registered(pods: &Api<Pod>, pod: &PodInfo) -> Result<Vec<epmd::Registered>, UpError> {
    let no_epmd = |reason: String| UpError::NoEpmd {
        pod: pod.name.clone(),
        port: pod.epmd_port,
        reason,
    };
    let ask = async {
        let forward::Opened {
            io: mut stream,
            refused,
        } = forward::open_with_retries(pods, &pod.name, pod.epmd_port).await?;
        tokio::select! {
            names = epmd::names(&mut stream) => match names {
                Ok(Ok(names)) => Ok(names),
                Ok(Err(malformed)) => Err(no_epmd(malformed.to_string())),
                Err(e) => Err(no_epmd(e.to_string())),
            },
            Some(message) = refused => Err(no_epmd(message)),
        }
    };
    match tokio::time::timeout(EPMD_TIMEOUT, ask).await {
        Ok(result) => result,
        Err(_) => Err(no_epmd(format!("no answer within {EPMD_TIMEOUT:?}"))),
    }
}

/// Brings the bridge up; returns once every node is reachable.
pub async fn up(opts: &UpOptions) -> Result<Bridge, UpError> {
    let (client, namespace) = crate::k8s::connect(&opts.cluster).await?;
    let (pods, skipped) = discover(&client, &namespace, &opts.target, opts.node_host).await?;
    info!(target = %opts.target, pods = pods.len(), "discovered");
    let cookie = match &opts.cookie_from {
        Some(source) => Some(crate::cookie::resolve(&client, &namespace, source, &pods).await?),
        None => pods
            .iter()
            .find_map(|p| p.env.get("RELEASE_COOKIE").cloned()),
    };
    let helper = Link::open(
        &opts.helper_socket,
        &format!("erlbridge up {}", opts.target),
    )
    .await?;
    let mut bridge = Bridge {
        pods: BTreeMap::new(),
        skipped,
        inetrc: None,
        cookie,
        helper,
        client,
        namespace,
        opts: opts.clone(),
        retry: BTreeMap::new(),
        failures: unbounded_channel(),
        seen: Default::default(),
    };
    for pod in pods {
        bridge.bridge_pod(pod).await?;
    }
    bridge.write_inetrc()?;
    Ok(bridge)
}

/// How often pods that could not be bridged are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

impl Bridge {
    /// Every bridged node, by pod name.
    pub fn nodes(&self) -> Vec<BridgedNode> {
        self.pods.values().flat_map(|p| p.nodes.clone()).collect()
    }

    /// Asks the pod's epmd for its nodes, opens their forwards and redirects.
    async fn bridge_pod(&mut self, pod: PodInfo) -> Result<Vec<BridgedNode>, UpError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let registered = registered(&api, &pod).await?;
        if registered.is_empty() {
            return Err(UpError::NoEpmd {
                pod: pod.name.clone(),
                port: pod.epmd_port,
                reason: "epmd answers, but no Erlang node is registered with it".to_owned(),
            });
        }
        let mut ports = vec![pod.epmd_port];
        ports.extend(registered.iter().map(|r| r.port));
        let mut forwards = Vec::new();
        let mut mapped = Vec::new();
        for port in ports {
            let addr = SocketAddr::new(pod.ip, port);
            let listened =
                forward::listen(api.clone(), pod.name.clone(), port, self.failures.0.clone()).await;
            let mapped_now = match listened {
                Ok(forward) => match self.helper.map(addr, forward.local.port()).await {
                    Ok(()) => Ok(forward),
                    Err(e) => Err(UpError::from(e)),
                },
                Err(e) => Err(UpError::from(e)),
            };
            match mapped_now {
                Ok(forward) => {
                    mapped.push(addr);
                    forwards.push(forward);
                }
                Err(e) => {
                    // Leave nothing half-bridged.
                    for done in mapped {
                        let _ = self.helper.unmap(done).await;
                    }
                    return Err(e);
                }
            }
        }
        let nodes: Vec<BridgedNode> = registered
            .into_iter()
            .map(|node| BridgedNode {
                node: format!("{}@{}", node.name, pod.host),
                pod: pod.name.clone(),
                namespace: pod.namespace.clone(),
                ip: pod.ip,
                epmd_port: pod.epmd_port,
                dist_port: node.port,
            })
            .collect();
        self.seen.insert(pod.name.clone());
        self.pods.insert(
            pod.name.clone(),
            PodBridge {
                info: pod,
                nodes: nodes.clone(),
                mapped,
                _forwards: forwards,
            },
        );
        Ok(nodes)
    }

    /// Unbridges a pod: its redirects and forwards go.
    async fn unbridge_pod(&mut self, name: &str) -> Vec<BridgedNode> {
        let Some(pod) = self.pods.remove(name) else {
            return Vec::new();
        };
        for addr in &pod.mapped {
            if let Err(e) = self.helper.unmap(*addr).await {
                warn!(pod = name, %addr, error = %e, "could not remove a redirect");
            }
        }
        pod.nodes
    }

    fn write_inetrc(&mut self) -> Result<(), UpError> {
        let hosts: Vec<(IpAddr, String)> = self
            .pods
            .values()
            .filter(|p| p.info.host.parse::<IpAddr>().is_err())
            .map(|p| (p.info.ip, p.info.host.clone()))
            .collect();
        if hosts.is_empty() {
            return Ok(());
        }
        let path = self.inetrc.clone().unwrap_or_else(inetrc_path);
        std::fs::write(&path, inetrc_text(&hosts)).map_err(|e| UpError::Inetrc(path.clone(), e))?;
        self.inetrc = Some(path);
        Ok(())
    }

    /// Brings one watched pod in line: bridged at its current IP when ready, unbridged when
    /// deleted.
    async fn reconcile(&mut self, pod: &Pod, deleted: bool, changes: &mut Vec<Change>) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if deleted {
            self.retry.remove(&name);
            let nodes = self.unbridge_pod(&name).await;
            if !nodes.is_empty() {
                changes.push(Change::PodRemoved(nodes));
            }
            return;
        }
        let Ok(info) = pod_info(pod, self.opts.node_host) else {
            // Not ready: keep what is bridged until the pod is deleted or gets a new IP.
            return;
        };
        let known = self.pods.get(&name).map(|p| p.info.ip);
        if known == Some(info.ip) {
            return;
        }
        if known.is_some() {
            self.unbridge_pod(&name).await;
        }
        self.try_bridge(info, changes).await;
    }

    async fn try_bridge(&mut self, info: PodInfo, changes: &mut Vec<Change>) {
        let name = info.name.clone();
        let came_back = self.seen.contains(&name);
        match self.bridge_pod(info.clone()).await {
            Ok(nodes) => {
                self.retry.remove(&name);
                changes.push(if came_back {
                    Change::PodChanged(nodes)
                } else {
                    Change::PodAdded(nodes)
                });
                if let Err(e) = self.write_inetrc() {
                    warn!(error = %e, "could not update the inetrc file");
                }
            }
            Err(e) => {
                if !self.retry.contains_key(&name) {
                    changes.push(Change::PodUnreachable {
                        pod: name.clone(),
                        reason: format!("{e}; trying again every second"),
                    });
                }
                self.retry.insert(name, info);
            }
        }
    }

    /// Keeps the bridge healed until cancelled: follows the target's pods (restarts with new
    /// IPs, new and removed replicas) and the helper (restarts), reporting each change.
    pub async fn run(&mut self, mut report: impl FnMut(Change)) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let config = match self.watch_selector().await {
            Ok(config) => config,
            Err(e) => {
                warn!(error = %e, "cannot watch the target's pods; the bridge will not follow restarts");
                std::future::pending::<()>().await;
                return;
            }
        };
        let mut pods = watcher(api, config).default_backoff().boxed();
        let mut tick = tokio::time::interval(RETRY_EVERY);
        loop {
            let mut changes = Vec::new();
            tokio::select! {
                event = pods.next() => match event {
                    Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                        self.reconcile(&pod, false, &mut changes).await;
                    }
                    Some(Ok(watcher::Event::Delete(pod))) => self.reconcile(&pod, true, &mut changes).await,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => debug!(error = %e, "the pod watch failed; retrying"),
                    None => return,
                },
                () = self.helper.ended() => {
                    report(Change::HelperLost);
                    let mut delay = Duration::from_millis(100);
                    while let Err(e) = self.helper.restore().await {
                        debug!(error = %e, "the helper is not back yet");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    changes.push(Change::HelperRestored);
                }
                Some(failed) = self.failures.1.recv() => {
                    // Only for pods still bridged: a connection to a pod that is gone is moot.
                    if self.pods.contains_key(&failed.pod) {
                        changes.push(Change::PodUnreachable {
                            pod: failed.pod,
                            reason: format!("a connection to port {} could not be forwarded: {}", failed.port, failed.reason),
                        });
                    }
                }
                _ = tick.tick(), if !self.retry.is_empty() => {
                    let pending: Vec<PodInfo> = self.retry.values().cloned().collect();
                    for info in pending {
                        self.try_bridge(info, &mut changes).await;
                    }
                }
            }
            for change in changes {
                report(change);
            }
        }
    }

    /// What to watch: the pod by name, or the workload's / the user's label selector.
    async fn watch_selector(&self) -> Result<watcher::Config, DiscoverError> {
        Ok(match &self.opts.target {
            Target::Pod(name) => {
                watcher::Config::default().fields(&format!("metadata.name={name}"))
            }
            target => {
                let selector = selector_of(&self.client, &self.namespace, target).await?;
                watcher::Config::default().labels(&selector)
            }
        })
    }
}

/// The inetrc text mapping DNS names to pod IPs, then falling back to the system resolver.
pub fn inetrc_text(hosts: &[(IpAddr, String)]) -> String {
    let mut text = String::new();
    for (ip, name) in hosts {
        let tuple = match ip {
            IpAddr::V4(v4) => v4.octets().map(|o| o.to_string()).join(","),
            IpAddr::V6(v6) => v6.segments().map(|s| s.to_string()).join(","),
        };
        text.push_str(&format!("{{host, {{{tuple}}}, [\"{name}\"]}}.\n"));
    }
    text.push_str("{lookup, [file, native]}.\n");
    text
}

fn inetrc_path() -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("erlbridge-{}.inetrc", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inetrc_maps_names_to_pod_ips() {
        let text = inetrc_text(&[
            (
                "10.244.1.8".parse().unwrap(),
                "app-0.app.default.svc.cluster.local".into(),
            ),
            (
                "fd00::8".parse().unwrap(),
                "app-1.app.default.svc.cluster.local".into(),
            ),
        ]);
        assert_eq!(
            text,
            "{host, {10,244,1,8}, [\"app-0.app.default.svc.cluster.local\"]}.\n\
             {host, {64768,0,0,0,0,0,0,8}, [\"app-1.app.default.svc.cluster.local\"]}.\n\
             {lookup, [file, native]}.\n"
        );
    }
}
