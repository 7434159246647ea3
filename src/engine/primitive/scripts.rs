//! Typed wrappers over the semaphore and read-write lock scripts
//! (`src/scripts/semaphore_acquire.lua`, `rw_read.lua`, `rw_write.lua`,
//! `member_release.lua`, `member_renew.lua`). Like the lock's scripts, each
//! reply ends with the call's token and is checked (`scripts::checked`).

use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::types::{Key, Value};

use crate::engine::lease::LeaseCore;
use crate::policy::error::Error;
use crate::protocol::scripts::members::{RENEW, RW_READ, RW_WRITE, SEMAPHORE_ACQUIRE};
use crate::protocol::scripts::{binary_key, checked, mismatched, run, unexpected, Compared};

/// Which acquire script an attempt runs, with its own arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// One permit of a semaphore of `permits`.
    Permit { permits: u32 },
    /// A read guard.
    Read,
    /// A write guard; `intent_ms` how long its intent stops new readers
    /// when it must wait (0: none).
    Write { intent_ms: u64 },
}

/// What an acquire script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    Yes,
    /// Busy: how long until the first place that blocks it expires (when
    /// known).
    No(Option<Duration>),
}

fn keys_of(sets: &[Vec<u8>]) -> Vec<Key> {
    sets.iter().cloned().map(binary_key).collect()
}

/// Runs one acquire attempt for `token` over `sets` (the primitive's sorted
/// sets, in the order its script names them).
pub(crate) async fn acquire(
    client: &Client,
    label: &str,
    sets: &[Vec<u8>],
    attempt: Attempt,
    token: &str,
    ttl_ms: u64,
    timeout: Duration,
) -> Result<Taken, Error> {
    let mut args = vec![Value::from(token), Value::from(ttl_ms as i64)];
    let script = match attempt {
        Attempt::Permit { permits } => {
            args.push(Value::from(i64::from(permits)));
            &SEMAPHORE_ACQUIRE
        }
        Attempt::Read => &RW_READ,
        Attempt::Write { intent_ms } => {
            args.push(Value::from(intent_ms as i64));
            &RW_WRITE
        }
    };
    let reply: Value = run(client, script, label, keys_of(sets), args, timeout).await?;
    let reply = checked(reply, token).ok_or_else(|| mismatched(label, "acquire"))?;
    match reply.as_slice() {
        [1, _] => Ok(Taken::Yes),
        [0, wait] if *wait >= 0 => Ok(Taken::No(Some(Duration::from_millis(*wait as u64)))),
        [0, _] => Ok(Taken::No(None)),
        other => Err(unexpected(label, "acquire", other)),
    }
}

/// Renews a chunk of leases held as places in sorted sets (all in one slot),
/// each to its TTL in `ttls`; one answer per lease, in order.
pub(crate) async fn renew(
    client: &Client,
    chunk: &[(Arc<LeaseCore>, u64)],
    ttls: &[Duration],
    timeout: Duration,
) -> Result<Vec<Compared>, Error> {
    let label = chunk.first().map_or("", |(l, _)| l.key.as_str());
    let echo = chunk.first().map_or("", |(l, _)| l.token.as_str());
    let mut keys = Vec::with_capacity(chunk.len());
    let mut args = Vec::with_capacity(chunk.len() * 2);
    for ((lease, _), ttl) in chunk.iter().zip(ttls) {
        let set = lease.member_set.clone().unwrap_or_default();
        keys.push(binary_key(set));
        args.push(Value::from(lease.token.as_str()));
        args.push(Value::from(ttl.as_millis() as i64));
    }
    let reply: Value = run(client, &RENEW, label, keys, args, timeout).await?;
    let reply = checked(reply, echo).ok_or_else(|| mismatched(label, "renew"))?;
    if reply.len() != chunk.len() {
        return Err(unexpected(label, "renew", reply));
    }
    Ok(reply.into_iter().map(Compared::from_reply).collect())
}
