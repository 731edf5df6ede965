//! erlbridge's JSON output, read back as the typed events it writes
//! (`erlbridge::output::Event`), never by matching substrings.

use std::path::PathBuf;
use std::time::Duration;

pub use erlbridge::bridge::BridgedNode;
pub use erlbridge::mode::Mode;
pub use erlbridge::output::Event;

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

impl Ready {
    /// The flags a local node needs (`erl_flags`), as erl arguments; none when there are none.
    pub fn flags(&self) -> Vec<String> {
        self.erl_flags
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

/// Parses one line of output as an event.
pub fn parse(line: &str) -> Option<Event> {
    serde_json::from_str(line).ok()
}

/// Every event in a command's stdout; other lines are skipped.
pub fn all(stdout: &str) -> Vec<Event> {
    stdout.lines().filter_map(parse).collect()
}

/// Waits up to `within` for an event `matches` accepts, skipping others. Everything the
/// process printed so far must be plain sentences ([`assert_plain`]).
pub fn wait(up: &mut Spawned, within: Duration, matches: impl Fn(&Event) -> bool) -> Event {
    let line = up
        .wait_line(within, |l| parse(l).is_some_and(|e| matches(&e)))
        .expect("the event in time");
    assert_plain(&up.seen().join("\n"));
    assert_plain(&up.errors().join("\n"));
    parse(&line).expect("an event")
}

/// What Rust's Debug formatting leaves in text (`Some(..)`, `Os { code: .. }`, kube's
/// `ApiError: .. (Status { .. })`): never what a person should read.
const DEBUG_MARKS: [&str; 12] = [
    "Some(",
    "None)",
    "Os {",
    "Status {",
    "Error {",
    "Custom {",
    "{ code:",
    "kind: ",
    "ApiError",
    "ServiceError",
    "HyperError",
    "\\\"",
];

/// Panics when `output` (text, or JSON events, whose messages are read) carries Debug
/// formatting.
pub fn assert_plain(output: &str) {
    for line in output.lines() {
        let text = match parse(line) {
            Some(event) => message(&event),
            None => line.to_owned(),
        };
        for mark in DEBUG_MARKS {
            assert!(
                !text.contains(mark),
                "erlbridge printed Debug formatting ({mark:?}): {text}"
            );
        }
    }
}

/// The sentences an event carries.
fn message(event: &Event) -> String {
    match event {
        Event::PodUnreachable { message, .. }
        | Event::Warning { message }
        | Event::ConnectionRefused { message, .. }
        | Event::Error { message, .. } => message.clone(),
        Event::Check { detail, fix, .. } => format!("{detail} {}", fix.as_deref().unwrap_or("")),
        _ => String::new(),
    }
}

/// Waits for the first event but warnings, refused connections and progress, which must be
/// `ready`.
pub fn ready(up: &mut Spawned, within: Duration) -> Ready {
    match wait(up, within, |e| {
        !matches!(
            e,
            Event::Warning { .. } | Event::ConnectionRefused { .. } | Event::Progress { .. }
        )
    }) {
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
