//! The `remsh` subcommand: bridge, then attach a remote shell to a pod node from a generated,
//! hidden local node (`iex --remsh`, or `erl -remsh` without iex or with `--erl`), on this
//! terminal. The cookie reaches the shell through ERL_FLAGS, not its command line (which every
//! user can read in `ps`). The bridge ends when the shell exits, with the shell's exit code.

use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{RemshArgs, exit};
use crate::output::{self, Failure, Output};
use crate::up::{Up, bring_up};

/// Where `program` is on PATH, as an executable file.
pub fn find_on_path(program: &str) -> Option<std::path::PathBuf> {
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

/// Runs `erlbridge remsh`; returns the process's exit code.
pub async fn run(args: RemshArgs) -> Result<u8, Failure> {
    let output = args.bridge.output;
    let Up {
        mut bridge, cookie, ..
    } = bring_up(&args.bridge).await?;
    let Some(cookie) = cookie else {
        return Err(Failure::new(
            exit::NOT_FOUND,
            "cookie_not_found",
            "no cookie is known for the shell; say where it is with --cookie-from secret/NAME[:KEY] or --cookie-from env",
        ));
    };
    let nodes = bridge.nodes();
    let node = match &args.node {
        Some(wanted) if nodes.iter().any(|n| &n.node == wanted) => wanted.clone(),
        Some(wanted) => {
            let known: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
            return Err(Failure::new(
                exit::NOT_FOUND,
                "node_not_found",
                format!(
                    "--node {wanted} is not bridged; bridged: {}",
                    known.join(", ")
                ),
            ));
        }
        None => nodes.first().map(|n| n.node.clone()).unwrap_or_default(),
    };
    let iex = !args.erl && find_on_path("iex").is_some();
    if !iex && find_on_path("erl").is_none() {
        return Err(Failure::new(
            exit::OTHER,
            "local",
            "neither iex nor erl is on PATH; install Erlang/Elixir",
        ));
    }
    let local = format!("erlbridge{}@127.0.0.1", std::process::id());
    let argv = shell_argv(iex, &local, &node);
    if output == Output::Text {
        eprintln!("erlbridge: {} (hidden) attaching to {node}", argv[0]);
    }
    // The shell runs on the pod's node: its q() stops the pod, not this terminal's node.
    eprintln!(
        "erlbridge: careful: in this shell q(), init:stop() and System.halt() stop the POD's \
         node {node}; leave with Ctrl-G then q (or Ctrl-C then a), which ends only this shell"
    );
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("ERL_FLAGS", format!("-setcookie {cookie}"))
        .kill_on_drop(true);
    let ready = bridge.ready();
    if let Some(path) = &ready.inetrc {
        cmd.env("ERL_INETRC", path);
    }
    if let Some(flags) = &ready.erl_flags {
        cmd.env("ERL_AFLAGS", crate::up::with_erl_aflags(flags));
    }
    let mut shell = cmd.spawn().map_err(|e| {
        Failure::new(
            exit::OTHER,
            "local",
            format!("cannot start {}: {e}", argv[0]),
        )
    })?;
    // Ctrl-C belongs to the shell (its BREAK menu): erlbridge takes SIGINT and ignores it, and
    // stops early only on SIGTERM.
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return Err(Failure::new(exit::OTHER, "local", "cannot handle signals"));
    };
    let heal = async {
        bridge.run(|change| output::change(output, &change)).await;
        // The watch ended for good: keep the bridge as it is.
        std::future::pending::<()>().await
    };
    tokio::pin!(heal);
    loop {
        tokio::select! {
            status = shell.wait() => {
                return Ok(status.ok().and_then(|s| s.code()).and_then(|c| u8::try_from(c).ok()).unwrap_or(exit::OTHER));
            }
            () = &mut heal => {}
            _ = int.recv() => {}
            _ = term.recv() => return Ok(128 + 15),
        }
    }
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
}
