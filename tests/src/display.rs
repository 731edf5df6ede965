//! A display for graphical programs with no real screen: Xvfb in the workstation, which any
//! local user's program reaches as `DISPLAY=:N`, and ways to look at it as a person would:
//! find a window by its title, take a screenshot, close a window with its keyboard shortcut.
//! The server is killed when dropped.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::workstation::Workstation;
use crate::{Netns, Spawned};

/// A virtual display (Xvfb) in the workstation.
pub struct Display {
    /// Its number: `DISPLAY=:N`.
    pub number: u32,
    ns: Netns,
    _server: Spawned,
}

impl Display {
    /// Starts Xvfb as display `:number` (1280x1024) in `ws`; returns once it takes clients.
    pub fn start(ws: &Workstation, number: u32) -> anyhow::Result<Display> {
        let _ = std::fs::remove_file(format!("/tmp/.X{number}-lock"));
        let display = format!(":{number}");
        let server = ws.spawn_root(&[
            "Xvfb",
            &display,
            "-screen",
            "0",
            "1280x1024x24",
            "-nolisten",
            "tcp",
        ])?;
        let display = Display {
            number,
            ns: Netns::attach(ws.ns.name())?,
            _server: server,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while display.run(&["xprop", "-root", "-len", "0"]).is_err() {
            if Instant::now() > deadline {
                bail!("Xvfb :{number} did not take clients within 15 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(display)
    }

    /// `DISPLAY=:N`, for a program's environment.
    pub fn env(&self) -> String {
        format!("DISPLAY=:{}", self.number)
    }

    /// Runs an X client (xdotool, xprop, import) against this display, in the workstation.
    pub fn run(&self, argv: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.ns.command(argv);
        cmd.env("DISPLAY", format!(":{}", self.number));
        crate::netns::run(&mut cmd)
    }

    /// The windows whose title contains `text`: (id, title) each.
    pub fn windows(&self, text: &str) -> Vec<(String, String)> {
        let ids = self
            .run(&["xdotool", "search", "--name", text])
            .unwrap_or_default();
        ids.lines()
            .filter_map(|id| {
                let title = self.run(&["xdotool", "getwindowname", id]).ok()?;
                Some((id.to_owned(), title.trim().to_owned()))
            })
            .collect()
    }

    /// Waits up to `within` for a window whose title contains `text`; returns (id, title).
    pub fn wait_window(&self, text: &str, within: Duration) -> anyhow::Result<(String, String)> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.windows(text).into_iter().next() {
                return Ok(found);
            }
            if Instant::now() > deadline {
                bail!("no window titled {text:?} within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Saves window `id` (`root`: the whole screen) as a PNG at `path`.
    pub fn screenshot(&self, id: &str, path: &Path) -> anyhow::Result<()> {
        self.run(&["import", "-window", id, &path.display().to_string()])
            .context("import (ImageMagick)")?;
        Ok(())
    }

    /// Types `keys` (xdotool's names, `ctrl+q`) into window `id`.
    pub fn keys(&self, id: &str, keys: &str) -> anyhow::Result<()> {
        self.run(&["xdotool", "windowfocus", "--sync", id, "key", keys])?;
        Ok(())
    }
}

/// How much an image varies: the standard deviation of its pixels, 0 for a blank one.
pub fn variation(png: &Path) -> anyhow::Result<f64> {
    let out = crate::netns::run(Command::new("/usr/bin/identify").args([
        "-format",
        "%[fx:standard_deviation]",
        &png.display().to_string(),
    ]))?;
    out.trim()
        .parse()
        .with_context(|| format!("identify printed {out:?}"))
}
