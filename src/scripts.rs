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
use fred::types::{FromValue, Value};

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
    /// The caller holds the lock.
    Yes,
    /// Someone else holds it; `pttl` is their remaining lease, `None` when
    /// the key has no expiry (set by something other than a lock client).
    No { pttl: Option<Duration> },
}

/// Runs one script call, bounded by `timeout`.
async fn run<R: FromValue>(
    client: &Client,
    script: &Script,
    key: &str,
    args: Vec<Value>,
    timeout: Duration,
) -> Result<R, Error> {
    match tokio::time::timeout(timeout, script.evalsha_with_reload(client, key, args)).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(Error::from_redis(key, e)),
        Err(_) => Err(Error::Timeout {
            key: key.to_owned(),
            after: timeout,
        }),
    }
}

/// `SET key token NX PX ttl`, idempotent for `token`.
pub(crate) async fn acquire(
    client: &Client,
    key: &str,
    token: &str,
    ttl_ms: u64,
    timeout: Duration,
) -> Result<Acquired, Error> {
    let args = vec![Value::from(token), Value::from(ttl_ms as i64)];
    let reply: Vec<i64> = run(client, &ACQUIRE, key, args, timeout).await?;
    match reply.as_slice() {
        [1, ..] => Ok(Acquired::Yes),
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

/// Compare-and-delete. `true` when the caller's lock was deleted.
pub(crate) async fn release(
    client: &Client,
    key: &str,
    token: &str,
    timeout: Duration,
) -> Result<bool, Error> {
    let deleted: i64 = run(client, &RELEASE, key, vec![Value::from(token)], timeout).await?;
    Ok(deleted == 1)
}

/// Compare-and-pexpire. `true` when the lease was extended.
pub(crate) async fn extend(
    client: &Client,
    key: &str,
    token: &str,
    ttl_ms: u64,
    timeout: Duration,
) -> Result<bool, Error> {
    let args = vec![Value::from(token), Value::from(ttl_ms as i64)];
    let extended: i64 = run(client, &EXTEND, key, args, timeout).await?;
    Ok(extended == 1)
}
