//! erlbridge's JSON output, read back as the typed events it writes
//! (`erlbridge::output::Event`), never by matching substrings.

use std::path::PathBuf;
use std::time::Duration;

pub use erlbridge::bridge::BridgedNode;
pub use erlbridge::output::Event;
pub use erlbridge::reach::Mode;

use crate::Spawned;

/// The ready event's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Every bridged node.
    pub nodes: Vec<BridgedNode>,
    /// The ERL_INETRC file, if any.
    pub inetrc: Option<PathBuf>,
    /// How local nodes reach the pods.
    pub mode: Mode,
    /// The flags local nodes need (epmd mode).
    pub erl_flags: Option<String>,
}

/// Parses one line of output as an event.
pub fn parse(line: &str) -> Option<Event> {
    serde_json::from_str(line).ok()
}

/// Every event in a command's stdout; other lines are skipped.
pub fn all(stdout: &str) -> Vec<Event> {
    stdout.lines().filter_map(parse).collect()
}

/// Waits up to `within` for an event `matches` accepts, skipping others.
pub fn wait(up: &mut Spawned, within: Duration, matches: impl Fn(&Event) -> bool) -> Event {
    let line = up
        .wait_line(within, |l| parse(l).is_some_and(|e| matches(&e)))
        .expect("the event in time");
    parse(&line).expect("an event")
}

/// Waits for the first event but warnings, which must be `ready`.
pub fn ready(up: &mut Spawned, within: Duration) -> Ready {
    match wait(up, within, |e| !matches!(e, Event::Warning { .. })) {
        Event::Ready {
            nodes,
            inetrc,
            mode,
            erl_flags,
        } => Ready {
            nodes,
            inetrc,
            mode,
            erl_flags,
        },
        other => panic!("erlbridge reported {other:?} instead of ready"),
    }
}

/// The pod an event is about, if it is about one.
pub fn pod(event: &Event) -> Option<&str> {
    match event {
        Event::PodAdded { pod, .. }
        | Event::PodChanged { pod, .. }
        | Event::PodRemoved { pod, .. }
        | Event::PodUnreachable { pod, .. } => Some(pod),
        _ => None,
    }
}
