//! The release script (`release.lua`): compare-and-delete or hand-off, per
//! slot or across the slots of one node.

use std::sync::LazyLock;
use std::time::Duration;

use fred::clients::Client;
use fred::types::scripts::Script;
use fred::types::Value;

use crate::policy::error::Error;
use crate::protocol::channel::{PubSub, ReleaseChannel};
use crate::protocol::keys::LockKeys;

use super::*;

pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(lua!("release")));

/// One release: the lock, its token, and a queue member to remove first
/// (a waiter that gave up; empty for none).
pub(crate) type Releasing<'a> = (&'a LockKeys, &'a str, &'a str);

/// Compare-and-delete (or hand to the next queued waiter) for a batch of
/// releases, all in one cluster slot; one answer per entry, in order.
///
/// Sent once: fred does not re-send it after a reconnect. A re-send could
/// answer "gone" for a release that did delete the key (its reply lost), or
/// run after another holder took the key; with a single send, every answer
/// is the answer to this release, and a lost reply is a transient error
/// ("unknown"), never a wrong answer. A `MOVED` (nothing ran) is followed to
/// the slot's new owner. An `ASK` is not: fred 10.1 sends the command back
/// to the old owner, which answers `ASK` again until the redirections run
/// out (a transient error; the slot's move ends soon).
pub(crate) async fn release(
    client: &Client,
    entries: &[Releasing<'_>],
    pubsub: PubSub,
    timeout: Duration,
) -> Result<Vec<Compared>, Error> {
    send(client, entries, pubsub, false, timeout).await
}

/// One release call of `entries`, per slot or (`across_slots`) cross-slot.
async fn send(
    client: &Client,
    entries: &[Releasing<'_>],
    pubsub: PubSub,
    across_slots: bool,
    timeout: Duration,
) -> Result<Vec<Compared>, Error> {
    let first = entries
        .first()
        .map_or("", |(keys, _, _)| keys.lock.as_str());
    let (script_keys, args) = release_call(entries, pubsub);
    let reply = if across_slots {
        let call = (first, script_keys);
        run_cross_slot(client, &RELEASE_CROSS_SLOT, call, args, true, timeout).await?
    } else {
        run_once(client, &RELEASE, first, script_keys, args, timeout).await?
    };
    release_answers(first, entries, reply)
}

/// The keys and arguments of one release call.
pub(super) fn release_call(entries: &[Releasing<'_>], pubsub: PubSub) -> (Vec<Value>, Vec<Value>) {
    let sharded = pubsub.sharded();
    let mut script_keys = Vec::with_capacity(entries.len() * 2);
    let mut args = Vec::with_capacity(2 + entries.len() * 3);
    args.push(Value::from(pubsub.arg()));
    args.push(Value::from(
        entries.first().map_or("", |(_, token, _)| *token),
    ));
    for (keys, token, leave) in entries {
        script_keys.push(Value::from(keys.lock.as_str()));
        script_keys.push(Value::from(binary_key(keys.queue())));
        // Plain channels (`<key>:released`) are derived by the script
        // itself; only shard channels, whose slot tag needs the client's
        // table, are sent.
        let channel = if sharded {
            ReleaseChannel::of(keys, true).name
        } else {
            String::new()
        };
        args.extend([
            Value::from(*token),
            Value::from(channel),
            Value::from(*leave),
        ]);
    }
    (script_keys, args)
}

/// The answers of a release call, one per entry.
pub(super) fn release_answers(
    first: &str,
    entries: &[Releasing<'_>],
    reply: Value,
) -> Result<Vec<Compared>, Error> {
    let echo = entries.first().map_or("", |(_, token, _)| *token);
    let reply = checked(reply, echo).ok_or_else(|| mismatched(first, "release"))?;
    if reply.len() != entries.len() {
        return Err(unexpected(first, "release", reply));
    }
    Ok(reply.into_iter().map(Compared::from_reply).collect())
}

/// `release.lua` declared cross-slot, like [`EXTEND_CROSS_SLOT`], with
/// every key touched before anything is written (`cross_slot_check.lua`).
pub(super) static RELEASE_CROSS_SLOT: LazyLock<Script> = cross_slot!(
    ",allow-oom",
    include_str!("cross_slot_check.lua"),
    lua!("release")
);

/// [`release`] of entries in several slots of one cluster node, in one
/// call (Redis 7.0+). A call the node refuses ran nothing (see
/// [`refused_across_slots`]): the caller sends the entries per slot.
pub(crate) async fn release_cross_slot(
    client: &Client,
    entries: &[Releasing<'_>],
    pubsub: PubSub,
    timeout: Duration,
) -> Result<Vec<Compared>, Error> {
    send(client, entries, pubsub, true, timeout).await
}
