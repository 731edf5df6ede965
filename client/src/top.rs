//! The `top` subcommand: a process top of a pod's node in this terminal, OTP's etop in text
//! mode run by the hidden local node ([`crate::local`]), with tracing off (etop's default
//! tracing takes over the node's `dbg` and dials back to this host). `q` or Ctrl-C leaves;
//! the terminal is restored and the bridge ends.

use crate::cli::{TopArgs, exit};
use crate::local::{Interrupt, outcome, run_beside, spawn};
use crate::look::{Looking, one_node};
use crate::output::{Failure, Output};
use crate::terminal::{TerminalGuard, key};

/// The local node's script (`-eval`): etop on the node, until stopped or the node goes down.
const SCRIPT: &str = include_str!("../erlang/top.eval");

/// Runs `erlbridge top`; returns the process's exit code.
pub async fn run(args: TopArgs) -> Result<u8, Failure> {
    if args.bridge.output == Output::Json {
        return Err(Failure::new(
            exit::USAGE,
            "usage",
            "top draws on the terminal, so it has no --output json; for scripts, `erlbridge \
             eval TARGET EXPR --output json` answers from every node",
        ));
    }
    let Looking {
        mut bridge,
        node,
        how,
        local,
        ..
    } = one_node(&args.bridge, args.choice.pod.as_deref(), "top").await?;
    let output = args.bridge.output;
    if output == Output::Text {
        eprintln!(
            "erlbridge: top of {} ({how}), by {}, every {} s; q or Ctrl-C leaves. Mind the \
             node: each refresh walks every process of it.",
            node.node,
            args.sort.etop(),
            args.interval
        );
    }
    let terminal = TerminalGuard::save();
    terminal.keys_at_once();
    let env = [
        ("EB_NODE", node.node.clone()),
        ("EB_SORT", args.sort.etop().to_owned()),
        ("EB_INTERVAL", args.interval.to_string()),
        ("EB_LINES", args.lines.to_string()),
    ];
    let child = spawn(&mut local.script(SCRIPT, &env))?;
    let code = run_beside(&mut bridge, output, child, Interrupt::Both, key(b'q')).await;
    drop(terminal);
    outcome(code, &node.node)
}
