//! From what the user typed to the pods to bridge: a TARGET in kubectl's forms (`app-0`,
//! `pod/app-0`, `statefulset/app`, `sts/app`, `deployment/app`, or a label selector), resolved
//! through the API to Running and Ready pods with their IPs, epmd ports, and the host part
//! their Erlang nodes use.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// The default epmd port, used when a pod names no `epmd` container port.
pub const EPMD_PORT: u16 = 4369;

/// What to bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One pod.
    Pod(String),
    /// The pods of a StatefulSet.
    StatefulSet(String),
    /// The pods of a Deployment.
    Deployment(String),
    /// The pods a label selector picks.
    Selector(String),
}

/// A TARGET that is not one of the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadTarget(String);

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

impl FromStr for Target {
    type Err = BadTarget;

    fn from_str(text: &str) -> Result<Target, BadTarget> {
        let (kind, name) = text.split_once('/').unwrap_or(("pod", text));
        let target = match kind {
            "pod" | "pods" | "po" => Target::Pod(name.to_owned()),
            "statefulset" | "statefulsets" | "sts" => Target::StatefulSet(name.to_owned()),
            "deployment" | "deployments" | "deploy" => Target::Deployment(name.to_owned()),
            other => {
                return Err(BadTarget(format!(
                    "unsupported kind {other:?} in target {text:?}; use POD, pod/NAME, \
                     statefulset/NAME (sts/NAME) or deployment/NAME, or -l SELECTOR"
                )));
            }
        };
        if !valid_name(name) || name.contains('/') {
            return Err(BadTarget(format!(
                "{name:?} is not a valid Kubernetes name (lowercase letters, digits, '-' and '.'), \
                 in target {text:?}"
            )));
        }
        Ok(target)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pod(n) => write!(f, "pod/{n}"),
            Target::StatefulSet(n) => write!(f, "statefulset/{n}"),
            Target::Deployment(n) => write!(f, "deployment/{n}"),
            Target::Selector(s) => write!(f, "pods with labels {s}"),
        }
    }
}

/// Which host part the nodes' names use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeHost {
    /// The pod IP (`app@10.244.1.8`).
    Ip,
    /// The pod's DNS name (`app@app-0.app.default.svc.cluster.local`).
    Dns,
}

/// A pod to bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its IP.
    pub ip: IpAddr,
    /// Where its epmd listens.
    pub epmd_port: u16,
    /// The host part of its nodes' names: the IP, or a DNS name.
    pub host: String,
    /// Its container environment (plain values only), for `--cookie-from env`.
    pub env: BTreeMap<String, String>,
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// The target does not exist or selects nothing.
    #[error("{0}")]
    NotFound(String),
    /// The target exists but has nothing ready to bridge.
    #[error("{0}")]
    NotReady(String),
    /// The API refused (401/403).
    #[error("the Kubernetes API refused: {0}")]
    Forbidden(String),
    /// The API could not be reached or answered with an error.
    #[error("cannot reach the Kubernetes API")]
    Api(#[source] kube::Error),
}

fn api_error(e: kube::Error, what: &str) -> DiscoverError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => {
            DiscoverError::NotFound(format!("{what} not found: {}", s.message))
        }
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => DiscoverError::Forbidden(format!(
            "{} ({}): check your kubeconfig's credentials and that your role may get/list pods \
             and create pods/portforward",
            s.message, s.code
        )),
        _ => DiscoverError::Api(e),
    }
}

/// Expands `$(VAR)` references from the container's environment and the pod's own fields.
fn expand(value: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = value.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// A pod's facts, or why it cannot be bridged.
pub fn pod_info(pod: &Pod, node_host: Option<NodeHost>) -> Result<PodInfo, String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let status = pod.status.as_ref();
    let phase = status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Unknown".to_owned());
    if phase != "Running" {
        return Err(format!("pod {name} is {phase}, not Running"));
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if !ready {
        return Err(format!("pod {name} is Running but not Ready"));
    }
    let ip: IpAddr = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| format!("pod {name} has no IP yet"))?;
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let epmd_port = containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("epmd"))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(EPMD_PORT);

    let mut vars = BTreeMap::from([
        ("POD_IP".to_owned(), ip.to_string()),
        ("POD_NAME".to_owned(), name.clone()),
        ("POD_NAMESPACE".to_owned(), namespace.clone()),
    ]);
    let env: BTreeMap<String, String> = containers
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    vars.extend(env.clone());
    let release_host = env
        .get("RELEASE_NODE")
        .map(|n| expand(n, &vars))
        .and_then(|n| n.split_once('@').map(|(_, host)| host.to_owned()))
        .filter(|host| host.parse::<IpAddr>().is_err());
    let dns_default = || {
        let hostname = spec.and_then(|s| s.hostname.clone())?;
        let subdomain = spec.and_then(|s| s.subdomain.clone())?;
        Some(format!(
            "{hostname}.{subdomain}.{namespace}.svc.cluster.local"
        ))
    };
    let host = match node_host {
        Some(NodeHost::Ip) => ip.to_string(),
        Some(NodeHost::Dns) => release_host.or_else(dns_default).ok_or_else(|| {
            format!("pod {name} has no DNS name to use (no RELEASE_NODE with a DNS host, no hostname and subdomain); use --node-host ip")
        })?,
        None => release_host.unwrap_or_else(|| ip.to_string()),
    };
    Ok(PodInfo {
        name,
        namespace,
        ip,
        epmd_port,
        host,
        env,
    })
}

/// The target's pods that can be bridged. Pods of a workload that are not ready are left out
/// (and named in `skipped`); a single pod that is not ready is an error.
pub async fn discover(
    client: &kube::Client,
    namespace: &str,
    target: &Target,
    node_host: Option<NodeHost>,
) -> Result<(Vec<PodInfo>, Vec<String>), DiscoverError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    if let Target::Pod(name) = target {
        let pod = pods
            .get(name)
            .await
            .map_err(|e| api_error(e, &format!("pod {name} in namespace {namespace}")))?;
        return pod_info(&pod, node_host)
            .map(|p| (vec![p], vec![]))
            .map_err(DiscoverError::NotReady);
    }
    let selector = selector_of(client, namespace, target).await?;
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| api_error(e, &format!("pods with labels {selector}")))?;
    if list.items.is_empty() {
        return Err(DiscoverError::NotFound(format!(
            "{target} has no pods in namespace {namespace}"
        )));
    }
    let (mut ready, mut skipped) = (Vec::new(), Vec::new());
    for pod in &list.items {
        match pod_info(pod, node_host) {
            Ok(info) => ready.push(info),
            Err(why) => skipped.push(why),
        }
    }
    if ready.is_empty() {
        return Err(DiscoverError::NotReady(format!(
            "no pod of {target} is ready: {}",
            skipped.join("; ")
        )));
    }
    Ok((ready, skipped))
}

/// The label selector of a target: a workload's `matchLabels`, or the user's selector. A pod
/// target has none (it is watched by name), so it gets its StatefulSet pod-name label.
pub async fn selector_of(
    client: &kube::Client,
    namespace: &str,
    target: &Target,
) -> Result<String, DiscoverError> {
    Ok(match target {
        Target::Pod(name) => format!("statefulset.kubernetes.io/pod-name={name}"),
        Target::StatefulSet(name) => {
            let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
            let sts = api.get(name).await.map_err(|e| {
                api_error(e, &format!("statefulset {name} in namespace {namespace}"))
            })?;
            match_labels(sts.spec.and_then(|s| s.selector.match_labels))
        }
        Target::Deployment(name) => {
            let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
            let d = api.get(name).await.map_err(|e| {
                api_error(e, &format!("deployment {name} in namespace {namespace}"))
            })?;
            match_labels(d.spec.and_then(|s| s.selector.match_labels))
        }
        Target::Selector(selector) => selector.clone(),
    })
}

fn match_labels(labels: Option<BTreeMap<String, String>>) -> String {
    labels
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_like_kubectls() {
        for (text, want) in [
            ("app-0", Target::Pod("app-0".into())),
            ("pod/app-0", Target::Pod("app-0".into())),
            ("po/app-0", Target::Pod("app-0".into())),
            ("statefulset/app", Target::StatefulSet("app".into())),
            ("sts/app", Target::StatefulSet("app".into())),
            ("deployment/web", Target::Deployment("web".into())),
            ("deploy/web", Target::Deployment("web".into())),
        ] {
            assert_eq!(text.parse::<Target>(), Ok(want), "{text}");
        }
        for bad in [
            "",
            "pod/",
            "service/app",
            "App-0",
            "app_0",
            "sts/a/b",
            "-app",
            "daemonset/x",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?} must be refused");
        }
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    #[test]
    fn pods_yield_their_ip_epmd_port_and_node_host() {
        let base = serde_json::json!({
            "metadata": {"name": "app-0", "namespace": "default"},
            "spec": {"hostname": "app-0", "subdomain": "app", "containers": [{"name": "app",
                "ports": [{"name": "epmd", "containerPort": 4370}],
                "env": [{"name": "RELEASE_NODE", "value": "app@$(POD_IP)"}, {"name": "RELEASE_COOKIE", "value": "c"}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.8",
                "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let info = pod_info(&pod(base.clone()), None).expect("ready");
        assert_eq!(
            (info.ip.to_string(), info.epmd_port, info.host.as_str()),
            ("10.244.1.8".into(), 4370, "10.244.1.8")
        );
        assert_eq!(
            info.env.get("RELEASE_COOKIE").map(String::as_str),
            Some("c")
        );
        let dns = pod_info(&pod(base.clone()), Some(NodeHost::Dns)).expect("dns");
        assert_eq!(dns.host, "app-0.app.default.svc.cluster.local");

        let mut named = base.clone();
        named["spec"]["containers"][0]["env"][0]["value"] =
            "app@$(POD_NAME).app.$(POD_NAMESPACE).svc.cluster.local".into();
        assert_eq!(
            pod_info(&pod(named.clone()), None).expect("named").host,
            "app-0.app.default.svc.cluster.local"
        );
        assert_eq!(
            pod_info(&pod(named), Some(NodeHost::Ip)).expect("ip").host,
            "10.244.1.8"
        );

        let mut pending = base.clone();
        pending["status"]["phase"] = "Pending".into();
        assert!(
            pod_info(&pod(pending), None)
                .expect_err("pending")
                .contains("Pending")
        );
        let mut unready = base;
        unready["status"]["conditions"][0]["status"] = "False".into();
        assert!(
            pod_info(&pod(unready), None)
                .expect_err("unready")
                .contains("not Ready")
        );
    }
}
