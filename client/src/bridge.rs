//! `erlbridge up`: discover the target's pods, ask each pod's epmd (through a port-forward)
//! which nodes run there and on which distribution ports, open a local forward for every
//! epmd and distribution port, and ask the helper to redirect this user's connections to
//! `podIP:port` onto them. Node names are kept exactly (the distribution handshake checks
//! them); only addresses are redirected. DNS-named nodes get an ERL_INETRC file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tracing::info;

use crate::discover::{DiscoverError, NodeHost, PodInfo, Target, discover};
use crate::epmd;
use crate::forward::{self, Forward, ForwardError};
use crate::helper::{HelperError, Session};
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

/// A live bridge. Dropping it closes the forwards and the helper session, whose end removes
/// every rule it added.
pub struct Bridge {
    /// The bridged nodes.
    pub nodes: Vec<BridgedNode>,
    /// Pods of the target that were not ready, and why.
    pub skipped: Vec<String>,
    /// The ERL_INETRC file for DNS-named nodes, if any.
    pub inetrc: Option<PathBuf>,
    /// A cookie found in the pods' environment (RELEASE_COOKIE), if any.
    pub env_cookie: Option<String>,
    _forwards: Vec<Forward>,
    _session: Session,
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
        let (mut stream, errors) = forward::open(pods, &pod.name, pod.epmd_port).await?;
        tokio::select! {
            names = epmd::names(&mut stream) => match names {
                Ok(Ok(names)) => Ok(names),
                Ok(Err(malformed)) => Err(no_epmd(malformed.to_string())),
                Err(e) => Err(no_epmd(e.to_string())),
            },
            Some(message) = errors => Err(no_epmd(message)),
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
    let mut session = Session::open(
        &opts.helper_socket,
        &format!("erlbridge up {}", opts.target),
    )
    .await?;

    let mut nodes = Vec::new();
    let mut forwards = Vec::new();
    let mut hosts = Vec::new();
    for pod in &pods {
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
        let registered = registered(&api, pod).await?;
        if registered.is_empty() {
            return Err(UpError::NoEpmd {
                pod: pod.name.clone(),
                port: pod.epmd_port,
                reason: "epmd answers, but no Erlang node is registered with it".to_owned(),
            });
        }
        let epmd_forward = forward::listen(api.clone(), pod.name.clone(), pod.epmd_port).await?;
        session
            .map(
                SocketAddr::new(pod.ip, pod.epmd_port),
                epmd_forward.local.port(),
            )
            .await?;
        forwards.push(epmd_forward);
        for node in registered {
            let dist_forward = forward::listen(api.clone(), pod.name.clone(), node.port).await?;
            session
                .map(
                    SocketAddr::new(pod.ip, node.port),
                    dist_forward.local.port(),
                )
                .await?;
            forwards.push(dist_forward);
            nodes.push(BridgedNode {
                node: format!("{}@{}", node.name, pod.host),
                pod: pod.name.clone(),
                namespace: pod.namespace.clone(),
                ip: pod.ip,
                epmd_port: pod.epmd_port,
                dist_port: node.port,
            });
        }
        if pod.host.parse::<IpAddr>().is_err() {
            hosts.push((pod.ip, pod.host.clone()));
        }
    }
    let inetrc = if hosts.is_empty() {
        None
    } else {
        Some(write_inetrc(&hosts)?)
    };
    Ok(Bridge {
        nodes,
        skipped,
        inetrc,
        env_cookie: pods.iter().find_map(|p| p.env_cookie.clone()),
        _forwards: forwards,
        _session: session,
    })
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

fn write_inetrc(hosts: &[(IpAddr, String)]) -> Result<PathBuf, UpError> {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("erlbridge-{}.inetrc", std::process::id()));
    std::fs::write(&path, inetrc_text(hosts)).map_err(|e| UpError::Inetrc(path.clone(), e))?;
    Ok(path)
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
