//! A hidden local Erlang node attached to a bridge: what `remsh`, `observer`, `top` and `eval`
//! start on this host to act on a pod's node, all the same way. Its cookie is on no command
//! line (every local user reads those in `ps`): it reads it from a `.erlang.cookie` (0400) in
//! a private home in erlbridge's runtime directory. It gets what the bridge's mode needs (the
//! ERL_INETRC file, or the epmd module's flags), a name unique to the run, and is always
//! hidden, so the pods' cluster never counts it. [`run_beside`] runs it while the bridge keeps
//! healing, and ends the bridge with it: with its exit code, the terminal restored, signals
//! passed on.

use std::future::Future;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::bridge::{Bridge, Ready};
use crate::cli::{BridgeOptions, exit};
use crate::output::{self, Failure, Output};

/// How long the local node may take to end after erlbridge passed it a signal.
const GRACE: Duration = Duration::from_secs(3);

/// A hidden local node's private setup: its home (with the cookie), what the bridge's mode
/// needs, and its name.
#[derive(Debug, Clone)]
pub struct LocalNode {
    home: PathBuf,
    inetrc: Option<PathBuf>,
    erl_flags: Option<String>,
    name: String,
}

impl LocalNode {
    /// Sets up a local node named after `prefix` (unique to this run; `--name` names it
    /// instead) for `bridge`, whose nodes take `cookie`.
    pub fn new(
        bridge: &mut Bridge,
        options: &BridgeOptions,
        cookie: Option<&str>,
        prefix: &str,
    ) -> Result<LocalNode, Failure> {
        let Some(cookie) = cookie else {
            return Err(Failure::new(
                exit::NOT_FOUND,
                "cookie_not_found",
                "no cookie is known for the local node; say where it is with --cookie-from \
                 secret/NAME[:KEY] or --cookie-from env",
            ));
        };
        let Ready {
            inetrc, erl_flags, ..
        } = bridge.ready();
        let runtime = bridge
            .runtime_dir()
            .map_err(|e| Failure::of(exit::OTHER, "local", &e))?;
        let home = private_home(runtime, cookie).map_err(|e| {
            Failure::new(
                exit::OTHER,
                "local",
                format!("cannot write the local node's cookie file: {e}"),
            )
        })?;
        Ok(LocalNode {
            home,
            inetrc,
            erl_flags,
            name: name(options, prefix),
        })
    }

    /// Its full name (`remsh-4242@127.0.0.1`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` (erl, iex) started as this node would be: its private home, and the mode's
    /// ERL_INETRC or flags (after the user's own ERL_AFLAGS). The caller adds the name.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        // A crash dump holds the atom table, the cookie with it, in a file others may read.
        cmd.env("HOME", &self.home)
            .env("ERL_CRASH_DUMP_SECONDS", "0")
            .kill_on_drop(true);
        if let Some(path) = &self.inetrc {
            cmd.env("ERL_INETRC", path);
        }
        if let Some(flags) = &self.erl_flags {
            cmd.env("ERL_AFLAGS", with_erl_aflags(flags));
        }
        cmd
    }

    /// This node running `script` (an `-eval` expression of erlbridge's, reading its inputs
    /// from `env` with `os:getenv/1`, so nothing the user typed is ever quoted into code) with
    /// no shell and no input; Ctrl-C ends it at once (`+Bd`), and it prints Unicode.
    pub fn script(&self, script: &str, env: &[(&str, String)]) -> Command {
        let mut cmd = self.command("erl");
        cmd.args(["-name", &self.name, "-hidden", "-noshell", "-noinput"])
            .args(["+Bd", "+pc", "unicode", "-eval", script])
            .envs(env.iter().map(|(k, v)| (*k, v)));
        cmd
    }
}

/// `flags` after the user's own ERL_AFLAGS, if any.
pub fn with_erl_aflags(flags: &str) -> String {
    match std::env::var("ERL_AFLAGS") {
        Ok(own) if !own.trim().is_empty() => format!("{own} {flags}"),
        _ => flags.to_owned(),
    }
}

/// The shell's exit code for a finished command: its own, or 128+N when signal N ended it.
pub fn shell_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(exit::OTHER),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(exit::OTHER),
        (None, None) => exit::OTHER,
    }
}

/// Starts the local node `cmd` runs (erl), or says why it could not.
pub fn spawn(cmd: &mut Command) -> Result<Child, Failure> {
    cmd.spawn()
        .map_err(|e| Failure::new(exit::OTHER, "local", format!("cannot start erl: {e}")))
}

/// The local node's name: `--name` (with 127.0.0.1 as its host when it names none), else
/// `PREFIX-PID@127.0.0.1`, unique to this run.
pub fn name(options: &BridgeOptions, prefix: &str) -> String {
    match &options.name {
        Some(name) if name.contains('@') => name.clone(),
        Some(name) => format!("{name}@127.0.0.1"),
        None => format!("{prefix}-{}@127.0.0.1", std::process::id()),
    }
}

/// A home of the local node's own holding `.erlang.cookie` (0400), so no command line carries
/// the cookie. It lives in the runtime directory and goes with it.
fn private_home(runtime: &Path, cookie: &str) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    let home = runtime.join("home");
    std::fs::create_dir_all(&home)?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
    let path = home.join(".erlang.cookie");
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&path)?
        .write_all(cookie.as_bytes())?;
    Ok(home)
}

/// What the exit code of one of erlbridge's local node scripts (observer, top, eval) means
/// for `node`: 0 and a shell's signal codes as they are, the scripts' own codes as the
/// failures they stand for.
pub fn outcome(code: u8, node: &str) -> Result<u8, Failure> {
    match code {
        0 | 130 | 129 | 143 => Ok(code),
        3 => Err(Failure::new(
            exit::NOT_READY,
            "node_down",
            format!("{node} went down"),
        )),
        5 => Err(Failure::new(
            exit::NOT_READY,
            "node_unreachable",
            format!(
                "a local node could not reach {node}: is the cookie right? (--cookie-from \
                 secret/NAME or env)"
            ),
        )),
        6 => Err(Failure::new(
            exit::POD_LACKS,
            "pod_lacks",
            format!(
                "{node} cannot load observer_backend, the part of OTP's runtime_tools that \
                 observer and top call on the node (mix releases leave runtime_tools out unless \
                 asked): add :runtime_tools to extra_applications in mix.exs (or runtime_tools \
                 to the relx release's applications), deploy, and try again; `erlbridge eval` \
                 needs nothing of it"
            ),
        )),
        4 => Err(Failure::new(
            exit::OTHER,
            "local",
            format!("etop stopped watching {node} (it said why, above)"),
        )),
        10 => Err(Failure::new(
            exit::OTHER,
            "local",
            format!("the local node failed while acting on {node} (its error is above)"),
        )),
        11 => Err(Failure::new(
            exit::LOCAL_LACKS,
            "local_lacks",
            "observer could not open its window on this display: check that the display \
             (DISPLAY) is reachable, or use `erlbridge top TARGET` in a terminal",
        )),
        7 => Err(Failure::new(
            exit::LOCAL_LACKS,
            "local_lacks",
            "OTP's observer (and wx) is not installed here: apt install erlang-observer \
             (Debian, Ubuntu), or install an Erlang built with wx",
        )),
        other => Err(Failure::new(
            exit::OTHER,
            "local",
            format!("the local node ended with exit code {other}"),
        )),
    }
}

/// Where `program` is on PATH, as an executable file.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// erl on PATH, or the failure that says how to get it.
pub fn require_erl() -> Result<(), Failure> {
    match find_on_path("erl") {
        Some(_) => Ok(()),
        None => Err(Failure::new(
            exit::LOCAL_LACKS,
            "local_lacks",
            "erl is not on PATH; install Erlang (apt install erlang-base) or Elixir",
        )),
    }
}

/// What Ctrl-C (SIGINT) does while a local node runs beside the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// It is the local node's (a shell's BREAK menu): erlbridge ignores it.
    Node,
    /// It ends both: the node (which the terminal interrupted too, or erlbridge passes it
    /// on) and then the bridge.
    Both,
}

/// Runs the local node `child` while the bridge keeps healing, reporting its changes, until
/// the node ends (its exit code, as a shell gives it), `quit` completes (the node is asked to
/// end: exit 0), or a signal comes: SIGTERM and SIGHUP are passed on (128+N), SIGINT as
/// `interrupt` says (130). A node that does not end within a grace period is killed.
pub async fn run_beside(
    bridge: &mut Bridge,
    output: Output,
    mut child: Child,
    interrupt: Interrupt,
    quit: impl Future<Output = ()>,
) -> u8 {
    // Taken before anything else, so no signal in between ends erlbridge and leaves the node
    // behind.
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = child.kill().await;
        return exit::OTHER;
    };
    let heal = async {
        bridge.run(|change| output::change(output, &change)).await;
        // The watch ended for good: keep the bridge as it is.
        std::future::pending::<()>().await
    };
    tokio::pin!(heal);
    tokio::pin!(quit);
    let (pass, code) = loop {
        tokio::select! {
            status = child.wait() => {
                return status.map_or(exit::OTHER, shell_code);
            }
            () = &mut heal => {}
            () = &mut quit => break (nix::sys::signal::Signal::SIGTERM, exit::OK),
            _ = int.recv() => if interrupt == Interrupt::Both {
                break (nix::sys::signal::Signal::SIGINT, 130);
            },
            _ = term.recv() => break (nix::sys::signal::Signal::SIGTERM, 128 + 15),
            _ = hup.recv() => break (nix::sys::signal::Signal::SIGHUP, 128 + 1),
        }
    };
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), pass);
    }
    if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_private_cookie_is_the_owners_only() {
        let runtime = tempfile::tempdir().unwrap();
        let home = private_home(runtime.path(), "c00kie").unwrap();
        let file = home.join(".erlang.cookie");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "c00kie");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&home), mode(&file)), (0o700, 0o400));
        // A second node of the same run rewrites it.
        private_home(runtime.path(), "other").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "other");
    }
}
