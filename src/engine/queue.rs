//! The wait queue kept in Redis for a contended lock, and direct handoff.
//!
//! A waiter that finds the lock held joins the lock's queue, a Redis list
//! `P \xff {T}:queue:K` in the lock key's slot (see `keys.rs`), as the member
//! `<mutex id>|<claim ms>|<f or ->|<token>` (`f`: a fencing lock). Its mutex listens on its own handoff
//! channel for the lock, `P {T}:handoff:<mutex id>:K` (one subscription
//! per mutex and lock, on the mutex's one subscriber connection).
//!
//! A release (see `release.lua`) does not delete a lock with waiters
//! queued: it pops the head, sets the key to the head's token with the
//! head's claim TTL, and publishes the token on the head's handoff channel.
//! A head whose mutex no longer listens there (its process died, or its
//! subscriber connection is down: `PUBLISH` reaches no one) is skipped, and
//! the next is tried. So one waiter in the whole fleet is woken per
//! release, in the order they queued, and the key is never free while live
//! waiters queue: a newcomer's `SET NX` cannot barge in.
//!
//! The woken waiter holds the lock at once: the key was set to its token at
//! some moment after it first joined the queue, for the claim TTL. When
//! that still leaves at least half the claim TTL of local validity (and the
//! guard renews itself, without fencing, replica confirmation or a master
//! switch since), the guard is returned without another round trip, valid
//! until `first join + claim TTL − drift`, and the renewer extends the key
//! to the full TTL half the claim TTL after the join. Otherwise the
//! waiter confirms first (the acquire script: the key holds its token, so
//! its lease is set; with fencing, the fencing token the release drew for
//! it is returned).
//!
//! What a stall costs:
//! * a waiter that gives up (deadline, cancelled future) leaves the queue
//!   through the release worker, which also passes the lock on if it was
//!   just handed to it: no stall;
//! * a waiter whose process died before the release: skipped, no stall;
//! * a waiter frozen (or killed) after the hand-off reached it and before it
//!   used the lock: the key expires after the claim TTL ([`CLAIM_TTL`], or
//!   the lock's TTL when shorter); the next waiter's poll then hands it on
//!   (see `api/acquire.rs`): the claim TTL plus one poll.
//!
//! Waiters with release notifications off, and waiters whose subscriber
//! connection failed, do not queue: they poll, and take a free key only
//! when no one is queued (a free key with waiters queued goes to the head).

use std::time::{Duration, Instant};

use crate::engine::lease::valid_until;
use crate::protocol::scripts::QueueSpot;

/// How long a handed-over lock is held for its waiter before it confirms
/// (or is renewed): the stall when a waiter is frozen or dies right after
/// the hand-off reached it.
pub const CLAIM_TTL: Duration = Duration::from_secs(2);

/// The claim TTL of a lock with lease `ttl`.
pub(crate) fn claim(ttl: Duration) -> Duration {
    ttl.min(CLAIM_TTL)
}

/// How long a wait queue lives after a waiter last joined or polled it
/// (`QUEUE_TTL` in `common.lua`): the entries of waiters that died go with
/// it once no live waiter is left to keep it.
pub(crate) const QUEUE_TTL: Duration = Duration::from_secs(10);

/// How often a process with waiters queued on a lock polls it, at the
/// least, keeping the queue alive: a third of [`QUEUE_TTL`], so one lost
/// poll costs nothing.
pub(crate) const QUEUE_REFRESH: Duration = Duration::from_millis(QUEUE_TTL.as_millis() as u64 / 3);

impl QueueSpot {
    /// The queue member of the waiter `token` of the mutex `id`: version 1
    /// of the format, `1|<mutex id>|<claim ms>|<f or ->|<token>`.
    pub(crate) fn new(id: &str, ttl: Duration, token: &str, fencing: bool) -> Self {
        let fenced = if fencing { 'f' } else { '-' };
        QueueSpot {
            member: format!("1|{id}|{}|{fenced}|{token}", claim(ttl).as_millis().max(1)),
        }
    }
}

/// When a waiter that first joined the queue at `joined` is handed the lock
/// at `now`, with lease `ttl`: `Some(valid_until)` when it may use the
/// lock without confirming it first, `None` when it must confirm.
pub(crate) fn usable_without_confirming(
    joined: Instant,
    ttl: Duration,
    now: Instant,
) -> Option<Instant> {
    let claim = claim(ttl);
    let until = valid_until(joined, claim);
    (until.saturating_duration_since(now) >= claim / 2).then_some(until)
}

/// When the renewer first extends a lock taken without confirming: half
/// the claim TTL after the join (at least half of it is then left for the
/// renewal's round trip), or at once when that has passed.
pub(crate) fn first_renewal(joined: Instant, ttl: Duration) -> Instant {
    joined + claim(ttl) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_claim_is_the_ttl_when_shorter() {
        assert_eq!(claim(ms(500)), ms(500));
        assert_eq!(claim(Duration::from_secs(30)), CLAIM_TTL);
        assert_eq!(
            QueueSpot::new("abc", ms(300), "t-1", false).member,
            "1|abc|300|-|t-1"
        );
        assert_eq!(
            QueueSpot::new("abc", ms(30_000), "t-2", true).member,
            "1|abc|2000|f|t-2"
        );
    }

    #[test]
    fn the_queue_ttl_is_the_scripts_and_outlives_three_refreshes() {
        let lua = include_str!("../protocol/scripts/common.lua");
        let line = format!("local QUEUE_TTL = {}", QUEUE_TTL.as_millis());
        assert!(lua.contains(&line), "common.lua must say {line}");
        assert!(QUEUE_REFRESH * 3 < QUEUE_TTL);
    }

    #[test]
    fn a_short_wait_uses_the_lock_at_once_and_a_long_one_confirms() {
        let joined = Instant::now();
        let ttl = Duration::from_secs(10);
        let until = usable_without_confirming(joined, ttl, joined + ms(400)).expect("usable");
        assert!(until <= joined + CLAIM_TTL);
        assert!(until >= joined + CLAIM_TTL - ms(30));
        assert!(usable_without_confirming(joined, ttl, joined + ms(1100)).is_none());
        assert!(usable_without_confirming(joined, ttl, joined + ms(60_000)).is_none());
        // A lease shorter than the claim TTL: the same rule on the lease.
        assert!(usable_without_confirming(joined, ms(300), joined + ms(100)).is_some());
        assert!(usable_without_confirming(joined, ms(300), joined + ms(200)).is_none());
        assert!(first_renewal(joined, ttl) < until);
    }
}
