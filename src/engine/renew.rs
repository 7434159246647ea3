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
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::ClientLike;
use tokio::sync::Notify;

use tokio::runtime::Handle;

use crate::engine::lease::{Asked, LeaseCore};

use crate::engine::epoch::Epoch;
use crate::policy::error::lost::LostReason;
use crate::protocol::confirm::{Confirmer, MinReplicas};
use crate::protocol::route::{self, Routes};
use crate::protocol::scripts::{self, Compared};

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

struct Entry {
    due: Instant,
    seq: u64,
    /// The lease's schedule generation when queued: an entry from an older
    /// schedule (before an `extend`) is dropped when it comes up.
    generation: u64,
    lease: Weak<LeaseCore>,
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
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the renewer when a lease due earlier than all others arrives,
    /// or when the mutex is gone.
    wake: Notify,
    closed: AtomicBool,
}

struct Queue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    /// Dropped guards leave dead entries behind until they come due; the
    /// heap is swept when it grows past this.
    sweep_at: usize,
}

const MIN_SWEEP: usize = 1024;

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `lease` for renewal at `due`, waking the renewer only when it
    /// is now the first due (a new lock usually is not: no task wake-up per
    /// lock).
    fn push(&self, lease: Weak<LeaseCore>, generation: u64, due: Instant) {
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

fn live(lease: &LeaseCore) -> bool {
    !lease.is_ended() && lease.lost_reason().is_none()
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

/// Pops every live lease due now or within the coalescing window.
fn take_due(queue: &mut Queue) -> Vec<(Arc<LeaseCore>, u64)> {
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

/// Renews a batch: one task per chunk (one script call, one cluster node or
/// slot, one `min_replicas` setting), up to `MAX_CALLS` at once, each putting its
/// leases back on the queue as soon as its own answer is in. A slow or
/// stalled node delays only its own leases, never those on healthy nodes.
fn renew(
    shared: &Arc<Shared>,
    clients: &Clients,
    batch: Vec<(Arc<LeaseCore>, u64)>,
    timeout: Duration,
) {
    let client = &clients.client;
    // Plain locks and places in sorted sets (semaphores, read-write locks)
    // are renewed by different scripts: they never share a chunk.
    type Group = (route::Group, Option<MinReplicas>, bool);
    let mut groups: HashMap<Group, Vec<(Arc<LeaseCore>, u64)>> = HashMap::new();
    let grouping = clients.routes.grouping(client);
    for entry in batch {
        let lease = &entry.0;
        let key = lease.member_set.as_deref();
        let member = lease.member_set.is_some();
        // Only plain locks without `min_replicas` share a call across slots.
        let per_node = !member && lease.confirm.is_none();
        let group = grouping.group(key.unwrap_or(lease.keys.lock.as_bytes()), per_node);
        groups
            .entry((group, lease.confirm, member))
            .or_default()
            .push(entry);
    }
    // One server: one call at a time per connection (concurrency buys
    // nothing there, and each call in flight holds its arguments). A
    // cluster: up to `MAX_CALLS`, so each node's calls go out independently.
    // Confirmed renewals (which wait for replicas) have permits of their
    // own, so they never hold up the others.
    let permits = if client.is_clustered() { MAX_CALLS } else { 1 };
    let calls = Arc::new(tokio::sync::Semaphore::new(permits));
    let confirmed_calls = Arc::new(tokio::sync::Semaphore::new(permits));
    for ((_, confirm, _), group) in groups {
        let calls = if confirm.is_some() {
            &confirmed_calls
        } else {
            &calls
        };
        for chunk in group.chunks(BATCH) {
            let chunk = chunk.to_vec();
            let mut in_flight = InFlight {
                shared: Arc::clone(shared),
                batch: chunk.iter().map(|(l, g)| (Arc::downgrade(l), *g)).collect(),
            };
            let (clients, calls) = (clients.clone(), Arc::clone(calls));
            tokio::spawn(async move {
                let _call = calls.acquire_owned().await;
                let next = renew_chunk(&clients, &chunk, confirm, timeout).await;
                in_flight.batch.clear();
                for (lease, generation, due) in next {
                    in_flight.shared.push(lease, generation, due);
                }
            });
        }
    }
}

/// Sends one chunk's renewal (confirmed by `WAIT` when `confirm` is set)
/// and returns when each of its leases is due next.
///
/// With `confirm`, a renewal that found the token but was acknowledged by
/// fewer replicas than asked counts as not made: the lease stays as it was
/// (the master may hold a longer one; the guard never claims more than was
/// confirmed) and the renewal is retried soon, as after a renewal that did
/// not reach Redis. A lease that is never confirmed again is reported lost
/// (`Expired`) when its local validity ends.
async fn renew_chunk(
    clients: &Clients,
    chunk: &[(Arc<LeaseCore>, u64)],
    confirm: Option<MinReplicas>,
    timeout: Duration,
) -> Vec<(Weak<LeaseCore>, u64, Instant)> {
    let asks: Vec<Asked> = chunk.iter().map(|(l, _)| l.asked()).collect();
    let ttls: Vec<Duration> = asks.iter().map(|a| a.ttl).collect();
    let entries: Vec<(&str, &str, u64)> = chunk
        .iter()
        .zip(&ttls)
        .map(|((l, _), ttl)| {
            (
                l.keys.lock.as_str(),
                l.token.as_str(),
                ttl.as_millis() as u64,
            )
        })
        .collect();
    let sent_at = Instant::now();
    // On Sentinel: an answer counts only if the client stayed on one master
    // while the call was out (see `sentinel.rs`).
    let epoch = clients.epoch.read();
    let first = entries.first().map_or("", |e| e.0);
    // `Some(acked)` when the chunk's writes were confirmed by too few
    // replicas.
    let members = chunk.first().is_some_and(|(l, _)| l.member_set.is_some());
    let (result, unconfirmed) = match confirm {
        None if members => (
            crate::engine::primitive::scripts::renew(&clients.client, chunk, &ttls, timeout).await,
            None,
        ),
        None => (
            clients
                .routes
                .extend(&clients.client, &entries, timeout)
                .await,
            None,
        ),
        Some(wait) => {
            let confirmed = match clients.confirmer.client(first, timeout).await {
                Ok(client) => {
                    scripts::extend_confirmed(client, &entries, true, wait, timeout).await
                }
                Err(e) => Err(e),
            };
            match confirmed {
                Ok((answers, acked)) if acked < wait.replicas => (Ok(answers), Some(acked)),
                Ok((answers, _)) => (Ok(answers), None),
                Err(e) => (Err(e), None),
            }
        }
    };
    if let Some(acked) = unconfirmed {
        tracing::debug!(
            acked,
            keys = chunk.len(),
            "lease renewal not confirmed by enough replicas; retrying"
        );
    }
    let locks = chunk.iter().map(|(lease, _)| &lease.metrics);
    crate::engine::metrics::renewals(locks, &result, unconfirmed, sent_at);
    let mut next = Vec::with_capacity(chunk.len());
    match result {
        Ok(answers) => {
            for (((lease, generation), asked), answer) in chunk.iter().zip(asks).zip(answers) {
                let ttl = asked.ttl;
                match answer {
                    Compared::Held if unconfirmed.is_some() || !clients.epoch.unchanged(epoch) => {
                        if lease.lost_reason().is_none() {
                            next.push((Arc::downgrade(lease), *generation, retry_at(lease, ttl)));
                        }
                    }
                    Compared::Held => {
                        if lease.confirm(sent_at, asked) && !lease.is_ended() {
                            let due = sent_at + period(ttl);
                            next.push((Arc::downgrade(lease), *generation, due));
                        }
                    }
                    Compared::Missing => lost(lease, LostReason::Missing),
                    Compared::Replaced => lost(lease, LostReason::Replaced),
                }
            }
        }
        Err(e) => {
            // Redis could not be asked: try again soon; the lease stays as it
            // was and is reported lost when its local validity passes.
            tracing::debug!(error = %e, keys = chunk.len(), "lease renewal failed; retrying");
            for ((lease, generation), ttl) in chunk.iter().zip(ttls) {
                if lease.lost_reason().is_none() {
                    next.push((Arc::downgrade(lease), *generation, retry_at(lease, ttl)));
                }
            }
        }
    }
    next
}

/// When to try again after a renewal that did not count: a ninth of the
/// TTL (between 1 ms and 1 s) from now, and sooner when the lease's local
/// validity would end first, so that at least one more try fits in what is
/// left (half of it), whatever the TTL. A lease handed over by a release is
/// valid for the claim TTL only until its first renewal: with a long TTL a
/// ninth of it would come after the end.
fn retry_at(lease: &LeaseCore, ttl: Duration) -> Instant {
    let pause = (period(ttl) / 3).clamp(Duration::from_millis(1), Duration::from_secs(1));
    let left = lease.remaining();
    Instant::now() + pause.min(left / 2).max(Duration::from_millis(1))
}

fn lost(lease: &LeaseCore, reason: LostReason) {
    if !lease.is_ended() {
        tracing::warn!(key = %lease.key, %reason, "lock lost");
    }
    lease.mark_lost(reason);
}
