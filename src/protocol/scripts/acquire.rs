//! The acquire script (`acquire.lua`): an attempt, a queue join or poll,
//! and the plain `SET NX` of a first attempt.

use std::sync::LazyLock;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::scripts::Script;
use fred::types::{Key, Value};

use crate::policy::error::Error;
use crate::protocol::channel::PubSub;
use crate::protocol::confirm::MinReplicas;
use crate::protocol::keys::LockKeys;

use super::*;

pub(super) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(lua!("acquire")));
pub(super) static SET_NX: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("set_nx.lua")));
/// `set_nx.lua` declared cross-slot, like the renewal's and release's
/// cross-slot forms: the first attempts of keys in several slots of one
/// cluster node (Redis 7.0+, Valkey) in one call, every key touched before
/// anything is written (`cross_slot_check.lua`), so that a call the node
/// refuses ran nothing. No `allow-oom`: a `SET` adds a key, which an
/// out-of-memory server refuses anyway.
pub(super) static SET_NX_CROSS_SLOT: LazyLock<Script> = cross_slot!(
    "",
    include_str!("cross_slot_check.lua"),
    include_str!("set_nx.lua")
);

/// What the acquire script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The caller holds the lock (with its fencing token, when asked for).
    Yes { fencing_token: Option<u64> },
    /// Someone else holds it; `pttl` is their remaining lease, `None` when
    /// the key has no expiry (set by something other than a lock client).
    No { pttl: Option<Duration> },
    /// Someone else holds it, and the caller joined the queue.
    Queued,
}

/// How an attempt relates to the lock's wait queue (see `queue.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Queueing<'a> {
    /// Attempt only (`try_lock`, a waiter that polls without notifications).
    No,
    /// Attempt, and join the queue's tail when the lock is held. Sent once,
    /// never re-sent after a reconnect (a re-send would queue twice). With
    /// `holder_ttl`, the answer says how long the holder's lease has left
    /// (one command more in the script).
    Join {
        spot: &'a QueueSpot,
        holder_ttl: bool,
    },
    /// Attempt, and join the queue's tail unless already in it. Sent once
    /// too: a poll re-sent after the acquisition ended (taken by hand-off
    /// and released meanwhile) could take the key with a token no one
    /// releases.
    Poll(&'a QueueSpot),
}

/// A waiter's entry in a lock's wait queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueSpot {
    /// `1|<mutex id>|<claim ms>|<f or ->|<token>` (`f`: the release draws the
    /// waiter's fencing token when it hands the lock over).
    pub(crate) member: String,
}

impl Queueing<'_> {
    fn mode(&self) -> &'static str {
        match self {
            Queueing::No => "a",
            Queueing::Join {
                holder_ttl: false, ..
            } => "q",
            Queueing::Join {
                holder_ttl: true, ..
            } => "j",
            Queueing::Poll(_) => "p",
        }
    }

    fn spot(&self) -> Option<&QueueSpot> {
        match self {
            Queueing::No => None,
            Queueing::Join { spot, .. } | Queueing::Poll(spot) => Some(spot),
        }
    }
}

/// What an attempt asks for, beyond its lock: its token, lease, fencing,
/// queueing, and the pub/sub mode of the hand-offs it may make.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    pub(crate) token: &'a str,
    pub(crate) ttl_ms: u64,
    pub(crate) fencing: bool,
    pub(crate) queueing: Queueing<'a>,
    pub(crate) pubsub: PubSub,
}

/// The acquire script's keys and arguments.
pub(super) fn acquire_call(keys: &LockKeys, ask: Ask<'_>) -> (Vec<Key>, Vec<Value>) {
    let Ask {
        token,
        ttl_ms,
        fencing,
        queueing,
        pubsub,
    } = ask;
    let spot = queueing.spot();
    let script_keys = vec![
        Key::from(keys.lock.as_str()),
        binary_key(keys.fence()),
        binary_key(keys.queue()),
    ];
    let args = vec![
        Value::from(token),
        Value::from(ttl_ms as i64),
        Value::from(if fencing { "1" } else { "" }),
        Value::from(queueing.mode()),
        Value::from(spot.map_or("", |s| s.member.as_str())),
        Value::from(pubsub.arg()),
    ];
    (script_keys, args)
}

/// `SET key token NX PX ttl`, idempotent for `token`, in the lock's queue
/// order (see `acquire.lua`); with fencing, also draws the next fencing
/// token from the lock's counter.
pub(crate) async fn acquire(
    client: &Client,
    keys: &LockKeys,
    ask: Ask<'_>,
    timeout: Duration,
) -> Result<Acquired, Error> {
    let key = keys.lock.as_str();
    let Ask { token, fencing, .. } = ask;
    let (script_keys, args) = acquire_call(keys, ask);
    let reply: Value = if !matches!(ask.queueing, Queueing::No) {
        let script_keys = script_keys.into_iter().map(Value::from).collect();
        run_once(client, &ACQUIRE, key, script_keys, args, timeout).await?
    } else {
        run(client, &ACQUIRE, key, script_keys, args, timeout).await?
    };
    let reply = checked(reply, token).ok_or_else(|| mismatched(key, "acquire"))?;
    parse_acquired(key, fencing, &reply)
}

/// The acquire script with its write confirmed by `WAIT` (see
/// [`confirmed`], which sends it once): the answer, and how many replicas
/// acknowledged it.
pub(crate) async fn acquire_confirmed(
    client: &Client,
    keys: &LockKeys,
    ask: Ask<'_>,
    wait: MinReplicas,
    timeout: Duration,
) -> Result<(Acquired, u32), Error> {
    let key = keys.lock.as_str();
    let Ask { token, fencing, .. } = ask;
    let (script_keys, args) = acquire_call(keys, ask);
    let script_keys = script_keys.into_iter().map(Value::from).collect();
    let (reply, acked): (Value, u32) =
        confirmed(client, &ACQUIRE, key, script_keys, args, wait, timeout).await?;
    let reply = checked(reply, token).ok_or_else(|| mismatched(key, "acquire"))?;
    Ok((parse_acquired(key, fencing, &reply)?, acked))
}

pub(super) fn parse_acquired(key: &str, fencing: bool, reply: &[i64]) -> Result<Acquired, Error> {
    match reply {
        [1] if !fencing => Ok(Acquired::Yes {
            fencing_token: None,
        }),
        [1, fence] if fencing && *fence > 0 => Ok(Acquired::Yes {
            fencing_token: Some(*fence as u64),
        }),
        [0, pttl] if *pttl >= 0 => Ok(Acquired::No {
            pttl: Some(Duration::from_millis(*pttl as u64)),
        }),
        // -2: the key vanished between SET and PTTL: try again at once.
        [0, -2] => Ok(Acquired::No {
            pttl: Some(Duration::ZERO),
        }),
        [0, -3] => Ok(Acquired::Queued),
        [0, _] => Ok(Acquired::No { pttl: None }),
        other => Err(unexpected(key, "acquire", other)),
    }
}

/// The fast path of a first attempt: a plain `SET key token NX PX ttl`.
/// `true` when it set the key. `false` says only that the key exists (it may
/// be ours, if this command was re-sent after a reconnect): the acquire
/// script must then decide.
///
/// On a cluster, the acquire script instead: its reply names its token,
/// while `OK` could be any command's (fred 10.1 can hand a command another
/// one's reply while it follows an `ASK` redirection, during resharding).
pub(crate) async fn set_nx(
    client: &Client,
    keys: &LockKeys,
    ask: Ask<'_>,
    timeout: Duration,
) -> Result<bool, Error> {
    let Ask { token, ttl_ms, .. } = ask;
    if client.is_clustered() {
        let acquired = acquire(client, keys, ask, timeout).await?;
        return Ok(matches!(acquired, Acquired::Yes { .. }));
    }
    set_nx_one(client, &keys.lock, token, ttl_ms, timeout).await
}

/// `SET key token NX PX ttl_ms`: `true` when it set the key.
pub(crate) async fn set_nx_one(
    client: &Client,
    key: &str,
    token: &str,
    ttl_ms: u64,
    timeout: Duration,
) -> Result<bool, Error> {
    use fred::interfaces::KeysInterface;
    use fred::types::{Expiration, SetOptions};
    let set = client.set::<Option<String>, _, _>(
        key,
        token,
        Some(Expiration::PX(ttl_ms as i64)),
        Some(SetOptions::NX),
        false,
    );
    Ok(bounded(client, key, timeout, set).await?.is_some())
}

/// The first attempt of one lock in a batch: its key, token and TTL.
pub(crate) struct FirstAttempt {
    pub(crate) key: String,
    pub(crate) token: String,
    pub(crate) ttl_ms: u64,
}

/// The first attempts of several locks on one server as one call
/// (`set_nx.lua`): per lock, what [`set_nx_one`] answers.
///
/// On a cluster, the first attempts of keys that one node serves (per
/// fred's slot table) as one call of the script's cross-slot form, sent to
/// that node and never redirected: a node that does not serve every key
/// refuses the whole call before anything ran ([`refused_across_slots`]),
/// and the caller sends each attempt alone. With `preload` (a node not
/// known to have the script), `SCRIPT LOAD` goes ahead of the call in the
/// same pipeline.
pub(crate) async fn set_nx_many(
    client: &Client,
    batch: &[FirstAttempt],
    preload: bool,
    timeout: Duration,
) -> Result<Vec<bool>, Error> {
    let first = batch.first().map_or("", |a| a.key.as_str());
    let echo = batch.first().map_or("", |a| a.token.as_str());
    let keys = batch.iter().map(|a| Value::from(a.key.as_str())).collect();
    let mut args = Vec::with_capacity(1 + 2 * batch.len());
    args.push(Value::from(echo));
    for a in batch {
        args.push(Value::from(a.token.as_str()));
        args.push(Value::from(a.ttl_ms as i64));
    }
    let clustered = client.is_clustered();
    let send = async {
        if clustered {
            // Sent again after a reconnect, as a lone first attempt on a
            // cluster is: a `SET NX` sent twice answers "exists" the second
            // time, and the acquire script then finds its own token.
            let once = false;
            let call = (first, keys);
            run_cross_slot(client, &SET_NX_CROSS_SLOT, call, args, once, timeout).await
        } else {
            run_once(client, &SET_NX, first, keys, args, timeout).await
        }
    };
    let reply = if preload {
        // Both handed to the client by the first poll, the load first, to
        // the node of the call. A failed load shows as the call's own error
        // (`NOSCRIPT`, then the load's error when it is tried again).
        let script = if clustered {
            &SET_NX_CROSS_SLOT
        } else {
            &SET_NX
        };
        let slot = fred::util::redis_keyslot(first.as_bytes());
        let load = tokio::time::timeout(timeout, load(client, script, slot));
        tokio::join!(load, send).1?
    } else {
        send.await?
    };
    let reply = checked(reply, echo).ok_or_else(|| mismatched(first, "set_nx"))?;
    if reply.len() != batch.len() {
        return Err(unexpected(first, "set_nx", reply));
    }
    Ok(reply.into_iter().map(|n| n == 1).collect())
}
