//! The project's binaries, copied where an unprivileged uid can run them (the build tree may
//! sit under a home directory other users cannot enter).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{Context, bail};

/// A world-readable directory holding copies of the project's binaries; removed on drop.
#[derive(Debug)]
pub struct Bins {
    dir: tempfile::TempDir,
}

/// The build directory the running test binary was built into (`target/debug`).
pub fn build_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    // target/debug/deps/<test> or target/debug/<bench or bin>
    let mut dir = exe.parent().context("exe dir")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

impl Bins {
    /// Copies the named binaries of this build. Fails with what to do when one is not built.
    pub fn stage(names: &[&str]) -> anyhow::Result<Bins> {
        let dir = tempfile::Builder::new().prefix("eb-bins-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let build = build_dir()?;
        for name in names {
            let from = build.join(name);
            if !from.exists() {
                let release = build.ends_with("release");
                bail!(
                    "{} is not built; build every binary first with `cargo build --workspace --bins{}` \
                     ({} does)",
                    from.display(),
                    if release { " --release" } else { "" },
                    if release {
                        "scripts/bench"
                    } else {
                        "scripts/test"
                    },
                );
            }
            let to = dir.path().join(name);
            std::fs::copy(&from, &to).with_context(|| format!("copy {}", from.display()))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(Bins { dir })
    }

    /// The directory holding the copies.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The staged copy of binary `name`.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}
