//! The `up` subcommand: bring the bridge up, say what to type, then hold it until Ctrl-C or
//! SIGTERM, or run `-- CMD` and end with its exit code. Every failure comes back as a
//! [`Failure`] with the exit code `cli::exit` documents, and leaves nothing behind (the helper
//! session's end removes the rules).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::signal::unix::{SignalKind, signal};

use crate::bridge::{Bridge, BridgeError, Ready};
use crate::cli::{BridgeArgs, UpArgs, exit};
use crate::cookie::CookieError;
use crate::discover::{DiscoverError, check_first, watch_config};
use crate::forward::ForwardError;
use crate::helper::{HelperError, Link};
use crate::k8s::K8sError;
use crate::output::{self, Event, Failure, Output};
use crate::reach::{Mode, ModeChoice, Reach, ReachError};
use crate::route;
use crate::runtime::{RuntimeDir, RuntimeError};
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
    /// The runtime directory cannot be used.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The chosen way to reach the pods cannot be set up.
    #[error(transparent)]
    Reach(#[from] ReachError),
}

/// The exit code and kind of a failure.
pub fn classify(e: &UpError) -> (u8, &'static str) {
    let forbidden =
        |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 401 || s.code == 403);
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
            if forbidden(source) =>
        {
            (exit::FORBIDDEN, "kubernetes_forbidden")
        }
        UpError::Bridge(BridgeError::Forward(
            ForwardError::Api { .. } | ForwardError::Stalled { .. },
        )) => (exit::KUBERNETES, "kubernetes"),
        UpError::Bridge(
            BridgeError::Forward(ForwardError::Refused { .. }) | BridgeError::NoEpmd { .. },
        ) => (exit::NOT_READY, "no_epmd"),
        UpError::Bridge(BridgeError::Forward(
            ForwardError::Listen(_) | ForwardError::Accept { .. },
        ))
        | UpError::Runtime(_) => (exit::OTHER, "local"),
        UpError::Bridge(BridgeError::Reach(e)) | UpError::Reach(e) => match e {
            ReachError::Helper(e) => helper(e),
            ReachError::NoRoute(_) => (exit::NO_ROUTE, "no_route"),
            ReachError::Inetrc(_) | ReachError::Module { .. } => (exit::OTHER, "local"),
        },
        UpError::Helper(e) => helper(e),
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
    let dir = RuntimeDir::create()?;
    let link = match args.mode {
        ModeChoice::Epmd => None,
        ModeChoice::Nat => Some(Ok(Link::open(&args.helper_socket, label).await?)),
        ModeChoice::Auto => Some(
            Link::open(&args.helper_socket, label)
                .await
                .map_err(|e| fallback_reason(&e)),
        ),
    };
    let unrouted: Vec<IpAddr> = pod_ips
        .iter()
        .copied()
        .filter(|ip| route::needs_alias(*ip))
        .collect();
    let (view, allowed) = match &link {
        Some(Ok(link)) => (
            Ok(link.policy().aliases),
            link.policy()
                .allowed_cidrs
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
        ),
        Some(Err(why)) => (Err(why.as_str()), Vec::new()),
        None => (Err("--mode epmd"), Vec::new()),
    };
    let decision = route::decide(args.mode, view, &unrouted, &allowed).map_err(ReachError::from)?;
    Ok(match (decision.mode, link) {
        (Mode::Nat, Some(Ok(link))) => (Reach::nat(dir, link), None),
        // The link, if any, closes here: epmd mode never uses the helper.
        _ => (Reach::epmd(dir)?, decision.why),
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
        HelperError::NoAccess { socket } => {
            format!(
                "you may not open erlbridge-helperd's socket {}",
                socket.display()
            )
        }
        HelperError::Refused { .. } | HelperError::NotStarted { .. } => e.to_string(),
    }
}

/// Watches the target, checks its first snapshot, finds the cookie, opens the helper session
/// and bridges every ready pod.
async fn up(args: &BridgeArgs) -> Result<Up, UpError> {
    let target = args.target();
    let (client, namespace) = crate::k8s::connect(&args.cluster.options()).await?;
    let config = watch_config(&client, &namespace, &target).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let what = format!("{target} in namespace {namespace}");
    let watch = PodWatch::start(pods, config, args.node_host, what).await?;
    let snapshot = watch.snapshot();
    check_first(&target, &namespace, &snapshot)?;
    let ready: Vec<_> = snapshot.into_values().filter_map(Result::ok).collect();
    let cookie =
        crate::cookie::find(&client, &namespace, args.cookie_from.as_ref(), &ready).await?;
    let ips: Vec<IpAddr> = ready.iter().map(|p| p.ip).collect();
    let (reach, fallback) = reach(args, &format!("erlbridge up {target}"), &ips).await?;
    let bridge = Bridge::up(client, &namespace, watch, reach).await?;
    Ok(Up {
        bridge,
        cookie,
        fallback,
    })
}

/// Brings the bridge up (within `--ready-timeout`), writes the cookie file if asked, and
/// reports it ready.
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
        output::warn(Output::Text, &format!("not bridged: {why}"));
    }
    if let Some(why) = &up.fallback {
        output::warn(args.output, &format!("using mode epmd: {why}"));
    }
    report_ready(args, &ready, up.cookie.as_deref());
    Ok(up)
}

fn report_ready(args: &BridgeArgs, ready: &Ready, cookie: Option<&str>) {
    match args.output {
        Output::Json => output::emit(&Event::Ready {
            nodes: ready.nodes.clone(),
            inetrc: ready.inetrc.clone(),
            mode: ready.mode,
            erl_flags: ready.erl_flags.clone(),
        }),
        Output::Text => output::say(&output::text::ready(ready, cookie, args.show_cookie)),
    }
}

/// Runs `erlbridge up`; returns the process's exit code.
pub async fn run(args: UpArgs) -> Result<u8, Failure> {
    let Up {
        mut bridge, cookie, ..
    } = bring_up(&args.bridge).await?;
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

/// `flags` after the user's own ERL_AFLAGS, if any.
pub(crate) fn with_erl_aflags(flags: &str) -> String {
    match std::env::var("ERL_AFLAGS") {
        Ok(own) if !own.trim().is_empty() => format!("{own} {flags}"),
        _ => flags.to_owned(),
    }
}

async fn run_command(args: &UpArgs, env: Vec<(String, String)>) -> u8 {
    let mut cmd = tokio::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).envs(env).kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let message = format!("cannot run {}: {e}", args.command[0]);
            output::fail(args.bridge.output, &Failure::new(127, "command", message));
            return 127;
        }
    };
    let status = tokio::select! {
        status = child.wait() => status,
        signal = stop_signal() => {
            let _ = child.kill().await;
            return 128 + signal;
        }
    };
    let code = match status {
        Ok(s) => s
            .code()
            .map_or(exit::OTHER, |c| u8::try_from(c).unwrap_or(exit::OTHER)),
        Err(_) => exit::OTHER,
    };
    if args.bridge.output == Output::Json {
        output::emit(&Event::Exited { code });
    }
    code
}
