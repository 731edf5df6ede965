//! The `observer` subcommand: OTP's graphical observer showing a pod's node. On OTP 26+ that
//! is `observer:start(Node)`; OTP 25 has no such call, so the hidden local node
//! ([`crate::local`]) starts observer and switches it to the pod's node through its own Nodes
//! menu, as a person would, which titles the window "Observer - NODE" and moves every tab to
//! the node. Before any window opens: a display, observer and wx here, runtime_tools on the
//! node, each missing one a clear failure with its fix. Closing the window ends the bridge.

use crate::cli::{ObserverArgs, exit};
use crate::local::{Interrupt, outcome, run_beside, spawn};
use crate::look::{Looking, one_node};
use crate::output::{Failure, Output};

/// The local node's script (`-eval`): observer, switched to the node, until its window closes.
const SCRIPT: &str = include_str!("../erlang/observer.eval");

/// A display for the window, or the failure that says what to do instead.
fn display() -> Result<(), Failure> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("DISPLAY") || set("WAYLAND_DISPLAY") {
        return Ok(());
    }
    Err(Failure::new(
        exit::LOCAL_LACKS,
        "local_lacks",
        "observer opens a window, and there is no display here (DISPLAY and WAYLAND_DISPLAY \
         are unset); run it in a desktop session or with ssh -X, or use `erlbridge top TARGET` \
         in this terminal",
    ))
}

/// Runs `erlbridge observer`; returns the process's exit code.
pub async fn run(args: ObserverArgs) -> Result<u8, Failure> {
    display()?;
    let Looking {
        mut bridge,
        ready,
        node,
        how,
        local,
    } = one_node(&args.bridge, args.choice.pod.as_deref(), "observer").await?;
    let output = args.bridge.output;
    if output == Output::Text {
        eprintln!(
            "erlbridge: OTP's observer for {} ({how}), from the hidden local node {} (mode \
             {}): its window opens once the node is found to have runtime_tools, and closing \
             it ends the bridge. Mind the node: the Processes tab walks every process of it at \
             each refresh (every 10 s).",
            node.node,
            local.name(),
            ready.mode
        );
    }
    let child = spawn(
        local
            .script(SCRIPT, &[("EB_NODE", node.node.clone())])
            .stdout(std::process::Stdio::null()),
    )?;
    let code = run_beside(
        &mut bridge,
        output,
        child,
        Interrupt::Both,
        std::future::pending(),
    )
    .await;
    outcome(code, &node.node)
}
