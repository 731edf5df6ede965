//! erlbridge-helperd running as root in a workstation, with a configuration of the test's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::Signal;

use crate::bins::Bins;
use crate::process::Spawned;
use crate::user::ACCESS_GID;
use crate::workstation::Workstation;

/// helper-probe's arguments for the refused side of a connection flood: 20,000 connection
/// attempts, 200 at a time, each making one call the policy refuses.
pub const REFUSED_STORM: &[&str] = &[
    "storm",
    "--connections",
    "20000",
    "--parallel",
    "200",
    "--call",
    "list",
];

/// helper-probe's arguments for the allowed side of a connection flood: 2,000 connection
/// attempts, 100 at a time, each making one call and held 200 ms, so the cap per uid is hit.
pub const ALLOWED_STORM: &[&str] = &[
    "storm",
    "--connections",
    "2000",
    "--parallel",
    "100",
    "--hold-ms",
    "200",
    "--call",
    "whoami",
];

/// The capability sets of a process that keeps only CAP_NET_ADMIN, as /proc/PID/status shows
/// them.
pub const NET_ADMIN_ONLY: &str = "0000000000001000";

/// A field of a /proc/PID/status text (`CapEff:`, `NoNewPrivs:`), trimmed; empty when absent.
pub fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or_default()
        .to_owned()
}

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
    launch: Launch,
}

/// How the helper is started.
#[derive(Debug, Clone)]
enum Launch {
    /// By itself: it binds its socket.
    Plain,
    /// Through `systemd-socket-activate`, which binds the socket and passes it.
    Activated,
    /// Through `sh -c`, running this shell text first (redirections, exports) in the shell
    /// that then execs the helper: what the helper inherits from a careless parent.
    Shell(String),
}

impl Helperd {
    /// Writes a configuration (access group [`ACCESS_GID`], a socket in the scratch directory,
    /// then `extra` lines) and starts the helper; returns once it answers.
    pub fn start(ws: &Workstation, bins: &Bins, extra: &str) -> anyhow::Result<Helperd> {
        Helperd::launch(ws, bins, extra, Launch::Plain)
    }

    /// Like [`Helperd::start`], from a shell that first runs `prelude` (such as `exec 7<FILE;
    /// export X=Y;`) and then execs the helper, which inherits what the prelude left.
    pub fn start_from_shell(
        ws: &Workstation,
        bins: &Bins,
        extra: &str,
        prelude: &str,
    ) -> anyhow::Result<Helperd> {
        Helperd::launch(ws, bins, extra, Launch::Shell(prelude.to_owned()))
    }

    /// Like [`Helperd::start`], but socket-activated the way systemd does it:
    /// `systemd-socket-activate` binds the socket and starts helperd on the first connection,
    /// passing the socket as fd 3 with LISTEN_FDS and LISTEN_PID.
    pub fn start_activated(ws: &Workstation, bins: &Bins, extra: &str) -> anyhow::Result<Helperd> {
        Helperd::launch(ws, bins, extra, Launch::Activated)
    }

    fn launch(
        ws: &Workstation,
        bins: &Bins,
        extra: &str,
        launch: Launch,
    ) -> anyhow::Result<Helperd> {
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
            launch,
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
        let config = self.config.display().to_string();
        let mut cmd = match &self.launch {
            Launch::Plain => ws.ns.command(&[&self.bin, "--config", &config]),
            Launch::Activated => {
                let socket = self.socket.display().to_string();
                ws.ns.command(&[
                    "systemd-socket-activate",
                    "-l",
                    &socket,
                    "-E",
                    "RUST_LOG",
                    &self.bin,
                    "--config",
                    &config,
                ])
            }
            Launch::Shell(prelude) => {
                let script = format!("{prelude}\nexec \"$0\" \"$@\"");
                ws.ns
                    .command(&["sh", "-c", &script, &self.bin, "--config", &config])
            }
        };
        cmd.stderr(log).env("RUST_LOG", "info");
        self.process = Some(Spawned::start(cmd)?);
        if let Launch::Activated = self.launch {
            self.set_socket_like_the_unit()?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // An answer is what counts, even a gRPC status (a helper that could not start).
            let answered = ws
                .ns
                .command(&[
                    &self.probe,
                    "--socket",
                    &self.socket.display().to_string(),
                    "whoami",
                ])
                .output()
                .is_ok_and(|o| {
                    o.status.success() || String::from_utf8_lossy(&o.stdout).contains("\"code\"")
                });
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

    /// What erlbridge-helperd.socket does to the socket: owner root, group erlbridge (the
    /// tests' access group), mode 0660.
    fn set_socket_like_the_unit(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.socket.exists() {
            if Instant::now() > deadline {
                bail!(
                    "systemd-socket-activate did not bind {}",
                    self.socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::os::unix::fs::chown(&self.socket, Some(0), Some(ACCESS_GID))?;
        std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o660))?;
        Ok(())
    }

    /// The helper's pid (`ip netns exec` and `sh -c` exec it, so it is the spawned pid).
    pub fn pid(&self) -> Option<i32> {
        self.process.as_ref().map(Spawned::pid)
    }

    /// How many descriptors the helper has open.
    pub fn open_descriptors(&self) -> usize {
        self.pid()
            .and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
            .map_or(0, Iterator::count)
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

/// Opens a helper session on `client`: its id, and the stream whose life is the session's.
pub async fn open_session(
    client: &mut erlbridge_proto::v1::helper_client::HelperClient<tonic::transport::Channel>,
    label: &str,
) -> Result<(u64, tonic::Streaming<erlbridge_proto::v1::SessionEvent>), tonic::Status> {
    use erlbridge_proto::v1 as pb;
    let mut events = client
        .open_session(pb::OpenSessionRequest {
            label: label.to_owned(),
        })
        .await?
        .into_inner();
    match events.message().await? {
        Some(pb::SessionEvent {
            event: Some(pb::session_event::Event::Opened(opened)),
        }) => Ok((opened.session_id, events)),
        _ => Err(tonic::Status::internal(
            "the helper did not open the session",
        )),
    }
}
