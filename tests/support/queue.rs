//! The wait queue in Redis, as tests see it: its name, its length, and a
//! mutex ("process") of its own per waiter.

use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, RetryStrategy};
use fred::prelude::*;
use fred::types::Key;

use super::common::{builder_at, ms};

/// The queue of the lock `key` under `prefix` (no braces in either):
/// `prefix \xff {prefix key}:queue:key`.
pub fn queue_key(prefix: &str, key: &str) -> Key {
    let mut name = prefix.as_bytes().to_vec();
    name.push(0xff);
    name.extend_from_slice(format!("{{{prefix}{key}}}:queue:{key}").as_bytes());
    Key::from(name.into_boxed_slice())
}

/// How many waiters the queue of `prefix key` holds.
pub async fn queue_len(raw: &Client, prefix: &str, key: &str) -> i64 {
    raw.llen(queue_key(prefix, key)).await.expect("LLEN")
}

/// Polls the queue's length until it is `want`; panics after `limit`.
pub async fn queue_reaches(raw: &Client, prefix: &str, key: &str, want: i64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let len = queue_len(raw, prefix, key).await;
        if len == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the queue of {prefix}{key} has {len} entries, not {want}, after {limit:?}"
        );
        tokio::time::sleep(ms(5)).await;
    }
}

/// A mutex ("process") of its own on `url`, waiting per `retry`.
pub async fn process(url: &str, retry: RetryStrategy) -> DistributedMutex {
    builder_at(url)
        .await
        .retry(retry)
        .build()
        .expect("valid settings")
}
