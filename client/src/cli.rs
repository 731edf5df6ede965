//! The command line, in kubectl's conventions, and the exit codes scripts can rely on.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::cookie::CookieSource;
use crate::discover::{NodeHost, NodeRules, Target};
use crate::k8s::{ClusterOptions, RequestTimeout};
use crate::mode::ModeChoice;
use crate::output::Output;

/// Exit codes, documented in `--help` and the README.
pub mod exit {
    /// The bridge ran and ended as asked (or the command it ran exited 0).
    pub const OK: u8 = 0;
    /// Something else failed; the message says what.
    pub const OTHER: u8 = 1;
    /// The command line is malformed (a bad TARGET, an unknown flag).
    pub const USAGE: u8 = 2;
    /// The target does not exist or selects no pod.
    pub const NOT_FOUND: u8 = 3;
    /// The target's pods are not Running and Ready, or no epmd answers in them.
    pub const NOT_READY: u8 = 4;
    /// The Kubernetes API is unreachable, or the kubeconfig is missing or invalid.
    pub const KUBERNETES: u8 = 5;
    /// The Kubernetes API refused the credentials or their rights (401/403).
    pub const FORBIDDEN: u8 = 6;
    /// erlbridge-helperd is not running or this user may not open its socket.
    pub const HELPER_UNREACHABLE: u8 = 7;
    /// erlbridge-helperd refused a request (its message says why).
    pub const HELPER_REFUSED: u8 = 8;
    /// The bridge was not ready within `--ready-timeout`.
    pub const READY_TIMEOUT: u8 = 9;
    /// `--mode nat`: this host has no route to a pod and the helper may not add a loopback
    /// alias for it.
    pub const NO_ROUTE: u8 = 10;
    /// The pod's node cannot load what the command needs (runtime_tools for observer and top).
    pub const POD_LACKS: u8 = 11;
    /// This host lacks what the command needs (erl, OTP's observer and wx, a display).
    pub const LOCAL_LACKS: u8 = 12;
    /// `eval`: a node raised, did not answer within `--timeout`, or went down.
    pub const EVAL_FAILED: u8 = 13;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  the bridge ended as asked (with -- CMD: CMD's own exit code instead)
  1  another failure (the message says what)
  2  malformed command line or TARGET
  3  target not found, or it selects no pod
  4  pods not Running and Ready, or no epmd/Erlang node answering in them
  5  Kubernetes API unreachable, or kubeconfig missing or invalid
  6  Kubernetes API refused the credentials or their rights (401/403)
  7  erlbridge-helperd not running, or its socket not open to you
  8  erlbridge-helperd refused a request
  9  not ready within --ready-timeout
 10  --mode nat, and no route to the pods on this host nor a loopback alias allowed
 11  the pod's node cannot load what the command needs (observer, top: runtime_tools)
 12  this host lacks what the command needs (erl; observer: erlang-observer, a display)
 13  eval: a node raised, did not answer within --timeout, or went down";

/// erlbridge: connect local Erlang/Elixir nodes to the distributed Erlang nodes in Kubernetes
/// pods, without sudo.
#[derive(Debug, Parser)]
#[command(name = "erlbridge", version, about, after_help = EXIT_CODES, bin_name = "erlbridge")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// More logging on stderr (-v: progress, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bridge the Erlang nodes of a pod, StatefulSet or Deployment until Ctrl-C (or until
    /// `-- CMD` exits), following pod restarts and scaling.
    #[command(after_help = EXIT_CODES)]
    Up(UpArgs),
    /// Bridge, then open a remote shell on the (first) node: `iex --remsh`, or `erl -remsh`
    /// when iex is missing or --erl is given. The bridge ends when the shell does.
    #[command(after_help = EXIT_CODES)]
    Remsh(RemshArgs),
    /// Bridge, then open OTP's observer on the (first) node: its window shows the pod's node,
    /// and closing it ends the bridge. Costs the node: the Processes tab walks every process
    /// of it at each refresh (every 10 s by default). The node needs runtime_tools; this host
    /// needs OTP's observer and wx (Debian: erlang-observer) and a display.
    #[command(after_help = EXIT_CODES)]
    Observer(ObserverArgs),
    /// Bridge, then show a process top of the (first) node here in the terminal (OTP's etop,
    /// text mode, tracing off); q or Ctrl-C leaves, and the bridge ends. Costs the node: each
    /// refresh walks every process of it. The node needs runtime_tools.
    #[command(after_help = EXIT_CODES)]
    Top(TopArgs),
    /// Bridge, then evaluate an Erlang expression (--elixir: an Elixir one) on every bridged
    /// node at once and print each node's result. It runs exactly what you type on the pods'
    /// nodes, production ones included.
    #[command(after_help = EXIT_CODES)]
    Eval(EvalArgs),
    /// Show the helper's version, who it thinks you are, its policy, and your live sessions.
    Status(StatusArgs),
    /// Check everything erlbridge needs and say how to fix what is wrong (exit 0: all good).
    Doctor(DoctorArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}

impl Command {
    /// How the command reports: `--output`, text where it has none.
    pub fn output(&self) -> Output {
        match self {
            Command::Up(args) => args.bridge.output,
            Command::Remsh(args) => args.bridge.output,
            Command::Observer(args) => args.bridge.output,
            Command::Top(args) => args.bridge.output,
            Command::Eval(args) => args.options.output,
            Command::Status(args) => args.output,
            Command::Doctor(args) => args.output,
            Command::Completions { .. } | Command::Man => Output::Text,
        }
    }
}

/// `erlbridge status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// erlbridge-helperd's socket.
    #[arg(long, env = crate::helper::ENV_HELPER_SOCKET, default_value = erlbridge_proto::DEFAULT_SOCKET)]
    pub helper_socket: PathBuf,
    /// text for people, json for scripts.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `erlbridge doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// A target to check as `up` would bridge it (POD, sts/NAME, ...): it exists and is Ready,
    /// its pods' epmd answers, the helper's policy takes their IPs, and the route to them.
    #[arg(value_parser = clap::value_parser!(Target))]
    pub target: Option<Target>,
    /// How the pods' nodes are named and found, as `up` takes it.
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// Where the cluster is.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// erlbridge-helperd's socket.
    #[arg(long, env = crate::helper::ENV_HELPER_SOCKET, default_value = erlbridge_proto::DEFAULT_SOCKET)]
    pub helper_socket: PathBuf,
    /// The mode to check for, as `erlbridge up --mode` takes it (the helper and the route are
    /// checked only where nat applies).
    #[arg(long, value_enum, default_value_t = ModeChoice::Auto)]
    pub mode: ModeChoice,
    /// text for people, json for scripts (one check per line, then a summary).
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Where the cluster is, as kubectl's flags say it.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The kubeconfig context.
    #[arg(long)]
    pub context: Option<String>,
    /// The kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// How long connecting to the API server and each request may take, as kubectl's flag:
    /// 10s, 2m, 1h, or 0 for no bound. Watches and port-forwards stay open as long as needed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = clap::value_parser!(RequestTimeout))]
    pub request_timeout: RequestTimeout,
}

impl ClusterArgs {
    /// The options the Kubernetes client takes.
    pub fn options(&self) -> ClusterOptions {
        ClusterOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespace: self.namespace.clone(),
            request_timeout: self.request_timeout.0,
        }
    }
}

/// What to bridge and how; shared by `up`, `remsh`, `observer` and `top` (`eval` takes its
/// target with its expression). Everything but the target is [`BridgeOptions`], which this
/// derefs to.
#[derive(Debug, Args)]
pub struct BridgeArgs {
    /// POD, pod/NAME, statefulset/NAME (sts/NAME) or deployment/NAME.
    #[arg(value_parser = clap::value_parser!(Target), required_unless_present = "selector")]
    pub target: Option<Target>,
    /// Bridge the pods this label selector picks (e.g. app=app) instead of a TARGET.
    #[arg(short = 'l', long, conflicts_with = "target")]
    pub selector: Option<String>,
    /// How to bridge it.
    #[command(flatten)]
    pub options: BridgeOptions,
}

impl std::ops::Deref for BridgeArgs {
    type Target = BridgeOptions;

    fn deref(&self) -> &BridgeOptions {
        &self.options
    }
}

/// How to bridge a target: the cluster, the helper, the mode, the nodes and the cookie.
#[derive(Debug, Args)]
pub struct BridgeOptions {
    /// Where the cluster is.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// erlbridge-helperd's socket.
    #[arg(long, env = crate::helper::ENV_HELPER_SOCKET, default_value = erlbridge_proto::DEFAULT_SOCKET)]
    pub helper_socket: PathBuf,
    /// How local nodes reach the pod nodes: nat (erlbridge-helperd redirects the pod addresses;
    /// works for any local node), epmd (no helper, no privilege: local nodes are started with
    /// erlbridge's epmd module, whose flags erlbridge prints and sets for -- CMD and remsh), or
    /// auto (nat when the helper answers, else epmd).
    #[arg(long, value_enum, default_value_t = ModeChoice::Auto)]
    pub mode: ModeChoice,
    /// text for people, json for scripts (one event per line).
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// How the pods' nodes are named and found.
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// Where the Erlang cookie is: secret/NAME[:KEY] or env[:VARIABLE] (the pods' environment,
    /// RELEASE_COOKIE by default). Without it, the pods' RELEASE_COOKIE is used if they set one.
    #[arg(long, value_name = "SOURCE", value_parser = clap::value_parser!(CookieSource))]
    pub cookie_from: Option<CookieSource>,
    /// Put the cookie into the printed commands (never into JSON output).
    #[arg(long)]
    pub show_cookie: bool,
    /// Write the cookie to this file, readable by you only (mode 0600).
    #[arg(long, value_name = "PATH")]
    pub cookie_file: Option<PathBuf>,
    /// Wait up to this many seconds for the target to exist and be Ready, then fail (exit
    /// code 9) if the bridge is not ready by then.
    #[arg(long, value_name = "SECONDS")]
    pub ready_timeout: Option<u64>,
    /// The local node's name in the commands erlbridge prints and the shell remsh starts
    /// (NAME or NAME@HOST; the host defaults to 127.0.0.1). Default: unique to this run.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// How the pods' nodes are named and found; shared by `up`, `remsh` and `doctor`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The host part of node names: the pod IP, or its DNS name (default: what the pod's
    /// RELEASE_NODE says, else the IP).
    #[arg(long, value_enum)]
    pub node_host: Option<NodeHost>,
    /// The distribution port of nodes that run without epmd, where the pod spec does not say
    /// it (it reads -erl_epmd_port in the container's args or ERL_FLAGS, and ERL_DIST_PORT).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub dist_port: Option<u16>,
    /// The name (the part before @) of nodes that run without epmd, where neither RELEASE_NODE
    /// nor -name in the pod spec gives it.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
}

impl NodeArgs {
    /// How the flags shape what erlbridge reads of pods.
    pub fn rules(&self) -> NodeRules {
        NodeRules {
            node_host: self.node_host,
            dist_port: self.dist_port,
            node_name: self.node_name.clone(),
        }
    }
}

impl BridgeOptions {
    /// How the flags shape what erlbridge reads of pods.
    pub fn rules(&self) -> NodeRules {
        self.nodes.rules()
    }
}

impl BridgeArgs {
    /// The target, from TARGET or -l.
    pub fn target(&self) -> Target {
        match (&self.target, &self.selector) {
            (Some(t), _) => t.clone(),
            (None, Some(s)) => Target::Selector(s.clone()),
            // clap requires one of the two.
            (None, None) => Target::Selector(String::new()),
        }
    }
}

/// `erlbridge up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// What to bridge and how.
    #[command(flatten)]
    pub bridge: BridgeArgs,
    /// Where erlbridge's own output goes while CMD runs, so CMD's stdout and stderr stay
    /// CMD's: a FILE, or fd:N (an open descriptor). Default with CMD: stderr.
    #[arg(long, value_name = "FILE|fd:N", requires = "command")]
    pub events: Option<String>,
    /// A command to run once the bridge is ready, with ERLBRIDGE_NODE, ERLBRIDGE_NODES,
    /// ERLBRIDGE_COOKIE (and ERL_INETRC or ERL_AFLAGS) set; the bridge ends when it exits, with
    /// its exit code (127: not found, 126: not executable, 128+N: killed by signal N). It runs
    /// as given, not through a shell: use `sh -c '...'` to expand $ERLBRIDGE_* in it.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `erlbridge remsh`.
#[derive(Debug, Args)]
pub struct RemshArgs {
    /// What to bridge and how.
    #[command(flatten)]
    pub bridge: BridgeArgs,
    /// Use `erl -remsh` (default: iex when the pod's node runs Elixir, else erl).
    #[arg(long, conflicts_with = "iex")]
    pub erl: bool,
    /// Use `iex --remsh` (the pod's node must have IEx).
    #[arg(long)]
    pub iex: bool,
    /// The node to attach to (default: the first bridged node).
    #[arg(long)]
    pub node: Option<String>,
}

/// Which of the target's nodes `observer` and `top` look at.
#[derive(Debug, Args)]
pub struct PodChoice {
    /// The pod whose node to look at (default: the target's first ready pod, by name).
    #[arg(long, value_name = "NAME")]
    pub pod: Option<String>,
}

/// `erlbridge observer`.
#[derive(Debug, Args)]
pub struct ObserverArgs {
    /// What to bridge and how.
    #[command(flatten)]
    pub bridge: BridgeArgs,
    /// Which node.
    #[command(flatten)]
    pub choice: PodChoice,
}

/// What `top` sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopSort {
    /// Reductions since the last refresh (work done).
    Reductions,
    /// Memory.
    Memory,
    /// Message queue length.
    #[value(name = "msg_q")]
    MsgQ,
}

impl TopSort {
    /// etop's name for it.
    pub fn etop(self) -> &'static str {
        match self {
            TopSort::Reductions => "reductions",
            TopSort::Memory => "memory",
            TopSort::MsgQ => "msg_q",
        }
    }
}

/// `erlbridge top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// What to bridge and how.
    #[command(flatten)]
    pub bridge: BridgeArgs,
    /// Which node.
    #[command(flatten)]
    pub choice: PodChoice,
    /// What to sort the processes by.
    #[arg(long, value_enum, default_value_t = TopSort::Reductions)]
    pub sort: TopSort,
    /// Seconds between two refreshes.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// How many processes to show.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub lines: u64,
}

/// `erlbridge eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// TARGET (POD, sts/NAME, deployment/NAME) then the expression; with -l, the expression
    /// alone.
    #[arg(value_name = "TARGET EXPR", num_args = 1..=2, required = true)]
    pub words: Vec<String>,
    /// Evaluate on the pods this label selector picks (e.g. app=app) instead of a TARGET.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// The expression is Elixir (evaluated with Code.eval_string on each node, printed with
    /// inspect); the nodes must run Elixir.
    #[arg(long)]
    pub elixir: bool,
    /// How long each node may take to answer: 10s, 2m (a node still busy then has its
    /// evaluation ended).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = clap::value_parser!(EvalTimeout))]
    pub timeout: EvalTimeout,
    /// How to bridge it.
    #[command(flatten)]
    pub options: BridgeOptions,
}

/// `eval --timeout`: a bound, never none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalTimeout(pub std::time::Duration);

impl std::str::FromStr for EvalTimeout {
    type Err = String;

    fn from_str(text: &str) -> Result<EvalTimeout, String> {
        match crate::k8s::parse_timeout(text)? {
            Some(limit) => Ok(EvalTimeout(limit)),
            None => Err("a node must answer in some time: give more than 0".to_owned()),
        }
    }
}
