//! [`RedlockAcquire`]: one Redlock acquisition with per-call options, and
//! its attempt loop.
//!
//! An attempt sends `SET key token NX PX ttl` to every server at once (a
//! fresh token per attempt), each bounded by the per-server timeout, and
//! ends as soon as a majority holds the token (won), or more than a
//! minority is held by others (busy), or every server answered (too few
//! could be asked: transient). A won attempt counts only if its validity,
//! `start + TTL − drift`, has not passed by then. Every server that may
//! hold the token of an attempt that did not win (taken, or no answer) gets
//! a release queued on its release worker, also when the acquisition is
//! dropped mid-attempt.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::lease::LeaseCore;
use crate::engine::notify::Ticket;
use crate::engine::options::{into_future, option_setters, Options};
use crate::policy::error::Error;
use crate::policy::limits::validate_key;
use crate::policy::retry::RetryStrategy;
use crate::policy::schedule::{Next, Schedule};
use crate::protocol::keys::LockKeys;

use super::check::check_ttl;
use super::fanout::gather;
use super::guard::RedlockGuard;
use super::quorum::{AcquireTally, AttemptEnd, Took};
use super::servers::Servers;

/// One Redlock acquisition with per-call options, made by
/// [`Redlock::acquire`](crate::Redlock::acquire). `.await` it to get the
/// [`RedlockGuard`].
///
/// There is no `fencing()`: fencing tokens do not compose across
/// independent masters (see [`Redlock`](crate::Redlock)).
///
/// # Cancel safety
/// Dropping the future at any point leaves nothing locked: every server
/// that may hold the token of an attempt in flight gets a release queued.
#[must_use = "an acquisition does nothing until it is awaited"]
pub struct RedlockAcquire {
    servers: Arc<Servers>,
    key: String,
    options: Options,
}

impl RedlockAcquire {
    pub(crate) fn new(servers: Arc<Servers>, key: String) -> Self {
        RedlockAcquire {
            servers,
            key,
            options: Options::default(),
        }
    }

    option_setters! {
        /// The lease for this lock, instead of the Redlock's. Checked as
        /// [`RedlockBuilder::ttl`](crate::RedlockBuilder::ttl) is.
        ttl;
        /// How to wait for this lock, instead of the Redlock's retry strategy
        /// (each wait jittered the same way).
        retry;
        /// The longest time to wait for the lock, on top of the retry strategy
        /// (whichever ends first); at least one attempt is always made.
        timeout;
        /// Whether this guard renews its lease while it lives, instead of the
        /// Redlock's setting (default on).
        auto_renew;
    }
}

into_future!(RedlockAcquire => RedlockGuard, run);

impl fmt::Debug for RedlockAcquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("RedlockAcquire");
        out.field("key", &self.key);
        self.options.fields(&mut out, false);
        out.finish()
    }
}

/// Draws a wait from the upper half of `wait`, `[wait/2, wait]`, so that
/// contenders that failed together spread out.
pub(crate) fn jittered(wait: Duration) -> Duration {
    let half = wait / 2;
    let span = (wait - half).as_nanos().min(u128::from(u64::MAX)) as u64;
    half + Duration::from_nanos(fastrand::u64(..=span))
}

/// An acquisition's settings, checked.
struct Checked {
    ttl_ms: u64,
    retry: RetryStrategy,
    auto_renew: bool,
}

/// The key, the TTL (against the per-server timeout) and the retry
/// strategy of `req`, checked; its options over the builder's settings.
fn check(req: &RedlockAcquire) -> Result<Checked, Error> {
    let settings = &req.servers.settings;
    validate_key(&req.key)?;
    let ttl = req.options.ttl.unwrap_or(settings.ttl);
    let ttl_ms = check_ttl(&req.key, ttl, settings.server_timeout)?;
    let retry = req.options.retry.unwrap_or(settings.retry);
    retry.validate()?;
    let auto_renew = req.options.auto_renew.unwrap_or(settings.auto_renew);
    Ok(Checked {
        ttl_ms,
        retry,
        auto_renew,
    })
}

/// Runs an acquisition (unboxed: `lock` and `try_lock` await this directly).
pub(crate) async fn run(req: RedlockAcquire) -> Result<RedlockGuard, Error> {
    let Checked {
        ttl_ms,
        retry,
        auto_renew,
    } = check(&req)?;
    let (servers, key) = (req.servers, req.key);
    if servers.is_shut_down() {
        return Err(Error::Shutdown { key });
    }
    servers.ensure_background();
    let keys = LockKeys::new(&servers.settings.prefix, &key);
    let started = Instant::now();
    let mut schedule = Schedule::new(started, retry, req.options.timeout);
    let mut attempts = 0u32;
    // The release channel of the key on every server, once the lock was
    // found busy: a waiter is woken by the first release message.
    let mut tickets: Option<Vec<Ticket<'_>>> = None;
    loop {
        attempts += 1;
        let failure = match attempt(&servers, &key, &keys, ttl_ms).await {
            Ok((lease, sent_at)) => {
                tracing::debug!(key = %key, attempts, "redlock acquired");
                return Ok(RedlockGuard::new(
                    Arc::clone(&servers),
                    lease,
                    auto_renew,
                    sent_at,
                ));
            }
            Err(failure) => failure,
        };
        let (last_error, holder_ttl) = failure.judged(&key, attempts)?;
        match schedule.next(Instant::now(), holder_ttl) {
            Next::GiveUp => {
                return Err(last_error.unwrap_or_else(|| Error::NotObtained {
                    key,
                    attempts,
                    waited: started.elapsed(),
                }))
            }
            Next::Wait(wait) => {
                if last_error.is_none() && tickets.is_none() && wait >= LISTEN_FROM {
                    // Subscribed in the background: the waits keep the
                    // strategy's pace, and a release heard cuts one short.
                    tickets = Some(listen(&servers, &keys));
                }
                schedule.waited(pause(tickets.as_deref(), jittered(wait)).await);
            }
        }
        if servers.is_shut_down() {
            return Err(Error::Shutdown { key });
        }
    }
}

impl Failure {
    /// The error to remember (a transient one) and the holder's remaining
    /// lease (busy); a non-transient error ends the acquisition.
    fn judged(self, key: &str, attempts: u32) -> Result<(Option<Error>, Option<Duration>), Error> {
        match self {
            Failure::Busy { holder_ttl } => Ok((None, holder_ttl)),
            Failure::Error(e) if !e.is_transient() => Err(e),
            Failure::Error(e) => {
                tracing::debug!(key = %key, attempts, error = %e, "redlock attempt failed");
                Ok((Some(e), None))
            }
        }
    }
}

/// The shortest wait worth a subscription per server: a release message
/// saves at most the wait, and shorter polls cost less than subscribing.
const LISTEN_FROM: Duration = Duration::from_millis(50);

/// Joins the release channel of `keys` on every server (the subscriptions
/// are made in the background).
fn listen<'a>(servers: &'a Servers, keys: &LockKeys) -> Vec<Ticket<'a>> {
    (0..servers.len())
        .map(|i| servers.inner(i).waiters.join(keys))
        .collect()
}

/// Waits `wait`, cut short by a release message to any of `tickets`
/// (`true`) when there are some.
async fn pause(tickets: Option<&[Ticket<'_>]>, wait: Duration) -> bool {
    match tickets {
        Some(tickets) => any_woken(tickets, wait).await,
        None => {
            tokio::time::sleep(wait).await;
            false
        }
    }
}

/// Waits until a release message reaches any of `tickets` (`true`) or for
/// `cap` (`false`).
async fn any_woken(tickets: &[Ticket<'_>], cap: Duration) -> bool {
    let mut waits: Vec<_> = tickets.iter().map(|t| Box::pin(t.wait(cap))).collect();
    std::future::poll_fn(|cx| {
        for wait in &mut waits {
            if let std::task::Poll::Ready(woken) = std::future::Future::poll(wait.as_mut(), cx) {
                return std::task::Poll::Ready(woken);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Why an attempt did not take the lock.
enum Failure {
    /// Held by others on more than a minority.
    Busy { holder_ttl: Option<Duration> },
    /// Too few servers could be asked, the validity ran out, or a server
    /// refused (a non-transient error ends the acquisition).
    Error(Error),
}

/// The servers that may hold an attempt's token. Dropped while armed (the
/// attempt failed, or the acquisition was dropped mid-attempt), it queues a
/// release of the token on each of them.
struct Armed<'a> {
    servers: &'a Servers,
    keys: &'a LockKeys,
    token: String,
    maybe: Vec<bool>,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        for (i, maybe) in self.maybe.iter().enumerate() {
            if *maybe {
                self.servers.queue_release(i, self.keys, &self.token);
            }
        }
    }
}

/// One attempt on every server: the lease of the lock taken, or why not.
async fn attempt(
    servers: &Servers,
    key: &str,
    keys: &LockKeys,
    ttl_ms: u64,
) -> Result<(Arc<LeaseCore>, Instant), Failure> {
    let n = servers.len();
    let mut armed = Armed {
        servers,
        keys,
        token: uuid::Uuid::new_v4().to_string(),
        maybe: vec![true; n],
    };
    let mut tally = AcquireTally::new(n);
    let mut fatal = None;
    let started = Instant::now();
    let token = armed.token.as_str();
    let calls: Vec<_> = (0..n)
        .map(|i| servers.take(i, key, keys, token, ttl_ms))
        .collect();
    let maybe = &mut armed.maybe;
    let end = gather(calls, |i, took| {
        match &took {
            Took::Busy(_) => maybe[i] = false,
            Took::Failed(e) if !e.is_transient() => {
                fatal.get_or_insert_with(|| clone_error(e));
            }
            _ => {}
        }
        tally.record(took)
    })
    .await;
    match end {
        Some(AttemptEnd::Won) => won(&mut armed, key, ttl_ms, started, tally.taken),
        Some(AttemptEnd::Busy) => Err(Failure::Busy {
            holder_ttl: tally.holder_ttl,
        }),
        None => Err(Failure::Error(
            fatal.unwrap_or_else(|| tally.unavailable(key)),
        )),
    }
}

/// A majority answered `taken` for the attempt `armed`, sent at `started`:
/// the lease, unless its validity window had already closed (then the
/// token is released everywhere, as for any failed attempt).
fn won(
    armed: &mut Armed<'_>,
    key: &str,
    ttl_ms: u64,
    started: Instant,
    taken: usize,
) -> Result<(Arc<LeaseCore>, Instant), Failure> {
    let ttl = Duration::from_millis(ttl_ms);
    let token = std::mem::take(&mut armed.token);
    let lease = LeaseCore::new(
        key.to_owned(),
        armed.keys.clone(),
        token,
        None,
        ttl,
        started,
        None,
        crate::engine::metrics::Lock::untracked(),
    );
    if lease.remaining() > Duration::ZERO {
        armed.maybe.fill(false);
        return Ok((Arc::new(lease), started));
    }
    armed.token = lease.token.clone();
    Err(Failure::Error(super::quorum::no_majority(
        key,
        taken,
        armed.servers.len(),
        armed.servers.quorum,
        &format!(
            "a majority answered after {:?}, when the validity window (TTL − drift) had \
             already closed; raise the TTL or lower the server timeout",
            started.elapsed()
        ),
        None,
    )))
}

/// A copy of a server's non-transient error (the tally keeps the original).
fn clone_error(e: &Error) -> Error {
    match e {
        Error::WrongType { key, source } => Error::WrongType {
            key: key.clone(),
            source: source.clone(),
        },
        Error::NoPermission {
            key,
            command,
            source,
        } => Error::NoPermission {
            key: key.clone(),
            command: command.clone(),
            source: source.clone(),
        },
        Error::Redis { key, source } => Error::Redis {
            key: key.clone(),
            source: source.clone(),
        },
        Error::Shutdown { key } => Error::Shutdown { key: key.clone() },
        other => Error::Redis {
            key: other.key().unwrap_or_default().to_owned(),
            source: fred::error::Error::new(fred::error::ErrorKind::Unknown, other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::jittered;
    use std::time::Duration;

    #[test]
    fn jitter_stays_in_the_upper_half_and_varies() {
        let wait = Duration::from_millis(200);
        let draws: Vec<Duration> = (0..200).map(|_| jittered(wait)).collect();
        assert!(draws.iter().all(|d| *d >= wait / 2 && *d <= wait));
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 100, "{} distinct draws", distinct.len());
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
