//! The guard that represents a held lock.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::mutex::{drift, ttl_millis, Inner};
use crate::{scripts, Error};

/// A held lock. Dropping it releases the lock.
///
/// The guard knows how long the lock is at least valid ([`remaining`]),
/// measured from the moment the acquiring command was *sent*, less a margin
/// for clock drift, so it never overstates the lease.
///
/// * [`release`] releases now and reports whether the lock was still held.
/// * Dropping the guard hands the release to the mutex's background worker:
///   `Drop` never blocks and never panics, and works inside a multi-thread or
///   current-thread runtime and on a plain thread outside any runtime. The
///   release is token-checked, so if the lock was lost and someone else holds
///   the key now, their lock is left untouched.
///
/// [`remaining`]: LockGuard::remaining
/// [`release`]: LockGuard::release
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    inner: Arc<Inner>,
    key: String,
    redis_key: String,
    token: String,
    lease: Mutex<Lease>,
    /// Whether `Drop` must release.
    armed: bool,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    ttl: Duration,
    valid_until: Instant,
    lost: bool,
}

impl LockGuard {
    pub(crate) fn new(
        inner: Arc<Inner>,
        key: String,
        redis_key: String,
        token: String,
        ttl: Duration,
        sent_at: Instant,
    ) -> Self {
        LockGuard {
            inner,
            key,
            redis_key,
            token,
            lease: Mutex::new(Lease {
                ttl,
                valid_until: valid_until(sent_at, ttl),
                lost: false,
            }),
            armed: true,
        }
    }

    fn lease(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key as the caller gave it (without the mutex's key prefix).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The random token (a v4 UUID) stored as the lock's value in Redis.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The lease the lock was last taken or extended with.
    pub fn ttl(&self) -> Duration {
        self.lease().ttl
    }

    /// How long the lock is at least still held: the lease counted from when
    /// the last acquiring or extending command was sent, less a drift margin
    /// (1 % of the lease + 2 ms). Zero once that has passed, or once the lock
    /// is known to be lost.
    pub fn remaining(&self) -> Duration {
        let lease = self.lease();
        if lease.lost {
            return Duration::ZERO;
        }
        lease.valid_until.saturating_duration_since(Instant::now())
    }

    /// Extends the lease to `ttl` from now, if this guard still holds the lock.
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
        let ttl_ms = ttl_millis(&self.key, ttl)?;
        let ttl = Duration::from_millis(ttl_ms);
        let sent_at = Instant::now();
        let extended = scripts::extend(
            &self.inner.client,
            &self.redis_key,
            &self.token,
            ttl_ms,
            self.inner.command_timeout,
        )
        .await
        .map_err(|e| self.rekey(e))?;
        let mut lease = self.lease();
        if extended && !lease.lost {
            lease.ttl = ttl;
            lease.valid_until = valid_until(sent_at, ttl);
            Ok(())
        } else {
            lease.lost = true;
            Err(Error::NotHeld {
                key: self.key.clone(),
            })
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
        // `self` stays alive across the await: if this future is dropped
        // mid-flight, `Drop` queues the release instead.
        let result = scripts::release(
            &self.inner.client,
            &self.redis_key,
            &self.token,
            self.inner.command_timeout,
        )
        .await;
        match result {
            Ok(true) => {
                self.armed = false;
                tracing::debug!(key = %self.key, "lock released");
                Ok(())
            }
            Ok(false) => {
                self.armed = false;
                Err(Error::NotHeld {
                    key: self.key.clone(),
                })
            }
            Err(e) => Err(self.rekey(e)),
        }
    }

    /// Errors from scripts name the Redis key; callers know the key they gave.
    fn rekey(&self, mut e: Error) -> Error {
        if self.redis_key.len() != self.key.len() {
            e.set_key(&self.key);
        }
        e
    }
}

fn valid_until(sent_at: Instant, ttl: Duration) -> Instant {
    sent_at + ttl.saturating_sub(drift(ttl))
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.armed && !self.lease().lost {
            self.inner.releases.queue(
                std::mem::take(&mut self.redis_key),
                std::mem::take(&mut self.token),
            );
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("remaining", &self.remaining())
            .finish()
    }
}
