//! Multi-key locks (`lock_all`, `try_lock_all`, `acquire_all`,
//! `MultiGuard`): all or nothing, on one server and on a private 3-master
//! Redis Cluster (keys on different masters, and keys under one hash tag).
//!
//! Every check reads what Redis holds: each key's value is the guard's
//! token, and no key of a set that was not taken is left behind.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use distributed_mutex::{
    DistributedMutex, Error, LostKey, LostReason, MultiGuard, RetryStrategy, MAX_LOCK_ALL_KEYS,
};
use fred::prelude::*;

use crate::support::cluster::{RedisCluster, MASTERS};
use crate::support::common::{
    builder_at, builder_for, gone_within, ms, mutex_at, mutex_for, raw_dbsize, raw_exists, raw_get,
    raw_get_and_pttl, Fixture,
};

/// Patient waiting: a 20 s budget, polling every 5 ms when no release
/// message comes. Anything that needs it all is a bug (deadlock, lost
/// wake-up).
fn patient() -> RetryStrategy {
    RetryStrategy::linear(ms(5), 4_000)
}

/// Asserts that every key of `guard` holds its token in Redis, with a PTTL
/// in `1..=ttl`.
async fn assert_held(raw: &Client, guard: &MultiGuard, ttl: Duration) {
    for key in guard.keys() {
        let (value, pttl, _) = raw_get_and_pttl(raw, key).await;
        assert_eq!(value.as_deref(), Some(guard.token()), "{key}");
        assert!(
            pttl > 0 && pttl <= ttl.as_millis() as i64,
            "{key}: PTTL {pttl} for a TTL of {ttl:?}"
        );
    }
}

/// Asserts that none of `keys` exists (now, or within `limit` for releases
/// queued in the background).
async fn assert_all_gone(raw: &Client, keys: &[&str], limit: Duration) {
    for key in keys {
        assert!(
            gone_within(raw, key, limit).await,
            "{key} still holds {:?}",
            raw_get(raw, key).await
        );
    }
}

// ---- basics on one server ------------------------------------------------------

/// Three keys are taken with one token, a rival can take none of them (alone
/// or as a set), and `release` deletes them all.
#[tokio::test]
async fn every_key_holds_the_guards_token_until_release() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let rival = mutex_for(&server).await;
    let keys = ["multi:a", "multi:b", "multi:c"];

    let guard = mutex.lock_all(keys).await.unwrap();
    assert_eq!(guard.keys().len(), 3);
    assert_eq!(guard.token().len(), 36, "a v4 UUID");
    // Every future of the API can be spawned.
    fn is_send<T: Send>(_: &T) {}
    is_send(&guard.lost());
    is_send(&guard.extend(ms(1000)));
    is_send(&mutex.lock_all(["x"]));
    is_send(&mutex.try_lock_all(["x"]));
    is_send(&mutex.acquire_all(["x"]).into_future());
    assert_held(&raw, &guard, Duration::from_secs(60)).await;
    assert!(!guard.is_lost());
    assert!(guard.lost_key().is_none());
    assert!(guard.remaining() > Duration::from_secs(50));
    assert_eq!(guard.ttl(), Duration::from_secs(60));
    assert_eq!(guard.leases().len(), 3);

    for key in keys {
        assert!(rival.try_lock(key).await.unwrap().is_none(), "{key}");
    }
    assert!(rival
        .try_lock_all(["multi:c", "multi:free"])
        .await
        .unwrap()
        .is_none());
    assert!(
        !raw_exists(&raw, "multi:free").await,
        "a set not taken leaves nothing behind"
    );

    guard.release().await.unwrap();
    assert_all_gone(&raw, &keys, Duration::ZERO).await;
    // Free again, for anyone.
    let again = rival.try_lock_all(keys.iter().rev()).await.unwrap();
    assert!(again.is_some());
}

/// Duplicates are merged; the guard lists each key once, in canonical order,
/// and dropping it releases every key.
#[tokio::test]
async fn duplicate_keys_are_merged_and_drop_releases_all() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;
    let guard = mutex
        .lock_all(vec!["dup:b", "dup:a", "dup:b", "dup:a", "dup:b"])
        .await
        .unwrap();
    let mut listed: Vec<&str> = guard.keys().collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    listed.sort_unstable();
    assert_eq!(listed, ["dup:a", "dup:b"]);
    assert_held(&raw, &guard, Duration::from_secs(60)).await;
    drop(guard);
    assert_all_gone(&raw, &["dup:a", "dup:b"], Duration::from_secs(5)).await;
}

/// Bad input is refused with typed errors before anything is sent: an empty
/// set, an empty or too long key, too many keys (also from an endless
/// iterator), a zero TTL, a strategy without attempts. The largest set
/// allowed works.
#[tokio::test]
async fn bad_sets_are_typed_errors_and_the_largest_set_works() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;

    let empty: [&str; 0] = [];
    match mutex.lock_all(empty).await {
        Err(Error::InvalidKeySet { count: 0, .. }) => {}
        other => panic!("empty set: {other:?}"),
    }
    assert!(matches!(
        mutex.try_lock_all(Vec::<String>::new()).await,
        Err(Error::InvalidKeySet { count: 0, .. })
    ));
    match mutex.lock_all(["ok", ""]).await {
        Err(Error::InvalidKey { key, .. }) => assert_eq!(key, ""),
        other => panic!("empty key: {other:?}"),
    }
    let long = "k".repeat(distributed_mutex::MAX_KEY_LEN + 1);
    assert!(matches!(
        mutex.lock_all(["ok", long.as_str()]).await,
        Err(Error::InvalidKey { .. })
    ));
    let too_many: Vec<String> = (0..=MAX_LOCK_ALL_KEYS)
        .map(|n| format!("many:{n}"))
        .collect();
    match mutex.lock_all(&too_many).await {
        Err(e @ Error::InvalidKeySet { .. }) => {
            assert!(e.to_string().contains("at most 1024"), "{e}");
            assert!(e.key().is_none());
        }
        other => panic!("too many: {:?}", other.map(|g| g.keys().len())),
    }
    let endless = (0u64..).map(|n| format!("endless:{n}"));
    assert!(matches!(
        mutex.lock_all(endless).await,
        Err(Error::InvalidKeySet { .. })
    ));
    match mutex.lock_all(std::iter::repeat("same")).await {
        Err(Error::InvalidKeySet { count: 1, .. }) => {}
        other => panic!("endless duplicates: {:?}", other.map(|g| g.keys().len())),
    }
    assert!(matches!(
        mutex.acquire_all(["a"]).ttl(Duration::ZERO).await,
        Err(Error::InvalidTtl { .. })
    ));
    assert!(matches!(
        mutex
            .acquire_all(["a"])
            .retry(RetryStrategy::linear(ms(1), 0))
            .await,
        Err(Error::Config { .. })
    ));
    assert_eq!(raw_dbsize(&raw).await, 0, "nothing was sent");

    // Exactly the maximum, each given twice: one script call takes them all.
    let max: Vec<String> = (0..MAX_LOCK_ALL_KEYS).map(|n| format!("max:{n}")).collect();
    let guard = mutex.lock_all(max.iter().chain(max.iter())).await.unwrap();
    assert_eq!(guard.keys().len(), MAX_LOCK_ALL_KEYS);
    assert_eq!(raw_dbsize(&raw).await, MAX_LOCK_ALL_KEYS as i64);
    assert_eq!(
        raw_get(&raw, "max:777").await.as_deref(),
        Some(guard.token())
    );
    guard.release().await.unwrap();
    assert_eq!(raw_dbsize(&raw).await, 0);
}

/// On a server without replicas, a mutex that confirms writes with `WAIT`
/// gets `NotReplicated` for a set (at once: no second attempt) and leaves
/// none of its keys behind; `min_replicas(0, ..)` on the call turns it
/// off. A shut-down mutex refuses sets.
#[tokio::test]
async fn unconfirmed_sets_and_shutdown_leave_nothing() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let confirming = builder_for(&server)
        .await
        .min_replicas(1, ms(100))
        .build()
        .unwrap();
    let keys = ["conf:a", "conf:b", "conf:c"];
    match confirming.acquire_all(keys).retry(patient()).await {
        Err(Error::NotReplicated {
            key, acked, wanted, ..
        }) => {
            assert!(keys.contains(&key.as_str()), "{key}");
            assert_eq!((acked, wanted), (0, 1));
        }
        other => panic!("{other:?}"),
    }
    assert_all_gone(&raw, &keys, Duration::from_secs(5)).await;
    let unconfirmed = confirming
        .acquire_all(keys)
        .min_replicas(0, Duration::ZERO)
        .await
        .unwrap();
    assert_held(&raw, &unconfirmed, Duration::from_secs(60)).await;
    unconfirmed.release().await.unwrap();

    mutex.shutdown().await;
    match mutex.lock_all(["down:a", "down:b"]).await {
        Err(Error::Shutdown { key }) => assert!(key.starts_with("down:")),
        other => panic!("after shutdown: {other:?}"),
    }
    assert_eq!(raw_dbsize(&raw).await, 0);
}

// ---- partial failure -------------------------------------------------------------

/// One key of the set held by a rival: `try_lock_all` gets nothing and
/// `lock_all` gives up naming that key, and neither leaves any key of the
/// set behind; the rival's lock is untouched. A key of another type is
/// `WrongType` naming it, again with nothing left behind.
#[tokio::test]
async fn a_busy_or_foreign_key_leaves_no_key_of_the_set_behind() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let rival = mutex_for(&server).await;
    let keys = ["part:a", "part:b", "part:c", "part:d"];
    let held = rival.lock("part:c").await.unwrap();

    assert!(mutex.try_lock_all(keys).await.unwrap().is_none());
    for key in ["part:a", "part:b", "part:d"] {
        assert!(!raw_exists(&raw, key).await, "{key} left behind");
    }
    let started = Instant::now();
    let failed = mutex
        .acquire_all(keys)
        .retry(RetryStrategy::linear(ms(20), 10))
        .await;
    match failed {
        Err(Error::NotObtained { key, attempts, .. }) => {
            assert_eq!(key, "part:c");
            assert!(attempts >= 2, "{attempts} attempt(s)");
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    for key in ["part:a", "part:b", "part:d"] {
        assert!(!raw_exists(&raw, key).await, "{key} left behind");
    }
    assert_eq!(raw_get(&raw, "part:c").await.as_deref(), Some(held.token()));
    held.release().await.unwrap();

    let _: () = raw.rpush("part:b", "not a lock").await.unwrap();
    match mutex.lock_all(keys).await {
        Err(Error::WrongType { key, .. }) => assert_eq!(key, "part:b"),
        other => panic!("{other:?}"),
    }
    for key in ["part:a", "part:c", "part:d"] {
        assert!(!raw_exists(&raw, key).await, "{key} left behind");
    }
}

/// Attempts sent to a paused server time out: the call fails with a
/// transient error (never `NotObtained`), and once the server runs again
/// the attempts' scripts (which then run) are rolled back: no key is left,
/// and the set can be taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_attempts_are_rolled_back_once_the_server_answers() {
    let Fixture { server, raw, .. } = Fixture::start().await;
    let mutex = builder_for(&server)
        .await
        .command_timeout(ms(300))
        .build()
        .unwrap();
    let keys = ["paused:a", "paused:b", "paused:c"];
    // Scripts loaded, so the paused attempts are the calls that set keys.
    mutex.lock_all(keys).await.unwrap().release().await.unwrap();

    server.pause();
    let result = mutex
        .acquire_all(keys)
        .retry(RetryStrategy::linear(ms(100), 3))
        .await;
    server.resume();
    match result {
        Err(e) => assert!(e.is_transient(), "{e:?}"),
        Ok(guard) => panic!("taken on a paused server: {guard:?}"),
    }
    mutex.shutdown().await;
    assert_all_gone(&raw, &keys, Duration::from_secs(5)).await;
    let again = mutex_for(&server).await;
    let guard = again.try_lock_all(keys).await.unwrap().expect("free again");
    assert_held(&raw, &guard, Duration::from_secs(60)).await;
}

/// A waiter blocked by one key is woken by that key's release message: it
/// takes the set long before its next poll (10 s away) would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_takes_the_set_when_the_blocking_key_is_released() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let rival = mutex_for(&server).await;
    let held = rival.lock("wake:b").await.unwrap();
    let waiter = tokio::spawn({
        let mutex = mutex.clone();
        async move {
            let started = Instant::now();
            let guard = mutex
                .acquire_all(["wake:a", "wake:b"])
                .retry(RetryStrategy::linear(Duration::from_secs(10), 3))
                .await;
            (guard, started.elapsed())
        }
    });
    tokio::time::sleep(ms(300)).await;
    assert!(
        !raw_exists(&raw, "wake:a").await,
        "nothing held while waiting"
    );
    held.release().await.unwrap();
    let (guard, waited) = waiter.await.unwrap();
    let guard = guard.unwrap();
    assert!(
        waited < Duration::from_secs(8),
        "woken by the release message, not a poll: {waited:?}"
    );
    assert_held(&raw, &guard, Duration::from_secs(60)).await;
}

/// Acquisitions dropped at random points, with a rival taking and releasing
/// one key of the set all along, leave nothing locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquisitions_leave_nothing_locked() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let rival = mutex_for(&server).await;
    let stop = Arc::new(AtomicBool::new(false));
    let churn = tokio::spawn({
        let (rival, stop) = (rival.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                let guard = rival.acquire("cancel:b").retry(patient()).await.unwrap();
                tokio::time::sleep(ms(1)).await;
                guard.release().await.unwrap();
            }
        }
    });
    let mut taken = 0;
    let mut cancelled = 0;
    for i in 0..300u64 {
        let limit = Duration::from_micros(fastrand::u64(0..3_000));
        let attempt = mutex
            .acquire_all(["cancel:a", "cancel:b", "cancel:c"])
            .retry(patient());
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(guard)) => {
                taken += 1;
                if i % 2 == 0 {
                    guard.release().await.unwrap();
                }
            }
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => cancelled += 1,
        }
    }
    stop.store(true, Ordering::SeqCst);
    churn.await.unwrap();
    mutex.shutdown().await;
    rival.shutdown().await;
    assert_eq!(raw_dbsize(&raw).await, 0, "locks left behind");
    assert!(
        cancelled > 0 && taken > 0,
        "{taken} taken, {cancelled} cancelled"
    );
}

// ---- renewal and loss ------------------------------------------------------------

/// A 1 s lease on three keys, held for 3 s: every key keeps the token
/// with a live PTTL, and the guard is never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_is_renewed() {
    let Fixture { server, raw, .. } = Fixture::start().await;
    let ttl = ms(1000);
    let mutex = builder_for(&server).await.ttl(ttl).build().unwrap();
    let guard = mutex
        .lock_all(["renew:a", "renew:b", "renew:c"])
        .await
        .unwrap();
    let started = Instant::now();
    let mut samples = 0;
    while started.elapsed() < Duration::from_secs(3) {
        assert_held(&raw, &guard, ttl).await;
        assert!(!guard.is_lost(), "{:?}", guard.lost_key());
        samples += 1;
        tokio::time::sleep(ms(50)).await;
    }
    assert!(samples >= 10, "{samples} samples");
    // Past three leases: renewed, not just still within the first one.
    assert!(guard.remaining() > Duration::ZERO);
    guard.release().await.unwrap();
}

/// Deleting one key of a held set: `lost()` names that key (`Missing`),
/// `is_lost` and `remaining` follow, `release` reports it and still
/// releases the others. Replacing one key: `extend` reports it
/// (`Replaced`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_names_the_key_that_was_lost() {
    let Fixture { server, raw, .. } = Fixture::start().await;
    let mutex = builder_for(&server).await.ttl(ms(900)).build().unwrap();
    let guard = mutex
        .lock_all(["loss:a", "loss:b", "loss:c"])
        .await
        .unwrap();
    let _: i64 = raw.del("loss:b").await.unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost() fires at the next renewal");
    assert_eq!(
        (lost.key.as_str(), lost.reason),
        ("loss:b", LostReason::Missing)
    );
    assert!(lost.to_string().contains("loss:b"), "{lost}");
    assert!(guard.is_lost());
    assert_eq!(guard.remaining(), Duration::ZERO);
    assert_eq!(guard.lost_key(), Some(lost.clone()));
    match guard.release().await {
        Err(Error::NotHeld { key, reason }) => {
            assert_eq!((key.as_str(), reason), ("loss:b", LostReason::Missing));
        }
        other => panic!("{other:?}"),
    }
    assert_all_gone(&raw, &["loss:a", "loss:c"], Duration::ZERO).await;

    let guard = mutex
        .acquire_all(["ext:a", "ext:b"])
        .auto_renew(false)
        .await
        .unwrap();
    guard.extend(Duration::from_secs(30)).await.unwrap();
    assert_held(&raw, &guard, Duration::from_secs(30)).await;
    assert!(guard.remaining() > Duration::from_secs(25));
    let _: () = raw
        .set("ext:b", "someone else", None, None, false)
        .await
        .unwrap();
    match guard.extend(Duration::from_secs(30)).await {
        Err(Error::NotHeld { key, reason }) => {
            assert_eq!((key.as_str(), reason), ("ext:b", LostReason::Replaced));
        }
        other => panic!("{other:?}"),
    }
    let lost: LostKey = guard.lost().await;
    assert_eq!(lost.key, "ext:b");
    drop(guard);
    assert_all_gone(&raw, &["ext:a"], Duration::from_secs(5)).await;
    assert_eq!(
        raw_get(&raw, "ext:b").await.as_deref(),
        Some("someone else"),
        "the other holder's key is untouched"
    );
}

// ---- exclusion under contention ----------------------------------------------------

/// Who is inside a critical section, per key.
#[derive(Default)]
struct Inside {
    counts: Vec<AtomicUsize>,
    overlaps: AtomicUsize,
}

impl Inside {
    fn new(keys: usize) -> Arc<Self> {
        Arc::new(Inside {
            counts: (0..keys).map(|_| AtomicUsize::new(0)).collect(),
            overlaps: AtomicUsize::new(0),
        })
    }

    fn enter(&self, key: usize) {
        if self.counts[key].fetch_add(1, Ordering::SeqCst) != 0 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn leave(&self, key: usize) {
        self.counts[key].fetch_sub(1, Ordering::SeqCst);
    }
}

/// Two instances lock overlapping sets in opposite orders, 1,000 rounds
/// each, while a third takes the shared key alone: never two holders of a
/// key (by a table of who is inside, and by each key's value in Redis), no
/// release finds its lock gone, nobody gives up (no deadlock), and nothing
/// is left. `keys[0..3]` are the keys; returns the run time.
async fn opposite_orders(url: &str, raw: &Client, keys: [String; 3], rounds: usize) -> Duration {
    const TTL: Duration = Duration::from_secs(20);
    let inside = Inside::new(3);
    let started = Instant::now();
    let mut tasks = Vec::new();
    // Instance A: keys 0, 1, 2; instance B: keys 2, 1 (the other way round).
    for order in [vec![0usize, 1, 2], vec![2usize, 1]] {
        let mutex = builder_at(url)
            .await
            .ttl(TTL)
            .retry(patient())
            .build()
            .unwrap();
        let (keys, inside, raw) = (keys.clone(), inside.clone(), raw.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..rounds {
                let set: Vec<&str> = order.iter().map(|&i| keys[i].as_str()).collect();
                let guard = mutex
                    .lock_all(&set)
                    .await
                    .unwrap_or_else(|e| panic!("round {round} of {order:?}: {e}"));
                for &i in &order {
                    inside.enter(i);
                }
                if round % 50 == 0 {
                    for key in &set {
                        let value = raw_get(&raw, key).await;
                        assert_eq!(value.as_deref(), Some(guard.token()), "{key}");
                    }
                }
                tokio::task::yield_now().await;
                for &i in &order {
                    inside.leave(i);
                }
                guard
                    .release()
                    .await
                    .unwrap_or_else(|e| panic!("round {round} of {order:?}: {e}"));
            }
            mutex.shutdown().await;
        }));
    }
    // Instance C: the shared key alone.
    let single = builder_at(url).await.retry(patient()).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let solo = tokio::spawn({
        let (key, inside, stop) = (keys[1].clone(), inside.clone(), stop.clone());
        async move {
            let mut taken = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let guard = single.lock(&key).await.unwrap();
                inside.enter(1);
                tokio::task::yield_now().await;
                inside.leave(1);
                guard.release().await.unwrap();
                taken += 1;
                tokio::time::sleep(ms(2)).await;
            }
            single.shutdown().await;
            taken
        }
    });
    for task in tasks {
        task.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let solo_taken = solo.await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(
        inside.overlaps.load(Ordering::SeqCst),
        0,
        "two holders of a key"
    );
    assert!(solo_taken > 0, "the single-key locker got its turns");
    for key in &keys {
        assert!(!raw_exists(raw, key).await, "{key} left behind");
    }
    eprintln!("{rounds} rounds x 2 sets, {solo_taken} single locks: {elapsed:?}");
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_orders_1000_rounds_never_deadlock_or_overlap() {
    let Fixture {
        server,
        raw,
        mutex: _mutex,
    } = Fixture::start().await;
    let keys = ["opp:x".to_owned(), "opp:y".to_owned(), "opp:z".to_owned()];
    let elapsed = opposite_orders(&server.url(), &raw, keys, 1_000).await;
    assert!(elapsed < Duration::from_secs(120), "{elapsed:?}");
}

// ---- Redis Cluster ---------------------------------------------------------------

/// Two keys on each master: every key is on its master with the guard's
/// token; a rival's overlapping set is refused and leaves nothing on any
/// master; release deletes every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keys_on_every_master_are_taken_and_released_together() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let raw = cluster.client().await;
    let mutex = mutex_at(&url).await;
    let rival = mutex_at(&url).await;
    let keys: Vec<String> = (0..MASTERS)
        .flat_map(|i| cluster.keys_on_master(i, "mc:", 2))
        .collect();

    let guard = mutex.lock_all(&keys).await.unwrap();
    assert_eq!(guard.keys().len(), 2 * MASTERS);
    for key in &keys {
        let master = cluster.master(cluster.master_for_key(key));
        assert_eq!(master.cli(&["GET", key]), guard.token(), "{key}");
    }
    assert_held(&raw, &guard, Duration::from_secs(60)).await;

    let free: Vec<String> = (0..MASTERS)
        .map(|i| cluster.key_on_master(i, "mc-free:"))
        .collect();
    let mut overlapping = free.clone();
    overlapping.push(keys[keys.len() - 1].clone());
    assert!(rival.try_lock_all(&overlapping).await.unwrap().is_none());
    let free_refs: Vec<&str> = free.iter().map(String::as_str).collect();
    assert_all_gone(&raw, &free_refs, Duration::from_secs(5)).await;

    guard.release().await.unwrap();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_all_gone(&raw, &key_refs, Duration::ZERO).await;
    let again = rival.try_lock_all(&overlapping).await.unwrap().unwrap();
    again.release().await.unwrap();
}

/// Keys under one hash tag are in one slot: one script call takes them
/// (all on one master), and the whole set is renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keys_under_one_hash_tag_are_taken_and_renewed_together() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let raw = cluster.client().await;
    let ttl = ms(1000);
    let mutex = builder_at(&url).await.ttl(ttl).build().unwrap();
    let keys = ["{acct}:1", "{acct}:2", "{acct}:3"];
    let master = cluster.master(cluster.master_for_key("{acct}:1"));
    let evalsha_before = crate::support::common::command_calls(master, "evalsha");
    let guard = mutex.lock_all(keys).await.unwrap();
    let evalsha_after = crate::support::common::command_calls(master, "evalsha");
    assert!(
        evalsha_after - evalsha_before <= 2,
        "one script call (and one more after NOSCRIPT at most): {evalsha_before} -> {evalsha_after}"
    );
    for key in keys {
        assert_eq!(master.cli(&["GET", key]), guard.token(), "{key}");
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        assert_held(&raw, &guard, ttl).await;
        assert!(!guard.is_lost());
        tokio::time::sleep(ms(50)).await;
    }
    guard.release().await.unwrap();
    assert_all_gone(&raw, &keys, Duration::ZERO).await;
}

/// A key on the master that serves the last slots, held by a rival: the
/// groups taken before it (on the other masters) are rolled back, and the
/// call gives up naming that key with nothing of the set left anywhere.
/// Then the rival's key is lost under a held set: `lost()` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_partial_failure_leaves_no_key_on_any_master() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let raw = cluster.client().await;
    let mutex = builder_at(&url).await.ttl(ms(900)).build().unwrap();
    let rival = mutex_at(&url).await;
    let keys: Vec<String> = (0..MASTERS)
        .map(|i| cluster.key_on_master(i, "mp:"))
        .collect();
    // Master 2 serves the highest slots: its group comes last.
    let last = keys[MASTERS - 1].clone();
    let held = rival.lock(&last).await.unwrap();
    match mutex
        .acquire_all(&keys)
        .retry(RetryStrategy::linear(ms(20), 5))
        .await
    {
        Err(Error::NotObtained { key, .. }) => assert_eq!(key, last),
        other => panic!("{other:?}"),
    }
    let others: Vec<&str> = keys[..MASTERS - 1].iter().map(String::as_str).collect();
    assert_all_gone(&raw, &others, Duration::from_secs(5)).await;
    assert_eq!(raw_get(&raw, &last).await.as_deref(), Some(held.token()));
    held.release().await.unwrap();

    let guard = mutex.lock_all(&keys).await.unwrap();
    let victim = &keys[1];
    let master = cluster.master(1);
    assert_eq!(master.cli(&["DEL", victim]), "1");
    let lost = tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost() fires");
    assert_eq!(
        (lost.key.as_str(), lost.reason),
        (victim.as_str(), LostReason::Missing)
    );
    drop(guard);
    let all: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_all_gone(&raw, &all, Duration::from_secs(5)).await;
}

/// The opposite-order run on a cluster, with the three keys on three
/// masters: three script calls per attempt, one per slot, taken in the
/// canonical order (slot, then key) whatever the caller's order, and rolled
/// back when a later one is busy. (On one server, one script call takes
/// the whole set.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_opposite_orders_1000_rounds_never_deadlock_or_overlap() {
    let cluster = RedisCluster::start();
    let raw = cluster.client().await;
    let keys: [String; 3] = [
        cluster.key_on_master(0, "mo:"),
        cluster.key_on_master(1, "mo:"),
        cluster.key_on_master(2, "mo:"),
    ];
    let elapsed = opposite_orders(&cluster.url(), &raw, keys, 1_000).await;
    assert!(elapsed < Duration::from_secs(120), "{elapsed:?}");
}

/// `lock_all` on a mutex with a key prefix: the Redis keys carry it, and
/// `keys()` gives them as the caller did.
#[tokio::test]
async fn the_key_prefix_applies_to_every_key() {
    let Fixture { server, raw, .. } = Fixture::start().await;
    let mutex: DistributedMutex = builder_for(&server)
        .await
        .key_prefix("app:")
        .build()
        .unwrap();
    let guard = mutex.lock_all(["p1", "p2"]).await.unwrap();
    let mut listed: Vec<&str> = guard.keys().collect();
    listed.sort_unstable();
    assert_eq!(listed, ["p1", "p2"]);
    for key in ["app:p1", "app:p2"] {
        assert_eq!(raw_get(&raw, key).await.as_deref(), Some(guard.token()));
    }
    assert!(!raw_exists(&raw, "p1").await);
    guard.release().await.unwrap();
    assert_eq!(raw_dbsize(&raw).await, 0);
}

/// `GET key` on a cluster replica (after `READONLY` on the same connection).
fn get_on_replica(cluster: &RedisCluster, master: usize, key: &str) -> String {
    let out = cluster
        .replica(master)
        .cli_session(&format!("READONLY\nGET {key}\n"));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("OK"), "READONLY: {out:?}");
    lines.next().unwrap_or("").to_owned()
}

/// With `min_replicas(1, ..)` (each master has one replica), a set with a
/// key on every master is on every replica when `lock_all` returns, its
/// renewals and extension are confirmed; `min_replicas(2, ..)` (more than
/// a shard has) fails with `NotReplicated` and leaves nothing on any
/// master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_min_replicas_confirms_every_group() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let raw = cluster.client().await;
    let mutex = builder_at(&url)
        .await
        .min_replicas(1, Duration::from_secs(1))
        .ttl(ms(900))
        .build()
        .unwrap();
    let keys: Vec<String> = (0..MASTERS)
        .map(|i| cluster.key_on_master(i, "mr:"))
        .collect();
    let guard = mutex.lock_all(&keys).await.unwrap();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(get_on_replica(&cluster, i, key), guard.token(), "{key}");
    }
    tokio::time::sleep(ms(1500)).await;
    assert!(
        !guard.is_lost(),
        "confirmed renewals: {:?}",
        guard.lost_key()
    );
    guard.extend(ms(5000)).await.unwrap();
    assert!(guard.remaining() > ms(2500), "{:?}", guard.remaining());
    guard.release().await.unwrap();

    let more: Vec<String> = (0..MASTERS)
        .map(|i| cluster.key_on_master(i, "mr-two:"))
        .collect();
    match mutex.acquire_all(&more).min_replicas(2, ms(300)).await {
        Err(Error::NotReplicated {
            acked: 1,
            wanted: 2,
            key,
            ..
        }) => {
            assert_eq!(key, more[0], "the first group (lowest slot) fails");
        }
        other => panic!("{other:?}"),
    }
    let refs: Vec<&str> = more.iter().map(String::as_str).collect();
    assert_all_gone(&raw, &refs, Duration::from_secs(5)).await;
    mutex.shutdown().await;
}
