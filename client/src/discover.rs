//! From what the user typed to the pods to bridge: a TARGET in kubectl's forms (`app-0`,
//! `pod/app-0`, `statefulset/app`, `sts/app`, `deployment/app`, or a label selector) becomes
//! the parameters of one pod watch ([`watch_config`]); each watched pod becomes its facts
//! ([`pod_info`]: IP, epmd port, the host part its Erlang nodes use) or the reason it cannot
//! be bridged; the first complete snapshot says whether the target exists and has anything
//! ready ([`check_first`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::Api;
use kube::core::Selector;
use kube::runtime::watcher;

use crate::k8s::{ApiError, Kube};
pub use spec::Epmdless;

mod spec;

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

    /// kubectl's spellings: `app-0`, `pod/app-0`, `pods/app-0`, `po/app-0`,
    /// `statefulset/app`, `sts/app`, `statefulsets.apps/app`, `StatefulSet/app`,
    /// `statefulset.v1.apps/app`, and the same for deployments (`deploy`).
    fn from_str(text: &str) -> Result<Target, BadTarget> {
        let (kind, name) = text.split_once('/').unwrap_or(("pod", text));
        let lowered = kind.to_ascii_lowercase();
        let (resource, group) = lowered.split_once('.').unwrap_or((&lowered, ""));
        let core = matches!(group, "" | "v1");
        let apps = matches!(group, "" | "apps" | "v1.apps");
        let target = match resource {
            "pod" | "pods" | "po" if core => Target::Pod(name.to_owned()),
            "statefulset" | "statefulsets" | "sts" if apps => Target::StatefulSet(name.to_owned()),
            "deployment" | "deployments" | "deploy" if apps => Target::Deployment(name.to_owned()),
            _ => {
                return Err(BadTarget(format!(
                    "unsupported kind \"{kind}\" in target \"{text}\"; use POD, pod/NAME, \
                     statefulset/NAME (sts/NAME) or deployment/NAME, or -l SELECTOR"
                )));
            }
        };
        if !valid_name(name) || name.contains('/') {
            return Err(BadTarget(format!(
                "\"{name}\" is not a valid Kubernetes name (lowercase letters, digits, '-' and \
                 '.'), in target \"{text}\""
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

/// How the user's flags shape what erlbridge reads of a pod: `--node-host`, and for a node
/// that runs without epmd where the spec does not say, `--dist-port` and `--node-name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRules {
    /// Which host part node names use; `None`: what the pod's environment says.
    pub node_host: Option<NodeHost>,
    /// The node's distribution port, with no epmd in the pod.
    pub dist_port: Option<u16>,
    /// The node's name (its alive part) when the spec does not give it.
    pub node_name: Option<String>,
}

/// The target's pods as the watch shows them at one moment, by name: each ready to bridge,
/// or why not.
pub type Snapshot = BTreeMap<String, Result<PodInfo, String>>;

/// A pod to bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its uid: a pod re-created under the same name has a new one.
    pub uid: String,
    /// How often its Erlang container restarted: a restarted node may listen on another
    /// distribution port, so the pod's epmd is asked again.
    pub restarts: i32,
    /// Its IP.
    pub ip: IpAddr,
    /// Where its epmd listens.
    pub epmd_port: u16,
    /// The host part of its nodes' names: the IP, or a DNS name.
    pub host: String,
    /// Its Erlang container's environment (plain values only), for `--cookie-from env`.
    pub env: BTreeMap<String, String>,
    /// Where its node listens without epmd, if the spec or `--dist-port` says.
    pub epmdless: Option<Epmdless>,
    /// Its node's alive name, from `--node-name`, RELEASE_NODE or `-name` in its flags.
    pub alive: Option<String>,
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
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The workload's selector cannot be used.
    #[error("{0}")]
    Selector(String),
}

/// The error for a failed call about `what`: not found, refused, or failed.
pub fn api_error(e: ApiError, what: &str) -> DiscoverError {
    match e.code() {
        Some(404) => DiscoverError::NotFound(format!("{what} not found")),
        Some(code @ (401 | 403)) => DiscoverError::Forbidden(format!(
            "{} ({code}): check your kubeconfig's credentials and that your role may get, list \
             and watch pods and create pods/portforward",
            e.message().unwrap_or("forbidden")
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
pub fn pod_info(pod: &Pod, rules: &NodeRules) -> Result<PodInfo, String> {
    let node_host = rules.node_host;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
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
    let container = spec::erlang_container(containers);

    let mut vars = BTreeMap::from([
        ("POD_IP".to_owned(), ip.to_string()),
        ("POD_NAME".to_owned(), name.clone()),
        ("POD_NAMESPACE".to_owned(), namespace.clone()),
    ]);
    let env: BTreeMap<String, String> = container
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    vars.extend(env.clone());
    let lookup = |var: &str| env.get(var).map(|v| expand(v, &vars));
    let epmd_port = container
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("epmd"))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .or_else(|| lookup("ERL_EPMD_PORT")?.parse().ok())
        .unwrap_or(EPMD_PORT);
    let restarts = container
        .and_then(|c| {
            status?
                .container_statuses
                .as_ref()?
                .iter()
                .find(|s| s.name == c.name)
        })
        .map_or(0, |s| s.restart_count);
    let words = container.map_or_else(Vec::new, |c| spec::erl_words(c, lookup));
    let epmdless = match rules.dist_port {
        Some(port) => Some(Epmdless {
            port,
            from: format!("--dist-port {port}"),
            forced: true,
        }),
        None => spec::epmdless(&words, lookup),
    };
    let release_node = lookup("RELEASE_NODE")
        .or_else(|| spec::flag_value(&words, &["-name", "--name"]).map(expand_words(&vars)));
    let alive = rules.node_name.clone().or_else(|| {
        release_node
            .as_deref()
            .map(|n| n.split_once('@').map_or(n, |(alive, _)| alive).to_owned())
    });
    let named_by_ip = release_node
        .as_deref()
        .and_then(|n| n.split_once('@'))
        .is_some_and(|(_, host)| host.parse::<IpAddr>().is_ok());
    let release_host = release_node
        .as_deref()
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
        Some(NodeHost::Dns) if named_by_ip => {
            return Err(format!(
                "pod {name}'s node is named by its IP ({}), so --node-host dns would name a node \
                 that does not exist; leave --node-host out",
                release_node.unwrap_or_default()
            ));
        }
        Some(NodeHost::Dns) => release_host.or_else(dns_default).ok_or_else(|| {
            format!("pod {name} has no DNS name to use (no RELEASE_NODE with a DNS host, no hostname and subdomain); use --node-host ip")
        })?,
        None => release_host.unwrap_or_else(|| ip.to_string()),
    };
    Ok(PodInfo {
        name,
        namespace,
        uid,
        restarts,
        ip,
        epmd_port,
        host,
        env,
        epmdless,
        alive,
    })
}

/// `$(VAR)` references expanded in a word of the command line.
fn expand_words(vars: &BTreeMap<String, String>) -> impl Fn(&str) -> String + '_ {
    move |word| expand(word, vars)
}

/// What to watch for `target`: a pod by name, or the pods of a workload's or the user's
/// label selector.
pub async fn watch_config(kube: &Kube, target: &Target) -> Result<watcher::Config, DiscoverError> {
    let config = watcher::Config::default();
    let namespace = &kube.namespace;
    Ok(match target {
        Target::Pod(name) => config.fields(&format!("metadata.name={name}")),
        Target::StatefulSet(name) => {
            let api: Api<StatefulSet> = Api::namespaced(kube.client.clone(), namespace);
            let sts = kube.call(api.get(name)).await.map_err(|e| {
                api_error(e, &format!("statefulset {name} in namespace {namespace}"))
            })?;
            let selector = sts.spec.map(|s| s.selector).unwrap_or_default();
            config.labels_from(&workload_selector(target, selector)?)
        }
        Target::Deployment(name) => {
            let api: Api<Deployment> = Api::namespaced(kube.client.clone(), namespace);
            let d = kube.call(api.get(name)).await.map_err(|e| {
                api_error(e, &format!("deployment {name} in namespace {namespace}"))
            })?;
            let selector = d.spec.map(|s| s.selector).unwrap_or_default();
            config.labels_from(&workload_selector(target, selector)?)
        }
        Target::Selector(selector) => config.labels(selector),
    })
}

/// A workload's selector, `matchLabels` and `matchExpressions` both. One that selects
/// everything is refused: it would bridge every pod of the namespace.
pub fn workload_selector(
    target: &Target,
    selector: LabelSelector,
) -> Result<Selector, DiscoverError> {
    let selector = Selector::try_from(selector).map_err(|e| {
        DiscoverError::Selector(format!(
            "{target} has a selector erlbridge cannot read: {}",
            e.0
        ))
    })?;
    if selector.selects_all() {
        return Err(DiscoverError::Selector(format!(
            "{target} has an empty selector, which would select every pod of the namespace; \
             name the pods with -l SELECTOR instead"
        )));
    }
    Ok(selector)
}

/// Why each pod of `snapshot` that is not ready to bridge is not.
pub fn not_ready(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .values()
        .filter_map(|seen| seen.as_ref().err().cloned())
        .collect()
}

/// Whether the first complete snapshot of `target`'s pods has something to bridge: the pod
/// exists (and is ready), or the workload has pods and at least one is ready. Returns why
/// each pod that is not ready is left out.
pub fn check_first(
    target: &Target,
    namespace: &str,
    snapshot: &Snapshot,
) -> Result<Vec<String>, DiscoverError> {
    if snapshot.is_empty() {
        return Err(DiscoverError::NotFound(match target {
            Target::Pod(name) => format!("pod {name} in namespace {namespace} not found"),
            Target::Selector(labels) => {
                format!("no pod in namespace {namespace} has the labels {labels}")
            }
            target => format!("{target} has no pods in namespace {namespace}"),
        }));
    }
    let skipped = not_ready(snapshot);
    if skipped.len() == snapshot.len() {
        return Err(DiscoverError::NotReady(match target {
            Target::Pod(_) => skipped.join("; "),
            target => format!("no pod of {target} is ready: {}", skipped.join("; ")),
        }));
    }
    Ok(skipped)
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
            ("Pod/app-0", Target::Pod("app-0".into())),
            ("pods.v1/app-0", Target::Pod("app-0".into())),
            ("statefulset/app", Target::StatefulSet("app".into())),
            ("sts/app", Target::StatefulSet("app".into())),
            ("StatefulSet/app", Target::StatefulSet("app".into())),
            ("statefulset.apps/app", Target::StatefulSet("app".into())),
            (
                "statefulsets.v1.apps/app",
                Target::StatefulSet("app".into()),
            ),
            ("deployment/web", Target::Deployment("web".into())),
            ("deploy/web", Target::Deployment("web".into())),
            ("Deployment/web", Target::Deployment("web".into())),
            ("deployment.apps/web", Target::Deployment("web".into())),
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
            "statefulset.batch/app",
            "pod.apps/app-0",
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
            "metadata": {"name": "app-0", "namespace": "default", "uid": "uid-0"},
            "spec": {"hostname": "app-0", "subdomain": "app", "containers": [{"name": "app",
                "ports": [{"name": "epmd", "containerPort": 4370}],
                "env": [{"name": "RELEASE_NODE", "value": "app@$(POD_IP)"}, {"name": "RELEASE_COOKIE", "value": "c"}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.8",
                "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let dns = NodeRules {
            node_host: Some(NodeHost::Dns),
            ..NodeRules::default()
        };
        let ip_rules = NodeRules {
            node_host: Some(NodeHost::Ip),
            ..NodeRules::default()
        };
        let info = pod_info(&pod(base.clone()), &NodeRules::default()).expect("ready");
        assert_eq!(info.uid, "uid-0");
        assert_eq!(
            (info.ip.to_string(), info.epmd_port, info.host.as_str()),
            ("10.244.1.8".into(), 4370, "10.244.1.8")
        );
        assert_eq!(
            info.env.get("RELEASE_COOKIE").map(String::as_str),
            Some("c")
        );
        let by_ip = pod_info(&pod(base.clone()), &dns).expect_err("named by IP");
        assert!(
            by_ip.contains("named by its IP (app@10.244.1.8)"),
            "{by_ip}"
        );
        let mut unnamed = base.clone();
        unnamed["spec"]["containers"][0]["env"][0]["value"] = "".into();
        unnamed["spec"]["containers"][0]["env"][0]["name"] = "OTHER".into();
        let dns = pod_info(&pod(unnamed), &dns).expect("dns");
        assert_eq!(dns.host, "app-0.app.default.svc.cluster.local");

        let mut named = base.clone();
        named["spec"]["containers"][0]["env"][0]["value"] =
            "app@$(POD_NAME).app.$(POD_NAMESPACE).svc.cluster.local".into();
        assert_eq!(
            pod_info(&pod(named.clone()), &NodeRules::default())
                .expect("named")
                .host,
            "app-0.app.default.svc.cluster.local"
        );
        assert_eq!(
            pod_info(&pod(named), &ip_rules).expect("ip").host,
            "10.244.1.8"
        );

        let mut pending = base.clone();
        pending["status"]["phase"] = "Pending".into();
        assert!(
            pod_info(&pod(pending), &NodeRules::default())
                .expect_err("pending")
                .contains("Pending")
        );
        let mut unready = base;
        unready["status"]["conditions"][0]["status"] = "False".into();
        assert!(
            pod_info(&pod(unready), &NodeRules::default())
                .expect_err("unready")
                .contains("not Ready")
        );
    }

    #[test]
    fn workload_selectors_read_expressions_and_refuse_to_select_everything() {
        let sts = Target::StatefulSet("app".into());
        let selector: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"team": "a"},
            "matchExpressions": [
                {"key": "app", "operator": "In", "values": ["app"]},
                {"key": "tier", "operator": "Exists"},
            ],
        }))
        .expect("selector");
        let selector = workload_selector(&sts, selector).expect("readable");
        assert_eq!(selector.to_string(), "team=a,app in (app),tier");
        for (bad, why) in [
            (serde_json::json!({}), "empty selector"),
            (
                serde_json::json!({"matchExpressions": [{"key": "app", "operator": "Near"}]}),
                "cannot read",
            ),
        ] {
            let bad: LabelSelector = serde_json::from_value(bad).expect("selector");
            let e = workload_selector(&sts, bad).expect_err("refused");
            assert!(e.to_string().contains(why), "{e}");
        }
    }

    #[test]
    fn the_first_snapshot_must_have_something_ready() {
        let ready = |name: &str| {
            pod_info(
                &pod(serde_json::json!({
                    "metadata": {"name": name, "uid": name},
                    "status": {"phase": "Running", "podIP": "10.244.1.8",
                        "conditions": [{"type": "Ready", "status": "True"}]}
                })),
                &NodeRules::default(),
            )
        };
        let not_ready =
            |name: &str| Err::<PodInfo, _>(format!("pod {name} is Pending, not Running"));
        let sts = Target::StatefulSet("app".into());
        let pod0 = Target::Pod("app-0".into());
        let snap = |pods: Vec<(&str, Result<PodInfo, String>)>| -> Snapshot {
            pods.into_iter().map(|(n, p)| (n.to_owned(), p)).collect()
        };
        assert!(matches!(
            check_first(&pod0, "default", &snap(vec![])),
            Err(DiscoverError::NotFound(m)) if m == "pod app-0 in namespace default not found"
        ));
        assert!(matches!(
            check_first(&sts, "prod", &snap(vec![])),
            Err(DiscoverError::NotFound(m)) if m == "statefulset/app has no pods in namespace prod"
        ));
        assert!(matches!(
            check_first(&pod0, "default", &snap(vec![("app-0", not_ready("app-0"))])),
            Err(DiscoverError::NotReady(m)) if m == "pod app-0 is Pending, not Running"
        ));
        assert!(matches!(
            check_first(&sts, "default", &snap(vec![("app-1", not_ready("app-1"))])),
            Err(DiscoverError::NotReady(m)) if m.starts_with("no pod of statefulset/app is ready")
        ));
        assert_eq!(
            check_first(
                &sts,
                "default",
                &snap(vec![
                    ("app-0", ready("app-0")),
                    ("app-1", not_ready("app-1"))
                ])
            )
            .expect("one ready"),
            vec!["pod app-1 is Pending, not Running".to_owned()]
        );
    }
}
