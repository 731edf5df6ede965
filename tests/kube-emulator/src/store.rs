//! What the emulated cluster holds: pods, workloads and secrets, each change stamped with a
//! new resource version and kept as a pod event, so a watch can start from any version seen.
//! Objects are turned into real Kubernetes JSON (k8s-openapi types) when served.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStatus, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ContainerStatus, EnvVar, Pod, PodCondition, PodIP, PodSpec,
    PodStatus, PodTemplateSpec, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::{ByteString, jiff::Timestamp};
use serde::Deserialize;

/// A pod as the test bed describes it. Its Erlang container is named [`PodDesc::container`]
/// and has the top-level ports, environment, command and args; [`PodDesc::sidecars`] come
/// before it in the pod spec.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodDesc {
    /// Its name.
    pub name: String,
    /// Its namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Container ports, named or not.
    #[serde(default)]
    pub ports: Vec<PortDesc>,
    /// The container's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its IP, once it has one (`status.podIP`, the first of `status.podIPs`).
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// A dual-stack pod's address of the other family (the second of `status.podIPs`).
    #[serde(default)]
    pub second_ip: Option<IpAddr>,
    /// Which address families the pod gets (the test bed allocates by it).
    #[serde(default)]
    pub ip_family: IpFamily,
    /// The Erlang container's name (`app` when not given).
    #[serde(default)]
    pub container: Option<String>,
    /// The Erlang container's `command` (its image's entrypoint when empty).
    #[serde(default)]
    pub command: Vec<String>,
    /// The Erlang container's `args`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Other containers, listed before the Erlang one.
    #[serde(default)]
    pub sidecars: Vec<ContainerDesc>,
    /// The network namespace port-forwards dial into (`/run/netns/NAME`).
    #[serde(default)]
    pub netns: Option<String>,
    /// `Running` or `Pending`.
    #[serde(default = "running")]
    pub phase: String,
    /// Whether its Ready condition is true.
    #[serde(default = "yes")]
    pub ready: bool,
    /// Container restarts so far.
    #[serde(default)]
    pub restarts: i32,
    /// The owning workload, if any: (kind, name).
    #[serde(default)]
    pub owner: Option<(String, String)>,
    /// `spec.hostname`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// `spec.subdomain` (a StatefulSet's service name).
    #[serde(default)]
    pub subdomain: Option<String>,
}

impl Default for PodDesc {
    /// A running, ready pod named `pod` in `default`, as the manifest's defaults make it.
    fn default() -> PodDesc {
        PodDesc {
            name: "pod".to_owned(),
            namespace: default_namespace(),
            labels: BTreeMap::new(),
            ports: Vec::new(),
            env: BTreeMap::new(),
            ip: None,
            second_ip: None,
            ip_family: IpFamily::default(),
            container: None,
            command: Vec::new(),
            args: Vec::new(),
            sidecars: Vec::new(),
            netns: None,
            phase: running(),
            ready: true,
            restarts: 0,
            owner: None,
            hostname: None,
            subdomain: None,
        }
    }
}

impl PodDesc {
    /// Its IPs, `status.podIPs` order.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.ip.into_iter().chain(self.second_ip).collect()
    }

    /// The Erlang container's name.
    pub fn container_name(&self) -> &str {
        self.container.as_deref().unwrap_or("app")
    }
}

/// A pod's address families.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum IpFamily {
    /// One IPv4 address.
    #[default]
    IPv4,
    /// One IPv6 address.
    IPv6,
    /// An IPv4 address first, then an IPv6 one.
    DualStack,
}

/// A container other than the Erlang one (a sidecar).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerDesc {
    /// Its name.
    pub name: String,
    /// Its image.
    #[serde(default = "sidecar_image")]
    pub image: String,
    /// Its ports.
    #[serde(default)]
    pub ports: Vec<PortDesc>,
    /// Its environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its `command`.
    #[serde(default)]
    pub command: Vec<String>,
    /// Its `args`.
    #[serde(default)]
    pub args: Vec<String>,
}

fn sidecar_image() -> String {
    "busybox:1.36".to_owned()
}

/// A container port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortDesc {
    /// Its name (`epmd`, ...), if any.
    #[serde(default)]
    pub name: Option<String>,
    /// The port.
    pub port: u16,
}

/// StatefulSet or Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum WorkloadKind {
    /// `apps/v1 StatefulSet`.
    StatefulSet,
    /// `apps/v1 Deployment`.
    Deployment,
}

/// A workload: its selector and replica count. Its pods are separate [`PodDesc`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadDesc {
    /// StatefulSet or Deployment.
    pub kind: WorkloadKind,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `spec.selector.matchLabels` (also the template's labels).
    pub selector: BTreeMap<String, String>,
    /// `spec.selector.matchExpressions`; when there are any, the selector has no `matchLabels`.
    pub match_expressions: Vec<SelectorExpression>,
    /// `spec.serviceName` for StatefulSets.
    pub service_name: Option<String>,
}

/// One `matchExpressions` requirement of a workload's selector.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorExpression {
    /// The label.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// The values, for `In` and `NotIn`.
    #[serde(default)]
    pub values: Vec<String>,
}

impl WorkloadDesc {
    /// `spec.selector`.
    fn label_selector(&self) -> LabelSelector {
        if self.match_expressions.is_empty() {
            return LabelSelector {
                match_labels: Some(self.selector.clone()),
                ..LabelSelector::default()
            };
        }
        LabelSelector {
            match_expressions: Some(
                self.match_expressions
                    .iter()
                    .map(|e| LabelSelectorRequirement {
                        key: e.key.clone(),
                        operator: e.operator.clone(),
                        values: (!e.values.is_empty()).then(|| e.values.clone()),
                    })
                    .collect(),
            ),
            ..LabelSelector::default()
        }
    }
}

/// A secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretDesc {
    /// Its name.
    pub name: String,
    /// Its namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Its data, in clear (served base64-encoded, as the API does).
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

fn now() -> Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Timestamp::from_second(i64::try_from(secs).unwrap_or(0)).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn default_namespace() -> String {
    "default".to_owned()
}
fn running() -> String {
    "Running".to_owned()
}
fn yes() -> bool {
    true
}

/// A pod change, as a watch reports it.
#[derive(Debug, Clone)]
pub struct PodEvent {
    /// The resource version of the change.
    pub rv: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The pod as described when the change happened (for watch filters).
    pub desc: PodDesc,
    /// The pod after the change (before, for DELETED).
    pub pod: Pod,
}

#[derive(Debug)]
struct StoredPod {
    desc: PodDesc,
    uid: String,
    rv: u64,
    created: Timestamp,
}

/// The cluster's objects.
#[derive(Debug, Default)]
pub struct Store {
    rv: u64,
    pods: BTreeMap<(String, String), StoredPod>,
    workloads: BTreeMap<(WorkloadKindKey, String, String), (WorkloadDesc, u64)>,
    secrets: BTreeMap<(String, String), (SecretDesc, u64)>,
    events: Vec<PodEvent>,
    /// The history before this version is gone.
    compacted: u64,
}

type WorkloadKindKey = u8;

fn kind_key(kind: WorkloadKind) -> WorkloadKindKey {
    match kind {
        WorkloadKind::StatefulSet => 0,
        WorkloadKind::Deployment => 1,
    }
}

impl Store {
    /// The latest resource version.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Creates or replaces a pod; returns its event.
    pub fn apply_pod(&mut self, desc: PodDesc) -> PodEvent {
        let rv = self.bump();
        let key = (desc.namespace.clone(), desc.name.clone());
        let kind = if self.pods.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let (uid, created) = self
            .pods
            .get(&key)
            .map(|p| (p.uid.clone(), p.created))
            .unwrap_or_else(|| (format!("00000000-0000-4000-8000-{rv:012}"), now()));
        let stored = StoredPod {
            desc,
            uid,
            rv,
            created,
        };
        let event = PodEvent {
            rv,
            kind,
            desc: stored.desc.clone(),
            pod: pod_json(&stored),
        };
        self.pods.insert(key, stored);
        self.events.push(event.clone());
        event
    }

    /// Deletes a pod; returns its event, or `None` when there was no such pod.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> Option<PodEvent> {
        let mut stored = self.pods.remove(&(namespace.to_owned(), name.to_owned()))?;
        stored.rv = self.bump();
        let event = PodEvent {
            rv: stored.rv,
            kind: "DELETED",
            desc: stored.desc.clone(),
            pod: pod_json(&stored),
        };
        self.events.push(event.clone());
        Some(event)
    }

    /// Deletes a pod without a trace in the history, as if the deletion fell into a compacted
    /// part of it: no event is kept or returned, and the history up to now is dropped, so a
    /// watch from an older version is told it is too old. False when there was no such pod.
    pub fn delete_pod_silently(&mut self, namespace: &str, name: &str) -> bool {
        if self
            .pods
            .remove(&(namespace.to_owned(), name.to_owned()))
            .is_none()
        {
            return false;
        }
        self.compacted = self.bump();
        self.events.clear();
        true
    }

    /// The oldest resource version a watch may start from (0: the whole history is kept).
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// The description of a pod.
    pub fn pod_desc(&self, namespace: &str, name: &str) -> Option<&PodDesc> {
        self.pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|p| &p.desc)
    }

    /// A pod as JSON.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(pod_json)
    }

    /// Pods of `namespace` (every namespace when `None`), in name order.
    pub fn pods(&self, namespace: Option<&str>) -> Vec<(PodDesc, Pod)> {
        self.pods
            .values()
            .filter(|p| namespace.is_none_or(|ns| p.desc.namespace == ns))
            .map(|p| (p.desc.clone(), pod_json(p)))
            .collect()
    }

    /// Pod events after resource version `rv`, oldest first.
    pub fn events_since(&self, rv: u64) -> Vec<PodEvent> {
        self.events.iter().filter(|e| e.rv > rv).cloned().collect()
    }

    /// Creates or replaces a workload.
    pub fn apply_workload(&mut self, desc: WorkloadDesc) {
        let rv = self.bump();
        let key = (
            kind_key(desc.kind),
            desc.namespace.clone(),
            desc.name.clone(),
        );
        self.workloads.insert(key, (desc, rv));
    }

    /// Workloads of a kind in `namespace` (every namespace when `None`).
    pub fn workloads(
        &self,
        kind: WorkloadKind,
        namespace: Option<&str>,
    ) -> Vec<(WorkloadDesc, u64)> {
        self.workloads
            .values()
            .filter(|(w, _)| w.kind == kind && namespace.is_none_or(|ns| w.namespace == ns))
            .cloned()
            .collect()
    }

    /// Creates or replaces a secret.
    pub fn apply_secret(&mut self, desc: SecretDesc) {
        let rv = self.bump();
        self.secrets
            .insert((desc.namespace.clone(), desc.name.clone()), (desc, rv));
    }

    /// A secret as JSON.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        self.secrets
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|(s, rv)| secret_json(s, *rv))
    }
}

fn meta(name: &str, namespace: &str, labels: &BTreeMap<String, String>, rv: u64) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: (!labels.is_empty()).then(|| labels.clone()),
        resource_version: Some(rv.to_string()),
        uid: Some(format!("00000000-0000-4000-9000-{rv:012}")),
        ..ObjectMeta::default()
    }
}

fn container(
    name: &str,
    image: &str,
    ports: &[PortDesc],
    env: &BTreeMap<String, String>,
    command: &[String],
    args: &[String],
) -> Container {
    Container {
        name: name.to_owned(),
        image: Some(image.to_owned()),
        command: (!command.is_empty()).then(|| command.to_vec()),
        args: (!args.is_empty()).then(|| args.to_vec()),
        ports: Some(
            ports
                .iter()
                .map(|p| ContainerPort {
                    name: p.name.clone(),
                    container_port: i32::from(p.port),
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        env: Some(
            env.iter()
                .map(|(k, v)| EnvVar {
                    name: k.clone(),
                    value: Some(v.clone()),
                    ..EnvVar::default()
                })
                .collect(),
        ),
        ..Container::default()
    }
}

/// The Erlang container's image.
const ERLANG_IMAGE: &str = "erlang:25";

/// A pod's containers: the sidecars, then the Erlang one.
fn containers(d: &PodDesc) -> Vec<Container> {
    d.sidecars
        .iter()
        .map(|c| container(&c.name, &c.image, &c.ports, &c.env, &c.command, &c.args))
        .chain(std::iter::once(container(
            d.container_name(),
            ERLANG_IMAGE,
            &d.ports,
            &d.env,
            &d.command,
            &d.args,
        )))
        .collect()
}

fn pod_json(stored: &StoredPod) -> Pod {
    let d = &stored.desc;
    let mut metadata = meta(&d.name, &d.namespace, &d.labels, stored.rv);
    metadata.uid = Some(stored.uid.clone());
    metadata.creation_timestamp = Some(Time(stored.created));
    metadata.owner_references = d.owner.as_ref().map(|(kind, name)| {
        vec![OwnerReference {
            api_version: "apps/v1".to_owned(),
            kind: kind.clone(),
            name: name.clone(),
            uid: format!("owner-{name}"),
            controller: Some(true),
            ..OwnerReference::default()
        }]
    });
    let ready = if d.ready { "True" } else { "False" };
    Pod {
        metadata,
        spec: Some(PodSpec {
            containers: containers(d),
            hostname: d.hostname.clone(),
            subdomain: d.subdomain.clone(),
            node_name: Some("node-0".to_owned()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some(d.phase.clone()),
            pod_ip: d.ip.map(|ip| ip.to_string()),
            pod_ips: d.ip.map(|_| {
                d.ips()
                    .iter()
                    .map(|ip| PodIP { ip: ip.to_string() })
                    .collect()
            }),
            host_ip: Some("172.31.255.1".to_owned()),
            start_time: Some(Time(stored.created)),
            conditions: Some(
                ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
                    .iter()
                    .map(|t| PodCondition {
                        type_: (*t).to_owned(),
                        status: if t.ends_with("Ready") { ready } else { "True" }.to_owned(),
                        ..PodCondition::default()
                    })
                    .collect(),
            ),
            container_statuses: Some(
                containers(d)
                    .into_iter()
                    .map(|c| {
                        let image = c.image.unwrap_or_default();
                        ContainerStatus {
                            image_id: format!("{image}@sha256:0"),
                            name: c.name,
                            image,
                            ready: d.ready,
                            restart_count: d.restarts,
                            started: Some(d.phase == "Running"),
                            ..ContainerStatus::default()
                        }
                    })
                    .collect(),
            ),
            ..PodStatus::default()
        }),
    }
}

/// A StatefulSet as JSON.
pub fn statefulset_json(w: &WorkloadDesc, rv: u64) -> StatefulSet {
    StatefulSet {
        metadata: meta(&w.name, &w.namespace, &w.selector, rv),
        spec: Some(StatefulSetSpec {
            replicas: Some(w.replicas),
            selector: w.label_selector(),
            service_name: w.service_name.clone(),
            template: template(w),
            ..StatefulSetSpec::default()
        }),
        status: Some(StatefulSetStatus {
            replicas: w.replicas,
            ready_replicas: Some(w.replicas),
            ..StatefulSetStatus::default()
        }),
    }
}

/// A Deployment as JSON.
pub fn deployment_json(w: &WorkloadDesc, rv: u64) -> Deployment {
    Deployment {
        metadata: meta(&w.name, &w.namespace, &w.selector, rv),
        spec: Some(DeploymentSpec {
            replicas: Some(w.replicas),
            selector: w.label_selector(),
            template: template(w),
            ..DeploymentSpec::default()
        }),
        status: Some(DeploymentStatus {
            replicas: Some(w.replicas),
            ready_replicas: Some(w.replicas),
            ..DeploymentStatus::default()
        }),
    }
}

fn template(w: &WorkloadDesc) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(w.selector.clone()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container(
                "app",
                ERLANG_IMAGE,
                &[],
                &BTreeMap::new(),
                &[],
                &[],
            )],
            ..PodSpec::default()
        }),
    }
}

fn secret_json(s: &SecretDesc, rv: u64) -> Secret {
    Secret {
        metadata: meta(&s.name, &s.namespace, &BTreeMap::new(), rv),
        data: Some(
            s.data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }
}
