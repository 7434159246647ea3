//! Renewal, loss detection (`lost()` / `is_lost()`), `with_lock` and the
//! `acquire` options on a cluster, with one key served by each master in
//! every test: the single-server checks of `renewal` and `lock`, run where
//! each call must reach the right node.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use distributed_mutex::{Error, LockGuard, LostReason, RetryStrategy};
use fred::prelude::*;

use super::{get_on, gone_on_within, pttl_on};
use crate::support::cluster::{RedisCluster, MASTERS};
use crate::support::common::{builder_at, ms, mutex_at, SetOnDrop};

/// One key per master, `"{prefix}{n}"`, in master order.
fn key_per_master(cluster: &RedisCluster, prefix: &str) -> Vec<String> {
    (0..MASTERS)
        .map(|i| cluster.key_on_master(i, prefix))
        .collect()
}

/// Waits for `guard` to report its loss; returns the reason and how long
/// after `since` it came. Panics after `limit`.
async fn loss_of(guard: &LockGuard, since: Instant, limit: Duration) -> (LostReason, Duration) {
    let reason = tokio::time::timeout(limit, guard.lost())
        .await
        .unwrap_or_else(|_| panic!("{}: lost() did not fire within {limit:?}", guard.key()));
    (reason, since.elapsed())
}

// ---- renewal ----------------------------------------------------------------

/// A 500 ms lease on a key of each master, held for 2 s: every 25 ms its
/// token is on its master with a PTTL within the TTL, the guard is not lost,
/// and a rival mutex cannot take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_leases_on_every_master_are_renewed_and_exclude_a_rival() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let ttl = ms(500);
    let mutex = builder_at(&url).await.ttl(ttl).build().unwrap();
    let rival = mutex_at(&url).await;
    let keys = key_per_master(&cluster, "cluster:renewed:");

    let mut guards = Vec::new();
    for key in &keys {
        guards.push(
            mutex
                .lock(key)
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}")),
        );
    }
    let started = Instant::now();
    let mut samples = 0u32;
    while started.elapsed() < Duration::from_secs(2) {
        for (i, guard) in guards.iter().enumerate() {
            let key = guard.key();
            let at = started.elapsed();
            assert_eq!(
                get_on(&cluster, i, key),
                guard.token(),
                "{key} after {at:?}"
            );
            let pttl = pttl_on(&cluster, i, key);
            assert!(pttl > 0 && pttl <= 500, "{key}: PTTL {pttl} after {at:?}");
            assert!(!guard.is_lost(), "{key} lost after {at:?}");
            let remaining = guard.remaining();
            assert!(
                !remaining.is_zero() && remaining <= ttl,
                "{key}: remaining {remaining:?} after {at:?}"
            );
            if samples % 4 == 0 {
                assert!(
                    rival.try_lock(key).await.unwrap().is_none(),
                    "{key}: the rival got it after {at:?}"
                );
            }
        }
        samples += 1;
        tokio::time::sleep(ms(25)).await;
    }
    assert!(samples >= 10, "only {samples} samples in 2 s");

    drop(guards);
    for (i, key) in keys.iter().enumerate() {
        assert!(
            gone_on_within(&cluster, i, key, Duration::from_secs(2)).await,
            "{key} left on master {i} after drop"
        );
        assert!(rival.try_lock(key).await.unwrap().is_some(), "{key}");
    }
    mutex.shutdown().await;
    rival.shutdown().await;
}

// ---- loss ---------------------------------------------------------------------

/// On each master: a key deleted behind its holder is reported `Missing`, a
/// key written over is reported `Replaced` (and the other value is left
/// alone), each within two renewal periods, and `release()` of either is
/// `NotHeld`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_overwritten_keys_on_every_master_are_reported_lost() {
    let cluster = RedisCluster::start();
    let raw = cluster.client().await;
    let ttl = ms(1500);
    let period = ttl / 3;
    let mutex = builder_at(&cluster.url()).await.ttl(ttl).build().unwrap();

    for (i, key) in key_per_master(&cluster, "cluster:deleted:")
        .iter()
        .enumerate()
    {
        let guard = mutex.lock(key).await.unwrap();
        let deleted: i64 = raw.del(key).await.unwrap();
        assert_eq!(deleted, 1, "{key}");
        let (reason, took) = loss_of(&guard, Instant::now(), Duration::from_secs(5)).await;
        assert_eq!(reason, LostReason::Missing, "{key} on master {i}");
        assert!(took <= 2 * period, "{key}: lost() {took:?} after the DEL");
        assert!(guard.is_lost() && guard.remaining().is_zero(), "{key}");
        let err = guard.release().await.unwrap_err();
        assert!(
            matches!(&err, Error::NotHeld { key: k, .. } if k == key),
            "{err:?}"
        );
        assert_eq!(get_on(&cluster, i, key), "", "{key} came back");
    }

    for (i, key) in key_per_master(&cluster, "cluster:replaced:")
        .iter()
        .enumerate()
    {
        let guard = mutex.lock(key).await.unwrap();
        let _: () = raw
            .set(key, "intruder", Some(Expiration::PX(10_000)), None, false)
            .await
            .unwrap();
        let (reason, took) = loss_of(&guard, Instant::now(), Duration::from_secs(5)).await;
        assert_eq!(reason, LostReason::Replaced, "{key} on master {i}");
        assert!(took <= 2 * period, "{key}: lost() {took:?} after the SET");
        let err = guard.release().await.unwrap_err();
        assert!(matches!(err, Error::NotHeld { .. }), "{err:?}");
        assert_eq!(get_on(&cluster, i, key), "intruder", "{key}");
        let pttl = pttl_on(&cluster, i, key);
        assert!(
            pttl > 8_000,
            "{key}: the other value's expiry was touched: {pttl}"
        );
    }
    mutex.shutdown().await;
}

/// Without renewal, a 300 ms lease on each master runs out: the guard says
/// `Expired` by its local clock no later than Redis drops the key, and a
/// rival then takes the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrenewed_leases_on_every_master_expire_and_a_rival_gets_them() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let ttl = ms(300);
    let mutex = builder_at(&url)
        .await
        .ttl(ttl)
        .auto_renew(false)
        .build()
        .unwrap();
    let rival = mutex_at(&url).await;

    let mut guards = Vec::new();
    for key in key_per_master(&cluster, "cluster:expired:") {
        guards.push(mutex.lock(&key).await.unwrap());
    }
    let taken_at = Instant::now();
    for (i, guard) in guards.iter().enumerate() {
        let (reason, after) = loss_of(guard, taken_at, Duration::from_secs(3)).await;
        assert_eq!(reason, LostReason::Expired, "{}", guard.key());
        assert!(
            after <= ttl + ms(100),
            "{}: lost() after {after:?}",
            guard.key()
        );
        // Reported by the local clock, which runs ahead of Redis's: the key
        // may still be there for a moment, but never past its lease.
        assert!(
            gone_on_within(&cluster, i, guard.key(), ms(500)).await,
            "{} still on master {i} long after its lease",
            guard.key()
        );
        let taken = rival.try_lock(guard.key()).await.unwrap();
        assert!(
            taken.is_some(),
            "{}: the rival could not take it",
            guard.key()
        );
    }
    drop(guards);
    mutex.shutdown().await;
    rival.shutdown().await;
}

// ---- with_lock ----------------------------------------------------------------

/// `with_lock` on a key of each master returns the work's output and
/// releases the key; when the key is deleted mid-work, the work is dropped
/// and `with_lock` returns `Lost { Missing }` within two renewal periods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_on_every_master_returns_the_output_or_cancels_the_work_on_loss() {
    let cluster = RedisCluster::start();
    let raw = cluster.client().await;
    let ttl = ms(900);
    let mutex = builder_at(&cluster.url()).await.ttl(ttl).build().unwrap();

    for (i, key) in key_per_master(&cluster, "cluster:with:").iter().enumerate() {
        let seen = mutex
            .with_lock(key, |lease| {
                let token = lease.token().to_owned();
                async move { token }
            })
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(seen.len(), 36, "{key}: the work saw token {seen:?}");
        assert!(
            gone_on_within(&cluster, i, key, Duration::from_secs(2)).await,
            "{key}: with_lock left the key on master {i}"
        );
    }

    for (i, key) in key_per_master(&cluster, "cluster:with-lost:")
        .iter()
        .enumerate()
    {
        let dropped = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(AtomicU64::new(0));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let task = {
            let (dropped, ticks, mutex, key) =
                (dropped.clone(), ticks.clone(), mutex.clone(), key.clone());
            tokio::spawn(async move {
                mutex
                    .with_lock(&key, move |lease| async move {
                        let _flag = SetOnDrop(dropped);
                        let _ = started_tx.send(lease.token().to_owned());
                        for _ in 0..100 {
                            tokio::time::sleep(ms(50)).await;
                            ticks.fetch_add(1, Ordering::SeqCst);
                        }
                        "finished"
                    })
                    .await
            })
        };
        let token = started_rx.await.expect("work started");
        assert_eq!(get_on(&cluster, i, key), token, "{key} on master {i}");
        let deleted: i64 = raw.del(key).await.unwrap();
        assert_eq!(deleted, 1);
        let deleted_at = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(4), task)
            .await
            .unwrap_or_else(|_| panic!("{key}: with_lock still running 4 s after the loss"))
            .unwrap();
        let took = deleted_at.elapsed();
        match result {
            Err(Error::Lost { key: k, reason }) => {
                assert_eq!(&k, key);
                assert_eq!(reason, LostReason::Missing, "{key}");
            }
            other => panic!("{key}: expected Error::Lost, got {other:?}"),
        }
        assert!(took <= 2 * (ttl / 3) + ms(200), "{key}: took {took:?}");
        assert!(
            dropped.load(Ordering::SeqCst),
            "{key}: the work was not dropped"
        );
        assert!(
            ticks.load(Ordering::SeqCst) < 100,
            "{key}: the work ran to its end"
        );
        assert_eq!(get_on(&cluster, i, key), "", "{key}");
    }
    mutex.shutdown().await;
}

// ---- acquire options -------------------------------------------------------------

/// The `acquire` builder's options take effect on every master: `ttl` sets
/// the lease Redis keeps, `auto_renew(false)` leaves it to run down,
/// `fencing` numbers the acquisition, `retry` bounds a wait on a held key,
/// `timeout` bounds it in time, and a waiter with a budget gets the key
/// when its holder releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_options_take_effect_on_every_master() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let mutex = mutex_at(&url).await;
    let rival = mutex_at(&url).await;

    for (i, key) in key_per_master(&cluster, "cluster:options:")
        .iter()
        .enumerate()
    {
        // ttl + auto_renew(false): the lease is 5 s and is not renewed.
        let guard = mutex
            .acquire(key)
            .ttl(Duration::from_secs(5))
            .auto_renew(false)
            .fencing()
            .await
            .unwrap();
        assert_eq!(guard.ttl(), Duration::from_secs(5), "{key}");
        let first = pttl_on(&cluster, i, key);
        assert!((4_000..=5_000).contains(&first), "{key}: PTTL {first}");
        assert!(guard.fencing_token().is_some(), "{key}: no fencing token");
        tokio::time::sleep(ms(2_000)).await;
        let later = pttl_on(&cluster, i, key);
        assert!(
            later <= first - 1_500,
            "{key}: renewed ({first} -> {later})"
        );

        // retry: a bounded number of attempts on a held key.
        let started = Instant::now();
        let refused = rival
            .acquire(key)
            .retry(RetryStrategy::linear(ms(20), 5))
            .await;
        assert!(
            matches!(refused, Err(Error::NotObtained { .. })),
            "{key}: {refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{key}: {:?}",
            started.elapsed()
        );

        // timeout: a wall-clock bound on a wait that would otherwise go on.
        let started = Instant::now();
        let refused = rival
            .acquire(key)
            .retry(RetryStrategy::linear(ms(20), u32::MAX))
            .timeout(ms(300))
            .await;
        let took = started.elapsed();
        assert!(
            matches!(refused, Err(Error::NotObtained { .. })),
            "{key}: {refused:?}"
        );
        assert!(
            took >= ms(250) && took < Duration::from_secs(2),
            "{key}: gave up after {took:?}"
        );

        // A waiter with a budget gets the key once the holder releases it,
        // and its fencing token is greater.
        let first_fence = guard.fencing_token().unwrap();
        let waiter = {
            let (rival, key) = (rival.clone(), key.clone());
            tokio::spawn(async move {
                rival
                    .acquire(&key)
                    .fencing()
                    .retry(RetryStrategy::linear(ms(1_000), 10))
                    .await
            })
        };
        tokio::time::sleep(ms(100)).await;
        let released_at = Instant::now();
        guard.release().await.unwrap();
        let next = waiter
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let waited = released_at.elapsed();
        assert_eq!(get_on(&cluster, i, key), next.token(), "{key}");
        assert!(next.fencing_token().unwrap() > first_fence, "{key}");
        // Woken by the release message, not by its 1 s retry interval.
        assert!(
            waited < ms(500),
            "{key}: the waiter took {waited:?} after the release"
        );
        drop(next);
        assert!(
            gone_on_within(&cluster, i, key, Duration::from_secs(2)).await,
            "{key}"
        );
    }
    mutex.shutdown().await;
    rival.shutdown().await;
}
