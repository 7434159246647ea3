//! [`RwLock`]: a writer-preferring read-write lock over Redis, and its
//! [`ReadGuard`] and [`WriteGuard`].

use std::fmt;
use std::sync::Arc;

use crate::engine::inner::Inner;
use crate::engine::options::Options;
use crate::engine::primitive::guard::Held;
use crate::engine::primitive::{acquisition, guard_type, Target};
use crate::policy::error::{none_when_busy, Error};
use crate::policy::retry::RetryStrategy;

/// A read-write lock: many readers at once, or one writer alone, made by
/// [`DistributedMutex::rw`](crate::DistributedMutex::rw).
///
/// It prefers writers: a writer that waits records an *intent* in Redis,
/// and no new reader enters while an unexpired intent is there, so a steady
/// stream of readers cannot starve it (readers already in finish first). A
/// waiting writer refreshes its intent with each attempt (at least every
/// 500 ms); when it gives up or is cancelled its intent is withdrawn, and if
/// it dies the intent expires one command timeout plus one second after its
/// last attempt, so readers are never blocked for long by a writer that is
/// gone. `try_write` leaves no intent.
///
/// Readers, the writer and the intents are places in three Redis sorted
/// sets, scored by expiry in Redis server time: a crashed holder's place
/// frees itself after its lease. Guards are renewed while they live and
/// released on drop.
///
/// ```no_run
/// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
/// let config = mutex.rw("tenant:42:config");
/// {
///     let _read = config.read().await?; // shared with other readers
/// }
/// let write = config.write().await?; // alone: no reader, no other writer
/// write.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RwLock {
    inner: Arc<Inner>,
    name: String,
}

impl RwLock {
    pub(crate) fn new(inner: Arc<Inner>, name: String) -> Self {
        RwLock { inner, name }
    }

    /// The lock's name, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes the lock for reading, waiting per the mutex's retry strategy.
    ///
    /// # Errors
    /// [`Error::NotObtained`] when a writer held the lock, or waited for it,
    /// for the whole wait; [`Error::InvalidKey`] for an empty or too long
    /// name; [`Error::WrongType`] when one of its Redis keys holds something
    /// else; [`Error::Unavailable`]/[`Error::Timeout`] when the last attempt
    /// could not reach Redis; [`Error::Shutdown`] after shutdown.
    ///
    /// # Cancel safety
    /// Dropping the future at any point leaves nothing held.
    pub async fn read(&self) -> Result<ReadGuard, Error> {
        self.read_with().await
    }

    /// Takes the lock for writing, waiting per the mutex's retry strategy
    /// (and stopping new readers while it waits).
    ///
    /// # Errors
    /// As [`read`](Self::read); `NotObtained` when readers or a writer held
    /// the lock for the whole wait.
    ///
    /// # Cancel safety
    /// Dropping the future at any point leaves nothing held, and withdraws
    /// the writer's intent.
    pub async fn write(&self) -> Result<WriteGuard, Error> {
        self.write_with().await
    }

    /// One read attempt, no waiting: `Ok(None)` when a writer holds the
    /// lock or waits for it.
    ///
    /// # Errors
    /// As [`read`](Self::read), without `NotObtained`.
    ///
    /// # Cancel safety
    /// As [`read`](Self::read).
    pub async fn try_read(&self) -> Result<Option<ReadGuard>, Error> {
        none_when_busy(self.read_with().retry(RetryStrategy::none()).await)
    }

    /// One write attempt, no waiting (and no intent left behind):
    /// `Ok(None)` when anyone holds the lock.
    ///
    /// # Errors
    /// As [`write`](Self::write), without `NotObtained`.
    ///
    /// # Cancel safety
    /// As [`write`](Self::write).
    pub async fn try_write(&self) -> Result<Option<WriteGuard>, Error> {
        none_when_busy(self.write_with().retry(RetryStrategy::none()).await)
    }

    /// A read acquisition with per-call options; `.await` it.
    pub fn read_with(&self) -> AcquireRead {
        AcquireRead {
            inner: Arc::clone(&self.inner),
            name: self.name.clone(),
            options: Options::default(),
        }
    }

    /// A write acquisition with per-call options; `.await` it.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// use std::time::Duration;
    /// let guard = mutex
    ///     .rw("catalog")
    ///     .write_with()
    ///     .timeout(Duration::from_secs(30))
    ///     .await?;
    /// # drop(guard); Ok(()) }
    /// ```
    pub fn write_with(&self) -> AcquireWrite {
        AcquireWrite {
            inner: Arc::clone(&self.inner),
            name: self.name.clone(),
            options: Options::default(),
        }
    }
}

impl fmt::Debug for RwLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock").field("name", &self.name).finish()
    }
}

/// A read acquisition with per-call options, made by
/// [`RwLock::read_with`]. `.await` it; the future is `Send + 'static`.
///
/// # Cancel safety
/// Dropping the future at any point leaves nothing held.
#[must_use = "an acquisition does nothing until it is awaited"]
pub struct AcquireRead {
    inner: Arc<Inner>,
    name: String,
    options: Options,
}

acquisition!(AcquireRead => ReadGuard, |this| Target::read(&this.inner.settings.prefix, &this.name));

/// A write acquisition with per-call options, made by
/// [`RwLock::write_with`]. `.await` it; the future is `Send + 'static`.
///
/// # Cancel safety
/// Dropping the future at any point leaves nothing held and withdraws the
/// writer's intent.
#[must_use = "an acquisition does nothing until it is awaited"]
pub struct AcquireWrite {
    inner: Arc<Inner>,
    name: String,
    options: Options,
}

// The intent's length is set by the acquisition (none for a try).
acquisition!(AcquireWrite => WriteGuard, |this| Target::write(&this.inner.settings.prefix, &this.name, 0));

/// A held read guard of an [`RwLock`]: shared with other readers, never with
/// a writer. Renewed while it lives; released on drop (waking a writer).
#[must_use = "the read guard is released as soon as it is dropped"]
pub struct ReadGuard {
    held: Held,
}

guard_type!(ReadGuard, "read guard");

/// A held write guard of an [`RwLock`]: alone, no reader and no other
/// writer. Renewed while it lives; released on drop (waking readers and
/// writers).
#[must_use = "the write guard is released as soon as it is dropped"]
pub struct WriteGuard {
    held: Held,
}

guard_type!(WriteGuard, "write guard");
