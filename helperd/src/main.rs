//! `erlbridge-helperd [--config FILE] [--socket PATH]`: load the configuration, bind the socket,
//! keep only CAP_NET_ADMIN, serve until SIGTERM or SIGINT, and leave no rule behind.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use erlbridge_helperd::alias::IpAlias;
use erlbridge_helperd::config::{Config, DEFAULT_CONFIG, GroupSpec};
use erlbridge_helperd::nft::Nft;
use erlbridge_helperd::policy::Policy;
use erlbridge_helperd::service::Helper;
use erlbridge_helperd::{privilege, server};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

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
    let mut config = Config::load(&args.config)?;
    if let Some(socket) = args.socket {
        config.socket = socket;
    }
    let gid = match &config.group {
        GroupSpec::Gid(gid) => Some(*gid),
        GroupSpec::Name(name) => {
            let group = nix::unistd::Group::from_name(name)
                .with_context(|| format!("cannot look up group {name}"))?;
            if group.is_none() {
                warn!(group = %name, "the access group does not exist: only root and allowed_uids may use the helper");
            }
            group.map(|g| g.gid.as_raw())
        }
    };
    let policy = Policy::new(&config, gid);
    // Socket activation: systemd (or systemd-socket-activate) bound the socket, with the owner
    // and mode its unit says, and passes it as fd 3.
    let activated = listenfd::ListenFd::from_env()
        .take_unix_listener(0)
        .context("cannot take the socket systemd passed")?;
    // A socket systemd passed belongs to systemd; one helperd bound itself, it removes at exit.
    let (listener, owns_socket_file) = match activated {
        Some(listener) => {
            info!("serving on the socket systemd passed");
            (listener, false)
        }
        None => (
            server::bind(&config.socket, gid, !config.allowed_uids.is_empty())?,
            true,
        ),
    };
    privilege::keep_only_net_admin()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
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
        .context("cannot set up the nftables table")?;
        let shutdown = async {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        };
        server::serve(listener, helper, shutdown).await?;
        if owns_socket_file {
            let _ = std::fs::remove_file(&config.socket);
        }
        Ok(())
    })
}
