//! A real systemd as PID 1, in a container: a Debian bookworm root file system built once per
//! machine with debootstrap and cached under /var/cache/erlbridge-test (keyed on its recipe),
//! booted with systemd-nspawn on a throwaway overlay, so the cache stays clean. Dropping the
//! container kills everything in it and removes its overlay, even when a test fails.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netns::run;
use crate::process::Spawned;

/// Where cached root file systems live, outside any work tree.
pub const CACHE: &str = "/var/cache/erlbridge-test";
/// The Debian release of the container.
const SUITE: &str = "bookworm";
/// What the container has besides the minimal base: systemd as init, D-Bus for systemctl, the
/// package's dependencies.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "nftables",
    "iproute2",
    "passwd",
];
/// PATH inside the container.
const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How the root file system is made; its hash names the cache entry, so a change rebuilds it.
fn recipe() -> String {
    format!(
        "debootstrap --variant=minbase --include={} {SUITE}\n",
        PACKAGES.join(",")
    )
}

/// The cached root file system, built first if this machine has none for the current recipe
/// (a few minutes, from the Debian mirror apt uses). Concurrent callers wait for one build.
pub fn rootfs() -> anyhow::Result<PathBuf> {
    let recipe = recipe();
    let key = sha256(&recipe)?;
    let path = Path::new(CACHE).join(format!("rootfs-{}", &key[..16]));
    if path.join("usr/lib/systemd/systemd").exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(CACHE)?;
    let lock = std::fs::File::create(path.with_extension("lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("lock the root file system cache")?;
    if path.join("usr/lib/systemd/systemd").exists() {
        return Ok(path);
    }
    let partial = path.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    let mirror = mirror();
    eprintln!(
        "building the container's root file system once for this machine ({recipe:?} from \
         {mirror}) into {}",
        path.display()
    );
    let mut args: Vec<String> = recipe
        .split_whitespace()
        .skip(1)
        .map(String::from)
        .collect();
    args.push(partial.display().to_string());
    args.push(mirror);
    run(Command::new("debootstrap").args(&args))
        .context("debootstrap failed (is Debian's mirror reachable?)")?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// The SHA-256 of `text`, hex (sha256sum's).
pub(crate) fn sha256(text: &str) -> anyhow::Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("sha256sum")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let hash = String::from_utf8_lossy(&out.stdout);
    Ok(hash
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// The Debian mirror the host's apt uses for the suite, or Debian's own.
fn mirror() -> String {
    let sources = std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .chain([PathBuf::from("/etc/apt/sources.list")])
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect::<Vec<_>>()
        .join("\n");
    // deb822 (`URIs: ...` then `Suites: bookworm ...`) or one-line (`deb URI bookworm main`).
    let mut uri = None;
    for line in sources.lines().map(str::trim) {
        if let Some(u) = line.strip_prefix("URIs:") {
            uri = u.split_whitespace().next();
        } else if let Some(suites) = line.strip_prefix("Suites:")
            && suites.split_whitespace().any(|s| s == SUITE)
            && let Some(u) = uri
        {
            return u.to_owned();
        } else if let ["deb", u, suite, ..] = line.split_whitespace().collect::<Vec<_>>()[..]
            && suite == SUITE
        {
            return u.to_owned();
        }
    }
    "http://deb.debian.org/debian".to_owned()
}

/// A container: its overlay, and once booted, systemd-nspawn and the container's PID 1.
#[derive(Debug)]
pub struct Container {
    scratch: tempfile::TempDir,
    merged: PathBuf,
    nspawn: Option<Child>,
    init: Option<i32>,
    spawned: Vec<Spawned>,
}

impl Container {
    /// A fresh overlay of the cached root file system, not booted yet.
    pub fn prepare() -> anyhow::Result<Container> {
        let lower = rootfs()?;
        let scratch = tempfile::Builder::new().prefix("eb-container-").tempdir()?;
        let (upper, work, merged) = (
            scratch.path().join("upper"),
            scratch.path().join("work"),
            scratch.path().join("root"),
        );
        for dir in [&upper, &work, &merged] {
            std::fs::create_dir(dir)?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&merged))?;
        Ok(Container {
            scratch,
            merged,
            nspawn: None,
            init: None,
            spawned: Vec::new(),
        })
    }

    /// The container's root directory, as the host sees it (to copy files in).
    pub fn root(&self) -> &Path {
        &self.merged
    }

    /// Runs `argv` in the container's tree without booting it (chroot): a host where systemd
    /// does not run. Returns (exit code, stdout and stderr).
    pub fn chroot(&self, argv: &[&str]) -> anyhow::Result<(i32, String)> {
        let out = Command::new("chroot")
            .arg(&self.merged)
            .args(["env", "-i", PATH])
            .args(argv)
            .output()
            .context("chroot")?;
        Ok(outcome(&out))
    }

    /// Boots systemd in the container, with its own network namespace, and waits until it
    /// has started everything it starts at boot.
    pub fn boot(&mut self) -> anyhow::Result<()> {
        let machine = format!("eb-{}", std::process::id());
        let log = std::fs::File::create(self.scratch.path().join("console.log"))?;
        let nspawn = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(&self.merged)
            .args([
                "--boot",
                "--private-network",
                "--register=no",
                "--keep-unit",
                "--console=passive",
                &format!("--machine={machine}"),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("systemd-nspawn")?;
        let nspawn_pid = nspawn.id();
        self.nspawn = Some(nspawn);
        let deadline = Instant::now() + Duration::from_secs(60);
        self.init = loop {
            if let Some(pid) = children(nspawn_pid).into_iter().find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "systemd")
            }) {
                break Some(pid);
            }
            if Instant::now() > deadline {
                bail!(
                    "no systemd in the container after 60 s:\n{}",
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Until D-Bus is up, systemctl cannot say; then it waits for the boot to finish.
        loop {
            let (_, state) = self.output(&["systemctl", "is-system-running", "--wait"])?;
            if ["running", "degraded"].contains(&state.trim()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the container's systemd is {state:?}:\n{}", self.console());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the container printed on its console.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.scratch.path().join("console.log")).unwrap_or_default()
    }

    /// A command running `argv` in the booted container, with a clean environment.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.init.unwrap_or(0).to_string(), "-a"])
            .args(["env", "-i", PATH])
            .args(argv);
        cmd
    }

    /// Runs `argv` in the container: (exit code, stdout and stderr).
    pub fn output(&self, argv: &[&str]) -> anyhow::Result<(i32, String)> {
        let out = self
            .command(argv)
            .output()
            .with_context(|| format!("cannot run {argv:?} in the container"))?;
        Ok(outcome(&out))
    }

    /// Runs `argv` in the container and returns its output; fails when it fails.
    pub fn run(&self, argv: &[&str]) -> anyhow::Result<String> {
        let (code, out) = self.output(argv)?;
        if code != 0 {
            bail!("{argv:?} failed in the container ({code}): {out}");
        }
        Ok(out)
    }

    /// Starts `argv` in the container; it is killed with the container. Returns its index for
    /// [`Container::spawned`].
    pub fn spawn(&mut self, argv: &[&str]) -> anyhow::Result<usize> {
        self.spawned.push(Spawned::start(self.command(argv))?);
        Ok(self.spawned.len() - 1)
    }

    /// A process [`Container::spawn`] started.
    pub fn spawned(&mut self, index: usize) -> &mut Spawned {
        &mut self.spawned[index]
    }

    /// Kills a process [`Container::spawn`] started (nsenter forks it into the container's
    /// pid namespace, so its child is the one to kill).
    pub fn kill(&mut self, index: usize) {
        let nsenter = self.spawned[index].pid();
        for pid in children(u32::try_from(nsenter).unwrap_or(0)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A finished command's exit code (-1 when a signal ended it) and what it printed.
fn outcome(out: &std::process::Output) -> (i32, String) {
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The children of process `pid`.
fn children(pid: u32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

impl Drop for Container {
    fn drop(&mut self) {
        // Killing the container's init ends its pid namespace, so every process in it, and
        // with them its network namespace.
        if let Some(init) = self.init {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(init),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(mut nspawn) = self.nspawn.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while nspawn.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = nspawn.kill();
            let _ = nspawn.wait();
        }
        self.spawned.clear();
        for _ in 0..50 {
            if run(Command::new("umount").arg(&self.merged)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = run(Command::new("umount").arg("--lazy").arg(&self.merged));
    }
}
