//! `erlbridge-helperd [--config FILE] [--socket PATH]`: take the socket systemd passed (or bind
//! one), close everything else inherited, load the configuration, keep only CAP_NET_ADMIN,
//! serve until SIGTERM or SIGINT, and leave no rule behind.
//!
//! Under systemd, a helper that cannot start keeps the socket and answers every call with why
//! and the one command that recovers, instead of exiting until systemd gives up on the socket.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use erlbridge_helperd::alias::IpAlias;
use erlbridge_helperd::config::{Config, DEFAULT_CONFIG, GroupSpec};
use erlbridge_helperd::nft::Nft;
use erlbridge_helperd::policy::Policy;
use erlbridge_helperd::service::Helper;
use erlbridge_helperd::{error, privilege, process, server};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

/// The erlbridge helper: adds uid-scoped nftables DNAT rules for the callers its policy allows.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file; a missing file means the defaults.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The Unix socket to listen on, instead of the configuration's `socket`.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("erlbridge-helperd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    // Socket activation: systemd (or systemd-socket-activate) bound the socket, with the owner
    // and mode its unit says, and passes it as fd 3.
    let activated = listenfd::ListenFd::from_env()
        .take_unix_listener(0)
        .context("cannot take the socket systemd passed")?;
    process::close_inherited_descriptors(activated.as_ref().map(AsRawFd::as_raw_fd))
        .context("cannot close the descriptors erlbridge-helperd inherited")?;
    let prepared = load(&args).and_then(|config| {
        let gid = access_group(&config)?;
        let need = u64::from(config.max_connections)
            + (server::REFUSING_AT_ONCE + server::RESERVED_DESCRIPTORS) as u64;
        process::reserve_open_files(need, config.max_connections)?;
        Ok((config, gid))
    });
    let (config, gid) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => return could_not_start(activated, e),
    };
    let policy = Policy::new(&config, gid);
    // A socket systemd passed belongs to systemd; one helperd bound itself, it removes at exit.
    let (listener, owns_socket_file) = match activated {
        Some(listener) => {
            info!("serving on the socket systemd passed");
            warn_if_listed_uids_cannot_connect(&listener, &config);
            (listener, false)
        }
        None => (
            server::bind(&config.socket, gid, !config.allowed_uids.is_empty())?,
            true,
        ),
    };
    let activated = !owns_socket_file;
    if let Err(e) = privilege::keep_only_net_admin() {
        if owns_socket_file {
            let _ = std::fs::remove_file(&config.socket);
        }
        return could_not_start(activated.then_some(listener), e.into());
    }

    let runtime = runtime()?;
    runtime.block_on(async {
        let helper = Helper::start(
            policy,
            Nft {
                program: config.nft.clone(),
            },
            IpAlias {
                program: config.ip.clone(),
            },
        )
        .await
        .context("cannot set up the nftables table");
        let helper = match helper {
            Ok(helper) => helper,
            Err(e) if activated => return refuse_every_call(listener, &e).await,
            Err(e) => return Err(e),
        };
        helper
            .serve(listener, config.idle_timeout, stop_signal()?)
            .await?;
        if owns_socket_file {
            let _ = std::fs::remove_file(&config.socket);
        }
        Ok(())
    })
}

fn load(args: &Args) -> anyhow::Result<Config> {
    let mut config = Config::load(&args.config)?;
    if let Some(socket) = &args.socket {
        config.socket.clone_from(socket);
    }
    Ok(config)
}

/// The access group's gid, or `None` when the named group does not exist here.
fn access_group(config: &Config) -> anyhow::Result<Option<u32>> {
    match &config.group {
        GroupSpec::Gid(gid) => Ok(Some(*gid)),
        GroupSpec::Name(name) => {
            let group = nix::unistd::Group::from_name(name)
                .with_context(|| format!("cannot look up group {name}"))?;
            if group.is_none() {
                warn!(group = %name, "the access group does not exist: only root and allowed_uids may use the helper");
            }
            Ok(group.map(|g| g.gid.as_raw()))
        }
    }
}

/// systemd's socket has the unit's mode (0660, the group's); uids listed without the group
/// cannot open it unless an administrator opened the socket up too.
fn warn_if_listed_uids_cannot_connect(listener: &UnixListener, config: &Config) {
    use std::os::unix::fs::PermissionsExt;
    if config.allowed_uids.is_empty() {
        return;
    }
    let mode = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(std::path::Path::to_owned))
        .and_then(|path| std::fs::metadata(path).ok())
        .map(|m| m.permissions().mode() & 0o777);
    if mode.is_some_and(|m| m & 0o006 != 0o006) {
        warn!(
            "allowed_uids lists uids, but the socket systemd passed is not open to all: uids \
             outside the group cannot connect; set SocketMode=0666 for erlbridge-helperd.socket \
             (sudo systemctl edit erlbridge-helperd.socket)"
        );
    }
}

/// A helper that cannot start: by hand, it says why and exits; under systemd (`listener` is the
/// socket it passed), it keeps the socket and answers every call with why.
fn could_not_start(listener: Option<UnixListener>, e: anyhow::Error) -> anyhow::Result<()> {
    let Some(listener) = listener else {
        return Err(e);
    };
    // Nothing to change in the kernel: keep no capability at all. Failing that, answering is
    // still better than leaving callers with a socket nobody serves.
    if let Err(dropping) = privilege::keep_none() {
        warn!(error = %error::chain(&dropping), "cannot drop the capabilities");
    }
    runtime()?.block_on(refuse_every_call(listener, &e))
}

async fn refuse_every_call(listener: UnixListener, e: &anyhow::Error) -> anyhow::Result<()> {
    let reason = format!("{e:#}");
    error!(
        reason = %reason,
        "the helper could not start; it answers every call with why until it is restarted"
    );
    server::refuse_every_call(listener, error::could_not_start(&reason), stop_signal()?).await?;
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Completes on SIGTERM or SIGINT.
fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        info!("stopping");
    })
}
