//! The terminal the commands that act on a pod's node run in: its settings put back however
//! they end, keys read one at a time for `top`.

use std::os::fd::AsFd as _;

use nix::sys::termios::{self, SetArg, Termios};

/// The terminal's settings, put back when dropped: a local node killed mid-way (or a key
/// reader) leaves it raw.
pub struct TerminalGuard(Option<Termios>);

impl TerminalGuard {
    /// Saves the settings of the terminal on stdin, if it is one.
    pub fn save() -> TerminalGuard {
        TerminalGuard(termios::tcgetattr(std::io::stdin().as_fd()).ok())
    }

    /// Reads keys one at a time, unechoed (Ctrl-C still interrupts); put back when dropped.
    pub fn keys_at_once(&self) {
        if let Some(saved) = &self.0 {
            let mut raw = saved.clone();
            raw.local_flags
                .remove(termios::LocalFlags::ICANON | termios::LocalFlags::ECHO);
            raw.control_chars[termios::SpecialCharacterIndices::VMIN as usize] = 1;
            raw.control_chars[termios::SpecialCharacterIndices::VTIME as usize] = 0;
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &raw);
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// Completes when `key` is typed on stdin (read as it comes); never when stdin ends or is
/// not readable.
pub async fn key(key: u8) {
    use tokio::io::AsyncReadExt as _;
    let mut stdin = tokio::io::stdin();
    let mut byte = [0u8; 1];
    loop {
        match stdin.read(&mut byte).await {
            Ok(1) if byte[0] == key => return,
            Ok(1) => {}
            _ => std::future::pending().await,
        }
    }
}
