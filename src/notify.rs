//! Notification-based waiting.
//!
//! The release script publishes on the key's release channel (plain or
//! sharded pub/sub, see `channel.rs`). Each mutex has one subscriber
//! connection (one per node on a cluster), made on the first wait,
//! subscribed to a key's channel while this process has waiters for that key (and resubscribed
//! after a reconnect). Waiters of one key queue locally in FIFO order; a
//! release message wakes only the head of the queue, so there is no
//! thundering herd inside a process. A new acquisition of a key with local
//! waiters queues behind them instead of barging.
//!
//! Nothing depends on a message arriving: every wait is also capped by the
//! holder's remaining TTL and by the retry strategy's next delay, so a lost
//! message, or a subscriber connection that is down, costs at most that.
//!
//! Sharded subscriptions follow slot moves. A node that gives a slot away
//! (resharding, `CLUSTER SETSLOT ... NODE`) drops every shard channel
//! subscription in it, telling the client only with a `sunsubscribe` push
//! that fred discards; fred re-subscribes after a reconnect, not after a
//! slot move. So while a mutex has sharded subscriptions, its manager reads
//! `CLUSTER SLOTS` every [`FOLLOW_CHECK`]; a channel whose slot is owned by
//! another node than when it was subscribed is subscribed again (fred
//! follows the `MOVED` to the new owner), and the key's head waiter tries
//! once more at once, since a release may have come while no subscription
//! was in place.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::background::Done;
use crate::channel::{Mode, ReleaseChannel};
use crate::keys::LockKeys;

/// How long a mutex lets other processes try first after its own release.
const YIELD_TO_OTHERS: Duration = Duration::from_millis(1);

/// After a failed attempt to make the subscriber connection, waiters poll
/// for this long before it is tried again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// How often a mutex with sharded subscriptions checks that their slots
/// are still on the nodes it subscribed on (one `CLUSTER SLOTS`; nothing is
/// sent while it has none).
pub(crate) const FOLLOW_CHECK: Duration = Duration::from_millis(500);

/// The waiters of one key, in FIFO order, and the channel they listen on.
struct KeyQueue {
    channel: ReleaseChannel,
    waiters: VecDeque<(u64, Arc<Notify>)>,
}

#[derive(Default)]
struct Queues {
    /// By lock key.
    keys: HashMap<String, KeyQueue>,
    /// Lock key by channel name, for the messages.
    channels: HashMap<String, String>,
    next_id: u64,
}

struct Shared {
    queues: Mutex<Queues>,
    /// How many keys have waiters: lets an acquisition skip the lock in the
    /// usual case of none.
    keys_waited: std::sync::atomic::AtomicUsize,
    /// Marked when the manager has stopped for good (the mutex closed).
    stopped: Done,
    /// The mutex's id: a release message carrying it was sent by this
    /// mutex while other processes' waiters listened too.
    id: Arc<str>,
}

impl Shared {
    fn queues(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the head waiter of `key`, if any.
    fn wake_head(&self, key: &str) {
        let queues = self.queues();
        if let Some((_, notify)) = queues.keys.get(key).and_then(|q| q.waiters.front()) {
            notify.notify_one();
        }
    }

    /// Wakes the head waiter of the key whose channel is `channel`.
    fn wake_channel(&self, channel: &str) -> Option<String> {
        let key = self.queues().channels.get(channel).cloned()?;
        self.wake_head(&key);
        Some(key)
    }
}

enum Op {
    Subscribe(ReleaseChannel, oneshot::Sender<bool>),
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
}

impl Waiters {
    pub(crate) fn new(client: Client, timeout: Duration, id: Arc<str>, mode: Arc<Mode>) -> Self {
        Waiters {
            shared: Arc::new(Shared {
                queues: Mutex::new(Queues::default()),
                keys_waited: std::sync::atomic::AtomicUsize::new(0),
                stopped: Done::default(),
                id,
            }),
            ops: Arc::new(Mutex::new(None)),
            client,
            timeout,
            mode,
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

    /// Starts the manager task on `home`. A manager started again (its old runtime stopped) subscribes at once to
    /// every key that has waiters.
    pub(crate) fn start(&self, home: &Handle) {
        let (tx, rx) = mpsc::unbounded_channel();
        // Under the queue lock, so no join or leave slips between the list
        // of keys and the new channel.
        let queues = self.shared.queues();
        for queue in queues.keys.values() {
            let (ack, _) = oneshot::channel();
            let _ = tx.send(Op::Subscribe(queue.channel.clone(), ack));
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

    /// `true` when this process has waiters queued for `key`.
    pub(crate) fn has_waiters(&self, key: &str) -> bool {
        self.shared
            .keys_waited
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
            && self.shared.queues().keys.contains_key(key)
    }

    /// Joins the queue of the lock `keys`. The first waiter of a key asks
    /// for the subscription; [`Ticket::subscribed`] waits for it.
    pub(crate) fn join(&self, keys: &LockKeys) -> Ticket<'_> {
        let key = keys.lock.as_str();
        let notify = Arc::new(Notify::new());
        let mut queues = self.shared.queues();
        queues.next_id += 1;
        let id = queues.next_id;
        let subscribed = if queues.keys.contains_key(key) {
            None
        } else {
            let channel = ReleaseChannel::of(keys, self.mode.sharded(&self.client));
            self.shared
                .keys_waited
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            queues.channels.insert(channel.name.clone(), key.to_owned());
            let (ack, rx) = oneshot::channel();
            // Sent under the queue lock: subscribe and unsubscribe requests
            // of one key reach the manager in the order they were decided.
            self.send(Op::Subscribe(channel.clone(), ack));
            queues.keys.insert(
                key.to_owned(),
                KeyQueue {
                    channel,
                    waiters: VecDeque::new(),
                },
            );
            Some(rx)
        };
        if let Some(queue) = queues.keys.get_mut(key) {
            queue.waiters.push_back((id, Arc::clone(&notify)));
        }
        drop(queues);
        Ticket {
            waiters: self,
            key: key.to_owned(),
            id,
            notify,
            subscribed,
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

/// A waiter's place in a key's local queue. Dropped, it leaves the queue;
/// the last waiter of a key drops the subscription.
pub(crate) struct Ticket<'a> {
    waiters: &'a Waiters,
    key: String,
    id: u64,
    notify: Arc<Notify>,
    subscribed: Option<oneshot::Receiver<bool>>,
    acquired: bool,
}

impl Ticket<'_> {
    /// For the waiter that asked for the subscription: waits (at most
    /// `limit`) until it is in place. `true` when it is: the caller must then
    /// try again at once, since a release may have come before it.
    pub(crate) async fn subscribed(&mut self, limit: Duration) -> bool {
        match self.subscribed.take() {
            Some(rx) => matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(true))),
            None => false,
        }
    }

    /// Waits until woken by a release message (`true`) or for `cap`
    /// (`false`).
    pub(crate) async fn wait(&self, cap: Duration) -> bool {
        tokio::time::timeout(cap, self.notify.notified())
            .await
            .is_ok()
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
        let Some(queue) = queues.keys.get_mut(&self.key) else {
            return;
        };
        let was_head = queue.waiters.front().is_some_and(|(id, _)| *id == self.id);
        queue.waiters.retain(|(id, _)| *id != self.id);
        if queue.waiters.is_empty() {
            if let Some(queue) = queues.keys.remove(&self.key) {
                queues.channels.remove(&queue.channel.name);
                self.waiters.send(Op::Unsubscribe(queue.channel));
            }
            self.waiters
                .shared
                .keys_waited
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        } else if was_head && !self.acquired {
            // We may have taken a wake-up meant for the head: pass it on.
            if let Some((_, next)) = queue.waiters.front() {
                next.notify_one();
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
                Ok(message) => on_message(&shared, &message),
                // Messages were dropped: wake every head (a spurious attempt
                // costs one command; a missed wake-up costs a wait).
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let keys: Vec<String> = shared.queues().keys.keys().cloned().collect();
                    for key in keys {
                        shared.wake_head(&key);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => messages = None,
            },
        }
    }
    if let Some(s) = subscriber {
        let _ = tokio::time::timeout(timeout, s.quit()).await;
    }
    shared.stopped.mark();
}

/// Wakes the head waiter of the released key; after our own release, with
/// other processes waiting, only a moment later: the other processes get
/// the first try, so that processes take turns instead of the releaser
/// winning every race.
fn on_message(shared: &Arc<Shared>, message: &fred::types::Message) {
    let ours = message.value.as_str().is_some_and(|v| *v == *shared.id);
    if !ours {
        shared.wake_channel(&message.channel);
        return;
    }
    let Some(key) = shared.queues().channels.get(&*message.channel).cloned() else {
        return;
    };
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        tokio::time::sleep(YIELD_TO_OTHERS).await;
        shared.wake_head(&key);
    });
}

async fn recv(
    rx: &mut Option<tokio::sync::broadcast::Receiver<fred::types::Message>>,
) -> Result<fred::types::Message, tokio::sync::broadcast::error::RecvError> {
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
        Op::Subscribe(channel, ack) => {
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
            let _ = ack.send(ok);
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
        shared.wake_channel(&channel);
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
        Err(e) if crate::error::redirect_not_followed(&e) => subscriber.ssubscribe(channel).await,
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
