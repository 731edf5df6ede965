//! The test cluster: the API emulator in a cluster namespace, and one namespace per pod running
//! a real Erlang node, all built from a manifest.
//!
//! ```text
//!  workstation ──api0 (172.31.255.2/30)──▶ cluster: emulator on 172.31.255.1:6443, bridge br0
//!     │ default routes to a void                10.244.0.1/16 + fd00:10:244::1/64, no forwarding
//!     ▼                                          ├── pod app-0: eth0 10.244.1.x/16, erl + epmd
//!  nowhere                                       ├── pod v6-0: eth0 fd00:10:244::x/64
//!                                                ├── pod dual-0: both ...
//! ```
//!
//! Pods reach each other over the bridge (so their nodes form one cluster); the workstation
//! reaches the API server and nothing else of the cluster. Everything is killed and removed
//! when the [`Cluster`] is dropped.
//!
//! A pod's shape comes from its manifest entry, as a real pod spec would show it:
//! - `ip_family = "IPv6"` or `"DualStack"`: addresses from fd00:10:244::/64 (and 10.244.0.0/16);
//!   `$(POD_IP)` is the first (`status.podIP`), `$(POD_IPS)` all of them, comma-separated. A node
//!   named by an IPv6 address runs with `-proto_dist inet6_tcp`.
//! - `args`: appended to erl's command line (to elixir's through `--erl`), as a release's
//!   vm.args. No epmd: `args = ["-start_epmd", "false", "-erl_epmd_port", "9100"]` (OTP 25; see
//!   [`crate::erlang`]); the same in `ERL_FLAGS` works too.
//! - `env`: the node runs with it (expanded), so `ERL_EPMD_PORT = "4370"` moves its epmd, and
//!   `ERL_FLAGS` adds flags; `RELEASE_NODE`/`RELEASE_COOKIE` name the node and its cookie.
//! - `sidecars`: listed before the Erlang container; each of their ports answers every
//!   connection with `hello from NAME` ([`SIDECAR_GREETING`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use erlbridge_kube_emulator::manifest::{Manifest, expand};
use erlbridge_kube_emulator::{Access, Emulator, IpFamily, PodDesc, StartOptions};
use tokio::io::AsyncWriteExt;

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
/// The cluster namespace's address on the pods' IPv6 network (their default route).
pub const BRIDGE_V6: &str = "fd00:10:244::1";
/// What a sidecar's port says to every connection, followed by the container's name and a
/// newline: `hello from envoy\n`.
pub const SIDECAR_GREETING: &str = "hello from ";

/// The `n`-th pod IPv4 address.
fn pod_v4(n: u32) -> String {
    format!("10.244.{}.{}", 1 + n / 250, n % 250 + 1)
}

/// The `n`-th pod IPv6 address, in the emulator's range (fd00:10:244::/64).
fn pod_v6(n: u32) -> String {
    format!("fd00:10:244::{n:x}")
}

/// A sidecar's listener, stopped when dropped.
#[derive(Debug)]
struct Sidecar(tokio::task::JoinHandle<()>);

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A pod: its namespace and its Erlang node.
#[derive(Debug)]
pub struct Pod {
    // Drop order: the node and sidecars before their namespace.
    node: Option<Spawned>,
    _sidecars: Vec<Sidecar>,
    ns: Netns,
    /// What the API server shows of it.
    pub desc: PodDesc,
    /// Its Erlang node's name, when its environment names one (RELEASE_NODE).
    pub node_name: Option<String>,
    /// Its node's cookie (RELEASE_COOKIE).
    pub cookie: String,
    /// What a peer needs to reach its node (IPv6, epmd's port, no epmd).
    pub dist: erlang::Dist,
    /// How its node is started (again, after a container restart).
    launch: NodeLaunch,
    /// When the API server last showed it Running and Ready.
    pub ready_since: Instant,
}

/// How a pod's node is started: its environment, extra flags, fixed distribution port, and
/// whether it runs Elixir.
#[derive(Debug, Clone)]
struct NodeLaunch {
    env: BTreeMap<String, String>,
    args: Vec<String>,
    dist_port: Option<u16>,
    elixir: bool,
}

/// A pod whose namespace is made and whose node is starting.
struct Launched {
    pod: Pod,
}

impl Pod {
    /// Its IP.
    pub fn ip(&self) -> String {
        self.desc.ip.map(|ip| ip.to_string()).unwrap_or_default()
    }

    /// Its IPv6 address, if it has one (IPv6 and dual-stack pods).
    pub fn ipv6(&self) -> Option<String> {
        self.desc
            .ips()
            .into_iter()
            .find(std::net::IpAddr::is_ipv6)
            .map(|ip| ip.to_string())
    }

    /// Its network namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Evaluates `expr` on the pod's node (from a hidden node inside the pod, dialing it as
    /// [`Pod::dist`] says) and returns the printed result.
    pub fn eval(&self, expr: &str) -> anyhow::Result<String> {
        self.eval_within(expr, 15_000)
    }

    /// [`Pod::eval`], waiting up to `ms` milliseconds (less than a minute) for the answer.
    pub fn eval_within(&self, expr: &str, ms: u32) -> anyhow::Result<String> {
        let node = self
            .node_name
            .as_deref()
            .context("this pod runs no Erlang node")?;
        let host = match self.dist.ipv6 {
            true => self.ipv6().unwrap_or_else(|| "::1".to_owned()),
            false => self.ip(),
        };
        let probe = format!("probe{}@{host}", std::process::id());
        let flags = self.dist.peer_flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let argv = erlang::eval_argv(
            &probe,
            &self.cookie,
            &erlang::on_node_within(node, expr, ms),
            &flags,
        );
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = self.ns.command(&argv);
        cmd.env("HOME", "/tmp").envs(self.dist.peer_env());
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
    /// The runtime the emulator (and the sidecars, proxies) serve on; dropping it stops them.
    pub(crate) runtime: tokio::runtime::Runtime,
    ns: Netns,
    manifest: Manifest,
    next_ip: u32,
    next_link: u32,
    /// A kubeconfig for [`TOKEN`], readable by every test user.
    pub kubeconfig: PathBuf,
    /// A kubeconfig for [`NO_RIGHTS_TOKEN`].
    pub no_rights_kubeconfig: PathBuf,
    home: tempfile::TempDir,
    /// The workstation's scratch directory, where kubeconfigs and login files go.
    pub(crate) scratch: PathBuf,
}

impl Cluster {
    /// Builds the cluster a manifest describes, reachable from `ws` through the API only.
    pub fn start(ws: &Workstation, manifest: &str) -> anyhow::Result<Cluster> {
        Cluster::start_with(ws, manifest, StartOptions::default())
    }

    /// [`Cluster::start`] with the API server started with `options`, e.g. served under a
    /// path prefix as Rancher does (every kubeconfig the cluster writes carries it):
    /// `Cluster::start_with(&ws, MANIFEST, StartOptions::default().path_prefix("/k8s/clusters/c-abc"))`
    pub fn start_with(
        ws: &Workstation,
        manifest: &str,
        options: StartOptions,
    ) -> anyhow::Result<Cluster> {
        let manifest = Manifest::parse(manifest).context("the manifest")?;
        let ns = Netns::create("cl")?;
        for argv in [
            &["ip", "link", "add", "br0", "type", "bridge"][..],
            &["ip", "addr", "add", "10.244.0.1/16", "dev", "br0"],
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{BRIDGE_V6}/64"),
                "dev",
                "br0",
                "nodad",
            ],
            &["ip", "link", "set", "br0", "up"],
            &["sysctl", "-qw", "net.ipv4.ip_forward=0"],
            &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"],
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
        let emulator = runtime.block_on(Emulator::start_with(
            API_ADDR.parse()?,
            Some(ns.name()),
            options,
        ))?;
        emulator.add_token(TOKEN, Access::Full);
        emulator.add_token(NO_RIGHTS_TOKEN, Access::Nothing);
        let write = |name: &str, token: &str| {
            write_readable(
                &ws.scratch().join(name),
                &emulator.kubeconfig(token, "default"),
            )
        };
        let kubeconfig = write("kubeconfig", TOKEN)?;
        let no_rights_kubeconfig = write("kubeconfig-no-rights", NO_RIGHTS_TOKEN)?;

        let mut cluster = Cluster {
            pods: BTreeMap::new(),
            emulator,
            runtime,
            ns,
            manifest: manifest.clone(),
            next_ip: 10,
            next_link: 0,
            kubeconfig,
            no_rights_kubeconfig,
            home: tempfile::Builder::new().prefix("eb-pods-").tempdir()?,
            scratch: ws.scratch().to_path_buf(),
        };
        // Every node boots at once; then each is waited for, in order.
        let mut launched = Vec::new();
        for (kind, workload) in manifest.workloads() {
            cluster.emulator.apply_workload(workload.desc(kind));
            for i in 0..workload.replicas {
                launched.push(cluster.launch_pod(workload.pod(kind, i))?);
            }
        }
        for pod in manifest.pods.clone() {
            launched.push(cluster.launch_pod(pod)?);
        }
        for pod in launched {
            cluster.finish_pod(pod)?;
        }
        for secret in manifest.secrets.clone() {
            cluster.emulator.apply_secret(secret);
        }
        cluster.mesh(true)?;
        Ok(cluster)
    }

    /// A pod by name: `app-0` in namespace `default`, `NAMESPACE/NAME` in any other.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .get(name)
            .unwrap_or_else(|| panic!("no pod {name} in the test cluster"))
    }

    /// Every pod, by name.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// The directory holding the pod nodes' home directories.
    pub fn pods_home(&self) -> &Path {
        self.home.path()
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

    /// The API server's address, as the workstation dials it.
    pub fn api_addr(&self) -> SocketAddr {
        self.emulator.addr()
    }

    /// Writes `text` into the workstation's scratch directory as `name`, readable by every
    /// test user; returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        write_readable(&self.scratch.join(name), text)
    }

    /// The pod's addresses by its family: (`status.podIP`, the dual-stack second one).
    fn allocate_ips(&mut self, family: IpFamily) -> (String, Option<String>) {
        self.next_ip += 1;
        let n = self.next_ip;
        match family {
            IpFamily::IPv4 => (pod_v4(n), None),
            IpFamily::IPv6 => (pod_v6(n), None),
            IpFamily::DualStack => (pod_v4(n), Some(pod_v6(n))),
        }
    }

    /// Creates the pod's namespace with new IPs, starts its node and sidecars, and shows it
    /// Running.
    fn start_pod(&mut self, desc: PodDesc) -> anyhow::Result<()> {
        let launched = self.launch_pod(desc)?;
        self.finish_pod(launched)
    }

    /// Creates the pod's namespace with new IPs and starts its node (not waited for).
    fn launch_pod(&mut self, mut desc: PodDesc) -> anyhow::Result<Launched> {
        let (ip, second_ip) = self.allocate_ips(desc.ip_family);
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
        ns.run(&["ip", "link", "set", "eth0", "up"])?;
        for addr in std::iter::once(&ip).chain(&second_ip) {
            if addr.contains(':') {
                let cidr = format!("{addr}/64");
                ns.run(&["ip", "-6", "addr", "add", &cidr, "dev", "eth0", "nodad"])?;
                ns.run(&["ip", "-6", "route", "add", "default", "via", BRIDGE_V6])?;
            } else {
                ns.run(&["ip", "addr", "add", &format!("{addr}/16"), "dev", "eth0"])?;
                ns.run(&["ip", "route", "add", "default", "via", "10.244.0.1"])?;
            }
        }

        let ips: Vec<&str> = std::iter::once(ip.as_str())
            .chain(second_ip.as_deref())
            .collect();
        let vars = BTreeMap::from([
            ("POD_IP".to_owned(), ip.clone()),
            ("POD_IPS".to_owned(), ips.join(",")),
            ("POD_NAME".to_owned(), desc.name.clone()),
            ("POD_NAMESPACE".to_owned(), desc.namespace.clone()),
        ]);
        let env: BTreeMap<String, String> = desc
            .env
            .iter()
            .map(|(k, v)| (k.clone(), expand(v, &vars)))
            .collect();
        let node_name = env.get("RELEASE_NODE").cloned();
        let cookie = env
            .get("RELEASE_COOKIE")
            .cloned()
            .unwrap_or_else(|| "cookie".to_owned());
        let dist_port = env
            .get("ERL_DIST_PORT")
            .and_then(|p| p.parse().ok())
            .filter(|p| *p > 0);
        let args: Vec<String> = desc.args.iter().map(|a| expand(a, &vars)).collect();
        let dist = node_name
            .as_deref()
            .map(|name| erlang::Dist::of(name, &args, &env))
            .unwrap_or_default();
        let launch = NodeLaunch {
            env,
            args,
            dist_port,
            elixir: desc.command.first().map(String::as_str) == Some("elixir"),
        };
        let node = match &node_name {
            Some(name) => Some(self.start_node(&ns, &desc.name, name, &cookie, &dist, &launch)?),
            None => None,
        };
        desc.ip = Some(ip.parse()?);
        desc.second_ip = second_ip.map(|ip| ip.parse()).transpose()?;
        desc.netns = Some(ns.name().to_owned());
        Ok(Launched {
            pod: Pod {
                node,
                _sidecars: Vec::new(),
                ns,
                desc,
                node_name,
                cookie,
                dist,
                launch,
                ready_since: Instant::now(),
            },
        })
    }

    /// Starts a pod's Erlang node `name` in `ns` as its spec says.
    fn start_node(
        &self,
        ns: &Netns,
        pod: &str,
        name: &str,
        cookie: &str,
        dist: &erlang::Dist,
        launch: &NodeLaunch,
    ) -> anyhow::Result<Spawned> {
        let home = self.home.path().join(pod);
        std::fs::create_dir_all(&home)?;
        let mut flags = dist.node_flags();
        flags.extend(launch.args.iter().cloned());
        let argv = if launch.elixir {
            erlang::elixir_node_argv_with(name, cookie, launch.dist_port, &flags)
        } else {
            let mut argv = erlang::node_argv(name, cookie, launch.dist_port);
            argv.extend(flags);
            argv
        };
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = ns.command(&argv);
        cmd.envs(&launch.env).env("HOME", &home);
        Spawned::start(cmd)
    }

    /// Waits for a launched pod's node, starts its sidecars, and shows it Running.
    fn finish_pod(&mut self, launched: Launched) -> anyhow::Result<()> {
        let Launched { mut pod } = launched;
        if let (Some(name), Some(node)) = (&pod.node_name, &mut pod.node) {
            wait_node(&pod.ns, name, &pod.dist, node)?;
        }
        pod._sidecars = self.start_sidecars(&pod.ns, &pod.desc)?;
        pod.desc.phase = "Running".to_owned();
        pod.desc.ready = true;
        self.emulator.apply_pod(pod.desc.clone());
        pod.ready_since = Instant::now();
        self.pods.insert(pod_key(&pod.desc), pod);
        Ok(())
    }

    /// A listener on each sidecar port, inside the pod, greeting every connection with
    /// [`SIDECAR_GREETING`] and the container's name.
    fn start_sidecars(&self, ns: &Netns, desc: &PodDesc) -> anyhow::Result<Vec<Sidecar>> {
        let _entered = self.runtime.enter();
        let mut sidecars = Vec::new();
        for container in &desc.sidecars {
            for port in &container.ports {
                let addr = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port.port));
                let listener = erlbridge_kube_emulator::netns::bind(Some(ns.name()), addr)
                    .with_context(|| format!("sidecar {} port {}", container.name, port.port))?;
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let greeting = format!("{SIDECAR_GREETING}{}\n", container.name);
                sidecars.push(Sidecar(tokio::spawn(async move {
                    while let Ok((mut conn, _)) = listener.accept().await {
                        let _ = conn.write_all(greeting.as_bytes()).await;
                        let _ = conn.shutdown().await;
                    }
                })));
            }
        }
        Ok(sidecars)
    }

    /// Connects every workload's pod nodes to each other, as a clustered release does; with
    /// `settled`, returns once every node sees every other (a cluster as it stands after its
    /// start), else once each reaches the first (`global` meshes the rest in its own time: a
    /// pod restarted beside one whose epmd is stopped, say, may never reach that one).
    fn mesh(&self, settled: bool) -> anyhow::Result<()> {
        for (_, workload) in self.manifest.workloads() {
            let members: Vec<&Pod> = self
                .pods
                .values()
                .filter(|p| {
                    p.desc
                        .owner
                        .as_ref()
                        .is_some_and(|(_, n)| *n == workload.name)
                        && p.desc.namespace == workload.namespace
                        && p.node_name.is_some()
                })
                .collect();
            let Some((first, rest)) = members.split_first() else {
                continue;
            };
            let first_name = first.node_name.as_deref().unwrap_or_default();
            // The first pod's node connects to every other at once (one probe, not one per
            // pod; `global` then meshes them); a node that has just started listening may
            // still be finishing its start.
            let mut waiting: Vec<String> =
                rest.iter().filter_map(|p| p.node_name.clone()).collect();
            // A big cluster's `global` takes a while to settle after a node left.
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if waiting.is_empty() {
                    break;
                }
                let names = waiting
                    .iter()
                    .map(|n| format!("'{n}'"))
                    .collect::<Vec<_>>()
                    .join(",");
                let answer = first.eval_within(
                    &format!(
                        "Ns = [{names}], \
                         [N || {{N, R}} <- lists:zip(Ns, erpc:multicall(Ns, erlang, node, [], 40000)), \
                               R =/= {{ok, N}}]"
                    ),
                    45_000,
                )?;
                waiting.retain(|n| answer.contains(&format!("'{n}'")));
                if !waiting.is_empty() {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            if !waiting.is_empty() {
                bail!("{first_name} could not reach {}", waiting.join(", "));
            }
            // `global` then connects the others to each other, as it would in a real cluster:
            // done when every node sees every other (unless the nodes run without it).
            let connect_all = !first
                .launch
                .args
                .windows(2)
                .any(|w| w[0] == "-connect_all" && w[1] == "false");
            if settled && connect_all {
                self.wait_meshed(first, &members)?;
            }
        }
        Ok(())
    }

    /// Waits until each of `members` sees all the others in its `nodes()`, asked from `first`.
    fn wait_meshed(&self, first: &Pod, members: &[&Pod]) -> anyhow::Result<()> {
        let names = members
            .iter()
            .filter_map(|p| p.node_name.as_deref())
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(",");
        let short = format!(
            "Ns = [{names}], \
             [N || {{N, R}} <- lists:zip(Ns, erpc:multicall(Ns, erlang, nodes, [], 5000)), \
                   element(1, R) =/= ok orelse length(element(2, R)) < length(Ns) - 1]"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = first.eval_within(&short, 20_000)?;
            if answer == "[]" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the nodes {answer} do not see all their peers after 30 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
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
        desc.second_ip = None;
        desc.netns = None;
        desc.phase = "Pending".to_owned();
        desc.ready = false;
        desc.restarts += 1;
        self.emulator.apply_pod(desc.clone());
        self.start_pod(desc)?;
        self.mesh(false)?;
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
            self.pods.remove(&pod_key(&pod));
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
        self.mesh(false)
    }

    /// Restarts the pod's Erlang container as the kubelet does after a crash: its node (and
    /// epmd) die, the pod shows not Ready, then the node starts again (on `dist_port` when
    /// given, else where it listened before), and the pod is Ready with one more restart.
    /// Same pod, same IP. Its workload's peers are connected again.
    pub fn restart_container(&mut self, name: &str, dist_port: Option<u16>) -> anyhow::Result<()> {
        self.kill_node(name)?;
        let pod = self
            .pods
            .get_mut(name)
            .with_context(|| format!("no pod {name}"))?;
        pod.desc.ready = false;
        self.emulator.apply_pod(pod.desc.clone());
        if let Some(port) = dist_port {
            pod.launch.dist_port = Some(port);
        }
        let node_name = pod
            .node_name
            .clone()
            .context("this pod runs no Erlang node")?;
        let node = self.start_node(
            &self.pods[name].ns,
            name,
            &node_name,
            &self.pods[name].cookie,
            &self.pods[name].dist,
            &self.pods[name].launch,
        )?;
        let pod = self.pods.get_mut(name).context("the pod")?;
        let node = pod.node.insert(node);
        wait_node(&pod.ns, &node_name, &pod.dist, node)?;
        pod.desc.restarts += 1;
        pod.desc.ready = true;
        self.emulator.apply_pod(pod.desc.clone());
        pod.ready_since = Instant::now();
        self.mesh(false)
    }

    /// Shows the pod's Erlang container as restarted (its restart count goes up) without
    /// touching its node: what a client sees of a container restart, for a test that wants the
    /// node as it is (say, with its epmd stopped).
    pub fn note_container_restart(&mut self, name: &str) -> anyhow::Result<()> {
        let pod = self
            .pods
            .get_mut(name)
            .with_context(|| format!("no pod {name}"))?;
        pod.desc.restarts += 1;
        self.emulator.apply_pod(pod.desc.clone());
        Ok(())
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the pod's epmd: stopped, it takes connections into
    /// its backlog and answers none, as an overloaded or wedged epmd does.
    pub fn pause_epmd(&self, name: &str, paused: bool) -> anyhow::Result<()> {
        let pod = self.pod(name);
        let signal = if paused {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        let epmd: Vec<i32> = pod
            .ns
            .pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "epmd")
            })
            .collect();
        if epmd.is_empty() {
            bail!("pod {name} runs no epmd");
        }
        for pid in epmd {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)?;
        }
        Ok(())
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

/// How [`Cluster::pod`] names a pod: `NAME` in `default`, `NAMESPACE/NAME` elsewhere.
fn pod_key(desc: &PodDesc) -> String {
    match desc.namespace.as_str() {
        "default" => desc.name.clone(),
        namespace => format!("{namespace}/{}", desc.name),
    }
}

/// Writes `text` to `path`, readable by every test user.
pub(crate) fn write_readable(path: &Path, text: &str) -> anyhow::Result<PathBuf> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(path.to_path_buf())
}

/// Waits until `node` (running as `process`) is registered with the epmd of `ns` (on its
/// port), or, for a node without epmd, listens on its port.
fn wait_node(
    ns: &Netns,
    node: &str,
    dist: &erlang::Dist,
    process: &mut Spawned,
) -> anyhow::Result<()> {
    let alive = node.split('@').next().unwrap_or(node);
    let epmd_port = dist.epmd_port.unwrap_or(4369).to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let up = match dist.epmdless_port {
            Some(port) => {
                let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
                erlbridge_kube_emulator::netns::within(ns.name(), move || {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                })
                .is_ok()
            }
            None => ns
                .run(&["epmd", "-port", &epmd_port, "-names"])
                .is_ok_and(|names| names.contains(&format!("name {alive} at port"))),
        };
        if up {
            return Ok(());
        }
        if let Ok(code) = process.wait_exit(Duration::ZERO) {
            bail!(
                "the Erlang node {node} exited ({code}) before it was up; its stderr is in the \
                 test's output (a node without epmd needs -erl_epmd_port N on OTP 25)"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match dist.epmdless_port {
        Some(port) => bail!("the Erlang node {node} did not listen on port {port} within 20 s"),
        None => bail!("the Erlang node {node} did not register with epmd within 20 s"),
    }
}
