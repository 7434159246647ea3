//! The background release of semaphore permits and read-write lock guards
//! handed over by `Drop` (and of tokens an acquisition may have placed when
//! it was cancelled or failed uncertainly).
//!
//! Kept apart from the lock's release worker (`engine/release.rs`), which runs the
//! lock's compare-and-delete: inside a runtime, `queue` polls the release
//! once (handing its command to the client before it returns) and spawns
//! it; outside any runtime it leaves the job on a queue that a worker on the
//! mutex's home runtime runs. A release that fails transiently is retried a
//! few times; after that, the place expires with its lease.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

use fred::clients::Client;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::policy::error::Error;
use crate::protocol::channel::{Mode, ReleaseChannel};
use crate::protocol::scripts::Compared;

/// How many times a background release is tried.
const TRIES: u32 = 3;
/// The pause between two tries.
const PAUSE: Duration = Duration::from_millis(200);

/// One release: a token out of its sets, announced to waiters.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// The primitive's name as the caller gave it (for errors and logs).
    pub(crate) name: String,
    pub(crate) sets: Vec<Vec<u8>>,
    pub(crate) token: String,
    pub(crate) wakes: Vec<crate::protocol::keys::LockKeys>,
}

/// Kept alive until a release finishes (a dropped guard's hold on the
/// mutex's connections: see `guard.rs`).
pub(crate) type KeepAlive = Option<Box<dyn Send>>;

struct Shared {
    queue: Mutex<VecDeque<(Job, KeepAlive)>>,
    work: Notify,
    client: Client,
    timeout: Duration,
    mode: Arc<Mode>,
    /// Set when the mutex is gone: the worker stops.
    closed: AtomicBool,
    /// Releases queued and not finished.
    outstanding: AtomicUsize,
    /// Wakes `flush` when a release finishes.
    progress: Notify,
}

/// The release queue of one mutex's semaphores and read-write locks.
pub(crate) struct Releases {
    shared: Arc<Shared>,
}

impl Releases {
    pub(crate) fn new(client: Client, timeout: Duration, mode: Arc<Mode>) -> Self {
        Releases {
            shared: Arc::new(Shared {
                queue: Mutex::default(),
                work: Notify::new(),
                client,
                timeout,
                mode,
                closed: AtomicBool::new(false),
                outstanding: AtomicUsize::new(0),
                progress: Notify::new(),
            }),
        }
    }

    /// Starts the worker on `home` (again, when the old home runtime
    /// stopped). It ends with the mutex.
    pub(crate) fn start(&self, home: &Handle) {
        home.spawn(worker(Arc::clone(&self.shared)));
    }

    /// Releases `job` in the background. Synchronous, never blocks.
    /// `keep` is dropped when the release has finished.
    pub(crate) fn queue(&self, job: Job, keep: KeepAlive) {
        self.shared.outstanding.fetch_add(1, Ordering::SeqCst);
        let Ok(runtime) = Handle::try_current() else {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.push_back((job, keep));
            drop(queue);
            self.shared.work.notify_one();
            return;
        };
        let mut task = Box::pin(retried(Arc::clone(&self.shared), job, keep));
        let mut cx = Context::from_waker(Waker::noop());
        if task.as_mut().poll(&mut cx).is_pending() {
            runtime.spawn(task);
        }
    }

    /// Waits (at most `limit`) until every release queued so far has
    /// finished (or been given up). Cancel-safe.
    pub(crate) async fn flush(&self, limit: Duration) {
        let wait = async {
            loop {
                let progress = self.shared.progress.notified();
                if self.shared.outstanding.load(Ordering::SeqCst) == 0 {
                    return;
                }
                progress.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    /// Releases `job` now, once: whether the token still held its place.
    pub(crate) async fn now(&self, job: &Job) -> Result<Compared, Error> {
        send(&self.shared, job).await
    }
}

impl Drop for Releases {
    fn drop(&mut self) {
        // Wakes the worker so it runs what is left and stops.
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.work.notify_one();
    }
}

async fn send(shared: &Shared, job: &Job) -> Result<Compared, Error> {
    let pubsub = shared.mode.get(&shared.client);
    let channels: Vec<String> = (job.wakes.iter())
        .map(|keys| ReleaseChannel::of(keys, pubsub.sharded()).name)
        .collect();
    let call = super::scripts::release(
        &shared.client,
        &job.name,
        &job.sets,
        &job.token,
        &channels,
        pubsub,
        shared.timeout,
    );
    call.await
}

async fn retried(shared: Arc<Shared>, job: Job, keep: KeepAlive) {
    /// Counts the release as finished however the task ends (also when its
    /// runtime drops it).
    struct Finished<'a>(&'a Shared);
    impl Drop for Finished<'_> {
        fn drop(&mut self) {
            self.0.outstanding.fetch_sub(1, Ordering::SeqCst);
            self.0.progress.notify_waiters();
        }
    }
    let _finished = Finished(&shared);
    let _keep = keep;
    for attempt in 1..=TRIES {
        match send(&shared, &job).await {
            Ok(_) => return,
            Err(e) if e.is_transient() && attempt < TRIES => {
                tracing::debug!(name = %job.name, error = %e, "release failed; retrying");
                tokio::time::sleep(PAUSE).await;
            }
            Err(e) => {
                tracing::debug!(name = %job.name, error = %e, "release failed; left to expire");
                return;
            }
        }
    }
}

async fn worker(shared: Arc<Shared>) {
    loop {
        let work = shared.work.notified();
        tokio::pin!(work);
        work.as_mut().enable();
        let jobs: Vec<(Job, KeepAlive)> = (shared.queue.lock())
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for (job, keep) in jobs {
            tokio::spawn(retried(Arc::clone(&shared), job, keep));
        }
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        work.await;
    }
}
