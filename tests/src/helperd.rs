//! erlbridge-helperd running as root in a workstation, with a configuration of the test's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::Signal;

use crate::bins::Bins;
use crate::process::Spawned;
use crate::user::ACCESS_GID;
use crate::workstation::Workstation;

/// A running helper. Killed when dropped (its namespace's removal finishes any leftovers).
#[derive(Debug)]
pub struct Helperd {
    process: Option<Spawned>,
    /// The socket it listens on.
    pub socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    bin: String,
    probe: String,
}

impl Helperd {
    /// Writes a configuration (access group [`ACCESS_GID`], a socket in the scratch directory,
    /// then `extra` lines) and starts the helper; returns once it answers.
    pub fn start(ws: &Workstation, bins: &Bins, extra: &str) -> anyhow::Result<Helperd> {
        let socket = ws.scratch().join("helper.sock");
        let config = ws.scratch().join("helperd.toml");
        std::fs::write(
            &config,
            format!(
                "group = {ACCESS_GID}\nsocket = {:?}\n{extra}\n",
                socket.display()
            ),
        )?;
        let mut helperd = Helperd {
            process: None,
            socket,
            config,
            log: ws.scratch().join("helperd.log"),
            bin: bins.path("erlbridge-helperd"),
            probe: bins.path("helper-probe"),
        };
        helperd.restart(ws)?;
        Ok(helperd)
    }

    /// Starts the helper again (after a kill) and waits until it answers.
    pub fn restart(&mut self, ws: &Workstation) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = ws
            .ns
            .command(&[&self.bin, "--config", &self.config.display().to_string()]);
        cmd.stderr(log).env("RUST_LOG", "info");
        self.process = Some(Spawned::start(cmd)?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let answered = ws
                .ns
                .command(&[
                    &self.probe,
                    "--socket",
                    &self.socket.display().to_string(),
                    "whoami",
                ])
                .output()
                .is_ok_and(|o| o.status.success());
            if answered {
                return Ok(());
            }
            if let Some(p) = self.process.as_mut()
                && let Ok(code) = p.wait_exit(Duration::ZERO)
            {
                bail!(
                    "erlbridge-helperd exited with {code}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "erlbridge-helperd did not answer within 10 s; its log:\n{}",
            self.log()
        )
    }

    /// The helper's pid.
    pub fn pid(&self) -> Option<i32> {
        self.process.as_ref().map(Spawned::pid)
    }

    /// Sends `signal` and waits for the helper to exit; returns its exit code (or -signal).
    pub fn stop(&mut self, signal: Signal) -> anyhow::Result<i32> {
        let Some(mut process) = self.process.take() else {
            bail!("helperd is not running");
        };
        process.signal(signal);
        process.wait_exit(Duration::from_secs(10))
    }

    /// Everything the helper logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
