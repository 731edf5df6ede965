//! The `remsh` subcommand: bridge, then attach a remote shell to a pod node from a hidden
//! local node ([`crate::local`]) on this terminal: `iex --remsh` when the pod's node runs
//! Elixir, else `erl -remsh` (`--iex`/`--erl` choose). The cookie never reaches a command
//! line. The terminal is restored however the shell ends, and the bridge ends with it, with
//! the shell's exit code; Ctrl-C stays the shell's.

use crate::cli::{RemshArgs, exit};
use crate::local::{Interrupt, LocalNode, find_on_path, run_beside};
use crate::output::{self, Failure, Output};
use crate::terminal::TerminalGuard;
use crate::up::{Up, bring_up, ready_event};

/// The shell's command line for attaching `local` to `node`.
pub fn shell_argv(iex: bool, local: &str, node: &str) -> Vec<String> {
    let argv: &[&str] = if iex {
        &["iex", "--name", local, "--hidden", "--remsh", node]
    } else {
        &["erl", "-name", local, "-hidden", "-remsh", node]
    };
    argv.iter().map(|s| (*s).to_owned()).collect()
}

/// Whether `node` has IEx, asked from a short-lived hidden local node.
async fn runs_elixir(node: &str, local: &LocalNode) -> Result<bool, String> {
    let probe = format!("erlbridge-probe-{}@127.0.0.1", std::process::id());
    let ask = format!(
        "io:format(\"~p~n\", [catch erpc:call('{node}', code, which, ['Elixir.IEx'], 10000)]), \
         halt()."
    );
    let answer = local
        .command("erl")
        .args([
            "-name", &probe, "-hidden", "-noshell", "-noinput", "-eval", &ask,
        ])
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

/// Which shell to start: `--iex`/`--erl`, else what the pod's node runs, as far as this host
/// has it.
async fn choose_shell(args: &RemshArgs, node: &str, local: &LocalNode) -> Result<bool, Failure> {
    let fail = |m: &str| Failure::new(exit::OTHER, "local", m.to_owned());
    let (has_iex, has_erl) = (find_on_path("iex").is_some(), find_on_path("erl").is_some());
    if !has_erl {
        return Err(fail(
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
            Err(fail(
                "--iex: iex is not on PATH; install Elixir, or use --erl",
            ))
        };
    }
    let elixir = runs_elixir(node, local)
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
    let local = LocalNode::new(&mut bridge, &args.bridge, cookie.as_deref(), "remsh")?;
    let iex = choose_shell(&args, &node, &local).await?;
    let argv = shell_argv(iex, local.name(), &node);
    match output {
        Output::Json => output::emit(&ready_event(&ready)),
        Output::Text => eprintln!(
            "erlbridge: attaching {} to {node} from the hidden local node {} (mode {}); \
             the bridge ends when the shell does",
            argv[0],
            local.name(),
            ready.mode
        ),
    }
    // The shell runs on the pod's node: its q() stops the pod, not this terminal's node.
    eprintln!(
        "erlbridge: careful: in this shell q(), init:stop() and System.halt() stop the POD's \
         node {node}; leave with Ctrl-G then q (or Ctrl-C then a), which ends only this shell"
    );
    let terminal = TerminalGuard::save();
    let shell = local
        .command(&argv[0])
        .args(&argv[1..])
        .spawn()
        .map_err(|e| {
            Failure::new(
                exit::OTHER,
                "local",
                format!("cannot start {}: {e}", argv[0]),
            )
        })?;
    // Ctrl-C belongs to the shell (its BREAK menu).
    let code = run_beside(
        &mut bridge,
        output,
        shell,
        Interrupt::Node,
        std::future::pending(),
    )
    .await;
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
}
