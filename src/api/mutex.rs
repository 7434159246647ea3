//! [`DistributedMutex`]: the public entry point.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use fred::clients::Client;

use crate::api::acquire::Acquire;
use crate::api::guard::LockGuard;
use crate::api::rwlock::RwLock;
use crate::api::semaphore::Semaphore;
use crate::api::with_lock::{after_release, unless_lost};
use crate::engine::inner::Inner;
use crate::engine::lease::Lease;
use crate::policy::error::{none_when_busy, Error};
use crate::policy::retry::RetryStrategy;

/// A lock service over one Redis connection: many keys, many tasks, many
/// processes.
///
/// Cheap to clone (clones share the connection and the release worker), and
/// `Send + Sync`. Each lock is a Redis key holding a random token, set with
/// `SET key token NX PX ttl` and released with a token-checked delete, so it
/// interoperates with bsm/redislock, redis-py's `Lock` and other clients of
/// that protocol on the same key.
///
/// ```no_run
/// use distributed_mutex::DistributedMutex;
///
/// # async fn demo() -> Result<(), distributed_mutex::Error> {
/// let mutex = DistributedMutex::connect("redis://127.0.0.1:6379").await?;
/// {
///     let _guard = mutex.lock("tenant:42:settings").await?;
///     // only one holder in the whole fleet runs this at a time
/// } // dropped: released
/// mutex.shutdown().await; // wait for releases still in flight
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DistributedMutex {
    inner: Arc<Inner>,
}

impl DistributedMutex {
    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        DistributedMutex { inner }
    }

    /// What the handles share (for `redlock`, which drives one mutex per server).
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// The fred client the mutex sends its commands through.
    ///
    /// A client the mutex made ([`connect`](Self::connect),
    /// [`Builder::connect`](crate::Builder::connect)) is closed by [`shutdown`](Self::shutdown) and
    /// when the last handle and guard are dropped, unless it was handed out
    /// here: then it stays open for whoever holds a clone, and closing it
    /// (`quit`) is theirs.
    pub fn client(&self) -> &Client {
        self.inner.releases.lend_client();
        &self.inner.client
    }

    /// Takes the lock on `key`, waiting per the retry strategy.
    ///
    /// Shorthand for `self.acquire(key).await`; see [`DistributedMutex::acquire`]
    /// for per-call options.
    ///
    /// # Errors
    /// [`Error::NotObtained`] when another holder kept the lock for the whole
    /// wait; [`Error::Unavailable`]/[`Error::Timeout`] when the last attempt
    /// could not reach Redis; [`Error::InvalidKey`] for an empty or too long
    /// key; [`Error::WrongType`] when the key holds something that is not a
    /// lock; [`Error::NotReplicated`] when the mutex confirms writes
    /// ([`Builder::min_replicas`](crate::Builder::min_replicas)) and too few
    /// replicas acknowledged this one (the lock is released again);
    /// [`Error::Shutdown`] after [`shutdown`](Self::shutdown).
    ///
    /// # Cancel safety
    /// Dropping the future at any point leaves nothing locked and no place in
    /// the wait queue: if an attempt may have set the lock, or queued the
    /// acquisition, a release of its token is queued, which also takes it
    /// out of the queue and passes the lock on if it was just handed to it.
    pub async fn lock(&self, key: impl AsRef<str>) -> Result<LockGuard, Error> {
        // The acquisition future itself, not the boxed one `IntoFuture` gives.
        crate::api::acquire::run(self.acquire(key)).await
    }

    /// Makes one attempt at the lock on `key`: `Ok(None)` if someone else
    /// holds it.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// match mutex.try_lock("cron:nightly-report").await? {
    ///     Some(_guard) => { /* this replica runs the job */ }
    ///     None => { /* another replica is running it */ }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`lock`](Self::lock), except that a busy lock is `Ok(None)`.
    ///
    /// # Cancel safety
    /// As [`lock`](Self::lock).
    pub async fn try_lock(&self, key: impl AsRef<str>) -> Result<Option<LockGuard>, Error> {
        none_when_busy(
            crate::api::acquire::run(self.acquire(key).retry(RetryStrategy::none())).await,
        )
    }

    /// An acquisition of `key` with per-call options; `.await` it.
    ///
    /// ```no_run
    /// use distributed_mutex::RetryStrategy;
    /// use std::time::Duration;
    ///
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let guard = mutex
    ///     .acquire("invoice:2026-11")
    ///     .ttl(Duration::from_secs(30))
    ///     .retry(RetryStrategy::linear(Duration::from_millis(50), 100))
    ///     .timeout(Duration::from_secs(2))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn acquire(&self, key: impl AsRef<str>) -> Acquire {
        Acquire::new(Arc::clone(&self.inner), key.as_ref().to_owned())
    }

    /// A counting semaphore named `name` with `permits` holders at most
    /// (see [`Semaphore`]). Nothing is sent until a permit is asked for; a
    /// `permits` of 0 (or above [`MAX_PERMITS`](crate::MAX_PERMITS)) and an
    /// empty name are refused then, with [`Error::Config`] and
    /// [`Error::InvalidKey`].
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let permit = mutex.semaphore("encoder", 3).acquire().await?;
    /// # drop(permit); Ok(()) }
    /// ```
    pub fn semaphore(&self, name: impl AsRef<str>, permits: u32) -> Semaphore {
        Semaphore::new(Arc::clone(&self.inner), name.as_ref().to_owned(), permits)
    }

    /// A writer-preferring read-write lock named `name` (see [`RwLock`]).
    /// Nothing is sent until a guard is asked for.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let guard = mutex.rw("price-list").read().await?;
    /// # drop(guard); Ok(()) }
    /// ```
    pub fn rw(&self, name: impl AsRef<str>) -> RwLock {
        RwLock::new(Arc::clone(&self.inner), name.as_ref().to_owned())
    }

    /// Runs `work` while holding the lock on `key`, and releases it after.
    ///
    /// The lock is taken as by [`lock`](Self::lock) (renewed while the work
    /// runs). `work` gets a [`Lease`] (key, fencing token, remaining time). If
    /// the lock is lost while the work runs, the work future is dropped at its
    /// next await point (cancelled) and the call returns [`Error::Lost`].
    ///
    /// Cancellation does not undo what the work already did: a write sent
    /// before the loss was noticed may land after another holder took the
    /// lock. Where that matters, take the lock with fencing and have the
    /// resource reject stale fencing tokens.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let rows = mutex
    ///     .with_lock("tenant:42:settings", |lease| async move {
    ///         println!("holding {} for at least {:?}", lease.key(), lease.remaining());
    ///         42 // the work's output
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`lock`](Self::lock), and [`Error::Lost`] when the lock was lost
    /// before the work finished (or found lost when releasing it).
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future drops the work and the guard, which
    /// queues the release.
    pub async fn with_lock<F, Fut, T>(&self, key: impl AsRef<str>, work: F) -> Result<T, Error>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.lock(key).await?;
        let work = work(guard.lease());
        let output = unless_lost(guard.key(), guard.lost(), work).await?;
        after_release(output, guard.release().await)
    }

    /// Releases the lock on `key` if it holds `token`: the operator's
    /// release of a lock whose guard is elsewhere (another process, a
    /// `dmutex run` whose child hangs), for example by the token that
    /// [`LockGuard::token`] gave the holder.
    ///
    /// Token-checked like every release: the key is deleted only while it
    /// still holds `token`, and waiters are told as after a guard's release.
    /// Never an unconditional delete. The key is given as to
    /// [`lock`](Self::lock) (the mutex's key prefix goes before it).
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// mutex
    ///     .release_token("nightly-import", "0b6c7a44-5d3c-4a53-9a4e-0c3b8f8d1f2e")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotHeld`] when the key is gone ([`LostReason::Missing`](crate::LostReason::Missing))
    /// or holds another token or another type of value
    /// ([`LostReason::Replaced`](crate::LostReason::Replaced)): nothing was
    /// touched. [`Error::InvalidKey`] for an empty or too long key;
    /// [`Error::Unavailable`]/[`Error::Timeout`] when Redis could not be
    /// asked (the release may or may not have happened; it is not retried);
    /// [`Error::Shutdown`] after [`shutdown`](Self::shutdown).
    pub async fn release_token(&self, key: impl AsRef<str>, token: &str) -> Result<(), Error> {
        let key = key.as_ref();
        crate::policy::limits::validate_key(key)?;
        if self.inner.is_shut_down() {
            return Err(Error::Shutdown {
                key: key.to_owned(),
            });
        }
        self.inner.ensure_background();
        let keys = crate::protocol::keys::LockKeys::new(&self.inner.settings.prefix, key);
        let reason = match self.inner.batcher.release(&keys, token, "", None).await {
            Ok(crate::protocol::scripts::Compared::Held) => return Ok(()),
            Ok(crate::protocol::scripts::Compared::Missing) => {
                crate::policy::error::lost::LostReason::Missing
            }
            Ok(crate::protocol::scripts::Compared::Replaced) => {
                crate::policy::error::lost::LostReason::Replaced
            }
            Err(mut e) => {
                e.set_key(key);
                return Err(e);
            }
        };
        Err(Error::NotHeld {
            key: key.to_owned(),
            reason,
        })
    }

    /// The Redis name of `key`'s fencing counter, under this mutex's key
    /// prefix: `P` `0xFF` `{T}:fence:K`, as the README's "Redis layout"
    /// describes (not valid UTF-8 by design). For reading the counter, e.g.
    /// `GET` on it gives the last fencing token drawn for `key`.
    pub fn fencing_counter_key(&self, key: impl AsRef<str>) -> Vec<u8> {
        crate::protocol::keys::LockKeys::new(&self.inner.settings.prefix, key.as_ref()).fence()
    }

    /// Refuses new locks with [`Error::Shutdown`], waits for the releases
    /// still queued by dropped guards, and closes the connections the mutex
    /// made: the subscriber connection, and the client when it came from
    /// [`connect`](Self::connect) or [`Builder::connect`](crate::Builder::connect) and was not handed
    /// out by [`client`](Self::client).
    ///
    /// Guards still alive keep working (renewal, `release`, release on
    /// drop); the connections close when the last of them is dropped. A
    /// queued release that fails for a transient reason is tried three times
    /// in all, so with Redis unreachable this waits about three command
    /// timeouts; a release that still fails is left to the lock's TTL.
    /// Calling it again does nothing more.
    ///
    /// # Cancel safety
    /// Cancel-safe: the mutex is shut down from the first poll, and the
    /// queued releases and the closing go on in the background.
    pub async fn shutdown(&self) {
        self.inner.shut_down();
        // Locks, semaphore permits and read-write lock guards dropped before.
        self.inner.releases.flush().await;
        self.inner.wait_closed().await;
    }
}

impl fmt::Debug for DistributedMutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = &self.inner.settings;
        f.debug_struct("DistributedMutex")
            .field("ttl", &settings.ttl)
            .field("retry", &settings.retry)
            .field("prefix", &settings.prefix)
            .field("command_timeout", &settings.command_timeout)
            .field("shut_down", &self.inner.is_shut_down())
            .finish_non_exhaustive()
    }
}
