//! Group commit: calls of one kind that arrive together go out as one.
//!
//! A caller puts its entry in its group's gate (a cluster node or slot; one
//! gate on a single server). The first caller of a gate leads: it yields
//! once to the runtime, so that the other tasks ready to run put their
//! entries in too, then takes every entry of the gate and sends them as one
//! call (see [`Flush`]). The others wait for their answers. A caller alone
//! (no other call of the kind under way) is sent at once, as a batch of
//! one, without the gate; several batches may be in flight at once, so a
//! gate never waits for a reply before its next batch goes out.
//!
//! The batch is taken from the gate and handed to the client (the first
//! poll of its call, by which time fred has queued the command) under the
//! gate's lock. So when a caller that gave up finds its entry gone from the
//! gate, the entry's command is already on its way, and whatever the
//! caller sends next (a release of the same key) runs after it. With
//! [`Withdraw::Unsent`], a caller dropped before its entry was taken takes
//! it out, and it is never sent; with [`Withdraw::Never`] it is sent all
//! the same (a release must go out even when nobody awaits its answer).
//!
//! A leader dropped while its batch is in flight leaves the call to a task
//! that finishes it and answers the others; one dropped before it took the
//! batch leaves that to a task too. An entry whose batch could not be sent
//! at all (no runtime left) is answered `None`: its outcome is unknown.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use tokio::sync::oneshot;

use crate::engine::join::{join_all, Boxed};
use crate::protocol::route::Group;

/// The most entries sent in one call; a gate holding more sends several.
pub(crate) const MAX_BATCH: usize = 256;

/// How one kind of call is sent for a batch of entries.
pub(crate) trait Flush: Send + Sync + 'static {
    type Entry: Send + 'static;
    type Answer: Send + 'static;

    /// One call for `batch` (at most [`MAX_BATCH`] entries of one group),
    /// answering each entry in order. Its first poll hands the command to
    /// the client.
    fn flush(&self, batch: Vec<Self::Entry>) -> Boxed<'static, Vec<Self::Answer>>;
}

/// What happens to an entry whose caller is dropped before it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Withdraw {
    /// It is taken out and never sent (an attempt nobody waits for).
    Unsent,
    /// It is sent with its batch all the same (a release).
    Never,
}

struct Queued<F: Flush> {
    id: u64,
    entry: F::Entry,
    reply: oneshot::Sender<F::Answer>,
}

struct Gate<F: Flush> {
    waiting: Vec<Queued<F>>,
    /// A leader is on its way to send what waits here.
    led: bool,
}

struct Shared<F: Flush> {
    flusher: F,
    gates: Mutex<HashMap<Group, Gate<F>>>,
    next_id: AtomicU64,
    withdraw: Withdraw,
    /// Callers between putting their entry in and getting its answer.
    active: AtomicUsize,
}

/// Groups calls of one kind (see the module docs).
pub(crate) struct GroupCommit<F: Flush> {
    shared: Arc<Shared<F>>,
}

impl<F: Flush> Clone for GroupCommit<F> {
    fn clone(&self) -> Self {
        GroupCommit {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<F: Flush> GroupCommit<F> {
    pub(crate) fn new(flusher: F, withdraw: Withdraw) -> Self {
        GroupCommit {
            shared: Arc::new(Shared {
                flusher,
                gates: Mutex::default(),
                next_id: AtomicU64::new(0),
                withdraw,
                active: AtomicUsize::new(0),
            }),
        }
    }

    /// The flusher (its settings).
    pub(crate) fn flusher(&self) -> &F {
        &self.shared.flusher
    }

    /// Sends `entry` with the others of `group` that arrive together;
    /// `None` when its batch was never answered (the outcome is unknown).
    ///
    /// Cancel-safe in the sense of [`Withdraw`]: dropped before its entry
    /// was sent, the entry is withdrawn or still sent; dropped after, its
    /// command runs and its answer is dropped.
    pub(crate) async fn submit(&self, group: Group, entry: F::Entry) -> Option<F::Answer> {
        let (_active, alone) = Active::count(&self.shared.active);
        if alone {
            // No other call of the kind under way: sent at once, as a batch
            // of one, without the gate's bookkeeping.
            let mut answers = self.shared.flusher.flush(vec![entry]).await;
            return answers.pop();
        }
        let (reply, answer) = oneshot::channel();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let lead = {
            let mut gates = self.shared.gates();
            let gate = gates.entry(group.clone()).or_insert_with(|| Gate {
                waiting: Vec::new(),
                led: false,
            });
            gate.waiting.push(Queued { id, entry, reply });
            !std::mem::replace(&mut gate.led, true)
        };
        let mut place = Place {
            shared: &self.shared,
            group,
            id,
            lead,
            answered: false,
        };
        if lead {
            // With other calls under way, let the other ready tasks queue
            // theirs; a caller alone goes at once.
            if self.shared.active.load(Ordering::Relaxed) > 1 {
                tokio::task::yield_now().await;
            }
            let sending = place.send_batch().await;
            Detached(sending).await;
        }
        let answer = answer.await.ok();
        place.answered = true;
        answer
    }
}

impl<F: Flush> Shared<F> {
    fn gates(&self) -> MutexGuard<'_, HashMap<Group, Gate<F>>> {
        self.gates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes every entry of `group` and starts its call(s): made and polled
    /// once under the lock (see the module docs). Returns the rest of the
    /// work (the replies, the answers), `None` when it is already done.
    fn start(
        self: &Arc<Self>,
        group: &Group,
        cx: &mut std::task::Context<'_>,
    ) -> Option<Boxed<'static, ()>> {
        let mut gates = self.gates();
        let waiting = match gates.remove(group) {
            Some(gate) => gate.waiting,
            None => return None,
        };
        if waiting.is_empty() {
            return None;
        }
        let mut calls = Vec::new();
        let mut rest = waiting.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<Queued<F>> = rest.by_ref().take(MAX_BATCH).collect();
            let mut call = self.call(chunk);
            // Each call's first poll hands its command to the client.
            if call.as_mut().poll(cx).is_pending() {
                calls.push(call);
            }
        }
        drop(gates);
        match calls.len() {
            0 => None,
            1 => calls.pop(),
            _ => Some(Box::pin(async move {
                join_all(calls).await;
            })),
        }
    }

    /// One call for `chunk`, answering its entries.
    fn call(&self, chunk: Vec<Queued<F>>) -> Boxed<'static, ()> {
        let mut replies = Vec::with_capacity(chunk.len());
        let entries = chunk
            .into_iter()
            .map(|q| {
                replies.push(q.reply);
                q.entry
            })
            .collect();
        let sent = self.flusher.flush(entries);
        Box::pin(async move {
            let answers = sent.await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        })
    }

    /// Sends what waits at `group` from a task of its own (its leader is
    /// gone before it took the batch).
    fn send_later(self: &Arc<Self>, group: Group) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to send them: their callers learn nothing (None).
            self.gates().remove(&group);
            return;
        };
        let shared = Arc::clone(self);
        drop(runtime.spawn(async move {
            let sending = std::future::poll_fn(|cx| Poll::Ready(shared.start(&group, cx))).await;
            Detached(sending).await;
        }));
    }
}

/// One caller's place: its entry, and its leadership until it took the
/// batch.
struct Place<'a, F: Flush> {
    shared: &'a Arc<Shared<F>>,
    group: Group,
    id: u64,
    lead: bool,
    answered: bool,
}

impl<F: Flush> Place<'_, F> {
    /// As the leader: takes the gate's batch and starts it.
    async fn send_batch(&mut self) -> Option<Boxed<'static, ()>> {
        let sending =
            std::future::poll_fn(|cx| Poll::Ready(self.shared.start(&self.group, cx))).await;
        self.lead = false;
        sending
    }
}

impl<F: Flush> Drop for Place<'_, F> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut gates = self.shared.gates();
        let Some(gate) = gates.get_mut(&self.group) else {
            return;
        };
        if self.shared.withdraw == Withdraw::Unsent {
            gate.waiting.retain(|q| q.id != self.id);
        }
        if !self.lead {
            return;
        }
        if gate.waiting.is_empty() {
            gates.remove(&self.group);
            return;
        }
        drop(gates);
        self.shared.send_later(self.group.clone());
    }
}

/// One caller counted in `active` while it lives.
struct Active<'a>(&'a AtomicUsize);

impl<'a> Active<'a> {
    /// Counts a caller in; `true` when it is the only one.
    fn count(active: &'a AtomicUsize) -> (Self, bool) {
        let before = active.fetch_add(1, Ordering::Relaxed);
        (Active(active), before == 0)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A batch's call in flight: finished by a task of its own when the leader
/// awaiting it is dropped, so the others still get their answers.
struct Detached(Option<Boxed<'static, ()>>);

impl Future for Detached {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(call) = this.0.as_mut() else {
            return Poll::Ready(());
        };
        match call.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.0 = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                drop(runtime.spawn(call));
            }
        }
    }
}
