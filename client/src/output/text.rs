//! Text mode: what a person reads once the bridge is up (the nodes and the exact commands to
//! paste) and a line per change while it runs.

use crate::bridge::{BridgedNode, Change, Ready};
use crate::forward::ForwardError;
use crate::mode::Mode;
use crate::output::chain;
use crate::owner::Refused;

/// The ready report; the cookie goes into the commands only when `show_cookie` says so, and
/// the local node is called `local`.
pub fn ready(ready: &Ready, cookie: Option<&str>, show_cookie: bool, local: &str) -> String {
    let mut text = String::new();
    let count = ready.nodes.len();
    let how = match ready.mode {
        Mode::Nat => "mode nat: erlbridge-helperd redirects the pod addresses, for your user only",
        Mode::Epmd => "mode epmd: no helper; local nodes need erlbridge's epmd module, below",
    };
    text.push_str(&format!(
        "erlbridge: {count} node{} bridged ({how})\n",
        if count == 1 { "" } else { "s" }
    ));
    for n in &ready.nodes {
        text.push_str(&format!(
            "  {:<40} pod {}/{} ({}), epmd {}, distribution {}\n",
            n.node, n.namespace, n.pod, n.ip, n.epmd_port, n.dist_port
        ));
    }
    let mut aliased: Vec<String> = ready
        .nodes
        .iter()
        .filter(|n| n.alias)
        .map(|n| n.ip.to_string())
        .collect();
    aliased.dedup();
    if !aliased.is_empty() {
        text.push_str(&alias_line(&aliased));
        text.push('\n');
    }
    let Some(first) = ready.nodes.first() else {
        return text;
    };
    let env = match &ready.inetrc {
        Some(path) => format!("ERL_INETRC={} ", path.display()),
        None => String::new(),
    };
    let (cookie, intro) = match (cookie, show_cookie) {
        (Some(cookie), true) => (cookie.to_owned(), "Connect a hidden local node:".to_owned()),
        (Some(_), false) => (
            "\"$COOKIE\"".to_owned(),
            "Set COOKIE to the nodes' cookie (--show-cookie prints it, --cookie-file writes it), then connect a hidden local node:".to_owned(),
        ),
        (None, _) => (
            "\"$COOKIE\"".to_owned(),
            "Set COOKIE to the nodes' cookie (or let erlbridge read it: --cookie-from secret/NAME), then connect a hidden local node:".to_owned(),
        ),
    };
    let node = &first.node;
    let (erl_flags, iex_erl) = match &ready.erl_flags {
        // The commands say -hidden / --hidden themselves.
        Some(flags) => {
            let module = flags.strip_suffix(" -hidden").unwrap_or(flags);
            (format!(" {module}"), format!("--erl \"{module}\" "))
        }
        None => (String::new(), String::new()),
    };
    text.push_str(&format!(
        "\n{intro}\n\
         \x20 {env}iex {iex_erl}--name {local} --cookie {cookie} --hidden --remsh {node}\n\
         \x20 {env}erl -name {local} -setcookie {cookie} -hidden{erl_flags} -remsh {node}\n\
         \x20 or, in a node started with --hidden: Node.connect(:\"{node}\")\n",
    ));
    match (&ready.erl_flags, ready.mode) {
        (Some(flags), Mode::Epmd) => text.push_str(&format!(
            "Every local node must be started with erlbridge's epmd module; for all nodes started \
             from a shell:\n  export ERL_AFLAGS=\"{flags}\"\n\
             A local node already running without these flags cannot reach the pods in this mode: \
             restart it with them, or use --mode nat (needs erlbridge-helperd).\n"
        )),
        (Some(flags), Mode::Nat) => text.push_str(&format!(
            "The nodes are named by IPv6 addresses: local nodes need {flags} (in the commands \
             above; erlbridge sets it for -- CMD and remsh).\n"
        )),
        (None, _) => {}
    }
    for n in ready.nodes.iter().filter(|n| n.found != "epmd") {
        text.push_str(&format!(
            "{} runs without epmd; erlbridge found it from the pod spec ({}) and answers local \
             nodes' epmd queries for it.\n",
            n.node,
            n.found.trim_start_matches("no epmd: ")
        ));
    }
    if let Some(path) = &ready.inetrc {
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

/// What a loopback alias means, in one line.
fn alias_line(ips: &[String]) -> String {
    let ips = ips.join(", ");
    format!(
        "erlbridge: this host has no route to {ips}, so erlbridge-helperd put it on lo for this \
         bridge (your connections are redirected, other users' are refused); it stays until the \
         bridge ends, even if a route appears"
    )
}

fn names(nodes: &[BridgedNode]) -> String {
    nodes
        .iter()
        .map(|n| n.node.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn alias_note(nodes: &[BridgedNode]) -> String {
    match nodes.iter().find(|n| n.alias) {
        Some(n) => format!(" ({} is on lo for this bridge: no route to it here)", n.ip),
        None => String::new(),
    }
}

/// One line for a change the bridge made while up.
pub fn change(change: &Change) -> String {
    match change {
        Change::PodAdded { pod, nodes } => {
            format!(
                "erlbridge: pod {pod} added; bridged {}{}",
                names(nodes),
                alias_note(nodes)
            )
        }
        Change::PodChanged { pod, nodes } => format!(
            "erlbridge: pod {pod} came back at {}; bridged {}{}",
            nodes.first().map(|n| n.ip.to_string()).unwrap_or_default(),
            names(nodes),
            alias_note(nodes)
        ),
        Change::PodRemoved { pod, nodes } => format!(
            "erlbridge: pod {pod} is gone; {} no longer bridged",
            names(nodes)
        ),
        Change::PodUnreachable { pod, error } => format!(
            "erlbridge: pod {pod} cannot be bridged yet ({}); retrying",
            chain(error)
        ),
        Change::ConnectionFailed(failed) => match &failed.error {
            ForwardError::Accept { .. } => format!("erlbridge: warning: {}", chain(&failed.error)),
            error => format!(
                "erlbridge: a connection to pod {} port {} could not be forwarded ({})",
                failed.pod,
                failed.port,
                chain(error)
            ),
        },
        Change::ConnectionRefused(refused) => {
            format!("erlbridge: warning: {}", self::refused(refused))
        }
        Change::HelperLost => {
            "erlbridge: erlbridge-helperd went away; redirects are off until it is back".to_owned()
        }
        Change::HelperRestored => {
            "erlbridge: erlbridge-helperd is back; every redirect restored".to_owned()
        }
    }
}

/// A refused connection, in a sentence: whose it was, where, and that the next ones of that
/// uid go unsaid.
pub fn refused(refused: &Refused) -> String {
    let Refused {
        uid,
        owner,
        listener,
    } = refused;
    let at = format!("{} ({})", listener.local, listener.serves);
    match uid {
        Some(uid) => format!(
            "refused a connection of uid {uid} to {at}: this bridge serves uid {owner} only; \
             further connections of uid {uid} are refused without a word"
        ),
        None => format!(
            "refused a connection to {at} whose owner could not be found: this bridge serves \
             uid {owner} only; further such connections are refused without a word"
        ),
    }
}
