//! The mutex on a real Redis Cluster: a private six-node cluster (3
//! masters, 3 replicas; see `tests/support/cluster.rs`) per test, with
//! keys chosen so that every master is exercised.
//!
//! Raw reads of a lock key go to the master that serves it with
//! `redis-cli` (no `-c`: a key on another node would answer `MOVED`, not
//! its value), so they show where the key lives, not just that some node
//! has it.

use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, LockGuard, LostReason, RetryStrategy};
use fred::util::redis_keyslot;

use crate::support::cluster::{shard_subscribers, RedisCluster, MASTERS};

mod adapter;
mod calls;
mod cancel;
mod leases;
mod stall;
use crate::support::common::{builder_at, fence_key, ms, mutex_at, raw_get_bytes};

/// `GET key` on the `i`-th master itself.
fn get_on(cluster: &RedisCluster, i: usize, key: &str) -> String {
    cluster.master(i).cli(&["GET", key])
}

/// `PTTL key` on the `i`-th master itself.
fn pttl_on(cluster: &RedisCluster, i: usize, key: &str) -> i64 {
    let reply = cluster.master(i).cli(&["PTTL", key]);
    reply
        .parse()
        .unwrap_or_else(|_| panic!("PTTL {key} on master {i}: {reply:?}"))
}

/// Polls `GET key` on the `i`-th master until it is nil; `true` if that
/// happened within `limit`.
async fn gone_on_within(cluster: &RedisCluster, i: usize, key: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if get_on(cluster, i, key).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(ms(10)).await;
    }
}

/// Keys matching `pattern` on every node that is a master now (`KEYS` on
/// each, sorted): what a test left behind anywhere in the cluster.
fn keys_on_masters(cluster: &RedisCluster, pattern: &str) -> Vec<String> {
    let masters: Vec<u16> = cluster
        .roles()
        .into_iter()
        .filter(|(_, role)| role == "master")
        .map(|(port, _)| port)
        .collect();
    let mut keys: Vec<String> = cluster
        .nodes()
        .iter()
        .filter(|n| masters.contains(&n.port()))
        .flat_map(|n| {
            n.cli(&["KEYS", pattern])
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    keys.sort();
    keys
}

/// Subscribers of the shard channels matching `pattern`, summed over
/// every node.
fn shard_numsub_anywhere(cluster: &RedisCluster, pattern: &str) -> i64 {
    cluster
        .nodes()
        .iter()
        .map(|n| shard_subscribers(|args| n.cli(args), pattern))
        .sum()
}

// ---- lock / try_lock / release / drop / extend ----------------------------

/// On a key served by each master: lock, exclusion by a second mutex,
/// extend, release, drop-release and a new holder after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_try_lock_release_drop_and_extend_on_every_master() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let a = mutex_at(&url).await;
    let b = builder_at(&url)
        .await
        .retry(RetryStrategy::linear(ms(50), 4))
        .build()
        .unwrap();

    for i in 0..MASTERS {
        let key = cluster.key_on_master(i, "cluster:lock:");
        assert_eq!(cluster.master_for_key(&key), i);

        // A's lock lives on master i and excludes B.
        let guard = a.lock(&key).await.unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(
            get_on(&cluster, i, &key),
            guard.token(),
            "{key} on master {i}"
        );
        assert!(
            b.try_lock(&key).await.unwrap().is_none(),
            "{key}: B got A's lock"
        );
        let refused = b.lock(&key).await;
        assert!(
            matches!(refused, Err(distributed_mutex::Error::NotObtained { .. })),
            "{key}: B waiting for A's lock: {refused:?}"
        );

        // Extend: the new TTL is what master i holds.
        guard.extend(Duration::from_secs(120)).await.unwrap();
        let left = pttl_on(&cluster, i, &key);
        assert!(
            left > 100_000 && left <= 120_000,
            "{key}: PTTL {left} after extend"
        );

        // Release: gone, and B gets it at once.
        guard.release().await.unwrap();
        assert_eq!(get_on(&cluster, i, &key), "", "{key} after release");
        let theirs = b
            .try_lock(&key)
            .await
            .unwrap()
            .expect("B locks after release");
        assert_eq!(get_on(&cluster, i, &key), theirs.token());
        assert!(
            a.try_lock(&key).await.unwrap().is_none(),
            "{key}: A got B's lock"
        );

        // Drop: released in the background, and A gets it again.
        let token = theirs.token().to_owned();
        drop(theirs);
        assert!(
            gone_on_within(&cluster, i, &key, Duration::from_secs(3)).await,
            "{key}: B's dropped guard ({token}) was not released"
        );
        let again = a.try_lock(&key).await.unwrap().expect("A locks after drop");
        again.release().await.unwrap();
    }
    a.shutdown().await;
    b.shutdown().await;
}

// ---- fencing --------------------------------------------------------------------

/// Fencing tokens from two mutexes taking turns strictly increase on every
/// master, and the counter is in the lock key's slot, on that master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_on_every_master_and_live_in_the_lock_keys_slot() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let raw = cluster.client().await;
    let mutexes = [mutex_at(&url).await, mutex_at(&url).await];

    for i in 0..MASTERS {
        let key = cluster.key_on_master(i, "cluster:fence:");
        let fence = fence_key("", &key);
        let slot = redis_keyslot(key.as_bytes());
        assert_eq!(
            redis_keyslot(&fence),
            slot,
            "fence key of {key} in another slot"
        );

        let mut last = 0;
        for n in 0..10 {
            let guard = mutexes[n % 2]
                .acquire(&key)
                .fencing()
                .await
                .unwrap_or_else(|e| panic!("{key} #{n}: {e}"));
            let token = guard.fencing_token().expect("fencing is on");
            assert!(
                token > last,
                "{key} (master {i}): token {token} after {last}"
            );
            last = token;
            // Master i holds the lock key and the counter in that slot.
            let in_slot = cluster
                .master(i)
                .cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
            assert_eq!(in_slot, "2", "{key}: keys in slot {slot} on master {i}");
            guard.release().await.unwrap();
        }
        assert_eq!(
            raw_get_bytes(&raw, &fence).await,
            Some(last.to_string()),
            "{key}: the counter"
        );
    }
    for mutex in &mutexes {
        mutex.shutdown().await;
    }
}

// ---- one stalled master ---------------------------------------------------------

/// How many auto-renewed locks each master serves in the stall test.
const LOCKS_PER_MASTER: usize = 20;
/// Their TTL.
const STALL_TTL: Duration = Duration::from_millis(900);
/// How long the stalled master stays paused.
const PAUSE: Duration = Duration::from_millis(2500);
/// Which master is paused.
const PAUSED: usize = 1;

/// 20 auto-renewed 900 ms leases on each master (one mutex); one master is
/// SIGSTOPped for 2.5 s. Every lease on the two healthy masters stays held
/// throughout (checked every 10 ms) and their keys keep their tokens; every
/// lease on the stalled master is reported lost, `Expired`, by its local
/// validity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_master_does_not_cost_the_healthy_masters_leases() {
    let cluster = RedisCluster::start();
    let mutex = builder_at(&cluster.url())
        .await
        .ttl(STALL_TTL)
        .build()
        .unwrap();

    let mut guards: Vec<(usize, LockGuard)> = Vec::new();
    for i in 0..MASTERS {
        for key in cluster.keys_on_master(i, "cluster:stall:", LOCKS_PER_MASTER) {
            let guard = mutex
                .lock(&key)
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            guards.push((i, guard));
        }
    }

    // Renewal works on every master: more than a TTL later, all held.
    let mut min_left = [Duration::MAX; MASTERS];
    watch(
        &guards,
        |_| true,
        ms(1500),
        &mut min_left,
        "before the pause",
    )
    .await;

    // Every lease on the paused master reports its loss.
    let paused_at = Instant::now();
    cluster.pause_master(PAUSED);
    let mut losses = Vec::new();
    for (_, guard) in guards.iter().filter(|(i, _)| *i == PAUSED) {
        let lease = guard.lease();
        losses.push(tokio::spawn(async move {
            let reason = lease.lost().await;
            (lease.key().to_owned(), reason, paused_at.elapsed())
        }));
    }

    let mut min_left_paused = [Duration::MAX; MASTERS];
    watch(
        &guards,
        |i| i != PAUSED,
        PAUSE,
        &mut min_left_paused,
        "while a master is paused",
    )
    .await;
    // Still paused: the healthy keys hold their tokens on their masters.
    let tokens_ok = healthy_tokens_held(&cluster, &guards);
    cluster.resume_master(PAUSED);
    let resumed_after = paused_at.elapsed();
    tokens_ok.unwrap_or_else(|e| panic!("{e}"));

    let mut slowest = Duration::ZERO;
    for loss in losses {
        let (key, reason, after) = tokio::time::timeout(ms(100), loss)
            .await
            .expect("lost() fired before the pause ended")
            .expect("loss task");
        assert_eq!(reason, LostReason::Expired, "{key}");
        slowest = slowest.max(after);
    }
    for (_, guard) in guards.iter().filter(|(i, _)| *i == PAUSED) {
        assert!(guard.is_lost(), "{}", guard.key());
    }
    eprintln!(
        "stall: master {PAUSED} paused {resumed_after:?}; its {LOCKS_PER_MASTER} leases all lost \
         (Expired) within {slowest:?}; least remaining() seen per master before the pause \
         {min_left:?}, during it {min_left_paused:?} (master {PAUSED} not watched)"
    );
    // Lost by their local validity: about a TTL after the last renewal,
    // never later than a TTL plus a renewal period after the pause.
    assert!(
        slowest <= STALL_TTL + ms(600),
        "the stalled master's leases were reported lost only {slowest:?} after the pause"
    );

    // After the resume the healthy leases are still held.
    watch(
        &guards,
        |i| i != PAUSED,
        ms(300),
        &mut min_left,
        "after the resume",
    )
    .await;
    healthy_tokens_held(&cluster, &guards).unwrap_or_else(|e| panic!("{e}"));
    drop(guards);
    mutex.shutdown().await;
}

/// Checks every 10 ms for `period` that no lease of a master `watched`
/// selects is lost, recording the least `remaining()` seen per master.
/// Fails at the end, with how many leases each master lost and when the
/// first went (time since the watch began).
async fn watch(
    guards: &[(usize, LockGuard)],
    watched: impl Fn(usize) -> bool,
    period: Duration,
    min_left: &mut [Duration; MASTERS],
    when: &str,
) {
    let started = Instant::now();
    let mut first_loss: [Option<(Duration, String)>; MASTERS] = Default::default();
    let mut checks = 0;
    while started.elapsed() < period {
        for (i, guard) in guards.iter().filter(|(i, _)| watched(*i)) {
            if guard.is_lost() {
                first_loss[*i].get_or_insert_with(|| (started.elapsed(), guard.key().to_owned()));
            } else {
                min_left[*i] = min_left[*i].min(guard.remaining());
            }
        }
        checks += 1;
        tokio::time::sleep(ms(10)).await;
    }
    assert!(checks >= 10, "only {checks} checks {when}");
    let lost: Vec<String> = (0..MASTERS)
        .filter_map(|i| {
            let (at, key) = first_loss[i].as_ref()?;
            let n = guards
                .iter()
                .filter(|(m, g)| *m == i && g.is_lost())
                .count();
            Some(format!("master {i}: {n} lost, the first ({key}) {at:?} in"))
        })
        .collect();
    assert!(
        lost.is_empty(),
        "healthy leases lost {when}: {}",
        lost.join("; ")
    );
}

/// Every lease on a healthy master has its token in its key there.
fn healthy_tokens_held(
    cluster: &RedisCluster,
    guards: &[(usize, LockGuard)],
) -> Result<(), String> {
    for (i, guard) in guards.iter().filter(|(i, _)| *i != PAUSED) {
        let held = get_on(cluster, *i, guard.key());
        if held != guard.token() {
            return Err(format!(
                "{} on healthy master {i} holds {held:?}, not its token {}",
                guard.key(),
                guard.token()
            ));
        }
    }
    Ok(())
}

// ---- release notifications -------------------------------------------------------

/// A waiter (second mutex, polling every 5 s) behind a holder with a 30 s
/// lease is woken by the release, on a key served by each master: it gets
/// the lock within 1 s of the release, where polling alone would take
/// about 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_the_release_on_every_master() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let holder = builder_at(&url)
        .await
        .ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    let waiter = builder_at(&url)
        .await
        .retry(RetryStrategy::linear(Duration::from_secs(5), 3))
        .build()
        .unwrap();

    let mut handoffs = Vec::new();
    for i in 0..MASTERS {
        let key = cluster.key_on_master(i, "cluster:notify:");
        // Sharded pub/sub (Redis 7): the waiter's mutex's handoff channel,
        // in the key's slot.
        let channel = format!("{{{key}}}:handoff:*:{key}");
        handoffs.push(handoff(&cluster, &holder, &waiter, &key, &channel).await);
    }
    eprintln!("notify: waiter acquired after the release, per master: {handoffs:?}");
    for (i, handoff) in handoffs.iter().enumerate() {
        assert!(
            *handoff < Duration::from_secs(1),
            "master {i}: the waiter took {handoff:?} after the release (its poll is 5 s); \
             all masters: {handoffs:?}"
        );
    }
    holder.shutdown().await;
    waiter.shutdown().await;
}

/// The holder locks `key`; the waiter waits for it (subscribed somewhere
/// in the cluster); the holder releases. Returns the time from the release
/// to the waiter's acquisition.
async fn handoff(
    cluster: &RedisCluster,
    holder: &DistributedMutex,
    waiter: &DistributedMutex,
    key: &str,
    channel: &str,
) -> Duration {
    let guard = holder
        .lock(key)
        .await
        .unwrap_or_else(|e| panic!("{key}: {e}"));
    let task = {
        let waiter = waiter.clone();
        let key = key.to_owned();
        tokio::spawn(async move {
            let outcome = waiter.lock(&key).await;
            (Instant::now(), outcome)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while shard_numsub_anywhere(cluster, channel) < 1 {
        assert!(
            Instant::now() < deadline,
            "the waiter never subscribed to {channel} on any node"
        );
        tokio::time::sleep(ms(10)).await;
    }
    // Let the waiter's re-check after subscribing go by: it is asleep.
    tokio::time::sleep(ms(200)).await;
    assert!(!task.is_finished(), "{key}: the waiter got a held lock");
    guard.release().await.unwrap();
    let released = Instant::now();
    let (acquired, outcome) = task.await.expect("waiter task");
    let theirs = outcome.unwrap_or_else(|e| panic!("{key}: the waiter: {e}"));
    theirs.release().await.unwrap();
    acquired.saturating_duration_since(released)
}
