//! The lock protocol's defects of issue 20, each as the behaviour the issue
//! requires, asserted through the public API and raw Redis reads:
//!
//! 1. plain pub/sub on a cluster (an ACL user without `+info` and the
//!    sharded pub/sub rights) never lets two waiters hold at once;
//! 2. an `extend` to a shorter TTL whose reply is lost is counted short;
//! 3. on a cluster, a `try_lock` of a free key does not wipe the live queue;
//! 4. a dead waiter's queue entry expires;
//! 5. a `PSUBSCRIBE *` subscriber does not make a dead head look alive;
//! 6. a handed-over lock survives one slow first renewal;
//!
//! and the mutual-exclusion property test (`support::exclusion`) in two of
//! those settings: a cluster in plain pub/sub mode, one server with a
//! pattern subscriber.
//!
//! The queue of lock `P K` is the list `P \xff {P K}:queue:K` (keys here
//! have no braces; see `src/protocol/keys.rs`).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use distributed_mutex::{Builder, DistributedMutex, LockGuard, RetryStrategy, CLAIM_TTL};
use fred::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use crate::support::cluster::{RedisCluster, MASTERS};
use crate::support::common::{builder_at, command_calls, ms, raw_get, raw_pttl, reset_stats};
use crate::support::exclusion::{run_case_as, scenario, Setup, Totals, MAX_KEYS};
use crate::support::queue::{process, queue_key, queue_len, queue_reaches};
use crate::support::readme_user::{cluster_url_as, create_user, ACL_PREFIX, PLAIN_ONLY_WITHOUT};
use crate::support::RedisServer;

/// Whether `guard` claims the lock: not lost, with a lease left.
fn claims(guard: &LockGuard) -> bool {
    !guard.is_lost() && !guard.remaining().is_zero()
}

/// A foreign client's `SET key x NX PX ttl`: `true` when it took the key.
async fn foreign_set_nx(raw: &Client, key: &str, ttl_ms: i64) -> bool {
    let set: Option<String> = raw
        .set(
            key,
            "foreign",
            Some(Expiration::PX(ttl_ms)),
            Some(SetOptions::NX),
            false,
        )
        .await
        .expect("SET NX PX");
    set.is_some()
}

// ---- 1. plain pub/sub on a cluster ----------------------------------------------

/// Waits until the queue of `key` (under [`ACL_PREFIX`]) has `want`
/// entries, or 1 s: a waiter that cannot listen polls instead of queueing,
/// and that is fine here. Returns the length seen last.
async fn queue_settles(raw: &Client, key: &str, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let len = queue_len(raw, ACL_PREFIX, key).await;
        if len >= want || Instant::now() >= deadline {
            return len;
        }
        tokio::time::sleep(ms(5)).await;
    }
}

async fn acl_process(url: &str) -> DistributedMutex {
    Builder::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
        .key_prefix(ACL_PREFIX)
        .ttl(Duration::from_secs(10))
        .retry(RetryStrategy::linear(ms(100), 500))
        .build()
        .expect("valid settings")
}

/// Issue 20, defect 1. On the 3-master cluster, a user with the README's
/// rights less `+info` and the sharded pub/sub rights (so the client uses
/// plain pub/sub): a holder releases with two waiters of two other
/// processes queued. 300 ms later at most one of them claims the lock, and
/// the one that does is the one whose token the key holds (and in most
/// rounds one does). 8 rounds, the key on each master in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_pubsub_on_a_cluster_never_gives_two_holders() {
    two_waiters_at_a_release(PLAIN_ONLY_WITHOUT).await;
}

/// The same rounds with the README's user as written (sharded pub/sub on
/// Redis 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_on_a_cluster_never_gives_two_holders() {
    two_waiters_at_a_release(&[]).await;
}

/// The rounds of the two tests above, as a user with the README's rights
/// less `without`.
async fn two_waiters_at_a_release(without: &[&str]) {
    let cluster = RedisCluster::start();
    create_user(&cluster, "locker", without);
    let url = cluster_url_as(&cluster, "locker");
    let raw = cluster.client().await;
    let holder = acl_process(&url).await;
    let first = acl_process(&url).await;
    let second = acl_process(&url).await;

    let mut violations = Vec::new();
    let mut served = 0;
    for round in 0..8 {
        let key = cluster.key_on_master(round % MASTERS, &format!("two:{round}:"));
        let full = format!("{ACL_PREFIX}{key}");
        let guard = holder.lock(&key).await.expect("holder locks");
        let spawn = |mutex: &DistributedMutex| {
            let mutex = mutex.clone();
            let key = key.clone();
            tokio::spawn(async move { mutex.lock(&key).await })
        };
        let w = spawn(&first);
        queue_settles(&raw, &key, 1).await;
        let v = spawn(&second);
        let queued = queue_settles(&raw, &key, 2).await;
        if round == 0 {
            eprintln!("waiters queued in Redis: {queued}");
        }

        guard.release().await.expect("holder releases");
        tokio::time::sleep(ms(300)).await;

        let mut held = Vec::new();
        let mut pending = Vec::new();
        for (name, task) in [("W", w), ("V", v)] {
            if task.is_finished() {
                let got = task.await.expect("waiter task");
                let guard = got.unwrap_or_else(|e| panic!("round {round}: {name} failed: {e}"));
                held.push((name, guard));
            } else {
                pending.push(task);
            }
        }
        let value = raw_get(&raw, &full).await;
        let claiming: Vec<String> = held
            .iter()
            .filter(|(_, g)| claims(g))
            .map(|(name, g)| format!("{name} ({:?} left)", g.remaining()))
            .collect();
        if !claiming.is_empty() {
            served += 1;
        }
        if claiming.len() > 1 {
            violations.push(format!(
                "round {round} ({full}): {} claim the lock at once; GET = {value:?}",
                claiming.join(" and ")
            ));
        } else if let Some((name, g)) = held.iter().find(|(_, g)| claims(g)) {
            if value.as_deref() != Some(g.token()) {
                violations.push(format!(
                    "round {round} ({full}): {name} claims the lock but GET = {value:?}"
                ));
            }
        }
        // Between rounds: every waiter gets the lock in turn and lets go.
        for (_, g) in held {
            let _ = g.release().await;
        }
        for task in pending {
            let got = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .unwrap_or_else(|_| panic!("round {round}: a waiter never got the lock"))
                .expect("waiter task");
            if let Ok(g) = got {
                let _ = g.release().await;
            }
        }
        queue_reaches(&raw, ACL_PREFIX, &key, 0, Duration::from_secs(5)).await;
    }
    assert!(
        violations.is_empty(),
        "two holders (or a holder the key does not name) in {} of 8 rounds:\n{}",
        violations.len(),
        violations.join("\n")
    );
    // Not vacuous: the release reached a waiter within 300 ms in most rounds.
    eprintln!("a waiter held the lock 300 ms after the release in {served} of 8 rounds");
    assert!(
        served >= 4,
        "a waiter held the lock 300 ms after the release in only {served} of 8 rounds"
    );
    for mutex in [&holder, &first, &second] {
        mutex.shutdown().await;
    }
}

/// Tasks taking and releasing locks at once as the README's user.
const GROUPED_TASKS: usize = 32;
/// Lock-and-release rounds per task.
const GROUPED_ROUNDS: usize = 5;

/// The README's user on a cluster, its rights as written: 32 tasks each
/// take and release a key of one master 5 times, each key in a slot of its
/// own, so that first attempts and releases go out grouped across the
/// master's slots (one script call declared cross-slot, which touches every
/// key before it writes). Every call answers `Ok`, the master runs fewer
/// script calls than first attempts and releases, and no key is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_user_takes_and_releases_locks_grouped_across_slots() {
    let cluster = RedisCluster::start();
    create_user(&cluster, "locker", &[]);
    let mutex = acl_process(&cluster_url_as(&cluster, "locker")).await;
    let full = cluster.keys_on_master(0, &format!("{ACL_PREFIX}grouped:"), GROUPED_TASKS);
    reset_stats(cluster.master(0));

    let tasks: Vec<_> = full
        .iter()
        .map(|full| {
            let key = full[ACL_PREFIX.len()..].to_owned();
            let mutex = mutex.clone();
            tokio::spawn(async move {
                for round in 0..GROUPED_ROUNDS {
                    let guard = mutex.lock(&key).await;
                    let guard = guard.unwrap_or_else(|e| panic!("{key} round {round}: {e}"));
                    let released = guard.release().await;
                    released.unwrap_or_else(|e| panic!("{key} round {round}: release: {e}"));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let cycles = (GROUPED_TASKS * GROUPED_ROUNDS) as u64;
    let calls = command_calls(cluster.master(0), "evalsha");
    eprintln!("{cycles} locks and releases on one master as the README's user: {calls} EVALSHA");
    assert!(
        calls < 2 * cycles,
        "{calls} script calls for {cycles} first attempts and releases: none grouped"
    );
    for full in &full {
        assert_eq!(cluster.master(0).cli(&["GET", full]), "", "{full} left");
    }
    mutex.shutdown().await;
}

// ---- 2. an extend to a shorter TTL whose reply is lost ----------------------------

/// A private server, a raw client, a mutex with a 100 ms command timeout and
/// 30 s leases, and its guard of `key` (renewed or not), the extend script
/// already loaded: an extend sent while writes are paused runs when the
/// pause ends (not `NOSCRIPT`).
async fn thirty_second_lock(
    key: &str,
    auto_renew: bool,
) -> (RedisServer, Client, DistributedMutex, LockGuard) {
    let server = RedisServer::start();
    let raw = server.client().await;
    let mutex = builder_at(&server.url())
        .await
        .command_timeout(ms(100))
        .ttl(Duration::from_secs(30))
        .build()
        .expect("valid settings");
    let guard = mutex
        .acquire(key)
        .auto_renew(auto_renew)
        .await
        .expect("lock");
    guard
        .extend(Duration::from_secs(30))
        .await
        .expect("extend before the pause");
    (server, raw, mutex, guard)
}

/// Issue 20, defect 2. A 30 s lock is extended to 500 ms while writes are
/// paused for 300 ms, with a 100 ms command timeout: the extend fails with
/// a timeout, but Redis runs it when the pause ends. From then on the
/// guard counts at most the shorter lease; 1.3 s after the extend was sent
/// the key is gone, the guard no longer claims the lock, and when another
/// mutex takes the key the first guard still does not claim it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extend_to_a_shorter_ttl_whose_reply_is_lost_is_counted_short() {
    let key = "p:short-extend";
    // Renewal off: only the extend sets the key's TTL (with renewal on,
    // renewals at the new TTL keep the key, as they should: see
    // `a_renewed_lock_extended_to_a_shorter_ttl_never_claims_more_than_redis_holds`).
    let (server, raw, mutex, guard) = thirty_second_lock(key, false).await;
    let rival = process(&server.url(), RetryStrategy::none()).await;
    assert_eq!(server.cli(&["CLIENT", "PAUSE", "300", "WRITE"]), "OK");
    let sent = Instant::now();
    let outcome = guard.extend(ms(500)).await;
    let left = guard.remaining();
    eprintln!(
        "extend during the pause: {outcome:?} after {:?}; remaining {left:?}",
        sent.elapsed()
    );
    assert!(
        outcome.is_err(),
        "the extend was expected to time out: {outcome:?}"
    );
    // Every check is made, then all that failed are reported together.
    let mut failures = Vec::new();
    if left > ms(500) {
        failures.push(format!(
            "right after an extend to 500 ms whose outcome is unknown, the guard claims {left:?}"
        ));
    }

    tokio::time::sleep_until((sent + ms(1_300)).into()).await;
    let exists: i64 = raw.exists(key).await.expect("EXISTS");
    assert_eq!(
        exists, 0,
        "the 500 ms extend ran when the pause ended: the key should be gone at 1.3 s"
    );
    if claims(&guard) {
        failures.push(format!(
            "1.3 s after an extend to 500 ms the key is gone, but the guard claims the lock: \
             is_lost() = {}, remaining() = {:?}",
            guard.is_lost(),
            guard.remaining()
        ));
    }
    let other = rival.try_lock(key).await.expect("try_lock");
    let other = other.expect("the key is gone: another mutex takes it");
    if claims(&guard) {
        failures.push(format!(
            "two holders: another mutex holds the key and the first guard claims {:?}",
            guard.remaining()
        ));
    }
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(other.token()));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(guard);
    other.release().await.expect("release");
    mutex.shutdown().await;
    rival.shutdown().await;
}

/// The same with renewal on: after an extend to a shorter TTL whose reply
/// is lost, renewals ask for the new TTL; at every check the guard claims
/// no more than Redis holds for its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_lock_extended_to_a_shorter_ttl_never_claims_more_than_redis_holds() {
    let key = "p:short-extend-renewed";
    let (server, raw, mutex, guard) = thirty_second_lock(key, true).await;
    assert_eq!(server.cli(&["CLIENT", "PAUSE", "300", "WRITE"]), "OK");
    let sent = Instant::now();
    assert!(guard.extend(ms(500)).await.is_err(), "the extend times out");
    let mut checks = 0;
    while sent.elapsed() < ms(2_500) {
        // The guard first, then Redis: a renewal confirmed before the claim
        // ran in Redis before it, and one that runs between the two reads
        // only lengthens what Redis holds. (Read the other way round, a
        // renewal between the reads raises the claim past a stale PTTL.)
        let claimed = guard.remaining();
        let claimed_at = Instant::now();
        let (value, pttl, _) = crate::support::common::raw_get_and_pttl(&raw, key).await;
        let between = claimed_at.elapsed();
        if !claimed.is_zero() {
            checks += 1;
            assert_eq!(
                value.as_deref(),
                Some(guard.token()),
                "the guard claims {claimed:?}"
            );
            assert!(
                pttl >= 0 && Duration::from_millis(pttl as u64) + between + ms(2) >= claimed,
                "the guard claims {claimed:?} but Redis holds its token for {pttl} ms \
                 ({between:?} later)"
            );
            assert!(
                claimed <= ms(500),
                "the guard claims {claimed:?} after a 500 ms extend"
            );
        }
        tokio::time::sleep(ms(50)).await;
    }
    assert!(!guard.is_lost(), "renewals at the new TTL keep the lock");
    assert!(
        checks > 10,
        "the guard held the lock through the checks ({checks})"
    );
    guard.release().await.expect("release");
    mutex.shutdown().await;
}

// ---- 3. a try_lock on a free key on a cluster -------------------------------------

/// Issue 20, defect 3. On a cluster (Redis 7, sharded pub/sub), a foreign
/// client holds the key and a waiter of mutex A, polling only every 5 s,
/// queues behind it. The foreign client deletes the key and a newcomer
/// (mutex B) calls `try_lock`: it either leaves the key to the queued
/// waiter or, if it takes it, hands it on when it lets go. Either way the
/// waiter holds the lock within 1 s of the delete, on every master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_lock_on_a_free_key_does_not_wipe_live_waiters_on_a_cluster() {
    let cluster = RedisCluster::start();
    let raw = cluster.client().await;
    let keys: Vec<String> = (0..MASTERS)
        .map(|master| cluster.key_on_master(master, "p:newcomer:"))
        .collect();
    newcomer_on_a_free_key(&cluster.url(), &raw, &keys).await;
}

/// The same on one server (passes today: the queue survives there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_lock_on_a_free_key_does_not_wipe_live_waiters_on_one_server() {
    let server = RedisServer::start();
    let raw = server.client().await;
    newcomer_on_a_free_key(&server.url(), &raw, &["p:newcomer".to_owned()]).await;
}

/// The rounds of the two tests above, one per key.
async fn newcomer_on_a_free_key(url: &str, raw: &Client, keys: &[String]) {
    let a = process(url, RetryStrategy::linear(Duration::from_secs(5), 4)).await;
    let b = process(url, RetryStrategy::none()).await;
    let mut late = Vec::new();
    for key in keys {
        let key = key.clone();
        assert!(foreign_set_nx(raw, &key, 30_000).await, "foreign SET NX");
        let waiter = {
            let a = a.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let outcome = a.lock(&key).await;
                (Instant::now(), outcome)
            })
        };
        queue_reaches(raw, "", &key, 1, Duration::from_secs(5)).await;
        tokio::time::sleep(ms(100)).await;

        let deleted = Instant::now();
        let _: i64 = raw.del(key.as_str()).await.expect("foreign DEL");
        let took = b.try_lock(&key).await.expect("try_lock");
        let newcomer_took = took.is_some();
        if let Some(g) = took {
            g.release().await.expect("the newcomer releases");
        }
        let (acquired, outcome) = tokio::time::timeout(Duration::from_secs(15), waiter)
            .await
            .unwrap_or_else(|_| panic!("{key}: the waiter never got the lock"))
            .expect("waiter task");
        let got = outcome.unwrap_or_else(|e| panic!("{key}: the waiter failed: {e}"));
        let after = acquired.saturating_duration_since(deleted);
        eprintln!(
            "{key}: newcomer took the key: {newcomer_took}; the queued waiter got it {after:?} \
             after the DEL"
        );
        if after >= Duration::from_secs(1) {
            late.push(format!(
                "{key}: the queued waiter got the lock {after:?} after the DEL (newcomer's \
                 try_lock took it: {newcomer_took})"
            ));
        }
        got.release().await.expect("release");
    }
    assert!(late.is_empty(), "{}", late.join("\n"));
    a.shutdown().await;
    b.shutdown().await;
}

// ---- child processes -----------------------------------------------------------------

/// Not a test on its own: the child process of the SIGKILL tests below, run
/// as `<this binary> --exact protocol::child_waits --ignored` with the
/// server's URL and the key in its environment. It queues one waiter
/// (polls 10 s apart) and waits; it is killed before it could get the lock.
#[tokio::test]
#[ignore = "the child process of the protocol tests; they run it"]
async fn child_waits() {
    let url = std::env::var("DMUTEX_PROTOCOL_URL").expect("run by the protocol tests only");
    let key = std::env::var("DMUTEX_PROTOCOL_KEY").expect("run by the protocol tests only");
    let mutex = process(&url, RetryStrategy::linear(Duration::from_secs(10), 6)).await;
    let guard = mutex.lock(&key).await;
    panic!("the child was not stopped in time: it got {guard:?}");
}

/// A child process, SIGKILLed and reaped when dropped (also when the test
/// fails before it meant to kill it).
struct ChildProcess(Child);

impl ChildProcess {
    /// SIGKILLs the child and reaps it.
    fn sigkill(mut self) {
        self.kill_and_reap();
    }

    fn kill_and_reap(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Starts [`child_waits`] and waits until the queue has `then` entries.
async fn child_queued(url: &str, raw: &Client, key: &str, then: i64) -> ChildProcess {
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "protocol::child_waits",
            "--ignored",
            "--test-threads=1",
        ])
        .env("DMUTEX_PROTOCOL_URL", url)
        .env("DMUTEX_PROTOCOL_KEY", key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the child process");
    let child = ChildProcess(child);
    queue_reaches(raw, "", key, then, Duration::from_secs(20)).await;
    child
}

// ---- 4. a dead waiter's queue entry --------------------------------------------------

/// How long a dead waiter's queue entry may outlive it.
const DEAD_ENTRY_BOUND: Duration = Duration::from_secs(15);

/// Issue 20, defect 4. A waiter queues behind a foreign holder (raw `SET
/// NX PX`), its process is SIGKILLed, then the foreign holder deletes the
/// key; nobody uses the key again. The queue list has a TTL (not -1) and is
/// gone within [`DEAD_ENTRY_BOUND`] of the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_waiters_queue_entry_expires() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let key = "p:dead-entry";
    assert!(foreign_set_nx(&raw, key, 30_000).await, "foreign SET NX");
    let child = child_queued(&server.url(), &raw, key, 1).await;
    child.sigkill();
    let killed = Instant::now();
    let _: i64 = raw.del(key).await.expect("foreign DEL");

    let queue = queue_key("", key);
    let pttl: i64 = raw.pttl(queue.clone()).await.expect("PTTL");
    eprintln!("the dead waiter's queue list: PTTL {pttl}");
    assert!(
        pttl > 0 || pttl == -2,
        "the queue list of {key} has no TTL (PTTL {pttl}): a dead waiter's entry stays forever"
    );
    let deadline = killed + DEAD_ENTRY_BOUND;
    loop {
        let len = queue_len(&raw, "", key).await;
        if len == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead waiter's queue entry is still there {DEAD_ENTRY_BOUND:?} after its process \
             was killed ({len} entries, PTTL {})",
            raw.pttl::<i64, _>(queue.clone()).await.expect("PTTL")
        );
        tokio::time::sleep(ms(100)).await;
    }
    eprintln!("the queue was gone {:?} after the kill", killed.elapsed());
}

// ---- 5. a pattern subscriber --------------------------------------------------------

/// Issue 20, defect 5. With a raw `PSUBSCRIBE *` connection open, a waiter
/// of a child process queues first and a live waiter of this process
/// second; the child is SIGKILLed, then the holder releases: the live
/// waiter holds within 500 ms (not after the dead head's claim TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscriber_does_not_make_a_dead_head_look_alive() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let watcher = server.client().await;
    watcher.psubscribe("*").await.expect("PSUBSCRIBE *");
    assert_eq!(
        server.cli(&["PUBSUB", "NUMPAT"]),
        "1",
        "the pattern subscriber"
    );
    let key = "p:pattern";
    let holder = process(&server.url(), RetryStrategy::none()).await;
    let guard = holder.lock(key).await.expect("holder locks");
    let child = child_queued(&server.url(), &raw, key, 1).await;
    let live = process(&server.url(), RetryStrategy::linear(ms(250), 200)).await;
    let waiter = {
        let live = live.clone();
        tokio::spawn(async move {
            let outcome = live.lock(key).await;
            (Instant::now(), outcome)
        })
    };
    queue_reaches(&raw, "", key, 2, Duration::from_secs(5)).await;

    child.sigkill();
    tokio::time::sleep(ms(100)).await;
    let released = Instant::now();
    guard.release().await.expect("holder releases");
    let (acquired, outcome) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the live waiter got the lock within 10 s")
        .expect("waiter task");
    let got = outcome.expect("the live waiter locks");
    let took = acquired.saturating_duration_since(released);
    eprintln!("with PSUBSCRIBE *: the live waiter got the lock {took:?} after the release");
    assert!(
        took < ms(500),
        "the live waiter got the lock {took:?} after the release (claim TTL {CLAIM_TTL:?}): \
         the pattern subscriber made the dead head look alive"
    );
    got.release().await.expect("release");
    watcher.punsubscribe("*").await.expect("PUNSUBSCRIBE");
    holder.shutdown().await;
    live.shutdown().await;
}

// ---- 6. a slow first renewal of a handed-over lock ----------------------------------

/// Issue 20, defect 6. A 60 s lock with a 300 ms command timeout is handed
/// over to a waiter; writes are paused for 600 ms around its first renewal
/// (0.85 s after the hand-off). 3 s after the hand-off the waiter still
/// holds: its guard is not lost, the key holds its token with more than
/// 10 s left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_lock_survives_a_slow_first_renewal() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let key = "p:slow-first-renewal";
    let configure = |retry| {
        let url = server.url();
        async move {
            builder_at(&url)
                .await
                .ttl(Duration::from_secs(60))
                .command_timeout(ms(300))
                .retry(retry)
                .build()
                .expect("valid settings")
        }
    };
    let holder = configure(RetryStrategy::none()).await;
    let next = configure(RetryStrategy::linear(Duration::from_secs(10), 6)).await;
    let guard = holder.lock(key).await.expect("holder locks");
    // Loads the extend script the renewals use, so nothing but the pause
    // stands in the first renewal's way.
    guard
        .extend(Duration::from_secs(60))
        .await
        .expect("the holder extends");
    let waiter = {
        let next = next.clone();
        tokio::spawn(async move {
            let outcome = next.lock(key).await;
            (Instant::now(), outcome)
        })
    };
    queue_reaches(&raw, "", key, 1, Duration::from_secs(5)).await;
    let handed = Instant::now();
    guard.release().await.expect("holder releases");
    let (acquired, outcome) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the hand-off reached the waiter")
        .expect("waiter task");
    let got = outcome.expect("the waiter locks");
    eprintln!(
        "handed over after {:?}; remaining {:?}",
        acquired.saturating_duration_since(handed),
        got.remaining()
    );

    tokio::time::sleep_until((handed + ms(850)).into()).await;
    assert_eq!(server.cli(&["CLIENT", "PAUSE", "600", "WRITE"]), "OK");
    tokio::time::sleep_until((handed + Duration::from_secs(3)).into()).await;

    let value = raw_get(&raw, key).await;
    let pttl = raw_pttl(&raw, key).await;
    eprintln!(
        "3 s after the hand-off: is_lost {}, remaining {:?}, GET {value:?}, PTTL {pttl}",
        got.is_lost(),
        got.remaining()
    );
    assert!(
        !got.is_lost(),
        "a 600 ms write pause around the first renewal cost the handed-over lock: lost ({})",
        got.lost().await
    );
    assert_eq!(
        value.as_deref(),
        Some(got.token()),
        "the key does not hold the waiter's token"
    );
    assert!(
        pttl > 10_000,
        "the key's PTTL is {pttl} ms: not renewed to the lock's 60 s"
    );
    got.release().await.expect("release");
    holder.shutdown().await;
    next.shutdown().await;
}

// ---- mutual exclusion in these modes (proptest) -------------------------------------

/// Runs `cases` generated cases of the shared property test
/// (`support::exclusion`) with `setup`, over `pool`, and checks that locks
/// were actually taken.
fn check_exclusion(
    runtime: &tokio::runtime::Runtime,
    setup: &Setup<'_>,
    prefix: &str,
    pool: &[String],
    cases: u32,
) {
    let totals = Totals::default();
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&scenario(), |scenario| {
        runtime.block_on(run_case_as(setup, prefix, pool, scenario, &totals))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let sections = totals.sections.load(Ordering::Relaxed);
    eprintln!("{cases} cases: {sections} critical sections");
    assert!(
        sections >= cases as usize,
        "only {sections} critical sections were entered"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The mutual-exclusion property test on the 3-master cluster in plain
/// pub/sub mode (the user of the first test: the README's rights less
/// `+info` and the sharded pub/sub rights), keys on every master.
#[test]
fn plain_pubsub_on_a_cluster_keeps_mutual_exclusion() {
    let cluster = RedisCluster::start();
    create_user(&cluster, "locker", PLAIN_ONLY_WITHOUT);
    let url = cluster_url_as(&cluster, "locker");
    let runtime = runtime();
    let raw = runtime.block_on(cluster.client());
    let prefix = "prop:plain:";
    // Key `k` is served by master `k % 3` (with the key prefix in front).
    let pool: Vec<String> = (0..MAX_KEYS)
        .map(|k| {
            (0u64..)
                .map(|n| format!("{prefix}{k}:{n}"))
                .find(|key| cluster.master_for_key(&format!("{ACL_PREFIX}{key}")) == k % MASTERS)
                .expect("a key on every master")
        })
        .collect();
    let setup = Setup {
        url: &url,
        key_prefix: ACL_PREFIX,
        raw: Some(&raw),
    };
    check_exclusion(&runtime, &setup, prefix, &pool, 8);
}

/// The mutual-exclusion property test on one server with a raw
/// `PSUBSCRIBE *` connection open throughout.
#[test]
fn a_pattern_subscriber_keeps_mutual_exclusion() {
    let server = RedisServer::start();
    let runtime = runtime();
    let raw = runtime.block_on(server.client());
    let watcher = runtime.block_on(server.client());
    runtime
        .block_on(watcher.psubscribe("*"))
        .expect("PSUBSCRIBE *");
    assert_eq!(
        server.cli(&["PUBSUB", "NUMPAT"]),
        "1",
        "the pattern subscriber"
    );
    let prefix = "prop:pattern:";
    let pool: Vec<String> = (0..MAX_KEYS).map(|k| format!("{prefix}{k}")).collect();
    let setup = Setup {
        url: &server.url(),
        key_prefix: "",
        raw: Some(&raw),
    };
    check_exclusion(&runtime, &setup, prefix, &pool, 12);
    assert_eq!(
        server.cli(&["PUBSUB", "NUMPAT"]),
        "1",
        "the pattern subscriber stayed throughout"
    );
}
