//! The private runtime directory of one erlbridge process, where the files local Erlang nodes
//! read live: the ERL_INETRC file for DNS-named nodes, in the no-helper mode the epmd module
//! and its map, and remsh's private home with the cookie. It is made only when such a file is
//! needed (nat mode with IP-named nodes writes nothing), as `<base>/<pid>`, mode 0700, and goes
//! when erlbridge ends; a start removes the directories of erlbridge processes that ended
//! without removing theirs (kill -9). The base is the first of these that can be made:
//! `$XDG_RUNTIME_DIR/erlbridge`, `~/.cache/erlbridge/run`, `erlbridge-<uid>` in the temporary
//! directory (`$TMPDIR`, else /tmp), the way tmux and ssh-agent keep theirs: 0700, and refused
//! when it exists but is not this user's own or is open to others (someone may have made it
//! first to catch the files).

use std::fmt::Write as _;
use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};

use tracing::debug;

/// The environment variable naming the per-user runtime directory.
pub const ENV_RUNTIME_DIR: &str = "XDG_RUNTIME_DIR";

/// Why the runtime directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// None of the places could be made or used.
    #[error(
        "erlbridge needs a private directory for the files local nodes read, and could make \
         none: {}; set XDG_RUNTIME_DIR (or TMPDIR) to a directory you can write",
        tried(.0)
    )]
    Nowhere(Vec<(PathBuf, std::io::Error)>),
    /// The directory belongs to someone else or others may enter it.
    #[error(
        "{path} exists but is not a private directory of yours ({what}, owner uid {owner}, mode \
         {mode:o}): someone may have made it first to catch erlbridge's files (the epmd module \
         local nodes load, the cookie of remsh's shell); remove it if it is not yours to keep, \
         or set XDG_RUNTIME_DIR to a directory of your own"
    )]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// What it is: a directory, a symbolic link, a file.
        what: &'static str,
        /// Its owner.
        owner: u32,
        /// Its mode.
        mode: u32,
    },
    /// This process's directory could not be made in the base.
    #[error("cannot make erlbridge's runtime directory {path}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Erlang's command-line flags cannot carry this path.
    #[error(
        "the runtime directory {0} contains whitespace or quotes, which Erlang's flags cannot \
         carry; set XDG_RUNTIME_DIR to another directory"
    )]
    Unquotable(PathBuf),
}

fn tried(places: &[(PathBuf, std::io::Error)]) -> String {
    let mut text = String::new();
    for (i, (path, e)) in places.iter().enumerate() {
        let sep = if i == 0 { "" } else { "; " };
        let _ = write!(text, "{sep}{} ({e})", path.display());
    }
    text
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
        let base = base(&candidates())?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| RuntimeError::Io { path, source }
        };
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

/// Where the base may be, in order: `$XDG_RUNTIME_DIR/erlbridge`, `~/.cache/erlbridge/run`
/// (each made with its parents), `erlbridge-UID` in the temporary directory (made alone: the
/// temporary directory must exist).
fn candidates() -> Vec<(PathBuf, bool)> {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let mut places = Vec::new();
    if let Some(dir) = set(ENV_RUNTIME_DIR) {
        places.push((PathBuf::from(dir).join("erlbridge"), true));
    }
    if let Some(home) = set("HOME") {
        places.push((PathBuf::from(home).join(".cache/erlbridge/run"), true));
    }
    let uid = nix::unistd::geteuid();
    places.push((std::env::temp_dir().join(format!("erlbridge-{uid}")), false));
    places
}

/// The first of `places` that can be made (or is there) and is private; a place that exists
/// but is not private stops the search: it is refused, never passed over in silence.
fn base(places: &[(PathBuf, bool)]) -> Result<PathBuf, RuntimeError> {
    let mut failed = Vec::new();
    for (path, with_parents) in places {
        let made = std::fs::DirBuilder::new()
            .recursive(*with_parents)
            .mode(0o700)
            .create(path);
        match made {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                debug!(path = %path.display(), error = %e, "cannot make a runtime directory here");
                failed.push((path.clone(), e));
                continue;
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                check_private(path, &meta)?;
                // Private, but only as safe as the directories above it, which must not let
                // anyone else move it away after this check (HOME=/tmp, say, with a .cache
                // someone else made).
                match safe_above(path) {
                    Ok(()) => return Ok(path.clone()),
                    Err(e) => failed.push((path.clone(), e)),
                }
            }
            Err(e) => failed.push((path.clone(), e)),
        }
    }
    Err(RuntimeError::Nowhere(failed))
}

/// Whether every directory above `path` (symbolic links resolved) is this user's or root's and
/// closed to others' writes, or sticky (as /tmp): then nobody else can rename `path` or put
/// something in its place. The error says which is not.
fn safe_above(path: &Path) -> std::io::Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    let resolved = std::fs::canonicalize(path)?;
    for dir in resolved.ancestors().skip(1) {
        let meta = std::fs::metadata(dir)?;
        let mode = meta.permissions().mode();
        let open = mode & 0o022 != 0 && mode & 0o1000 == 0;
        if (meta.uid() != me && meta.uid() != 0) || open {
            return Err(std::io::Error::other(format!(
                "{} above it is {} (owner uid {}, mode {:o}), so others could move it away",
                dir.display(),
                if open {
                    "writable by others"
                } else {
                    "someone else's"
                },
                meta.uid(),
                mode & 0o7777
            )));
        }
    }
    Ok(())
}

/// A directory (not a link to one), this user's, closed to others.
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), RuntimeError> {
    let mode = meta.permissions().mode() & 0o7777;
    let kind = meta.file_type();
    let what = if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_socket() || kind.is_fifo() {
        "a special file"
    } else {
        "a file"
    };
    if meta.uid() != nix::unistd::geteuid().as_raw() || mode & 0o077 != 0 || !kind.is_dir() {
        return Err(RuntimeError::NotPrivate {
            path: path.to_owned(),
            what,
            owner: meta.uid(),
            mode,
        });
    }
    Ok(())
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
    fn the_first_place_that_can_be_made_is_taken_and_a_foreign_one_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let file = scratch.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        // Cannot be made (its parent is a file, as an unwritable or read-only home would fail).
        let blocked = (file.join("erlbridge"), true);
        let home = (scratch.path().join("home/.cache/erlbridge/run"), true);
        let tmp = (scratch.path().join("erlbridge-1000"), false);
        let chosen = base(&[blocked.clone(), home.clone(), tmp.clone()]).unwrap();
        assert_eq!(chosen, home.0);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&chosen), 0o700);
        assert_eq!(base(&[blocked.clone(), tmp.clone()]).unwrap(), tmp.0);

        // Nothing works: every place and why.
        let nowhere = base(std::slice::from_ref(&blocked))
            .unwrap_err()
            .to_string();
        assert!(
            nowhere.contains(&file.join("erlbridge").display().to_string()),
            "{nowhere}"
        );
        assert!(nowhere.contains("set XDG_RUNTIME_DIR"), "{nowhere}");

        // Made first by someone, or open to others, or a link: refused, not passed over.
        let open = scratch.path().join("erlbridge-open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let link = scratch.path().join("erlbridge-link");
        std::os::unix::fs::symlink(&tmp.0, &link).unwrap();
        for (path, why) in [(open, "mode 777"), (link, "a symbolic link")] {
            let e = base(&[(path.clone(), false), home.clone()]).unwrap_err();
            assert!(matches!(e, RuntimeError::NotPrivate { .. }), "{e}");
            let text = e.to_string();
            assert!(
                text.contains(why) && text.contains("someone may have made it"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_place_under_a_directory_others_control_is_passed_over() {
        let scratch = tempfile::tempdir().unwrap();
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // HOME in a shared place, where someone else made .cache first.
        let theirs = scratch.path().join("home/.cache");
        std::fs::create_dir_all(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(12345), None).unwrap();
        let home = (theirs.join("erlbridge/run"), true);
        // A world-writable directory that is not sticky, the same.
        let open = scratch.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let in_open = (open.join("erlbridge-1000"), false);
        // A sticky one (as /tmp) is fine.
        let sticky = scratch.path().join("tmp");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let tmp = (sticky.join("erlbridge-1000"), false);

        assert_eq!(
            base(&[home.clone(), in_open.clone(), tmp.clone()]).unwrap(),
            tmp.0
        );
        let nowhere = base(&[home, in_open]).unwrap_err().to_string();
        assert!(
            nowhere.contains("someone else's (owner uid 12345")
                && nowhere.contains("writable by others"),
            "{nowhere}"
        );
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
