//! Where the mutex's background tasks run, and bringing them back when that
//! runtime has gone.
//!
//! The release worker, the renewer and the subscriber manager are started on
//! the runtime of the first caller that needs them (their "home"). A tokio
//! runtime can stop while the mutex lives on: one `#[tokio::test]` runtime
//! per test, a runtime per job, a mutex in a `static`. Every entry point
//! (acquisition, release, extension, a guard's drop) calls [`Home::ensure`],
//! which checks a sentinel task on the home runtime (one atomic load) and,
//! when it has finished, makes the caller's runtime the new home: the
//! components then start their tasks again there. Their state (queues,
//! renewal schedule, wait queues) lives outside the tasks, so nothing queued
//! is lost; work that was in flight when the old runtime stopped is put back.
//!
//! A fred client's connection task lives on the runtime that connected it.
//! When that runtime has gone, commands fail at once with "Failed to send
//! command to router"; [`revive_client`] then connects the client again on
//! the caller's runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::ClientLike;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// The runtime the background tasks run on now.
pub(crate) struct Home {
    current: Mutex<Option<Current>>,
    /// Set while the tasks run on a live runtime; cleared by the sentinel
    /// when that runtime drops it. The fast path of [`ensure`](Self::ensure)
    /// reads only this.
    running: Arc<AtomicBool>,
}

struct Current {
    /// A task that never ends on its own: finished means the runtime stopped.
    sentinel: JoinHandle<()>,
}

/// Held by the sentinel task: dropped with it when its runtime stops.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Home {
    pub(crate) fn new() -> Self {
        Home {
            current: Mutex::new(None),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    fn current(&self) -> MutexGuard<'_, Option<Current>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes sure the home runtime is alive. When it is not (first use, or
    /// its runtime stopped), the caller's runtime becomes the home and
    /// `start` runs with its handle, under a lock, so no caller uses the
    /// components before their tasks are started. Outside any runtime with
    /// no live home, nothing happens.
    pub(crate) fn ensure(&self, start: impl FnOnce(&Handle)) {
        if self.running.load(Ordering::Acquire) {
            return;
        }
        let mut current = self.current();
        if current
            .as_ref()
            .is_some_and(|home| !home.sentinel.is_finished())
        {
            return;
        }
        let Ok(handle) = Handle::try_current() else {
            return;
        };
        if current.is_some() {
            tracing::debug!(
                "the runtime of the lock's background tasks has stopped; restarting them here"
            );
        }
        self.running.store(true, Ordering::Release);
        let running = Running(Arc::clone(&self.running));
        let sentinel = handle.spawn(async move {
            let _running = running;
            std::future::pending::<()>().await
        });
        start(&handle);
        *current = Some(Current { sentinel });
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Some(home) = self.current().take() {
            home.sentinel.abort();
        }
    }
}

/// `true` for the error fred gives when the client's connection task has
/// gone (its runtime stopped, or it was never started).
pub(crate) fn router_gone(error: &fred::error::Error) -> bool {
    *error.kind() == fred::error::ErrorKind::Unknown
        && error
            .details()
            .starts_with("Failed to send command to router")
}

/// Connects `client` again on the current runtime after its connection task
/// was lost with its runtime. At most once a second per process and client
/// id, so that many failing callers do not reconnect over each other.
pub(crate) fn revive_client(client: &Client) {
    static LAST: Mutex<Vec<(String, Instant)>> = Mutex::new(Vec::new());
    if Handle::try_current().is_err() {
        return;
    }
    let now = Instant::now();
    {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        last.retain(|(_, at)| now.duration_since(*at) < Duration::from_secs(1));
        if last.iter().any(|(id, _)| id == client.id()) {
            return;
        }
        last.push((client.id().to_owned(), now));
    }
    tracing::debug!(
        client = client.id(),
        "the Redis client's connection task has stopped with its runtime; connecting again here"
    );
    drop(client.connect());
}

/// A one-way flag that can be awaited: "this task has finished".
#[derive(Default)]
pub(crate) struct Done {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Done {
    pub(crate) fn mark(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_marked(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Completes once marked. Cancel-safe.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_marked() {
                return;
            }
            notified.await;
        }
    }
}
