//! The guard that represents a held lock.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lease::{Lease, LeaseCore, LostReason};
use crate::mutex::{ttl_millis, Inner};
use crate::scripts::{self, Extended, Released};
use crate::Error;
use fred::interfaces::EventInterface;
use tokio::sync::broadcast::error::TryRecvError;

/// A held lock. Dropping it releases the lock.
///
/// * While the guard lives, the lease is renewed in the background (a third
///   of the TTL after each confirmed renewal), unless the lock was taken with
///   `auto_renew(false)`.
/// * [`remaining`](LockGuard::remaining) says how long the lock is at least
///   still held: measured from the moment the last acquiring or renewing
///   command was *sent*, less a drift margin, so it never overstates.
/// * [`is_lost`](LockGuard::is_lost) and [`lost`](LockGuard::lost) report a
///   lost lock: a renewal found the token gone or replaced, or the lease ran
///   out locally without a confirmed renewal (Redis unreachable or paused). A
///   lost lock is never reported held again.
/// * [`release`](LockGuard::release) releases now and reports whether the
///   lock was still held.
/// * Dropping the guard stops renewal and hands the release to the mutex's
///   background worker: `Drop` never blocks and never panics, and works in a
///   multi-thread or current-thread runtime and on a plain thread outside
///   any runtime. The release is token-checked: if someone else holds the key
///   now, their lock is left untouched.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    inner: Arc<Inner>,
    lease: Arc<LeaseCore>,
    /// Whether the renewer keeps this lease alive.
    auto_renew: bool,
    /// Whether `Drop` must release.
    armed: bool,
}

impl LockGuard {
    pub(crate) fn new(inner: Arc<Inner>, lease: Arc<LeaseCore>, auto_renew: bool) -> Self {
        LockGuard {
            inner,
            lease,
            auto_renew,
            armed: true,
        }
    }

    /// The key as the caller gave it (without the mutex's key prefix).
    pub fn key(&self) -> &str {
        &self.lease.key
    }

    /// The random token (a v4 UUID) stored as the lock's value in Redis.
    pub fn token(&self) -> &str {
        &self.lease.token
    }

    /// The fencing token drawn when the lock was taken with fencing
    /// (`fencing()` on the builder or the acquisition): strictly greater than
    /// every earlier holder's of this key. `None` without fencing.
    ///
    /// Pass it to the resource with every write, and have the resource reject
    /// a token smaller than the largest it has seen: then a holder whose lease
    /// ran out cannot write over its successor.
    pub fn fencing_token(&self) -> Option<u64> {
        self.lease.fencing_token
    }

    /// The lease the lock was last taken, extended or renewed with.
    pub fn ttl(&self) -> Duration {
        self.lease.ttl()
    }

    /// How long the lock is at least still held: the lease counted from when
    /// the last acquiring, extending or renewing command was sent, less a
    /// drift margin (1 % of the lease + 2 ms). Zero once the lock is lost.
    pub fn remaining(&self) -> Duration {
        self.lease.remaining()
    }

    /// `true` once the lock is known lost (see [`lost`](LockGuard::lost)).
    pub fn is_lost(&self) -> bool {
        self.lease.lost_reason().is_some()
    }

    /// Completes when the lock is known lost, with the reason: a renewal or
    /// extension found the key gone ([`LostReason::Missing`]) or held by
    /// someone else ([`LostReason::Replaced`]), or the lease ran out locally
    /// without a confirmed renewal ([`LostReason::Expired`]), which it reports
    /// no later than [`remaining`](LockGuard::remaining) reaches zero.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// # async fn long_work() {}
    /// let guard = mutex.lock("nightly-import").await?;
    /// tokio::select! {
    ///     reason = guard.lost() => eprintln!("lock lost ({reason}); stopping"),
    ///     () = long_work() => {}
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lost(&self) -> LostReason {
        self.lease.lost().await
    }

    /// A cheap, cloneable view of this lock (key, tokens, remaining, loss),
    /// for work that runs under it.
    pub fn lease(&self) -> Lease {
        Lease {
            core: Arc::clone(&self.lease),
        }
    }

    /// Extends the lease to `ttl` from now, if this guard still holds the
    /// lock. Later automatic renewals use the new TTL.
    ///
    /// # Errors
    /// [`Error::NotHeld`] when the lock has been lost (expired or taken over);
    /// [`Error::InvalidTtl`] for a TTL out of range; [`Error::Unavailable`] or
    /// [`Error::Timeout`] when Redis could not be asked (the lease is then
    /// unchanged: check [`remaining`](LockGuard::remaining)).
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// use std::time::Duration;
    /// let guard = mutex.lock("report:daily").await?;
    /// // ... more work than planned ...
    /// guard.extend(Duration::from_secs(120)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn extend(&self, ttl: Duration) -> Result<(), Error> {
        let ttl_ms = ttl_millis(self.key(), ttl)?;
        let ttl = Duration::from_millis(ttl_ms);
        if self.lease.lost_reason().is_some() {
            return Err(self.not_held());
        }
        let sent_at = Instant::now();
        let entry = [(
            self.lease.redis_key.as_str(),
            self.lease.token.as_str(),
            ttl_ms,
        )];
        let answer = scripts::extend(&self.inner.client, &entry, self.inner.command_timeout)
            .await
            .map_err(|e| self.rekey(e))?;
        match answer.first() {
            Some(Extended::Yes) if self.lease.confirm(sent_at, ttl) => {
                if self.auto_renew {
                    // The next renewal is due a period of the new TTL from now.
                    self.inner.renewer.track(&self.lease, sent_at);
                }
                Ok(())
            }
            Some(Extended::Yes) => Err(self.not_held()),
            Some(Extended::Replaced) => {
                self.lease.mark_lost(LostReason::Replaced);
                Err(self.not_held())
            }
            _ => {
                self.lease.mark_lost(LostReason::Missing);
                Err(self.not_held())
            }
        }
    }

    /// Releases the lock now.
    ///
    /// # Errors
    /// [`Error::NotHeld`] when the lock had already been lost (it expired or
    /// another client took it over); nothing of the other holder's is touched.
    /// On a transient error ([`Error::Unavailable`], [`Error::Timeout`]) the
    /// release is handed to the background worker for one more try, and the
    /// lock otherwise expires with its lease.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let guard = mutex.lock("tenant:42:settings").await?;
    /// // ... write the settings ...
    /// guard.release().await?; // Err(NotHeld) if the lease ran out meanwhile
    /// # Ok(()) }
    /// ```
    pub async fn release(mut self) -> Result<(), Error> {
        let held = self.lease.lost_reason().is_none();
        // Renewal stops first; a renewal already in flight cannot bring the
        // key back, because the extend script checks the token.
        self.lease.end();
        let mut reconnects = self.inner.client.reconnect_rx();
        // `self` stays alive across the await: if this future is dropped
        // mid-flight, `Drop` queues the release instead.
        let result = scripts::release(
            &self.inner.client,
            &self.lease.redis_key,
            &self.lease.token,
            &self.inner.id,
            self.inner.command_timeout,
        )
        .await;
        match result {
            // Our token was still there, so no one else held the key since
            // we took it (tokens are unique): the lock was held to the end.
            Ok(Released::Yes) => {
                self.armed = false;
                tracing::debug!(key = %self.key(), "lock released");
                Ok(())
            }
            // The key is gone, and the connection was re-established while
            // the release was in flight: fred re-sends in-flight commands
            // after a reconnect, so the first send most likely deleted our
            // key and this answer is the re-send's. The lease was valid when
            // we sent it, so no one else can have held the key before.
            Ok(Released::Missing)
                if held && !matches!(reconnects.try_recv(), Err(TryRecvError::Empty)) =>
            {
                self.armed = false;
                tracing::debug!(key = %self.key(), "lock released (reply lost in a reconnect)");
                Ok(())
            }
            Ok(_) => {
                self.armed = false;
                Err(self.not_held())
            }
            Err(e) => Err(self.rekey(e)),
        }
    }

    fn not_held(&self) -> Error {
        Error::NotHeld {
            key: self.key().to_owned(),
        }
    }

    /// Errors from scripts name the Redis key; callers know the key they gave.
    fn rekey(&self, mut e: Error) -> Error {
        e.set_key(self.key());
        e
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.lease.end();
        if self.armed && !self.lease.known_gone() {
            self.inner
                .releases
                .queue(self.lease.redis_key.clone(), self.lease.token.clone());
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key())
            .field("token", &self.token())
            .field("fencing_token", &self.fencing_token())
            .field("remaining", &self.remaining())
            .finish()
    }
}
