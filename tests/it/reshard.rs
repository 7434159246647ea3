//! Resharding: slots that hold live locks move between the masters of a
//! private cluster (see `tests/support/reshard.rs`: `MIGRATING` /
//! `IMPORTING`, `MIGRATE` key by key with pauses, `SETSLOT NODE`) while
//! locks are taken, renewed, waited for and released. Clients meet `ASK`
//! (a key already moved, the slot not yet), `TRYAGAIN` (a script over keys
//! on both nodes) and `MOVED` (the slot moved).
//!
//! * `locks_stay_exclusive_while_slots_move_between_masters`: lock traffic
//!   from two mutexes on keys whose slots keep moving, both ways between
//!   every pair of masters: no mutual-exclusion violation, every error
//!   transient (counted by kind), no lock key left anywhere afterwards.
//! * `locks_stay_exclusive_while_redis_cli_reshards`: the same with
//!   `redis-cli --cluster reshard` itself moving 64 slots (the keys' among
//!   them) between two masters, back and forth.
//! * `locks_stay_exclusive_while_slots_move_and_a_master_fails_over`: the
//!   same while slots move between two masters and the third is killed,
//!   its replica taking over: no violation, errors only on the failed
//!   master's keys and transient, its keys taken on the new master after.
//! * `a_renewed_lock_survives_its_slot_moving`: auto-renewed leases whose
//!   slots move mid-hold stay held, their tokens on the new owner.
//! * `a_waiter_is_woken_by_the_release_after_its_keys_slot_moved`: the
//!   sharded subscription follows the slot to its new owner, and the
//!   release there wakes the waiter (not its 5 s poll).
//! * `a_lock_mid_move_is_released_once_the_move_ends_and_the_mutex_keeps_working`:
//!   `ASK` (a key gone ahead of its slot) is followed (the extend
//!   succeeds); a release the importing node answers `TRYAGAIN` gives a
//!   transient error, never a dead client.
//! * `replies_stay_matched_while_the_client_follows_ask` (ignored): fred
//!   10.1 hands commands each other's replies while it handles `ASK` (on a
//!   client with redirections of fred's own, as a client of the caller's
//!   may be); the crate's clients follow none in fred (`connect.rs`) and
//!   follow `ASK` themselves, and its scripts name their token in every
//!   reply too.
//!
//! Each test prints its counts (`eprintln!`); run with `--no-capture` to
//! see them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, Error, LockGuard, RetryStrategy};
use fred::prelude::*;
use fred::util::redis_keyslot;

use crate::support::cluster::{RedisCluster, MASTERS};
use crate::support::common::{builder_at, ms};
use crate::support::reshard::{patient_client, Mover, Resharder};

/// Runs a blocking resharder call off the runtime's worker threads.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// The name of a transient error's kind, for the counts: the variant, and
/// for `Unavailable` the start of the client's error (`TRYAGAIN`, `Too many
/// failed write attempts`, ...).
fn kind(e: &Error) -> String {
    match e {
        Error::Unavailable { source, .. } => {
            let details = source.details();
            let short = if details.contains("was another command's") {
                "a reply of another command"
            } else {
                details.split(['.', ':']).next().unwrap_or("").trim()
            };
            format!("Unavailable({short})")
        }
        Error::Timeout { .. } => "Timeout".into(),
        other => format!("{other:?}"),
    }
}

// ---- mutual exclusion under resharding ---------------------------------------

/// How long the traffic runs while slots move.
const TRAFFIC: Duration = Duration::from_secs(8);
/// Tasks taking locks (half on each mutex).
const TASKS: usize = 8;
/// The lease: long enough that none runs out legitimately.
const TRAFFIC_TTL: Duration = Duration::from_secs(3);
/// The mover's pause after each step of a move.
const MOVE_PAUSE: Duration = Duration::from_millis(15);

/// The exclusion counter of `key`, in its slot.
fn counter_key(key: &str) -> String {
    if key.starts_with('{') {
        format!("count:{key}")
    } else {
        format!("count:{{{key}}}")
    }
}

#[derive(Default)]
struct Counts {
    acquired: AtomicUsize,
    not_obtained: AtomicUsize,
    released: AtomicUsize,
    dropped: AtomicUsize,
    /// Transient errors by kind and by call.
    transient: Mutex<BTreeMap<String, usize>>,
    /// Violations of mutual exclusion: two holders inside, a counter that
    /// is not 0 on entry or 1 on exit, a lease lost inside the section or
    /// found replaced on release.
    violations: Mutex<Vec<String>>,
    /// Errors that are not transient, and counter reads or writes that kept
    /// failing.
    failures: Mutex<Vec<String>>,
    /// Counter reads and writes sent again after an error (a counter key
    /// gone ahead of its slot: fred 10.1 does not follow `ASK`).
    counter_retries: AtomicUsize,
    /// How many tasks are inside each key's critical section.
    occupancy: Mutex<HashMap<String, usize>>,
}

impl Counts {
    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }

    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    fn transient(&self, call: &str, e: &Error) {
        *self
            .transient
            .lock()
            .unwrap()
            .entry(format!("{call}: {}", kind(e)))
            .or_insert(0) += 1;
    }
}

/// How long a counter read or write is retried (a slot's move ends well
/// within it; the lease is 3 s and renewed).
const COUNTER_RETRY: Duration = Duration::from_secs(2);

/// `GET counter`, sent again after an error until [`COUNTER_RETRY`].
async fn counter_get(counts: &Counts, redis: &Client, counter: &str) -> Result<i64, String> {
    let deadline = Instant::now() + COUNTER_RETRY;
    loop {
        match redis.get::<Option<i64>, _>(counter).await {
            Ok(n) => return Ok(n.unwrap_or(0)),
            Err(_) if Instant::now() < deadline => {
                counts.counter_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(ms(5)).await;
            }
            Err(e) => return Err(format!("GET {counter}: {e}")),
        }
    }
}

/// `SET counter n`, sent again after an error until [`COUNTER_RETRY`].
async fn counter_set(counts: &Counts, redis: &Client, counter: &str, n: i64) -> Result<(), String> {
    let deadline = Instant::now() + COUNTER_RETRY;
    loop {
        match redis.set::<(), _, _>(counter, n, None, None, false).await {
            Ok(()) => return Ok(()),
            Err(_) if Instant::now() < deadline => {
                counts.counter_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(ms(5)).await;
            }
            Err(e) => return Err(format!("SET {counter} {n}: {e}")),
        }
    }
}

/// Enters `key`'s critical section: the occupancy table and the Redis
/// counter must both say nobody else is inside.
async fn enter(counts: &Counts, redis: Option<&Client>, key: &str, guard: &LockGuard) {
    {
        let mut occupancy = counts.occupancy.lock().unwrap();
        let inside = occupancy.entry(key.to_owned()).or_insert(0);
        *inside += 1;
        if *inside > 1 {
            counts.violation(format!("{key}: {inside} holders inside"));
        }
    }
    if guard.remaining().is_zero() || guard.is_lost() {
        counts.violation(format!("{key}: a fresh guard has no lease"));
    }
    let Some(redis) = redis else {
        return;
    };
    let counter = counter_key(key);
    let entered = async {
        let n = counter_get(counts, redis, &counter).await?;
        if n != 0 {
            counts.violation(format!("{key}: counter reads {n} on entry"));
        }
        tokio::time::sleep(ms(1)).await;
        counter_set(counts, redis, &counter, n + 1).await
    };
    if let Err(e) = entered.await {
        counts.fail(format!("{key}: {e}"));
    }
}

/// Leaves `key`'s critical section.
async fn leave(counts: &Counts, redis: Option<&Client>, key: &str, guard: &LockGuard) {
    let counter = counter_key(key);
    let left = async {
        let Some(redis) = redis else {
            return Ok(());
        };
        let n = counter_get(counts, redis, &counter).await?;
        if n != 1 {
            counts.violation(format!("{key}: counter reads {n} on exit"));
        }
        tokio::time::sleep(ms(1)).await;
        counter_set(counts, redis, &counter, n - 1).await
    };
    if let Err(e) = left.await {
        counts.fail(format!("{key}: {e}"));
    }
    if guard.remaining().is_zero() || guard.is_lost() {
        counts.violation(format!("{key}: the lease ran out inside the section"));
    }
    *counts
        .occupancy
        .lock()
        .unwrap()
        .get_mut(key)
        .expect("entered") -= 1;
}

/// Takes, holds and gives back locks on `keys` until `until`; with `redis`,
/// each section also checks the key's exclusion counter in Redis (without,
/// the occupancy table only).
async fn traffic(
    n: usize,
    mutex: DistributedMutex,
    redis: Option<Client>,
    keys: Arc<Vec<String>>,
    counts: Arc<Counts>,
    until: Instant,
) {
    let mut round = n;
    while Instant::now() < until {
        round += 1;
        let key = &keys[fastrand::usize(..keys.len())];
        let outcome = if round % 3 == 0 {
            mutex.try_lock(key).await
        } else {
            mutex
                .acquire(key)
                .retry(RetryStrategy::linear(ms(5), 400))
                .await
                .map(Some)
        };
        let guard = match outcome {
            Ok(Some(guard)) => guard,
            Ok(None) | Err(Error::NotObtained { .. }) => {
                counts.not_obtained.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) if e.is_transient() => {
                counts.transient("lock", &e);
                continue;
            }
            Err(e) => {
                counts.fail(format!("{key}: lock: {e} ({e:?})"));
                continue;
            }
        };
        counts.acquired.fetch_add(1, Ordering::Relaxed);
        enter(&counts, redis.as_ref(), key, &guard).await;
        tokio::time::sleep(ms(fastrand::u64(0..6))).await;
        leave(&counts, redis.as_ref(), key, &guard).await;
        if round % 2 == 0 {
            drop(guard);
            counts.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            match guard.release().await {
                Ok(()) => {
                    counts.released.fetch_add(1, Ordering::Relaxed);
                }
                // The guard went back to the mutex, which releases it in the
                // background.
                Err(e) if e.is_transient() => counts.transient("release", &e),
                Err(e @ Error::NotHeld { .. }) => {
                    counts.violation(format!("{key}: release: {e}"));
                }
                Err(e) => counts.fail(format!("{key}: release: {e} ({e:?})")),
            }
        }
    }
}

/// What a traffic run found, once everything was shut down.
struct Traffic {
    ran: Duration,
    counts: Arc<Counts>,
    /// Lock keys left on a master, as `(master, key)`.
    left: Vec<(usize, String)>,
    /// The exclusion counters' final values.
    counters: Vec<i64>,
}

impl Traffic {
    /// Prints the counts (`what` names the run) and asserts what every run
    /// must keep: no violation, no error that is not transient, no lock
    /// key left, counters back to 0, at least `floor` acquisitions.
    fn check(&self, what: &str, moves: &str, floor: usize) {
        let counts = &self.counts;
        let acquired = counts.acquired.load(Ordering::Relaxed);
        let transient = counts.transient.lock().unwrap().clone();
        let violations = counts.violations.lock().unwrap().clone();
        let failures = counts.failures.lock().unwrap().clone();
        eprintln!(
            "reshard {what}: {:.1?}, {TASKS} tasks on 2 mutexes, {} keys; \
             acquisitions {acquired} (released {}, dropped {}), not obtained {}; \
             violations {}; errors not transient {}; transient errors {} {transient:?}; \
             counter reads/writes retried {}; {moves}",
            self.ran,
            self.counters.len(),
            counts.released.load(Ordering::Relaxed),
            counts.dropped.load(Ordering::Relaxed),
            counts.not_obtained.load(Ordering::Relaxed),
            violations.len(),
            failures.len(),
            transient.values().sum::<usize>(),
            counts.counter_retries.load(Ordering::Relaxed),
        );
        assert!(
            violations.is_empty(),
            "mutual exclusion violated: {violations:#?}"
        );
        assert!(
            failures.is_empty(),
            "errors that are not transient: {failures:#?}"
        );
        assert!(
            self.left.is_empty(),
            "lock keys left on masters: {:?}",
            self.left
        );
        assert!(
            self.counters.iter().all(|&n| n == 0),
            "exclusion counters not back to 0: {:?}",
            self.counters
        );
        assert!(acquired >= floor, "only {acquired} acquisitions");
    }
}

/// Lock traffic from two mutexes ([`TASKS`] tasks) on `keys` for
/// [`TRAFFIC`], while `background` (given the end of the traffic) runs on a
/// thread of its own; then both mutexes are shut down, every node must
/// agree on the slots, and the masters are searched for lock keys
/// matching `pattern`.
async fn traffic_while<R: Send + 'static>(
    reshard: &Arc<Resharder>,
    url: &str,
    keys: Vec<String>,
    pattern: &str,
    background: impl FnOnce(Instant) -> R + Send + 'static,
) -> (R, Traffic) {
    // The exclusion counters are read and written by each task on a client
    // of its own, one command at a time: fred can hand a command another
    // one's reply while it follows an ASK with other commands in flight on
    // the same connection (see the last test), which would garble the
    // checks themselves.
    let redis = patient_client(url).await;
    let mut counters_clients = Vec::new();
    for _ in 0..TASKS {
        counters_clients.push(patient_client(url).await);
    }
    let mutexes = [
        builder_at(url).await.ttl(TRAFFIC_TTL).build().unwrap(),
        builder_at(url).await.ttl(TRAFFIC_TTL).build().unwrap(),
    ];
    let counts = Arc::new(Counts::default());
    let keys = Arc::new(keys);

    let started = Instant::now();
    let until = started + TRAFFIC;
    let background = tokio::task::spawn_blocking(move || background(until));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, client) in counters_clients.iter().enumerate() {
        tasks.spawn(traffic(
            n,
            mutexes[n % 2].clone(),
            Some(client.clone()),
            Arc::clone(&keys),
            Arc::clone(&counts),
            until,
        ));
    }
    let joined = tokio::time::timeout(TRAFFIC + Duration::from_secs(20), async {
        while let Some(done) = tasks.join_next().await {
            done.expect("traffic task");
        }
    })
    .await;
    let outcome = background.await.expect("background thread");
    let ran = started.elapsed();
    assert!(joined.is_ok(), "traffic tasks did not finish");

    for mutex in &mutexes {
        mutex.shutdown().await;
    }
    {
        let reshard = Arc::clone(reshard);
        blocking(move || reshard.wait_all_nodes_agree(Duration::from_secs(10)))
            .await
            .unwrap_or_else(|e| panic!("after the traffic: {e}"));
    }
    let left = (0..MASTERS)
        .flat_map(|i| {
            reshard
                .keys_on(i, pattern)
                .into_iter()
                .filter(|k| !k.starts_with("count:"))
                .map(move |k| (i, k))
        })
        .collect();
    let mut counters = Vec::new();
    for key in keys.iter() {
        let n: Option<i64> = redis.get(counter_key(key)).await.unwrap();
        counters.push(n.unwrap_or(0));
    }
    for client in counters_clients.into_iter().chain([redis]) {
        let _ = client.quit().await;
    }
    let traffic = Traffic {
        ran,
        counts,
        left,
        counters,
    };
    (outcome, traffic)
}

/// Lock traffic from two mutexes (8 tasks) for 8 s on 12 keys, 4 per
/// master in 3 slots (two plain keys and a pair sharing a hash tag, so
/// batched releases and renewals cover several keys of one slot), while a
/// mover moves those 9 slots one after another, both ways between every
/// pair of masters. No violation of mutual exclusion, every error
/// transient, and once everything is shut down, no lock key on any master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_stay_exclusive_while_slots_move_between_masters() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let reshard = Arc::new(Resharder::new(&cluster));

    let mut keys = Vec::new();
    for i in 0..MASTERS {
        let bases = cluster.keys_on_master(i, "reshard:x:", 3);
        keys.push(bases[0].clone());
        keys.push(bases[1].clone());
        keys.push(format!("{{{}}}:a", bases[2]));
        keys.push(format!("{{{}}}:b", bases[2]));
    }
    let mut slots: Vec<u16> = keys.iter().map(|k| redis_keyslot(k.as_bytes())).collect();
    slots.dedup();
    assert_eq!(slots.len(), 3 * MASTERS, "slots {slots:?} of {keys:?}");

    let (report, traffic) = {
        let reshard = Arc::clone(&reshard);
        let slots = slots.clone();
        traffic_while(
            &Arc::clone(&reshard),
            &url,
            keys,
            "*reshard:x:*",
            move |until| {
                let mover = Mover::start(reshard, slots, MOVE_PAUSE);
                thread::sleep(until.saturating_duration_since(Instant::now()));
                mover.stop()
            },
        )
        .await
    };
    assert!(report.error.is_none(), "the mover failed: {report:?}");
    let pairs: Vec<String> = (0..MASTERS)
        .flat_map(|a| (0..MASTERS).map(move |b| (a, b)))
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("{a}->{b}: {}", report.between(a, b)))
        .collect();
    traffic.check(
        "traffic",
        &format!(
            "{} slots; slots moved {} ({}), keys migrated {}, longest move {:?}",
            slots.len(),
            report.moves.len(),
            pairs.join(", "),
            report.keys(),
            report.longest(),
        ),
        300,
    );
    // Meaningful: slots holding live locks moved many times, both ways
    // between every pair of masters.
    assert!(
        report.moves.len() >= 2 * slots.len(),
        "only {} moves",
        report.moves.len()
    );
    for (a, b) in (0..MASTERS).flat_map(|a| (0..MASTERS).map(move |b| (a, b))) {
        if a != b {
            assert!(
                report.between(a, b) > 0,
                "no slot moved {a}->{b}: {pairs:?}"
            );
        }
    }
    assert!(
        report.keys() >= report.moves.len() / 2,
        "moves carried only {} keys in {} moves: the slots held no live locks",
        report.keys(),
        report.moves.len()
    );
}

/// How many slots one `redis-cli --cluster reshard` moves.
const CLI_SLOTS: u32 = 64;

/// The same traffic on 8 keys in master 0's lowest 64 slots (which
/// `redis-cli --cluster reshard` moves first), while the tool itself moves
/// 64 slots from master 0 to master 1 and back, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_stay_exclusive_while_redis_cli_reshards() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let reshard = Arc::new(Resharder::new(&cluster));
    let lowest = cluster.slots_of(0)[0].clone();
    assert_eq!(*lowest.start(), 0, "master 0 serves slot 0");
    let keys: Vec<String> = (0u64..)
        .map(|n| format!("reshard:cli:{n}"))
        .filter(|k| redis_keyslot(k.as_bytes()) < CLI_SLOTS as u16)
        .take(8)
        .collect();

    let key_slots: Vec<u16> = keys.iter().map(|k| redis_keyslot(k.as_bytes())).collect();
    let (runs, traffic) = {
        let reshard = Arc::clone(&reshard);
        traffic_while(
            &Arc::clone(&reshard),
            &url,
            keys.clone(),
            "*reshard:cli:*",
            move |until| {
                let mut runs: Vec<(usize, usize, Duration)> = Vec::new();
                let mut from = 0;
                while Instant::now() < until {
                    let to = 1 - from;
                    let took = reshard.reshard_with_cli(from, to, CLI_SLOTS)?;
                    // The keys' slots went with it.
                    if let Some(slot) = key_slots.iter().find(|&&s| reshard.owner(s) != to) {
                        return Err(format!(
                            "slot {slot} is not on master {to} after the reshard"
                        ));
                    }
                    runs.push((from, to, took));
                    from = to;
                }
                Ok(runs)
            },
        )
        .await
    };
    let runs = runs.unwrap_or_else(|e| panic!("{e}"));
    let there = runs.iter().filter(|r| r.0 == 0).count();
    let back = runs.iter().filter(|r| r.0 == 1).count();
    let longest = runs.iter().map(|r| r.2).max().unwrap_or_default();
    traffic.check(
        "redis-cli",
        &format!(
            "redis-cli --cluster reshard of {CLI_SLOTS} slots (the keys' among them): \
             {there} times 0->1, {back} times 1->0, longest {longest:?}"
        ),
        200,
    );
    assert!(there >= 2 && back >= 2, "only {there} and {back} reshards");
}

// ---- resharding while a master fails over -----------------------------------------

/// How long the failover test's traffic runs.
const FAILOVER_TRAFFIC: Duration = Duration::from_secs(12);
/// When, into the traffic, master 0 is killed.
const KILL_AT: Duration = Duration::from_millis(2500);
/// Until when master 0's keys are taken with confirmed writes (through the
/// failover window; its replica takes over within about 2 s).
const CONFIRMED_UNTIL: Duration = Duration::from_millis(5500);

/// Lock traffic (8 tasks) on 12 keys, 4 per master, while a mover moves
/// the 6 slots of masters 1 and 2 back and forth between them and master 0
/// is SIGKILLed 2.5 s in, so that its replica takes over mid-reshard.
/// Master 0's keys are taken by two mutexes that confirm each write on the
/// replica (`min_replicas(1)`: an unconfirmed lease would be lost by the
/// failover itself, Redis's asynchronous replication, not the crate) until
/// 3 s after the kill, then (the promoted replica has no replica) by the
/// plain ones; the moving keys by two plain ones throughout. Mutual exclusion holds throughout (the
/// occupancy table of every holder in the process: no two inside one key's
/// section, no fresh guard without a lease); every error is transient
/// (`Unavailable`, `Timeout`, `NotReplicated`), and on the moving keys
/// only between the kill and two seconds after the takeover (fred reconnects
/// meanwhile); master 0's keys are taken again on the
/// promoted replica once it has taken over; afterwards no lock key is left
/// on any live node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_stay_exclusive_while_slots_move_and_a_master_fails_over() {
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    let reshard = Arc::new(Resharder::new(&cluster));

    let mut failing_keys = Vec::new();
    let mut moving_keys = Vec::new();
    for i in 0..MASTERS {
        let bases = cluster.keys_on_master(i, "reshard:fo:", 3);
        let keys = [
            bases[0].clone(),
            bases[1].clone(),
            format!("{{{}}}:a", bases[2]),
            format!("{{{}}}:b", bases[2]),
        ];
        if i == 0 {
            failing_keys.extend(keys);
        } else {
            moving_keys.extend(keys);
        }
    }
    let mut slots: Vec<u16> = moving_keys
        .iter()
        .map(|k| redis_keyslot(k.as_bytes()))
        .collect();
    slots.dedup();
    assert_eq!(slots.len(), 6, "slots {slots:?} of {moving_keys:?}");

    let confirm = || async {
        builder_at(&url)
            .await
            .ttl(TRAFFIC_TTL)
            .min_replicas(1, ms(500))
            .build()
            .unwrap()
    };
    let plain = || async { builder_at(&url).await.ttl(TRAFFIC_TTL).build().unwrap() };
    let mutexes = [
        plain().await,
        plain().await,
        confirm().await,
        confirm().await,
    ];
    let failing = Arc::new(failing_keys.clone());
    let moving = Arc::new(moving_keys.clone());
    // The moving keys' errors, apart from the others'.
    let on_failing = Arc::new(Counts::default());
    let on_moving = Arc::new(Counts::default());

    let started = Instant::now();
    let until = started + FAILOVER_TRAFFIC;
    let mover = {
        let reshard = Arc::clone(&reshard);
        tokio::task::spawn_blocking(move || {
            let mut report = crate::support::reshard::MoverReport::default();
            for &slot in slots.iter().cycle() {
                if Instant::now() >= until {
                    break;
                }
                let to = if reshard.owner(slot) == 1 { 2 } else { 1 };
                match reshard.move_slot(slot, to, MOVE_PAUSE) {
                    Ok(moved) => report.moves.push(moved),
                    Err(e) => {
                        report.error = Some(e);
                        break;
                    }
                }
            }
            report
        })
    };
    // Even tasks on the moving keys (plain mutexes), odd ones on master 0's
    // (confirming mutexes, until a while after the kill).
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..TASKS {
        let (keys, counts, mutex, end) = if n % 2 == 0 {
            (&moving, &on_moving, &mutexes[n / 2 % 2], until)
        } else {
            (
                &failing,
                &on_failing,
                &mutexes[2 + n / 2 % 2],
                started + CONFIRMED_UNTIL,
            )
        };
        tasks.spawn(traffic(
            n,
            mutex.clone(),
            None,
            Arc::clone(keys),
            Arc::clone(counts),
            end,
        ));
    }

    // Master 0 dies mid-reshard; its replica takes over.
    tokio::time::sleep_until((started + KILL_AT).into()).await;
    let acquired_before = on_failing.acquired.load(Ordering::Relaxed);
    let errors = |counts: &Counts| counts.transient.lock().unwrap().values().sum::<usize>();
    let moving_errors_before = errors(&on_moving);
    let killed = cluster.kill_master(0);
    let promoted =
        tokio::task::block_in_place(|| cluster.wait_for_failover(0, Duration::from_secs(15)));
    let took_over = killed.elapsed();
    let acquired_at_failover = on_failing.acquired.load(Ordering::Relaxed);
    // fred reconnects after the kill and syncs its slot table, its commands
    // to every node waiting meanwhile (and a call sent then may still time
    // out after): the failover window ends two seconds after the takeover.
    let window_end = Instant::now() + Duration::from_secs(2);
    // The promoted replica has no replica of its own: master 0's keys are
    // taken by the plain mutexes from here on.
    for n in (1..TASKS).step_by(2) {
        tasks.spawn(traffic(
            n,
            mutexes[n / 2 % 2].clone(),
            None,
            Arc::clone(&failing),
            Arc::clone(&on_failing),
            until,
        ));
    }

    tokio::time::sleep_until(window_end.into()).await;
    let moving_errors_to_window_end = errors(&on_moving);
    assert!(
        window_end < until,
        "the takeover took too long to leave traffic after it"
    );
    let joined = tokio::time::timeout(FAILOVER_TRAFFIC + Duration::from_secs(20), async {
        while let Some(done) = tasks.join_next().await {
            done.expect("traffic task");
        }
    })
    .await;
    let report = mover.await.expect("mover");
    assert!(joined.is_ok(), "traffic tasks did not finish");
    let acquired_after = on_failing.acquired.load(Ordering::Relaxed) - acquired_at_failover;

    // Master 0's keys, on the promoted replica now: each taken and given
    // back once more, its token there.
    let node = &cluster.nodes()[promoted];
    for key in failing.iter() {
        let guard = tokio::time::timeout(Duration::from_secs(10), mutexes[0].lock(key))
            .await
            .unwrap_or_else(|_| panic!("{key}: no lock after the failover"))
            .unwrap_or_else(|e| panic!("{key} after the failover: {e}"));
        assert_eq!(
            node.cli(&["GET", key]),
            guard.token(),
            "{key} on the new master"
        );
        guard.release().await.unwrap();
    }
    for mutex in &mutexes {
        mutex.shutdown().await;
    }

    let summary = |counts: &Counts| {
        format!(
            "acquisitions {}, not obtained {}, violations {}, errors not transient {}, \
             transient errors {:?}",
            counts.acquired.load(Ordering::Relaxed),
            counts.not_obtained.load(Ordering::Relaxed),
            counts.violations.lock().unwrap().len(),
            counts.failures.lock().unwrap().len(),
            counts.transient.lock().unwrap(),
        )
    };
    eprintln!(
        "reshard failover: {:.1?}; moving keys (slots 1<->2): {}; failing master's keys: {} \
         ({acquired_before} before the kill, {acquired_after} after the takeover); \
         master 0 killed at {KILL_AT:?}, replica (node {promoted}) took over after {took_over:?}; \
         slots moved {} (1->2: {}, 2->1: {}), keys migrated {}",
        started.elapsed(),
        summary(&on_moving),
        summary(&on_failing),
        report.moves.len(),
        report.between(1, 2),
        report.between(2, 1),
        report.keys(),
    );
    assert!(report.error.is_none(), "the mover failed: {report:?}");
    for (what, counts) in [("moving", &on_moving), ("failing", &on_failing)] {
        let violations = counts.violations.lock().unwrap().clone();
        assert!(
            violations.is_empty(),
            "{what} keys: mutual exclusion violated: {violations:#?}"
        );
        let failures = counts.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "{what} keys: errors not transient: {failures:#?}"
        );
    }
    // The moving keys live on masters that stay up: errors there only in
    // the failover window (fred's reconnection holds up every node's
    // commands), none from resharding.
    let moving_errors = on_moving.transient.lock().unwrap().clone();
    assert_eq!(
        moving_errors_before, 0,
        "the moving keys had errors before the kill: {moving_errors:?}"
    );
    assert_eq!(
        errors(&on_moving),
        moving_errors_to_window_end,
        "the moving keys had errors after the failover window: {moving_errors:?}"
    );
    assert!(
        on_moving.acquired.load(Ordering::Relaxed) >= 200,
        "moving keys: {}",
        summary(&on_moving)
    );
    assert!(
        acquired_before >= 20,
        "failing master's keys before the kill: {acquired_before}"
    );
    assert!(
        acquired_after >= 20,
        "failing master's keys after the takeover: {acquired_after}"
    );
    assert!(
        report.moves.len() >= 12,
        "only {} moves",
        report.moves.len()
    );

    // No lock key left on any live node (replicas included, once the
    // releases have replicated).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<(u16, String)> = cluster
            .nodes()
            .iter()
            .filter(|n| n.pid().is_some())
            .flat_map(|n| {
                n.cli(&["KEYS", "*reshard:fo:*"])
                    .lines()
                    .filter(|k| !k.is_empty())
                    .map(|k| (n.port(), k.to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "lock keys left: {left:?}");
        tokio::time::sleep(ms(50)).await;
    }
}

// ---- renewal across a move -------------------------------------------------------

/// The lease of the renewal test: renewed every 500 ms, so renewals fall
/// inside the moves.
const RENEW_TTL: Duration = Duration::from_millis(1500);
/// The mover's pause in the renewal test: a move of a slot with two locks
/// lasts about three pauses, more than a renewal period; for two of them
/// the keys are split between the nodes (renewing both is `TRYAGAIN`).
const RENEW_PAUSE: Duration = Duration::from_millis(200);

/// Auto-renewed leases (1.5 s) on 3 keys per master, two of them sharing
/// a slot; each slot moves to the next master with 200 ms pauses (while
/// the keys are split between the nodes, a renewal of both answers
/// `TRYAGAIN`). Every lease stays held throughout (checked every 10 ms),
/// its token is on the new owner and gone from the old, and it is still
/// renewed there a few TTLs later; the explicit release then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_lock_survives_its_slot_moving() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let reshard = Arc::new(Resharder::new(&cluster));
    let mutex = builder_at(&url).await.ttl(RENEW_TTL).build().unwrap();

    let mut guards: Vec<LockGuard> = Vec::new();
    let mut slots = Vec::new();
    for i in 0..MASTERS {
        let bases = cluster.keys_on_master(i, "reshard:renew:", 2);
        for key in [
            bases[0].clone(),
            format!("{{{}}}:a", bases[1]),
            format!("{{{}}}:b", bases[1]),
        ] {
            guards.push(
                mutex
                    .lock(&key)
                    .await
                    .unwrap_or_else(|e| panic!("{key}: {e}")),
            );
        }
        slots.push(redis_keyslot(bases[0].as_bytes()));
        slots.push(redis_keyslot(bases[1].as_bytes()));
    }

    // Move every slot while watching the leases.
    let mover = {
        let reshard = Arc::clone(&reshard);
        let slots = slots.clone();
        tokio::task::spawn_blocking(move || {
            slots
                .iter()
                .map(|&slot| {
                    let to = (reshard.owner(slot) + 1) % reshard.masters();
                    reshard.move_slot(slot, to, RENEW_PAUSE)
                })
                .collect::<Result<Vec<_>, String>>()
        })
    };
    let started = Instant::now();
    let mut least = Duration::MAX;
    let mut checks = 0;
    while !mover.is_finished() {
        for guard in &guards {
            assert!(
                !guard.is_lost(),
                "{} lost {:?} into the moves",
                guard.key(),
                started.elapsed(),
            );
            least = least.min(guard.remaining());
        }
        checks += 1;
        tokio::time::sleep(ms(10)).await;
    }
    let moves = mover.await.unwrap().unwrap_or_else(|e| panic!("move: {e}"));
    let moving = started.elapsed();
    assert!(checks >= 50, "only {checks} checks");
    let keys_moved: usize = moves.iter().map(|m| m.keys).sum();
    assert_eq!(keys_moved, guards.len(), "the moves carried {moves:?}");

    // A few TTLs later: still held, renewed on the new owners.
    tokio::time::sleep(RENEW_TTL * 2).await;
    for guard in &guards {
        let key = guard.key();
        let slot = redis_keyslot(key.as_bytes());
        let owner = reshard.owner(slot);
        let was = (owner + MASTERS - 1) % MASTERS;
        assert!(!guard.is_lost(), "{key} lost after the moves");
        assert!(guard.remaining() > Duration::ZERO, "{key}");
        assert_eq!(
            reshard.get_on(owner, key).as_deref(),
            Some(guard.token()),
            "{key}: not on its new owner, master {owner}"
        );
        assert_eq!(
            reshard.get_on(was, key),
            None,
            "{key}: still on master {was}"
        );
    }
    eprintln!(
        "reshard renewal: {} leases of {RENEW_TTL:?} held through {} slot moves \
         ({moving:.1?}, {keys_moved} keys migrated); least remaining() seen {least:?}",
        guards.len(),
        moves.len()
    );
    for guard in guards {
        let key = guard.key().to_owned();
        guard
            .release()
            .await
            .unwrap_or_else(|e| panic!("{key}: release after the move: {e}"));
    }
    mutex.shutdown().await;
    for i in 0..MASTERS {
        let left = reshard.keys_on(i, "*reshard:renew:*");
        assert!(left.is_empty(), "master {i} holds {left:?}");
    }
}

// ---- release notifications across a move -------------------------------------------

/// How long the waiter's subscription may take to follow its slot (the
/// mutex checks every 0.5 s).
const FOLLOW_LIMIT: Duration = Duration::from_millis(1500);

/// On a key of each master: a holder (30 s lease) and a waiter of another
/// mutex (polling every 5 s, so only a release message wakes it sooner);
/// the key's slot moves to the next master while the waiter waits.
/// 1. The waiter's subscription moves with it (`SHARDNUMSUB` 1 on the new
///    owner, 0 on the old); the holder's release, sent to the old owner
///    first (`MOVED`), succeeds, and the waiter has the lock within 1 s.
/// 2. The slot moves back and the holder releases at once, before the
///    subscription can have followed: the waiter is woken when it does
///    (it tries again then), within [`FOLLOW_LIMIT`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_the_release_after_its_keys_slot_moved() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let reshard = Arc::new(Resharder::new(&cluster));
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

    let mut settled = Vec::new();
    let mut follows = Vec::new();
    let mut at_once = Vec::new();
    for i in 0..MASTERS {
        let key = cluster.key_on_master(i, "reshard:notify:");
        let slot = redis_keyslot(key.as_bytes());
        // The waiter's mutex's handoff channel (its id unknown here).
        let channel = format!("{{{key}}}:handoff:*:{key}");
        let there = (i + 1) % MASTERS;

        // 1. Moved while waited for; released once the subscription followed.
        let guard = holder.lock(&key).await.unwrap();
        let task = wait_for(&waiter, &key);
        subscribed_on(&reshard, i, &channel).await;
        let moved = move_slot(&reshard, slot, there).await;
        // The lock and its wait queue (the waiter is queued), one slot.
        assert_eq!(moved.keys, 2, "{key}: {moved:?}");
        let follow = subscribed_on(&reshard, there, &channel).await;
        assert_eq!(
            reshard.shard_numsub_on(i, &channel),
            0,
            "{channel} on master {i}"
        );
        assert!(!task.is_finished(), "{key}: the waiter got a held lock");
        follows.push(follow);
        settled.push(handoff(guard, task, &key).await);

        // 2. Moved back; released at once.
        let guard = holder.lock(&key).await.unwrap();
        let task = wait_for(&waiter, &key);
        subscribed_on(&reshard, there, &channel).await;
        move_slot(&reshard, slot, i).await;
        at_once.push(handoff(guard, task, &key).await);
    }
    eprintln!(
        "reshard notify: subscription on the new owner {follows:?} after the move; \
         waiter acquired after the release: settled {settled:?}, released right after \
         the move {at_once:?}"
    );
    for (i, took) in settled.iter().enumerate() {
        assert!(
            *took < Duration::from_secs(1),
            "master {i}: the waiter took {took:?} after the release (its poll is 5 s): {settled:?}"
        );
    }
    for (i, took) in at_once.iter().enumerate() {
        assert!(
            *took < FOLLOW_LIMIT,
            "master {i}: released right after the move, the waiter took {took:?}: {at_once:?}"
        );
    }
    holder.shutdown().await;
    waiter.shutdown().await;
}

/// The waiter's `lock(key)` in a task of its own, with when it returned.
fn wait_for(
    waiter: &DistributedMutex,
    key: &str,
) -> tokio::task::JoinHandle<(Instant, Result<LockGuard, Error>)> {
    let waiter = waiter.clone();
    let key = key.to_owned();
    tokio::spawn(async move {
        let outcome = waiter.lock(&key).await;
        (Instant::now(), outcome)
    })
}

/// Waits (at most [`FOLLOW_LIMIT`]) until `channel` has a subscriber on
/// the `i`-th master; returns how long that took.
async fn subscribed_on(reshard: &Resharder, i: usize, channel: &str) -> Duration {
    let started = Instant::now();
    while reshard.shard_numsub_on(i, channel) < 1 {
        assert!(
            started.elapsed() < FOLLOW_LIMIT,
            "no subscriber of {channel} on master {i} after {FOLLOW_LIMIT:?}"
        );
        tokio::time::sleep(ms(10)).await;
    }
    started.elapsed()
}

async fn move_slot(
    reshard: &Arc<Resharder>,
    slot: u16,
    to: usize,
) -> crate::support::reshard::Moved {
    let reshard = Arc::clone(reshard);
    blocking(move || reshard.move_slot(slot, to, ms(20)))
        .await
        .unwrap_or_else(|e| panic!("move slot {slot}: {e}"))
}

/// Releases `guard` (its slot moved since it was taken: the release meets
/// `MOVED` and must still succeed) and returns how long after the release
/// the waiter had the lock.
async fn handoff(
    guard: LockGuard,
    task: tokio::task::JoinHandle<(Instant, Result<LockGuard, Error>)>,
    key: &str,
) -> Duration {
    guard
        .release()
        .await
        .unwrap_or_else(|e| panic!("{key}: release after the move: {e}"));
    let released = Instant::now();
    let (acquired, outcome) = task.await.expect("waiter task");
    let theirs = outcome.unwrap_or_else(|e| panic!("{key}: the waiter: {e}"));
    theirs.release().await.unwrap();
    acquired.saturating_duration_since(released)
}

// ---- a lock in the middle of a move ---------------------------------------------------

/// A held lock whose key has gone ahead to the importing node while its
/// slot is still migrating (the old owner answers `ASK` for it): extending
/// it succeeds (the crate follows the `ASK`: `ASKING` and the call on the
/// importing node); releasing it fails, if at all, only with a transient
/// error (the release script also names the lock's queue key, which exists
/// on neither node: the importing node answers `TRYAGAIN` until the move
/// ends), within the call's budget; once the move is done the release has
/// happened (in the background), the key can be taken again, and the mutex
/// works on every master. Before, a release (sent with one attempt) that
/// met `ASK` ended fred's connection task: it timed out, and so did every
/// later call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_mid_move_is_released_once_the_move_ends_and_the_mutex_keeps_working() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let reshard = Arc::new(Resharder::new(&cluster));
    let mutex = builder_at(&url)
        .await
        .ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    let key = cluster.key_on_master(0, "reshard:ask:");
    let slot = redis_keyslot(key.as_bytes());
    let guard = mutex.lock(&key).await.unwrap();

    // The slot migrates to master 1; the lock key goes ahead.
    {
        let reshard = Arc::clone(&reshard);
        blocking(move || {
            reshard.begin(slot, 1)?;
            reshard.migrate_one(slot, 1)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    // (An importing node answers only ASKING clients: list the slot's keys.)
    let in_slot = |i: usize| -> Vec<String> {
        reshard
            .keys_in_slot(i, slot, 10)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect()
    };
    assert_eq!(in_slot(1), std::slice::from_ref(&key), "master 1");
    assert!(in_slot(0).is_empty(), "{key} still on master 0");

    let started = Instant::now();
    let extended = tokio::time::timeout(
        Duration::from_secs(5),
        guard.extend(Duration::from_secs(40)),
    )
    .await
    .expect("extend mid-move hangs");
    let released = tokio::time::timeout(Duration::from_secs(5), guard.release())
        .await
        .expect("release mid-move hangs");
    let mid_move = started.elapsed();
    {
        let reshard = Arc::clone(&reshard);
        blocking(move || reshard.finish(slot, 1))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    eprintln!("reshard mid-move: extend {extended:?}, release {released:?} (both in {mid_move:?})");
    if let Err(e) = &extended {
        panic!("{key}: extend mid-move, through ASK: {e} ({e:?})");
    }
    if let Err(e) = &released {
        assert!(e.is_transient(), "{key} mid-move: {e} ({e:?})");
    }

    // The release is done (by the mutex, in the background, if the call
    // failed): the key is gone from master 1, and free to take again.
    let deadline = Instant::now() + Duration::from_secs(3);
    while reshard.get_on(1, &key).is_some() {
        assert!(
            Instant::now() < deadline,
            "{key} still held on master 1 3 s after the move"
        );
        tokio::time::sleep(ms(20)).await;
    }
    let again = mutex
        .try_lock(&key)
        .await
        .unwrap_or_else(|e| panic!("{key} after the move: {e}"))
        .expect("the key is free");
    assert_eq!(reshard.get_on(1, &key).as_deref(), Some(again.token()));
    again.release().await.unwrap();

    for i in 0..MASTERS {
        let other = cluster.key_on_master(i, "reshard:ask:after:");
        let guard = tokio::time::timeout(Duration::from_secs(5), mutex.lock(&other))
            .await
            .unwrap_or_else(|_| panic!("{other}: the mutex hangs after the move"))
            .unwrap_or_else(|e| panic!("{other} after the move: {e}"));
        guard.release().await.unwrap();
    }
    mutex.shutdown().await;
    for i in 0..MASTERS {
        let left = reshard.keys_on(i, "*reshard:ask:*");
        assert!(left.is_empty(), "master {i} holds {left:?}");
    }
}

// ---- the client's ASK handling ------------------------------------------------------

/// fred 10.1 follows an `ASK` by writing `ASKING` to the importing node and
/// reading that connection's next reply as its answer, while other
/// commands may be in flight on it: their replies then shift by one (a
/// command gets another's reply, or `ASKING`'s `OK`). Here, eight tasks
/// read keys whose values are their own names from the node a slot is
/// being moved to, on one client, while another task reads a key of the
/// moving slot already migrated (answered `ASK`). Every reply must be the
/// key's own value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known defect of fred 10.1 (about 1 reply in 10 is another command's here); \
            the crate's scripts name their token in every reply so it is never misled"]
async fn replies_stay_matched_while_the_client_follows_ask() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let client = patient_client(&url).await;
    // Keys on master 1 (the target) that the readers read.
    let readers = cluster.keys_on_master(1, "reshard:ask:read:", 8);
    for key in &readers {
        let _: () = client
            .set(key, key.as_str(), None, None, false)
            .await
            .unwrap();
    }
    // A key on master 0, moved to master 1 by hand and left mid-move.
    let moving = cluster.key_on_master(0, "reshard:ask:moving:");
    let _: () = client
        .set(&moving, moving.as_str(), None, None, false)
        .await
        .unwrap();
    let slot = redis_keyslot(moving.as_bytes());
    let ports = cluster.masters();
    let ids: Vec<String> = (0..2)
        .map(|i| cluster.master(i).cli(&["CLUSTER", "MYID"]))
        .collect();
    let s = slot.to_string();
    assert_eq!(
        cluster
            .master(1)
            .cli(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &ids[0]]),
        "OK"
    );
    assert_eq!(
        cluster
            .master(0)
            .cli(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &ids[1]]),
        "OK"
    );
    let port = ports[1].to_string();
    assert_eq!(
        cluster
            .master(0)
            .cli(&["MIGRATE", "127.0.0.1", &port, &moving, "0", "5000"]),
        "OK"
    );

    let wrong = Arc::new(Mutex::new(Vec::new()));
    let reads = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(3);
    let mut tasks = tokio::task::JoinSet::new();
    for key in readers
        .iter()
        .cloned()
        .chain(std::iter::once(moving.clone()))
    {
        let client = client.clone();
        let wrong = Arc::clone(&wrong);
        let reads = Arc::clone(&reads);
        tasks.spawn(async move {
            while Instant::now() < until {
                match client.get::<Option<String>, _>(&key).await {
                    Ok(Some(v)) if v == key => {}
                    // The moving key's own reads fail (fred sends them back
                    // to the old owner): not a mix-up.
                    Err(_) if key.contains(":moving:") => {}
                    other => wrong.lock().unwrap().push(format!("GET {key}: {other:?}")),
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    // Finish the move, so the cluster is whole again.
    for i in [1, 0, 2] {
        assert_eq!(
            cluster
                .master(i)
                .cli(&["CLUSTER", "SETSLOT", &s, "NODE", &ids[1]]),
            "OK"
        );
    }
    let wrong = wrong.lock().unwrap().clone();
    eprintln!(
        "reshard ask: {} reads, {} wrong; first: {:?}",
        reads.load(Ordering::Relaxed),
        wrong.len(),
        wrong.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        wrong.is_empty(),
        "{} replies were another command's",
        wrong.len()
    );
}
