//! `erlbridge`: parse the command line, set up logging on stderr, run the subcommand, exit with
//! its code.

use std::process::ExitCode;

use clap::Parser;
use erlbridge::cli::{Cli, Command, exit};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let generated = match cli.command {
        Command::Completions { shell } => Some(erlbridge::generate::completions(shell)),
        Command::Man => Some(erlbridge::generate::man()),
        _ => None,
    };
    if let Some(written) = generated {
        return match written {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("erlbridge: cannot write to stdout: {e}");
                ExitCode::from(exit::OTHER)
            }
        };
    }
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(format!("erlbridge={level}"))
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("erlbridge: cannot start the async runtime: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    let output = cli.command.output();
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => erlbridge::up::run(args).await,
            Command::Remsh(args) => erlbridge::remsh::run(args).await,
            Command::Observer(args) => erlbridge::observer::run(args).await,
            Command::Top(args) => erlbridge::top::run(args).await,
            Command::Eval(args) => erlbridge::eval::run(args).await,
            Command::Status(args) => erlbridge::status::run(args.helper_socket, args.output).await,
            Command::Doctor(args) => {
                let request = erlbridge::doctor::Request {
                    socket: args.helper_socket.clone(),
                    cluster: args.cluster.options(),
                    target: args.target.clone(),
                    rules: args.nodes.rules(),
                    mode: args.mode,
                };
                Ok(erlbridge::doctor::run(request, args.output).await)
            }
            Command::Completions { .. } | Command::Man => Ok(exit::OK),
        }
    });
    // A read of stdin in flight (top's `q`) cannot be cancelled: leave it to the exit.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            erlbridge::output::fail(output, &failure);
            ExitCode::from(failure.code)
        }
    }
}
