//! The worker task and one release's run: sent (grouped with others for
//! locks), tried again after transient errors, put back on the queue when
//! its runtime stops under it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::ClientLike;
use tokio::task::JoinSet;

use super::{places, Job, Shared};
use crate::engine::batch::OnSent;
use crate::protocol::scripts::Compared;

/// Runs the queued releases (and, once the mutex closes with none left,
/// closes the client when it should).
pub(super) async fn worker(shared: Arc<Shared>) {
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
pub(super) async fn run_job(shared: Arc<Shared>, job: Job) {
    let sent = Arc::new(AtomicBool::new(false));
    let mut requeue = Requeue {
        shared: &shared,
        job: Some(job),
        sent: &sent,
    };
    if let Some(job) = requeue.job.as_ref() {
        let on_sent = job.lock_key().map(|key| {
            let (shared, sent, key) = (Arc::clone(&shared), Arc::clone(&sent), key.to_owned());
            Box::new(move || {
                sent.store(true, Ordering::SeqCst);
                shared.sent(&key);
            }) as OnSent
        });
        release_one(&shared, job, on_sent).await;
    }
    // A release of places lets go of what it kept alive here.
    drop(requeue.job.take());
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
            if let (true, Some(key)) = (self.sent.load(Ordering::SeqCst), job.lock_key()) {
                // It will be sent again: it is unsent until then.
                *state.unsent.entry(key.to_owned()).or_insert(0) += 1;
                self.shared.unsent_total.fetch_add(1, Ordering::SeqCst);
            }
            state.queue.push_back(job);
            drop(state);
            self.shared.work.notify_one();
        }
    }
}

/// Tries a queued release, again after transient errors (a reconnect, a
/// timeout: its reply may be lost while the lease is still ours), three
/// times in all; after that the lease expires with its TTL. `on_sent` (a
/// lock's) runs once its first try has been handed to the client.
async fn release_one(shared: &Shared, job: &Job, mut on_sent: Option<OnSent>) {
    const TRIES: u32 = 3;
    let name = job.name();
    let mut pause = Duration::from_millis(100);
    for attempt in 1..=TRIES {
        let released = match job {
            Job::Lock { keys, token, leave } => {
                let batcher = &shared.batcher;
                batcher.release(keys, token, leave, on_sent.take()).await
            }
            Job::Places { places, .. } => {
                places::release(&shared.client, &shared.mode, places, shared.timeout).await
            }
        };
        match released {
            Ok(Compared::Held) => {
                tracing::debug!(key = %name, "released");
                return;
            }
            Ok(_) => {
                tracing::debug!(
                    key = %name,
                    "already gone (expired or taken over); nothing released"
                );
                return;
            }
            Err(e) if e.is_transient() && attempt < TRIES => {
                tracing::debug!(key = %name, error = %e, "release failed; retrying");
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
                if job.lock_key().is_some() {
                    shared.metrics.release_failed(&e);
                }
                tracing::warn!(
                    key = %name,
                    error = %e,
                    "release failed; the lease will expire with its TTL"
                );
                return;
            }
        }
    }
}
