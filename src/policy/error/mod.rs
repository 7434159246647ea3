//! The crate's error type; how a fred error is sorted into it is in
//! [`redis`], why a lock is lost in [`lost`].

use std::time::Duration;

pub(crate) mod lost;
pub(crate) mod redis;

use lost::LostReason;

/// Everything that can go wrong when taking, extending or releasing a lock.
///
/// The variants separate three situations a caller handles differently:
///
/// * the lock is busy: [`Error::NotObtained`] (the wait budget ran out while
///   someone else held the lock);
/// * the lock is gone: [`Error::NotHeld`] (it expired or was taken over, so
///   the work it protected may have overlapped with another holder);
/// * Redis could not be asked: [`Error::Unavailable`] and [`Error::Timeout`]
///   (transient: [`Error::is_transient`] is `true`), or it refused the
///   command ([`Error::WrongType`], [`Error::Redis`]).
///
/// Bad arguments are caught before anything is sent: [`Error::InvalidKey`],
/// [`Error::InvalidTtl`], [`Error::Config`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock was held by someone else for the whole wait budget (attempts
    /// of the retry strategy, or the acquire timeout).
    #[error(
        "lock `{key}` was not obtained after {attempts} attempt(s) in {waited:?}: another holder kept it; \
         retry later or give the acquisition a longer retry strategy or timeout"
    )]
    NotObtained {
        /// The key that was asked for.
        key: String,
        /// How many acquisition attempts were sent.
        attempts: u32,
        /// How long the call waited in all.
        waited: Duration,
    },

    /// The lock is no longer held by this guard: its lease expired or another
    /// client replaced it. Nothing that belongs to another holder was touched.
    #[error(
        "lock `{key}` is no longer held ({reason}); work done under it may have overlapped with \
         another holder"
    )]
    NotHeld {
        /// The lock's key.
        key: String,
        /// How it was lost: [`LostReason::Missing`](crate::LostReason::Missing)
        /// (the key was gone), [`LostReason::Replaced`](crate::LostReason::Replaced)
        /// (another holder's token, or another type of value, is there now) or
        /// [`LostReason::Expired`](crate::LostReason::Expired) (known lost
        /// locally before anything was sent).
        reason: LostReason,
    },

    /// The lock was lost while work ran under it
    /// ([`DistributedMutex::with_lock`](crate::DistributedMutex::with_lock)):
    /// the work was cancelled at its next await point.
    #[error(
        "lock `{key}` was lost while work ran under it ({reason}); the work was cancelled, and \
         anything it wrote before may overlap with another holder's work"
    )]
    Lost {
        /// The lock's key.
        key: String,
        /// Why the lock was lost.
        reason: LostReason,
    },

    /// The key cannot be used as a lock key.
    #[error("invalid lock key `{key}`: {reason}")]
    InvalidKey {
        /// The key as given (cut to its first 64 characters).
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The set of keys given to a multi-key lock
    /// ([`DistributedMutex::lock_all`](crate::DistributedMutex::lock_all))
    /// cannot be used: it is empty, or has more than
    /// [`MAX_LOCK_ALL_KEYS`](crate::MAX_LOCK_ALL_KEYS) distinct keys. (A bad
    /// key in it is [`Error::InvalidKey`], naming that key.)
    #[error("invalid set of {count} lock key(s): {reason}")]
    InvalidKeySet {
        /// How many distinct keys the set had.
        count: usize,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The lease duration cannot be used.
    #[error("invalid lock TTL {ttl:?} for `{key}`: {reason}")]
    InvalidTtl {
        /// The key the TTL was given for (empty when given to the builder).
        key: String,
        /// The TTL as given.
        ttl: Duration,
        /// Why it was refused.
        reason: &'static str,
    },

    /// Redis did not answer within the command timeout. The command may or may
    /// not have run; an acquisition that ends this way schedules a release of
    /// its own token (retried for a few seconds), and otherwise the lock
    /// expires with its TTL.
    #[error(
        "Redis did not answer within {after:?}{}; check that the server is reachable \
         and not overloaded, or raise the command timeout",
        for_lock(.key)
    )]
    Timeout {
        /// The lock's key.
        key: String,
        /// The command timeout that elapsed.
        after: Duration,
    },

    /// Redis could not be reached (connection refused, reset or closed).
    /// Transient: the same call may succeed once the connection is back.
    #[error("Redis is unavailable{}: {source}; check the connection and retry", for_lock(.key))]
    Unavailable {
        /// The lock's key (empty when connecting).
        key: String,
        /// The client's error.
        #[source]
        source: fred::error::Error,
    },

    /// A lock's write was not confirmed by enough replicas in time: `WAIT`
    /// (sent after it on the same connection because of
    /// [`Builder::min_replicas`](crate::Builder::min_replicas) or
    /// [`Acquire::min_replicas`](crate::Acquire::min_replicas)) reported
    /// fewer replicas than asked for.
    ///
    /// * From an acquisition: the lock was written on the master but could be
    ///   lost in a failover, so the acquisition is undone (a release of its
    ///   token is queued at once) and fails without trying again. Nothing is
    ///   held.
    /// * From [`LockGuard::extend`](crate::LockGuard::extend): the extension
    ///   counts as not made; the lease stays as it was (see
    ///   [`remaining`](crate::LockGuard::remaining)). Automatic renewals that
    ///   are not confirmed are retried like renewals that did not reach
    ///   Redis, and the guard is reported lost
    ///   ([`LostReason::Expired`](crate::LostReason::Expired)) when its lease
    ///   runs out without one.
    ///
    /// Transient ([`is_transient`](Error::is_transient) is `true`): the same
    /// call may succeed once the shard has enough replicas in sync again (a
    /// replica restarted, a failover finished and the old master rejoined).
    /// A shard with fewer replicas than asked for never confirms anything.
    #[error(
        "lock `{key}`: only {acked} of the {wanted} replica(s) asked for acknowledged the write \
         within {after:?}, so a failover could lose it; it does not count (an acquisition is \
         undone and its token released); check the shard's replicas, or ask for fewer"
    )]
    NotReplicated {
        /// The lock's key.
        key: String,
        /// How many replicas acknowledged the write (`WAIT`'s answer).
        acked: u32,
        /// How many were asked for.
        wanted: u32,
        /// The `WAIT` timeout that passed.
        after: Duration,
    },

    /// The key exists but holds a value of another type (a list, a hash, ...),
    /// so it is not a lock: it was left untouched.
    #[error(
        "key `{key}` holds a value that is not a lock (WRONGTYPE); it was left untouched: \
         pick a key that is used only for locking, or a key prefix"
    )]
    WrongType {
        /// The lock's key.
        key: String,
        /// The server's error.
        #[source]
        source: fred::error::Error,
    },

    /// The Redis user may not run a command the mutex needs, or touch a key
    /// or channel it needs (`NOPERM`): its ACL lacks a right that the
    /// README's "ACL user" section lists. Not transient: the user's ACL
    /// needs fixing.
    #[error(
        "the Redis user may not run {command}{} (NOPERM): grant it as the README's \"ACL user\" \
         section shows; the server said: {source}",
        for_lock(.key)
    )]
    NoPermission {
        /// The lock's key.
        key: String,
        /// What was denied: a command (`INCR`, `EVALSHA`, ...) or a key or
        /// channel outside the user's patterns.
        command: String,
        /// The server's error.
        #[source]
        source: fred::error::Error,
    },

    /// Redis refused the command (authentication, out of memory, read-only
    /// replica, ...). Not transient: the server needs attention.
    #[error("Redis refused the command{}: {source}", for_lock(.key))]
    Redis {
        /// The lock's key.
        key: String,
        /// The server's error.
        #[source]
        source: fred::error::Error,
    },

    /// The configuration cannot work (a malformed URL, a retry strategy
    /// without attempts, a zero command timeout, ...).
    #[error("invalid configuration: {message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
        /// The client's error, where it reported one.
        #[source]
        source: Option<fred::error::Error>,
    },

    /// [`DistributedMutex::shutdown`](crate::DistributedMutex::shutdown) was
    /// called, or the mutex's Redis client was closed (`quit`): the mutex
    /// takes no new locks. Not transient.
    #[error(
        "lock `{key}` was refused: the mutex has been shut down or its Redis client was closed; \
         create a new one to take locks"
    )]
    Shutdown {
        /// The key that was asked for.
        key: String,
    },
}

/// The `key` field of an error's variant (`&` or `&mut`, as `$error` is),
/// where it has one.
macro_rules! key_field {
    ($error:expr) => {
        match $error {
            Error::NotObtained { key, .. }
            | Error::NotHeld { key, .. }
            | Error::Lost { key, .. }
            | Error::InvalidKey { key, .. }
            | Error::InvalidTtl { key, .. }
            | Error::Timeout { key, .. }
            | Error::Unavailable { key, .. }
            | Error::NotReplicated { key, .. }
            | Error::WrongType { key, .. }
            | Error::Redis { key, .. }
            | Error::NoPermission { key, .. }
            | Error::Shutdown { key } => Some(key),
            Error::Config { .. } | Error::InvalidKeySet { .. } => None,
        }
    };
}

impl Error {
    /// `true` for errors that say nothing about the lock itself, only that
    /// Redis could not be asked, or could not confirm a write, right now
    /// ([`Error::Unavailable`], [`Error::Timeout`], [`Error::NotReplicated`]);
    /// the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Timeout { .. } | Error::NotReplicated { .. }
        )
    }

    /// The lock key this error is about, where there is one.
    pub fn key(&self) -> Option<&str> {
        // An invalid TTL checked for no key (a builder's default) names none.
        let unnamed = |key: &&String| key.is_empty() && matches!(self, Error::InvalidTtl { .. });
        key_field!(self)
            .filter(|key| !unnamed(key))
            .map(String::as_str)
    }

    /// Names `key` in the error (scripts report the prefixed Redis key).
    pub(crate) fn set_key(&mut self, new: &str) {
        if let Some(key) = key_field!(self) {
            new.clone_into(key);
        }
    }
}

pub(crate) fn none_when_busy<G>(result: Result<G, Error>) -> Result<Option<G>, Error> {
    match result {
        Ok(guard) => Ok(Some(guard)),
        Err(Error::NotObtained { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// " for lock `key`", or nothing when the error is not about one key.
fn for_lock(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" for lock `{key}`")
    }
}

/// Cuts a key for display in an error message.
pub(crate) fn display_key(key: &str) -> String {
    const MAX: usize = 64;
    match key.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &key[..i]),
        None => key.to_owned(),
    }
}
