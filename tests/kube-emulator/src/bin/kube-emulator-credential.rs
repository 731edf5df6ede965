//! `kube-emulator-credential --issuer FILE [--log FILE]`: the exec credential plugin for the
//! emulator's exec logins. A kubeconfig's `users[].user.exec` runs it; it prints a
//! `client.authentication.k8s.io/v1` ExecCredential with a short-lived token the emulator
//! accepts (see `erlbridge_kube_emulator::credential`), and appends a line to the log for each
//! call.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// An exec credential plugin for the Kubernetes API emulator.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The issuer file the emulator wrote.
    #[arg(long)]
    issuer: PathBuf,
    /// A file to append one line to per call.
    #[arg(long)]
    log: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match erlbridge_kube_emulator::credential::run_plugin(&args.issuer, args.log.as_deref()) {
        Ok(credential) => {
            println!("{credential}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kube-emulator-credential: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
