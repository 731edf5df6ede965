//! What the user sees: in text mode, the node names and the exact commands to paste; in JSON
//! mode, one event object per line. Progress and warnings go to stderr.

use serde_json::json;

use crate::bridge::{Bridge, BridgedNode, Change};

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Sentences and commands for a person.
    Text,
    /// One JSON object per line, for scripts.
    Json,
}

/// The ready report.
pub fn ready(output: Output, bridge: &Bridge, show_cookie: bool) -> String {
    match output {
        Output::Json => json!({
            "event": "ready",
            "nodes": nodes_json(&bridge.nodes()),
            "inetrc": bridge.inetrc.as_ref().map(|p| p.display().to_string()),
        })
        .to_string(),
        Output::Text => ready_text(bridge, show_cookie),
    }
}

fn ready_text(bridge: &Bridge, show_cookie: bool) -> String {
    let mut text = String::new();
    let count = bridge.nodes().len();
    text.push_str(&format!(
        "erlbridge: {count} node{} bridged\n",
        if count == 1 { "" } else { "s" }
    ));
    for n in &bridge.nodes() {
        text.push_str(&format!(
            "  {:<40} pod {}/{} ({}), epmd {}, distribution {}\n",
            n.node, n.namespace, n.pod, n.ip, n.epmd_port, n.dist_port
        ));
    }
    let nodes = bridge.nodes();
    let Some(first) = nodes.first() else {
        return text;
    };
    let env = match &bridge.inetrc {
        Some(path) => format!("ERL_INETRC={} ", path.display()),
        None => String::new(),
    };
    let (cookie, intro) = match (&bridge.cookie, show_cookie) {
        (Some(cookie), true) => (cookie.clone(), "Connect a hidden local node:".to_owned()),
        (Some(_), false) => (
            "\"$COOKIE\"".to_owned(),
            "Set COOKIE to the nodes' cookie (--show-cookie prints it, --cookie-file writes it), then connect a hidden local node:".to_owned(),
        ),
        (None, _) => (
            "\"$COOKIE\"".to_owned(),
            "Set COOKIE to the nodes' cookie (or let erlbridge read it: --cookie-from secret/NAME), then connect a hidden local node:".to_owned(),
        ),
    };
    text.push_str(&format!(
        "\n{intro}\n\
         \x20 {env}iex --name me@127.0.0.1 --cookie {cookie} --hidden --remsh {node}\n\
         \x20 {env}erl -name me@127.0.0.1 -setcookie {cookie} -hidden -remsh {node}\n\
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

fn nodes_json(nodes: &[BridgedNode]) -> Vec<serde_json::Value> {
    nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.node, "pod": n.pod, "namespace": n.namespace, "ip": n.ip.to_string(),
                "epmd_port": n.epmd_port, "dist_port": n.dist_port,
            })
        })
        .collect()
}

fn names(nodes: &[BridgedNode]) -> String {
    nodes
        .iter()
        .map(|n| n.node.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A change the bridge made while up.
pub fn change(output: Output, change: &Change) -> String {
    let pod_of = |nodes: &[BridgedNode]| nodes.first().map(|n| n.pod.clone()).unwrap_or_default();
    match output {
        Output::Json => match change {
            Change::PodAdded(nodes) => {
                json!({"event": "pod_added", "pod": pod_of(nodes), "nodes": nodes_json(nodes)})
            }
            Change::PodChanged(nodes) => {
                json!({"event": "pod_changed", "pod": pod_of(nodes), "nodes": nodes_json(nodes)})
            }
            Change::PodRemoved(nodes) => {
                json!({"event": "pod_removed", "pod": pod_of(nodes), "nodes": nodes_json(nodes)})
            }
            Change::PodUnreachable { pod, reason } => {
                json!({"event": "pod_unreachable", "pod": pod, "message": reason})
            }
            Change::HelperLost => json!({"event": "helper_lost"}),
            Change::HelperRestored => json!({"event": "helper_restored"}),
        }
        .to_string(),
        Output::Text => match change {
            Change::PodAdded(nodes) => format!(
                "erlbridge: pod {} added; bridged {}",
                pod_of(nodes),
                names(nodes)
            ),
            Change::PodChanged(nodes) => format!(
                "erlbridge: pod {} came back at {}; bridged {}",
                pod_of(nodes),
                nodes.first().map(|n| n.ip.to_string()).unwrap_or_default(),
                names(nodes)
            ),
            Change::PodRemoved(nodes) => format!(
                "erlbridge: pod {} is gone; {} no longer bridged",
                pod_of(nodes),
                names(nodes)
            ),
            Change::PodUnreachable { pod, reason } => {
                format!("erlbridge: pod {pod} cannot be bridged yet ({reason}); retrying")
            }
            Change::HelperLost => {
                "erlbridge: erlbridge-helperd went away; redirects are off until it is back"
                    .to_owned()
            }
            Change::HelperRestored => {
                "erlbridge: erlbridge-helperd is back; every redirect restored".to_owned()
            }
        },
    }
}
