//! What the user sees: in text mode, the node names and the exact commands to paste; in JSON
//! mode, one event object per line. Progress and warnings go to stderr.

use serde_json::json;

use crate::bridge::Bridge;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Sentences and commands for a person.
    Text,
    /// One JSON object per line, for scripts.
    Json,
}

/// The ready report.
pub fn ready(output: Output, bridge: &Bridge) -> String {
    match output {
        Output::Json => json!({
            "event": "ready",
            "nodes": bridge.nodes.iter().map(|n| json!({
                "node": n.node, "pod": n.pod, "namespace": n.namespace, "ip": n.ip.to_string(),
                "epmd_port": n.epmd_port, "dist_port": n.dist_port,
            })).collect::<Vec<_>>(),
            "inetrc": bridge.inetrc.as_ref().map(|p| p.display().to_string()),
        })
        .to_string(),
        Output::Text => ready_text(bridge),
    }
}

fn ready_text(bridge: &Bridge) -> String {
    let mut text = String::new();
    let count = bridge.nodes.len();
    text.push_str(&format!(
        "erlbridge: {count} node{} bridged\n",
        if count == 1 { "" } else { "s" }
    ));
    for n in &bridge.nodes {
        text.push_str(&format!(
            "  {:<40} pod {}/{} ({}), epmd {}, distribution {}\n",
            n.node, n.namespace, n.pod, n.ip, n.epmd_port, n.dist_port
        ));
    }
    let Some(first) = bridge.nodes.first() else {
        return text;
    };
    let env = match &bridge.inetrc {
        Some(path) => format!("ERL_INETRC={} ", path.display()),
        None => String::new(),
    };
    text.push_str(&format!(
        "\nSet COOKIE to the nodes' cookie, then connect a hidden local node:\n\
         \x20 {env}iex --name me@127.0.0.1 --cookie \"$COOKIE\" --hidden --remsh {node}\n\
         \x20 {env}erl -name me@127.0.0.1 -setcookie \"$COOKIE\" -hidden -remsh {node}\n\
         \x20 or, in a node started with --hidden: Node.connect(:\"{node}\")\n",
        node = first.node
    ));
    if let Some(path) = &bridge.inetrc {
        text.push_str(&format!(
            "The nodes are named by DNS; ERL_INETRC={} makes a local node resolve those names.\n",
            path.display()
        ));
    }
    text.push_str(
        "Keep local nodes hidden: the pods cannot dial back to this machine, and a visible node \
         they cannot reach makes `global` disconnect the pods from each other.\n\
         Ctrl-C ends the bridge and removes its rules.\n",
    );
    text
}

/// An error report.
pub fn error(output: Output, code: u8, kind: &str, message: &str) -> String {
    match output {
        Output::Json => {
            json!({"event": "error", "code": code, "kind": kind, "message": message}).to_string()
        }
        Output::Text => format!("erlbridge: {message}"),
    }
}

/// A note (skipped pods and the like).
pub fn warning(output: Output, message: &str) -> String {
    match output {
        Output::Json => json!({"event": "warning", "message": message}).to_string(),
        Output::Text => format!("erlbridge: warning: {message}"),
    }
}
