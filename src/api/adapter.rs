//! The fire-and-forget `Adapter` shim for callers of the Go package's API.
//!
//! | Go (`distributedmutex`)             | Rust                                             |
//! |-------------------------------------|--------------------------------------------------|
//! | `NewAdapter(logger, redisClient)`   | [`RedisAdapter::new`] / [`provide_adapter`]       |
//! | `Acquire(ctx, key)`                 | `adapter.acquire(key).await`                     |
//! | `Acquiref(ctx, format, args...)`    | `adapter.acquiref(format_args!(..)).await`       |
//! | `Release(ctx, key)`                 | `adapter.release(key).await`                     |
//! | `Releasef(ctx, format, args...)`    | `adapter.releasef(format_args!(..)).await`       |
//! | context deadline                    | `tokio::time::timeout(d, adapter.acquire(key))`  |
//! | the logger                          | `tracing` (install any subscriber)               |
//!
//! Errors are logged, never returned. New code should prefer
//! [`DistributedMutex`] and its guards, which cannot forget to release.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fred::clients::Client;

use crate::api::guard::LockGuard;
use crate::api::mutex::DistributedMutex;
use crate::policy::error::Error;

/// The future every [`Adapter`] method returns.
pub type AdapterFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The Go package's lock interface: errors are logged, never returned.
///
/// Object-safe, so it can be shared as `Arc<dyn Adapter>` (see
/// [`provide_adapter`]).
///
/// ```no_run
/// use distributed_mutex::{provide_adapter, Adapter};
///
/// # async fn demo(client: fred::clients::Client) {
/// let locks = provide_adapter(client);
/// let tenant = 42;
/// locks.acquiref(format_args!("tenant:{tenant}:settings")).await;
/// // ... the Go package gave no way to know whether the lock was taken;
/// // failures are in the logs ...
/// locks.releasef(format_args!("tenant:{tenant}:settings")).await;
/// # }
/// ```
pub trait Adapter: Send + Sync {
    /// Takes the lock on `key`, waiting per the adapter's retry strategy
    /// (250 ms × 20 by default). On failure an error is logged and the call
    /// returns without the lock.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future (a deadline) gives up, logs it, and
    /// leaves nothing locked.
    fn acquire<'a>(&'a self, key: &'a str) -> AdapterFuture<'a>;

    /// [`acquire`](Adapter::acquire) with a key built from `format_args!`.
    ///
    /// # Cancel safety
    /// As [`acquire`](Adapter::acquire).
    fn acquiref<'a>(&'a self, args: fmt::Arguments<'_>) -> AdapterFuture<'a> {
        // `Arguments` is not `Send`: format before boxing.
        let key = fmt::format(args);
        Box::pin(async move { self.acquire(&key).await })
    }

    /// Releases the lock on `key` that this adapter holds, whichever of its
    /// tasks took it (see [`RedisAdapter`]). A warning is logged when it holds
    /// none, or when another task took it; an error when the lock had been
    /// lost.
    ///
    /// # Cancel safety
    /// Cancel-safe: once the future has started, the lock is released even
    /// if it is dropped (in the background).
    fn release<'a>(&'a self, key: &'a str) -> AdapterFuture<'a>;

    /// [`release`](Adapter::release) with a key built from `format_args!`.
    ///
    /// # Cancel safety
    /// As [`release`](Adapter::release).
    fn releasef<'a>(&'a self, args: fmt::Arguments<'_>) -> AdapterFuture<'a> {
        let key = fmt::format(args);
        Box::pin(async move { self.release(&key).await })
    }
}

/// The dependency-injection entry point (the Go package's provider): an
/// adapter over `client` with the Go package's defaults, a one-minute lease
/// and 250 ms × 20 attempts.
pub fn provide_adapter(client: Client) -> Arc<dyn Adapter> {
    Arc::new(RedisAdapter::new(DistributedMutex::new(client)))
}

/// [`Adapter`] over a [`DistributedMutex`], keeping the guards that
/// `release(key)` needs in a map from key to held lock.
///
/// * Safe for concurrent use by many tasks. Acquiring a key that this adapter
///   already holds (from another task) waits like any other contender, and
///   never overwrites the holder's entry.
/// * **It does not protect tasks of one adapter from each other's
///   releases.** As in the Go package, `release(key)` releases the key's
///   lock whoever took it: a task whose `acquire` failed (the error is only
///   logged) and which then calls `release(key)` frees the lock that another
///   task of the same adapter holds, and both then run as if they held it.
///   Such a release is logged as a warning naming both tasks (tokio task
///   ids). Code that needs the guarantee should use [`DistributedMutex`] and
///   its guards, which cannot release what they do not hold.
/// * No leak when callers forget `release`: an entry whose lease has passed
///   is dropped from the map. The map is swept at most once a second, during
///   `acquire`, `release` and [`held_count`](RedisAdapter::held_count), so it
///   never holds more than the locks taken within one lease plus a second.
/// * Dropping the adapter releases every lock it still holds.
pub struct RedisAdapter {
    mutex: DistributedMutex,
    held: Mutex<Held>,
}

struct Held {
    locks: HashMap<String, Entry>,
    next_sweep: Instant,
}

/// A held lock and the task that took it.
struct Entry {
    guard: LockGuard,
    task: Option<tokio::task::Id>,
}

const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl RedisAdapter {
    /// An adapter over `mutex`, with its TTL and retry strategy. Use
    /// [`DistributedMutex::new`] for the Go package's defaults.
    pub fn new(mutex: DistributedMutex) -> Self {
        RedisAdapter {
            mutex,
            held: Mutex::new(Held {
                locks: HashMap::new(),
                next_sweep: Instant::now() + SWEEP_EVERY,
            }),
        }
    }

    /// The mutex the adapter takes its locks with.
    pub fn mutex(&self) -> &DistributedMutex {
        &self.mutex
    }

    /// How many locks the adapter holds now, after dropping the entries whose
    /// lease has passed.
    pub fn held_count(&self) -> usize {
        let mut held = self.held();
        held.sweep(true);
        held.locks.len()
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Held {
    /// Drops entries whose lease has passed; at most once per `SWEEP_EVERY`
    /// unless `now`.
    fn sweep(&mut self, now: bool) {
        let at = Instant::now();
        if !now && at < self.next_sweep {
            return;
        }
        self.next_sweep = at + SWEEP_EVERY;
        self.locks.retain(|key, entry| {
            let live = !entry.guard.remaining().is_zero();
            if !live {
                tracing::debug!(key = %key, "lock lease passed without a release; entry dropped");
            }
            live
        });
    }
}

impl Adapter for RedisAdapter {
    fn acquire<'a>(&'a self, key: &'a str) -> AdapterFuture<'a> {
        Box::pin(async move {
            let cancelled = CancelLog { key, armed: true };
            // The Go package's fixed lease: no renewal.
            let result = self.mutex.acquire(key).auto_renew(false).await;
            let mut cancelled = cancelled;
            cancelled.armed = false;
            match result {
                Ok(guard) => {
                    let mut held = self.held();
                    held.sweep(false);
                    // We hold the key in Redis, so an entry still in the map
                    // is a lease that has passed: replace it.
                    let task = tokio::task::try_id();
                    held.locks.insert(key.to_owned(), Entry { guard, task });
                    drop(held);
                    tracing::debug!(key = %key, "lock acquired");
                }
                Err(e @ Error::NotObtained { .. }) => {
                    tracing::error!(key = %key, error = %e, "timed out acquiring lock");
                }
                Err(e) => {
                    tracing::error!(key = %key, error = %e, "failed to acquire lock");
                }
            }
        })
    }

    fn release<'a>(&'a self, key: &'a str) -> AdapterFuture<'a> {
        Box::pin(async move {
            let entry = {
                let mut held = self.held();
                held.sweep(false);
                held.locks.remove(key)
            };
            let Some(Entry { guard, task }) = entry else {
                tracing::warn!(key = %key, "release of a lock this adapter does not hold");
                return;
            };
            let releaser = tokio::task::try_id();
            if task != releaser {
                tracing::warn!(
                    key = %key,
                    acquired_by = %task_name(task),
                    released_by = %task_name(releaser),
                    "lock released by a task other than the one that acquired it: the adapter \
                     does not protect its tasks from each other's releases"
                );
            }
            match guard.release().await {
                Ok(()) => tracing::debug!(key = %key, "lock released"),
                Err(e) => tracing::error!(key = %key, error = %e, "failed to release lock"),
            }
        })
    }
}

/// A task id for a log line.
fn task_name(task: Option<tokio::task::Id>) -> String {
    task.map_or_else(|| "no task".to_owned(), |id| format!("task {id}"))
}

/// Logs an acquisition abandoned by the caller (the Go context's deadline).
struct CancelLog<'a> {
    key: &'a str,
    armed: bool,
}

impl Drop for CancelLog<'_> {
    fn drop(&mut self) {
        if self.armed {
            tracing::error!(
                key = %self.key,
                "lock acquisition cancelled before it completed (deadline or caller gave up)"
            );
        }
    }
}

impl fmt::Debug for RedisAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAdapter")
            .field("mutex", &self.mutex)
            .field("held", &self.held().locks.len())
            .finish()
    }
}
