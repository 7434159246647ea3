//! The state of one held lock, shared by its guard, the renewer and any
//! [`Lease`] handles: how long it is valid, and whether it is known lost.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::policy::error::lost::LostReason;
use crate::policy::limits::drift;
use crate::protocol::confirm::MinReplicas;
use crate::protocol::keys::LockKeys;

pub(crate) struct LeaseCore {
    /// The key as the caller gave it.
    pub(crate) key: String,
    /// Its names in Redis.
    pub(crate) keys: LockKeys,
    pub(crate) token: String,
    pub(crate) fencing_token: Option<u64>,
    /// Replica confirmation of its renewals and extensions (`min_replicas`).
    pub(crate) confirm: Option<MinReplicas>,
    state: Mutex<State>,
    changed: Notify,
    /// Bumped each time the renewer is given a new schedule for this lease.
    generation: AtomicU64,
    /// Held gauge, hold time and loss (feature `metrics`).
    pub(crate) metrics: crate::engine::metrics::Lock,
    /// `None` for a plain lock (the token is the value of `keys.lock`);
    /// for a semaphore permit or a read-write lock guard, the sorted set
    /// its token holds a place in (renewed by `member_renew.lua`).
    pub(crate) member_set: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    ttl: Duration,
    valid_until: Instant,
    lost: Option<LostReason>,
    /// Send time of the command that set `valid_until`: a reply to an older
    /// command never overrides a newer one.
    confirmed_at: Instant,
    /// Released or dropped: renewal stops.
    ended: bool,
    /// How many extensions were sent: a reply to a command that asked for
    /// its TTL before the latest extension was sent never raises the
    /// validity (Redis may run that extension after it).
    extends_sent: u64,
}

/// What a renewal or extension asks Redis for: the TTL, and the number of
/// extensions sent when it was read (see [`LeaseCore::confirm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Asked {
    pub(crate) ttl: Duration,
    extends_sent: u64,
}

impl LeaseCore {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        key: String,
        keys: LockKeys,
        token: String,
        fencing_token: Option<u64>,
        ttl: Duration,
        sent_at: Instant,
        confirm: Option<MinReplicas>,
        metrics: crate::engine::metrics::Lock,
    ) -> Self {
        LeaseCore {
            key,
            keys,
            token,
            fencing_token,
            confirm,
            state: Mutex::new(State {
                ttl,
                valid_until: valid_until(sent_at, ttl),
                lost: None,
                confirmed_at: sent_at,
                ended: false,
                extends_sent: 0,
            }),
            changed: Notify::new(),
            generation: AtomicU64::new(0),
            metrics,
            member_set: None,
        }
    }

    /// The lease of a place in the sorted set `set` (a semaphore permit, a
    /// read-write lock guard) rather than of a plain lock key.
    pub(crate) fn in_set(mut self, set: Vec<u8>) -> Self {
        self.member_set = Some(set);
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reason the lock is lost, marking it `Expired` once the local
    /// validity has passed.
    pub(crate) fn lost_reason(&self) -> Option<LostReason> {
        let mut state = self.state();
        if state.lost.is_none() && Instant::now() >= state.valid_until {
            state.lost = Some(LostReason::Expired);
            drop(state);
            self.metrics.lost(LostReason::Expired);
            self.changed.notify_waiters();
            return Some(LostReason::Expired);
        }
        state.lost
    }

    pub(crate) fn remaining(&self) -> Duration {
        if self.lost_reason().is_some() {
            return Duration::ZERO;
        }
        self.state()
            .valid_until
            .saturating_duration_since(Instant::now())
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.state().ttl
    }

    /// Records a loss (the first reason sticks). A lost lease never comes back.
    pub(crate) fn mark_lost(&self, reason: LostReason) {
        let mut state = self.state();
        if state.lost.is_none() {
            state.lost = Some(reason);
            drop(state);
            self.metrics.lost(reason);
            self.changed.notify_waiters();
        }
    }

    /// What a renewal sent now asks for: the TTL of the latest extension
    /// sent (confirmed or not), else of the acquisition.
    pub(crate) fn asked(&self) -> Asked {
        let state = self.state();
        Asked {
            ttl: state.ttl,
            extends_sent: state.extends_sent,
        }
    }

    /// Records a confirmed renewal or extension sent at `sent_at` asking
    /// for `asked`. Refused (and the lease marked lost) when the local
    /// validity had already passed: a lease reported lost is never reported
    /// held again. The validity is raised only by the reply to a command
    /// that asked after the latest extension was sent (an earlier one may
    /// have run in Redis before that extension, which then set its own TTL)
    /// and sent after the last one that counted.
    pub(crate) fn confirm(&self, sent_at: Instant, asked: Asked) -> bool {
        let mut state = self.state();
        if state.lost.is_some() {
            return false;
        }
        if Instant::now() >= state.valid_until {
            state.lost = Some(LostReason::Expired);
            drop(state);
            self.metrics.lost(LostReason::Expired);
            self.changed.notify_waiters();
            return false;
        }
        if asked.extends_sent == state.extends_sent && sent_at >= state.confirmed_at {
            state.valid_until = valid_until(sent_at, asked.ttl);
            state.confirmed_at = sent_at;
        }
        true
    }

    /// An `extend` to `ttl` is sent at `sent_at`. Until its outcome is
    /// known, the lease counts the shorter of what it had and `ttl` from
    /// `sent_at` (an extension to a shorter TTL may have run in Redis even
    /// if its reply never comes), and renewals sent from now on ask for
    /// `ttl` too, so that one running in Redis after the extend does not
    /// leave less than the extend asked for (renewals never shorten a
    /// lease, see `extend.lua`). Returns what the extension asks for, to
    /// [`confirm`](Self::confirm) with its reply.
    pub(crate) fn extending_to(&self, ttl: Duration, sent_at: Instant) -> Asked {
        let mut state = self.state();
        state.ttl = ttl;
        state.extends_sent += 1;
        state.valid_until = state.valid_until.min(valid_until(sent_at, ttl));
        Asked {
            ttl,
            extends_sent: state.extends_sent,
        }
    }

    /// For a lock handed over by a release (see `queue.rs`): the key holds
    /// this token for `claim` from some moment after `since`, so the lease
    /// is valid until then (its renewals then set the full TTL).
    pub(crate) fn limit_validity(&self, since: Instant, claim: Duration) {
        let mut state = self.state();
        state.valid_until = state.valid_until.min(valid_until(since, claim));
    }

    /// Starts a new renewal schedule; entries of older ones are dropped.
    pub(crate) fn reschedule(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The current renewal schedule.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Released or dropped: the renewer forgets it, and `Lease` handles
    /// that outlive the guard no longer claim the lock.
    pub(crate) fn end(&self) {
        self.metrics.ended();
        let mut state = self.state();
        state.ended = true;
        if state.lost.is_none() {
            state.lost = Some(LostReason::Released);
            drop(state);
            self.changed.notify_waiters();
        }
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.state().ended
    }

    /// `true` when the token can no longer be in Redis, so a release would
    /// be a wasted command.
    pub(crate) fn known_gone(&self) -> bool {
        matches!(
            self.state().lost,
            Some(LostReason::Missing | LostReason::Replaced)
        )
    }

    /// Completes when the lock is known lost.
    pub(crate) async fn lost(&self) -> LostReason {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.lost_reason() {
                return reason;
            }
            let until = self.state().valid_until;
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }
}

/// The lease's validity: from the send time, less the drift margin.
pub(crate) fn valid_until(sent_at: Instant, ttl: Duration) -> Instant {
    sent_at + ttl.saturating_sub(drift(ttl))
}

/// A cheap, cloneable view of a held lock, for work that runs under it
/// (see [`DistributedMutex::with_lock`](crate::DistributedMutex::with_lock)).
///
/// It does not keep the lock: the [`LockGuard`](crate::LockGuard) does.
#[derive(Clone)]
pub struct Lease {
    pub(crate) core: Arc<LeaseCore>,
}

impl Lease {
    lease_methods! {
        core;
        /// The key as the caller gave it.
        key;
        /// The random token stored as the lock's value in Redis.
        token;
    }

    /// The fencing token, when the lock was taken with fencing.
    pub fn fencing_token(&self) -> Option<u64> {
        self.core.fencing_token
    }

    lease_methods! {
        core;
        /// How long the lock is at least still held (zero once lost).
        remaining;
        /// `true` once the lock is known lost.
        is_lost;
        /// Completes when the lock is known lost, with the reason.
        ///
        /// # Cancel safety
        /// Cancel-safe: it only watches; dropping it changes nothing.
        lost;
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.core.key)
            .field("fencing_token", &self.core.fencing_token)
            .field("remaining", &self.remaining())
            .finish()
    }
}

/// The read-only methods of a view of a held lease (a guard or a
/// [`Lease`]): each one's docs, then its name (`key`, `token`, `ttl`,
/// `remaining`, `is_lost`, `lost`); `$core` names the field that holds the
/// [`LeaseCore`].
macro_rules! lease_methods {
    ($core:ident; $($(#[$doc:meta])* $name:ident;)*) => {
        $($crate::engine::lease::lease_methods!(@one $core [$(#[$doc])*] $name);)*
    };
    (@one $core:ident [$($doc:tt)*] key) => {
        $($doc)* pub fn key(&self) -> &str { &self.$core.key }
    };
    (@one $core:ident [$($doc:tt)*] token) => {
        $($doc)* pub fn token(&self) -> &str { &self.$core.token }
    };
    (@one $core:ident [$($doc:tt)*] ttl) => {
        $($doc)* pub fn ttl(&self) -> std::time::Duration { self.$core.ttl() }
    };
    (@one $core:ident [$($doc:tt)*] remaining) => {
        $($doc)* pub fn remaining(&self) -> std::time::Duration { self.$core.remaining() }
    };
    (@one $core:ident [$($doc:tt)*] is_lost) => {
        $($doc)* pub fn is_lost(&self) -> bool { self.$core.lost_reason().is_some() }
    };
    (@one $core:ident [$($doc:tt)*] lost) => {
        $($doc)*
        pub async fn lost(&self) -> $crate::policy::error::lost::LostReason {
            self.$core.lost().await
        }
    };
}
pub(crate) use lease_methods;
