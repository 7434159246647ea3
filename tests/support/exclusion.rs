//! The mutual-exclusion property test, shared by `tests/it/property.rs` (local
//! redis-server processes) and `tests/containers.rs` (Redis in a container):
//! random interleavings of lock, try_lock, extend, release, drop and sleep by
//! several tasks across two `DistributedMutex` instances (two "processes",
//! each with its own connection) over a few keys.
//!
//! Invariants, checked in every generated case:
//! 1. mutual exclusion: a table of who is inside a critical section, per key,
//!    never counts more than one (leases are long, 3 s, and sections short,
//!    so no lease can run out legitimately; `remaining()` and `is_lost()` are
//!    checked too);
//! 2. a Redis counter per key, incremented and decremented non-atomically
//!    (GET, sleep, SET) inside the section, reads 0 on every entry;
//! 3. once every task is done and both mutexes are shut down, no lock key is
//!    left in Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distributed_mutex::{DistributedMutex, Error, LockGuard, RetryStrategy};
use fred::prelude::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::common::builder_at;

/// The lease of every lock: long enough that none can run out legitimately
/// within a case.
pub const TTL: Duration = Duration::from_secs(3);

/// One step of a task.
#[derive(Debug, Clone)]
pub enum Op {
    Lock(usize),
    TryLock(usize),
    Extend,
    Release,
    Drop,
    Sleep(u64),
}

/// A generated case.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub keys: usize,
    /// One sequence of operations per task; task `i` uses process `i % 2`.
    pub tasks: Vec<Vec<Op>>,
}

fn op(keys: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..keys).prop_map(Op::Lock),
        2 => (0..keys).prop_map(Op::TryLock),
        1 => Just(Op::Extend),
        2 => Just(Op::Release),
        2 => Just(Op::Drop),
        2 => (0u64..8).prop_map(Op::Sleep),
    ]
}

/// The most keys a case uses.
pub const MAX_KEYS: usize = 3;

/// Cases: 2-3 keys, 3-4 tasks of 5-15 operations each.
pub fn scenario() -> impl Strategy<Value = Scenario> {
    (2usize..=MAX_KEYS).prop_flat_map(|keys| {
        prop::collection::vec(prop::collection::vec(op(keys), 5..=15), 3..=4)
            .prop_map(move |tasks| Scenario { keys, tasks })
    })
}

fn lock_key(prefix: &str, k: usize) -> String {
    format!("{prefix}{k}")
}

fn counter_key(key: &str) -> String {
    format!("count:{{{key}}}")
}

/// What every task shares within one case.
struct Shared {
    /// How many tasks are inside the critical section of each key.
    occupancy: Mutex<HashMap<String, usize>>,
    sections: AtomicUsize,
    not_obtained: AtomicUsize,
}

/// A held lock and the critical section it protects.
struct Section {
    key: String,
    guard: LockGuard,
}

type TaskResult = Result<(), String>;

async fn enter(shared: &Shared, redis: &Client, guard: LockGuard) -> Result<Section, String> {
    let key = guard.key().to_owned();
    if guard.remaining().is_zero() || guard.is_lost() {
        return Err(format!("{key}: a fresh guard has no lease left"));
    }
    {
        let mut occupancy = shared.occupancy.lock().unwrap();
        let inside = occupancy.entry(key.clone()).or_insert(0);
        *inside += 1;
        if *inside > 1 {
            return Err(format!(
                "{key}: {inside} holders inside the critical section"
            ));
        }
    }
    shared.sections.fetch_add(1, Ordering::Relaxed);
    // Non-atomic read-modify-write of a Redis counter.
    let counter = counter_key(&key);
    let n: Option<i64> = redis.get(&counter).await.map_err(|e| e.to_string())?;
    let n = n.unwrap_or(0);
    if n != 0 {
        return Err(format!(
            "{key}: counter reads {n} on entry, another holder is inside"
        ));
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    let _: () = redis
        .set(&counter, n + 1, None, None, false)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Section { key, guard })
}

/// Leaves the critical section; the caller then releases or drops the guard.
async fn leave(shared: &Shared, redis: &Client, section: &Section) -> TaskResult {
    let key = &section.key;
    let counter = counter_key(key);
    let n: Option<i64> = redis.get(&counter).await.map_err(|e| e.to_string())?;
    if n != Some(1) {
        return Err(format!("{key}: counter reads {n:?} on exit, expected 1"));
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    let _: () = redis
        .set(&counter, 0, None, None, false)
        .await
        .map_err(|e| e.to_string())?;
    if section.guard.remaining().is_zero() || section.guard.is_lost() {
        return Err(format!(
            "{key}: the lease ran out inside the critical section (machine too slow?)"
        ));
    }
    let mut occupancy = shared.occupancy.lock().unwrap();
    let inside = occupancy.get_mut(key.as_str()).expect("entered before");
    *inside -= 1;
    Ok(())
}

async fn run_task(
    shared: Arc<Shared>,
    mutex: DistributedMutex,
    redis: Option<Client>,
    keys: Vec<String>,
    ops: Vec<Op>,
) -> TaskResult {
    // The counters: through the task's own mutex's client unless told.
    let redis = redis.unwrap_or_else(|| mutex.client().clone());
    let mut held: Option<Section> = None;
    for op in ops {
        match op {
            Op::Lock(k) | Op::TryLock(k) => {
                // One lock at a time per task, so tasks cannot deadlock.
                if let Some(section) = held.take() {
                    leave(&shared, &redis, &section).await?;
                    section.guard.release().await.map_err(|e| e.to_string())?;
                }
                let outcome = if matches!(op, Op::Lock(_)) {
                    mutex
                        .acquire(&keys[k])
                        .retry(RetryStrategy::linear(Duration::from_millis(5), 400))
                        .await
                        .map(Some)
                } else {
                    mutex.try_lock(&keys[k]).await
                };
                match outcome {
                    Ok(Some(guard)) => held = Some(enter(&shared, &redis, guard).await?),
                    Ok(None) | Err(Error::NotObtained { .. }) => {
                        shared.not_obtained.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(format!("{}: lock failed: {e}", keys[k])),
                }
            }
            Op::Extend => {
                if let Some(section) = &held {
                    section
                        .guard
                        .extend(TTL)
                        .await
                        .map_err(|e| format!("{}: extend failed: {e}", section.key))?;
                }
            }
            Op::Release => {
                if let Some(section) = held.take() {
                    leave(&shared, &redis, &section).await?;
                    let key = section.key.clone();
                    section
                        .guard
                        .release()
                        .await
                        .map_err(|e| format!("{key}: release failed: {e}"))?;
                }
            }
            Op::Drop => {
                if let Some(section) = held.take() {
                    leave(&shared, &redis, &section).await?;
                    drop(section);
                }
            }
            Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }
    if let Some(section) = held.take() {
        leave(&shared, &redis, &section).await?;
        drop(section);
    }
    Ok(())
}

/// Runs one generated case against the Redis at `url`, with lock keys
/// `{prefix}0`, `{prefix}1`, ...; fails the case when an invariant breaks.
pub async fn run_case(
    url: &str,
    prefix: &str,
    scenario: Scenario,
    totals: &Totals,
) -> Result<(), TestCaseError> {
    let pool: Vec<String> = (0..MAX_KEYS).map(|k| lock_key(prefix, k)).collect();
    run_case_on(url, prefix, &pool, scenario, totals).await
}

/// How the mutexes of a case connect and how the case reads Redis, for
/// [`run_case_as`].
pub struct Setup<'a> {
    /// The URL both mutexes connect to (it may name an ACL user).
    pub url: &'a str,
    /// The mutexes' key prefix (`""` for none).
    pub key_prefix: &'a str,
    /// The client that keeps the counters and looks for keys left behind
    /// (with every right); `None`: the first mutex's own client.
    pub raw: Option<&'a Client>,
}

/// [`run_case`] with the case's lock keys taken from `pool` (at least
/// [`MAX_KEYS`] keys, each starting with `prefix`): on a cluster, keys
/// chosen so that every master serves some.
pub async fn run_case_on(
    url: &str,
    prefix: &str,
    pool: &[String],
    scenario: Scenario,
    totals: &Totals,
) -> Result<(), TestCaseError> {
    let setup = Setup {
        url,
        key_prefix: "",
        raw: None,
    };
    run_case_as(&setup, prefix, pool, scenario, totals).await
}

/// [`run_case_on`] with the mutexes connected and keyed as `setup` says;
/// the lock keys in Redis are `setup.key_prefix` followed by the pool's.
pub async fn run_case_as(
    setup: &Setup<'_>,
    prefix: &str,
    pool: &[String],
    scenario: Scenario,
    totals: &Totals,
) -> Result<(), TestCaseError> {
    assert!(pool.len() >= scenario.keys, "a pool of {} keys", pool.len());
    assert!(pool.iter().all(|k| k.starts_with(prefix)), "{pool:?}");
    let connect = |url| async move {
        builder_at(url)
            .await
            .key_prefix(setup.key_prefix)
            .ttl(TTL)
            .build()
            .expect("valid settings")
    };
    let processes = [connect(setup.url).await, connect(setup.url).await];
    let keys: Vec<String> = pool[..scenario.keys].to_vec();
    let redis = match setup.raw {
        Some(raw) => raw.clone(),
        None => processes[0].client().clone(),
    };
    for key in &keys {
        let _: i64 = redis.del(counter_key(key)).await.unwrap();
    }

    let shared = Arc::new(Shared {
        occupancy: Mutex::new(HashMap::new()),
        sections: AtomicUsize::new(0),
        not_obtained: AtomicUsize::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ops) in scenario.tasks.into_iter().enumerate() {
        tasks.spawn(run_task(
            Arc::clone(&shared),
            processes[i % 2].clone(),
            setup.raw.cloned(),
            keys.clone(),
            ops,
        ));
    }
    let mut failures = Vec::new();
    let joined = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(e),
                Err(e) => failures.push(format!("task panicked: {e}")),
            }
        }
    })
    .await;
    prop_assert!(joined.is_ok(), "tasks did not finish within 20 s");
    prop_assert!(failures.is_empty(), "invariant violated: {failures:?}");

    for mutex in &processes {
        mutex.shutdown().await;
    }
    let left = keys_matching(&redis, &format!("{}{prefix}*", setup.key_prefix)).await;
    prop_assert!(
        left.is_empty(),
        "lock keys left after every task finished and both mutexes shut down: {left:?}"
    );
    for key in &keys {
        let n: Option<i64> = redis.get(counter_key(key)).await.unwrap();
        prop_assert!(
            n.unwrap_or(0) == 0,
            "counter of {key} is {n:?} after every section was left"
        );
    }

    totals
        .sections
        .fetch_add(shared.sections.load(Ordering::Relaxed), Ordering::Relaxed);
    totals.not_obtained.fetch_add(
        shared.not_obtained.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    for mutex in &processes {
        let _ = mutex.client().quit().await;
    }
    Ok(())
}

/// `KEYS pattern` on the server, or on every master of a cluster.
async fn keys_matching(redis: &Client, pattern: &str) -> Vec<String> {
    let nodes = if redis.is_clustered() {
        redis.active_connections().into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    let mut keys = Vec::new();
    for node in nodes {
        let found: Vec<String> = match node {
            Some(server) => redis
                .with_cluster_node(server)
                .custom(fred::cmd!("KEYS"), vec![pattern])
                .await
                .unwrap(),
            None => redis
                .custom(fred::cmd!("KEYS"), vec![pattern])
                .await
                .unwrap(),
        };
        keys.extend(found);
    }
    keys
}

/// Counts over all cases.
#[derive(Default)]
pub struct Totals {
    /// Critical sections entered.
    pub sections: AtomicUsize,
    /// Lock attempts that gave up.
    pub not_obtained: AtomicUsize,
}
