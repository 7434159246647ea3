//! Sharded subscriptions follow slot moves: which node owned each
//! channel's slot when it was subscribed, and subscribing again where the
//! slot went.

use std::collections::HashMap;
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, PubsubInterface};

use super::queues::Shared;

/// The sharded subscriptions in place, each with its slot and the id of
/// the node that owned the slot when it was made.
#[derive(Default)]
pub(super) struct Followed {
    pub(super) channels: HashMap<String, (u16, Option<String>)>,
}

impl Followed {
    /// Notes a sharded subscription just made by `subscriber`, on the node
    /// its routing table names for the channel's slot (after a `MOVED`,
    /// fred has updated the table before it answers).
    pub(super) fn subscribed(&mut self, subscriber: &SubscriberClient, channel: &str) {
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
pub(super) fn slot_owners(reply: fred::types::Value) -> Vec<(u16, u16, String)> {
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
pub(super) async fn follow(
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
pub(super) async fn ssubscribe(
    subscriber: &SubscriberClient,
    channel: &str,
    timeout: Duration,
) -> bool {
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
pub(super) async fn ssubscribe_once_more_after_moved(
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

#[cfg(test)]
mod tests {
    use super::*;
    use fred::types::Value;

    pub(super) fn node(host: &str, port: i64, id: &str) -> Value {
        Value::Array(vec![
            Value::from(host),
            Value::Integer(port),
            Value::from(id),
        ])
    }

    #[test]
    pub(super) fn slot_owners_reads_each_ranges_master_id() {
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
