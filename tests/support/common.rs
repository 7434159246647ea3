//! Small helpers shared by the integration tests: a fixture bundling a
//! private server, a raw client and a mutex; mutexes over a private server;
//! raw reads of what Redis holds; and the server's own counters.
//!
//! Every helper here is defined once; a test module defines only what is
//! specific to its area.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use distributed_mutex::{Builder, DistributedMutex, LockGuard};
use fred::prelude::*;
use fred::types::scripts::Script;

use super::proxy::Proxy;
use super::RedisServer;

pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---- the fixture -------------------------------------------------------------

/// A private server, a raw fred client for assertions (`server.client()`)
/// and a mutex with the defaults over a connection of its own
/// ([`mutex_for`]).
///
/// ```ignore
/// let Fixture { server, raw, mutex } = Fixture::start().await;
/// // Not using the server? Bind it all the same: dropping it stops Redis.
/// let Fixture { server: _server, raw, mutex } = Fixture::start().await;
/// ```
pub struct Fixture {
    pub server: RedisServer,
    pub raw: Client,
    pub mutex: DistributedMutex,
}

impl Fixture {
    pub async fn start() -> Fixture {
        Self::start_with(&[]).await
    }

    /// With extra `redis-server` arguments (see [`RedisServer::start_with`];
    /// not for `--requirepass`, whose server needs clients of its own).
    pub async fn start_with(extra_args: &[&str]) -> Fixture {
        let server = RedisServer::start_with(extra_args);
        let raw = server.client().await;
        let mutex = mutex_for(&server).await;
        Fixture { server, raw, mutex }
    }
}

// ---- mutexes -----------------------------------------------------------------

/// A mutex with the defaults over a client made by `DistributedMutex::connect`
/// (reconnect policy and timeouts as a lock needs them): a "process" of its
/// own, with its own connection.
pub async fn mutex_for(server: &RedisServer) -> DistributedMutex {
    mutex_at(&server.url()).await
}

/// [`mutex_for`] by URL (a proxy's, a container's).
pub async fn mutex_at(url: &str) -> DistributedMutex {
    DistributedMutex::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// A builder over a fresh connection of its own made by `connect`.
pub async fn builder_for(server: &RedisServer) -> Builder {
    builder_at(&server.url()).await
}

/// [`builder_for`] by URL.
pub async fn builder_at(url: &str) -> Builder {
    Builder::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// A mutex whose connections (commands and release notifications) go
/// through `proxy`, with the settings `configure` gives its builder.
pub async fn mutex_via(
    proxy: &Proxy,
    configure: impl FnOnce(Builder) -> Builder,
) -> DistributedMutex {
    let connected = Builder::connect(&proxy.url())
        .await
        .expect("connect through the proxy");
    configure(connected).build().expect("valid settings")
}

// ---- raw reads -----------------------------------------------------------------

/// The fencing counter of `key` under `prefix` (the layout in `src/keys.rs`),
/// for keys whose hash tag, if any, is well formed and that have no stray `}`.
pub fn fence_key(prefix: &str, key: &str) -> Vec<u8> {
    let lock = format!("{prefix}{key}");
    let tag = match (lock.find('{'), lock.find('}')) {
        (Some(open), Some(_)) => {
            let rest = &lock[open + 1..];
            let close = rest.find('}').expect("a closing brace after the tag");
            assert!(close > 0, "empty hash tag in {lock:?}");
            rest[..close].to_owned()
        }
        (_, None) => lock.clone(),
        (None, Some(_)) => panic!("stray `}}` in {lock:?}: no simple fence key"),
    };
    let mut out = prefix.as_bytes().to_vec();
    out.push(0xFF);
    out.extend_from_slice(format!("{{{tag}}}:fence:{key}").as_bytes());
    out
}

/// Raw `GET` of a binary key.
pub async fn raw_get_bytes(client: &Client, key: &[u8]) -> Option<String> {
    client
        .get(fred::types::Key::from(key.to_vec().into_boxed_slice()))
        .await
        .expect("raw GET")
}

/// Every key in the server, as bytes (`KEYS *`).
pub async fn raw_keys(client: &Client) -> Vec<Vec<u8>> {
    let keys: Vec<fred::types::Value> = client
        .custom(fred::cmd!("KEYS"), vec!["*"])
        .await
        .expect("raw KEYS");
    keys.into_iter()
        .map(|k| k.as_bytes().expect("a key").to_vec())
        .collect()
}

pub async fn raw_get(client: &Client, key: &str) -> Option<String> {
    client.get(key).await.expect("raw GET")
}

pub async fn raw_pttl(client: &Client, key: &str) -> i64 {
    client.pttl(key).await.expect("raw PTTL")
}

pub async fn raw_dbsize(client: &Client) -> i64 {
    client.dbsize().await.expect("raw DBSIZE")
}

pub async fn raw_exists(client: &Client, key: &str) -> bool {
    let n: i64 = client.exists(key).await.expect("raw EXISTS");
    n == 1
}

/// `GET` and `PTTL` of `key` read atomically (one Lua call), with the
/// instant just before it was sent: `(value, pttl, sent_at)`. Unlike two
/// separate reads, the pair cannot straddle the key's expiry.
pub async fn raw_get_and_pttl(client: &Client, key: &str) -> (Option<String>, i64, Instant) {
    const SCRIPT: &str = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}";
    let sent_at = Instant::now();
    let reply: Vec<Value> = client
        .eval(SCRIPT, vec![key], Vec::<String>::new())
        .await
        .expect("raw GET + PTTL");
    match reply.as_slice() {
        [value, Value::Integer(pttl)] => {
            let value = match value {
                Value::Null => None,
                other => Some(
                    other
                        .as_string()
                        .unwrap_or_else(|| panic!("GET {key}: {other:?}")),
                ),
            };
            (value, *pttl, sent_at)
        }
        other => panic!("unexpected GET + PTTL reply {other:?}"),
    }
}

/// Polls raw `GET key` until it is nil; `true` if that happened within `limit`.
pub async fn gone_within(client: &Client, key: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if raw_get(client, key).await.is_none() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(ms(10)).await;
    }
}

/// Keys matching `pattern`, sorted (`KEYS` through redis-cli, one per line:
/// not for keys holding newlines).
pub fn redis_keys(server: &RedisServer, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = server
        .cli(&["KEYS", pattern])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    keys.sort();
    keys
}

// ---- the server's counters -------------------------------------------------------

/// `CONFIG RESETSTAT`: command counters (and `expired_keys`) start again at 0.
pub fn reset_stats(server: &RedisServer) {
    assert_eq!(server.cli(&["CONFIG", "RESETSTAT"]), "OK");
}

/// `(command, calls)` of every `INFO commandstats` entry whose command starts
/// with one of `prefixes` (e.g. `"eval"` matches `eval` and `evalsha`).
pub fn command_stats(server: &RedisServer, prefixes: &[&str]) -> Vec<(String, u64)> {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            if !prefixes.iter().any(|p| name.starts_with(p)) {
                return None;
            }
            let calls = rest.strip_prefix("calls=")?.split(',').next()?;
            Some((name.to_owned(), calls.parse().expect("calls is a number")))
        })
        .collect()
}

/// `calls` of one command in `INFO commandstats` (0 if never called).
pub fn command_calls(server: &RedisServer, command: &str) -> u64 {
    command_stats(server, &[command])
        .into_iter()
        .find(|(name, _)| name == command)
        .map_or(0, |(_, calls)| calls)
}

/// The commands a lock sends (SET, EVAL*, SCRIPT, DEL, PEXPIRE, PUBLISH).
pub const LOCK_COMMANDS: &[&str] = &["set", "eval", "script", "del", "pexpire", "publish"];

/// Calls of [`LOCK_COMMANDS`] since the last [`reset_stats`].
pub fn lock_commands(server: &RedisServer) -> u64 {
    command_stats(server, LOCK_COMMANDS)
        .iter()
        .map(|(_, calls)| calls)
        .sum()
}

/// One field of `INFO <section>`, e.g. `info_field(server, "stats", "expired_keys")`.
pub fn info_field(server: &RedisServer, section: &str, field: &str) -> String {
    let info = server.cli(&["INFO", section]);
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in INFO {section}:\n{info}"))
        .trim()
        .to_owned()
}

// ---- the library's scripts ------------------------------------------------------

/// The text of the library's script `src/protocol/scripts/<name>.lua` as it sends
/// it: with `common.lua` put before it.
macro_rules! library_script {
    ($name:literal) => {
        concat!(
            include_str!("../../src/protocol/scripts/common.lua"),
            include_str!(concat!("../../src/protocol/scripts/", $name, ".lua"))
        )
    };
}

pub const ACQUIRE_LUA: &str = library_script!("acquire");
pub const RELEASE_LUA: &str = library_script!("release");
pub const EXTEND_LUA: &str = library_script!("extend");

/// The library's Lua scripts: acquire, release, extend.
pub const SCRIPTS: [&str; 3] = [ACQUIRE_LUA, RELEASE_LUA, EXTEND_LUA];

/// Loads the library's scripts, so that a fault aimed at a script call hits
/// the call that runs it, not a first `EVALSHA` answered with NOSCRIPT.
pub async fn load_scripts(raw: &Client) {
    for lua in SCRIPTS {
        Script::from_lua(lua.to_owned())
            .load(raw)
            .await
            .expect("SCRIPT LOAD");
    }
}

/// The SHA1 of a script, as `SCRIPT EXISTS` takes it.
pub fn sha(lua: &str) -> String {
    Script::from_lua(lua.to_owned()).sha1().to_string()
}

// ---- assertions -------------------------------------------------------------------

/// A hyphenated v4 UUID (RFC 4122 variant), as the library's tokens are.
pub fn assert_uuid_v4(value: &str) {
    let parts: Vec<usize> = value.split('-').map(str::len).collect();
    assert_eq!(
        parts,
        [8, 4, 4, 4, 12],
        "token {value:?} is not a hyphenated UUID"
    );
    let parsed = uuid::Uuid::parse_str(value)
        .unwrap_or_else(|e| panic!("token {value:?} is not a UUID: {e}"));
    assert_eq!(
        parsed.get_version_num(),
        4,
        "token {value} is not a v4 UUID"
    );
    assert_eq!(
        parsed.get_variant(),
        uuid::Variant::RFC4122,
        "token {value} is not an RFC 4122 UUID"
    );
}

/// `remaining()` read at `read_at` never promises more than Redis holds: the
/// key's expiry (at least `pttl_sent_at + pttl`) is not before
/// `read_at + remaining`.
pub fn assert_conservative(
    key: &str,
    remaining: Duration,
    read_at: Instant,
    pttl: i64,
    pttl_sent_at: Instant,
) {
    assert!(pttl > 0, "`{key}` has PTTL {pttl} while its guard holds it");
    // PTTL is rounded down to whole milliseconds: allow one.
    let redis_until = pttl_sent_at + ms(pttl as u64 + 1);
    assert!(
        read_at + remaining <= redis_until,
        "remaining() {remaining:?} for `{key}` outlasts Redis's PTTL {pttl} ms"
    );
}

/// Reads `remaining()` and the key's PTTL and checks that the former is
/// conservative.
pub async fn check_remaining(raw: &Client, guard: &LockGuard, redis_key: &str) {
    let read_at = Instant::now();
    let remaining = guard.remaining();
    let pttl_sent_at = Instant::now();
    let left = raw_pttl(raw, redis_key).await;
    assert_conservative(redis_key, remaining, read_at, left, pttl_sent_at);
}

/// After a fault (and after the mutex was shut down, so queued releases have
/// run): `key` is absent, or holds a lease that ends within `ttl` (never a
/// key without expiry) and is indeed gone by then.
pub async fn assert_no_orphan(raw: &Client, key: &str, ttl: Duration) {
    let left = raw_pttl(raw, key).await;
    assert!(
        left == -2 || (left > 0 && left <= ttl.as_millis() as i64),
        "`{key}` left with PTTL {left} (TTL {ttl:?})"
    );
    if left > 0 {
        assert!(
            gone_within(raw, key, ttl + ms(1000)).await,
            "`{key}` still there after its TTL"
        );
    }
}

/// The mutex has flushed its releases and Redis holds no lock: no key
/// besides `allowed` (fencing counters, foreign values).
pub async fn assert_nothing_locked(
    server: &RedisServer,
    mutex: &DistributedMutex,
    allowed: &[&str],
) {
    mutex.shutdown().await;
    let mut allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
    allowed.sort();
    assert_eq!(redis_keys(server, "*"), allowed, "left in Redis");
}

/// Sets a flag when dropped: shows that a future was dropped (cancelled).
pub struct SetOnDrop(pub Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
