//! Typed wrappers over the Lua scripts in `src/scripts/*.lua`.
//!
//! Every script takes its keys through `KEYS`, so it runs on Redis Cluster.
//! Scripts are sent with `EVALSHA` and loaded again on `NOSCRIPT` (after a
//! restart or `SCRIPT FLUSH`). fred ignores per-command options on Lua calls,
//! so every call is bounded here with `tokio::time::timeout`.

use std::sync::LazyLock;
use std::time::Duration;

use fred::clients::Client;
use fred::types::scripts::Script;
use fred::types::{FromValue, MultipleKeys, Value};

use crate::Error;

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("scripts/acquire.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("scripts/release.lua")));
static EXTEND: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("scripts/extend.lua")));

/// What the acquire script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The caller holds the lock (with its fencing token, when asked for).
    Yes { fencing_token: Option<u64> },
    /// Someone else holds it; `pttl` is their remaining lease, `None` when
    /// the key has no expiry (set by something other than a lock client).
    No { pttl: Option<Duration> },
}

/// Runs one script call, bounded by `timeout`.
async fn run<R: FromValue>(
    client: &Client,
    script: &Script,
    key: &str,
    keys: impl Into<MultipleKeys> + Send,
    args: Vec<Value>,
    timeout: Duration,
) -> Result<R, Error> {
    match tokio::time::timeout(timeout, script.evalsha_with_reload(client, keys, args)).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(Error::from_redis(key, e)),
        Err(_) => Err(Error::Timeout {
            key: key.to_owned(),
            after: timeout,
        }),
    }
}

/// `SET key token NX PX ttl`, idempotent for `token`; with `fence_key`, also
/// draws the next fencing token from that counter.
pub(crate) async fn acquire(
    client: &Client,
    key: &str,
    fence_key: Option<&str>,
    token: &str,
    ttl_ms: u64,
    timeout: Duration,
) -> Result<Acquired, Error> {
    let args = vec![Value::from(token), Value::from(ttl_ms as i64)];
    let keys: Vec<&str> = match fence_key {
        Some(fence_key) => vec![key, fence_key],
        None => vec![key],
    };
    let reply: Vec<i64> = run(client, &ACQUIRE, key, keys, args, timeout).await?;
    match reply.as_slice() {
        [1] if fence_key.is_none() => Ok(Acquired::Yes {
            fencing_token: None,
        }),
        [1, fence] if fence_key.is_some() && *fence > 0 => Ok(Acquired::Yes {
            fencing_token: Some(*fence as u64),
        }),
        [0, pttl] if *pttl >= 0 => Ok(Acquired::No {
            pttl: Some(Duration::from_millis(*pttl as u64)),
        }),
        // -2: the key vanished between SET and PTTL: try again at once.
        [0, -2] => Ok(Acquired::No {
            pttl: Some(Duration::ZERO),
        }),
        [0, _] => Ok(Acquired::No { pttl: None }),
        other => Err(Error::Redis {
            key: key.to_owned(),
            source: fred::error::Error::new(
                fred::error::ErrorKind::Protocol,
                format!("unexpected reply from the acquire script: {other:?}"),
            ),
        }),
    }
}

/// The fast path of a first attempt: a plain `SET key token NX PX ttl`.
/// `true` when it set the key. `false` says only that the key exists (it may
/// be ours, if this command was re-sent after a reconnect): the acquire
/// script must then decide.
pub(crate) async fn set_nx(
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
    match tokio::time::timeout(timeout, set).await {
        Ok(Ok(reply)) => Ok(reply.is_some()),
        Ok(Err(e)) => Err(Error::from_redis(key, e)),
        Err(_) => Err(Error::Timeout {
            key: key.to_owned(),
            after: timeout,
        }),
    }
}

/// What a compare-and-delete found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// The caller's lock was deleted.
    Yes,
    /// The key was gone.
    Missing,
    /// The key holds something else (left untouched).
    Replaced,
}

/// Compare-and-delete.
pub(crate) async fn release(
    client: &Client,
    key: &str,
    token: &str,
    releaser: &str,
    timeout: Duration,
) -> Result<Released, Error> {
    let deleted: i64 = run(
        client,
        &RELEASE,
        key,
        key,
        vec![Value::from(token), Value::from(releaser)],
        timeout,
    )
    .await?;
    Ok(match deleted {
        1 => Released::Yes,
        0 => Released::Missing,
        _ => Released::Replaced,
    })
}

/// What a compare-and-pexpire found for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extended {
    /// The lease was extended.
    Yes,
    /// The key is gone.
    Missing,
    /// The key holds something else.
    Replaced,
}

/// Compare-and-pexpire for a batch of `(key, token, ttl_ms)`, all in one
/// cluster slot; one answer per entry, in order.
pub(crate) async fn extend(
    client: &Client,
    entries: &[(&str, &str, u64)],
    timeout: Duration,
) -> Result<Vec<Extended>, Error> {
    let first = entries.first().map_or("", |e| e.0);
    let keys: Vec<&str> = entries.iter().map(|e| e.0).collect();
    let mut args = Vec::with_capacity(entries.len() * 2);
    for (_, token, ttl_ms) in entries {
        args.push(Value::from(*token));
        args.push(Value::from(*ttl_ms as i64));
    }
    let reply: Vec<i64> = run(client, &EXTEND, first, keys, args, timeout).await?;
    if reply.len() != entries.len() {
        return Err(Error::Redis {
            key: first.to_owned(),
            source: fred::error::Error::new(
                fred::error::ErrorKind::Protocol,
                format!("unexpected reply from the extend script: {reply:?}"),
            ),
        });
    }
    Ok(reply
        .into_iter()
        .map(|n| match n {
            1 => Extended::Yes,
            0 => Extended::Missing,
            _ => Extended::Replaced,
        })
        .collect())
}
