//! The private runtime directory of one erlbridge process, where the files local Erlang nodes
//! read live: the ERL_INETRC file for DNS-named nodes, and in the no-helper mode the epmd
//! module and its map. It is `$XDG_RUNTIME_DIR/erlbridge/<pid>` (else
//! `~/.cache/erlbridge/run/<pid>`), mode 0700, and goes when erlbridge ends; a start removes
//! the directories of erlbridge processes that ended without removing theirs (kill -9).

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tracing::debug;

/// The environment variable naming the per-user runtime directory.
pub const ENV_RUNTIME_DIR: &str = "XDG_RUNTIME_DIR";

/// Why the runtime directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The directory could not be made or checked.
    #[error(
        "cannot use {path} as erlbridge's runtime directory; set XDG_RUNTIME_DIR to a \
         directory you can write"
    )]
    Io {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The directory belongs to someone else or others may enter it.
    #[error(
        "{path} is not a private directory of yours (owner uid {owner}, mode {mode:o}); \
         erlbridge keeps files there that local nodes load, so it must be yours and 0700"
    )]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its mode.
        mode: u32,
    },
    /// Erlang's command-line flags cannot carry this path.
    #[error(
        "the runtime directory {0} contains whitespace or quotes, which Erlang's flags cannot \
         carry; set XDG_RUNTIME_DIR to another directory"
    )]
    Unquotable(PathBuf),
}

/// This process's runtime directory; removed with everything in it when dropped.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// Creates this process's directory under the user's base, after removing the
    /// directories of erlbridge processes that are gone.
    pub fn create() -> Result<RuntimeDir, RuntimeError> {
        let base = base()?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| RuntimeError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&base)
            .map_err(io(&base))?;
        let meta = std::fs::symlink_metadata(&base).map_err(io(&base))?;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.uid() != nix::unistd::geteuid().as_raw() || mode & 0o077 != 0 || !meta.is_dir() {
            return Err(RuntimeError::NotPrivate {
                path: base,
                owner: meta.uid(),
                mode,
            });
        }
        sweep(&base);
        let path = base.join(std::process::id().to_string());
        if path
            .to_str()
            .is_none_or(|p| p.chars().any(|c| c.is_whitespace() || "\"'\\".contains(c)))
        {
            return Err(RuntimeError::Unquotable(path));
        }
        // A directory of a previous process with this pid is stale by definition.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io(&path))?;
        Ok(RuntimeDir { path })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` to `name` in the directory at once: to a temporary file first, then
    /// renamed over the old one, so a reader sees the old file or the new one, never a part.
    pub fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.path.join(name);
        let partial = self.path.join(format!(".{name}.partial"));
        std::fs::write(&partial, bytes)?;
        std::fs::rename(&partial, &path)?;
        Ok(path)
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `$XDG_RUNTIME_DIR/erlbridge`, else `~/.cache/erlbridge/run`, else (no HOME either, as in
/// some CI containers) `erlbridge-UID` in the temporary directory, which [`RuntimeDir::create`]
/// checks is this user's own and private.
fn base() -> Result<PathBuf, RuntimeError> {
    if let Some(dir) = std::env::var_os(ENV_RUNTIME_DIR).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("erlbridge"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home).join(".cache/erlbridge/run"));
    }
    Ok(std::env::temp_dir().join(format!("erlbridge-{}", nix::unistd::geteuid())))
}

/// Removes the directories of erlbridge processes that no longer run.
fn sweep(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if gone {
            debug!(
                pid,
                "removing the runtime directory of an erlbridge that is gone"
            );
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_files() {
        let dir = RuntimeDir {
            path: tempfile::tempdir().unwrap().keep(),
        };
        let path = dir.write("nodes.eterm", b"old").unwrap();
        dir.write("nodes.eterm", b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["nodes.eterm"]);
        let root = dir.path().to_owned();
        drop(dir);
        assert!(!root.exists());
    }

    #[test]
    fn the_directories_of_ended_processes_are_swept() {
        let base = tempfile::tempdir().unwrap();
        // A pid that cannot exist (above the kernel's pid_max) and this process's own.
        let dead = base.path().join("2147483646");
        let alive = base.path().join(std::process::id().to_string());
        let other = base.path().join("not-a-pid");
        for dir in [&dead, &alive, &other] {
            std::fs::create_dir(dir).unwrap();
        }
        sweep(base.path());
        assert!(!dead.exists());
        assert!(alive.exists() && other.exists());
    }
}
