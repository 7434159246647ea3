//! The local wait queues: one per channel, its waiters in the order they
//! joined, and what a message on the channel wakes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{watch, Notify};

use crate::protocol::background::Done;
use crate::protocol::channel::ReleaseChannel;

/// Where a channel's subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Subscription {
    Pending,
    InPlace,
    Failed,
}

/// One waiter's wake-up.
pub(super) struct Slot {
    pub(super) notify: Notify,
    /// Set (before the notify) when the lock was handed to this waiter.
    pub(super) handed: AtomicBool,
}

pub(super) struct Waiter {
    pub(super) id: u64,
    /// The waiter's token, on a handoff channel.
    pub(super) token: Option<String>,
    pub(super) slot: Arc<Slot>,
}

/// The waiters on one channel, in the order they joined.
pub(super) struct ChannelQueue {
    pub(super) channel: ReleaseChannel,
    /// A handoff channel (messages name a waiter's token), or a release
    /// channel (messages wake the head).
    pub(super) handoff: bool,
    pub(super) waiters: VecDeque<Waiter>,
    pub(super) subscription: watch::Sender<Subscription>,
    /// When a handoff message last arrived on this channel.
    pub(super) last_handoff: Option<Instant>,
    /// When a waiter of this channel last joined or polled the lock's
    /// queue in Redis (which keeps the queue alive: see `queue.rs`).
    pub(super) last_refresh: Option<Instant>,
    /// Whether hand-offs on this channel were counted by the script that
    /// made them (see [`PubSub::counts_receivers`]), as the subscription
    /// was made.
    pub(super) counted: bool,
}

impl ChannelQueue {
    /// Whether the waiter `id` is the first of this queue.
    pub(super) fn led_by(&self, id: u64) -> bool {
        self.waiters.front().is_some_and(|w| w.id == id)
    }
}

#[derive(Default)]
pub(super) struct Queues {
    /// By channel name.
    pub(super) channels: HashMap<String, ChannelQueue>,
    pub(super) next_id: u64,
}

pub(super) struct Shared {
    pub(super) queues: Mutex<Queues>,
    /// How many channels have waiters: lets an acquisition skip the lock in
    /// the usual case of none.
    pub(super) channels_waited: AtomicUsize,
    /// Marked when the manager has stopped for good (the mutex closed).
    pub(super) stopped: Done,
}

impl Shared {
    pub(super) fn queues(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A message on `channel`: wakes the waiter it hands the lock to, or
    /// the head waiter of a release channel.
    pub(super) fn on_message(&self, channel: &str, value: Option<&str>) {
        let mut queues = self.queues();
        let Some(queue) = queues.channels.get_mut(channel) else {
            return;
        };
        if !queue.handoff {
            if let Some(head) = queue.waiters.front() {
                head.slot.notify.notify_one();
            }
            return;
        }
        queue.last_handoff = Some(Instant::now());
        let to = value.and_then(|token| {
            queue
                .waiters
                .iter()
                .find(|w| w.token.as_deref() == Some(token))
        });
        if let Some(waiter) = to {
            waiter.slot.handed.store(true, Ordering::SeqCst);
            waiter.slot.notify.notify_one();
        }
    }

    /// Wakes every waiter of `channel` (all channels when `None`) to try
    /// once more: messages may have been missed.
    pub(super) fn wake_all(&self, channel: Option<&str>) {
        let queues = self.queues();
        let woken = queues
            .channels
            .iter()
            .filter(|(name, _)| channel.is_none_or(|c| c == name.as_str()));
        for (_, queue) in woken {
            for waiter in &queue.waiters {
                waiter.slot.notify.notify_one();
            }
        }
    }
}
