//! The counting semaphore (`DistributedMutex::semaphore`) against real,
//! private `redis-server` processes: the permit count holds across
//! processes (a proptest with random holds, drops, cancellations and
//! expiries), a crashed holder's permit comes back after its TTL, waiters are
//! woken by releases, renewal and loss, bad input, and a cluster.
//!
//! Time bounds are generous (the machine is loaded): each is built so that
//! the behaviour it names being broken moves the measured time far past it.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, Error, Lease, LostReason, RetryStrategy, MAX_PERMITS};
use fred::prelude::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use crate::support::cluster::{RedisCluster, MASTERS};
use crate::support::common::{ms, mutex_for, Fixture};
use crate::support::RedisServer;

/// The permit set of semaphore `name` (no prefix, a name without braces):
/// `\xff{name}:sem:name`.
fn permit_set(name: &str) -> fred::types::Key {
    let mut key = vec![0xFF];
    key.extend_from_slice(format!("{{{name}}}:sem:{name}").as_bytes());
    fred::types::Key::from(key.into_boxed_slice())
}

async fn zcard(raw: &Client, key: fred::types::Key) -> i64 {
    raw.custom(fred::cmd!("ZCARD"), vec![key])
        .await
        .expect("ZCARD")
}

#[tokio::test]
async fn at_most_permits_holders_and_a_release_frees_one() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let other = mutex_for(&server).await;
    let sem = mutex.semaphore("sem:basic", 2);
    let a = sem.acquire().await.expect("first permit");
    let b = other
        .semaphore("sem:basic", 2)
        .try_acquire()
        .await
        .expect("try")
        .expect("second permit");
    assert!(
        sem.try_acquire().await.expect("try").is_none(),
        "a third holder"
    );
    assert_eq!(zcard(&raw, permit_set("sem:basic")).await, 2);
    assert_ne!(a.token(), b.token());
    assert!(a.remaining() > Duration::ZERO && !a.is_lost());
    b.release().await.expect("release while held");
    let c = sem
        .try_acquire()
        .await
        .expect("try")
        .expect("the freed permit");
    drop((a, c));
    let deadline = Instant::now() + Duration::from_secs(5);
    while zcard(&raw, permit_set("sem:basic")).await != 0 {
        assert!(
            Instant::now() < deadline,
            "dropped permits were not released"
        );
        tokio::time::sleep(ms(20)).await;
    }
}

#[tokio::test]
async fn processes_that_disagree_on_permits_each_keep_their_own_limit() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let other = mutex_for(&server).await;
    let one = mutex.semaphore("sem:disagree", 1);
    let three = other.semaphore("sem:disagree", 3);
    let first = one.acquire().await.expect("the 1-permit process enters");
    let second = three.try_acquire().await.expect("try").expect("2nd of 3");
    let third = three.try_acquire().await.expect("try").expect("3rd of 3");
    assert!(
        three.try_acquire().await.expect("try").is_none(),
        "a 4th of 3"
    );
    drop(first);
    // Two are still held: the 1-permit process stays out.
    tokio::time::sleep(ms(200)).await;
    assert!(one.try_acquire().await.expect("try").is_none());
    assert_eq!(zcard(&raw, permit_set("sem:disagree")).await, 2);
    drop((second, third));
    let permit = one
        .acquire_with()
        .retry(RetryStrategy::linear(ms(50), 100))
        .await
        .expect("enters once none is held");
    permit.release().await.expect("release");
}

#[tokio::test]
async fn a_crashed_holders_permit_returns_after_its_ttl() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let other = mutex_for(&server).await;
    let crashed = mutex
        .semaphore("sem:crash", 1)
        .acquire_with()
        .ttl(ms(800))
        .auto_renew(false)
        .await
        .expect("permit");
    // A crash: no release is ever sent, nothing renews it.
    std::mem::forget(crashed);
    let sem = other.semaphore("sem:crash", 1);
    assert!(sem.try_acquire().await.expect("try").is_none());
    let started = Instant::now();
    let permit = sem
        .acquire_with()
        .retry(RetryStrategy::linear(ms(100), 100))
        .await
        .expect("the expired permit frees itself");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // The crashed token was pruned: only ours is left.
    assert_eq!(zcard(&raw, permit_set("sem:crash")).await, 1);
    drop(permit);
}

#[tokio::test]
async fn a_waiter_is_woken_by_a_release_not_by_polling() {
    let Fixture {
        server,
        raw: _raw,
        mutex,
    } = Fixture::start().await;
    let other = mutex_for(&server).await;
    let holder = mutex
        .semaphore("sem:wake", 1)
        .acquire()
        .await
        .expect("permit");
    // Polling every 10 s: only a release message can wake it within 5 s.
    let waiter = tokio::spawn(async move {
        let waited = Instant::now();
        let permit = other
            .semaphore("sem:wake", 1)
            .acquire_with()
            .retry(RetryStrategy::linear(Duration::from_secs(10), 3))
            .await;
        (permit, waited.elapsed())
    });
    tokio::time::sleep(ms(500)).await;
    let released = Instant::now();
    holder.release().await.expect("release");
    let (permit, _) = waiter.await.expect("waiter task");
    drop(permit.expect("woken waiter takes the permit"));
    assert!(
        released.elapsed() < Duration::from_secs(5),
        "woken only after {:?}",
        released.elapsed()
    );
}

#[tokio::test]
async fn permits_are_renewed_and_a_lost_permit_is_reported() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;
    let permit = mutex
        .semaphore("sem:renew", 1)
        .acquire_with()
        .ttl(ms(300))
        .await
        .expect("permit");
    tokio::time::sleep(ms(1200)).await;
    assert!(!permit.is_lost(), "renewal kept it");
    assert_eq!(zcard(&raw, permit_set("sem:renew")).await, 1);
    let _: i64 = raw
        .custom(fred::cmd!("DEL"), vec![permit_set("sem:renew")])
        .await
        .expect("DEL");
    let reason = tokio::time::timeout(Duration::from_secs(5), permit.lost())
        .await
        .expect("the loss is noticed");
    assert_eq!(reason, LostReason::Missing);
    assert!(matches!(permit.release().await, Err(Error::NotHeld { .. })));
}

#[tokio::test]
async fn a_cancelled_acquisition_leaves_no_permit_taken() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let other = mutex_for(&server).await;
    let holder = mutex
        .semaphore("sem:cancel", 1)
        .acquire()
        .await
        .expect("permit");
    for timeout in [ms(0), ms(5), ms(300)] {
        let waiting = other
            .semaphore("sem:cancel", 1)
            .acquire_with()
            .into_future();
        assert!(tokio::time::timeout(timeout, waiting).await.is_err());
    }
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(5);
    while zcard(&raw, permit_set("sem:cancel")).await != 0 {
        assert!(
            Instant::now() < deadline,
            "a cancelled acquisition kept a permit"
        );
        tokio::time::sleep(ms(20)).await;
    }
}

#[tokio::test]
async fn shutdown_waits_for_the_releases_of_dropped_permits() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;
    let permits: Vec<_> = take_permits(&mutex, 3).await;
    drop(permits);
    mutex.shutdown().await;
    assert_eq!(
        zcard(&raw, permit_set("sem:shutdown")).await,
        0,
        "released before shutdown returned"
    );
    let err = mutex
        .semaphore("sem:shutdown", 3)
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Shutdown { .. }), "{err}");
}

/// Takes all `n` permits of `sem:shutdown`.
async fn take_permits(mutex: &DistributedMutex, n: u32) -> Vec<distributed_mutex::Permit> {
    let sem = mutex.semaphore("sem:shutdown", n);
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(sem.acquire().await.expect("permit"));
    }
    out
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_sent() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;
    for permits in [0, MAX_PERMITS + 1, u32::MAX] {
        let err = mutex
            .semaphore("sem:bad", permits)
            .acquire()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{permits}: {err}");
    }
    let err = mutex.semaphore("", 1).try_acquire().await.unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    let err = mutex
        .semaphore("k".repeat(5000), 1)
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    let err = (mutex.semaphore("sem:bad", 1).acquire_with())
        .ttl(Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTtl { .. }), "{err}");
    let _: () = raw
        .custom(
            fred::cmd!("SET"),
            vec![permit_set("sem:wrongtype"), "x".into()],
        )
        .await
        .expect("SET");
    let err = mutex
        .semaphore("sem:wrongtype", 1)
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }), "{err}");
    assert_eq!(err.key(), Some("sem:wrongtype"));
}

// ---- the property test -------------------------------------------------------

/// What one task does, in turn.
#[derive(Debug, Clone)]
enum Op {
    /// Waits for a permit, holds it `hold` ms, then releases or drops it.
    Hold { hold: u64, release: bool },
    /// One attempt; holds `hold` ms if it got one.
    Try { hold: u64 },
    /// Waits for a permit but is cancelled after `after` ms.
    Cancel { after: u64 },
    /// Takes a permit with a 250 ms lease and no renewal, and holds it past
    /// its expiry (the holder stops when it learns of the loss).
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (10u64..120, any::<bool>()).prop_map(|(hold, release)| Op::Hold { hold, release }),
        2 => (0u64..80).prop_map(|hold| Op::Try { hold }),
        2 => (0u64..60).prop_map(|after| Op::Cancel { after }),
        1 => Just(Op::Expire),
    ]
}

/// The permits, and each task's operations (tasks alternate between the
/// two mutexes, as two processes).
fn case() -> impl Strategy<Value = (u32, Vec<Vec<Op>>)> {
    (
        1u32..=3,
        prop::collection::vec(prop::collection::vec(op(), 2..6), 3..6),
    )
}

/// The leases of the permits held now; every entry checks the bound.
#[derive(Default)]
struct Holders {
    leases: Mutex<Vec<(u64, Lease)>>,
    next: AtomicUsize,
    entered: AtomicUsize,
    max_seen: AtomicUsize,
}

impl Holders {
    /// Records an entry; panics if more than `permits` leases are valid.
    fn enter(&self, lease: Lease, permits: u32) -> u64 {
        let id = self.next.fetch_add(1, Ordering::SeqCst) as u64;
        let mut leases = self.leases.lock().unwrap();
        // A lease still valid here is still held in Redis.
        leases.retain(|(_, l)| !l.is_lost());
        leases.push((id, lease));
        let valid = leases.iter().filter(|(_, l)| !l.is_lost()).count();
        assert!(
            valid <= permits as usize,
            "{valid} holders of {permits} permits"
        );
        self.entered.fetch_add(1, Ordering::SeqCst);
        self.max_seen.fetch_max(valid, Ordering::SeqCst);
        id
    }

    fn leave(&self, id: u64) {
        self.leases.lock().unwrap().retain(|(i, _)| *i != id);
    }
}

async fn hold(
    holders: &Holders,
    permit: distributed_mutex::Permit,
    permits: u32,
    ms_: u64,
    release: bool,
) {
    let id = holders.enter(permit.lease(), permits);
    tokio::select! {
        _ = tokio::time::sleep(ms(ms_)) => {}
        _ = permit.lost() => {}
    }
    holders.leave(id);
    if release {
        let _ = permit.release().await;
    }
}

async fn run_task(
    mutex: DistributedMutex,
    name: String,
    permits: u32,
    ops: Vec<Op>,
    holders: Arc<Holders>,
) {
    let sem = mutex.semaphore(&name, permits);
    for op in ops {
        match op {
            Op::Hold { hold: h, release } => {
                let wait = sem.acquire_with().retry(RetryStrategy::linear(ms(20), 150));
                if let Ok(permit) = wait.await {
                    hold(&holders, permit, permits, h, release).await;
                }
            }
            Op::Try { hold: h } => {
                if let Ok(Some(permit)) = sem.try_acquire().await {
                    hold(&holders, permit, permits, h, true).await;
                }
            }
            Op::Cancel { after } => {
                let _ = tokio::time::timeout(ms(after), sem.acquire()).await;
            }
            Op::Expire => {
                let short = sem.acquire_with().ttl(ms(250)).auto_renew(false);
                if let Ok(permit) = short.retry(RetryStrategy::linear(ms(20), 150)).await {
                    hold(&holders, permit, permits, 600, false).await;
                }
            }
        }
    }
}

fn check_semaphore_cases(url: String, names: Vec<String>, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let holders = Arc::new(Holders::default());
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let round = AtomicUsize::new(0);
    let result = runner.run(&case(), |(permits, tasks)| {
        // A fresh semaphore per case: expired permits of the last one do not
        // matter, but its count must be this case's.
        let n = round.fetch_add(1, Ordering::SeqCst);
        // (Under the base name's hash tag: on a cluster, on its master.)
        let name = format!("{{{}}}:{n}", names[n % names.len()]);
        runtime.block_on(async {
            let a = distributed_mutex::DistributedMutex::connect(&url)
                .await
                .unwrap();
            let b = distributed_mutex::DistributedMutex::connect(&url)
                .await
                .unwrap();
            let mut joins = Vec::new();
            for (i, ops) in tasks.into_iter().enumerate() {
                let mutex = if i % 2 == 0 { a.clone() } else { b.clone() };
                let task = run_task(mutex, name.clone(), permits, ops, Arc::clone(&holders));
                joins.push(tokio::spawn(task));
            }
            for join in joins {
                join.await
                    .expect("a task panicked: more holders than permits");
            }
            a.shutdown().await;
            b.shutdown().await;
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let entered = holders.entered.load(Ordering::SeqCst);
    let max_seen = holders.max_seen.load(Ordering::SeqCst);
    eprintln!("{cases} cases: {entered} permits held, at most {max_seen} at once");
    assert!(
        entered >= cases as usize,
        "only {entered} permits were taken"
    );
    assert!(max_seen >= 2, "permits were never held concurrently");
}

/// Never more valid holders than permits, across two processes, with random
/// holds, drops, cancellations and expiries.
#[test]
fn random_holds_never_exceed_the_permits_across_two_processes() {
    let server = RedisServer::start();
    check_semaphore_cases(server.url(), vec!["prop:sem".to_owned()], 16);
}

// ---- cluster -----------------------------------------------------------------

/// On a 3-master cluster, semaphores served by every master: the count
/// holds, a waiter is woken, renewal works; and a property run over them.
#[test]
fn semaphores_work_on_every_master_of_a_cluster() {
    let cluster = RedisCluster::start();
    let names: Vec<String> = (0..MASTERS)
        .map(|i| cluster.key_on_master(i, "cluster:sem:"))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let a = DistributedMutex::connect(&cluster.url()).await.unwrap();
        let b = DistributedMutex::connect(&cluster.url()).await.unwrap();
        for name in &names {
            let first = a
                .semaphore(name, 2)
                .acquire_with()
                .ttl(ms(400))
                .await
                .expect("1st");
            let second = b.semaphore(name, 2).acquire().await.expect("2nd");
            assert!(a.semaphore(name, 2).try_acquire().await.unwrap().is_none());
            let b2 = b.clone();
            let name2 = name.clone();
            let waiter = tokio::spawn(async move {
                b2.semaphore(&name2, 2)
                    .acquire_with()
                    .retry(RetryStrategy::linear(Duration::from_secs(10), 3))
                    .await
            });
            tokio::time::sleep(ms(1000)).await;
            assert!(!first.is_lost(), "renewed past its 400 ms lease");
            second.release().await.expect("release");
            let third = tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("woken by the release")
                .unwrap()
                .expect("permit");
            drop((first, third));
        }
    });
    drop(runtime);
    check_semaphore_cases(cluster.url(), names, 6);
}
