//! The release worker: releases handed over by `Drop`, run in the background,
//! for every kind of lease of a mutex: locks (one key, or each key of a
//! set), and places in sorted sets (semaphore permits, read-write lock
//! shares, [`places`]).
//!
//! `Drop` cannot await, so a dropped guard (or a cancelled acquisition that
//! may have set its token) puts its release on a queue kept outside any
//! task; pushing never blocks. A worker task on the mutex's home runtime (see
//! `background.rs`) runs each release script, concurrently (`worker.rs`);
//! failures are retried a few times and then left to the lease's expiry. When
//! the home runtime stops, releases still queued stay queued, and releases
//! that were running are put back; the next worker picks them up.
//!
//! The queue also remembers which keys have a release not yet *sent*, so
//! that a task that drops a guard and takes the same key again at once sends
//! its acquisition after the release on the same connection (Redis runs them
//! in that order) instead of finding its own old lock in the way, without
//! waiting for the release's reply.
//!
//! When the mutex closes (shut down with no guard alive, or dropped), the
//! worker finishes every queued release, then closes the client if the mutex
//! made it.
//!
//! Why a counter and a `Notify` rather than `tokio_util::task::TaskTracker`:
//! the queue must outlive the runtime its worker runs on (see
//! `background.rs`), and `flush` must also count releases not yet handed to
//! any task; a tracker only counts tasks it spawned.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::Duration;

use fred::clients::Client;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::engine::batch::Batcher;
use crate::policy::error::Error;
use crate::protocol::background::Done;
use crate::protocol::channel::Mode;
use crate::protocol::keys::LockKeys;
use crate::protocol::scripts::Compared;

pub(crate) mod places;
mod worker;

use places::{KeepAlive, Places};
use worker::{run_job, worker};

/// One release to run.
enum Job {
    /// A lock: compare-and-delete, or hand-off to the next queued waiter.
    Lock {
        keys: LockKeys,
        token: String,
        /// The wait-queue member of a waiter that gave up, removed first
        /// ('' for none; see `Batcher::release`).
        leave: String,
    },
    /// A token's places in sorted sets.
    Places {
        places: Places,
        /// Dropped when the release has finished.
        _keep: KeepAlive,
    },
}

impl Job {
    /// The lock key of a lock's release (whose sending acquisitions of the
    /// same key wait for; see [`ReleaseQueue::sent`]).
    fn lock_key(&self) -> Option<&str> {
        match self {
            Job::Lock { keys, .. } => Some(&keys.lock),
            Job::Places { .. } => None,
        }
    }

    /// The lock key or the primitive's name, for logs.
    fn name(&self) -> &str {
        match self {
            Job::Lock { keys, .. } => &keys.lock,
            Job::Places { places, .. } => &places.name,
        }
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Per lock key: releases queued or running that have not been sent yet.
    unsent: HashMap<String, usize>,
    /// Releases queued or running.
    outstanding: usize,
}

struct Shared {
    state: Mutex<State>,
    /// How many releases are not sent yet (all keys): lets an acquisition
    /// skip the lock in the usual case of none.
    unsent_total: AtomicUsize,
    /// Wakes the worker: a job was queued, or the mutex is closing.
    work: Notify,
    /// Wakes acquisitions waiting for a key's release to be sent, and
    /// `flush` waiting for the queue to empty.
    progress: Notify,
    /// Close the client when idle (set by a shutdown with no guard alive, or
    /// when the mutex is dropped).
    closing: AtomicBool,
    client: Client,
    /// Whether the mutex made the client (and so closes it).
    owns_client: bool,
    /// Whether the client was handed out (`DistributedMutex::client`): then
    /// the caller may still use it, and closing it is theirs.
    lent: AtomicBool,
    /// Whether the worker closes the client once idle (decided by `close`).
    quit: AtomicBool,
    timeout: Duration,
    /// Sends the releases of locks (grouped while one is in flight).
    batcher: Batcher,
    /// Plain or sharded pub/sub, for the release messages of places.
    mode: Arc<Mode>,
    /// Marked when the worker has closed (after its last release).
    closed: Done,
    metrics: crate::engine::metrics::Config,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new release as outstanding (and a lock's as unsent).
    fn count(&self, job: &Job) {
        let mut state = self.state();
        if let Some(key) = job.lock_key() {
            *state.unsent.entry(key.to_owned()).or_insert(0) += 1;
            self.unsent_total.fetch_add(1, Ordering::SeqCst);
        }
        state.outstanding += 1;
    }

    /// Puts a counted release on the worker's queue.
    fn push(&self, job: Job) {
        self.state().queue.push_back(job);
        self.work.notify_one();
    }

    fn sent(&self, key: &str) {
        let mut state = self.state();
        if let Some(n) = state.unsent.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                state.unsent.remove(key);
            }
            self.unsent_total.fetch_sub(1, Ordering::SeqCst);
        }
        drop(state);
        self.progress.notify_waiters();
    }

    fn done(&self) {
        self.state().outstanding -= 1;
        self.progress.notify_waiters();
        if self.closing.load(Ordering::SeqCst) {
            // The worker may be waiting for the last release to close.
            self.work.notify_one();
        }
    }
}

pub(crate) struct ReleaseQueue {
    shared: Arc<Shared>,
    /// Whether a worker was ever started (else `flush` has nothing to wait for).
    started: AtomicBool,
}

impl ReleaseQueue {
    pub(crate) fn new(
        client: Client,
        owns_client: bool,
        timeout: Duration,
        batcher: Batcher,
        mode: Arc<Mode>,
        metrics: crate::engine::metrics::Config,
    ) -> Self {
        ReleaseQueue {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                unsent_total: AtomicUsize::new(0),
                work: Notify::new(),
                progress: Notify::new(),
                closing: AtomicBool::new(false),
                client,
                owns_client,
                lent: AtomicBool::new(false),
                quit: AtomicBool::new(false),
                timeout,
                batcher,
                mode,
                closed: Done::default(),
                metrics,
            }),
            started: AtomicBool::new(false),
        }
    }

    /// Starts the worker on `home` (again, when the old home runtime stopped).
    pub(crate) fn start(&self, home: &Handle) {
        self.started.store(true, Ordering::SeqCst);
        home.spawn(worker(Arc::clone(&self.shared)));
    }

    /// Releases in the background. Synchronous, never blocks, never panics.
    ///
    /// Inside a runtime the release command is handed to the client before
    /// this returns (its future is polled once here, then spawned), so a
    /// command this process sends next, such as taking the same key again,
    /// runs after it. Outside a runtime it waits on the worker's queue.
    pub(crate) fn queue(&self, keys: LockKeys, token: String) {
        self.queue_leaving(keys, token, String::new());
    }

    /// [`queue`](Self::queue), removing the queue member `leave` of a waiter
    /// that gave up first: if the lock was handed to it meanwhile, it goes
    /// on to the next waiter.
    pub(crate) fn queue_leaving(&self, keys: LockKeys, token: String, leave: String) {
        self.shared.metrics.release_queued();
        self.enqueue(Job::Lock { keys, token, leave });
    }

    /// Releases a token's places in the background, as [`queue`](Self::queue)
    /// releases a lock; `keep` is dropped when the release has finished.
    pub(crate) fn queue_places(&self, places: Places, keep: KeepAlive) {
        self.enqueue(Job::Places {
            places,
            _keep: keep,
        });
    }

    /// Releases a token's places now, once: whether it still held them.
    pub(crate) async fn places_now(&self, places: &Places) -> Result<Compared, Error> {
        let shared = &self.shared;
        places::release(&shared.client, &shared.mode, places, shared.timeout).await
    }

    fn enqueue(&self, job: Job) {
        self.shared.count(&job);
        let Ok(runtime) = Handle::try_current() else {
            self.shared.push(job);
            return;
        };
        let mut task = Box::pin(run_job(Arc::clone(&self.shared), job));
        let mut cx = Context::from_waker(Waker::noop());
        if task.as_mut().poll(&mut cx).is_pending() {
            // If this runtime is stopping, the task is dropped unrun and puts
            // its job back on the queue for the next worker.
            runtime.spawn(task);
        }
    }

    /// Waits (at most `limit`) until every release of `key` queued by this
    /// mutex has been sent to Redis, so that a command sent after it runs
    /// after it. Cancel-safe.
    pub(crate) async fn sent(&self, key: &str, limit: Duration) {
        // The usual case, on every acquisition: nothing unsent, no lock.
        if self.shared.unsent_total.load(Ordering::SeqCst) == 0
            || !self.shared.state().unsent.contains_key(key)
        {
            return;
        }
        let wait = async {
            loop {
                let progress = self.shared.progress.notified();
                if !self.shared.state().unsent.contains_key(key) {
                    return;
                }
                progress.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    /// Waits until every release queued so far has run (or been given up).
    /// Returns at once when no worker could ever run them (no runtime).
    pub(crate) async fn flush(&self) {
        if !self.started.load(Ordering::SeqCst) {
            return;
        }
        loop {
            let progress = self.shared.progress.notified();
            if self.shared.state().outstanding == 0 {
                return;
            }
            progress.await;
        }
    }

    /// Completes when the worker has closed (see [`close`](Self::close)), or
    /// at once when no worker ever ran.
    pub(crate) async fn closed(&self) {
        if self.started.load(Ordering::SeqCst) {
            self.shared.closed.wait().await;
        }
    }

    /// Records that the client was handed out to the caller.
    pub(crate) fn lend_client(&self) {
        self.shared.lent.store(true, Ordering::Relaxed);
    }

    /// Stops the worker once every queued release has run, closing the
    /// client the mutex made unless it was handed out.
    pub(crate) fn close(&self) {
        let shared = &self.shared;
        let quit = shared.owns_client && !shared.lent.load(Ordering::Relaxed);
        shared.quit.fetch_or(quit, Ordering::SeqCst);
        shared.closing.store(true, Ordering::SeqCst);
        shared.work.notify_one();
    }
}

impl Drop for ReleaseQueue {
    fn drop(&mut self) {
        // The mutex and every guard are gone: finish the queue, then close.
        self.close();
    }
}
