//! The test cluster: the API emulator in a cluster namespace, and one namespace per pod running
//! a real Erlang node, all built from a manifest.
//!
//! ```text
//!  workstation ──api0 (172.31.255.2/30)──▶ cluster: emulator on 172.31.255.1:6443, bridge br0
//!     │ default route to a void                 10.244.0.1/16, no forwarding
//!     ▼                                          ├── pod app-0: eth0 10.244.1.x/16, erl + epmd
//!  nowhere                                       ├── pod app-1 ...
//! ```
//!
//! Pods reach each other over the bridge (so their nodes form one cluster); the workstation
//! reaches the API server and nothing else of the cluster. Everything is killed and removed
//! when the [`Cluster`] is dropped.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use erlbridge_kube_emulator::manifest::{Manifest, expand};
use erlbridge_kube_emulator::{Access, Emulator, PodDesc};

use crate::erlang;
use crate::netns::Netns;
use crate::process::Spawned;
use crate::workstation::Workstation;

/// The API server's address, inside the cluster namespace.
pub const API_ADDR: &str = "172.31.255.1:6443";
/// The token the generated kubeconfig carries: full access.
pub const TOKEN: &str = "erlbridge-test-token";
/// A valid token without any RBAC rights.
pub const NO_RIGHTS_TOKEN: &str = "erlbridge-no-rights";

/// A pod: its namespace and its Erlang node.
#[derive(Debug)]
pub struct Pod {
    // Drop order: the node before its namespace.
    node: Option<Spawned>,
    ns: Netns,
    /// What the API server shows of it.
    pub desc: PodDesc,
    /// Its Erlang node's name, when its environment names one (RELEASE_NODE).
    pub node_name: Option<String>,
    /// Its node's cookie (RELEASE_COOKIE).
    pub cookie: String,
}

impl Pod {
    /// Its IP.
    pub fn ip(&self) -> String {
        self.desc.ip.map(|ip| ip.to_string()).unwrap_or_default()
    }

    /// Its network namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Evaluates `expr` on the pod's node (from a hidden node inside the pod) and returns the
    /// printed result.
    pub fn eval(&self, expr: &str) -> anyhow::Result<String> {
        let node = self
            .node_name
            .as_deref()
            .context("this pod runs no Erlang node")?;
        let probe = format!("probe{}@{}", std::process::id(), self.ip());
        let argv = erlang::eval_argv(&probe, &self.cookie, &erlang::on_node(node, expr), &[]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = self.ns.command(&argv);
        cmd.env("HOME", "/tmp");
        let out = cmd.output().context("erl")?;
        erlang::parse_result(&String::from_utf8_lossy(&out.stdout)).map_err(anyhow::Error::msg)
    }

    /// The node's `nodes()`, sorted.
    pub fn nodes(&self) -> anyhow::Result<Vec<String>> {
        let text = self.eval("lists:sort(nodes())")?;
        Ok(text
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_matches('\'').to_owned())
            .collect())
    }
}

/// The whole test cluster.
pub struct Cluster {
    pods: BTreeMap<String, Pod>,
    /// The API server.
    pub emulator: Emulator,
    /// The runtime the emulator serves on; dropping it stops the emulator.
    _runtime: tokio::runtime::Runtime,
    ns: Netns,
    manifest: Manifest,
    next_ip: u32,
    next_link: u32,
    /// A kubeconfig for [`TOKEN`], readable by every test user.
    pub kubeconfig: PathBuf,
    /// A kubeconfig for [`NO_RIGHTS_TOKEN`].
    pub no_rights_kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

impl Cluster {
    /// Builds the cluster a manifest describes, reachable from `ws` through the API only.
    pub fn start(ws: &Workstation, manifest: &str) -> anyhow::Result<Cluster> {
        let manifest = Manifest::parse(manifest).context("the manifest")?;
        let ns = Netns::create("cl")?;
        for argv in [
            &["ip", "link", "add", "br0", "type", "bridge"][..],
            &["ip", "addr", "add", "10.244.0.1/16", "dev", "br0"],
            &["ip", "link", "set", "br0", "up"],
            &["sysctl", "-qw", "net.ipv4.ip_forward=0"],
        ] {
            ns.run(argv)?;
        }
        ws.ns.run(&[
            "ip",
            "link",
            "add",
            "api0",
            "type",
            "veth",
            "peer",
            "name",
            "api0",
            "netns",
            ns.name(),
        ])?;
        ws.ns
            .run(&["ip", "addr", "add", "172.31.255.2/30", "dev", "api0"])?;
        ws.ns.run(&["ip", "link", "set", "api0", "up"])?;
        ns.run(&["ip", "addr", "add", "172.31.255.1/30", "dev", "api0"])?;
        ns.run(&["ip", "link", "set", "api0", "up"])?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let emulator = runtime.block_on(Emulator::start(API_ADDR.parse()?, Some(ns.name())))?;
        emulator.add_token(TOKEN, Access::Full);
        emulator.add_token(NO_RIGHTS_TOKEN, Access::Nothing);
        let write = |name: &str, token: &str| -> anyhow::Result<PathBuf> {
            let path = ws.scratch().join(name);
            std::fs::write(&path, emulator.kubeconfig(token, "default"))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
            Ok(path)
        };
        let kubeconfig = write("kubeconfig", TOKEN)?;
        let no_rights_kubeconfig = write("kubeconfig-no-rights", NO_RIGHTS_TOKEN)?;

        let mut cluster = Cluster {
            pods: BTreeMap::new(),
            emulator,
            _runtime: runtime,
            ns,
            manifest: manifest.clone(),
            next_ip: 10,
            next_link: 0,
            kubeconfig,
            no_rights_kubeconfig,
            home: tempfile::Builder::new().prefix("eb-pods-").tempdir()?,
        };
        for (kind, workload) in manifest.workloads() {
            cluster.emulator.apply_workload(workload.desc(kind));
            for i in 0..workload.replicas {
                cluster.start_pod(workload.pod(kind, i))?;
            }
        }
        for pod in manifest.pods.clone() {
            cluster.start_pod(pod)?;
        }
        for secret in manifest.secrets.clone() {
            cluster.emulator.apply_secret(secret);
        }
        cluster.mesh()?;
        Ok(cluster)
    }

    /// A pod by name.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .get(name)
            .unwrap_or_else(|| panic!("no pod {name} in the test cluster"))
    }

    /// Every pod, by name.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// The cluster namespace (the API server's; it has a direct route to every pod).
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// The names of every network namespace the cluster made.
    pub fn namespace_names(&self) -> Vec<String> {
        std::iter::once(self.ns.name().to_owned())
            .chain(self.pods.values().map(|p| p.ns.name().to_owned()))
            .collect()
    }

    fn allocate_ip(&mut self) -> String {
        self.next_ip += 1;
        format!(
            "10.244.{}.{}",
            1 + self.next_ip / 250,
            self.next_ip % 250 + 1
        )
    }

    /// Creates the pod's namespace with a new IP, starts its node, and shows it Running.
    fn start_pod(&mut self, mut desc: PodDesc) -> anyhow::Result<()> {
        let ip = self.allocate_ip();
        let ns = Netns::create("pod")?;
        self.next_link += 1;
        let link = format!("vp{}", self.next_link);
        self.ns.run(&[
            "ip",
            "link",
            "add",
            &link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        self.ns
            .run(&["ip", "link", "set", &link, "master", "br0", "up"])?;
        ns.run(&["ip", "addr", "add", &format!("{ip}/16"), "dev", "eth0"])?;
        ns.run(&["ip", "link", "set", "eth0", "up"])?;
        ns.run(&["ip", "route", "add", "default", "via", "10.244.0.1"])?;

        let vars = BTreeMap::from([
            ("POD_IP".to_owned(), ip.clone()),
            ("POD_NAME".to_owned(), desc.name.clone()),
            ("POD_NAMESPACE".to_owned(), desc.namespace.clone()),
        ]);
        let node_name = desc.env.get("RELEASE_NODE").map(|n| expand(n, &vars));
        let cookie = desc
            .env
            .get("RELEASE_COOKIE")
            .cloned()
            .unwrap_or_else(|| "cookie".to_owned());
        let dist_port = desc
            .env
            .get("ERL_DIST_PORT")
            .and_then(|p| p.parse().ok())
            .filter(|p| *p > 0);
        let node = match &node_name {
            Some(name) => {
                let home = self.home.path().join(&desc.name);
                std::fs::create_dir_all(&home)?;
                let argv = match desc.command.first().map(String::as_str) {
                    Some("elixir") => erlang::elixir_node_argv(name, &cookie, dist_port),
                    _ => erlang::node_argv(name, &cookie, dist_port),
                };
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                let mut cmd = ns.command(&argv);
                cmd.env("HOME", &home);
                let node = Spawned::start(cmd)?;
                wait_registered(&ns, name)?;
                Some(node)
            }
            None => None,
        };
        desc.ip = Some(ip.parse()?);
        desc.netns = Some(ns.name().to_owned());
        desc.phase = "Running".to_owned();
        desc.ready = true;
        self.emulator.apply_pod(desc.clone());
        self.pods.insert(
            desc.name.clone(),
            Pod {
                node,
                ns,
                desc,
                node_name,
                cookie,
            },
        );
        Ok(())
    }

    /// Connects every workload's pod nodes to each other, as a clustered release does.
    fn mesh(&self) -> anyhow::Result<()> {
        for (_, workload) in self.manifest.workloads() {
            let members: Vec<&Pod> = self
                .pods
                .values()
                .filter(|p| {
                    p.desc
                        .owner
                        .as_ref()
                        .is_some_and(|(_, n)| *n == workload.name)
                        && p.node_name.is_some()
                })
                .collect();
            let Some((first, rest)) = members.split_first() else {
                continue;
            };
            for pod in rest {
                let first_name = first.node_name.as_deref().unwrap_or_default();
                let pong = pod.eval(&format!("net_adm:ping('{first_name}')"))?;
                if pong != "pong" {
                    bail!("{} could not reach {first_name}: {pong}", pod.desc.name);
                }
            }
        }
        Ok(())
    }

    /// Deletes the pod and creates it again with a new IP, as a StatefulSet does when a pod is
    /// deleted: watchers see DELETED, ADDED (Pending), MODIFIED (Running, new IP).
    pub fn restart_pod_with_new_ip(&mut self, name: &str) -> anyhow::Result<String> {
        let old = self
            .pods
            .remove(name)
            .with_context(|| format!("no pod {name}"))?;
        self.emulator.delete_pod(&old.desc.namespace, name);
        let mut desc = old.desc.clone();
        drop(old);
        desc.ip = None;
        desc.netns = None;
        desc.phase = "Pending".to_owned();
        desc.ready = false;
        desc.restarts += 1;
        self.emulator.apply_pod(desc.clone());
        self.start_pod(desc)?;
        self.mesh()?;
        Ok(self.pod(name).ip())
    }

    /// Deletes the pod with no watch event for it, as when the deletion falls into history an
    /// API server has compacted: only a new list shows it gone.
    pub fn remove_pod_silently(&mut self, name: &str) -> anyhow::Result<()> {
        let pod = self
            .pods
            .remove(name)
            .with_context(|| format!("no pod {name}"))?;
        if !self.emulator.delete_pod_silently(&pod.desc.namespace, name) {
            bail!("the API server had no pod {name}");
        }
        Ok(())
    }

    /// Scales a StatefulSet or Deployment of the manifest up (new pods start, and join the
    /// others' Erlang cluster) or down (the highest-numbered pods are deleted).
    pub fn scale(&mut self, workload: &str, replicas: i32) -> anyhow::Result<()> {
        let (kind, mut spec) = self
            .manifest
            .workloads()
            .into_iter()
            .find(|(_, w)| w.name == workload)
            .map(|(k, w)| (k, w.clone()))
            .with_context(|| format!("no workload {workload} in the manifest"))?;
        let before = spec.replicas;
        spec.replicas = replicas;
        self.emulator.apply_workload(spec.desc(kind));
        for i in before..replicas {
            self.start_pod(spec.pod(kind, i))?;
        }
        for i in replicas..before {
            let pod = spec.pod(kind, i);
            self.emulator.delete_pod(&pod.namespace, &pod.name);
            self.pods.remove(&pod.name);
        }
        for w in self
            .manifest
            .statefulsets
            .iter_mut()
            .chain(self.manifest.deployments.iter_mut())
        {
            if w.name == workload {
                w.replicas = replicas;
            }
        }
        self.mesh()
    }

    /// Kills the pod's Erlang node (and its epmd), leaving the pod Running with nothing on its
    /// ports.
    pub fn kill_node(&mut self, name: &str) -> anyhow::Result<()> {
        let pod = self
            .pods
            .get_mut(name)
            .with_context(|| format!("no pod {name}"))?;
        pod.node = None;
        for pid in pod.ns.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Ok(())
    }
}

/// Waits until `node` is registered with the epmd of `ns`.
fn wait_registered(ns: &Netns, node: &str) -> anyhow::Result<()> {
    let alive = node.split('@').next().unwrap_or(node);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(names) = ns.run(&["epmd", "-names"])
            && names.contains(&format!("name {alive} at port"))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the Erlang node {node} did not register with epmd within 20 s")
}
