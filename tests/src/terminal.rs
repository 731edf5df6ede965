//! A real terminal for interactive programs (remote shells): a tmux session running a command
//! as a user in the workstation, whose screen a test reads and whose keys it types. The
//! session is killed when dropped.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::{User, Workstation};

/// A detached tmux session running one command.
#[derive(Debug)]
pub struct Terminal {
    session: String,
}

fn tmux(args: &[&str]) -> Output {
    Command::new("tmux").args(args).output().expect("tmux")
}

impl Terminal {
    /// Runs `argv` as `user` in the workstation, in a 200x50 terminal, with `env` set
    /// (`NAME=value` pairs, after the user's clean environment).
    pub fn start(ws: &Workstation, user: &User, env: &[&str], argv: &[String]) -> Terminal {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let home = ws.home(user).expect("home").display().to_string();
        let mut wrapped = user.wrap(&home, &[]);
        wrapped.push("TERM=xterm".to_owned());
        wrapped.extend(env.iter().map(|e| (*e).to_owned()));
        let command = ["ip", "netns", "exec", ws.ns.name()]
            .iter()
            .map(|a| (*a).to_owned())
            .chain(wrapped)
            .chain(argv.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ");
        let session = format!("eb-term-{}-{n}", std::process::id());
        let started = tmux(&[
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "200",
            "-y",
            "50",
            &command,
        ]);
        assert!(
            started.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        Terminal { session }
    }

    /// What the screen shows now.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &self.session]).stdout)
            .into_owned()
    }

    /// Waits up to 30 s for `what` on the screen.
    pub fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.screen().contains(what) {
            assert!(
                Instant::now() < deadline,
                "{what:?} never showed; screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `keys` (tmux key names: `C-g`, `Enter`, or literal text).
    pub fn keys(&self, keys: &[&str]) {
        for key in keys {
            tmux(&["send-keys", "-t", &self.session, key]);
        }
    }

    /// Types a line and Enter.
    pub fn line(&self, text: &str) {
        tmux(&["send-keys", "-t", &self.session, "-l", text]);
        tmux(&["send-keys", "-t", &self.session, "Enter"]);
    }

    /// Whether the command still runs.
    pub fn running(&self) -> bool {
        tmux(&["has-session", "-t", &self.session]).status.success()
    }

    /// Waits up to `within` for the command to end.
    pub fn wait_end(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "the command did not end; screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        tmux(&["kill-session", "-t", &self.session]);
    }
}

/// Waits up to `within` for `path` to hold what `stty -a` printed (a script appends it once
/// the command under test ended), and returns the whole file.
pub fn wait_stty(path: &std::path::Path, within: Duration, term: &Terminal) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.contains("speed")
        {
            // stty may still be writing.
            std::thread::sleep(Duration::from_millis(200));
            return std::fs::read_to_string(path).unwrap_or(text);
        }
        assert!(
            Instant::now() < deadline,
            "the command did not end; screen:\n{}",
            term.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Panics unless `stty -a`'s `settings` show a sane terminal (lines, echo, signals on), saying
/// `case`.
pub fn assert_sane(settings: &str, case: &str) {
    let flags: Vec<&str> = settings.split_whitespace().collect();
    for sane in ["icanon", "echo", "isig"] {
        assert!(
            flags.contains(&sane) && !flags.contains(&format!("-{sane}").as_str()),
            "{case}: {sane} is off: {settings}"
        );
    }
}

/// `arg` quoted for the shell tmux runs the command with.
fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+".contains(c))
    {
        return arg.to_owned();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}
