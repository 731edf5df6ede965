//! The `up` subcommand: bring the bridge up, say what to type, then hold it until Ctrl-C or
//! SIGTERM, or run `-- CMD` and end with its exit code. Every failure comes back as a
//! [`Failure`] with the exit code `cli::exit` documents, and leaves nothing behind (the helper
//! session's end removes the rules).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::bridge::{Bridge, BridgeError, Ready};
use crate::cli::{BridgeArgs, UpArgs, exit};
use crate::cookie::CookieError;
use crate::discover::{DiscoverError, Target, check_first, watch_config};
use crate::forward::ForwardError;
use crate::helper::{HelperError, Link};
use crate::k8s::K8sError;
use crate::k8s::Kube;
use crate::local::{shell_code, with_erl_aflags};
use crate::mode::{Mode, ModeChoice};
use crate::output::{self, Event, Failure, Output};
use crate::reach::{Reach, ReachError};
use crate::route;
use crate::watch::PodWatch;

/// Why the bridge could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// No Kubernetes client could be made.
    #[error(transparent)]
    Cluster(#[from] K8sError),
    /// The target could not be resolved.
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    /// The cookie could not be had.
    #[error(transparent)]
    Cookie(#[from] CookieError),
    /// The helper could not be used.
    #[error(transparent)]
    Helper(#[from] HelperError),
    /// A pod could not be bridged.
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// The chosen way to reach the pods cannot be set up.
    #[error(transparent)]
    Reach(#[from] ReachError),
    /// `--mode nat`, and another erlbridge of this user already redirects a pod's address.
    #[error(
        "pod IP {ip} is already bridged for you by erlbridge pid {pid} (\"{label}\"); use that \
         bridge, end it (kill {pid}), or run this one with --mode epmd"
    )]
    AlreadyBridged {
        /// The pod address.
        ip: IpAddr,
        /// The process holding it.
        pid: u32,
        /// Its session's label.
        label: String,
    },
}

/// The exit code and kind of a failure.
pub fn classify(e: &UpError) -> (u8, &'static str) {
    let helper = |e: &HelperError| match e {
        HelperError::Refused { .. } => (exit::HELPER_REFUSED, "helper_refused"),
        _ => (exit::HELPER_UNREACHABLE, "helper_unreachable"),
    };
    match e {
        UpError::Cluster(_) => (exit::KUBERNETES, "kubernetes"),
        UpError::Discover(DiscoverError::NotFound(_)) => (exit::NOT_FOUND, "target_not_found"),
        UpError::Discover(DiscoverError::NotReady(_)) => (exit::NOT_READY, "target_not_ready"),
        UpError::Discover(DiscoverError::Forbidden(_)) => (exit::FORBIDDEN, "kubernetes_forbidden"),
        UpError::Discover(DiscoverError::Api(_)) => (exit::KUBERNETES, "kubernetes"),
        UpError::Discover(DiscoverError::Selector(_)) => (exit::NOT_FOUND, "target_not_found"),
        UpError::Bridge(BridgeError::Forward(ForwardError::Api { source, .. }))
            if source.is_forbidden() =>
        {
            (exit::FORBIDDEN, "kubernetes_forbidden")
        }
        UpError::Bridge(BridgeError::Forward(
            ForwardError::Api { .. } | ForwardError::Broken { .. },
        )) => (exit::KUBERNETES, "kubernetes"),
        UpError::Bridge(
            BridgeError::Forward(ForwardError::Refused { .. }) | BridgeError::Nodes(_),
        ) => (exit::NOT_READY, "no_epmd"),
        UpError::Bridge(BridgeError::Forward(
            ForwardError::Listen(_) | ForwardError::Accept { .. },
        )) => (exit::OTHER, "local"),
        UpError::Bridge(BridgeError::Reach(e)) | UpError::Reach(e) => match e {
            ReachError::Helper(e) => helper(e),
            ReachError::NoRoute(_) => (exit::NO_ROUTE, "no_route"),
            ReachError::Inetrc(_) | ReachError::Module { .. } | ReachError::Runtime(_) => {
                (exit::OTHER, "local")
            }
        },
        UpError::Helper(e) => helper(e),
        UpError::AlreadyBridged { .. } => (exit::HELPER_REFUSED, "already_bridged"),
        UpError::Cookie(CookieError::NotFound(_)) => (exit::NOT_FOUND, "cookie_not_found"),
        UpError::Cookie(CookieError::Forbidden { .. }) => (exit::FORBIDDEN, "kubernetes_forbidden"),
        UpError::Cookie(CookieError::Api(..)) => (exit::KUBERNETES, "kubernetes"),
    }
}

impl From<UpError> for Failure {
    fn from(e: UpError) -> Failure {
        let (code, kind) = classify(&e);
        Failure::of(code, kind, &e)
    }
}

/// A bridge that is up, the nodes' cookie when known (never logged, never in JSON), and why
/// `--mode auto` chose epmd, when it did.
pub(crate) struct Up {
    pub(crate) bridge: Bridge,
    pub(crate) cookie: Option<String>,
    pub(crate) fallback: Option<String>,
}

/// The way to reach pods at `pod_ips` that `--mode` asks for ([`route::decide`]); with auto,
/// nat when the helper lets this user open a session and can make every pod connectable,
/// else epmd and the reason.
async fn reach(
    args: &BridgeArgs,
    label: &str,
    pod_ips: &[IpAddr],
) -> Result<(Reach, Option<String>), UpError> {
    let mut link = match args.mode {
        ModeChoice::Epmd => None,
        ModeChoice::Nat => Some(Ok(Link::open(&args.helper_socket, label).await?)),
        ModeChoice::Auto => Some(
            Link::open(&args.helper_socket, label)
                .await
                .map_err(|e| fallback_reason(&e)),
        ),
    };
    // Another erlbridge of this user redirecting a pod's address: the helper would refuse a
    // second redirect, and sharing one would break when that process ends.
    if let Some(Ok(open)) = &mut link
        && let Some((ip, pid, label)) = bridged_elsewhere(open, pod_ips).await
    {
        if args.mode == ModeChoice::Nat {
            return Err(UpError::AlreadyBridged { ip, pid, label });
        }
        link = Some(Err(format!(
            "pod IP {ip} is already bridged for you by erlbridge pid {pid} (\"{label}\")"
        )));
    }
    let (view, allowed) = match &link {
        Some(Ok(link)) => (
            Ok(link.policy().aliases),
            crate::helper::allowed_networks(link.policy()),
        ),
        Some(Err(why)) => (Err(why.as_str()), Vec::new()),
        None => (Err("--mode epmd"), Vec::new()),
    };
    let decision = route::decide(args.mode, view, &route::unrouted(pod_ips), &allowed)
        .map_err(ReachError::from)?;
    Ok(match (decision.mode, link) {
        (Mode::Nat, Some(Ok(link))) => (Reach::nat(link), None),
        // The link, if any, closes here: epmd mode never uses the helper.
        _ => (Reach::epmd()?, decision.why),
    })
}

/// A pod address among `pod_ips` that another session of this user redirects: the address,
/// the process and its label. (Root is shown every user's sessions: only its own count.)
async fn bridged_elsewhere(link: &mut Link, pod_ips: &[IpAddr]) -> Option<(IpAddr, u32, String)> {
    let ours = link.session_id();
    let uid = nix::unistd::getuid().as_raw();
    let sessions = link.own_sessions().await.ok()?;
    sessions
        .iter()
        .filter(|s| Some(s.session_id) != ours && s.uid == uid)
        .find_map(|s| {
            s.mappings.iter().find_map(|m| {
                let ip: IpAddr = m.pod_ip.parse().ok()?;
                pod_ips.contains(&ip).then(|| (ip, s.pid, s.label.clone()))
            })
        })
}

/// Why auto mode did not use the helper, in a few words.
fn fallback_reason(e: &HelperError) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    match e {
        HelperError::Unreachable { socket, .. } => format!(
            "erlbridge-helperd is not reachable at {} ({cause})",
            socket.display()
        ),
        HelperError::NoAccess { socket, .. } => {
            format!(
                "you may not open erlbridge-helperd's socket {}",
                socket.display()
            )
        }
        HelperError::Refused { .. } | HelperError::NotStarted { .. } => e.to_string(),
    }
}

/// Starts the target's pod watch; with `--ready-timeout`, waits for a workload that does not
/// exist yet.
async fn watch(args: &BridgeArgs, kube: &Kube, target: &Target) -> Result<PodWatch, UpError> {
    let what = format!("{target} in namespace {}", kube.namespace);
    let mut said = false;
    loop {
        let started = async {
            let config = watch_config(kube, target).await?;
            PodWatch::start(kube, config, args.rules(), what.clone()).await
        };
        match started.await {
            Ok(watch) => return Ok(watch),
            Err(DiscoverError::NotFound(why)) if args.ready_timeout.is_some() => {
                waiting(args, &mut said, &why);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Says once what `--ready-timeout` waits for.
fn waiting(args: &BridgeArgs, said: &mut bool, why: &str) {
    if !*said {
        *said = true;
        let secs = args.ready_timeout.unwrap_or_default();
        output::warn(
            args.output,
            &format!("waiting up to {secs} s for {}: {why}", args.target()),
        );
    }
}

/// Watches the target, checks its first snapshot (with `--ready-timeout`: until it has
/// something ready), finds the cookie, opens the helper session and bridges every ready pod.
async fn up(args: &BridgeArgs) -> Result<Up, UpError> {
    let target = args.target();
    let kube = crate::k8s::connect(&args.cluster.options()).await?;
    let mut watch = watch(args, &kube, &target).await?;
    let mut said = false;
    let snapshot = loop {
        let snapshot = watch.snapshot();
        match check_first(&target, &kube.namespace, &snapshot) {
            Ok(_) => break snapshot,
            Err(DiscoverError::NotFound(why) | DiscoverError::NotReady(why))
                if args.ready_timeout.is_some() =>
            {
                waiting(args, &mut said, &why);
                watch.changed().await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let ready: Vec<_> = snapshot.into_values().filter_map(Result::ok).collect();
    let cookie = crate::cookie::find(&kube, args.cookie_from.as_ref(), &ready).await?;
    let ips: Vec<IpAddr> = ready.iter().map(|p| p.ip).collect();
    let (reach, fallback) = reach(args, &format!("erlbridge up {target}"), &ips).await?;
    let mut meter = output::Meter::new(args.output, target.to_string());
    let bridge = Bridge::up(kube, watch, reach, |p| meter.update(p.attached, p.total)).await?;
    meter.done();
    Ok(Up {
        bridge,
        cookie,
        fallback,
    })
}

/// Brings the bridge up (within `--ready-timeout`), writes the cookie file if asked, and says
/// what is not bridged and why; the caller reports it ready.
pub(crate) async fn bring_up(args: &BridgeArgs) -> Result<Up, Failure> {
    if args.output == Output::Text {
        eprintln!("erlbridge: bridging {} ...", args.target());
    }
    let up = match args.ready_timeout {
        Some(secs) => tokio::time::timeout(Duration::from_secs(secs), up(args))
            .await
            .map_err(|_| {
                Failure::new(
                    exit::READY_TIMEOUT,
                    "ready_timeout",
                    format!("not ready within --ready-timeout {secs}s; nothing was left behind"),
                )
            })??,
        None => up(args).await?,
    };
    if let Some(path) = &args.cookie_file {
        let Some(cookie) = &up.cookie else {
            return Err(Failure::new(
                exit::NOT_FOUND,
                "cookie_not_found",
                "--cookie-file: no cookie is known; say where it is with --cookie-from",
            ));
        };
        crate::cookie::write_file(path, cookie).map_err(|e| {
            Failure::new(
                exit::OTHER,
                "local",
                format!("cannot write the cookie file {}: {e}", path.display()),
            )
        })?;
    }
    let ready = up.bridge.ready();
    for why in &ready.skipped {
        output::warn(
            args.output,
            &format!("not bridged yet: {why}; it will be the moment it is Ready"),
        );
    }
    if let Some(why) = &up.fallback {
        output::warn(args.output, &format!("using mode epmd: {why}"));
    }
    Ok(up)
}

/// The ready event, in JSON mode.
pub(crate) fn ready_event(ready: &Ready) -> Event {
    Event::Ready {
        nodes: ready.nodes.clone(),
        inetrc: ready.inetrc.clone(),
        mode: ready.mode,
        erl_flags: ready.erl_flags.clone(),
    }
}

fn report_ready(args: &BridgeArgs, ready: &Ready, cookie: Option<&str>) {
    match args.output {
        Output::Json => output::emit(&ready_event(ready)),
        Output::Text => output::say(&output::text::ready(
            ready,
            cookie,
            args.show_cookie,
            &crate::local::name(args, "me"),
        )),
    }
}

/// Runs `erlbridge up`; returns the process's exit code.
pub async fn run(args: UpArgs) -> Result<u8, Failure> {
    if !args.command.is_empty() {
        // CMD's stdout and stderr are CMD's own: erlbridge speaks on another channel.
        let sink: Box<dyn std::io::Write + Send> = match &args.events {
            Some(spec) => output::open_events(spec).map_err(|e| {
                Failure::new(
                    exit::USAGE,
                    "usage",
                    format!("cannot open --events {spec}: {e}"),
                )
            })?,
            None => Box::new(std::io::stderr()),
        };
        output::redirect(sink);
    }
    let Up {
        mut bridge, cookie, ..
    } = bring_up(&args.bridge).await?;
    report_ready(&args.bridge, &bridge.ready(), cookie.as_deref());
    let env = command_env(&bridge.ready(), cookie.as_deref());
    let out = args.bridge.output;
    let started = std::time::Instant::now();
    let nodes = bridge.nodes().len();
    let changes = AtomicUsize::new(0);
    // The bridge heals itself for as long as it is up; dropping this future (when a signal
    // comes or the command exits) drops the bridge, which removes its rules.
    let heal = async {
        bridge
            .run(|change| {
                changes.fetch_add(1, Ordering::Relaxed);
                output::change(out, &change);
            })
            .await;
        // The watch ended for good: keep the bridge as it is.
        std::future::pending::<()>().await
    };
    let code = if args.command.is_empty() {
        tokio::select! {
            () = heal => exit::OK,
            _ = stop_signal() => exit::OK,
        }
    } else {
        tokio::select! {
            () = heal => exit::OTHER,
            code = run_command(&args, env) => code,
        }
    };
    drop(bridge);
    let changes = changes.load(Ordering::Relaxed);
    eprintln!(
        "erlbridge: bridge of {nodes} node{} ended after {}s with {changes} change{}; its rules are removed (exit {code})",
        if nodes == 1 { "" } else { "s" },
        started.elapsed().as_secs(),
        if changes == 1 { "" } else { "s" },
    );
    Ok(code)
}

/// Completes on SIGTERM or SIGINT with the signal's number.
pub(crate) async fn stop_signal() -> u8 {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the default action ends the process; the helper still cleans up.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => 15,
        _ = int.recv() => 2,
    }
}

/// The environment `-- CMD` gets: the bridged node names, the inetrc file if any, the epmd
/// module's flags added to the user's own ERL_AFLAGS (epmd mode), and the cookie when known.
pub(crate) fn command_env(ready: &Ready, cookie: Option<&str>) -> Vec<(String, String)> {
    let nodes: Vec<&str> = ready.nodes.iter().map(|n| n.node.as_str()).collect();
    let mut env = vec![
        (
            "ERLBRIDGE_NODE".to_owned(),
            nodes.first().copied().unwrap_or_default().to_owned(),
        ),
        ("ERLBRIDGE_NODES".to_owned(), nodes.join(" ")),
    ];
    if let Some(path) = &ready.inetrc {
        env.push(("ERL_INETRC".to_owned(), path.display().to_string()));
    }
    if let Some(flags) = &ready.erl_flags {
        env.push(("ERL_AFLAGS".to_owned(), with_erl_aflags(flags)));
    }
    if let Some(cookie) = cookie {
        env.push(("ERLBRIDGE_COOKIE".to_owned(), cookie.to_owned()));
    }
    env
}

/// How long CMD may take to end after erlbridge passed it a signal, before it is killed.
const COMMAND_GRACE: Duration = Duration::from_secs(5);

/// The shell's exit code for a command that could not be started: 127 when it does not exist,
/// 126 when it cannot be executed; and what to say.
fn not_started(command: &str, e: &std::io::Error) -> (u8, String) {
    match e.kind() {
        std::io::ErrorKind::NotFound => (127, format!("{command}: command not found")),
        std::io::ErrorKind::PermissionDenied => (126, format!("{command}: permission denied")),
        _ => (126, format!("{command}: cannot be executed: {e}")),
    }
}

async fn run_command(args: &UpArgs, env: Vec<(String, String)>) -> u8 {
    let mut cmd = tokio::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).envs(env).kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let (code, message) = not_started(&args.command[0], &e);
            output::fail(args.bridge.output, &Failure::new(code, "command", message));
            return code;
        }
    };
    let status = tokio::select! {
        status = child.wait() => status,
        signal = stop_signal() => {
            // Pass SIGTERM on (a terminal's Ctrl-C reached CMD already, being in its process
            // group), give CMD a moment to end, then end it.
            if signal == 15
                && let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            match tokio::time::timeout(COMMAND_GRACE, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    let _ = child.kill().await;
                    return 128 + signal;
                }
            }
        }
    };
    let code = match status {
        Ok(status) => shell_code(status),
        Err(_) => exit::OTHER,
    };
    if args.bridge.output == Output::Json {
        output::emit(&Event::Exited { code });
    }
    code
}
