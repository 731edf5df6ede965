//! testbed (needs root): keeps the built-in test cluster up to try erlbridge by hand.
//! `testbed up` builds it in the background and prints where everything is and the commands
//! to run; `testbed status` prints that again; `testbed down` removes everything it made.
//! `scripts/testbed` builds this and runs it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use erlbridge_testbed::standing::{self, DEFAULT_STATE_DIR};

#[derive(Parser)]
#[command(about = "Keeps the built-in test cluster up to try erlbridge by hand")]
struct Args {
    /// Where the running test bed keeps its pid, state and log.
    #[arg(long, default_value = DEFAULT_STATE_DIR, global = true)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the test bed in the background and print how to use it.
    Up,
    /// Print how to use the running test bed.
    Status,
    /// Remove everything the test bed made, and wait until it is gone.
    Down,
    /// Run the test bed in the foreground until SIGTERM (what `up` starts).
    #[command(hide = true)]
    Serve,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "testbed: the test bed needs root (network namespaces, nftables); run: sudo scripts/testbed ..."
        );
        return ExitCode::FAILURE;
    }
    let dir = args.state_dir.as_path();
    let result = match args.command {
        Cmd::Up => standing::up(dir),
        Cmd::Status => standing::status(dir),
        Cmd::Down => standing::down(dir),
        Cmd::Serve => standing::serve(dir).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        eprintln!("testbed: {e:#}");
        ExitCode::FAILURE
    })
}
