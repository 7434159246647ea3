//! The extend script (`extend.lua`): extensions and renewals, per slot or
//! across the slots of one node, confirmed by `WAIT` when asked.

use std::sync::LazyLock;
use std::time::Duration;

use fred::clients::Client;
use fred::types::scripts::Script;
use fred::types::Value;

use crate::policy::error::Error;
use crate::protocol::confirm::MinReplicas;

use super::*;

pub(super) static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::from_lua(lua!("extend")));
/// `extend.lua` declared to touch keys of several cluster slots (Redis 7.0+,
/// Valkey), on the node that serves them all, the keys passed as arguments
/// by `cross_slot.lua` (see `route.rs`). `allow-oom` keeps what a script
/// without flags may do: renew under `maxmemory` (it adds nothing).
pub(super) static EXTEND_CROSS_SLOT: LazyLock<Script> = cross_slot!(",allow-oom", lua!("extend"));

/// Compare-and-pexpire for a batch of `(key, token, ttl_ms)`, all in one
/// cluster slot; one answer per entry, in order. A `renewal` never shortens
/// a lease (see `extend.lua`).
pub(crate) async fn extend(
    client: &Client,
    entries: &[(&str, &str, u64)],
    renewal: bool,
    timeout: Duration,
) -> Result<Vec<Compared>, Error> {
    let first = entries.first().map_or("", |e| e.0);
    let keys: Vec<&str> = entries.iter().map(|e| e.0).collect();
    let args = extend_args(entries, renewal);
    let reply: Value = run(client, &EXTEND, first, keys, args, timeout).await?;
    parse_extended(first, entries, reply)
}

/// A renewal ([`extend`] with `renewal`) of keys of several slots served
/// by one cluster node, in one call of the script declared cross-slot (only
/// the first key declared: Redis refuses declared keys of several slots
/// with `CROSSSLOT`, whatever the script's flags). Sent to the node fred's
/// slot table names for the first key's slot, and not redirected: a node
/// that does not serve every key of the call refuses it (`MOVED`, `ASK`, a
/// script error for a key it does not serve), and the caller renews those
/// slots one by one instead (see `route.rs`). On `NOSCRIPT` the script is
/// loaded on that node and sent once more.
pub(crate) async fn extend_cross_slot(
    client: &Client,
    entries: &[(&str, &str, u64)],
    timeout: Duration,
) -> Result<Vec<Compared>, Error> {
    let first = entries.first().map_or("", |e| e.0);
    let keys: Vec<Value> = entries.iter().map(|e| Value::from(e.0)).collect();
    let args = extend_args(entries, true);
    let call = (first, keys);
    let reply = run_cross_slot(client, &EXTEND_CROSS_SLOT, call, args, false, timeout).await?;
    parse_extended(first, entries, reply)
}

/// [`extend`] with its writes confirmed by `WAIT` (see [`confirmed`]): the
/// answers, and how many replicas acknowledged them.
pub(crate) async fn extend_confirmed(
    client: &Client,
    entries: &[(&str, &str, u64)],
    renewal: bool,
    wait: MinReplicas,
    timeout: Duration,
) -> Result<(Vec<Compared>, u32), Error> {
    let first = entries.first().map_or("", |e| e.0);
    let keys: Vec<Value> = entries.iter().map(|e| Value::from(e.0)).collect();
    let args = extend_args(entries, renewal);
    let (reply, acked): (Value, u32) =
        confirmed(client, &EXTEND, first, keys, args, wait, timeout).await?;
    Ok((parse_extended(first, entries, reply)?, acked))
}

pub(super) fn extend_args(entries: &[(&str, &str, u64)], renewal: bool) -> Vec<Value> {
    let mut args = Vec::with_capacity(entries.len() * 2 + 1);
    for (_, token, ttl_ms) in entries {
        args.push(Value::from(*token));
        args.push(Value::from(*ttl_ms as i64));
    }
    if renewal {
        args.push(Value::from("r"));
    }
    args
}

pub(super) fn parse_extended(
    first: &str,
    entries: &[(&str, &str, u64)],
    reply: Value,
) -> Result<Vec<Compared>, Error> {
    let echo = entries.first().map_or("", |e| e.1);
    let reply = checked(reply, echo).ok_or_else(|| mismatched(first, "extend"))?;
    if reply.len() != entries.len() {
        return Err(unexpected(first, "extend", reply));
    }
    Ok(reply.into_iter().map(Compared::from_reply).collect())
}
