//! A Redis-backed distributed mutex for async Rust.
//!
//! Many processes on many machines take turns on a shared resource through
//! one Redis server: cron jobs that must not run twice, tenant settings that
//! must not be written by two replicas at once.
//!
//! ```no_run
//! use distributed_mutex::{DistributedMutex, Error};
//!
//! # async fn demo() -> Result<(), Error> {
//! let mutex = DistributedMutex::connect("redis://127.0.0.1:6379").await?;
//!
//! // Waits up to ~5 s (the retry strategy's budget) for the lock; holds it
//! // for at least one minute, renewed while the guard lives; releases it when
//! // the guard is dropped.
//! let guard = mutex.lock("tenant:42:settings").await?;
//! println!("holding {} for at least {:?}", guard.key(), guard.remaining());
//!
//! // One attempt, no waiting:
//! assert!(mutex.try_lock("tenant:42:settings").await?.is_none());
//!
//! // Release now and learn whether the lease held to the end:
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! # How it works
//! A lock is a Redis key holding a random token (a v4 UUID), set with
//! `SET key token NX PX ttl`. Release and extension are Lua scripts that
//! compare the token first, so a holder whose lease ran out never deletes a
//! lock someone else took since. The protocol is the one of bsm/redislock and
//! redis-py's `Lock`: on the same key they exclude each other.
//!
//! # What it guarantees, and what it does not
//! While a guard's [`remaining`](LockGuard::remaining) is above zero, no
//! other client of this protocol holds the key (on one Redis server that
//! keeps its data). Redis replicates asynchronously: when a master fails,
//! a lock written just before may be missing on the replica that takes
//! over. The guard then finds out at its next renewal
//! ([`LockGuard::lost`], [`LostReason::Missing`]), but until then another
//! client may take the key. [`Builder::min_replicas`] closes that window:
//! every write of a lock counts only once `WAIT` reports it on enough
//! replicas. A lease can run out under a holder that stalls longer
//! than the TTL; [`LockGuard::release`] and [`LockGuard::extend`] then report
//! [`Error::NotHeld`]. It is an efficiency lock: where a stalled holder
//! writing late would corrupt data, the resource itself must also check.
//!
//! # The public API
//! * [`DistributedMutex`]: `connect`, `new`, `builder`, `lock`, `try_lock`,
//!   `acquire(key)` (an [`Acquire`] with `.ttl`, `.retry`, `.timeout`,
//!   `.fencing`, `.auto_renew`, `.min_replicas`, `.holder`), `with_lock`, `shutdown`;
//!   for operators, `release_token(key, token)` (a token-checked release by
//!   another process) and `fencing_counter_key(key)` (where the counter
//!   lives).
//! * [`LockGuard`]: `key`, `token`, `fencing_token`, `remaining`, `lost`,
//!   `extend`, `release`; released on drop. [`Lease`]: a view of it.
//! * Multi-key locks, all or none: `DistributedMutex::lock_all`,
//!   `try_lock_all`, `acquire_all(keys)` (an [`AcquireAll`] with `.ttl`,
//!   `.retry`, `.timeout`, `.auto_renew`, `.min_replicas`), held by a [`MultiGuard`] (`keys`,
//!   `token`, `remaining`, `is_lost`, `lost_key`, `lost` giving a
//!   [`LostKey`], `leases`, `extend`, `release`; released on drop).
//! * [`Semaphore`] (`DistributedMutex::semaphore(name, permits)`):
//!   `acquire`, `try_acquire`, `acquire_with` (an [`AcquirePermit`]), held
//!   by a [`Permit`].
//! * [`RwLock`] (`DistributedMutex::rw(name)`): `read`, `write`,
//!   `try_read`, `try_write`, `read_with`, `write_with` ([`AcquireRead`],
//!   [`AcquireWrite`]), held by a [`ReadGuard`] or a [`WriteGuard`].
//! * [`Election`] (`DistributedMutex::election(name)`): `ttl`,
//!   `retry_period`, `campaign(value)` giving a [`Leadership`] (`term`,
//!   `value`, `proclaim`, `resign`, `lost`, `is_lost`, `remaining`, `lease`;
//!   resigned on drop), `leader()` giving a [`Leader`], `observe()` giving a
//!   `tokio::sync::watch::Receiver<Option<Leader>>`.
//! * [`Holder`]: the holder label (`Builder::holder`, `Acquire::holder`)
//!   read back from a token (`Holder::from_token`).
//! * [`RetryStrategy`]: `none`, `linear`, `exponential` (with jitter).
//!   Waiters of a lock queue in Redis and are served in order, one per
//!   release across every process; [`CLAIM_TTL`] bounds the stall when a
//!   waiter freezes just as the lock is handed to it.
//! * [`Error`]: every failure, typed.
//! * [`Adapter`], [`RedisAdapter`], [`provide_adapter`]: the Go package's
//!   fire-and-forget API.
//! * [`Redlock`]: one lock over N independent Redis masters (`connect`,
//!   `builder`, `builder_with_clients`, `lock`, `try_lock`, `acquire`,
//!   `with_lock`, `shutdown`), held by a [`RedlockGuard`] (the methods of
//!   [`LockGuard`] without fencing) with a [`RedlockLease`] view.
//! * With the cargo feature `tls`: `rediss://` URLs, and `Tls` (CA file,
//!   client certificate, server name) for `Builder::connect_tls`.
//! * With the cargo feature `metrics`: the `metrics` module (every metric's
//!   name), `Builder::metrics_name` and `Builder::metrics_key_label`.
//!
//! # Internals at a glance (for contributors)
//! Four layers, each a folder under `src/`; a layer uses the ones below it,
//! never one above (`docs/architecture.md` draws them):
//!
//! ```text
//! api/       DistributedMutex, Builder, the guards, multi-key, Semaphore, RwLock, Election, Redlock, Adapter
//! engine/    what handles share, leases, the release worker, the renewer, waiters, Sentinel, metrics hooks
//! protocol/  Redis names, Lua scripts, channels, connections (TLS), replica confirmation, cluster routing
//! policy/    errors, retry strategies, the schedule, limits
//! ```
//!
//! | file | owns |
//! |---|---|
//! | **`api/`** | **the public types; each a thin face over the engine** |
//! | `api/mutex.rs` | the public [`DistributedMutex`] and its docs |
//! | `api/builder/` | [`Builder`]: `new`, `connect`, settings (`mod.rs`); metric labels (`metrics.rs`, feature `metrics`) |
//! | `api/acquire/` | [`Acquire`] and the single-key attempt loop (`plan.rs`, `attempt.rs`, `acquisition.rs`) |
//! | `api/guard.rs` | [`LockGuard`]: a held lock, `extend`, `release`, drop |
//! | `api/with_lock.rs` | `with_lock`: work dropped when the lock is lost (mutex and Redlock) |
//! | `api/multi/` | multi-key locks: [`AcquireAll`] (`mod.rs`), `lock_all` and friends (`lock_all.rs`), the checked key set (`plan.rs`), the all-or-nothing loop (`run.rs`), [`MultiGuard`] (`guard/`) |
//! | `api/semaphore.rs` | the public [`Semaphore`], [`AcquirePermit`], [`Permit`] |
//! | `api/rwlock.rs` | the public [`RwLock`], its builders and guards |
//! | `api/election/` | [`Election`], [`Leadership`], [`Leader`]: a fenced lock per election, the leader's value beside it, the observer task (its `mod.rs` lists its files) |
//! | `api/redlock/` | [`Redlock`]: one [`DistributedMutex`] per server, majority counting, renewal per guard (its `mod.rs` lists its files) |
//! | `api/adapter.rs` | the Go-compatible shim |
//! | **`engine/`** | **the lease engine under every primitive** |
//! | `engine/inner.rs` | what all handles share; starts the background tasks |
//! | `engine/options.rs` | the per-call options of every acquisition builder, and the macros that write the builders' setters and `.await` |
//! | `engine/lease.rs` | a held lease: its validity and loss; [`Lease`] |
//! | `engine/queue.rs` | the wait queue in Redis and direct handoff: the claim TTL, the queue's lifetime, when a handed-over lock is used without confirming |
//! | `engine/notify/` | task: the subscriber connection; handoff and release channels and their local waiters (its `mod.rs` lists its files) |
//! | `engine/release/` | task: the one release worker, for releases handed over by `Drop` of every kind of lease: locks (with `batch.rs`) and places in sorted sets (`places.rs`) |
//! | `engine/group_commit.rs` | group commit: calls of one kind that arrive together go out as one (a lone call at once) |
//! | `engine/batch.rs` | the group commit of releases |
//! | `engine/first_attempts.rs` | the group commit of first attempts (`SET NX`s in one script call; per master on a cluster) |
//! | `engine/renew/` | task: batched lease renewal (the queue by due time, `due.rs`; one call per chunk, `call.rs`) |
//! | `engine/sentinel.rs`, `engine/epoch.rs` | Sentinel: watching `+switch-master`, following the new master, re-checking held leases; the count of switches answers are checked against |
//! | `engine/primitive/` | places in sorted sets, shared by semaphores and read-write locks: their attempt loop, guard and script calls (their background release is the release worker's) (its `mod.rs` lists its files) |
//! | `engine/metrics/` | what is recorded through the `metrics` facade (feature `metrics`; inline no-ops without it): names, labels, recording |
//! | **`protocol/`** | **what goes over the wire** |
//! | `protocol/keys.rs` | every Redis name a lock uses (lock, fencing counter, wait queue, channels) |
//! | `protocol/holder.rs` | holder labels: the token format `<uuid>:<unix ms>:<label>`, [`Holder`] |
//! | `protocol/scripts/` (`mod.rs` lists its files), `protocol/scripts/*.lua` | the commands sent to Redis (and `WAIT` after them, with `min_replicas`) |
//! | `protocol/channel.rs` | where hand-offs and release messages go (plain, sharded, or plain on a cluster), decided from what the servers support, and what a receiver count proves |
//! | `protocol/connect.rs`, `protocol/tls.rs` | making a client from a URL; `rediss://`: trusted roots, client certificate, server name (feature `tls`) |
//! | `protocol/confirm.rs` | `min_replicas`: its bounds, and the connection that confirmed writes go through |
//! | `protocol/route.rs` | where renewals and releases go on a cluster: one call per node (cross-slot script), per slot for slots that moved |
//! | `protocol/background.rs` | which runtime the tasks run on; restarting them when it stops; reviving a client |
//! | **`policy/`** | **pure decisions and types** |
//! | `policy/error/` | [`Error`] (`mod.rs`), sorting a fred error into it (`redis.rs`), [`LostReason`] (`lost.rs`) |
//! | `policy/retry.rs`, `policy/schedule.rs` | [`RetryStrategy`]; when to try again and when to give up |
//! | `policy/limits.rs` | bounds of keys, TTLs, timeouts |
//! | `bin/dmutex/` | the `dmutex` command (feature `cli`): run, status, release, elect, ls |
//!
//! Three tasks per mutex run on its "home" runtime (the first one that used
//! it, or the caller's when that one has stopped): the release worker, the
//! renewer and the subscriber manager. A lock costs one round trip to take
//! (a plain `SET NX`; the acquire script when the key exists, with fencing,
//! or on a cluster, where its reply names its token) and one to release (in the background after a drop); renewal is
//! one script call per batch of due leases.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod api;
mod engine;
mod policy;
mod protocol;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use engine::metrics;

pub use api::acquire::Acquire;
pub use api::adapter::{provide_adapter, Adapter, AdapterFuture, RedisAdapter};
pub use api::builder::Builder;
pub use api::election::{
    Election, Leader, Leadership, DEFAULT_ELECTION_RETRY_PERIOD, MAX_ELECTION_NAME_LEN,
    MAX_ELECTION_VALUE_LEN, OBSERVE_POLL,
};
pub use api::guard::LockGuard;
pub use api::multi::{AcquireAll, LostKey, MultiGuard, MAX_LOCK_ALL_KEYS};
pub use api::mutex::DistributedMutex;
pub use api::redlock::{
    Redlock, RedlockAcquire, RedlockBuilder, RedlockGuard, RedlockLease, DEFAULT_REDLOCK_TTL,
    DEFAULT_SERVER_TIMEOUT, MAX_REDLOCK_SERVERS,
};
pub use api::rwlock::{AcquireRead, AcquireWrite, ReadGuard, RwLock, WriteGuard};
pub use api::semaphore::{AcquirePermit, Permit, Semaphore};
pub use engine::lease::Lease;
pub use engine::primitive::MAX_PERMITS;
pub use engine::queue::CLAIM_TTL;
pub use policy::error::lost::LostReason;
pub use policy::error::Error;
pub use policy::limits::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_TTL, MAX_COMMAND_TIMEOUT, MAX_KEY_LEN, MAX_PREFIX_LEN,
    MAX_TTL, MIN_TTL,
};
pub use policy::retry::RetryStrategy;
pub use protocol::holder::{Holder, MAX_HOLDER_LEN};
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use protocol::tls::Tls;

/// The fred client type the mutex is built on, re-exported for convenience.
pub use fred::clients::Client;
