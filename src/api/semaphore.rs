//! [`Semaphore`]: a counting semaphore over Redis, and its [`Permit`].

use std::fmt;
use std::sync::Arc;

use crate::engine::inner::Inner;
use crate::engine::options::Options;
use crate::engine::primitive::guard::Held;
use crate::engine::primitive::{acquisition, guard_type, Target};
use crate::policy::error::{none_when_busy, Error};
use crate::policy::retry::RetryStrategy;

/// A counting semaphore: at most `permits` holders at once, across every
/// process that uses the same name (and the same number of permits), made by
/// [`DistributedMutex::semaphore`](crate::DistributedMutex::semaphore).
///
/// Each [`Permit`] is a place in a Redis sorted set (`P \xff {T}:sem:NAME`,
/// see the README), scored by when it expires in Redis server time, so a
/// crashed holder's permit frees itself after its lease. Permits are renewed
/// while their guard lives, released on drop, and waiters are woken by a
/// release message (capped by the first held permit's expiry).
///
/// **Processes that disagree on `permits`:** the count is the caller's. An
/// acquisition asking with `n` permits succeeds while fewer than `n`
/// unexpired permits are held, whoever holds them. So there are never more
/// holders than the largest `permits` in use, and a process never enters
/// past its own `permits`. Lowering `permits` (a rolling deploy) takes
/// effect as holders leave; no holder is evicted.
///
/// ```no_run
/// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
/// let downloads = mutex.semaphore("s3-downloads", 4);
/// let permit = downloads.acquire().await?; // one of at most 4, fleet-wide
/// // ... download ...
/// permit.release().await?; // or drop it
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    inner: Arc<Inner>,
    name: String,
    permits: u32,
}

impl Semaphore {
    pub(crate) fn new(inner: Arc<Inner>, name: String, permits: u32) -> Self {
        Semaphore {
            inner,
            name,
            permits,
        }
    }

    /// The semaphore's name, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many holders this handle lets in at once.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// Takes a permit, waiting per the mutex's retry strategy.
    ///
    /// # Errors
    /// [`Error::NotObtained`] when every permit stayed held for the whole
    /// wait; [`Error::Config`] when `permits` is 0 or above
    /// [`MAX_PERMITS`](crate::MAX_PERMITS); [`Error::InvalidKey`] for an
    /// empty or too long name; [`Error::WrongType`] when its Redis key holds
    /// something else; [`Error::Unavailable`]/[`Error::Timeout`] when the
    /// last attempt could not reach Redis; [`Error::Shutdown`] after
    /// shutdown.
    ///
    /// # Cancel safety
    /// Dropping the future at any point leaves no permit taken: if an
    /// attempt may have taken one, its release is queued.
    pub async fn acquire(&self) -> Result<Permit, Error> {
        self.acquire_with().await
    }

    /// One attempt, no waiting: `Ok(None)` when every permit is held.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), without `NotObtained`.
    ///
    /// # Cancel safety
    /// As [`acquire`](Self::acquire).
    pub async fn try_acquire(&self) -> Result<Option<Permit>, Error> {
        let once = self.acquire_with().retry(RetryStrategy::none());
        none_when_busy(once.await)
    }

    /// A permit acquisition with per-call options (TTL, retry strategy,
    /// timeout, renewal); `.await` it.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// use std::time::Duration;
    /// let permit = mutex
    ///     .semaphore("gpu", 2)
    ///     .acquire_with()
    ///     .ttl(Duration::from_secs(30))
    ///     .timeout(Duration::from_secs(10))
    ///     .await?;
    /// # drop(permit); Ok(()) }
    /// ```
    pub fn acquire_with(&self) -> AcquirePermit {
        AcquirePermit {
            inner: Arc::clone(&self.inner),
            name: self.name.clone(),
            permits: self.permits,
            options: Options::default(),
        }
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &self.name)
            .field("permits", &self.permits)
            .finish()
    }
}

/// One permit acquisition with per-call options, made by
/// [`Semaphore::acquire_with`]. `.await` it to get the [`Permit`]; the
/// future is `Send + 'static`.
///
/// # Cancel safety
/// Dropping the future at any point leaves no permit taken.
#[must_use = "an acquisition does nothing until it is awaited"]
pub struct AcquirePermit {
    inner: Arc<Inner>,
    name: String,
    permits: u32,
    options: Options,
}

acquisition!(AcquirePermit => Permit, |this| Target::permit(&this.inner.settings.prefix, &this.name, this.permits), permits);

/// A held permit of a [`Semaphore`]. Renewed in the background while it
/// lives (unless taken with `auto_renew(false)`); dropping it releases it
/// through the mutex's background worker (never blocks, never panics), and
/// wakes a waiter.
#[must_use = "the permit is released as soon as it is dropped"]
pub struct Permit {
    held: Held,
}

guard_type!(Permit, "permit");
