//! The release worker: releases handed over by `Drop`, run in the background.
//!
//! `Drop` cannot await, so a dropped guard (or a cancelled acquisition that
//! may have set its token) puts `(keys, token)` on a queue kept outside any
//! task; pushing never blocks. A worker task on the mutex's home runtime (see
//! `background.rs`) runs the compare-and-delete script for each, concurrently;
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
use fred::interfaces::ClientLike;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::engine::batch::{Batcher, OnSent};
use crate::protocol::background::Done;
use crate::protocol::keys::LockKeys;
use crate::protocol::scripts::Compared;

/// One release to run.
struct Job {
    keys: LockKeys,
    token: String,
    /// The wait-queue member of a waiter that gave up, removed first ('' for
    /// none; see `Batcher::release`).
    leave: String,
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
    /// Sends the releases (grouped while one is in flight).
    batcher: Batcher,
    /// Marked when the worker has closed (after its last release).
    closed: Done,
    metrics: crate::engine::metrics::Config,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new release as unsent and outstanding.
    fn count(&self, job: &Job) {
        let mut state = self.state();
        *state.unsent.entry(job.keys.lock.clone()).or_insert(0) += 1;
        self.unsent_total.fetch_add(1, Ordering::SeqCst);
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
        let job = Job { keys, token, leave };
        self.shared.metrics.release_queued();
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

async fn worker(shared: Arc<Shared>) {
    let mut running = JoinSet::new();
    loop {
        let work = shared.work.notified();
        let jobs: Vec<Job> = shared.state().queue.drain(..).collect();
        for job in jobs {
            running.spawn(run_job(Arc::clone(&shared), job));
        }
        if shared.closing.load(Ordering::SeqCst) && shared.state().outstanding == 0 {
            break;
        }
        tokio::select! {
            _ = work => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
    if shared.quit.load(Ordering::SeqCst) {
        let _ = tokio::time::timeout(shared.timeout, shared.client.quit()).await;
    }
    shared.closed.mark();
}

/// Runs one release. If its task is dropped before it finished (the runtime
/// stopped), the job goes back on the queue.
async fn run_job(shared: Arc<Shared>, job: Job) {
    let sent = Arc::new(AtomicBool::new(false));
    let mut requeue = Requeue {
        shared: &shared,
        job: Some(job),
        sent: &sent,
    };
    if let Some(job) = requeue.job.as_ref() {
        let on_sent: OnSent = {
            let (shared, sent, key) = (
                Arc::clone(&shared),
                Arc::clone(&sent),
                job.keys.lock.clone(),
            );
            Box::new(move || {
                sent.store(true, Ordering::SeqCst);
                shared.sent(&key);
            })
        };
        release_one(&shared, job, on_sent).await;
    }
    requeue.job = None;
    shared.done();
}

/// Puts a job whose task was dropped mid-run back on the queue.
struct Requeue<'a> {
    shared: &'a Shared,
    job: Option<Job>,
    sent: &'a AtomicBool,
}

impl Drop for Requeue<'_> {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            let mut state = self.shared.state();
            if self.sent.load(Ordering::SeqCst) {
                // It will be sent again: it is unsent until then.
                *state.unsent.entry(job.keys.lock.clone()).or_insert(0) += 1;
                self.shared.unsent_total.fetch_add(1, Ordering::SeqCst);
            }
            state.queue.push_back(job);
            drop(state);
            self.shared.work.notify_one();
        }
    }
}

/// Tries a queued release, again after transient errors (a reconnect, a
/// timeout: its reply may be lost while the key is still ours), three times
/// in all; after that the lock
/// expires with its TTL.
async fn release_one(shared: &Shared, job: &Job, on_sent: OnSent) {
    const TRIES: u32 = 3;
    let key = job.keys.lock.as_str();
    let mut pause = Duration::from_millis(100);
    let mut on_sent = Some(on_sent);
    for attempt in 1..=TRIES {
        let release = shared
            .batcher
            .release(&job.keys, &job.token, &job.leave, on_sent.take());
        match release.await {
            Ok(Compared::Held) => {
                tracing::debug!(key = %key, "lock released");
                return;
            }
            Ok(_) => {
                tracing::debug!(
                    key = %key,
                    "lock was already gone (expired or taken over); nothing released"
                );
                return;
            }
            Err(e) if e.is_transient() && attempt < TRIES => {
                tracing::debug!(key = %key, error = %e, "lock release failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                // A release is sent once (never re-sent by the client), so
                // after a cut wait for the connection to be back first.
                if !shared.client.is_connected() {
                    let back = shared.client.wait_for_connect();
                    let _ = tokio::time::timeout(shared.timeout, back).await;
                }
            }
            Err(e) => {
                shared.metrics.release_failed(&e);
                tracing::warn!(
                    key = %key,
                    error = %e,
                    "lock release failed; the lock will expire with its TTL"
                );
                return;
            }
        }
    }
}
