//! The Debian package scripts/package built, and the same package rebuilt with a higher
//! version, for upgrade tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::netns::run;

/// The package in target/debian (scripts/test builds it before the tests run).
pub fn built() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    std::fs::read_dir(&dir)
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
        })
        .with_context(|| {
            format!(
                "no .deb in {}: build it with scripts/package (scripts/test does)",
                dir.display()
            )
        })
}

/// A field of a package's control file (`Version`, `Depends`, ...).
pub fn field(deb: &Path, name: &str) -> anyhow::Result<String> {
    let deb = deb.to_str().context("package path")?;
    Ok(run(Command::new("dpkg-deb").args(["-f", deb, name]))?
        .trim()
        .to_owned())
}

/// `deb` rebuilt into `dir` with its version's Debian revision raised by one (0.1.0-1 becomes
/// 0.1.0-2): the same files, as the next release of the package would ship them.
pub fn with_next_revision(deb: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let version = field(deb, "Version")?;
    let Some((upstream, revision)) = version.rsplit_once('-') else {
        bail!(
            "{} has no Debian revision in its version {version}",
            deb.display()
        );
    };
    let revision: u32 = revision
        .parse()
        .with_context(|| format!("the revision of {version}"))?;
    let next = format!("{upstream}-{}", revision + 1);
    let tree = dir.join("tree");
    let tree_s = tree.to_str().context("path")?;
    run(Command::new("dpkg-deb").args(["-R", deb.to_str().context("path")?, tree_s]))?;
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control)?;
    std::fs::write(
        &control,
        text.replace(
            &format!("Version: {version}\n"),
            &format!("Version: {next}\n"),
        ),
    )?;
    let out = dir.join(format!("erlbridge_{next}.deb"));
    run(Command::new("dpkg-deb").args([
        "--root-owner-group",
        "-b",
        tree_s,
        out.to_str().context("path")?,
    ]))?;
    Ok(out)
}
