//! The legacy `Adapter` shim over a cluster client: its locks land on the
//! master that serves each key, exclude other clients, are released by
//! `release` and when the adapter is dropped, and tasks sharing one adapter
//! take turns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use distributed_mutex::{provide_adapter, Adapter, DistributedMutex, RedisAdapter, RetryStrategy};

use super::{get_on, gone_on_within, pttl_on};
use crate::support::cluster::{RedisCluster, MASTERS};
use crate::support::common::{assert_uuid_v4, ms, mutex_at};

/// `provide_adapter` over a cluster client, on a key of each master: a
/// one-minute lease with a UUID token on that master, a rival excluded,
/// and the key gone after `release`.
#[tokio::test]
async fn adapter_locks_land_on_every_master_and_are_released() {
    let cluster = RedisCluster::start();
    let adapter = provide_adapter(cluster.client().await);
    let rival = mutex_at(&cluster.url()).await;

    for i in 0..MASTERS {
        let key = cluster.key_on_master(i, "cluster:adapter:");
        adapter.acquire(&key).await;
        let token = get_on(&cluster, i, &key);
        assert_uuid_v4(&token);
        // A one-minute lease (read through redis-cli, which may start late
        // on a loaded machine).
        let pttl = pttl_on(&cluster, i, &key);
        assert!((50_000..=60_000).contains(&pttl), "{key}: PTTL {pttl}");
        assert!(
            rival.try_lock(&key).await.unwrap().is_none(),
            "{key}: a rival got the adapter's lock"
        );

        adapter.release(&key).await;
        assert_eq!(get_on(&cluster, i, &key), "", "{key}: release left it");
        assert!(rival.try_lock(&key).await.unwrap().is_some(), "{key}");
    }
    rival.shutdown().await;
}

/// Two tasks through one adapter on a key of each master: the second waits
/// while the first holds the key and gets it right after the release.
/// Dropping the adapter releases what it still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_sharing_an_adapter_take_turns_on_every_master() {
    let cluster = RedisCluster::start();
    let mutex = DistributedMutex::builder(cluster.client().await)
        .retry(RetryStrategy::linear(ms(1_000), 20))
        .build()
        .unwrap();
    let adapter = Arc::new(RedisAdapter::new(mutex.clone()));

    let keys: Vec<String> = (0..MASTERS)
        .map(|i| cluster.key_on_master(i, "cluster:adapter-turns:"))
        .collect();
    for (i, key) in keys.iter().enumerate() {
        adapter.acquire(key).await;
        let first = get_on(&cluster, i, key);
        assert_uuid_v4(&first);

        let second = {
            let (adapter, key) = (Arc::clone(&adapter), key.clone());
            tokio::spawn(async move { adapter.acquire(&key).await })
        };
        tokio::time::sleep(ms(200)).await;
        assert!(!second.is_finished(), "{key}: the second task did not wait");
        assert_eq!(
            get_on(&cluster, i, key),
            first,
            "{key}: replaced while held"
        );

        let released_at = Instant::now();
        adapter.release(key).await;
        tokio::time::timeout(Duration::from_secs(3), second)
            .await
            .unwrap_or_else(|_| panic!("{key}: the second task never got the lock"))
            .unwrap();
        // Woken by the release message on the key's own shard, well before
        // its 1 s retry interval.
        let waited = released_at.elapsed();
        assert!(waited < ms(500), "{key}: the second task waited {waited:?}");
        let next = get_on(&cluster, i, key);
        assert_uuid_v4(&next);
        assert_ne!(next, first, "{key}");
    }
    assert_eq!(adapter.held_count(), MASTERS);

    drop(adapter);
    mutex.shutdown().await;
    for (i, key) in keys.iter().enumerate() {
        assert!(
            gone_on_within(&cluster, i, key, Duration::from_secs(2)).await,
            "{key}: still on master {i} after the adapter was dropped"
        );
    }
}
