//! The release worker: releases handed over by `Drop`, run in the background.
//!
//! `Drop` cannot await, so a dropped guard (or a cancelled acquisition that
//! may have set its token) sends `(key, token)` down an unbounded channel,
//! whose `send` is synchronous and never blocks. A worker task, started on the
//! runtime of the first acquisition, runs the compare-and-delete script for
//! each, concurrently; failures are logged and left to the lease's expiry.
//!
//! The queue also remembers which keys have a release in flight, so that a
//! task that drops a guard and takes the same key again at once waits for its
//! own release instead of finding its own old lock in the way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fred::clients::Client;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;

use crate::scripts;
use crate::task::Lazy;

enum Msg {
    Release { key: String, token: String },
    Flush(oneshot::Sender<()>),
}

/// Keys whose release is queued or running, with a count per key.
#[derive(Default)]
struct Pending {
    keys: Mutex<HashMap<String, usize>>,
    settled: Notify,
}

impl Pending {
    fn keys(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // A poisoned map is still a valid map: nothing here panics mid-update.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, key: &str) {
        *self.keys().entry(key.to_owned()).or_insert(0) += 1;
    }

    fn done(&self, key: &str) {
        let mut keys = self.keys();
        if let Some(n) = keys.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                keys.remove(key);
            }
        }
        drop(keys);
        self.settled.notify_waiters();
    }

    fn contains(&self, key: &str) -> bool {
        self.keys().contains_key(key)
    }
}

/// State the worker needs; taken when it starts.
struct Dormant {
    rx: mpsc::UnboundedReceiver<Msg>,
    client: Client,
    timeout: Duration,
    /// The mutex's id, sent with releases (see `release.lua`).
    id: Arc<str>,
}

pub(crate) struct ReleaseQueue {
    tx: mpsc::UnboundedSender<Msg>,
    worker: Lazy<Dormant>,
    pending: Arc<Pending>,
}

impl ReleaseQueue {
    pub(crate) fn new(client: Client, timeout: Duration, id: Arc<str>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        ReleaseQueue {
            tx,
            worker: Lazy::new(Dormant {
                rx,
                client,
                timeout,
                id,
            }),
            pending: Arc::default(),
        }
    }

    /// Starts the worker on the current runtime, once. Called from every
    /// acquisition, which runs inside a runtime.
    pub(crate) fn ensure_started(&self) {
        let pending = Arc::clone(&self.pending);
        self.worker.start(|d| worker(d, pending));
    }

    /// Hands a release to the worker. Synchronous, never blocks, never panics.
    pub(crate) fn queue(&self, key: String, token: String) {
        self.pending.add(&key);
        if let Err(mpsc::error::SendError(Msg::Release { key, .. })) =
            self.tx.send(Msg::Release { key, token })
        {
            self.pending.done(&key);
            tracing::warn!(
                key = %key,
                "lock release could not be queued (the runtime that ran the release worker has \
                 stopped); the lock will expire with its TTL"
            );
        }
    }

    /// Waits (at most `limit`) until no release of `key` is in flight.
    pub(crate) async fn settled(&self, key: &str, limit: Duration) {
        // The usual case, on every acquisition: nothing in flight, no timer.
        if !self.pending.contains(key) {
            return;
        }
        let wait = async {
            loop {
                let notified = self.pending.settled.notified();
                if !self.pending.contains(key) {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    /// Waits until every release queued so far has run.
    pub(crate) async fn flush(&self) {
        if !self.worker.started() {
            return;
        }
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.await;
        }
    }
}

async fn worker(d: Dormant, pending: Arc<Pending>) {
    let Dormant {
        mut rx,
        client,
        timeout,
        id,
    } = d;
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = running.join_next(), if !running.is_empty() => {}
            msg = rx.recv() => match msg {
                Some(Msg::Release { key, token }) => {
                    let client = client.clone();
                    let pending = Arc::clone(&pending);
                    let id = Arc::clone(&id);
                    running.spawn(async move {
                        release_one(&client, &key, &token, &id, timeout).await;
                        pending.done(&key);
                    });
                }
                Some(Msg::Flush(done)) => {
                    while running.join_next().await.is_some() {}
                    let _ = done.send(());
                }
                None => break,
            },
        }
    }
    while running.join_next().await.is_some() {}
}

/// Tries a queued release, again after transient errors (a reconnect, a
/// timeout: its reply may be lost while the key is still ours), for a few
/// seconds in all; after that the lock expires with its TTL.
async fn release_one(client: &Client, key: &str, token: &str, id: &str, timeout: Duration) {
    const TRIES: u32 = 3;
    let mut pause = Duration::from_millis(100);
    for attempt in 1..=TRIES {
        match scripts::release(client, key, token, id, timeout).await {
            Ok(scripts::Released::Yes) => {
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
            }
            Err(e) => {
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
