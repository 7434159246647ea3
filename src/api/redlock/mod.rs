//! [`Redlock`]: one lock over N independent Redis masters (no replication
//! between them), held while a majority of them grant it.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the public [`Redlock`] and its docs |
//! | `builder.rs` | [`RedlockBuilder`] and its defaults |
//! | `check.rs` | the settings and server list, checked before connecting (pure) |
//! | `connect.rs` | connecting to every URL in parallel; a reconnecting client for a server that is down |
//! | `servers.rs` | the servers (one [`DistributedMutex`](crate::DistributedMutex) each) and the per-server commands |
//! | `quorum.rs` | counting answers: majority, busy, undecided, and their errors (pure) |
//! | `fanout.rs` | one command to every server at once, stopping once decided |
//! | `acquire.rs` | [`RedlockAcquire`] and the attempt loop (validity, jitter, release on failure) |
//! | `guard.rs` | [`RedlockGuard`], [`RedlockLease`] |
//! | `renew.rs` | extension on all servers, and the per-guard renewal task |

mod acquire;
mod builder;
mod check;
mod connect;
mod fanout;
mod guard;
mod quorum;
mod renew;
mod servers;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use fred::clients::Client;

use crate::api::with_lock::{after_release, unless_lost};
use crate::policy::error::{none_when_busy, Error};
use crate::policy::retry::RetryStrategy;

pub use acquire::RedlockAcquire;
pub use builder::{
    RedlockBuilder, DEFAULT_REDLOCK_TTL, DEFAULT_SERVER_TIMEOUT, MAX_REDLOCK_SERVERS,
};
pub use guard::{RedlockGuard, RedlockLease};

use servers::Servers;

/// A lock over N independent Redis masters: the Redlock algorithm, as
/// go-redsync, node-redlock, rslock and redlock-rs implement it.
///
/// ```no_run
/// use distributed_mutex::Redlock;
///
/// # async fn demo() -> Result<(), distributed_mutex::Error> {
/// let redlock = Redlock::connect([
///     "redis://10.0.0.1:6379",
///     "redis://10.0.0.2:6379",
///     "redis://10.0.0.3:6379",
///     "redis://10.0.0.4:6379",
///     "redis://10.0.0.5:6379",
/// ])
/// .await?;
/// let guard = redlock.lock("nightly-import").await?;
/// // held on at least 3 of the 5 servers for `guard.remaining()`, renewed
/// // while the guard lives
/// guard.release().await?;
/// # Ok(()) }
/// ```
///
/// # The algorithm
/// * **Acquire**: `SET key token NX PX ttl` on every server at once (the
///   single-server lock's command, so each server's key is an ordinary
///   lock of this crate), each bounded by the per-server timeout
///   ([`RedlockBuilder::server_timeout`], default 250 ms). The attempt wins
///   once a majority (`N/2 + 1`) holds the token, and counts only while
///   its validity lasts: `TTL − elapsed − drift`, measured from when the
///   commands were sent, with `drift = 1 % of the TTL + 2 ms` (the factor
///   of redsync and node-redlock: clock-rate differences between this host
///   and the servers, and timer granularity). An attempt that does not win
///   releases its token on every server that may hold it: those that
///   granted it and those whose answer was lost or is still in flight.
///   Each attempt uses a fresh token.
/// * **Retry**: per the retry strategy, each wait drawn at random from the
///   upper half of its delay, so that contenders that failed together do
///   not come back together. A wait never outlasts the shortest remaining
///   lease seen on a busy server.
/// * **Renew**: a third of the TTL after each confirmed renewal, the
///   token-checked extend script on every server at once; the lease is
///   renewed once a majority confirms, and its validity counts from when the
///   renewal was sent. A server that lost the key (restarted, or paused past
///   the TTL) does not take part again until the next acquisition.
/// * **Lost**: when a majority cannot be confirmed before the local
///   validity ends ([`LostReason::Expired`](crate::LostReason::Expired)), or
///   when more than a minority answers that the token is gone
///   ([`LostReason::Missing`](crate::LostReason::Missing)) or someone else's
///   ([`LostReason::Replaced`](crate::LostReason::Replaced)).
/// * **Release**: the token-checked delete on every server; on drop, handed
///   to each server's release worker.
///
/// # Failures
/// With 5 servers: 2 down (or paused), locks are taken, renewed and
/// released on the other 3. 3 down: an acquisition fails with
/// [`Error::Unavailable`] ("only 2 of 5 Redis servers answered ..."),
/// transient, never [`Error::NotObtained`]; a held guard is reported lost
/// when its validity ends. A server restarted **without its data** while a
/// lock was held can grant the lock to a second holder (the known Redlock
/// weakness): keep a restarted server out for one TTL (restart delay) or
/// give it persistence with `appendfsync always`.
///
/// # No fencing tokens
/// A fencing token must grow strictly from one holder to the next. Each
/// server could draw one from its own counter, but two holders of a
/// Redlock share only *some* servers (any two majorities overlap in one
/// server, which one varies), so their counters are incomparable: holder B's
/// token from servers {3, 4, 5} can be smaller than holder A's from
/// {1, 2, 3}. Taking the largest of a majority's counters does not fix it
/// either, since a restarted server resets its counter. So neither
/// [`RedlockAcquire`] nor [`RedlockGuard`] has anything about fencing: its
/// absence is at compile time. Where a stalled holder writing late would
/// corrupt data, use a single primary with
/// [`Builder::min_replicas`](crate::Builder::min_replicas) and fencing
/// ([`DistributedMutex`](crate::DistributedMutex)) instead.
///
/// # Why a twin guard type
/// [`RedlockGuard`] has the methods of [`LockGuard`](crate::LockGuard) with
/// the same meanings, but is its own type: its lease is confirmed by a
/// count of several servers' answers, its release goes to all of them, and
/// it has no `fencing_token` (a shared type would have to return `None`
/// there at run time). Code generic over both can take the methods it uses
/// as closures, or wrap them in its own trait.
///
/// # Waiting
/// A waiter tries again at the jittered retry delays, and sooner when a
/// release message reaches it: once a lock it waits for is found busy (and
/// its next wait is 50 ms or more), it subscribes to the key's release
/// channel on every server (one subscriber connection per server and
/// process, made on first use) and is woken by the first release heard.
///
/// Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Redlock {
    servers: Arc<Servers>,
}

impl Redlock {
    /// Connects to every URL (in parallel) and returns a Redlock with the
    /// defaults: TTL [`DEFAULT_REDLOCK_TTL`] (10 s), renewed while guards
    /// live; per-server timeout [`DEFAULT_SERVER_TIMEOUT`] (250 ms); retry
    /// `linear(200 ms, 20)`, jittered; no key prefix.
    ///
    /// # Errors
    /// As [`RedlockBuilder::build`].
    pub async fn connect<I, S>(urls: I) -> Result<Redlock, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Redlock::builder(urls).build().await
    }

    /// A builder over URLs, to change the defaults.
    ///
    /// ```no_run
    /// use distributed_mutex::Redlock;
    /// use std::time::Duration;
    ///
    /// # async fn demo() -> Result<(), distributed_mutex::Error> {
    /// let redlock = Redlock::builder(["redis://a:6379", "redis://b:6379", "redis://c:6379"])
    ///     .ttl(Duration::from_secs(5))
    ///     .server_timeout(Duration::from_millis(100))
    ///     .key_prefix("locks:")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder<I, S>(urls: I) -> RedlockBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        RedlockBuilder::from_urls(urls.into_iter().map(|u| u.as_ref().to_owned()).collect())
    }

    /// A builder over fred clients the caller made (one standalone client
    /// per server, e.g. with TLS settings of its own). They are not closed
    /// by the Redlock. Give each a reconnect policy; the per-server timeout
    /// bounds every command whatever their own timeouts.
    pub fn builder_with_clients(clients: impl IntoIterator<Item = Client>) -> RedlockBuilder {
        RedlockBuilder::from_clients(clients.into_iter().collect())
    }

    /// How many servers the lock is taken on.
    pub fn servers(&self) -> usize {
        self.servers.len()
    }

    /// How many of them must grant it: `servers() / 2 + 1`.
    pub fn quorum(&self) -> usize {
        self.servers.quorum
    }

    /// Takes the lock on `key`, waiting per the retry strategy.
    ///
    /// # Errors
    /// [`Error::NotObtained`] when other holders kept more than a minority
    /// of the servers for the whole wait; [`Error::Unavailable`] when the
    /// last attempt could not reach a majority (the message says how many
    /// servers answered), or won too late for its validity;
    /// [`Error::InvalidKey`], [`Error::InvalidTtl`], [`Error::Config`] for
    /// bad input; [`Error::WrongType`], [`Error::NoPermission`],
    /// [`Error::Redis`] when a server refused and no majority was reached;
    /// [`Error::Shutdown`] after [`shutdown`](Self::shutdown).
    ///
    /// # Cancel safety
    /// Dropping the future at any point leaves nothing locked: the servers
    /// that may hold the token of the attempt in flight get a release.
    pub async fn lock(&self, key: impl AsRef<str>) -> Result<RedlockGuard, Error> {
        acquire::run(self.acquire(key)).await
    }

    /// One attempt: `Ok(None)` when others hold the lock on more than a
    /// minority of the servers.
    ///
    /// # Errors
    /// As [`lock`](Self::lock), except that a busy lock is `Ok(None)`; too
    /// few servers reachable is still [`Error::Unavailable`].
    ///
    /// # Cancel safety
    /// As [`lock`](Self::lock).
    pub async fn try_lock(&self, key: impl AsRef<str>) -> Result<Option<RedlockGuard>, Error> {
        none_when_busy(acquire::run(self.acquire(key).retry(RetryStrategy::none())).await)
    }

    /// An acquisition of `key` with per-call options; `.await` it.
    pub fn acquire(&self, key: impl AsRef<str>) -> RedlockAcquire {
        RedlockAcquire::new(Arc::clone(&self.servers), key.as_ref().to_owned())
    }

    /// Runs `work` while holding the lock on `key`, and releases it after;
    /// as [`DistributedMutex::with_lock`](crate::DistributedMutex::with_lock):
    /// if the lock is lost while the work runs, the work is dropped at its
    /// next await point and the call returns [`Error::Lost`].
    ///
    /// # Errors
    /// As [`lock`](Self::lock), and [`Error::Lost`] when the lock was lost
    /// before the work finished (or found lost when releasing it).
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future drops the work and the guard, which
    /// queues the release on every server.
    pub async fn with_lock<F, Fut, T>(&self, key: impl AsRef<str>, work: F) -> Result<T, Error>
    where
        F: FnOnce(RedlockLease) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.lock(key).await?;
        let work = work(guard.lease());
        let output = unless_lost(guard.key(), guard.lost(), work).await?;
        after_release(output, guard.release().await)
    }

    /// Refuses new locks with [`Error::Shutdown`], waits for the releases
    /// still queued on every server, and closes the connections the
    /// Redlock made (as [`DistributedMutex::shutdown`](crate::DistributedMutex::shutdown)
    /// does for each server).
    pub async fn shutdown(&self) {
        let calls: Vec<_> = self.servers.mutexes.iter().map(|m| m.shutdown()).collect();
        fanout::gather(calls, |_, ()| -> Option<()> { None }).await;
    }
}

impl fmt::Debug for Redlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redlock")
            .field("servers", &self.servers.names)
            .field("quorum", &self.servers.quorum)
            .field("settings", &self.servers.settings)
            .finish()
    }
}
