//! A waiter's place in a channel's local queue ([`Ticket`]), and how its
//! wait ended ([`Wake`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::queues::{ChannelQueue, Slot, Subscription};
use super::{Op, Waiters};

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The lock was handed to this waiter (handoff channel).
    HandedOff,
    /// A release message, or a hint to try once more (messages may have
    /// been missed).
    Woken,
    /// The cap passed.
    TimedOut,
}

/// A waiter's place in a channel's local queue. Dropped, it leaves the
/// queue; the last waiter of a channel drops the subscription.
pub(crate) struct Ticket<'a> {
    pub(super) waiters: &'a Waiters,
    pub(super) channel: String,
    pub(super) id: u64,
    pub(super) slot: Arc<Slot>,
    pub(super) subscription: watch::Receiver<Subscription>,
    /// This ticket's join asked for the subscription.
    pub(super) asked: bool,
    pub(super) acquired: bool,
}

impl Ticket<'_> {
    /// Waits (at most `limit`) until the channel's subscription is in place
    /// or has failed; `true` when it is in place.
    pub(crate) async fn ready(&mut self, limit: Duration) -> bool {
        let settled = self.subscription.wait_for(|s| *s != Subscription::Pending);
        matches!(
            tokio::time::timeout(limit, settled).await,
            Ok(Ok(s)) if *s == Subscription::InPlace
        )
    }

    /// For the waiter that asked for the subscription: waits (at most
    /// `limit`) until it is in place. `true` when it is: the caller must then
    /// try again at once, since a release may have come before it.
    pub(crate) async fn subscribed(&mut self, limit: Duration) -> bool {
        std::mem::take(&mut self.asked) && self.ready(limit).await
    }

    /// Waits until woken by a message (`true`) or for `cap` (`false`).
    pub(crate) async fn wait(&self, cap: Duration) -> bool {
        self.wait_for(cap).await != Wake::TimedOut
    }

    /// Waits until woken or for `cap`, and says how the wait ended.
    pub(crate) async fn wait_for(&self, cap: Duration) -> Wake {
        let woken = tokio::time::timeout(cap, self.slot.notify.notified())
            .await
            .is_ok();
        if self.slot.handed.swap(false, Ordering::SeqCst) {
            // A stored wake-up of the hand-off is spent with it.
            Wake::HandedOff
        } else if woken {
            Wake::Woken
        } else {
            Wake::TimedOut
        }
    }

    /// `true` when this waiter is the first of its channel's local queue
    /// and either no hand-off arrived on the channel since `since` (the
    /// process's queue for this lock looks stalled) or no waiter of the
    /// channel joined or polled the Redis queue for `refresh` (it must be
    /// kept alive): this waiter polls for the process.
    pub(crate) fn should_poll(&self, since: Instant, refresh: Duration) -> bool {
        let now = Instant::now();
        self.with_queue(|queue| {
            queue.led_by(self.id)
                && (queue.last_handoff.is_none_or(|at| at < since)
                    || queue.last_refresh.is_none_or(|at| at + refresh <= now))
        })
    }

    /// A waiter of this channel joined or polled the lock's queue in Redis
    /// with a command sent at `at`.
    pub(crate) fn refreshed(&self, at: Instant) {
        let mut queues = self.waiters.shared.queues();
        if let Some(queue) = queues.channels.get_mut(&self.channel) {
            queue.last_refresh = Some(queue.last_refresh.map_or(at, |last| last.max(at)));
        }
    }

    /// Whether a hand-off that reached this waiter was counted by the script
    /// that made it, so it may be used without confirming.
    pub(crate) fn counted(&self) -> bool {
        !self.with_queue(|queue| !queue.counted)
    }

    /// `true` when this waiter is the first of its channel's local queue.
    pub(crate) fn is_first(&self) -> bool {
        self.with_queue(|queue| queue.led_by(self.id))
    }

    /// `check` on this ticket's channel queue (`true` if it is gone).
    pub(super) fn with_queue(&self, check: impl FnOnce(&ChannelQueue) -> bool) -> bool {
        let queues = self.waiters.shared.queues();
        queues.channels.get(&self.channel).is_none_or(check)
    }

    /// The lock was taken: leave the queue without passing a wake-up on
    /// (the next waiter would only find the lock held).
    pub(crate) fn acquired(mut self) {
        self.acquired = true;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut queues = self.waiters.shared.queues();
        let Some(queue) = queues.channels.get_mut(&self.channel) else {
            return;
        };
        let was_head = queue.led_by(self.id);
        queue.waiters.retain(|w| w.id != self.id);
        if queue.waiters.is_empty() {
            if let Some(queue) = queues.channels.remove(&self.channel) {
                self.waiters.send(Op::Unsubscribe(queue.channel));
            }
            self.waiters
                .shared
                .channels_waited
                .fetch_sub(1, Ordering::SeqCst);
        } else if was_head && !self.acquired && !queue.handoff {
            // We may have taken a wake-up meant for the head: pass it on.
            if let Some(next) = queue.waiters.front() {
                next.slot.notify.notify_one();
            }
        }
    }
}
