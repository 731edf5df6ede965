//! The standing test bed: the built-in test cluster kept up in the background to try erlbridge
//! by hand (`sudo scripts/testbed up`, `status`, `down`; binary `testbed`).
//!
//! `up` starts `testbed serve` in a session of its own and returns once it is ready. The server
//! builds a [`Workstation`], the [`Cluster`] of [`MANIFEST`] (a StatefulSet `app` of three real
//! Erlang nodes, and what the README's other examples name), erlbridge-helperd as root and the
//! user [`USER_UID`], writes what it made into the state directory ([`DEFAULT_STATE_DIR`]:
//! `pid`, `state.json`, the printed guide `guide.txt`, its `log`), and waits for SIGTERM.
//! `down` sends it and waits until everything is gone; should the server have died, `down`
//! removes what its state names itself. [`Attached`] lets another process (the demo) use it.

mod guide;

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::logins::CONTEXT_TEST;
use crate::{Bins, Cluster, Helperd, User, Workstation};

/// Where the state goes unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/erlbridge-testbed";
/// The uid who runs erlbridge and local nodes (a member of the helper's access group).
pub const USER_UID: u32 = 61001;
/// Every pod node's cookie, also in `secret/app-cookie`.
pub const COOKIE: &str = "monster";
/// How long `up` waits for the test bed.
const UP_WITHIN: Duration = Duration::from_secs(180);
/// How long `down` waits for the server to remove everything before it kills it.
const DOWN_WITHIN: Duration = Duration::from_secs(60);

/// The cluster: what the README's examples name. `app` in `default` (three nodes) and in
/// `prod`, an Elixir deployment `web` in `staging`, the cookie as a secret.
pub const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 3
labels = { app = "app" }
ports = [{ name = "epmd", port = 4369 }]
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[statefulsets]]
name = "app"
namespace = "prod"
replicas = 2
labels = { app = "app" }
ports = [{ name = "epmd", port = 4369 }]
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[deployments]]
name = "web"
namespace = "staging"
replicas = 1
labels = { app = "web" }
command = ["elixir"]
ports = [{ name = "epmd", port = 4369 }]
env = { RELEASE_NODE = "web@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[secrets]]
name = "app-cookie"
data = { cookie = "monster" }
"#;

/// What the server made, as `state.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The server's pid.
    pub pid: i32,
    /// The workstation's network namespace.
    pub workstation: String,
    /// Its scratch directory (kubeconfigs, the helper's socket, the user's home).
    pub scratch: PathBuf,
    /// The staged binaries (erlbridge, erlbridge-helperd, helper-probe, the exec plugin).
    pub bins: PathBuf,
    /// The kubeconfig: contexts `erlbridge-test` (current), `staging`, `no-rights`,
    /// `elsewhere`.
    pub kubeconfig: PathBuf,
    /// The helper's socket.
    pub helper_socket: PathBuf,
    /// Who runs erlbridge.
    pub user: User,
    /// That user's home.
    pub home: PathBuf,
    /// The pod nodes' cookie.
    pub cookie: String,
    /// Every pod.
    pub pods: Vec<PodInfo>,
    /// Every network namespace made.
    pub namespaces: Vec<String>,
    /// Every directory made.
    pub paths: Vec<PathBuf>,
}

/// A pod of the standing test bed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodInfo {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its IP (`status.podIP`).
    pub ip: String,
    /// Its Erlang node.
    pub node: Option<String>,
}

impl State {
    /// A pod by namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> anyhow::Result<&PodInfo> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .with_context(|| format!("no pod {namespace}/{name} in the test bed"))
    }

    /// The staged copy of binary `name`.
    pub fn bin(&self, name: &str) -> String {
        self.bins.join(name).display().to_string()
    }
}

/// The files in the state directory.
struct Files<'a>(&'a Path);

impl Files<'_> {
    fn pid(&self) -> PathBuf {
        self.0.join("pid")
    }
    fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    fn guide(&self) -> PathBuf {
        self.0.join("guide.txt")
    }
    fn log(&self) -> PathBuf {
        self.0.join("log")
    }

    fn read_state(&self) -> Option<State> {
        let text = std::fs::read_to_string(self.state()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The server's pid, when it runs.
    fn running(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }
}

/// Whether `pid` is a running test-bed server (not a zombie, not a reused pid).
pub fn alive(pid: i32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let serving = cmdline.split(|b| *b == 0).any(|arg| arg == b"serve");
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    });
    serving && !zombie
}

/// `testbed up`: starts the server unless one runs, waits until it is ready, prints the guide.
pub fn up(dir: &Path) -> anyhow::Result<ExitCode> {
    let files = Files(dir);
    if let Some(pid) = files.running() {
        println!(
            "The test bed is already up (pid {pid}); `sudo scripts/testbed down` removes it.\n"
        );
        print!(
            "{}",
            std::fs::read_to_string(files.guide()).unwrap_or_default()
        );
        return Ok(ExitCode::from(1));
    }
    remove_leftovers(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log = std::fs::File::create(files.log())?;
    let exe = std::env::current_exe().context("the testbed binary")?;
    // setsid: a session of its own, so the terminal closing or Ctrl-C there leaves it be.
    let mut server = Command::new("setsid")
        .arg(&exe)
        .arg("serve")
        .arg("--state-dir")
        .arg(dir)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start the test bed's server (setsid, from util-linux)")?;
    println!(
        "Building the test bed: a workstation namespace, the Kubernetes API emulator, 6 pods \
         running real Erlang nodes, erlbridge-helperd ..."
    );
    let deadline = Instant::now() + UP_WITHIN;
    loop {
        if let Some(state) = files.read_state() {
            let guide = std::fs::read_to_string(files.guide()).unwrap_or_default();
            println!("The test bed is up (pid {}).\n\n{guide}", state.pid);
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = server.try_wait()? {
            let log = std::fs::read_to_string(files.log()).unwrap_or_default();
            remove_leftovers(dir);
            bail!("the test bed did not come up ({status}); its log:\n{log}");
        }
        if Instant::now() > deadline {
            let _ = down(dir);
            bail!("the test bed was not up within {UP_WITHIN:?}; removed what it had made");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `testbed down`: stops the server and waits until everything it made is gone.
pub fn down(dir: &Path) -> anyhow::Result<ExitCode> {
    let files = Files(dir);
    let Some(pid) = files.running() else {
        let left = remove_leftovers(dir);
        match left {
            0 => println!("The test bed is not up: nothing to remove."),
            n => println!("The test bed was not running; removed {n} things it had left."),
        }
        return Ok(ExitCode::SUCCESS);
    };
    println!("Stopping the test bed (pid {pid}) ...");
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + DOWN_WITHIN;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        println!("It did not stop within {DOWN_WITHIN:?}; killing it.");
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        while alive(pid) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    remove_leftovers(dir);
    println!("The test bed is down: its namespaces, processes and files are removed.");
    Ok(ExitCode::SUCCESS)
}

/// `testbed status`: the guide when the test bed is up (exit 0), else a line (exit 1).
pub fn status(dir: &Path) -> anyhow::Result<ExitCode> {
    let files = Files(dir);
    match files.running() {
        Some(pid) => {
            let guide = std::fs::read_to_string(files.guide()).unwrap_or_default();
            println!("The test bed is up (pid {pid}).\n\n{guide}");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            println!("The test bed is not up; `sudo scripts/testbed up` starts it.");
            Ok(ExitCode::from(1))
        }
    }
}

/// Removes what a server that is no longer running left (its namespaces, directories and
/// state files); returns how many namespaces and directories it removed.
fn remove_leftovers(dir: &Path) -> usize {
    let files = Files(dir);
    let mut removed = 0;
    let pid = std::fs::read_to_string(files.pid())
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok());
    let state = files.read_state();
    let mut namespaces = state
        .as_ref()
        .map(|s| s.namespaces.clone())
        .unwrap_or_default();
    // A server that died while building had no state yet: its namespaces carry its pid.
    if let Some(pid) = pid {
        let listed =
            crate::netns::run(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
        namespaces.extend(
            listed
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with("eb-") && n.contains(&format!("-{pid}-")))
                .map(str::to_owned),
        );
    }
    namespaces.sort();
    namespaces.dedup();
    for ns in namespaces {
        if Path::new("/run/netns").join(&ns).exists() {
            crate::netns::remove(&ns);
            removed += 1;
        }
    }
    for path in state.map(|s| s.paths).unwrap_or_default() {
        if std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    removed
}

/// What the server holds; fields drop in order: helper, cluster, workstation, binaries.
struct Bed {
    helperd: Helperd,
    cluster: Cluster,
    ws: Workstation,
    bins: Bins,
    user: User,
}

impl Bed {
    fn build() -> anyhow::Result<Bed> {
        let bins = Bins::stage(&[
            "erlbridge",
            "erlbridge-helperd",
            "helper-probe",
            erlbridge_kube_emulator::credential::PLUGIN_NAME,
        ])?;
        let ws = Workstation::new()?;
        let cluster = Cluster::start(&ws, MANIFEST)?;
        let helperd = Helperd::start(&ws, &bins, "")?;
        let user = User::member(USER_UID);
        ws.home(&user)?;
        Ok(Bed {
            helperd,
            cluster,
            ws,
            bins,
            user,
        })
    }

    fn state(&self) -> anyhow::Result<State> {
        let kubeconfig = self.cluster.contexts(CONTEXT_TEST)?.whole;
        let mut namespaces = self.cluster.namespace_names();
        namespaces.push(self.ws.ns.name().to_owned());
        Ok(State {
            pid: i32::try_from(std::process::id())?,
            workstation: self.ws.ns.name().to_owned(),
            scratch: self.ws.scratch().to_path_buf(),
            bins: self.bins.dir().to_path_buf(),
            kubeconfig,
            helper_socket: self.helperd.socket.clone(),
            home: self.ws.home(&self.user)?,
            user: self.user.clone(),
            cookie: COOKIE.to_owned(),
            pods: self
                .cluster
                .pods()
                .map(|p| PodInfo {
                    namespace: p.desc.namespace.clone(),
                    name: p.desc.name.clone(),
                    ip: p.ip(),
                    node: p.node_name.clone(),
                })
                .collect(),
            namespaces,
            paths: vec![
                self.ws.scratch().to_path_buf(),
                self.bins.dir().to_path_buf(),
                self.cluster.pods_home().to_path_buf(),
            ],
        })
    }
}

/// `testbed serve` (started by `up`): builds the test bed, records it, waits for SIGTERM
/// (or SIGINT, SIGHUP), then removes everything and its state directory.
pub fn serve(dir: &Path) -> anyhow::Result<()> {
    let files = Files(dir);
    let mut pid_file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(files.pid())
        .context("another test bed is up")?;
    writeln!(pid_file, "{}", std::process::id())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Listen before building, so a `down` during the build is heard once it is done.
    let mut stop = runtime.block_on(async { Stop::listen() })?;
    let served = Bed::build().and_then(|bed| {
        let state = bed.state()?;
        write_atomic(&files.guide(), &guide::text(&state))?;
        write_atomic(&files.state(), &serde_json::to_string_pretty(&state)?)?;
        eprintln!("testbed: up; waiting for SIGTERM");
        let signal = runtime.block_on(stop.next());
        eprintln!("testbed: {signal}; removing everything");
        drop(bed);
        Ok(())
    });
    let _ = std::fs::remove_file(files.state());
    let _ = std::fs::remove_file(files.guide());
    let _ = std::fs::remove_file(files.pid());
    if served.is_ok() {
        let _ = std::fs::remove_dir_all(dir);
    }
    served
}

/// The signals that stop the server.
struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Stop {
    fn listen() -> std::io::Result<Stop> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Stop {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// Writes `text` to `path` whole (readers never see it half written), readable by everyone.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let staged = path.with_extension("new");
    crate::cluster::write_readable(&staged, text)?;
    std::fs::rename(&staged, path)?;
    Ok(())
}

/// The standing test bed, used from another process (the demo): its state, its workstation
/// (left alone on drop) and its user.
pub struct Attached {
    /// What the server made.
    pub state: State,
    /// Its workstation.
    pub ws: Workstation,
}

impl Attached {
    /// Attaches to the test bed whose state is in `dir`; fails with what to do when none is up.
    pub fn load(dir: &Path) -> anyhow::Result<Attached> {
        let files = Files(dir);
        let (Some(_), Some(state)) = (files.running(), files.read_state()) else {
            bail!("the test bed is not up; start it with `sudo scripts/testbed up`");
        };
        let ws = Workstation::attach(&state.workstation, &state.scratch)?;
        Ok(Attached { state, ws })
    }

    /// The user who runs erlbridge.
    pub fn user(&self) -> &User {
        &self.state.user
    }
}
