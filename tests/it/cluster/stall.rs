//! One stalled master under the key layouts users have: keys that share a
//! hash tag (one slot per master, as the README recommends for related
//! keys), a few tags per master, and the paused master being the URL's
//! first node. In each, the healthy masters' leases stay held throughout and
//! the stalled master's leases are reported `Expired` by their local
//! validity. (`one_stalled_master_does_not_cost_the_healthy_masters_leases`
//! in `cluster.rs` covers keys spread over many slots.)

use std::time::{Duration, Instant};

use distributed_mutex::{LockGuard, LostReason};
use fred::interfaces::ClientLike;

use super::{get_on, watch};
use crate::support::cluster::{RedisCluster, MASTERS};
use crate::support::common::{builder_at, ms};

/// Locks per master.
const LOCKS: usize = 20;
/// Their TTL.
const TTL: Duration = Duration::from_millis(900);
/// How long the stalled master stays paused.
const PAUSE: Duration = Duration::from_millis(2500);

/// Which master is paused.
#[derive(Clone, Copy, Debug)]
enum Paused {
    /// The master of the URL's first node.
    UrlFirst,
    /// A master that is not the URL's first node.
    NotUrlFirst,
}

/// `LOCKS` keys on master `i`, sharing `tags` hash tags between them
/// (`{tag}:job:n`, the tags taken round robin); with `tags == 0`, plain
/// keys, each in a slot of its own.
fn tagged_keys(cluster: &RedisCluster, i: usize, tags: usize) -> Vec<String> {
    if tags == 0 {
        return cluster.keys_on_master(i, "stall:", LOCKS);
    }
    let tags = cluster.keys_on_master(i, "stall-t", tags);
    (0..LOCKS)
        .map(|n| format!("{{{}}}:job:{n}", tags[n % tags.len()]))
        .collect()
}

/// The index of the master that is the URL's first node.
fn url_first_master(cluster: &RedisCluster) -> usize {
    let first = cluster.nodes()[0].port();
    cluster
        .masters()
        .iter()
        .position(|&p| p == first)
        .unwrap_or_else(|| panic!("the URL's first node ({first}) is not a master"))
}

/// 20 auto-renewed 900 ms leases per master on keys sharing `tags` hash
/// tags per master (0: no tags), taken back to back from one mutex; one master is
/// SIGSTOPped for 2.5 s. No healthy lease is lost (checked every 10 ms)
/// and their keys keep their tokens; every stalled lease is reported
/// `Expired` within a TTL and a renewal period of the pause.
async fn stall(tags: usize, paused: Paused) {
    let cluster = RedisCluster::start();
    let first = url_first_master(&cluster);
    let stalled = match paused {
        Paused::UrlFirst => first,
        Paused::NotUrlFirst => (first + 1) % MASTERS,
    };
    let mutex = builder_at(&cluster.url()).await.ttl(TTL).build().unwrap();

    let mut guards: Vec<(usize, LockGuard)> = Vec::new();
    for i in 0..MASTERS {
        let keys = tagged_keys(&cluster, i, tags);
        for key in keys {
            assert_eq!(cluster.master_for_key(&key), i, "{key}");
            let guard = mutex
                .lock(&key)
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            guards.push((i, guard));
        }
    }
    assert_eq!(guards.len(), LOCKS * MASTERS);

    // Paused right away, as a process that takes its locks and then meets
    // a stall does: the first renewals (and the first use of the renewal
    // script on each node) fall in the pause.
    let mut min_left = [Duration::MAX; MASTERS];
    let paused_at = Instant::now();
    cluster.pause_master(stalled);
    let mut losses = Vec::new();
    for (_, guard) in guards.iter().filter(|(i, _)| *i == stalled) {
        let lease = guard.lease();
        losses.push(tokio::spawn(async move {
            let reason = lease.lost().await;
            (lease.key().to_owned(), reason, paused_at.elapsed())
        }));
    }
    let mut min_left_paused = [Duration::MAX; MASTERS];
    watch(
        &guards,
        |i| i != stalled,
        PAUSE,
        &mut min_left_paused,
        &format!("while master {stalled} ({paused:?}) is paused"),
    )
    .await;
    let tokens = healthy_tokens_held(&cluster, &guards, stalled);
    cluster.resume_master(stalled);
    tokens.unwrap_or_else(|e| panic!("{e}"));

    let mut slowest = Duration::ZERO;
    for loss in losses {
        let (key, reason, after) = tokio::time::timeout(ms(100), loss)
            .await
            .expect("lost() fired before the pause ended")
            .expect("loss task");
        assert_eq!(reason, LostReason::Expired, "{key}");
        slowest = slowest.max(after);
    }
    let healthy_left: Vec<String> = (0..MASTERS)
        .filter(|&i| i != stalled)
        .map(|i| format!("master {i}: {:?}", min_left_paused[i]))
        .collect();
    eprintln!(
        "stall ({tags} tags per master, master {stalled} {paused:?}): its {LOCKS} leases lost \
         (Expired) within {slowest:?}; least remaining() on the healthy masters during the \
         pause: {}",
        healthy_left.join(", ")
    );
    assert!(
        slowest <= TTL + ms(600),
        "the stalled master's leases were reported lost only {slowest:?} after the pause"
    );

    watch(
        &guards,
        |i| i != stalled,
        ms(300),
        &mut min_left,
        "after the resume",
    )
    .await;
    healthy_tokens_held(&cluster, &guards, stalled).unwrap_or_else(|e| panic!("{e}"));
    drop(guards);
    mutex.shutdown().await;
}

/// Every lease on a master other than `stalled` has its token in its key
/// there.
fn healthy_tokens_held(
    cluster: &RedisCluster,
    guards: &[(usize, LockGuard)],
    stalled: usize,
) -> Result<(), String> {
    for (i, guard) in guards.iter().filter(|(i, _)| *i != stalled) {
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

/// Each master's 20 keys share one hash tag (one slot per master); the
/// paused master is not the URL's first node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_master_does_not_cost_healthy_leases_with_one_hash_tag_per_master() {
    stall(1, Paused::NotUrlFirst).await;
}

/// As above, the paused master being the URL's first node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_url_first_master_does_not_cost_healthy_leases_with_hash_tags() {
    stall(1, Paused::UrlFirst).await;
}

/// Each master's 20 keys spread over 5 hash tags (5 slots per master).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_master_does_not_cost_healthy_leases_with_many_slots_per_master() {
    stall(5, Paused::NotUrlFirst).await;
}

/// Each master's 20 keys in 20 slots (no hash tags), paused right after
/// they are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_master_does_not_cost_healthy_leases_with_a_slot_per_key() {
    stall(0, Paused::NotUrlFirst).await;
}

/// The longest any one call on a healthy master may take while another
/// master is stalled (the command timeout is 2 s; these take milliseconds).
const HEALTHY_CALL: Duration = Duration::from_millis(1000);

/// Runs `call`, failing the test if it takes longer than [`HEALTHY_CALL`]
/// or fails.
async fn quick<T, E: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> T {
    let started = Instant::now();
    match tokio::time::timeout(HEALTHY_CALL, call).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("{what}: {e:?} after {:?}", started.elapsed()),
        Err(_) => panic!("{what}: no answer within {HEALTHY_CALL:?} while a master is stalled"),
    }
}

/// While one master is stalled with a renewal in flight to it, every kind
/// of call on keys of the two healthy masters answers at once, including
/// each script's first use on those nodes (whose `NOSCRIPT` makes the
/// client load it): lock, extend, release, a multi-key lock, a semaphore
/// permit and read-write guards; also while a first attempt on the stalled
/// master is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_healthy_masters_do_not_wait_on_a_stalled_one() {
    let cluster = RedisCluster::start();
    let stalled = (url_first_master(&cluster) + 1) % MASTERS;
    let url = cluster.url();
    let mutex = builder_at(&url).await.ttl(TTL).build().unwrap();

    // A lease on the stalled master: its renewals are in flight to it for
    // the whole pause.
    let stuck = mutex
        .lock(&cluster.key_on_master(stalled, "stall:stuck:"))
        .await
        .unwrap();
    cluster.pause_master(stalled);
    let paused_at = Instant::now();
    // A first attempt in flight to the stalled master throughout: first
    // attempts go out grouped per master, and no other master's may wait
    // on its group.
    let in_flight = {
        let (mutex, key) = (
            mutex.clone(),
            cluster.key_on_master(stalled, "stall:first:"),
        );
        tokio::spawn(async move { mutex.try_lock(&key).await.map(|g| g.is_some()) })
    };
    tokio::time::sleep(ms(20)).await;

    for i in (0..MASTERS).filter(|&i| i != stalled) {
        let on = |what: &str| format!("{what} on healthy master {i}");
        let key = cluster.key_on_master(i, "stall:healthy:");
        let guard = quick(&on("lock"), mutex.lock(&key)).await;
        quick(&on("extend"), guard.extend(Duration::from_secs(5))).await;
        assert_eq!(get_on(&cluster, i, &key), guard.token(), "{key}");

        quick(&on("release"), guard.release()).await;

        let tag = cluster.key_on_master(i, "stall-multi-");
        let keys = [format!("{{{tag}}}:a"), format!("{{{tag}}}:b")];
        let all = quick(&on("lock_all"), mutex.lock_all(keys.iter())).await;
        quick(&on("lock_all's release"), all.release()).await;

        let name = cluster.key_on_master(i, "stall:sem:");
        let permit = quick(&on("a permit"), mutex.semaphore(&name, 2).acquire()).await;
        quick(&on("the permit's release"), permit.release()).await;

        let name = cluster.key_on_master(i, "stall:rw:");
        let write = quick(&on("a write guard"), mutex.rw(&name).write()).await;
        quick(&on("the write guard's release"), write.release()).await;
        let read = quick(&on("a read guard"), mutex.rw(&name).read()).await;
        quick(&on("the read guard's release"), read.release()).await;
    }
    let took = paused_at.elapsed();
    cluster.resume_master(stalled);
    eprintln!("calls on the healthy masters done {took:?} into the pause");
    assert!(
        took < PAUSE,
        "the calls took {took:?}: longer than the pause"
    );
    // Answered by now (taken, or timed out while the master was stalled).
    let first = in_flight.await.expect("the stalled master's try_lock task");
    eprintln!("the first attempt on the stalled master: {first:?}");
    drop(stuck);
    mutex.shutdown().await;
}

/// While one master is stalled, a waiter on a key of each healthy master
/// (queued behind a holder in another mutex) is handed the lock by the
/// holder's release within [`HEALTHY_CALL`]. (Its mutex has waited once
/// before the stall, so its subscriber connection is in place: fred 10
/// makes a cluster connection only once every master has answered, so a
/// mutex that first waits during a stall polls instead, see the README.)
///
/// The stalled master is the one the waiting mutex's client sends commands
/// without a key to (fred's first connection), where a mutex with sharded
/// subscriptions checks their slots every 500 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_healthy_masters_are_handed_the_lock_while_another_is_stalled() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let holder = builder_at(&url).await.ttl(TTL).build().unwrap();
    let waiting = builder_at(&url).await.build().unwrap();
    let stalled = keyless_master(&cluster, waiting.client()).await;
    let healthy: Vec<usize> = (0..MASTERS).filter(|&i| i != stalled).collect();

    // `waiting` waits once before the stall: its subscriber is connected.
    let key = cluster.key_on_master(healthy[0], "stall:before:");
    let guard = holder.lock(&key).await.unwrap();
    let waiter = {
        let (waiting, key) = (waiting.clone(), key.clone());
        tokio::spawn(async move { waiting.lock(&key).await })
    };
    tokio::time::sleep(ms(100)).await;
    guard.release().await.unwrap();
    let first = quick("the waiter before the stall", async {
        waiter.await.expect("waiter task")
    })
    .await;
    first.release().await.unwrap();

    let stuck = holder
        .lock(&cluster.key_on_master(stalled, "stall:stuck:"))
        .await
        .unwrap();
    cluster.pause_master(stalled);
    let paused_at = Instant::now();
    for &i in &healthy {
        let what = format!("a waiter on healthy master {i}");
        let key = cluster.key_on_master(i, "stall:waiter:");
        let guard = quick(&what, holder.lock(&key)).await;
        let waiter = {
            let (waiting, key) = (waiting.clone(), key.clone());
            tokio::spawn(async move { waiting.lock(&key).await })
        };
        // Long enough for the waiter's mutex to check its subscriptions'
        // slots (every 500 ms) a few times while the master is stalled.
        tokio::time::sleep(ms(700)).await;
        let released_at = Instant::now();
        quick(&what, guard.release()).await;
        let next = quick(&what, async { waiter.await.expect("waiter task") }).await;
        eprintln!(
            "{what}: handed the lock {:?} after the release",
            released_at.elapsed()
        );
        assert_eq!(get_on(&cluster, i, &key), next.token(), "{key}");
        quick(&what, next.release()).await;
    }
    let took = paused_at.elapsed();
    cluster.resume_master(stalled);
    assert!(
        took < PAUSE,
        "the waits took {took:?}: longer than the pause"
    );
    drop(stuck);
    holder.shutdown().await;
    waiting.shutdown().await;
    let _ = waiting.client().quit().await;
}

/// The master that `client` sends commands without a key to.
async fn keyless_master(cluster: &RedisCluster, client: &fred::clients::Client) -> usize {
    use fred::types::{ClusterHash, CustomCommand};
    let info: String = client
        .custom(
            CustomCommand::new_static("INFO", ClusterHash::Random, false),
            vec!["server"],
        )
        .await
        .unwrap();
    let port: u16 = info
        .lines()
        .find_map(|l| l.strip_prefix("tcp_port:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tcp_port in INFO: {info}"));
    cluster
        .masters()
        .iter()
        .position(|&p| p == port)
        .unwrap_or_else(|| panic!("{port} is not a master"))
}
