//! Python clients of the helper's gRPC API, as IT would check it with its own tools: a virtual
//! environment of Debian's python3 with grpcio and its code generator from the package
//! registry (PyPI), at pinned versions, cached under [`crate::container::CACHE`] (keyed on
//! what it holds), readable by every test user.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::container::{CACHE, sha256};
use crate::netns::run;

/// What the environment holds: the current grpcio (whose C-core sends a Unix socket's path as
/// `:authority`), its code generator, and the protobuf runtime they agree on.
pub const REQUIREMENTS: &[&str] = &["grpcio==1.85.3", "grpcio-tools==1.85.1", "protobuf==7.36.2"];

/// The Python interpreter every user can run (Debian's, not a per-user one).
const PYTHON: &str = "/usr/bin/python3";

/// The environment's python, made first if this machine has none for [`REQUIREMENTS`].
/// Concurrent callers wait for one build.
pub fn grpcio() -> anyhow::Result<PathBuf> {
    let key = sha256(&format!("{PYTHON}\n{}\n", REQUIREMENTS.join("\n")))?;
    let dir = Path::new(CACHE).join(format!("grpcio-{}", &key[..16]));
    let python = dir.join("bin/python");
    if python.exists() {
        return Ok(python);
    }
    std::fs::create_dir_all(CACHE)?;
    let lock = std::fs::File::create(dir.with_extension("lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("lock the Python environment cache")?;
    if python.exists() {
        return Ok(python);
    }
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    eprintln!(
        "making a Python environment with {} once for this machine in {}",
        REQUIREMENTS.join(" "),
        dir.display()
    );
    run(Command::new(PYTHON).args(["-m", "venv"]).arg(&partial))
        .context("python3 -m venv (Debian's python3-venv)")?;
    run(Command::new(partial.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(REQUIREMENTS))
    .context("pip install from the package registry")?;
    // Only `bin/python -m ...` is used, which finds the environment next to itself wherever
    // it is (its scripts' `#!` lines would still name the partial directory).
    std::fs::rename(&partial, &dir)?;
    if !python.exists() {
        bail!("{} has no bin/python", dir.display());
    }
    Ok(python)
}

/// Generates the Python modules of the helper's API (`erlbridge/helper/v1/helper_pb2*.py`)
/// from `proto_root` into `out`, readable by every user.
pub fn helper_stubs(python: &Path, proto_root: &Path, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    run(Command::new(python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(proto_root)
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .arg("erlbridge/helper/v1/helper.proto"))
    .context("grpc_tools.protoc")?;
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(out))?;
    Ok(())
}
