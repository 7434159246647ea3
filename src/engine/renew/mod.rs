//! Automatic lease renewal, batched.
//!
//! One renewer task per mutex keeps every auto-renewed lease in a queue
//! ordered by when it falls due (a third of its TTL after the last confirmed
//! renewal). When the first falls due, it takes every lease due within a
//! short window after it too, groups them by cluster node (by slot where a
//! node cannot take them in one call; see `route.rs`), and renews each
//! group with one script call (at most `BATCH` keys each). Holding 10,000
//! locks thus costs a few script calls a second, not 10,000 timers.
//!
//! Guards add themselves to the queue directly (no message, no task wake-up
//! unless they fall due first). The queue holds only weak references: a
//! dropped guard is forgotten the next time it comes up, and the queue is
//! swept when dead entries pile up. Results are applied through [`LeaseCore`], which
//! never turns a lost lease back into a held one.
//!
//! Why not `tokio_util::time::DelayQueue`: it is owned by one task and needs
//! `&mut` to insert, so every new lock would have to message the renewer
//! task (a wake-up per lock), and it fires one key at a time where this heap
//! pops a whole coalescing window into one batch. The heap is a few lines
//! under a `Mutex` that guards take for one push; holding 10,000 locks costs
//! ~20 script calls a second (`cargo bench --bench renewal_cost`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use fred::clients::Client;
use tokio::sync::Notify;

use tokio::runtime::Handle;

use crate::engine::lease::LeaseCore;

use crate::engine::epoch::Epoch;
use crate::protocol::confirm::Confirmer;
use crate::protocol::route::Routes;

mod call;
mod due;

use call::renew;
use due::{take_due, Queue, Shared, MIN_SWEEP};

/// The most renewal calls in flight at once on a cluster (each for one
/// cluster node or slot).
const MAX_CALLS: usize = 64;
/// The most keys renewed by one script call (a script blocks Redis while it
/// runs: 500 GET + PEXPIRE take well under a millisecond).
const BATCH: usize = 500;
/// Leases due within this share of their period after the first one due are
/// renewed with it (early renewal is harmless; it saves calls).
const COALESCE_DIVISOR: u32 = 4;
/// The longest coalescing window.
const MAX_COALESCE: Duration = Duration::from_secs(1);

/// The renewal period of a lease: a third of its TTL.
pub(crate) fn period(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(1))
}

pub(crate) struct Renewer {
    shared: Arc<Shared>,
    client: Client,
    confirmer: Arc<Confirmer>,
    epoch: Arc<Epoch>,
    routes: Arc<Routes>,
    timeout: Duration,
}

/// Where renewal calls go: the mutex's client, and the connection of
/// replica-confirmed writes.
#[derive(Clone)]
struct Clients {
    client: Client,
    confirmer: Arc<Confirmer>,
    epoch: Arc<Epoch>,
    /// Which slots are renewed per slot for now (see `route.rs`).
    routes: Arc<Routes>,
}

impl Renewer {
    pub(crate) fn new(
        client: Client,
        confirmer: Arc<Confirmer>,
        epoch: Arc<Epoch>,
        timeout: Duration,
    ) -> Self {
        Renewer {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue {
                    heap: BinaryHeap::new(),
                    seq: 0,
                    sweep_at: MIN_SWEEP,
                }),
                wake: Notify::new(),
                closed: AtomicBool::new(false),
            }),
            client,
            confirmer,
            epoch,
            routes: Arc::default(),
            timeout,
        }
    }

    /// A handle that makes every queued lease due at once (after the master
    /// changed: a lease whose key did not reach the new master is reported
    /// lost right away, not a renewal period later).
    pub(crate) fn renew_all_handle(&self) -> RenewAll {
        RenewAll(Arc::clone(&self.shared))
    }

    /// Starts the renewer task on `home` (again, when the old home runtime stopped).
    pub(crate) fn start(&self, home: &Handle) {
        let clients = Clients {
            client: self.client.clone(),
            confirmer: Arc::clone(&self.confirmer),
            epoch: Arc::clone(&self.epoch),
            routes: Arc::clone(&self.routes),
        };
        home.spawn(run(Arc::clone(&self.shared), clients, self.timeout));
    }

    /// Renews `lease` until it ends or is lost; the next renewal is due a
    /// period (of its current TTL) after `sent_at`. Tracking a lease again
    /// (after an `extend`) replaces its schedule.
    pub(crate) fn track(&self, lease: &Arc<LeaseCore>, sent_at: Instant) {
        self.track_at(lease, sent_at + period(lease.ttl()));
    }

    /// Renews `lease` until it ends or is lost, the next renewal due at `due`.
    pub(crate) fn track_at(&self, lease: &Arc<LeaseCore>, due: Instant) {
        let generation = lease.reschedule();
        self.shared.push(Arc::downgrade(lease), generation, due);
    }
}

/// See [`Renewer::renew_all_handle`].
#[derive(Clone)]
pub(crate) struct RenewAll(Arc<Shared>);

impl RenewAll {
    /// Makes every queued lease due now and wakes the renewer.
    pub(crate) fn now(&self) {
        let mut queue = self.0.queue();
        let now = Instant::now();
        let entries = std::mem::take(&mut queue.heap).into_vec();
        queue.heap = entries
            .into_iter()
            .map(|Reverse(mut e)| {
                e.due = e.due.min(now);
                Reverse(e)
            })
            .collect();
        drop(queue);
        self.0.wake.notify_one();
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        // The mutex and every guard are gone: nothing left to renew.
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

async fn run(shared: Arc<Shared>, clients: Clients, timeout: Duration) {
    while !shared.closed.load(Ordering::SeqCst) {
        // `notify_one` leaves a permit when no one waits: no lost wake-ups.
        let woken = shared.wake.notified();
        let next_due = shared.queue().heap.peek().map(|Reverse(e)| e.due);
        tokio::select! {
            _ = woken => {}
            _ = sleep_until(next_due), if next_due.is_some() => {
                let batch = take_due(&mut shared.queue());
                if !batch.is_empty() {
                    renew(&shared, &clients, batch, timeout);
                }
            }
        }
    }
}

/// A batch being renewed. If its task is dropped before it finished (the
/// runtime stopped), its leases go back on the queue, due at once.
struct InFlight {
    shared: Arc<Shared>,
    batch: Vec<(Weak<LeaseCore>, u64)>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = Instant::now();
        for (lease, generation) in self.batch.drain(..) {
            self.shared.push(lease, generation, now);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}
