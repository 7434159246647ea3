//! The read-write lock (`DistributedMutex::rw`) against real, private
//! `redis-server` processes: readers share and a writer is alone (a proptest
//! across two processes), a waiting writer stops new readers and its intent
//! goes when it gives up or expires when it dies, a writer gets in under
//! continuous readers, renewal and loss of both guards, and a cluster.
//!
//! Time bounds are generous (the machine is loaded).

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, Error, Lease, LostReason, RetryStrategy};
use fred::prelude::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use crate::support::cluster::{RedisCluster, MASTERS};
use crate::support::common::{ms, mutex_for, Fixture};
use crate::support::RedisServer;

/// One of the sorted sets of the read-write lock `name` (no prefix, a name
/// without braces): `\xff{name}:<what>:name`.
fn rw_set(what: &str, name: &str) -> fred::types::Key {
    let mut key = vec![0xFF];
    key.extend_from_slice(format!("{{{name}}}:{what}:{name}").as_bytes());
    fred::types::Key::from(key.into_boxed_slice())
}

async fn zcard(raw: &Client, key: fred::types::Key) -> i64 {
    raw.custom(fred::cmd!("ZCARD"), vec![key])
        .await
        .expect("ZCARD")
}

/// Polls until `ZCARD key == want`; panics after `limit`.
async fn zcard_reaches(raw: &Client, key: fred::types::Key, want: i64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while zcard(raw, key.clone()).await != want {
        assert!(
            Instant::now() < deadline,
            "{key:?} never had {want} members"
        );
        tokio::time::sleep(ms(20)).await;
    }
}

#[tokio::test]
async fn readers_share_and_a_writer_is_alone() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let other = mutex_for(&server).await;
    let (mine, theirs) = (mutex.rw("rw:basic"), other.rw("rw:basic"));
    let r1 = mine.read().await.expect("read");
    let r2 = theirs
        .try_read()
        .await
        .expect("try")
        .expect("a second reader");
    assert_eq!(zcard(&raw, rw_set("rw-readers", "rw:basic")).await, 2);
    assert!(
        theirs.try_write().await.expect("try").is_none(),
        "a writer among readers"
    );
    // A try leaves no intent: readers still enter.
    assert_eq!(zcard(&raw, rw_set("rw-intents", "rw:basic")).await, 0);
    let r3 = mine.try_read().await.expect("try").expect("a third reader");
    drop((r1, r3));
    r2.release().await.expect("release");
    let w = theirs
        .write_with()
        .retry(RetryStrategy::linear(ms(50), 100))
        .await
        .expect("write once readers left");
    assert!(
        mine.try_read().await.expect("try").is_none(),
        "a reader beside the writer"
    );
    assert!(
        mine.try_write().await.expect("try").is_none(),
        "two writers"
    );
    w.release().await.expect("release");
    let r = mine.read().await.expect("read after the writer");
    drop(r);
}

#[tokio::test]
async fn a_waiting_writer_stops_new_readers_and_gets_in_when_readers_leave() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let other = mutex_for(&server).await;
    let reader = mutex.rw("rw:prefer").read().await.expect("read");
    let writer = tokio::spawn(async move {
        let guard = other
            .rw("rw:prefer")
            .write_with()
            .retry(RetryStrategy::linear(Duration::from_secs(10), 3))
            .await;
        (guard, Instant::now())
    });
    zcard_reaches(
        &raw,
        rw_set("rw-intents", "rw:prefer"),
        1,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        mutex
            .rw("rw:prefer")
            .try_read()
            .await
            .expect("try")
            .is_none(),
        "a new reader entered past a waiting writer"
    );
    let released = Instant::now();
    reader.release().await.expect("release");
    let (guard, entered) = writer.await.expect("writer task");
    let guard = guard.expect("the writer gets in");
    assert!(entered.duration_since(released) < Duration::from_secs(5));
    assert_eq!(
        zcard(&raw, rw_set("rw-intents", "rw:prefer")).await,
        0,
        "intent withdrawn"
    );
    drop(guard);
}

#[tokio::test]
async fn a_writer_that_gives_up_or_is_cancelled_withdraws_its_intent() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let other = mutex_for(&server).await;
    let reader = mutex.rw("rw:giveup").read().await.expect("read");
    // Gives up after ~300 ms.
    let err = (other.rw("rw:giveup").write_with())
        .timeout(ms(300))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotObtained { .. }), "{err}");
    zcard_reaches(
        &raw,
        rw_set("rw-intents", "rw:giveup"),
        0,
        Duration::from_secs(5),
    )
    .await;
    assert!(mutex.rw("rw:giveup").try_read().await.unwrap().is_some());
    // Cancelled while waiting.
    let waiting = other.rw("rw:giveup").write_with().into_future();
    assert!(tokio::time::timeout(ms(300), waiting).await.is_err());
    zcard_reaches(
        &raw,
        rw_set("rw-intents", "rw:giveup"),
        0,
        Duration::from_secs(5),
    )
    .await;
    drop(reader);
}

#[tokio::test]
async fn a_dead_writers_intent_expires() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;
    // A writer that recorded its intent and died: an intent expiring in 1 s
    // (server time), never refreshed nor withdrawn.
    let (secs, micros): (String, String) = raw
        .custom(fred::cmd!("TIME"), Vec::<String>::new())
        .await
        .expect("TIME");
    let now_ms = secs.parse::<i64>().unwrap() * 1000 + micros.parse::<i64>().unwrap() / 1000;
    let _: i64 = raw
        .custom(
            fred::cmd!("ZADD"),
            vec![
                rw_set("rw-intents", "rw:dead").into(),
                (now_ms + 1000).into(),
                fred::types::Value::from("dead-writer"),
            ],
        )
        .await
        .expect("ZADD");
    let rw = mutex.rw("rw:dead");
    assert!(
        rw.try_read().await.expect("try").is_none(),
        "the intent stops readers"
    );
    let read = rw
        .read_with()
        .retry(RetryStrategy::linear(ms(100), 100))
        .await
        .expect("readers enter once the intent expired");
    assert_eq!(
        zcard(&raw, rw_set("rw-intents", "rw:dead")).await,
        0,
        "pruned"
    );
    drop(read);
}

#[tokio::test]
async fn a_writer_gets_in_under_continuous_readers() {
    let Fixture {
        server,
        raw: _raw,
        mutex,
    } = Fixture::start().await;
    let other = mutex_for(&server).await;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    // Four readers, each holding 150 ms and coming back at once, staggered:
    // without writer preference, some reader is always in.
    for i in 0..4u64 {
        let (mutex, stop, reads) = (mutex.clone(), Arc::clone(&stop), Arc::clone(&reads));
        readers.push(tokio::spawn(async move {
            tokio::time::sleep(ms(40 * i)).await;
            while !stop.load(Ordering::SeqCst) {
                let read = mutex
                    .rw("rw:stream")
                    .read_with()
                    .retry(RetryStrategy::linear(ms(20), 1000));
                if let Ok(guard) = read.await {
                    reads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(ms(150)).await;
                    drop(guard);
                }
            }
        }));
    }
    tokio::time::sleep(ms(500)).await;
    let before = reads.load(Ordering::SeqCst);
    assert!(before >= 4, "readers are running ({before})");
    let writer = other
        .rw("rw:stream")
        .write_with()
        .timeout(Duration::from_secs(8))
        .await
        .expect("the writer gets in within its budget");
    assert!(!writer.is_lost());
    writer.release().await.expect("release");
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.expect("reader task");
    }
    assert!(
        reads.load(Ordering::SeqCst) > before,
        "readers went on after the writer"
    );
}

#[tokio::test]
async fn both_guards_are_renewed_and_their_loss_is_reported() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;
    let read = mutex
        .rw("rw:renew-r")
        .read_with()
        .ttl(ms(300))
        .await
        .expect("read");
    let write = mutex
        .rw("rw:renew-w")
        .write_with()
        .ttl(ms(300))
        .await
        .expect("write");
    tokio::time::sleep(ms(1200)).await;
    assert!(!read.is_lost() && !write.is_lost(), "renewal kept both");
    for key in [
        rw_set("rw-readers", "rw:renew-r"),
        rw_set("rw-writer", "rw:renew-w"),
    ] {
        let _: i64 = raw.custom(fred::cmd!("DEL"), vec![key]).await.expect("DEL");
    }
    let limit = Duration::from_secs(5);
    assert_eq!(
        tokio::time::timeout(limit, read.lost()).await.unwrap(),
        LostReason::Missing
    );
    assert_eq!(
        tokio::time::timeout(limit, write.lost()).await.unwrap(),
        LostReason::Missing
    );
    assert!(matches!(write.release().await, Err(Error::NotHeld { .. })));
    // Without renewal, a guard is reported lost when its lease runs out.
    let short = mutex
        .rw("rw:short")
        .write_with()
        .ttl(ms(200))
        .auto_renew(false)
        .await
        .unwrap();
    let reason = tokio::time::timeout(limit, short.lost()).await.unwrap();
    assert_eq!(reason, LostReason::Expired);
    assert!(mutex
        .rw("rw:short")
        .read_with()
        .retry(RetryStrategy::linear(ms(50), 40))
        .await
        .is_ok());
}

// ---- the property test -------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Read {
        hold: u64,
    },
    Write {
        hold: u64,
    },
    TryRead {
        hold: u64,
    },
    TryWrite {
        hold: u64,
    },
    /// A write acquisition cancelled after `after` ms.
    CancelWrite {
        after: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (20u64..120).prop_map(|hold| Op::Read { hold }),
        2 => (5u64..60).prop_map(|hold| Op::Write { hold }),
        1 => (5u64..60).prop_map(|hold| Op::TryRead { hold }),
        1 => (5u64..40).prop_map(|hold| Op::TryWrite { hold }),
        1 => (0u64..80).prop_map(|after| Op::CancelWrite { after }),
    ]
}

/// The leases held now, readers' and writers'.
#[derive(Default)]
struct Holders {
    leases: Mutex<Vec<(u64, bool, Lease)>>,
    next: AtomicUsize,
    entered: AtomicUsize,
    writes: AtomicUsize,
    max_readers: AtomicUsize,
}

impl Holders {
    /// Records an entry; panics when a writer would overlap anyone.
    fn enter(&self, lease: Lease, writer: bool) -> u64 {
        let id = self.next.fetch_add(1, Ordering::SeqCst) as u64;
        let mut leases = self.leases.lock().unwrap();
        leases.retain(|(_, _, l)| !l.is_lost());
        let writers = leases.iter().filter(|(_, w, _)| *w).count();
        assert_eq!(
            writers, 0,
            "entered beside a writer (as a writer: {writer})"
        );
        assert!(
            !writer || leases.is_empty(),
            "a writer entered beside {} readers",
            leases.len()
        );
        leases.push((id, writer, lease));
        self.entered.fetch_add(1, Ordering::SeqCst);
        if writer {
            self.writes.fetch_add(1, Ordering::SeqCst);
        } else {
            self.max_readers.fetch_max(leases.len(), Ordering::SeqCst);
        }
        id
    }

    fn leave(&self, id: u64) {
        self.leases.lock().unwrap().retain(|(i, _, _)| *i != id);
    }
}

async fn hold(holders: &Holders, lease: Lease, writer: bool, hold_ms: u64) {
    let id = holders.enter(lease.clone(), writer);
    tokio::select! {
        _ = tokio::time::sleep(ms(hold_ms)) => {}
        _ = lease.lost() => {}
    }
    holders.leave(id);
}

async fn run_task(mutex: DistributedMutex, name: String, ops: Vec<Op>, holders: Arc<Holders>) {
    let rw = mutex.rw(&name);
    let patient = RetryStrategy::linear(ms(20), 200);
    for op in ops {
        match op {
            Op::Read { hold: h } => {
                if let Ok(g) = rw.read_with().retry(patient).await {
                    hold(&holders, g.lease(), false, h).await;
                    let _ = g.release().await;
                }
            }
            Op::Write { hold: h } => {
                if let Ok(g) = rw.write_with().retry(patient).await {
                    hold(&holders, g.lease(), true, h).await;
                    drop(g);
                }
            }
            Op::TryRead { hold: h } => {
                if let Ok(Some(g)) = rw.try_read().await {
                    hold(&holders, g.lease(), false, h).await;
                }
            }
            Op::TryWrite { hold: h } => {
                if let Ok(Some(g)) = rw.try_write().await {
                    hold(&holders, g.lease(), true, h).await;
                    let _ = g.release().await;
                }
            }
            Op::CancelWrite { after } => {
                let _ = tokio::time::timeout(ms(after), rw.write()).await;
            }
        }
    }
}

fn check_rw_cases(url: String, names: Vec<String>, cases: u32) {
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
    let tasks = prop::collection::vec(prop::collection::vec(op(), 2..7), 3..6);
    let result = runner.run(&tasks, |tasks| {
        let n = round.fetch_add(1, Ordering::SeqCst);
        let name = format!("{{{}}}:{n}", names[n % names.len()]);
        runtime.block_on(async {
            let a = DistributedMutex::connect(&url).await.unwrap();
            let b = DistributedMutex::connect(&url).await.unwrap();
            let mut joins = Vec::new();
            for (i, ops) in tasks.into_iter().enumerate() {
                let mutex = if i % 2 == 0 { a.clone() } else { b.clone() };
                joins.push(tokio::spawn(run_task(
                    mutex,
                    name.clone(),
                    ops,
                    Arc::clone(&holders),
                )));
            }
            for join in joins {
                join.await.expect("a task panicked: a writer overlapped");
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
    let writes = holders.writes.load(Ordering::SeqCst);
    let max_readers = holders.max_readers.load(Ordering::SeqCst);
    eprintln!(
        "{cases} cases: {entered} entries, {writes} writes, at most {max_readers} readers at once"
    );
    assert!(writes >= 1, "no writer ever got in");
    assert!(entered > writes, "no reader ever got in");
    assert!(max_readers >= 2, "readers never overlapped");
}

/// A writer never overlaps anyone and readers do overlap, across two
/// processes, with random reads, writes, tries and cancelled writers.
#[test]
fn random_readers_and_writers_keep_writers_alone_across_two_processes() {
    let server = RedisServer::start();
    check_rw_cases(server.url(), vec!["prop:rw".to_owned()], 16);
}

// ---- cluster -----------------------------------------------------------------

/// On a 3-master cluster, read-write locks served by every master: sharing,
/// exclusion, writer preference, renewal; and a property run over them.
#[test]
fn rwlocks_work_on_every_master_of_a_cluster() {
    let cluster = RedisCluster::start();
    let names: Vec<String> = (0..MASTERS)
        .map(|i| cluster.key_on_master(i, "cluster:rw:"))
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
            let r1 = a.rw(name).read_with().ttl(ms(400)).await.expect("read");
            let r2 = b.rw(name).read().await.expect("second reader");
            let b2 = b.clone();
            let name2 = name.clone();
            let writer = tokio::spawn(async move {
                b2.rw(&name2)
                    .write_with()
                    .retry(RetryStrategy::linear(Duration::from_secs(10), 3))
                    .await
            });
            tokio::time::sleep(ms(1000)).await;
            assert!(!r1.is_lost(), "renewed past its 400 ms lease");
            assert!(
                a.rw(name).try_read().await.unwrap().is_none(),
                "writer preferred"
            );
            drop(r1);
            r2.release().await.expect("release");
            let w = tokio::time::timeout(Duration::from_secs(5), writer)
                .await
                .expect("the writer is woken")
                .unwrap()
                .expect("write guard");
            assert!(a.rw(name).try_read().await.unwrap().is_none());
            drop(w);
        }
    });
    drop(runtime);
    check_rw_cases(cluster.url(), names, 6);
}
