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
//! `acquire.rs`), and after the subscriber reconnects, or when messages were
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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, Notify};

use crate::protocol::background::Done;
use crate::protocol::channel::{Mode, PubSub, ReleaseChannel};
use crate::protocol::keys::LockKeys;

/// After a failed attempt to make the subscriber connection, waiters poll
/// for this long before it is tried again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// How often a mutex with sharded subscriptions checks that their slots
/// are still on the nodes it subscribed on (one `CLUSTER SLOTS`; nothing is
/// sent while it has none).
pub(crate) const FOLLOW_CHECK: Duration = Duration::from_millis(500);

/// Where a channel's subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subscription {
    Pending,
    InPlace,
    Failed,
}

/// One waiter's wake-up.
struct Slot {
    notify: Notify,
    /// Set (before the notify) when the lock was handed to this waiter.
    handed: AtomicBool,
}

struct Waiter {
    id: u64,
    /// The waiter's token, on a handoff channel.
    token: Option<String>,
    slot: Arc<Slot>,
}

/// The waiters on one channel, in the order they joined.
struct ChannelQueue {
    channel: ReleaseChannel,
    /// A handoff channel (messages name a waiter's token), or a release
    /// channel (messages wake the head).
    handoff: bool,
    waiters: VecDeque<Waiter>,
    subscription: watch::Sender<Subscription>,
    /// When a handoff message last arrived on this channel.
    last_handoff: Option<Instant>,
    /// When a waiter of this channel last joined or polled the lock's
    /// queue in Redis (which keeps the queue alive: see `queue.rs`).
    last_refresh: Option<Instant>,
    /// Whether hand-offs on this channel were counted by the script that
    /// made them (see [`PubSub::counts_receivers`]), as the subscription
    /// was made.
    counted: bool,
}

impl ChannelQueue {
    /// Whether the waiter `id` is the first of this queue.
    fn led_by(&self, id: u64) -> bool {
        self.waiters.front().is_some_and(|w| w.id == id)
    }
}

#[derive(Default)]
struct Queues {
    /// By channel name.
    channels: HashMap<String, ChannelQueue>,
    next_id: u64,
}

struct Shared {
    queues: Mutex<Queues>,
    /// How many channels have waiters: lets an acquisition skip the lock in
    /// the usual case of none.
    channels_waited: AtomicUsize,
    /// Marked when the manager has stopped for good (the mutex closed).
    stopped: Done,
}

impl Shared {
    fn queues(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A message on `channel`: wakes the waiter it hands the lock to, or
    /// the head waiter of a release channel.
    fn on_message(&self, channel: &str, value: Option<&str>) {
        let mut queues = self.queues();
        let Some(queue) = queues.channels.get_mut(channel) else {
            return;
        };
        if !queue.handoff {
            if let Some(head) = queue.waiters.front() {
                head.slot.notify.notify_one();
            }
            return;
        }
        queue.last_handoff = Some(Instant::now());
        let to = value.and_then(|token| {
            queue
                .waiters
                .iter()
                .find(|w| w.token.as_deref() == Some(token))
        });
        if let Some(waiter) = to {
            waiter.slot.handed.store(true, Ordering::SeqCst);
            waiter.slot.notify.notify_one();
        }
    }

    /// Wakes every waiter of `channel` (all channels when `None`) to try
    /// once more: messages may have been missed.
    fn wake_all(&self, channel: Option<&str>) {
        let queues = self.queues();
        let woken = queues
            .channels
            .iter()
            .filter(|(name, _)| channel.is_none_or(|c| c == name.as_str()));
        for (_, queue) in woken {
            for waiter in &queue.waiters {
                waiter.slot.notify.notify_one();
            }
        }
    }
}

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

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The lock was handed to this waiter (handoff channel).
    HandedOff,
    /// A release message, or a hint to try once more (messages may have
    /// been missed).
    Woken,
    /// The cap passed.
    TimedOut,
}

/// A waiter's place in a channel's local queue. Dropped, it leaves the
/// queue; the last waiter of a channel drops the subscription.
pub(crate) struct Ticket<'a> {
    waiters: &'a Waiters,
    channel: String,
    id: u64,
    slot: Arc<Slot>,
    subscription: watch::Receiver<Subscription>,
    /// This ticket's join asked for the subscription.
    asked: bool,
    acquired: bool,
}

impl Ticket<'_> {
    /// Waits (at most `limit`) until the channel's subscription is in place
    /// or has failed; `true` when it is in place.
    pub(crate) async fn ready(&mut self, limit: Duration) -> bool {
        let settled = self.subscription.wait_for(|s| *s != Subscription::Pending);
        matches!(
            tokio::time::timeout(limit, settled).await,
            Ok(Ok(s)) if *s == Subscription::InPlace
        )
    }

    /// For the waiter that asked for the subscription: waits (at most
    /// `limit`) until it is in place. `true` when it is: the caller must then
    /// try again at once, since a release may have come before it.
    pub(crate) async fn subscribed(&mut self, limit: Duration) -> bool {
        std::mem::take(&mut self.asked) && self.ready(limit).await
    }

    /// Waits until woken by a message (`true`) or for `cap` (`false`).
    pub(crate) async fn wait(&self, cap: Duration) -> bool {
        self.wait_for(cap).await != Wake::TimedOut
    }

    /// Waits until woken or for `cap`, and says how the wait ended.
    pub(crate) async fn wait_for(&self, cap: Duration) -> Wake {
        let woken = tokio::time::timeout(cap, self.slot.notify.notified())
            .await
            .is_ok();
        if self.slot.handed.swap(false, Ordering::SeqCst) {
            // A stored wake-up of the hand-off is spent with it.
            Wake::HandedOff
        } else if woken {
            Wake::Woken
        } else {
            Wake::TimedOut
        }
    }

    /// `true` when this waiter is the first of its channel's local queue
    /// and either no hand-off arrived on the channel since `since` (the
    /// process's queue for this lock looks stalled) or no waiter of the
    /// channel joined or polled the Redis queue for `refresh` (it must be
    /// kept alive): this waiter polls for the process.
    pub(crate) fn should_poll(&self, since: Instant, refresh: Duration) -> bool {
        let now = Instant::now();
        self.with_queue(|queue| {
            queue.led_by(self.id)
                && (queue.last_handoff.is_none_or(|at| at < since)
                    || queue.last_refresh.is_none_or(|at| at + refresh <= now))
        })
    }

    /// A waiter of this channel joined or polled the lock's queue in Redis
    /// with a command sent at `at`.
    pub(crate) fn refreshed(&self, at: Instant) {
        let mut queues = self.waiters.shared.queues();
        if let Some(queue) = queues.channels.get_mut(&self.channel) {
            queue.last_refresh = Some(queue.last_refresh.map_or(at, |last| last.max(at)));
        }
    }

    /// Whether a hand-off that reached this waiter was counted by the script
    /// that made it, so it may be used without confirming.
    pub(crate) fn counted(&self) -> bool {
        !self.with_queue(|queue| !queue.counted)
    }

    /// `true` when this waiter is the first of its channel's local queue.
    pub(crate) fn is_first(&self) -> bool {
        self.with_queue(|queue| queue.led_by(self.id))
    }

    /// `check` on this ticket's channel queue (`true` if it is gone).
    fn with_queue(&self, check: impl FnOnce(&ChannelQueue) -> bool) -> bool {
        let queues = self.waiters.shared.queues();
        queues.channels.get(&self.channel).is_none_or(check)
    }

    /// The lock was taken: leave the queue without passing a wake-up on
    /// (the next waiter would only find the lock held).
    pub(crate) fn acquired(mut self) {
        self.acquired = true;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut queues = self.waiters.shared.queues();
        let Some(queue) = queues.channels.get_mut(&self.channel) else {
            return;
        };
        let was_head = queue.led_by(self.id);
        queue.waiters.retain(|w| w.id != self.id);
        if queue.waiters.is_empty() {
            if let Some(queue) = queues.channels.remove(&self.channel) {
                self.waiters.send(Op::Unsubscribe(queue.channel));
            }
            self.waiters
                .shared
                .channels_waited
                .fetch_sub(1, Ordering::SeqCst);
        } else if was_head && !self.acquired && !queue.handoff {
            // We may have taken a wake-up meant for the head: pass it on.
            if let Some(next) = queue.waiters.front() {
                next.slot.notify.notify_one();
            }
        }
    }
}

/// Owns the subscriber connection: applies subscription changes in order,
/// and turns release messages into wake-ups.
async fn manager(
    mut ops: mpsc::UnboundedReceiver<Op>,
    client: Client,
    timeout: Duration,
    shared: Arc<Shared>,
) {
    let mut subscriber: Option<SubscriberClient> = None;
    let mut retry_at = Instant::now();
    let mut messages = None;
    let mut reconnects = None;
    let mut followed = Followed::default();
    let mut follow_check = tokio::time::interval(FOLLOW_CHECK);
    follow_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            op = ops.recv() => {
                let Some(op) = op else { break };
                let wanted = !matches!(op, Op::Reconnect);
                if subscriber.is_none() && wanted && Instant::now() >= retry_at {
                    match connect(&client, timeout).await {
                        Some(s) => {
                            messages = Some(s.message_rx());
                            reconnects = Some(s.reconnect_rx());
                            subscriber = Some(s);
                        }
                        None => retry_at = Instant::now() + RECONNECT_PAUSE,
                    }
                }
                apply(subscriber.as_ref(), op, timeout, &mut followed).await;
            }
            _ = follow_check.tick(), if !followed.channels.is_empty() => {
                if let Some(s) = subscriber.as_ref() {
                    follow(&client, s, timeout, &mut followed, &shared).await;
                }
            }
            message = recv(&mut messages), if messages.is_some() => match message {
                Ok(message) => {
                    let value = message.value.as_str();
                    shared.on_message(&message.channel, value.as_deref());
                }
                // Messages were dropped: every waiter tries once more (a
                // spurious attempt costs one command; a missed wake-up
                // costs a wait).
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => shared.wake_all(None),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => messages = None,
            },
            // Reconnected (and resubscribed by fred): messages sent
            // meanwhile were lost, and a hand-off to one of our waiters
            // then skipped it; each tries (and queues) once more.
            reconnected = recv(&mut reconnects), if reconnects.is_some() => match reconnected {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    shared.wake_all(None)
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => reconnects = None,
            },
        }
    }
    if let Some(s) = subscriber {
        let _ = tokio::time::timeout(timeout, s.quit()).await;
    }
    shared.stopped.mark();
}

async fn recv<T: Clone>(
    rx: &mut Option<tokio::sync::broadcast::Receiver<T>>,
) -> Result<T, tokio::sync::broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn apply(
    subscriber: Option<&SubscriberClient>,
    op: Op,
    timeout: Duration,
    followed: &mut Followed,
) {
    match op {
        Op::Subscribe(channel, subscription) => {
            let ok = match subscriber {
                // SSUBSCRIBE is answered by the node that owns the channel's
                // slot, once it has subscribed. fred answers SUBSCRIBE once it
                // is queued, not once Redis has it; a PING behind it on the
                // same connection answers only after Redis has subscribed.
                Some(s) => match tokio::time::timeout(timeout, async {
                    if channel.sharded {
                        ssubscribe_once_more_after_moved(s, &channel.name).await
                    } else {
                        s.subscribe(channel.name.as_str()).await?;
                        s.ping::<fred::types::Value>(None).await.map(drop)
                    }
                })
                .await
                {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) if e.details().starts_with("NOPERM") => {
                        tracing::warn!(
                            channel = %channel.name,
                            error = %e,
                            "the Redis user may not subscribe to the release channel (NOPERM); \
                             waiters poll instead: grant the channel pattern (&<prefix>*) as the \
                             README's \"ACL user\" section shows"
                        );
                        false
                    }
                    _ => false,
                },
                None => false,
            };
            if ok && channel.sharded {
                if let Some(s) = subscriber {
                    followed.subscribed(s, &channel.name);
                }
            }
            subscription.send_replace(if ok {
                Subscription::InPlace
            } else {
                Subscription::Failed
            });
        }
        Op::Reconnect => {
            if let Some(s) = subscriber {
                let _ = tokio::time::timeout(timeout, s.force_reconnection()).await;
            }
        }
        Op::Unsubscribe(channel) => {
            followed.channels.remove(&channel.name);
            if let Some(s) = subscriber {
                let name = channel.name.as_str();
                let _ = if channel.sharded {
                    tokio::time::timeout(timeout, s.sunsubscribe(name)).await
                } else {
                    tokio::time::timeout(timeout, s.unsubscribe(name)).await
                };
            }
        }
    }
}

/// The sharded subscriptions in place, each with its slot and the id of
/// the node that owned the slot when it was made.
#[derive(Default)]
struct Followed {
    channels: HashMap<String, (u16, Option<String>)>,
}

impl Followed {
    /// Notes a sharded subscription just made by `subscriber`, on the node
    /// its routing table names for the channel's slot (after a `MOVED`,
    /// fred has updated the table before it answers).
    fn subscribed(&mut self, subscriber: &SubscriberClient, channel: &str) {
        let slot = fred::util::redis_keyslot(channel.as_bytes());
        let node = subscriber
            .inner()
            .with_cluster_state(|routing| {
                Ok(routing
                    .slots()
                    .iter()
                    .find(|range| range.start <= slot && slot <= range.end)
                    .map(|range| range.id.to_string()))
            })
            .ok()
            .flatten();
        self.channels.insert(channel.to_owned(), (slot, node));
    }
}

/// `(first slot, last slot, master's node id)` of every range in a
/// `CLUSTER SLOTS` reply (`[[start, end, [host, port, id, ...], ...], ...]`);
/// ranges it cannot read are left out.
fn slot_owners(reply: fred::types::Value) -> Vec<(u16, u16, String)> {
    use fred::types::Value;
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    ranges
        .into_iter()
        .filter_map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let start = u16::try_from(fields.first()?.as_i64()?).ok()?;
            let end = u16::try_from(fields.get(1)?.as_i64()?).ok()?;
            let Some(Value::Array(master)) = fields.get(2) else {
                return None;
            };
            let id = master.get(2)?.as_string()?;
            Some((start, end, id))
        })
        .collect()
}

/// Subscribes again to every sharded channel whose slot has moved to
/// another node since it was subscribed (the old owner dropped the
/// subscription), and wakes its key's head waiter to try once more. A
/// channel whose subscription fails now is tried again at the next check.
async fn follow(
    client: &Client,
    subscriber: &SubscriberClient,
    timeout: Duration,
    followed: &mut Followed,
    shared: &Shared,
) {
    use fred::types::{ClusterHash, CustomCommand};
    let slots = tokio::time::timeout(
        timeout,
        client.custom::<fred::types::Value, _>(
            CustomCommand::new_static("CLUSTER", ClusterHash::Random, false),
            vec!["SLOTS"],
        ),
    )
    .await;
    let Some(Ok(reply)) = slots.ok() else {
        return;
    };
    let owners = slot_owners(reply);
    let owner = |slot: u16| {
        owners
            .iter()
            .find(|(start, end, _)| *start <= slot && slot <= *end)
            .map(|(_, _, id)| id)
    };
    let moved: Vec<String> = followed
        .channels
        .iter()
        .filter(|(_, (slot, node))| owner(*slot).is_some_and(|now| Some(now) != node.as_ref()))
        .map(|(channel, _)| channel.clone())
        .collect();
    for channel in moved {
        let ok = ssubscribe(subscriber, &channel, timeout).await;
        tracing::debug!(channel = %channel, resubscribed = ok, "release channel's slot moved");
        if ok {
            followed.subscribed(subscriber, &channel);
        }
        shared.wake_all(Some(&channel));
    }
}

/// `SSUBSCRIBE channel`, bounded by `timeout`; `true` when it is in place.
async fn ssubscribe(subscriber: &SubscriberClient, channel: &str, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(
            timeout,
            ssubscribe_once_more_after_moved(subscriber, channel)
        )
        .await,
        Ok(Ok(()))
    )
}

/// `SSUBSCRIBE channel`, sent once more when the node answered `MOVED`.
/// fred makes its `SSUBSCRIBE` with one attempt, so it does not follow a
/// redirection (it answers "too many failed write attempts" instead), but
/// it has updated its slot table by then: sent again, it goes to the slot's
/// new owner.
async fn ssubscribe_once_more_after_moved(
    subscriber: &SubscriberClient,
    channel: &str,
) -> Result<(), fred::error::Error> {
    match subscriber.ssubscribe(channel).await {
        Err(e) if crate::policy::error::redis::redirect_not_followed(&e) => {
            subscriber.ssubscribe(channel).await
        }
        other => other,
    }
}

/// Makes the subscriber connection, with the main client's settings.
async fn connect(client: &Client, timeout: Duration) -> Option<SubscriberClient> {
    let mut builder = fred::types::Builder::from_config(client.client_config());
    builder
        .set_connection_config(client.connection_config().clone())
        .set_performance_config(fred::types::config::PerformanceConfig {
            broadcast_channel_capacity: 4096,
            ..client.perf_config()
        });
    if let Some(policy) = client.client_reconnect_policy() {
        builder.set_policy(policy);
    }
    let subscriber = builder.build_subscriber_client().ok()?;
    match tokio::time::timeout(timeout, subscriber.init()).await {
        Ok(Ok(_)) => {
            drop(subscriber.manage_subscriptions());
            Some(subscriber)
        }
        outcome => {
            tracing::debug!(
                error = ?outcome.ok().and_then(|r| r.err()),
                "release notifications unavailable (subscriber connection failed); waiting by polling"
            );
            let _ = subscriber.quit().await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::types::Value;

    fn node(host: &str, port: i64, id: &str) -> Value {
        Value::Array(vec![
            Value::from(host),
            Value::Integer(port),
            Value::from(id),
        ])
    }

    #[test]
    fn slot_owners_reads_each_ranges_master_id() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Integer(0),
                Value::Integer(221),
                node("127.0.0.1", 7000, "a"),
                node("127.0.0.1", 7003, "a-replica"),
            ]),
            Value::Array(vec![
                Value::Integer(222),
                Value::Integer(222),
                node("127.0.0.1", 7001, "b"),
            ]),
            // Unreadable ranges are left out.
            Value::Array(vec![Value::Integer(223)]),
            Value::from("junk"),
        ]);
        assert_eq!(
            slot_owners(reply),
            vec![(0, 221, "a".to_owned()), (222, 222, "b".to_owned())]
        );
        assert!(slot_owners(Value::from("OK")).is_empty());
        assert!(slot_owners(Value::Null).is_empty());
    }
}
