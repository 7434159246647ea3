//! The status line while `run` waits for a busy lock: on a terminal a
//! spinner with the elapsed time, redrawn in place; otherwise (a log, cron's
//! mail) plain lines, the first at once, then after 5 s, 10 s, 20 s, 40 s,
//! and on at most a minute apart.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::duration::human;

const SPINNER: [char; 4] = ['|', '/', '-', '\\'];
/// How often the spinner is redrawn.
const FRAME: Duration = Duration::from_millis(100);
/// The longest gap between two plain lines.
const MAX_GAP: Duration = Duration::from_secs(60);

pub struct Progress {
    key: String,
    /// What the wait is bounded by, for the first line.
    limit: Option<Duration>,
    started: Instant,
    mode: Mode,
}

enum Mode {
    Off,
    Spinner { frame: usize, drawn: bool },
    Lines { next: Duration },
}

impl Progress {
    /// Starts showing a wait for `key` that began at `started`.
    pub fn start(quiet: bool, key: &str, limit: Option<Duration>, started: Instant) -> Self {
        let mode = if quiet {
            Mode::Off
        } else if std::io::stderr().is_terminal() {
            Mode::Spinner {
                frame: 0,
                drawn: false,
            }
        } else {
            Mode::Lines {
                next: Duration::ZERO,
            }
        };
        let mut progress = Progress {
            key: key.to_owned(),
            limit,
            started,
            mode,
        };
        progress.tick();
        progress
    }

    /// How often [`tick`](Self::tick) should be called.
    pub fn interval(&self) -> Duration {
        match self.mode {
            Mode::Spinner { .. } => FRAME,
            _ => Duration::from_secs(1),
        }
    }

    /// Redraws the spinner, or prints a line when one is due.
    pub fn tick(&mut self) {
        let elapsed = self.started.elapsed();
        let limit = match self.limit {
            Some(limit) => format!(", up to {}", human(limit)),
            None => String::new(),
        };
        match &mut self.mode {
            Mode::Off => {}
            Mode::Spinner { frame, drawn } => {
                let c = SPINNER[*frame % SPINNER.len()];
                *frame += 1;
                *drawn = true;
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r\x1b[K{c} dmutex: waiting for lock `{}` ({}{limit})",
                    self.key,
                    human(elapsed)
                );
                let _ = err.flush();
            }
            Mode::Lines { next } => {
                if elapsed < *next {
                    return;
                }
                if next.is_zero() {
                    eprintln!("dmutex: lock `{}` is busy; waiting{limit}", self.key);
                    *next = Duration::from_secs(5);
                } else {
                    eprintln!(
                        "dmutex: still waiting for lock `{}` ({}{limit})",
                        self.key,
                        human(elapsed)
                    );
                    *next = (*next * 2).min(elapsed + MAX_GAP).max(elapsed + FRAME);
                }
            }
        }
    }

    /// Ends the display: clears the spinner, and says how the wait ended
    /// when it ended with the lock (a failure has its own message).
    pub fn finish(&mut self, acquired: bool) {
        if let Mode::Spinner { drawn: true, .. } = self.mode {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
        if acquired && !matches!(self.mode, Mode::Off) {
            eprintln!(
                "dmutex: got lock `{}` after {}",
                self.key,
                human(self.started.elapsed())
            );
        }
        self.mode = Mode::Off;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish(false);
    }
}
