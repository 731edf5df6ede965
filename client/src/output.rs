//! The one reporting edge: everything erlbridge tells a person or a script goes through here.
//! In JSON mode (`--output json`) that is one [`Event`] per line on stdout, a single serde type
//! that scripts (and the tests) read back; in text mode, sentences and the exact commands to
//! paste ([`text`]). Commands return a [`Failure`] instead of printing it; `main` reports it
//! once. Errors are shown with their causes, each once ([`chain`]); never as Debug.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bridge::{BridgedNode, Change};
use crate::forward::ForwardError;
use crate::mode::Mode;

pub mod progress;
pub mod text;

pub use progress::Meter;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Sentences and commands for a person.
    Text,
    /// One JSON object per line, for scripts.
    Json,
}

/// One line of JSON output. The `event` field names the variant; fields are only ever added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The bridge is up.
    Ready {
        /// Every bridged node.
        nodes: Vec<BridgedNode>,
        /// The ERL_INETRC file for DNS-named nodes, if any.
        inetrc: Option<PathBuf>,
        /// How local nodes reach them.
        mode: Mode,
        /// In epmd mode, the flags a local node must be started with (its `ERL_AFLAGS`).
        erl_flags: Option<String>,
    },
    /// A pod (a new replica) is bridged.
    PodAdded {
        /// The pod.
        pod: String,
        /// Its nodes.
        nodes: Vec<BridgedNode>,
    },
    /// A pod came back (new IP, or re-created): its nodes are bridged where it is now.
    PodChanged {
        /// The pod.
        pod: String,
        /// Its nodes.
        nodes: Vec<BridgedNode>,
    },
    /// A pod left the target; its nodes are no longer bridged.
    PodRemoved {
        /// The pod.
        pod: String,
        /// The nodes it had.
        nodes: Vec<BridgedNode>,
    },
    /// A pod could not be bridged, or a connection to it not forwarded; tried again.
    PodUnreachable {
        /// The pod.
        pod: String,
        /// Why.
        message: String,
    },
    /// A listener of the bridge refused a connection that is not this user's; said once per
    /// uid (once for connections whose owner could not be found).
    ConnectionRefused {
        /// The owner of the connecting socket; null when it could not be found.
        uid: Option<u32>,
        /// The listener (`127.0.0.1:40123`).
        listener: String,
        /// What it serves (`pod app-0 port 4369`).
        serves: String,
        /// What happened, in a sentence.
        message: String,
    },
    /// How far a long start is (more than a handful of pods): sent at most a few times a
    /// second, and not at all for a start that is done within a quarter of a second.
    Progress {
        /// Pods attached so far.
        attached: usize,
        /// Pods to attach.
        total: usize,
        /// What is being bridged (`statefulset/app`).
        target: String,
    },
    /// `eval`: what one node gave.
    Eval {
        /// The node.
        node: String,
        /// Its pod.
        pod: String,
        /// The value, as `~p` (Erlang) or `inspect` (Elixir) prints it; null on an error.
        result: Option<String>,
        /// `raised`, `timeout` or `nodedown` (or `interrupted`); null when it answered.
        error: Option<String>,
        /// What went wrong (the exception, formatted); null when it answered.
        message: Option<String>,
    },
    /// erlbridge-helperd went away; redirects are off until it is back.
    HelperLost,
    /// erlbridge-helperd is back and every redirect restored.
    HelperRestored,
    /// Something worth knowing that changes nothing by itself.
    Warning {
        /// What.
        message: String,
    },
    /// The command failed.
    Error {
        /// The exit code.
        code: u8,
        /// The failure's kind (`target_not_found`, `helper_refused`, ...).
        kind: String,
        /// What happened and what to do.
        message: String,
    },
    /// `-- CMD` exited.
    Exited {
        /// Its exit code, which is erlbridge's.
        code: u8,
    },
    /// One `doctor` check.
    Check {
        /// Its name.
        check: String,
        /// Whether it passed.
        ok: bool,
        /// What was found.
        detail: String,
        /// What to do, when it failed.
        fix: Option<String>,
    },
    /// `doctor`'s verdict.
    Summary {
        /// Whether every check passed.
        ok: bool,
        /// The checks that failed.
        failed: Vec<String>,
    },
    /// `erlbridge status`.
    Status(Box<StatusReport>),
}

/// What `erlbridge status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The helper.
    pub helper: HelperInfo,
    /// The caller, as the helper sees it.
    pub caller: CallerInfo,
    /// The helper's policy.
    pub policy: PolicyInfo,
    /// The caller's live sessions.
    pub sessions: Vec<SessionReport>,
}

/// The helper, in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperInfo {
    /// Its version.
    pub version: String,
    /// The API version it speaks.
    pub api_version: u32,
    /// Its socket.
    pub socket: String,
    /// What `nft --version` said.
    pub nft: String,
}

/// The caller, in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerInfo {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Whether the helper serves it.
    pub allowed: bool,
    /// Why not, when not.
    pub refusal: String,
}

/// The helper's policy, in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// The access group.
    pub group: String,
    /// uids allowed without the group.
    pub allowed_uids: Vec<u32>,
    /// Pod networks.
    pub allowed_cidrs: Vec<String>,
    /// Mappings per uid.
    pub max_rules_per_uid: u32,
    /// Sessions per uid.
    pub max_sessions_per_uid: u32,
    /// Whether loopback aliases are allowed.
    pub aliases: bool,
}

/// One session, in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReport {
    /// Its id.
    pub session: u64,
    /// Its owner.
    pub uid: u32,
    /// The process that opened it.
    pub pid: u32,
    /// Its label.
    pub label: String,
    /// When it was opened.
    pub opened_unix_seconds: u64,
    /// Its mappings.
    pub mappings: Vec<MappingReport>,
    /// Its loopback aliases.
    pub aliases: Vec<String>,
}

/// One mapping, in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingReport {
    /// The pod address.
    pub pod_ip: String,
    /// The pod port.
    pub pod_port: u32,
    /// Where it goes.
    pub local_ip: String,
    /// Where it goes.
    pub local_port: u32,
    /// Whose connections it redirects.
    pub uid: u32,
}

/// Why a command failed: its exit code, its kind and the sentence a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exit code (`cli::exit`).
    pub code: u8,
    /// The kind, for JSON output.
    pub kind: &'static str,
    /// What happened and what to do.
    pub message: String,
}

impl Failure {
    /// A failure with a message.
    pub fn new(code: u8, kind: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            code,
            kind,
            message: message.into(),
        }
    }

    /// A failure whose message is `error` with its causes.
    pub fn of(code: u8, kind: &'static str, error: &dyn std::error::Error) -> Failure {
        Failure::new(code, kind, chain(error))
    }
}

/// An error with its causes, each said once: "X: because Y".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

/// Where erlbridge's own output goes instead of stdout (while `-- CMD` runs, so CMD's stdout
/// stays CMD's).
static SINK: std::sync::Mutex<Option<Box<dyn Write + Send>>> = std::sync::Mutex::new(None);

/// Sends everything [`say`] writes to `sink` from now on.
pub fn redirect(sink: Box<dyn Write + Send>) {
    *SINK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sink);
}

/// Opens `--events`: `fd:N` (a descriptor this process inherited) or a file, created or
/// truncated.
pub fn open_events(spec: &str) -> std::io::Result<Box<dyn Write + Send>> {
    let path = match spec.strip_prefix("fd:") {
        Some(fd) => {
            let fd: u32 = fd.parse().map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "fd:N needs a number")
            })?;
            PathBuf::from(format!("/dev/fd/{fd}"))
        }
        None => PathBuf::from(spec),
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(spec.strip_prefix("fd:").is_none())
        .open(path)?;
    Ok(Box::new(file))
}

/// Writes one line of erlbridge's output at once: to stdout, or where [`redirect`] said.
pub fn say(line: &str) {
    let mut sink = SINK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match sink.as_mut() {
        Some(sink) => {
            let _ = writeln!(sink, "{line}");
            let _ = sink.flush();
        }
        None => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// Writes `event` as one JSON line of output.
pub fn emit(event: &Event) {
    match serde_json::to_string(event) {
        Ok(line) => say(&line),
        Err(e) => eprintln!("erlbridge: cannot write an event: {e}"),
    }
}

/// Reports a failure the way `--output` asks: an `error` event on stdout, or a sentence on
/// stderr.
pub fn fail(output: Output, failure: &Failure) {
    match output {
        Output::Json => emit(&Event::Error {
            code: failure.code,
            kind: failure.kind.to_owned(),
            message: failure.message.clone(),
        }),
        Output::Text => eprintln!("erlbridge: {}", failure.message),
    }
}

/// Reports a note that changes nothing: a `warning` event, or a line on stderr.
pub fn warn(output: Output, message: &str) {
    match output {
        Output::Json => emit(&Event::Warning {
            message: message.to_owned(),
        }),
        Output::Text => eprintln!("erlbridge: warning: {message}"),
    }
}

/// Reports a change the bridge made while up; in text mode a refused connection is a warning,
/// on stderr like every warning.
pub fn change(output: Output, change: &Change) {
    match (output, change) {
        (Output::Json, _) => emit(&change_event(change)),
        (Output::Text, Change::ConnectionRefused(_)) => eprintln!("{}", text::change(change)),
        (Output::Text, _) => say(&text::change(change)),
    }
}

/// The JSON event for a change.
pub fn change_event(change: &Change) -> Event {
    match change {
        Change::PodAdded { pod, nodes } => Event::PodAdded {
            pod: pod.clone(),
            nodes: nodes.clone(),
        },
        Change::PodChanged { pod, nodes } => Event::PodChanged {
            pod: pod.clone(),
            nodes: nodes.clone(),
        },
        Change::PodRemoved { pod, nodes } => Event::PodRemoved {
            pod: pod.clone(),
            nodes: nodes.clone(),
        },
        Change::PodUnreachable { pod, error } => Event::PodUnreachable {
            pod: pod.clone(),
            message: chain(error),
        },
        Change::ConnectionFailed(failed) => match &failed.error {
            ForwardError::Accept { .. } => Event::Warning {
                message: chain(&failed.error),
            },
            error => Event::PodUnreachable {
                pod: failed.pod.clone(),
                message: format!(
                    "a connection to port {} could not be forwarded: {}",
                    failed.port,
                    chain(error)
                ),
            },
        },
        Change::ConnectionRefused(refused) => Event::ConnectionRefused {
            uid: refused.uid,
            listener: refused.listener.local.to_string(),
            serves: refused.listener.serves.clone(),
            message: text::refused(refused),
        },
        Change::HelperLost => Event::HelperLost,
        Change::HelperRestored => Event::HelperRestored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_node() -> BridgedNode {
        BridgedNode {
            node: "app@10.244.1.8".into(),
            pod: "app-0".into(),
            namespace: "default".into(),
            ip: "10.244.1.8".parse().unwrap(),
            epmd_port: 4369,
            dist_port: 9100,
            alias: false,
            found: "epmd".into(),
        }
    }

    #[test]
    fn events_keep_the_fields_scripts_read() {
        let node = sample_node();
        let ready = Event::Ready {
            nodes: vec![node.clone()],
            inetrc: None,
            mode: Mode::Epmd,
            erl_flags: Some("-pa /d -epmd_module erlbridge_epmd -hidden".into()),
        };
        let json: serde_json::Value = serde_json::to_value(&ready).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"event": "ready", "inetrc": null, "nodes": [{
                "node": "app@10.244.1.8", "pod": "app-0", "namespace": "default",
                "ip": "10.244.1.8", "epmd_port": 4369, "dist_port": 9100, "alias": false,
                "found": "epmd"}],
                "mode": "epmd", "erl_flags": "-pa /d -epmd_module erlbridge_epmd -hidden"})
        );
        for (event, text) in [
            (Event::HelperLost, r#"{"event":"helper_lost"}"#),
            (Event::Exited { code: 3 }, r#"{"event":"exited","code":3}"#),
            (
                Event::PodUnreachable {
                    pod: "app-0".into(),
                    message: "m".into(),
                },
                r#"{"event":"pod_unreachable","pod":"app-0","message":"m"}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&event).unwrap(), text);
            assert_eq!(serde_json::from_str::<Event>(text).unwrap(), event);
        }
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, ready);
    }

    #[test]
    fn every_event_keeps_its_fields() {
        let node = sample_node();
        let n = r#"{"node":"app@10.244.1.8","pod":"app-0","namespace":"default","ip":"10.244.1.8","epmd_port":4369,"dist_port":9100,"alias":false,"found":"epmd"}"#;
        let cases = [
            (
                Event::PodAdded {
                    pod: "app-0".into(),
                    nodes: vec![node.clone()],
                },
                format!(r#"{{"event":"pod_added","pod":"app-0","nodes":[{n}]}}"#),
            ),
            (
                Event::PodChanged {
                    pod: "app-0".into(),
                    nodes: vec![node.clone()],
                },
                format!(r#"{{"event":"pod_changed","pod":"app-0","nodes":[{n}]}}"#),
            ),
            (
                Event::PodRemoved {
                    pod: "app-0".into(),
                    nodes: vec![node],
                },
                format!(r#"{{"event":"pod_removed","pod":"app-0","nodes":[{n}]}}"#),
            ),
            (
                Event::HelperRestored,
                r#"{"event":"helper_restored"}"#.to_owned(),
            ),
            (
                Event::Eval {
                    node: "app@10.244.1.8".into(),
                    pod: "app-0".into(),
                    result: None,
                    error: Some("raised".into()),
                    message: Some("exception error: boom".into()),
                },
                r#"{"event":"eval","node":"app@10.244.1.8","pod":"app-0","result":null,"error":"raised","message":"exception error: boom"}"#
                    .to_owned(),
            ),
            (
                Event::Progress {
                    attached: 37,
                    total: 100,
                    target: "statefulset/app".into(),
                },
                r#"{"event":"progress","attached":37,"total":100,"target":"statefulset/app"}"#
                    .to_owned(),
            ),
            (
                Event::ConnectionRefused {
                    uid: Some(61002),
                    listener: "127.0.0.1:40123".into(),
                    serves: "pod app-0 port 4369".into(),
                    message: "m".into(),
                },
                r#"{"event":"connection_refused","uid":61002,"listener":"127.0.0.1:40123","serves":"pod app-0 port 4369","message":"m"}"#.to_owned(),
            ),
            (
                Event::Warning {
                    message: "m".into(),
                },
                r#"{"event":"warning","message":"m"}"#.to_owned(),
            ),
            (
                Event::Error {
                    code: 3,
                    kind: "target_not_found".into(),
                    message: "m".into(),
                },
                r#"{"event":"error","code":3,"kind":"target_not_found","message":"m"}"#.to_owned(),
            ),
            (
                Event::Check {
                    check: "rbac".into(),
                    ok: false,
                    detail: "d".into(),
                    fix: Some("f".into()),
                },
                r#"{"event":"check","check":"rbac","ok":false,"detail":"d","fix":"f"}"#.to_owned(),
            ),
            (
                Event::Summary {
                    ok: false,
                    failed: vec!["rbac".into()],
                },
                r#"{"event":"summary","ok":false,"failed":["rbac"]}"#.to_owned(),
            ),
        ];
        for (event, text) in cases {
            assert_eq!(serde_json::to_string(&event).unwrap(), text);
            assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), event);
        }
        let status: serde_json::Value =
            serde_json::to_value(Event::Status(Box::new(StatusReport {
                helper: HelperInfo {
                    version: "0.1.0".into(),
                    api_version: 1,
                    socket: "/run/erlbridge/helper.sock".into(),
                    nft: "nftables v1.0.6".into(),
                },
                caller: CallerInfo {
                    uid: 1000,
                    gid: 1000,
                    groups: vec![61000],
                    allowed: true,
                    refusal: String::new(),
                },
                policy: PolicyInfo {
                    group: "erlbridge".into(),
                    allowed_uids: vec![],
                    allowed_cidrs: vec!["10.0.0.0/8".into()],
                    max_rules_per_uid: 64,
                    max_sessions_per_uid: 16,
                    aliases: false,
                },
                sessions: vec![SessionReport {
                    session: 1,
                    uid: 1000,
                    pid: 42,
                    label: "erlbridge up pod/app-0".into(),
                    opened_unix_seconds: 1,
                    mappings: vec![MappingReport {
                        pod_ip: "10.244.1.8".into(),
                        pod_port: 4369,
                        local_ip: "127.0.0.1".into(),
                        local_port: 40000,
                        uid: 1000,
                    }],
                    aliases: vec![],
                }],
            })))
            .unwrap();
        assert_eq!(
            status,
            serde_json::json!({"event": "status",
                "helper": {"version": "0.1.0", "api_version": 1, "socket": "/run/erlbridge/helper.sock", "nft": "nftables v1.0.6"},
                "caller": {"uid": 1000, "gid": 1000, "groups": [61000], "allowed": true, "refusal": ""},
                "policy": {"group": "erlbridge", "allowed_uids": [], "allowed_cidrs": ["10.0.0.0/8"],
                           "max_rules_per_uid": 64, "max_sessions_per_uid": 16, "aliases": false},
                "sessions": [{"session": 1, "uid": 1000, "pid": 42, "label": "erlbridge up pod/app-0",
                    "opened_unix_seconds": 1, "aliases": [],
                    "mappings": [{"pod_ip": "10.244.1.8", "pod_port": 4369, "local_ip": "127.0.0.1",
                                  "local_port": 40000, "uid": 1000}]}]})
        );
    }

    #[test]
    fn chains_say_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot reach the API server")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(chain(&e), "cannot reach the API server: connection refused");
    }
}
