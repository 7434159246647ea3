//! Group commit for releases.
//!
//! While a release call is in flight (per cluster node on Redis 7.0+, else
//! per cluster slot; one gate on a single server), releases that arrive
//! meanwhile wait and go out together as one script call when it returns
//! (declared cross-slot when they span slots of the node; see `route.rs`). A task alone never waits: its release is
//! sent at once. Under concurrency N releases cost one command and one socket
//! write (fred flushes the socket after every script call) instead of N,
//! which is what lets 64 tasks cycling locks outrun the raw-command floor.
//!
//! The caller that sends a call alone (the "leader") returns as soon as its
//! own reply is in; the batch that queued behind it is sent by a task it
//! spawns, which leads in turn. Every queued release is answered by the
//! batch it goes out with (each call bounded by the command timeout); one
//! whose batch task is dropped unanswered gives [`Error::Timeout`]. (A
//! runtime that stops between a leader's end and its successor's start
//! leaves the queue to the gate's next release.)

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use tokio::sync::oneshot;

use crate::policy::error::Error;
use crate::protocol::channel::{Mode, PubSub};
use crate::protocol::keys::LockKeys;
use crate::protocol::route::{self, Group};
use crate::protocol::scripts::{self, Compared, Releasing};

/// The most releases sent in one script call.
const MAX_BATCH: usize = 256;

/// Called once the release has been handed to the client (so that a command
/// sent after it runs after it).
pub(crate) type OnSent = Box<dyn FnOnce() + Send>;

struct Waiting {
    keys: LockKeys,
    token: String,
    /// A queue member to remove first (see `Batcher::release`).
    leave: String,
    on_sent: Option<OnSent>,
    reply: oneshot::Sender<Result<Compared, Error>>,
}

#[derive(Default)]
struct Gate {
    in_flight: bool,
    waiting: Vec<Waiting>,
}

struct Shared {
    client: Client,
    timeout: Duration,
    /// Plain or sharded pub/sub for the release messages.
    mode: Arc<Mode>,
    gates: Mutex<HashMap<Group, Gate>>,
}

impl Shared {
    fn gates(&self) -> MutexGuard<'_, HashMap<Group, Gate>> {
        self.gates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The gate of a key: its cluster node (Redis 7.0+) or slot, or one gate
    /// on a single server.
    fn gate_of(&self, keys: &LockKeys) -> Group {
        if !self.client.is_clustered() {
            return Group::Slot(0);
        }
        let slot = fred::util::redis_keyslot(keys.lock.as_bytes());
        match route::node_for_cross_slot(&self.client, slot) {
            Some(node) => Group::Node(node),
            None => Group::Slot(slot),
        }
    }
}

/// Sends releases, grouping those that arrive while one is in flight.
#[derive(Clone)]
pub(crate) struct Batcher {
    shared: Arc<Shared>,
}

impl Batcher {
    pub(crate) fn new(client: Client, timeout: Duration, mode: Arc<Mode>) -> Self {
        Batcher {
            shared: Arc::new(Shared {
                client,
                timeout,
                mode,
                gates: Mutex::default(),
            }),
        }
    }

    /// Releases `keys` held with `token` (handing the lock to the next
    /// queued waiter, if any). `leave`, when not empty, is a queue member
    /// removed first: the entry of a waiter that gave up, whose token the
    /// key may hold if the lock was just handed to it. `on_sent` runs once
    /// the command has been handed to the client.
    ///
    /// Cancel-safe: a release dropped while queued is still sent with its
    /// batch (its answer is then dropped); a leader dropped mid-flight
    /// passes the queue on.
    pub(crate) async fn release(
        &self,
        keys: &LockKeys,
        token: &str,
        leave: &str,
        on_sent: Option<OnSent>,
    ) -> Result<Compared, Error> {
        let gate = self.shared.gate_of(keys);
        let queued = {
            let mut gates = self.shared.gates();
            let state = gates.entry(gate.clone()).or_default();
            if state.in_flight {
                let (reply, answer) = oneshot::channel();
                state.waiting.push(Waiting {
                    keys: keys.clone(),
                    token: token.to_owned(),
                    leave: leave.to_owned(),
                    on_sent,
                    reply,
                });
                Err(answer)
            } else {
                state.in_flight = true;
                Ok(on_sent)
            }
        };
        match queued {
            Ok(on_sent) => {
                let _leader = Leader {
                    batcher: self.clone(),
                    gate,
                };
                let mut answers =
                    send(&self.shared, &[(keys, token, leave)], on_sent.into_iter()).await;
                answers.swap_remove(0)
            }
            // Dropped unanswered (its batch's task was dropped): unknown.
            Err(answer) => answer.await.unwrap_or_else(|_| {
                Err(Error::Timeout {
                    key: keys.lock.clone(),
                    after: self.shared.timeout,
                })
            }),
        }
    }

    /// Sends the releases queued at `gate` (up to `MAX_BATCH`) as one call,
    /// as the gate's leader; its leadership's end starts the next batch.
    async fn drain(self, gate: Group) {
        let mut batch = {
            let mut gates = self.shared.gates();
            let Some(state) = gates.get_mut(&gate) else {
                return;
            };
            if state.in_flight || state.waiting.is_empty() {
                return;
            }
            state.in_flight = true;
            let n = state.waiting.len().min(MAX_BATCH);
            state.waiting.drain(..n).collect::<Vec<_>>()
        };
        let _leader = Leader {
            batcher: self.clone(),
            gate,
        };
        let on_sent: Vec<OnSent> = batch.iter_mut().filter_map(|w| w.on_sent.take()).collect();
        let entries: Vec<Releasing<'_>> = batch
            .iter()
            .map(|w| (&w.keys, w.token.as_str(), w.leave.as_str()))
            .collect();
        let answers = send(&self.shared, &entries, on_sent.into_iter()).await;
        drop(entries);
        for (waiting, answer) in batch.into_iter().zip(answers) {
            let answer = answer.map_err(|mut e| {
                e.set_key(&waiting.keys.lock);
                e
            });
            let _ = waiting.reply.send(answer);
        }
    }
}

/// Sends one release call for `entries`, calling each `on_sent` once the
/// command is handed to the client; one answer per entry.
async fn send(
    shared: &Shared,
    entries: &[Releasing<'_>],
    on_sent: impl Iterator<Item = OnSent> + Unpin,
) -> Vec<Result<Compared, Error>> {
    let pubsub = shared.mode.get(&shared.client);
    let call = release(&shared.client, entries, pubsub, shared.timeout);
    OnFirstPoll {
        inner: Box::pin(call),
        then: Some(on_sent),
    }
    .await
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

/// The gate's leadership: when the leader is done (or dropped), the gate is
/// free again, and a task is spawned to send what queued meanwhile.
struct Leader {
    batcher: Batcher,
    gate: Group,
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut gates = self.batcher.shared.gates();
        let Some(state) = gates.get_mut(&self.gate) else {
            return;
        };
        state.in_flight = false;
        if state.waiting.is_empty() {
            gates.remove(&self.gate);
            return;
        }
        drop(gates);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(self.batcher.clone().drain(self.gate.clone()))),
            // No runtime to send them: answer "unknown" (their callers retry
            // or leave the lock to its TTL) rather than leave them waiting.
            Err(_) => {
                let mut gates = self.batcher.shared.gates();
                if let Some(state) = gates.get_mut(&self.gate) {
                    state.waiting.clear();
                }
            }
        }
    }
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
