//! The `up` subcommand: bring the bridge up, say what to type, then hold it until Ctrl-C or
//! SIGTERM, or run `-- CMD` and end with its exit code. Every failure is reported with the
//! exit code `cli::exit` documents, and leaves nothing behind (the helper session's end
//! removes the rules).

use std::io::Write as _;

use tokio::signal::unix::{SignalKind, signal};

use crate::bridge::{Bridge, UpError, UpOptions, up};
use crate::cli::{BridgeArgs, UpArgs, exit};
use crate::cookie::CookieError;
use crate::discover::DiscoverError;
use crate::forward::ForwardError;
use crate::helper::HelperError;
use crate::output::{self, Output};

/// The exit code and kind of a failure.
pub fn classify(e: &UpError) -> (u8, &'static str) {
    let forbidden =
        |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 401 || s.code == 403);
    match e {
        UpError::Cluster(_) => (exit::KUBERNETES, "kubernetes"),
        UpError::Discover(DiscoverError::NotFound(_)) => (exit::NOT_FOUND, "target_not_found"),
        UpError::Discover(DiscoverError::NotReady(_)) => (exit::NOT_READY, "target_not_ready"),
        UpError::Discover(DiscoverError::Forbidden(_)) => (exit::FORBIDDEN, "kubernetes_forbidden"),
        UpError::Discover(DiscoverError::Api(_)) => (exit::KUBERNETES, "kubernetes"),
        UpError::Forward(ForwardError::Api { source, .. }) if forbidden(source) => {
            (exit::FORBIDDEN, "kubernetes_forbidden")
        }
        UpError::Forward(ForwardError::Api { .. } | ForwardError::Stalled { .. }) => {
            (exit::KUBERNETES, "kubernetes")
        }
        UpError::Forward(ForwardError::Refused { .. }) | UpError::NoEpmd { .. } => {
            (exit::NOT_READY, "no_epmd")
        }
        UpError::Forward(ForwardError::Listen(_)) | UpError::Inetrc(..) => (exit::OTHER, "local"),
        UpError::Helper(HelperError::Refused { .. }) => (exit::HELPER_REFUSED, "helper_refused"),
        UpError::Helper(_) => (exit::HELPER_UNREACHABLE, "helper_unreachable"),
        UpError::Cookie(CookieError::NotFound(_)) => (exit::NOT_FOUND, "cookie_not_found"),
        UpError::Cookie(CookieError::Forbidden { .. }) => (exit::FORBIDDEN, "kubernetes_forbidden"),
        UpError::Cookie(CookieError::Api(..)) => (exit::KUBERNETES, "kubernetes"),
    }
}

/// An error with its causes, each said once.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
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

pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Reports a failure the way `--output` asks: JSON on stdout, text on stderr.
pub(crate) fn fail(output: Output, code: u8, kind: &str, message: &str) -> u8 {
    let line = output::error(output, code, kind, message);
    match output {
        Output::Json => say(&line),
        Output::Text => eprintln!("{line}"),
    }
    code
}

/// Brings the bridge up (within `--ready-timeout`), writes the cookie file if asked, and
/// reports the outcome; on failure, returns the exit code.
pub(crate) async fn bring_up(args: &BridgeArgs) -> Result<Bridge, u8> {
    let opts = UpOptions {
        cluster: args.cluster.options(),
        target: args.target(),
        node_host: args.node_host,
        helper_socket: args.helper_socket.clone(),
        cookie_from: args.cookie_from.clone(),
    };
    if args.output == Output::Text {
        eprintln!("erlbridge: bridging {} ...", opts.target);
    }
    let result = match args.ready_timeout {
        Some(secs) => match tokio::time::timeout(std::time::Duration::from_secs(secs), up(&opts))
            .await
        {
            Ok(result) => result,
            Err(_) => {
                let message =
                    format!("not ready within --ready-timeout {secs}s; nothing was left behind");
                return Err(fail(
                    args.output,
                    exit::READY_TIMEOUT,
                    "ready_timeout",
                    &message,
                ));
            }
        },
        None => up(&opts).await,
    };
    let bridge = result.map_err(|e| {
        let (code, kind) = classify(&e);
        fail(args.output, code, kind, &chain(&e))
    })?;
    if let Some(path) = &args.cookie_file {
        let Some(cookie) = &bridge.cookie else {
            let message = "--cookie-file: no cookie is known; say where it is with --cookie-from";
            return Err(fail(
                args.output,
                exit::NOT_FOUND,
                "cookie_not_found",
                message,
            ));
        };
        if let Err(e) = crate::cookie::write_file(path, cookie) {
            let message = format!("cannot write the cookie file {}: {e}", path.display());
            return Err(fail(args.output, exit::OTHER, "local", &message));
        }
    }
    for why in &bridge.skipped {
        eprintln!(
            "{}",
            output::warning(Output::Text, &format!("not bridged: {why}"))
        );
    }
    say(&output::ready(args.output, &bridge, args.show_cookie));
    Ok(bridge)
}

/// Runs `erlbridge up`; returns the process's exit code.
pub async fn run(args: UpArgs) -> u8 {
    let mut bridge = match bring_up(&args.bridge).await {
        Ok(bridge) => bridge,
        Err(code) => return code,
    };
    let env = command_env(&bridge);
    let out = args.bridge.output;
    let started = std::time::Instant::now();
    let nodes = bridge.nodes().len();
    let changes = std::sync::atomic::AtomicUsize::new(0);
    // The bridge heals itself for as long as it is up; dropping this future (when a signal
    // comes or the command exits) drops the bridge, which removes its rules.
    let heal = async {
        bridge
            .run(|change| {
                changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                say(&output::change(out, &change));
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
    eprintln!(
        "erlbridge: bridge of {nodes} node{} ended after {}s with {} change{}; its rules are removed (exit {code})",
        if nodes == 1 { "" } else { "s" },
        started.elapsed().as_secs(),
        changes.load(std::sync::atomic::Ordering::Relaxed),
        if changes.load(std::sync::atomic::Ordering::Relaxed) == 1 {
            ""
        } else {
            "s"
        },
    );
    code
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

/// The environment `-- CMD` gets: the bridged node names, and the inetrc file if any.
pub(crate) fn command_env(bridge: &Bridge) -> Vec<(String, String)> {
    let nodes: Vec<String> = bridge.nodes().into_iter().map(|n| n.node).collect();
    let mut env = vec![
        (
            "ERLBRIDGE_NODE".to_owned(),
            nodes.first().cloned().unwrap_or_default(),
        ),
        ("ERLBRIDGE_NODES".to_owned(), nodes.join(" ")),
    ];
    if let Some(path) = &bridge.inetrc {
        env.push(("ERL_INETRC".to_owned(), path.display().to_string()));
    }
    if let Some(cookie) = &bridge.cookie {
        env.push(("ERLBRIDGE_COOKIE".to_owned(), cookie.clone()));
    }
    env
}

async fn run_command(args: &UpArgs, env: Vec<(String, String)>) -> u8 {
    let mut cmd = tokio::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).envs(env).kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let message = format!("cannot run {:?}: {e}", args.command[0]);
            eprintln!(
                "{}",
                output::error(args.bridge.output, 127, "command", &message)
            );
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
        say(&serde_json::json!({"event": "exited", "code": code}).to_string());
    }
    code
}
