//! The renewal queue: leases by due time, shared by the guards that add to
//! it and the renewer task that takes from it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use tokio::sync::Notify;

use super::{period, COALESCE_DIVISOR, MAX_COALESCE};
use crate::engine::lease::LeaseCore;

pub(super) struct Entry {
    pub(super) due: Instant,
    pub(super) seq: u64,
    /// The lease's schedule generation when queued: an entry from an older
    /// schedule (before an `extend`) is dropped when it comes up.
    pub(super) generation: u64,
    pub(super) lease: Weak<LeaseCore>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// The queue of leases by due time, shared by the guards that add to it and
/// the renewer task that takes from it.
pub(super) struct Shared {
    pub(super) queue: Mutex<Queue>,
    /// Wakes the renewer when a lease due earlier than all others arrives,
    /// or when the mutex is gone.
    pub(super) wake: Notify,
    pub(super) closed: AtomicBool,
}

pub(super) struct Queue {
    pub(super) heap: BinaryHeap<Reverse<Entry>>,
    pub(super) seq: u64,
    /// Dropped guards leave dead entries behind until they come due; the
    /// heap is swept when it grows past this.
    pub(super) sweep_at: usize,
}

pub(super) const MIN_SWEEP: usize = 1024;

impl Shared {
    pub(super) fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `lease` for renewal at `due`, waking the renewer only when it
    /// is now the first due (a new lock usually is not: no task wake-up per
    /// lock).
    pub(super) fn push(&self, lease: Weak<LeaseCore>, generation: u64, due: Instant) {
        let mut queue = self.queue();
        let first = queue.heap.peek().is_none_or(|Reverse(e)| due < e.due);
        queue.seq += 1;
        let seq = queue.seq;
        queue.heap.push(Reverse(Entry {
            due,
            seq,
            generation,
            lease,
        }));
        if queue.heap.len() >= queue.sweep_at {
            queue.heap.retain(|Reverse(e)| {
                e.lease
                    .upgrade()
                    .is_some_and(|l| live(&l) && l.generation() == e.generation)
            });
            queue.sweep_at = (queue.heap.len() * 2).max(MIN_SWEEP);
        }
        drop(queue);
        if first {
            self.wake.notify_one();
        }
    }
}

pub(super) fn live(lease: &LeaseCore) -> bool {
    !lease.is_ended() && lease.lost_reason().is_none()
}

/// Pops every live lease due now or within the coalescing window.
pub(super) fn take_due(queue: &mut Queue) -> Vec<(Arc<LeaseCore>, u64)> {
    let queue = &mut queue.heap;
    let now = Instant::now();
    let mut batch = Vec::new();
    while let Some(Reverse(top)) = queue.peek() {
        let Some(lease) = top.lease.upgrade() else {
            queue.pop();
            continue;
        };
        if !live(&lease) || top.generation != lease.generation() {
            queue.pop();
            continue;
        }
        let window = (period(lease.ttl()) / COALESCE_DIVISOR).min(MAX_COALESCE);
        if top.due > now + window {
            break;
        }
        let generation = top.generation;
        queue.pop();
        batch.push((lease, generation));
    }
    batch
}
