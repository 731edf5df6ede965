//! Network namespaces that remove themselves, with everything running in them.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

/// A named network namespace (`ip netns`). Dropping it kills every process inside and
/// deletes it, unless it was only [attached](Netns::attach) to.
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing with its stderr when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let output = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Netns {
    /// Creates a namespace named `eb-<role>-<pid>-<n>`, unique across parallel tests, with
    /// its loopback up.
    pub fn create(role: &str) -> anyhow::Result<Netns> {
        let name = format!(
            "eb-{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name, owned: true };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace another process made and will remove (the standing test bed's): dropping
    /// this leaves it alone.
    pub fn attach(name: &str) -> anyhow::Result<Netns> {
        if !std::path::Path::new("/run/netns").join(name).exists() {
            bail!("there is no network namespace {name}");
        }
        Ok(Netns {
            name: name.to_owned(),
            owned: false,
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `argv` inside the namespace.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    /// Runs `argv` inside the namespace and returns its stdout.
    pub fn run(&self, argv: &[&str]) -> anyhow::Result<String> {
        run(&mut self.command(argv))
    }

    /// Runs an nft script inside the namespace.
    pub fn nft(&self, script: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut child = self
            .command(&["nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("cannot run nft")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(script.as_bytes())?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!("nft failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }

    /// The pids of every process in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        run(Command::new("ip").args(["netns", "pids", &self.name]))
            .map(|out| {
                out.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            remove(&self.name);
        }
    }
}

/// Kills every process in namespace `name` and deletes it.
pub fn remove(name: &str) {
    let ns = Netns {
        name: name.to_owned(),
        owned: false,
    };
    for _ in 0..50 {
        let pids = ns.pids();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = run(Command::new("ip").args(["netns", "del", name]));
}
