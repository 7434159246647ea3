//! Small helpers shared by the integration tests: a mutex over a private
//! server, and raw reads of what Redis holds.

use std::time::{Duration, Instant};

use distributed_mutex::{Builder, DistributedMutex};
use fred::prelude::*;

use super::RedisServer;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A mutex with the defaults over a client made by `DistributedMutex::connect`
/// (reconnect policy and timeouts as a lock needs them).
pub async fn mutex_for(server: &RedisServer) -> DistributedMutex {
    DistributedMutex::connect(&server.url())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", server.url()))
}

/// A builder over a fresh connection of its own made by `Builder::connect`.
pub async fn builder_for(server: &RedisServer) -> Builder {
    Builder::connect(&server.url())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", server.url()))
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
