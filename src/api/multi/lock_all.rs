//! The multi-key methods of [`DistributedMutex`]: `lock_all`,
//! `try_lock_all` and `acquire_all`.

use std::sync::Arc;

use crate::api::multi::{AcquireAll, MultiGuard};
use crate::api::mutex::DistributedMutex;
use crate::policy::error::{none_when_busy, Error};
use crate::policy::retry::RetryStrategy;

// Multi-key locks, all or none (here, beside the loop they run).
impl DistributedMutex {
    /// Takes the locks on every key of `keys` at once, all or none, waiting
    /// per the retry strategy; one [`MultiGuard`] holds them all.
    ///
    /// Either every key is taken with the guard's token, or none is: an
    /// attempt that finds any key held by someone else leaves (or puts back)
    /// every key it touched. Duplicate keys are merged. The keys are taken
    /// in a canonical order (by cluster slot, then by key) and nothing is
    /// held while waiting, so callers locking overlapping sets in any order
    /// never deadlock. Keys in one cluster slot (all keys on a single
    /// server, or keys sharing a `{hash tag}` on a cluster) are taken by one
    /// atomic script call; on a cluster, one call per slot.
    ///
    /// Shorthand for `self.acquire_all(keys).await`; see
    /// [`acquire_all`](Self::acquire_all) for per-call options.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// // A transfer between two accounts; another transfer may lock them
    /// // as ["account:2", "account:1"] without any risk of deadlock.
    /// let guard = mutex.lock_all(["account:1", "account:2"]).await?;
    /// assert_eq!(guard.keys().len(), 2);
    /// // ... move the money ...
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Waiting
    /// A multi-key acquisition waits for the release message of the key that
    /// blocked its last attempt (each wait capped by that holder's remaining
    /// lease and the retry strategy), then tries the whole set again. It
    /// does not queue for the keys it waits for: on a hot key, single-key
    /// waiters are served first, so a multi-key lock may wait longer than a
    /// single-key lock would.
    ///
    /// # Errors
    /// [`Error::InvalidKeySet`] for an empty set or one of more than
    /// [`MAX_LOCK_ALL_KEYS`](crate::MAX_LOCK_ALL_KEYS) distinct keys;
    /// [`Error::InvalidKey`] naming an empty or too long key;
    /// [`Error::NotObtained`] naming the key that blocked the last attempt,
    /// when the set was not free once in the whole wait;
    /// [`Error::WrongType`] naming a key that holds something that is not a
    /// lock; [`Error::NotReplicated`] with
    /// [`Builder::min_replicas`](crate::Builder::min_replicas) when too few
    /// replicas acknowledged a group's write (every key is released again);
    /// otherwise as [`lock`](Self::lock).
    ///
    /// # Cancel safety
    /// Dropping the future at any point leaves nothing locked: every key an
    /// attempt may have set gets a release of its token queued.
    pub async fn lock_all<I>(&self, keys: I) -> Result<MultiGuard, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        crate::api::multi::run(self.acquire_all(keys)).await
    }

    /// Makes one attempt at the locks on every key of `keys`, all or none:
    /// `Ok(None)` if any of them is held by someone else (then none is
    /// taken).
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// match mutex.try_lock_all(["shard:1", "shard:2", "shard:3"]).await? {
    ///     Some(_guard) => { /* this replica rebalances the three shards */ }
    ///     None => { /* one of them is busy */ }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`lock_all`](Self::lock_all), except that a busy set is `Ok(None)`.
    ///
    /// # Cancel safety
    /// As [`lock_all`](Self::lock_all).
    pub async fn try_lock_all<I>(&self, keys: I) -> Result<Option<MultiGuard>, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let attempt = self.acquire_all(keys).retry(RetryStrategy::none());
        none_when_busy(crate::api::multi::run(attempt).await)
    }

    /// A multi-key acquisition of `keys` with per-call options (`ttl`,
    /// `retry`, `timeout`, `auto_renew`, `min_replicas`); `.await` it. See
    /// [`lock_all`](Self::lock_all) for what it does.
    ///
    /// ```no_run
    /// use distributed_mutex::RetryStrategy;
    /// use std::time::Duration;
    ///
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let guard = mutex
    ///     .acquire_all(["{tenant:42}:users", "{tenant:42}:billing"])
    ///     .ttl(Duration::from_secs(30))
    ///     .retry(RetryStrategy::linear(Duration::from_millis(50), 100))
    ///     .timeout(Duration::from_secs(2))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn acquire_all<I>(&self, keys: I) -> AcquireAll
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        AcquireAll::new(Arc::clone(self.inner()), keys)
    }
}
