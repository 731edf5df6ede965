//! The test cluster's manifest (TOML): StatefulSets and Deployments with a pod template,
//! standalone pods, and secrets. Pod environments carry what a release reads
//! (`RELEASE_NODE`, `RELEASE_COOKIE`, ...), with `$(POD_IP)`-style references as Kubernetes
//! expands them.
//!
//! ```toml
//! [[statefulsets]]
//! name = "app"
//! replicas = 3
//! labels = { app = "app" }
//! ports = [{ name = "epmd", port = 4369 }]
//! env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "secret", ERL_DIST_PORT = "9100" }
//!
//! [[deployments]]
//! name = "noepmd"
//! labels = { app = "noepmd" }
//! ip_family = "DualStack"                       # or "IPv4" (the default), "IPv6"
//! container = "release"                         # the Erlang container's name
//! args = ["-start_epmd", "false"]
//! sidecars = [{ name = "proxy", ports = [{ name = "http", port = 8080 }] }]
//!
//! [[secrets]]
//! name = "app-cookie"
//! data = { cookie = "secret" }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::store::{
    ContainerDesc, IpFamily, PodDesc, PortDesc, SecretDesc, SelectorExpression, WorkloadDesc,
    WorkloadKind,
};

/// A whole manifest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// StatefulSets (pods `NAME-0`, `NAME-1`, ...).
    #[serde(default)]
    pub statefulsets: Vec<Workload>,
    /// Deployments (pods `NAME-<hash>-<n>`).
    #[serde(default)]
    pub deployments: Vec<Workload>,
    /// Pods of their own.
    #[serde(default)]
    pub pods: Vec<PodDesc>,
    /// Secrets.
    #[serde(default)]
    pub secrets: Vec<SecretDesc>,
}

/// A StatefulSet or Deployment and its pod template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Its name.
    pub name: String,
    /// Its namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// How many pods.
    #[serde(default = "one")]
    pub replicas: i32,
    /// The selector, and the pods' labels.
    pub labels: BTreeMap<String, String>,
    /// A selector by expressions instead of `labels` (which the pods still carry).
    #[serde(default)]
    pub match_expressions: Vec<SelectorExpression>,
    /// The governing service (StatefulSets; defaults to the name).
    #[serde(default)]
    pub service_name: Option<String>,
    /// The container's ports.
    #[serde(default)]
    pub ports: Vec<PortDesc>,
    /// The container's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The pods' address families.
    #[serde(default)]
    pub ip_family: IpFamily,
    /// The Erlang container's name (`app` when not given).
    #[serde(default)]
    pub container: Option<String>,
    /// The Erlang container's `command`.
    #[serde(default)]
    pub command: Vec<String>,
    /// The Erlang container's `args`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Other containers, listed before the Erlang one.
    #[serde(default)]
    pub sidecars: Vec<ContainerDesc>,
}

fn default_namespace() -> String {
    "default".to_owned()
}
fn one() -> i32 {
    1
}

impl Manifest {
    /// Parses manifest text.
    pub fn parse(text: &str) -> Result<Manifest, toml::de::Error> {
        toml::from_str(text)
    }

    /// Every workload with its kind.
    pub fn workloads(&self) -> Vec<(WorkloadKind, &Workload)> {
        self.statefulsets
            .iter()
            .map(|w| (WorkloadKind::StatefulSet, w))
            .chain(
                self.deployments
                    .iter()
                    .map(|w| (WorkloadKind::Deployment, w)),
            )
            .collect()
    }
}

impl Workload {
    /// The workload object.
    pub fn desc(&self, kind: WorkloadKind) -> WorkloadDesc {
        WorkloadDesc {
            kind,
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            replicas: self.replicas,
            selector: self.labels.clone(),
            match_expressions: self.match_expressions.clone(),
            service_name: (kind == WorkloadKind::StatefulSet).then(|| {
                self.service_name
                    .clone()
                    .unwrap_or_else(|| self.name.clone())
            }),
        }
    }

    /// Its `index`-th pod, before it has an IP.
    pub fn pod(&self, kind: WorkloadKind, index: i32) -> PodDesc {
        let name = match kind {
            WorkloadKind::StatefulSet => format!("{}-{index}", self.name),
            WorkloadKind::Deployment => format!("{}-7c9f8d6b5-{index:05}", self.name),
        };
        let kind_name = match kind {
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::Deployment => "ReplicaSet",
        };
        let sts = kind == WorkloadKind::StatefulSet;
        PodDesc {
            hostname: sts.then(|| name.clone()),
            subdomain: sts.then(|| {
                self.service_name
                    .clone()
                    .unwrap_or_else(|| self.name.clone())
            }),
            name,
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            ports: self.ports.clone(),
            env: self.env.clone(),
            ip_family: self.ip_family,
            container: self.container.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            sidecars: self.sidecars.clone(),
            owner: Some((kind_name.to_owned(), self.name.clone())),
            ..PodDesc::default()
        }
    }
}

/// Expands `$(VAR)` references as the kubelet does, from `vars` (e.g. POD_IP, POD_NAME).
pub fn expand(value: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = value.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statefulset_becomes_named_pods() {
        let m = Manifest::parse(
            r#"
            [[statefulsets]]
            name = "app"
            replicas = 2
            labels = { app = "app" }
            ports = [{ name = "epmd", port = 4369 }]
            env = { RELEASE_NODE = "app@$(POD_IP)" }
            "#,
        )
        .expect("valid");
        let (kind, w) = m.workloads()[0];
        let pod = w.pod(kind, 1);
        assert_eq!(pod.name, "app-1");
        assert_eq!(pod.subdomain.as_deref(), Some("app"));
        assert_eq!(pod.owner, Some(("StatefulSet".into(), "app".into())));
        let vars = BTreeMap::from([("POD_IP".to_owned(), "10.244.1.9".to_owned())]);
        assert_eq!(expand(&pod.env["RELEASE_NODE"], &vars), "app@10.244.1.9");
        assert!(Manifest::parse("[[statefulset]]\nname = \"x\"").is_err());
        assert_eq!(
            (pod.ip_family, pod.container_name()),
            (IpFamily::IPv4, "app")
        );
    }

    #[test]
    fn pod_shapes_are_read_from_the_manifest() {
        let m = Manifest::parse(
            r#"
            [[deployments]]
            name = "rel"
            labels = { app = "rel" }
            ip_family = "DualStack"
            container = "release"
            command = ["/app/bin/rel"]
            args = ["start", "-start_epmd", "false"]
            sidecars = [{ name = "envoy", ports = [{ name = "http", port = 8080 }], env = { A = "b" } }]

            [[pods]]
            name = "v6"
            ip_family = "IPv6"
            "#,
        )
        .expect("valid");
        let (kind, w) = m.workloads()[0];
        let pod = w.pod(kind, 0);
        assert_eq!(pod.ip_family, IpFamily::DualStack);
        assert_eq!(pod.container_name(), "release");
        assert_eq!(pod.args, ["start", "-start_epmd", "false"]);
        assert_eq!(pod.sidecars[0].name, "envoy");
        assert_eq!(pod.sidecars[0].ports[0].port, 8080);
        assert_eq!(m.pods[0].ip_family, IpFamily::IPv6);
    }
}
