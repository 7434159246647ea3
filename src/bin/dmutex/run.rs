//! `dmutex run`: take the lock, run the command while holding it, release
//! it when the command exits.
//!
//! 1. Connect (exit 69 if Redis cannot be reached, 64 for a malformed URL).
//! 2. One attempt at the lock; if busy, exit 75 (`--no-wait`) or wait
//!    (`--wait`, else as long as it takes), showing the wait on stderr.
//! 3. Spawn the command with `DMUTEX_KEY`, `DMUTEX_TOKEN` and, with
//!    `--fencing`, `DMUTEX_FENCING_TOKEN`. The library renews the lease in
//!    the background (every third of the TTL).
//! 4. Until the command exits: pass SIGINT/SIGTERM/SIGHUP on to it; on loss
//!    of the lock, act per `--on-lost` (SIGTERM, SIGKILL after `--grace`).
//! 5. Release (token-checked) and exit with the command's code, 128 + the
//!    signal that killed it, or 79 if the lock was lost.
//!
//! Signals are caught from the start: a SIGTERM while waiting gives up the
//! wait (leaving nothing locked) and exits 128 + 15.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, Error, LockGuard, LostReason, RetryStrategy};
use rustix::process::Signal;
use tokio::process::Command;

use crate::args::{Global, RunArgs};
use crate::connect::connect;
use crate::duration::human;
use crate::exit::{self, Failure};
use crate::held::Held;
use crate::progress::Progress;
use crate::signals::{self, Signals};
use crate::values::OnLost;

/// How often a waiter polls when no release message wakes it first.
const POLL: Duration = Duration::from_millis(500);
/// How long the final release and disconnect may take before dmutex exits
/// anyway (a lock left behind expires with its TTL).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Catches the signals dmutex passes on to its command, or reports why it
/// cannot (the exit code to end with).
pub fn catch_signals(quiet: bool) -> Result<Signals, u8> {
    Signals::install().map_err(|e| {
        Failure::error(exit::SOFTWARE, format!("cannot catch signals: {e}")).report(quiet)
    })
}

pub async fn run(global: &Global, args: RunArgs) -> u8 {
    let quiet = global.quiet;
    let mut signals = match catch_signals(quiet) {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    let holder = args
        .holder
        .clone()
        .unwrap_or_else(crate::clock::default_holder);
    let mutex = match connect(global, |b| b.ttl(args.ttl).holder(holder)).await {
        Ok(mutex) => mutex,
        Err(failure) => return failure.report(quiet),
    };
    let code = match acquire(&mutex, &args, quiet, &mut signals).await {
        Ok(guard) => supervise(guard, &args, quiet, &mut signals).await,
        Err(failure) => failure.report(quiet),
    };
    // Waits for a release still queued (a cancelled wait) and disconnects.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, mutex.shutdown()).await;
    code
}

/// Takes the lock: one attempt, then (unless `--no-wait`) a wait bounded
/// by `--wait`, during which a caught signal gives up.
async fn acquire(
    mutex: &DistributedMutex,
    args: &RunArgs,
    quiet: bool,
    signals: &mut Signals,
) -> Result<LockGuard, Failure> {
    let started = Instant::now();
    let first = tokio::select! {
        result = request(mutex, args, RetryStrategy::none(), Duration::ZERO).into_future() => result,
        caught = signals.recv() => return Err(interrupted(caught, &args.key)),
    };
    let wait = if args.no_wait {
        Duration::ZERO
    } else {
        args.wait.unwrap_or(Duration::MAX)
    };
    match first {
        Ok(guard) => return Ok(guard),
        Err(Error::NotObtained { .. }) if wait.is_zero() => {
            return Err(Failure::status(
                exit::BUSY,
                format!("lock `{}` is busy; not running the command", args.key),
            ))
        }
        Err(Error::NotObtained { .. }) => {}
        Err(e) => return Err(Failure::from_lib("cannot take the lock", &e)),
    }
    let waiting = Waiting {
        mutex,
        args,
        quiet,
        started,
        left: wait.saturating_sub(started.elapsed()),
    };
    waiting.run(signals).await
}

/// The acquisition of `args.key` with `retry`, given up after `timeout`.
fn request(
    mutex: &DistributedMutex,
    args: &RunArgs,
    retry: RetryStrategy,
    timeout: Duration,
) -> distributed_mutex::Acquire {
    let acquire = mutex.acquire(&args.key).retry(retry).timeout(timeout);
    if args.fencing {
        acquire.fencing()
    } else {
        acquire
    }
}

/// The wait for a busy lock, after the first attempt.
struct Waiting<'a> {
    mutex: &'a DistributedMutex,
    args: &'a RunArgs,
    quiet: bool,
    /// When the first attempt was sent.
    started: Instant,
    /// What is left of `--wait`.
    left: Duration,
}

impl Waiting<'_> {
    /// Polls every [`POLL`] (woken by releases) until the lock is taken,
    /// `--wait` is over, or a signal is caught, with a progress line.
    async fn run(self, signals: &mut Signals) -> Result<LockGuard, Failure> {
        let Waiting { args, started, .. } = self;
        let mut progress = Progress::start(self.quiet, &args.key, args.wait, started);
        let retry = RetryStrategy::linear(POLL, u32::MAX);
        let mut waiting = std::pin::pin!(request(self.mutex, args, retry, self.left).into_future());
        let mut ticks = tokio::time::interval(progress.interval());
        ticks.tick().await; // the first tick is now: the first line is out already
        loop {
            tokio::select! {
                result = &mut waiting => {
                    progress.finish(result.is_ok());
                    return result.map_err(|e| self.failed(&e));
                }
                _ = ticks.tick() => progress.tick(),
                caught = signals.recv() => {
                    progress.finish(false);
                    return Err(interrupted(caught, &args.key));
                }
            }
        }
    }

    /// Why the wait ended without the lock.
    fn failed(&self, error: &Error) -> Failure {
        match error {
            Error::NotObtained { .. } => Failure::status(
                exit::BUSY,
                format!(
                    "lock `{}` is still busy after {}; not running the command",
                    self.args.key,
                    human(self.started.elapsed())
                ),
            ),
            e => Failure::from_lib("cannot take the lock", e),
        }
    }
}

/// A signal while waiting for the lock: give up, as the signal would have.
fn interrupted(caught: signals::Caught, key: &str) -> Failure {
    Failure::status(
        caught.exit_code(),
        format!(
            "{} while waiting for lock `{key}`; not running the command",
            caught.name()
        ),
    )
}

/// Runs the command under `guard` (a lock, or for `elect` a leadership) and
/// returns dmutex's exit code.
pub async fn supervise<G: Held>(
    guard: G,
    args: &RunArgs,
    quiet: bool,
    signals: &mut Signals,
) -> u8 {
    let shown = args.command[0].to_string_lossy().into_owned();
    let mut child = match command(&guard, args).spawn() {
        Ok(child) => child,
        Err(e) => {
            let code = spawn_failure_code(&e);
            release(guard, &args.key, quiet, code).await;
            return Failure::error(code, format!("cannot run `{shown}`: {e}")).report(quiet);
        }
    };
    // Some until the child is reaped (by `wait` below), so never a reused pid.
    let pid = child.id();
    let send = |signal: Signal| signal_child(pid, signal, &shown);

    let mut lost: Option<LostReason> = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            reason = guard.lost(), if lost.is_none() => {
                lost = Some(reason);
                let (signal, kill) = lost_while_running(args, reason, &shown, quiet);
                kill_at = kill;
                if let Some(signal) = signal {
                    send(signal);
                }
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)),
                if kill_at.is_some() =>
            {
                kill_at = None;
                if !quiet {
                    eprintln!("dmutex: `{shown}` still runs {} after SIGTERM; sending SIGKILL", human(args.grace));
                }
                send(Signal::KILL);
            }
            caught = signals.recv() => send(caught.signal()),
        }
    };
    let code = match status {
        Ok(status) => exit::of_child(status),
        Err(e) => cannot_wait(&shown, &e),
    };
    if lost.is_some() {
        // Dropped: a release is queued only if the key may still be ours.
        drop(guard);
        return exit::LOST;
    }
    release(guard, &args.key, quiet, code).await
}

/// Sends `signal` to the child of pid `pid` (`None`: it was reaped
/// already), saying so when it cannot.
fn signal_child(pid: Option<u32>, signal: Signal, shown: &str) {
    if let Some(pid) = pid {
        if let Err(e) = signals::send(pid, signal) {
            eprintln!(
                "dmutex: error: cannot send {} to `{shown}` (pid {pid}): {e}",
                signals::name(signal)
            );
        }
    }
}

/// The exit code when the child could not be waited for.
fn cannot_wait(shown: &str, e: &std::io::Error) -> u8 {
    eprintln!("dmutex: error: cannot wait for `{shown}`: {e}");
    exit::SOFTWARE
}

/// The command to run under `guard`, with its environment: `DMUTEX_KEY`,
/// `DMUTEX_TOKEN`, and `DMUTEX_FENCING_TOKEN` when there is one.
fn command<G: Held>(guard: &G, args: &RunArgs) -> Command {
    let mut command = Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .env("DMUTEX_KEY", &args.key)
        .env("DMUTEX_TOKEN", guard.token());
    match guard.fencing_token() {
        Some(token) => command.env("DMUTEX_FENCING_TOKEN", token.to_string()),
        // Not one from an outer dmutex.
        None => command.env_remove("DMUTEX_FENCING_TOKEN"),
    };
    command
}

/// The lock was lost (for `reason`) while the command ran: says so (unless
/// `quiet`), and returns what `--on-lost` asks: the signal to send now, and
/// when to send SIGKILL.
fn lost_while_running(
    args: &RunArgs,
    reason: LostReason,
    shown: &str,
    quiet: bool,
) -> (Option<Signal>, Option<tokio::time::Instant>) {
    let (action, signal, kill) = on_lost(args);
    if !quiet {
        eprintln!(
            "dmutex: lost lock `{}` ({reason}) while `{shown}` ran; {action}",
            args.key
        );
    }
    (signal, kill)
}

/// What `--on-lost` does once the lock is lost: what to say, the signal to
/// send now, and when to send SIGKILL.
fn on_lost(args: &RunArgs) -> (String, Option<Signal>, Option<tokio::time::Instant>) {
    match args.on_lost {
        OnLost::Term => (
            format!("sending SIGTERM (SIGKILL in {})", human(args.grace)),
            Some(Signal::TERM),
            Some(tokio::time::Instant::now() + args.grace),
        ),
        OnLost::Kill => ("sending SIGKILL".to_owned(), Some(Signal::KILL), None),
        OnLost::Ignore => (
            "letting it run on (--on-lost ignore)".to_owned(),
            None,
            None,
        ),
    }
}

/// Releases the lock after the command ended with `code`; the code to exit
/// with: `code`, or 79 when the lock turns out to have been lost.
async fn release<G: Held>(guard: G, key: &str, quiet: bool, code: u8) -> u8 {
    match guard.release().await {
        Ok(()) => code,
        Err(Error::NotHeld { reason, .. }) => {
            if !quiet {
                eprintln!(
                    "dmutex: lock `{key}` was found lost when releasing it ({reason}); the \
                     command may have overlapped with another holder"
                );
            }
            exit::LOST
        }
        Err(e) => {
            // Held as far as anyone can tell; the library retries the
            // release in the background, and the TTL ends it otherwise.
            eprintln!(
                "dmutex: warning: cannot release lock `{key}` ({e}); it expires with its TTL"
            );
            code
        }
    }
}

/// 127 for a command that does not exist, 126 for one that cannot be
/// executed, as shells report them; 71 for anything else.
fn spawn_failure_code(e: &std::io::Error) -> u8 {
    match e.kind() {
        std::io::ErrorKind::NotFound => exit::NOT_FOUND,
        std::io::ErrorKind::PermissionDenied => exit::CANNOT_EXECUTE,
        _ if e.raw_os_error() == Some(rustix::io::Errno::NOEXEC.raw_os_error()) => {
            exit::CANNOT_EXECUTE
        }
        _ => exit::OSERR,
    }
}
