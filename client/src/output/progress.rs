//! The progress of a long start, as a person sees it on a terminal or a script reads it.

use std::io::Write;

use super::{Event, Output, emit};

/// How many pods a start attaches before it shows its progress.
const HANDFUL: usize = 5;
/// The least time between two progress events (JSON), and before the first.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The progress of a long start: in text mode on a terminal, a live line on stderr
/// ("attaching 37/100 pods of statefulset/app"), gone once done; in JSON mode a `progress`
/// event at most every quarter of a second; nothing for a handful of pods or less, or in text
/// mode when stderr is not a terminal.
pub struct Meter {
    output: Output,
    target: String,
    terminal: bool,
    started: std::time::Instant,
    last: Option<std::time::Instant>,
    said: Option<(usize, usize)>,
    shown: bool,
}

impl Meter {
    /// A meter for bridging `target`.
    pub fn new(output: Output, target: impl Into<String>) -> Meter {
        Meter {
            output,
            target: target.into(),
            terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            started: std::time::Instant::now(),
            last: None,
            said: None,
            shown: false,
        }
    }

    /// `attached` of `total` pods are attached (told again and again: what did not change,
    /// or comes too soon after the last event, is not said).
    pub fn update(&mut self, attached: usize, total: usize) {
        if total <= HANDFUL || self.said == Some((attached, total)) {
            return;
        }
        match self.output {
            Output::Text if self.terminal => {
                self.said = Some((attached, total));
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r\x1b[2Kerlbridge: attaching {attached}/{total} pods of {}",
                    self.target
                );
                let _ = err.flush();
                self.shown = true;
            }
            Output::Text => {}
            Output::Json => {
                let now = std::time::Instant::now();
                let since = now.duration_since(self.last.unwrap_or(self.started));
                if since >= PROGRESS_EVERY {
                    self.last = Some(now);
                    self.said = Some((attached, total));
                    emit(&Event::Progress {
                        attached,
                        total,
                        target: self.target.clone(),
                    });
                }
            }
        }
    }

    /// Takes the live line away, if one is shown.
    pub fn done(&mut self) {
        if std::mem::take(&mut self.shown) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.done();
    }
}
