//! Multi-key locks: [`AcquireAll`] and the loop that runs it, all or
//! nothing; the guard is in `guard/`.
//!
//! The keys are deduplicated and put in the canonical order: by cluster slot,
//! then by key. On one server (or when every key is in one slot), one call
//! of `acquire_all.lua` takes them all or none. On a cluster with keys in
//! several slots, the slots' groups are taken one after another in that
//! order, each by one call of the script; when a group is busy, the groups
//! already taken are released again (queued on the release worker, which
//! sends them at once) and the acquisition waits for the blocking key's
//! release message (capped by its holder's TTL and the retry strategy),
//! then tries the whole set again with a fresh token. Nothing is held while
//! waiting, so two callers locking overlapping sets in any order never
//! deadlock; the canonical order makes them contend on the same first key,
//! so the loser seldom takes (and gives back) anything.
//!
//! Each attempt has a token of its own: a rollback that reaches Redis late
//! (its release retried in the background) can never delete what a later
//! attempt took. With `min_replicas`, each group's script call is followed
//! by `WAIT` on the confirming connection, like the acquire script's.
//!
//! The winning attempt's token becomes the guard's: each key gets a
//! [`LeaseCore`] of its own (same token), renewed by the renewer like a
//! single lock's; the guard is lost when any of them is. Multi-key waiters
//! wait in the local queue of the key that blocked them (`engine/notify/`), like
//! single-key waiters, but take no place in any queue kept in Redis.

mod guard;
mod lock_all;
mod plan;
mod run;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

pub use guard::{LostKey, MultiGuard};
pub(crate) use run::run;

use crate::engine::inner::Inner;
use crate::engine::options::{into_future, option_setters, Options};

/// The most distinct keys one multi-key lock may take: 1024.
///
/// Every key of a group travels in one script call, and every key is renewed
/// and released on its own; a set larger than this is more likely a bug
/// (keys built from unbounded input) than a lock. A larger set fails with
/// [`Error::InvalidKeySet`](crate::Error::InvalidKeySet) before anything
/// is sent. So does an input of more than 2^20 items, duplicates included:
/// the input is read only that far, so even an endless iterator ends in
/// that error.
pub const MAX_LOCK_ALL_KEYS: usize = 1024;

/// The most items of input read, duplicates included.
const MAX_INPUT: usize = 1 << 20;

/// One multi-key acquisition with per-call options, made by
/// [`DistributedMutex::acquire_all`](crate::DistributedMutex::acquire_all).
/// `.await` it to get the [`MultiGuard`].
///
/// The returned future is `Send + 'static`, so it can be spawned.
///
/// A multi-key lock has no fencing tokens: the mutex's
/// [`Builder::fencing`](crate::Builder::fencing) setting applies to
/// single-key locks only.
///
/// # Cancel safety
/// Dropping the future at any point leaves nothing locked: every key an
/// attempt may have set gets a release of that attempt's token queued.
#[must_use = "an acquisition does nothing until it is awaited"]
pub struct AcquireAll {
    inner: Arc<Inner>,
    /// The distinct keys, in the caller's order.
    keys: Vec<String>,
    /// More distinct keys were given than [`MAX_LOCK_ALL_KEYS`], or more
    /// items than `MAX_INPUT`.
    too_many: bool,
    options: Options,
}

impl AcquireAll {
    /// Collects the distinct keys of `keys`; stops reading once there are
    /// more than [`MAX_LOCK_ALL_KEYS`], or after `MAX_INPUT` items (so an
    /// endless iterator ends in an error, not in an endless loop).
    pub(crate) fn new<I>(inner: Arc<Inner>, keys: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut seen = HashSet::new();
        let mut distinct = Vec::new();
        let mut too_many = false;
        for (read, key) in keys.into_iter().enumerate() {
            if read == MAX_INPUT {
                too_many = true;
                break;
            }
            let key = key.as_ref();
            if seen.contains(key) {
                continue;
            }
            if distinct.len() == MAX_LOCK_ALL_KEYS {
                too_many = true;
                break;
            }
            seen.insert(key.to_owned());
            distinct.push(key.to_owned());
        }
        AcquireAll {
            inner,
            keys: distinct,
            too_many,
            options: Options::default(),
        }
    }

    option_setters! {
        /// The lease of every key, instead of the mutex's.
        ttl;
        /// How to wait for the set, instead of the mutex's retry strategy.
        retry;
        /// The longest time to wait for the whole set to become free, on top of
        /// the retry strategy (whichever ends first). At least one attempt is
        /// always made, so `Duration::ZERO` means "one attempt". The call returns
        /// within this (or the strategy's budget) plus one command timeout per
        /// cluster slot of the set.
        timeout;
        /// Whether the guard renews every key's lease while it lives, instead of
        /// the mutex's setting (default on).
        auto_renew;
        /// Confirms the set's writes (the acquisition of each slot's group, every
        /// renewal and extension) with `WAIT replicas timeout`, instead of the
        /// mutex's setting; `replicas == 0` turns confirmation off. See
        /// [`Acquire::min_replicas`](crate::Acquire::min_replicas): when a
        /// group's write is not confirmed in time, the call fails with
        /// [`Error::NotReplicated`](crate::Error::NotReplicated) (at once,
        /// without trying again) and releases of its token are queued for
        /// every key it may have set.
        min_replicas;
    }
}

into_future!(AcquireAll => MultiGuard, run);

impl fmt::Debug for AcquireAll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("AcquireAll");
        out.field("keys", &self.keys);
        self.options.fields(&mut out, true);
        out.finish()
    }
}
