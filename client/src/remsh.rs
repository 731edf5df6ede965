//! The `remsh` subcommand: bridge, then attach a remote shell to a pod node from a generated,
//! hidden local node on this terminal: `iex --remsh` when the pod's node runs Elixir, else
//! `erl -remsh` (`--iex`/`--erl` choose). The cookie never reaches a command line, which every
//! local user can read in `ps`: the shell's node reads it from a `.erlang.cookie` (0400) in a
//! private home in erlbridge's runtime directory. The terminal is restored however the shell
//! ends, and the bridge ends with it, with the shell's exit code.

use std::os::fd::AsFd as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::termios::{self, SetArg, Termios};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

use crate::bridge::Ready;
use crate::cli::{RemshArgs, exit};
use crate::output::{self, Failure, Output};
use crate::up::{Up, bring_up, local_name, ready_event, with_erl_aflags};

/// How long the shell may take to end after erlbridge passed it SIGTERM or SIGHUP.
const SHELL_GRACE: Duration = Duration::from_secs(3);

/// Where `program` is on PATH, as an executable file.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
}

/// The shell's command line for attaching `local` to `node`.
pub fn shell_argv(iex: bool, local: &str, node: &str) -> Vec<String> {
    let argv: &[&str] = if iex {
        &["iex", "--name", local, "--hidden", "--remsh", node]
    } else {
        &["erl", "-name", local, "-hidden", "-remsh", node]
    };
    argv.iter().map(|s| (*s).to_owned()).collect()
}

/// A home of the shell's own holding `.erlang.cookie` (0400), so no command line carries the
/// cookie. It lives in the runtime directory and goes with it.
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

/// A local Erlang command with what reaching the pods takes: the private home (the cookie),
/// and the inetrc file or the epmd module's flags.
fn erlang_command(program: &str, home: &Path, ready: &Ready) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("HOME", home);
    if let Some(path) = &ready.inetrc {
        cmd.env("ERL_INETRC", path);
    }
    if let Some(flags) = &ready.erl_flags {
        cmd.env("ERL_AFLAGS", with_erl_aflags(flags));
    }
    cmd
}

/// Whether `node` has IEx, asked from a short-lived hidden local node.
async fn runs_elixir(node: &str, home: &Path, ready: &Ready) -> Result<bool, String> {
    let probe = format!("erlbridge-probe-{}@127.0.0.1", std::process::id());
    let ask = format!(
        "io:format(\"~p~n\", [catch erpc:call('{node}', code, which, ['Elixir.IEx'], 10000)]), \
         halt()."
    );
    let answer = erlang_command("erl", home, ready)
        .args([
            "-name", &probe, "-hidden", "-noshell", "-noinput", "-eval", &ask,
        ])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run erl: {e}"))?;
    let text = String::from_utf8_lossy(&answer.stdout);
    let line = text.lines().last().unwrap_or("").trim();
    match line {
        "non_existing" => Ok(false),
        line if line.starts_with('"') => Ok(true),
        line => Err(format!(
            "a local node could not reach {node} ({line}): is the cookie right? \
             (--cookie-from secret/NAME or env)"
        )),
    }
}

/// The terminal's settings, put back when dropped: a shell killed mid-way leaves it raw.
struct TerminalGuard(Option<Termios>);

impl TerminalGuard {
    fn save() -> TerminalGuard {
        TerminalGuard(termios::tcgetattr(std::io::stdin().as_fd()).ok())
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// Which shell to start: `--iex`/`--erl`, else what the pod's node runs, as far as this host
/// has it.
async fn choose_shell(
    args: &RemshArgs,
    node: &str,
    home: &Path,
    ready: &Ready,
) -> Result<bool, Failure> {
    let local = |m: &str| Failure::new(exit::OTHER, "local", m.to_owned());
    let (has_iex, has_erl) = (find_on_path("iex").is_some(), find_on_path("erl").is_some());
    if !has_erl {
        return Err(local(
            "neither iex nor erl is on PATH; install Erlang (apt install erlang-base) or Elixir",
        ));
    }
    if args.erl {
        return Ok(false);
    }
    if args.iex {
        return if has_iex {
            Ok(true)
        } else {
            Err(local(
                "--iex: iex is not on PATH; install Elixir, or use --erl",
            ))
        };
    }
    let elixir = runs_elixir(node, home, ready)
        .await
        .map_err(|m| Failure::new(exit::NOT_READY, "node_unreachable", m))?;
    if elixir && !has_iex {
        output::warn(
            args.bridge.output,
            &format!("{node} runs Elixir, but iex is not on PATH here: attaching erl -remsh"),
        );
    }
    Ok(elixir && has_iex)
}

/// Runs `erlbridge remsh`; returns the process's exit code.
pub async fn run(args: RemshArgs) -> Result<u8, Failure> {
    let output = args.bridge.output;
    let Up {
        mut bridge, cookie, ..
    } = bring_up(&args.bridge).await?;
    let ready = bridge.ready();
    let Some(cookie) = cookie else {
        return Err(Failure::new(
            exit::NOT_FOUND,
            "cookie_not_found",
            "no cookie is known for the shell; say where it is with --cookie-from secret/NAME[:KEY] or --cookie-from env",
        ));
    };
    let node = match &args.node {
        Some(wanted) if ready.nodes.iter().any(|n| &n.node == wanted) => wanted.clone(),
        Some(wanted) => {
            let known: Vec<&str> = ready.nodes.iter().map(|n| n.node.as_str()).collect();
            return Err(Failure::new(
                exit::NOT_FOUND,
                "node_not_found",
                format!(
                    "--node {wanted} is not bridged; bridged: {}",
                    known.join(", ")
                ),
            ));
        }
        None => ready
            .nodes
            .first()
            .map(|n| n.node.clone())
            .unwrap_or_default(),
    };
    let runtime = bridge
        .runtime_dir()
        .map_err(|e| Failure::of(exit::OTHER, "local", &e))?;
    let home = private_home(runtime, &cookie).map_err(|e| {
        Failure::new(
            exit::OTHER,
            "local",
            format!("cannot write the shell's cookie file: {e}"),
        )
    })?;
    let iex = choose_shell(&args, &node, &home, &ready).await?;
    let local = local_name(&args.bridge, "remsh");
    let argv = shell_argv(iex, &local, &node);
    match output {
        Output::Json => output::emit(&ready_event(&ready)),
        Output::Text => eprintln!(
            "erlbridge: attaching {} to {node} from the hidden local node {local} (mode {}); \
             the bridge ends when the shell does",
            argv[0], ready.mode
        ),
    }
    // The shell runs on the pod's node: its q() stops the pod, not this terminal's node.
    eprintln!(
        "erlbridge: careful: in this shell q(), init:stop() and System.halt() stop the POD's \
         node {node}; leave with Ctrl-G then q (or Ctrl-C then a), which ends only this shell"
    );
    // Ctrl-C belongs to the shell (its BREAK menu): erlbridge takes SIGINT and ignores it.
    // SIGTERM and SIGHUP (a closed terminal) end the shell. Taken before the shell starts, so
    // no signal in between ends erlbridge and leaves the shell behind.
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return Err(Failure::new(exit::OTHER, "local", "cannot handle signals"));
    };
    let terminal = TerminalGuard::save();
    let mut shell = erlang_command(&argv[0], &home, &ready)
        .args(&argv[1..])
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Failure::new(
                exit::OTHER,
                "local",
                format!("cannot start {}: {e}", argv[0]),
            )
        })?;
    let heal = async {
        bridge.run(|change| output::change(output, &change)).await;
        // The watch ended for good: keep the bridge as it is.
        std::future::pending::<()>().await
    };
    tokio::pin!(heal);
    let code = loop {
        let ended_by = tokio::select! {
            status = shell.wait() => {
                break status.map_or(exit::OTHER, crate::up::shell_code);
            }
            () = &mut heal => continue,
            _ = int.recv() => continue,
            _ = term.recv() => nix::sys::signal::Signal::SIGTERM,
            _ = hup.recv() => nix::sys::signal::Signal::SIGHUP,
        };
        if let Some(pid) = shell.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), ended_by);
        }
        if tokio::time::timeout(SHELL_GRACE, shell.wait())
            .await
            .is_err()
        {
            let _ = shell.kill().await;
        }
        break 128 + ended_by as u8;
    };
    drop(terminal);
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shells_are_hidden_and_carry_no_cookie() {
        for iex in [true, false] {
            let argv = shell_argv(iex, "me@127.0.0.1", "app@10.0.0.1");
            assert!(
                argv.iter().any(|a| a == "--hidden" || a == "-hidden"),
                "{argv:?}"
            );
            assert!(!argv.iter().any(|a| a.contains("cookie")), "{argv:?}");
        }
    }

    #[test]
    fn the_private_cookie_is_the_owners_only() {
        let runtime = tempfile::tempdir().unwrap();
        let home = private_home(runtime.path(), "c00kie").unwrap();
        let file = home.join(".erlang.cookie");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "c00kie");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&home), mode(&file)), (0o700, 0o400));
        // A second shell of the same run rewrites it.
        private_home(runtime.path(), "other").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "other");
    }
}
