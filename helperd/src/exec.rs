//! Running `nft` and `ip`: by absolute path, never through a shell, with an empty environment,
//! the script on standard input. What they print on failure goes into the error for the log.
//! Every program helperd runs goes through here.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// A kernel change that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The program could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("{program} {args} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: PathBuf,
        /// Its arguments, joined.
        args: String,
        /// How it ended.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The host's addresses could not be read.
    #[error("cannot list the host's addresses")]
    Addresses(#[source] nix::Error),
}

/// Runs `program args...` with `stdin` as its input and waits for it.
pub async fn run(program: &Path, args: &[&str], stdin: &str) -> Result<(), BackendError> {
    execute(program, args, stdin).await.map(drop)
}

/// Runs `program args...` with no input and returns what it printed, trimmed.
pub async fn output(program: &Path, args: &[&str]) -> Result<String, BackendError> {
    let output = execute(program, args, "").await?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

async fn execute(program: &Path, args: &[&str], stdin: &str) -> Result<Output, BackendError> {
    let spawn_error = |source| BackendError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .await
            .map_err(spawn_error)?;
    }
    let output = child.wait_with_output().await.map_err(spawn_error)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(BackendError::Failed {
            program: program.to_owned(),
            args: args.join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
