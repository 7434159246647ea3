//! The manager task: owns the subscriber connection, applies subscription
//! changes in order, and turns messages into wake-ups.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Message;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::follow::{follow, ssubscribe_once_more_after_moved, Followed};
use super::queues::{Shared, Subscription};
use super::{Op, FOLLOW_CHECK, RECONNECT_PAUSE};
use crate::protocol::channel::ReleaseChannel;

/// Owns the subscriber connection: applies subscription changes in order,
/// and turns release messages into wake-ups.
pub(super) async fn manager(
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
            message = recv(&mut messages), if messages.is_some() => {
                if !on_message(&shared, message) {
                    messages = None;
                }
            }
            reconnected = recv(&mut reconnects), if reconnects.is_some() => {
                if !on_reconnect(&shared, reconnected) {
                    reconnects = None;
                }
            }
        }
    }
    if let Some(s) = subscriber {
        let _ = tokio::time::timeout(timeout, s.quit()).await;
    }
    shared.stopped.mark();
}

/// A message (or news of messages dropped) from the subscriber connection;
/// `false` once its stream closed.
fn on_message(shared: &Shared, message: Result<Message, RecvError>) -> bool {
    match message {
        Ok(message) => {
            let value = message.value.as_str();
            shared.on_message(&message.channel, value.as_deref());
        }
        // Messages were dropped: every waiter tries once more (a spurious
        // attempt costs one command; a missed wake-up costs a wait).
        Err(RecvError::Lagged(_)) => shared.wake_all(None),
        Err(RecvError::Closed) => return false,
    }
    true
}

/// The subscriber reconnected (and fred resubscribed): messages sent
/// meanwhile were lost, and a hand-off to one of our waiters then skipped
/// it; each tries (and queues) once more. `false` once the stream closed.
fn on_reconnect<T>(shared: &Shared, reconnected: Result<T, RecvError>) -> bool {
    match reconnected {
        Ok(_) | Err(RecvError::Lagged(_)) => shared.wake_all(None),
        Err(RecvError::Closed) => return false,
    }
    true
}

async fn recv<T: Clone>(
    rx: &mut Option<tokio::sync::broadcast::Receiver<T>>,
) -> Result<T, RecvError> {
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
                Some(s) => subscribe(s, &channel, timeout).await,
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

/// Subscribes `s` to `channel`: `true` once Redis has the subscription.
async fn subscribe(s: &SubscriberClient, channel: &ReleaseChannel, timeout: Duration) -> bool {
    // SSUBSCRIBE is answered by the node that owns the channel's slot, once
    // it has subscribed. fred answers SUBSCRIBE once it is queued, not once
    // Redis has it; a PING behind it on the same connection answers only
    // after Redis has subscribed.
    match tokio::time::timeout(timeout, async {
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
    }
}

/// Makes the subscriber connection, with the main client's settings.
pub(super) async fn connect(client: &Client, timeout: Duration) -> Option<SubscriberClient> {
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
