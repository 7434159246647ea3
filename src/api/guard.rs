//! The guard that represents a held lock.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::inner::Inner;
use crate::engine::lease::{lease_methods, Lease, LeaseCore};
use crate::policy::error::lost::LostReason;
use crate::policy::error::Error;
use crate::policy::limits::ttl_millis;
use crate::protocol::confirm::MinReplicas;
use crate::protocol::scripts::{self, Compared};

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
        inner.guard_created();
        LockGuard {
            inner,
            lease,
            auto_renew,
            armed: true,
        }
    }

    lease_methods! {
        lease;
        /// The key as the caller gave it (without the mutex's key prefix).
        key;
        /// The random token (a v4 UUID) stored as the lock's value in Redis.
        token;
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

    lease_methods! {
        lease;
        /// The lease the lock was last taken, extended or renewed with.
        ttl;
        /// How long the lock is at least still held: the lease counted from when
        /// the last acquiring, extending or renewing command was sent, less a
        /// drift margin (1 % of the lease + 2 ms). Zero once the lock is lost.
        remaining;
    }

    /// `true` once the lock is known lost (see [`lost`](LockGuard::lost)).
    pub fn is_lost(&self) -> bool {
        self.inner.ensure_background();
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
    ///
    /// # Cancel safety
    /// Cancel-safe: it only watches; dropping it changes nothing.
    pub async fn lost(&self) -> LostReason {
        self.inner.ensure_background();
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
    /// [`Error::Timeout`] when Redis could not be asked, and
    /// [`Error::NotReplicated`] when the lock was taken with `min_replicas`
    /// and too few replicas confirmed the extension in time (the lease is
    /// then unchanged: check [`remaining`](LockGuard::remaining)).
    ///
    /// Until the answer is in (and when it never comes: a timeout, a lost
    /// reply, a dropped future), the guard counts the shorter of its lease
    /// and `ttl` from the moment the extension was sent, since Redis may
    /// have run it; renewals ask for `ttl` from then on.
    ///
    /// # Cancel safety
    /// Cancel-safe: if dropped mid-flight the extension may or may not have
    /// reached Redis; either way the guard stays valid for at least what
    /// [`remaining`](LockGuard::remaining) says, and renewal goes on.
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
        self.inner.ensure_background();
        if let Some(reason) = self.lease.lost_reason() {
            return Err(self.not_held(reason));
        }
        let shorter = ttl < self.lease.ttl();
        let sent_at = Instant::now();
        // Until the answer is in, the lease counts the shorter of the two.
        let asked = self.lease.extending_to(ttl, sent_at);
        if self.auto_renew && shorter {
            // The next renewal fits the shorter lease, answer or not.
            self.inner.renewer.track(&self.lease, sent_at);
        }
        let entry = [(
            self.lease.keys.lock.as_str(),
            self.lease.token.as_str(),
            ttl_ms,
        )];
        let timeout = self.inner.settings.command_timeout;
        let answer = match self.lease.confirm {
            None => scripts::extend(&self.inner.client, &entry, false, timeout).await,
            Some(wait) => self.extend_confirmed(&entry, wait, timeout).await,
        }
        .map_err(|e| self.rekey(e))?;
        let reason = match answer.first() {
            Some(Compared::Held) if self.lease.confirm(sent_at, asked) => {
                if self.auto_renew {
                    // The next renewal is due a period of the new TTL from now.
                    self.inner.renewer.track(&self.lease, sent_at);
                }
                return Ok(());
            }
            Some(Compared::Held) => LostReason::Expired,
            Some(Compared::Replaced) => LostReason::Replaced,
            _ => LostReason::Missing,
        };
        self.lease.mark_lost(reason);
        Err(self.not_held(self.lease.lost_reason().unwrap_or(reason)))
    }

    /// Releases the lock now.
    ///
    /// The answer is exact: the release is sent once (the client does not
    /// re-send it after a reconnect), so `Ok(())` means this release found
    /// its token and deleted the key, and `NotHeld` means it found the key
    /// gone or taken. When the reply is lost (a connection cut after the
    /// command left) the outcome is unknown, and that is what the error says:
    /// a transient error, with the release retried in the background.
    ///
    /// # Errors
    /// [`Error::NotHeld`] when the lock had already been lost: its key was
    /// gone ([`LostReason::Missing`]: it expired, or was deleted) or held by
    /// someone else ([`LostReason::Replaced`]); nothing of the other holder's
    /// is touched. On a transient error ([`Error::Unavailable`],
    /// [`Error::Timeout`]) the release is handed to the background worker for
    /// more tries, and the lock otherwise expires with its lease.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let guard = mutex.lock("tenant:42:settings").await?;
    /// // ... write the settings ...
    /// guard.release().await?; // Err(NotHeld) if the lease ran out meanwhile
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    /// Cancel-safe: if the future is dropped before the answer, the guard's
    /// drop queues the release in the background (a second release of the
    /// same token is harmless: it finds the key gone).
    pub async fn release(mut self) -> Result<(), Error> {
        // Renewal stops first; a renewal already in flight cannot bring the
        // key back, because the extend script checks the token.
        self.lease.end();
        self.inner.ensure_background();
        // `self` stays alive across the await: if this future is dropped
        // mid-flight, `Drop` queues the release instead.
        let result = (self.inner.batcher)
            .release(&self.lease.keys, &self.lease.token, "", None)
            .await;
        let reason = match result {
            Ok(Compared::Held) => {
                self.armed = false;
                tracing::debug!(key = %self.key(), "lock released");
                return Ok(());
            }
            Ok(Compared::Missing) => LostReason::Missing,
            Ok(Compared::Replaced) => LostReason::Replaced,
            Err(e) => return Err(self.rekey(e)),
        };
        self.lease.metrics.lost(reason);
        self.armed = false;
        Err(self.not_held(reason))
    }

    /// The extension with its write confirmed by `wait.replicas` replicas:
    /// a confirmed answer, or [`Error::NotReplicated`] when the key still
    /// held our token but too few replicas acknowledged the new lease (which
    /// then counts as not granted). "Gone" and "replaced" stand as they are.
    async fn extend_confirmed(
        &self,
        entry: &[(&str, &str, u64)],
        wait: MinReplicas,
        timeout: Duration,
    ) -> Result<Vec<Compared>, Error> {
        let key = &self.lease.keys.lock;
        let client = self.inner.confirmer.client(key, timeout).await?;
        let (answer, acked) =
            scripts::extend_confirmed(client, entry, false, wait, timeout).await?;
        if answer.first() == Some(&Compared::Held) && acked < wait.replicas {
            return Err(Error::NotReplicated {
                key: key.clone(),
                acked,
                wanted: wait.replicas,
                after: wait.timeout(),
            });
        }
        Ok(answer)
    }

    fn not_held(&self, reason: LostReason) -> Error {
        Error::NotHeld {
            key: self.key().to_owned(),
            reason,
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
                .queue(self.lease.keys.clone(), self.lease.token.clone());
        }
        self.inner.ensure_background();
        self.inner.guard_dropped();
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
