//! Notification-based waiting: the local side of the wait queues.
//!
//! Each mutex has one subscriber connection (one per node on a cluster),
//! made on the first wait, subscribed to a channel while this process has
//! waiters on it (and resubscribed after a reconnect). Two kinds of channel:
//!
//! * a lock's **handoff channel** of this mutex (`P {T}:handoff:<id>:K`, see
//!   `queue.rs`): exclusive-lock waiters queue in Redis, and the release
//!   script hands the lock to the queue's head and publishes that waiter's
//!   token on its mutex's handoff channel; the message wakes exactly that
//!   waiter. A message for a token with no waiter here (the waiter gave up:
//!   its leave, queued to the release worker, passes the lock on) is
//!   dropped.
//! * a lock's **release channel** (`channel.rs`), for waiters that do not
//!   queue in Redis: a release with no one queued publishes there, and the
//!   message wakes the head of the local FIFO of that channel.
//!
//! Nothing depends on a message arriving: every wait is also capped (see
//! `api/acquire.rs`), and after the subscriber reconnects, or when messages were
//! dropped, every waiter is woken to try once more.
//!
//! Sharded subscriptions follow slot moves. A node that gives a slot away
//! (resharding, `CLUSTER SETSLOT ... NODE`) drops every shard channel
//! subscription in it, telling the client only with a `sunsubscribe` push
//! that fred discards; fred re-subscribes after a reconnect, not after a
//! slot move. So while a mutex has sharded subscriptions, its manager reads
//! `CLUSTER SLOTS` every [`FOLLOW_CHECK`]; a channel whose slot is owned by
//! another node than when it was subscribed is subscribed again (fred
//! follows the `MOVED` to the new owner), and the channel's waiters try
//! once more at once, since a release may have come while no subscription
//! was in place.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fred::clients::Client;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, Notify};

use crate::protocol::background::Done;
use crate::protocol::channel::{Mode, PubSub, ReleaseChannel};
use crate::protocol::keys::LockKeys;

mod follow;
mod manager;
mod queues;
mod ticket;

use manager::manager;
use queues::{ChannelQueue, Queues, Shared, Slot, Subscription, Waiter};
pub(crate) use ticket::{Ticket, Wake};

/// After a failed attempt to make the subscriber connection, waiters poll
/// for this long before it is tried again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// How often a mutex with sharded subscriptions checks that their slots
/// are still on the nodes it subscribed on (one `CLUSTER SLOTS`; nothing is
/// sent while it has none).
pub(crate) const FOLLOW_CHECK: Duration = Duration::from_millis(500);

enum Op {
    Subscribe(ReleaseChannel, watch::Sender<Subscription>),
    Unsubscribe(ReleaseChannel),
    /// The master changed (Sentinel): reconnect the subscriber, which asks
    /// the sentinels for the master again and resubscribes.
    Reconnect,
}

type Ops = Arc<Mutex<Option<mpsc::UnboundedSender<Op>>>>;

/// The local wait queues of one mutex, and its subscriber.
pub(crate) struct Waiters {
    shared: Arc<Shared>,
    /// Requests to the manager task of the current home runtime; `None`
    /// before it starts and after the mutex closes.
    ops: Ops,
    client: Client,
    timeout: Duration,
    /// Plain or sharded pub/sub (decided once the server is known).
    mode: Arc<Mode>,
    /// The mutex's id: names its handoff channels.
    id: Arc<str>,
}

impl Waiters {
    pub(crate) fn new(client: Client, timeout: Duration, id: Arc<str>, mode: Arc<Mode>) -> Self {
        Waiters {
            shared: Arc::new(Shared {
                queues: Mutex::new(Queues::default()),
                channels_waited: AtomicUsize::new(0),
                stopped: Done::default(),
            }),
            ops: Arc::new(Mutex::new(None)),
            client,
            timeout,
            mode,
            id,
        }
    }

    fn ops(&self) -> MutexGuard<'_, Option<mpsc::UnboundedSender<Op>>> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, op: Op) {
        if let Some(ops) = self.ops().as_ref() {
            let _ = ops.send(op);
        }
    }

    /// The mutex's id (names its handoff channels).
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Whether hand-offs and release messages use sharded pub/sub.
    pub(crate) fn sharded(&self) -> bool {
        self.mode.sharded(&self.client)
    }

    /// How hand-offs and release messages travel (see [`PubSub`]).
    pub(crate) fn pubsub(&self) -> PubSub {
        self.mode.get(&self.client)
    }

    /// Decides the pub/sub mode from what the servers support, if not yet
    /// done (one command, once per mutex on a cluster).
    pub(crate) async fn settle(&self) {
        self.mode.settle(&self.client, self.timeout).await;
    }

    /// Starts the manager task on `home`. A manager started again (its old
    /// runtime stopped) subscribes at once to every channel that has
    /// waiters.
    pub(crate) fn start(&self, home: &Handle) {
        let (tx, rx) = mpsc::unbounded_channel();
        // Under the queue lock, so no join or leave slips between the list
        // of channels and the new sender.
        let queues = self.shared.queues();
        for queue in queues.channels.values() {
            let _ = tx.send(Op::Subscribe(
                queue.channel.clone(),
                queue.subscription.clone(),
            ));
        }
        *self.ops() = Some(tx);
        drop(queues);
        home.spawn(manager(
            rx,
            self.client.clone(),
            self.timeout,
            Arc::clone(&self.shared),
        ));
    }

    /// Closes the subscriber connection; waiting falls back to polling.
    pub(crate) fn close(&self) {
        if self.ops().take().is_none() {
            // No manager runs: nothing to close.
            self.shared.stopped.mark();
        }
    }

    /// Completes when the manager has stopped after [`close`](Self::close).
    pub(crate) async fn closed(&self) {
        self.shared.stopped.wait().await;
    }

    /// A handle that reconnects the subscriber connection (if one is made).
    pub(crate) fn reconnect_handle(&self) -> Reconnect {
        Reconnect(Arc::clone(&self.ops))
    }

    /// `true` when this process has exclusive-lock waiters queued for the
    /// lock `keys` (so a new acquisition joins the queue at once).
    pub(crate) fn has_queue(&self, keys: &LockKeys) -> bool {
        self.shared.channels_waited.load(Ordering::SeqCst) > 0
            && self
                .shared
                .queues()
                .channels
                .contains_key(&keys.handoff_channel(&self.id))
    }

    /// `true` when this process has waiters on the lock `keys`' release
    /// channel (waiters that do not queue in Redis).
    pub(crate) fn has_waiters(&self, keys: &LockKeys) -> bool {
        self.shared.channels_waited.load(Ordering::SeqCst) > 0
            && self
                .shared
                .queues()
                .channels
                .contains_key(&ReleaseChannel::of(keys, self.sharded()).name)
    }

    /// Joins the local FIFO of the lock `keys`' release channel (waiters
    /// that do not queue in Redis). The first waiter of a channel asks for
    /// the subscription; [`Ticket::subscribed`] waits for it.
    pub(crate) fn join(&self, keys: &LockKeys) -> Ticket<'_> {
        let pubsub = self.pubsub();
        let channel = ReleaseChannel::of(keys, pubsub.sharded());
        self.join_channel(channel, pubsub, false, None)
    }

    /// Joins the waiters of this mutex's handoff channel for the lock
    /// `keys`, as the waiter whose token is `token`.
    pub(crate) fn join_handoff(&self, keys: &LockKeys, token: &str) -> Ticket<'_> {
        let pubsub = self.pubsub();
        let channel = ReleaseChannel {
            name: keys.handoff_channel(&self.id),
            sharded: pubsub.sharded(),
        };
        self.join_channel(channel, pubsub, true, Some(token.to_owned()))
    }

    fn join_channel(
        &self,
        channel: ReleaseChannel,
        pubsub: PubSub,
        handoff: bool,
        token: Option<String>,
    ) -> Ticket<'_> {
        let slot = Arc::new(Slot {
            notify: Notify::new(),
            handed: AtomicBool::new(false),
        });
        let mut queues = self.shared.queues();
        queues.next_id += 1;
        let id = queues.next_id;
        let name = channel.name.clone();
        let asked = !queues.channels.contains_key(&name);
        let queue = queues.channels.entry(name.clone()).or_insert_with(|| {
            self.shared.channels_waited.fetch_add(1, Ordering::SeqCst);
            let (subscription, _) = watch::channel(Subscription::Pending);
            // Sent under the queue lock: subscribe and unsubscribe requests
            // of one channel reach the manager in the order they were
            // decided.
            self.send(Op::Subscribe(channel.clone(), subscription.clone()));
            ChannelQueue {
                channel,
                handoff,
                waiters: VecDeque::new(),
                subscription,
                last_handoff: None,
                last_refresh: None,
                counted: pubsub.counts_receivers(),
            }
        });
        queue.waiters.push_back(Waiter {
            id,
            token,
            slot: Arc::clone(&slot),
        });
        let subscription = queue.subscription.subscribe();
        drop(queues);
        Ticket {
            waiters: self,
            channel: name,
            id,
            slot,
            subscription,
            asked,
            acquired: false,
        }
    }
}

/// See [`Waiters::reconnect_handle`].
#[derive(Clone)]
pub(crate) struct Reconnect(Ops);

impl Reconnect {
    /// Asks the manager to reconnect the subscriber; returns at once.
    pub(crate) fn now(&self) {
        if let Some(ops) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = ops.send(Op::Reconnect);
        }
    }
}
