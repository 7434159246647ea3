//! [`RedlockGuard`], a Redlock lock held on a majority of servers, and
//! [`RedlockLease`], a view of it for work that runs under it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::engine::lease::{lease_methods, LeaseCore};

use crate::policy::error::lost::LostReason;
use crate::policy::error::Error;

use super::check::check_ttl;
use super::fanout::gather;
use super::quorum::{CheckedEnd, CheckedTally};
use super::renew::{self, extend_all, NotExtended};
use super::servers::Servers;

/// A Redlock lock, held on a majority of the servers. Dropping it releases
/// the lock on every server.
///
/// The twin of [`LockGuard`](crate::LockGuard), with the same methods and
/// meanings, except `fencing_token`, which it does not have (see
/// [`Redlock`](crate::Redlock) for why):
///
/// * while it lives, the lease is renewed on every server (a third of the
///   TTL after each renewal a majority confirmed), unless taken with
///   `auto_renew(false)`;
/// * [`remaining`](Self::remaining) is the local validity: the lease
///   counted from when the acquiring (or last confirmed renewing) commands
///   were *sent*, less the drift margin (1 % of the TTL + 2 ms), so it never
///   overstates what a majority granted;
/// * [`is_lost`](Self::is_lost) and [`lost`](Self::lost) report a lost
///   lock: a majority of servers no longer hold the token, or the local
///   validity ended before a majority confirmed a renewal (servers down,
///   paused or too slow). A lost lock is never reported held again;
/// * dropping it hands a release on every server to that server's release
///   worker: `Drop` never blocks.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RedlockGuard {
    servers: Arc<Servers>,
    lease: Arc<LeaseCore>,
    /// Tells the renewal task about an extension (`None`: no renewal).
    wake: Option<Arc<Notify>>,
    /// Whether `Drop` must release.
    armed: bool,
}

impl RedlockGuard {
    /// The guard of `lease`, taken by commands sent at `sent_at`.
    pub(crate) fn new(
        servers: Arc<Servers>,
        lease: Arc<LeaseCore>,
        auto_renew: bool,
        sent_at: Instant,
    ) -> Self {
        for m in &servers.mutexes {
            m.inner().guard_created();
        }
        let wake = auto_renew.then(|| {
            let wake = Arc::new(Notify::new());
            renew::start(
                Arc::clone(&servers),
                Arc::clone(&lease),
                Arc::clone(&wake),
                sent_at,
            );
            wake
        });
        RedlockGuard {
            servers,
            lease,
            wake,
            armed: true,
        }
    }

    lease_methods! {
        lease;
        /// The key as the caller gave it (without the key prefix).
        key;
        /// The random token (a v4 UUID) stored as the lock's value on every
        /// server that granted it.
        token;
        /// The lease the lock was last taken, extended or renewed with.
        ttl;
        /// How long the lock is at least still held on a majority: the Redlock
        /// validity, TTL − (time since the commands were sent) − drift. Zero
        /// once the lock is lost.
        remaining;
        /// `true` once the lock is known lost (see [`lost`](Self::lost)).
        is_lost;
        /// Completes when the lock is known lost, with the reason:
        /// [`LostReason::Expired`] when the local validity ended without a
        /// renewal a majority confirmed, [`LostReason::Missing`] or
        /// [`LostReason::Replaced`] when more than a minority of the servers
        /// answered that the token is gone or replaced.
        ///
        /// # Cancel safety
        /// Cancel-safe: it only watches.
        lost;
    }

    /// A cheap, cloneable view of this lock (key, token, remaining time,
    /// loss), for work that runs under it.
    pub fn lease(&self) -> RedlockLease {
        RedlockLease {
            core: Arc::clone(&self.lease),
        }
    }

    /// Extends the lease to `ttl` from now on every server, and succeeds once
    /// a majority confirms it within the local validity.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] as for the acquisition; [`Error::NotHeld`] when
    /// the lock is known lost, or more than a minority of the servers no
    /// longer hold its token (it is then lost); [`Error::Unavailable`] when
    /// too few servers answered to decide (the lease stays as it was).
    pub async fn extend(&self, ttl: Duration) -> Result<(), Error> {
        let ttl_ms = check_ttl(self.key(), ttl, self.servers.settings.server_timeout)?;
        let ttl = Duration::from_millis(ttl_ms);
        if let Some(reason) = self.lease.lost_reason() {
            return Err(self.not_held(reason));
        }
        let sent_at = Instant::now();
        // Until a majority answers, the lease counts the shorter of the two,
        // and the next renewal fits it.
        let shorter = ttl < self.lease.ttl();
        let asked = self.lease.extending_to(ttl, sent_at);
        if let Some(wake) = self.wake.as_ref().filter(|_| shorter) {
            wake.notify_one();
        }
        match extend_all(&self.servers, &self.lease, ttl, "the extension").await {
            Ok(()) if self.lease.confirm(sent_at, asked) => {
                if let Some(wake) = &self.wake {
                    wake.notify_one();
                }
                Ok(())
            }
            Ok(()) => Err(self.not_held(self.lease.lost_reason().unwrap_or(LostReason::Expired))),
            Err(NotExtended::Gone(reason)) => {
                self.lease.mark_lost(reason);
                Err(self.not_held(self.lease.lost_reason().unwrap_or(reason)))
            }
            Err(NotExtended::Undecided(e)) => Err(e),
        }
    }

    /// Releases the lock on every server now, waiting for each (at most the
    /// per-server timeout).
    ///
    /// # Errors
    /// [`Error::NotHeld`] when more than a minority of the servers no longer
    /// held the token (the lock had been lost); [`Error::Unavailable`] when
    /// too few servers answered to tell. Servers that could not be asked
    /// get the release again from their release worker; otherwise the lock
    /// expires with its lease.
    ///
    /// # Cancel safety
    /// Cancel-safe: if the future is dropped before the answers, the guard's
    /// drop queues the release on every server (a second release of the same
    /// token is harmless).
    pub async fn release(mut self) -> Result<(), Error> {
        self.lease.end();
        let servers = Arc::clone(&self.servers);
        let lease = Arc::clone(&self.lease);
        let calls: Vec<_> = (0..servers.len())
            .map(|i| servers.release(i, &lease.key, &lease.keys, &lease.token))
            .collect();
        let mut tally = CheckedTally::new(servers.len());
        let mut failed = Vec::new();
        gather(calls, |i, answer| -> Option<()> {
            if matches!(&answer, Err(e) if e.is_transient()) {
                failed.push(i);
            }
            tally.record(answer);
            None
        })
        .await;
        for i in failed {
            servers.queue_release(i, &lease.keys, &lease.token);
        }
        self.armed = false;
        match tally.decided() {
            Some(CheckedEnd::Held) => {
                tracing::debug!(key = %lease.key, "redlock released");
                Ok(())
            }
            Some(CheckedEnd::Gone(reason)) => Err(self.not_held(reason)),
            None => Err(tally.unavailable(&lease.key, "the release")),
        }
    }

    fn not_held(&self, reason: LostReason) -> Error {
        Error::NotHeld {
            key: self.key().to_owned(),
            reason,
        }
    }
}

impl Drop for RedlockGuard {
    fn drop(&mut self) {
        self.lease.end();
        if self.armed {
            for i in 0..self.servers.len() {
                self.servers
                    .queue_release(i, &self.lease.keys, &self.lease.token);
            }
        }
        for m in &self.servers.mutexes {
            m.inner().guard_dropped();
        }
    }
}

impl fmt::Debug for RedlockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedlockGuard")
            .field("key", &self.key())
            .field("token", &self.token())
            .field("servers", &self.servers.len())
            .field("remaining", &self.remaining())
            .finish()
    }
}

/// A cheap, cloneable view of a held Redlock lock, for work that runs under
/// it (see [`Redlock::with_lock`](crate::Redlock::with_lock)). It does not
/// keep the lock: the [`RedlockGuard`] does. The twin of
/// [`Lease`](crate::Lease), without a fencing token.
#[derive(Clone)]
pub struct RedlockLease {
    core: Arc<LeaseCore>,
}

impl RedlockLease {
    lease_methods! {
        core;
        /// The key as the caller gave it.
        key;
        /// The random token stored as the lock's value.
        token;
        /// How long the lock is at least still held on a majority (zero once
        /// lost).
        remaining;
        /// `true` once the lock is known lost (or released).
        is_lost;
        /// Completes when the lock is known lost, with the reason.
        ///
        /// # Cancel safety
        /// Cancel-safe: it only watches.
        lost;
    }
}

impl fmt::Debug for RedlockLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedlockLease")
            .field("key", &self.core.key)
            .field("remaining", &self.remaining())
            .finish()
    }
}
