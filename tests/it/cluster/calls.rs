//! What renewal, first attempts and release cost in calls on a cluster:
//! one script call per node for the leases that fall due together, for the
//! first attempts that arrive together and for the releases that queue
//! behind one in flight, whatever the slots of their keys (Redis 7.0+ runs
//! a script declared `allow-cross-slot-keys` on keys of every slot of the
//! node).

use std::sync::Arc;
use std::time::{Duration, Instant};

use distributed_mutex::LockGuard;

use super::get_on;
use crate::support::cluster::{RedisCluster, MASTERS};
use crate::support::common::{builder_at, command_calls, ms, reset_stats};

/// Locks per master.
const LOCKS: usize = 100;
/// Their TTL: renewed every 500 ms.
const TTL: Duration = Duration::from_millis(1500);
/// How long they are held while the calls are counted.
const HOLD: Duration = Duration::from_secs(3);

/// 100 auto-renewed 1.5 s leases per master, each key in a slot of its
/// own, held for 3 s: the masters run a few dozen `EVALSHA` in all, where
/// one call per slot would be 100 per master per 500 ms period (about
/// 1,800). Every lease stays held, its token on its master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_costs_a_call_per_node_not_per_slot() {
    let cluster = RedisCluster::start();
    let mutex = builder_at(&cluster.url()).await.ttl(TTL).build().unwrap();

    let mut guards: Vec<(usize, LockGuard)> = Vec::new();
    for i in 0..MASTERS {
        let keys = cluster.keys_on_master(i, "cluster:calls:", LOCKS);
        let mut slots: Vec<u16> = keys
            .iter()
            .map(|k| fred::util::redis_keyslot(k.as_bytes()))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        assert!(
            slots.len() >= LOCKS - 2,
            "master {i}: {} slots",
            slots.len()
        );
        for key in keys {
            let guard = mutex
                .lock(&key)
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            guards.push((i, guard));
        }
    }

    for i in 0..MASTERS {
        reset_stats(cluster.master(i));
    }
    let started = Instant::now();
    while started.elapsed() < HOLD {
        for (i, guard) in &guards {
            assert!(!guard.is_lost(), "{} on master {i} lost", guard.key());
        }
        tokio::time::sleep(ms(20)).await;
    }
    let held = started.elapsed();
    let calls: Vec<u64> = (0..MASTERS)
        .map(|i| command_calls(cluster.master(i), "evalsha"))
        .collect();
    let periods = (held.as_millis() / (TTL / 3).as_millis()) as u64;
    let per_slot = (LOCKS * MASTERS) as u64 * periods;
    eprintln!(
        "{} leases over {} slots held {held:?}: EVALSHA per master {calls:?} \
         (one call per slot would be about {per_slot})",
        guards.len(),
        LOCKS * MASTERS
    );
    for (i, n) in calls.iter().enumerate() {
        // Renewed at all (every 500 ms), and at most a few calls per period.
        assert!(*n >= periods / 2, "master {i}: only {n} renewal calls");
        assert!(
            *n <= 10 * periods,
            "master {i}: {n} renewal calls in {periods} periods (per slot: {})",
            LOCKS as u64 * periods
        );
    }
    for (i, guard) in &guards {
        assert_eq!(
            get_on(&cluster, *i, guard.key()),
            guard.token(),
            "{}",
            guard.key()
        );
    }
    drop(guards);
    mutex.shutdown().await;
}

/// Tasks releasing at once.
const TASKS: usize = 32;
/// Lock-and-release rounds per task.
const ROUNDS: usize = 20;

/// 32 tasks each take (fenced) and release their own key 20 times, all
/// keys on one master and each in a slot of its own: every release answers `Ok` and
/// every key is gone after, and releases that queue behind one in flight go
/// out together, so the master runs far fewer release calls than releases
/// (one per release with a gate per slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_queued_on_one_node_go_out_together_across_slots() {
    let cluster = RedisCluster::start();
    let mutex = builder_at(&cluster.url()).await.build().unwrap();
    let keys = cluster.keys_on_master(0, "cluster:releases:", TASKS);
    // Every script loaded on master 0 before counting.
    mutex.lock(&keys[0]).await.unwrap().release().await.unwrap();
    reset_stats(cluster.master(0));

    let mut tasks = Vec::new();
    for key in keys.clone() {
        let mutex = mutex.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let guard = mutex
                    .acquire(&key)
                    .fencing()
                    .await
                    .unwrap_or_else(|e| panic!("{key} round {round}: {e}"));
                guard
                    .release()
                    .await
                    .unwrap_or_else(|e| panic!("{key} round {round}: release: {e}"));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let releases = (TASKS * ROUNDS) as u64;
    // Each acquisition is one acquire-script call (fenced: a fenced first
    // attempt is the script, never grouped); the rest are release calls.
    let calls = command_calls(cluster.master(0), "evalsha");
    let release_calls = calls.saturating_sub(releases);
    eprintln!(
        "{releases} releases on one master over {TASKS} slots: {release_calls} release calls"
    );
    assert!(
        calls >= releases,
        "{calls} EVALSHA for {releases} acquisitions"
    );
    assert!(
        release_calls * 3 <= releases * 2,
        "{release_calls} release calls for {releases} releases: not grouped across slots"
    );
    for key in &keys {
        assert_eq!(get_on(&cluster, 0, key), "", "{key} left");
    }
    mutex.shutdown().await;
}

/// First attempts per master.
const ATTEMPTS: usize = 64;

/// 64 tasks per master try their own key at once, each key in a slot of
/// its own: every key is taken, holds its guard's token on its master, and
/// each master ran one `SET` per key inside a handful of script calls (one
/// per node and batch), not 64 calls. After the guards are dropped no key
/// is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_attempts_on_one_node_go_out_together_across_slots() {
    let cluster = RedisCluster::start();
    let mutex = builder_at(&cluster.url()).await.build().unwrap();
    let keys: Vec<(usize, String)> = (0..MASTERS)
        .flat_map(|i| {
            let keys = cluster.keys_on_master(i, "cluster:first:", ATTEMPTS);
            keys.into_iter().map(move |k| (i, k))
        })
        .collect();
    for i in 0..MASTERS {
        reset_stats(cluster.master(i));
    }

    let barrier = Arc::new(tokio::sync::Barrier::new(keys.len()));
    let tasks: Vec<_> = keys
        .iter()
        .map(|(i, key)| {
            let (mutex, barrier, key, i) = (mutex.clone(), barrier.clone(), key.clone(), *i);
            tokio::spawn(async move {
                barrier.wait().await;
                let guard = mutex.try_lock(&key).await;
                (i, guard.unwrap_or_else(|e| panic!("{key}: {e}")))
            })
        })
        .collect();
    let mut guards = Vec::new();
    for task in tasks {
        let (i, guard) = task.await.unwrap();
        guards.push((i, guard.expect("a free key is taken")));
    }
    for (i, guard) in &guards {
        let key = guard.key();
        assert_eq!(get_on(&cluster, *i, key), guard.token(), "{key}");
    }
    for i in 0..MASTERS {
        let sets = command_calls(cluster.master(i), "set");
        let calls =
            command_calls(cluster.master(i), "evalsha") + command_calls(cluster.master(i), "eval");
        eprintln!("master {i}: {ATTEMPTS} first attempts, {sets} SET, {calls} script calls");
        assert_eq!(sets, ATTEMPTS as u64, "master {i}: one SET NX per lock");
        assert!(
            calls >= 1 && calls <= (ATTEMPTS / 4) as u64,
            "master {i}: {calls} script calls for {ATTEMPTS} first attempts"
        );
    }
    let keys: Vec<(usize, String)> = guards
        .iter()
        .map(|(i, g)| (*i, g.key().to_owned()))
        .collect();
    drop(guards);
    mutex.shutdown().await;
    for (i, key) in &keys {
        assert_eq!(get_on(&cluster, *i, key), "", "{key} left");
    }
}
