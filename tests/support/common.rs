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

/// A builder over a fresh connection of its own made by `connect`.
pub async fn builder_for(server: &RedisServer) -> Builder {
    DistributedMutex::builder(mutex_for(server).await.client().clone())
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
