//! Group commit for releases (see `group_commit.rs`).
//!
//! Releases of one gate (per cluster node on Redis 7.0+, else per cluster
//! slot; one gate on a single server) that arrive together go out as one
//! script call (declared cross-slot when they span slots of the node; see
//! `route.rs`). Under concurrency N releases cost one command and one
//! socket write (fred flushes the socket after every script call) instead
//! of N. A release whose caller is dropped is still sent with its batch.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;

use crate::engine::group_commit::{Flush, GroupCommit, Withdraw};
use crate::engine::join::Boxed;
use crate::policy::error::Error;
use crate::protocol::channel::{Mode, PubSub};
use crate::protocol::keys::LockKeys;
use crate::protocol::route;
use crate::protocol::scripts::{self, Compared, Releasing};

/// Called once the release has been handed to the client (so that a command
/// sent after it runs after it).
pub(crate) type OnSent = Box<dyn FnOnce() + Send>;

/// One release to send.
struct Job {
    keys: LockKeys,
    token: String,
    /// A queue member to remove first (see `Batcher::release`).
    leave: String,
    on_sent: Option<OnSent>,
}

/// How a batch of releases is sent.
struct Releases {
    client: Client,
    timeout: Duration,
    /// Plain or sharded pub/sub for the release messages.
    mode: Arc<Mode>,
}

impl Flush for Releases {
    type Entry = Job;
    type Answer = Result<Compared, Error>;

    fn flush(&self, mut batch: Vec<Job>) -> Boxed<'static, Vec<Self::Answer>> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let pubsub = self.mode.get(&client);
        let on_sent: Vec<OnSent> = batch.iter_mut().filter_map(|j| j.on_sent.take()).collect();
        let call = async move {
            let entries: Vec<Releasing<'_>> = batch
                .iter()
                .map(|j| (&j.keys, j.token.as_str(), j.leave.as_str()))
                .collect();
            let answers = release(&client, &entries, pubsub, timeout).await;
            answers
                .into_iter()
                .zip(&batch)
                .map(|(answer, job)| {
                    answer.map_err(|mut e| {
                        e.set_key(&job.keys.lock);
                        e
                    })
                })
                .collect()
        };
        Box::pin(OnFirstPoll {
            inner: Box::pin(call),
            then: Some(on_sent.into_iter()),
        })
    }
}

/// Sends releases, grouping those that arrive together.
#[derive(Clone)]
pub(crate) struct Batcher {
    commit: GroupCommit<Releases>,
}

impl Batcher {
    pub(crate) fn new(client: Client, timeout: Duration, mode: Arc<Mode>) -> Self {
        let releases = Releases {
            client,
            timeout,
            mode,
        };
        Batcher {
            commit: GroupCommit::new(releases, Withdraw::Never),
        }
    }

    /// Releases `keys` held with `token` (handing the lock to the next
    /// queued waiter, if any). `leave`, when not empty, is a queue member
    /// removed first: the entry of a waiter that gave up, whose token the
    /// key may hold if the lock was just handed to it. `on_sent` runs once
    /// the command has been handed to the client.
    ///
    /// Cancel-safe: a release dropped before its answer is still sent with
    /// its batch (its answer is then dropped).
    pub(crate) async fn release(
        &self,
        keys: &LockKeys,
        token: &str,
        leave: &str,
        on_sent: Option<OnSent>,
    ) -> Result<Compared, Error> {
        let releases = self.commit.flusher();
        let group = route::gate(&releases.client, &keys.lock);
        let job = Job {
            keys: keys.clone(),
            token: token.to_owned(),
            leave: leave.to_owned(),
            on_sent,
        };
        // Never answered (no runtime left to send its batch): unknown.
        self.commit.submit(group, job).await.unwrap_or_else(|| {
            Err(Error::Timeout {
                key: keys.lock.clone(),
                after: releases.timeout,
            })
        })
    }
}

/// One release call for entries of one slot; for entries of several slots
/// of one node, one cross-slot call, sent again per slot when the node
/// refuses it (a slot moved or is moving: nothing ran).
async fn release(
    client: &Client,
    entries: &[Releasing<'_>],
    pubsub: PubSub,
    timeout: Duration,
) -> Vec<Result<Compared, Error>> {
    let slot = |(keys, _, _): &Releasing<'_>| fred::util::redis_keyslot(keys.lock.as_bytes());
    let first = entries.first().map(slot);
    // One server takes keys of every slot in one call.
    let spread = client.is_clustered() && entries.iter().any(|e| Some(slot(e)) != first);
    let all = |result: Result<Vec<Compared>, Error>| match result {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(e) => vec![Err(e); entries.len()],
    };
    if !spread {
        return all(scripts::release(client, entries, pubsub, timeout).await);
    }
    match scripts::release_cross_slot(client, entries, pubsub, timeout).await {
        Err(e) if scripts::refused_across_slots(&e) => {
            tracing::debug!(error = %e, keys = entries.len(), "a node refused a release across its slots; sending it per slot");
        }
        other => return all(other),
    }
    let mut slots: Vec<u16> = entries.iter().map(slot).collect();
    slots.sort_unstable();
    slots.dedup();
    let mut answers: Vec<Option<Result<Compared, Error>>> = vec![None; entries.len()];
    for s in slots {
        let at: Vec<usize> = (0..entries.len())
            .filter(|&i| slot(&entries[i]) == s)
            .collect();
        let group: Vec<Releasing<'_>> = at.iter().map(|&i| entries[i]).collect();
        let result = all(scripts::release(client, &group, pubsub, timeout).await);
        for (i, answer) in at.into_iter().zip(result) {
            answers[i] = Some(answer);
        }
    }
    // Every entry is in its slot's call; an answer missing all the same
    // would be "unknown", never a wrong one.
    answers
        .into_iter()
        .zip(entries)
        .map(|(answer, (keys, _, _))| {
            answer.unwrap_or_else(|| {
                Err(Error::Timeout {
                    key: keys.lock.clone(),
                    after: timeout,
                })
            })
        })
        .collect()
}

/// Polls `inner`, calling every `then` once after its first poll (by which
/// time a fred command future has handed its command to the client).
struct OnFirstPoll<F, T> {
    inner: Pin<Box<F>>,
    then: Option<T>,
}

impl<F: Future, T: Iterator<Item = OnSent> + Unpin> Future for OnFirstPoll<F, T> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll(cx);
        if let Some(then) = this.then.take() {
            then.for_each(|f| f());
        }
        polled
    }
}
