//! Signals: the ones dmutex catches (and passes on to the child), and
//! sending one to the child. Safe code only: tokio's signal streams in,
//! rustix's `kill` out.

use std::io;

use rustix::process::{kill_process, Pid, Signal};
use tokio::signal::unix::{signal, SignalKind};

/// A signal dmutex catches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caught {
    Interrupt,
    Terminate,
    Hangup,
}

impl Caught {
    pub fn name(self) -> &'static str {
        match self {
            Caught::Interrupt => "SIGINT",
            Caught::Terminate => "SIGTERM",
            Caught::Hangup => "SIGHUP",
        }
    }

    pub fn signal(self) -> Signal {
        match self {
            Caught::Interrupt => Signal::INT,
            Caught::Terminate => Signal::TERM,
            Caught::Hangup => Signal::HUP,
        }
    }

    /// The exit code of a process that this signal ended: 128 + its number.
    pub fn exit_code(self) -> u8 {
        u8::try_from(128 + self.signal().as_raw()).unwrap_or(crate::exit::SOFTWARE)
    }
}

/// SIGINT, SIGTERM and SIGHUP, caught from the moment this is made: none of
/// them ends dmutex before it has released (or given up) its lock.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next caught signal. Cancel-safe.
    pub async fn recv(&mut self) -> Caught {
        tokio::select! {
            Some(()) = self.interrupt.recv() => Caught::Interrupt,
            Some(()) = self.terminate.recv() => Caught::Terminate,
            Some(()) = self.hangup.recv() => Caught::Hangup,
            // The streams never end; if they did, nothing more is caught.
            else => std::future::pending().await,
        }
    }
}

/// Sends `signal` to the process `pid` (a child not yet reaped, so the pid
/// cannot have been reused).
pub fn send(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a process id"))?;
    kill_process(pid, signal).map_err(io::Error::from)
}

/// A signal's name for messages.
pub fn name(signal: Signal) -> &'static str {
    if signal == Signal::KILL {
        "SIGKILL"
    } else if signal == Signal::TERM {
        "SIGTERM"
    } else if signal == Signal::INT {
        "SIGINT"
    } else if signal == Signal::HUP {
        "SIGHUP"
    } else {
        "a signal"
    }
}
