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
//! // Waits up to ~5 s (250 ms × 20 attempts) for the lock; holds it for at
//! // most one minute; releases it when the guard is dropped.
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
//! keeps its data). A lease can run out under a holder that stalls longer
//! than the TTL; [`LockGuard::release`] and [`LockGuard::extend`] then report
//! [`Error::NotHeld`]. It is an efficiency lock: where a stalled holder
//! writing late would corrupt data, the resource itself must also check.
//!
//! # Modules at a glance
//! * [`DistributedMutex`]: `lock`, `try_lock`, `acquire(key).ttl(..).retry(..).timeout(..)`, `shutdown`.
//! * [`LockGuard`]: `key`, `token`, `remaining`, `extend`, `release`; released on drop.
//! * [`RetryStrategy`]: `none`, `linear`, `exponential` (with jitter).
//! * [`Error`]: every failure, typed.
//! * [`Adapter`], [`RedisAdapter`], [`provide_adapter`]: the Go package's fire-and-forget API.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod adapter;
mod error;
mod guard;
mod lease;
mod mutex;
mod notify;
mod release;
mod renew;
mod retry;
mod scripts;
mod task;

pub use adapter::{provide_adapter, Adapter, AdapterFuture, RedisAdapter};
pub use error::Error;
pub use guard::LockGuard;
pub use lease::{Lease, LostReason};
pub use mutex::{
    Acquire, Builder, DistributedMutex, DEFAULT_COMMAND_TIMEOUT, DEFAULT_TTL, MAX_KEY_LEN,
    MAX_PREFIX_LEN, MAX_TTL, MIN_TTL,
};
pub use retry::RetryStrategy;

/// The fred client type the mutex is built on, re-exported for convenience.
pub use fred::clients::Client;
