//! The wait queue kept in Redis and direct handoff (see `src/queue.rs`):
//! waiters of several mutex instances ("processes") are served in the order
//! they queued; a waiter whose process was SIGKILLed is skipped at once, one
//! frozen or killed after the hand-off reached it costs the claim TTL plus
//! one poll; waiters that give up (cancelled, timed out) leave no entry
//! behind; and random handoffs, cancellations and killed processes never
//! let two holders in at once. On one server and on a cluster (keys on
//! every master).
//!
//! The queue of lock `K` (no key prefix here) is the list
//! `\xff{K}:queue:K`; tests read it with `LLEN`/`LRANGE`.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, Error, Lease, RetryStrategy, CLAIM_TTL};
use fred::prelude::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

use crate::support::cluster::{RedisCluster, MASTERS};
use crate::support::common::{builder_at, ms, mutex_via};
use crate::support::proxy::{Mode, Proxy};
use crate::support::queue::{process, queue_len, queue_reaches};
use crate::support::RedisServer;

fn slow_polls() -> RetryStrategy {
    RetryStrategy::linear(Duration::from_secs(10), 6)
}

/// Queues `sequence.len()` waiters on `key` behind a holder, waiter `i` on
/// instance `sequence[i]`, one after the other (each in the Redis queue
/// before the next starts), then releases: each waiter holds the lock 5 ms.
/// Returns the order in which they got it.
async fn serve_in_order(url: &str, raw: &Client, key: &str, sequence: &[usize]) -> Vec<usize> {
    let holder = process(url, RetryStrategy::none()).await;
    let mut instances = Vec::new();
    for _ in 0..=*sequence.iter().max().expect("waiters") {
        instances.push(process(url, slow_polls()).await);
    }
    let guard = holder.lock(key).await.expect("holder locks");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, &instance) in sequence.iter().enumerate() {
        let mutex = instances[instance].clone();
        let (order, owned) = (Arc::clone(&order), key.to_owned());
        tasks.push(tokio::spawn(async move {
            let guard = mutex.lock(&owned).await.expect("waiter gets the lock");
            order.lock().unwrap().push(i);
            tokio::time::sleep(ms(5)).await;
            guard.release().await.expect("waiter releases");
        }));
        queue_reaches(raw, "", key, i as i64 + 1, Duration::from_secs(5)).await;
    }
    guard.release().await.expect("holder releases");
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the queue drained within 10 s: hand-offs move it, not 10 s polls")
            .expect("waiter task");
    }
    queue_reaches(raw, "", key, 0, Duration::from_secs(2)).await;
    let exists: i64 = raw.exists(key).await.expect("EXISTS");
    assert_eq!(exists, 0, "{key} is still held after every waiter released");
    for mutex in instances.iter().chain([&holder]) {
        mutex.shutdown().await;
    }
    let order = order.lock().unwrap().clone();
    order
}

// ---- order -----------------------------------------------------------------

/// Twelve waiters queued one after the other over four instances, in a
/// mixed instance order, acquire in exactly the order they queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_waiters_of_four_instances_acquire_in_queue_order() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let sequence = [0, 1, 2, 3, 3, 2, 1, 0, 2, 0, 3, 1];
    let order = serve_in_order(&server.url(), &raw, "q:fifo", &sequence).await;
    assert_eq!(order, (0..sequence.len()).collect::<Vec<_>>());
}

/// The same on a cluster, with the lock on each master in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_queued_waiters_acquire_in_queue_order_on_every_master() {
    let cluster = RedisCluster::start();
    let raw = crate::support::raw_client(&cluster.url()).await;
    for master in 0..MASTERS {
        let key = cluster.keys_on_master(master, "q:fifo:", 1).remove(0);
        let sequence = [0, 1, 2, 1, 0, 2];
        let order = serve_in_order(&cluster.url(), &raw, &key, &sequence).await;
        assert_eq!(order, (0..sequence.len()).collect::<Vec<_>>(), "{key}");
    }
}

// ---- a process at the head dies --------------------------------------------

/// Not a test on its own: the child process of the SIGKILL tests, run by
/// them as `<this binary> --exact queue::child_waits_in_the_queue --ignored`
/// with the server's URL and the key in its environment. It queues one
/// waiter and waits; it never acquires while its parent holds the lock.
#[tokio::test]
#[ignore = "the child process of the queue tests; they run it"]
async fn child_waits_in_the_queue() {
    let url = std::env::var("DMUTEX_CHILD_URL").expect("run by the queue tests only");
    let key = std::env::var("DMUTEX_CHILD_KEY").expect("run by the queue tests only");
    let mutex = process(&url, slow_polls()).await;
    let guard = mutex.lock(&key).await;
    panic!("the child was not stopped in time: it got {guard:?}");
}

/// Starts [`child_waits_in_the_queue`] and waits until its waiter is the
/// only entry of the queue.
async fn child_at_the_head(url: &str, raw: &Client, key: &str) -> Child {
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "queue::child_waits_in_the_queue",
            "--ignored",
            "--test-threads=1",
        ])
        .env("DMUTEX_CHILD_URL", url)
        .env("DMUTEX_CHILD_KEY", key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the child process");
    queue_reaches(raw, "", key, 1, Duration::from_secs(20)).await;
    child
}

/// A waiter of this process queued behind the child's: returns its task,
/// which yields when it got the lock.
async fn waiter_behind(
    url: &str,
    raw: &Client,
    key: &str,
) -> tokio::task::JoinHandle<(Instant, distributed_mutex::LockGuard)> {
    let mutex = process(url, RetryStrategy::linear(ms(250), 200)).await;
    let key_owned = key.to_owned();
    let task = tokio::spawn(async move {
        let guard = mutex
            .lock(&key_owned)
            .await
            .expect("the waiter gets the lock");
        (Instant::now(), guard)
    });
    queue_reaches(raw, "", key, 2, Duration::from_secs(5)).await;
    task
}

/// SIGKILL of the process whose waiter is at the head of the queue: the
/// release skips it (its mutex no longer listens) and hands the lock to the
/// next waiter at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_process_at_the_head_is_skipped_at_once() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let key = "q:killed-head";
    let holder = process(&server.url(), RetryStrategy::none()).await;
    let guard = holder.lock(key).await.expect("holder locks");
    let mut child = child_at_the_head(&server.url(), &raw, key).await;
    let waiter = waiter_behind(&server.url(), &raw, key).await;

    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    let released = Instant::now();
    guard.release().await.expect("holder releases");
    let (acquired, got) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter behind the killed one got the lock within 10 s")
        .expect("waiter task");
    let stall = acquired.saturating_duration_since(released);
    eprintln!("SIGKILL before the release: the next waiter got the lock {stall:?} after it");
    assert!(
        stall < CLAIM_TTL,
        "the lock reached the next waiter {stall:?} after the release: the killed head was \
         not skipped"
    );
    got.release().await.expect("release");
    queue_reaches(&raw, "", key, 0, Duration::from_secs(2)).await;
}

/// The process at the head is frozen (SIGSTOP) when the lock is handed to
/// it, then SIGKILLed: the key stays claimed for it for the claim TTL (no
/// one else gets it meanwhile), then the next waiter's poll takes it: the
/// claim TTL plus one poll (250 ms here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_killed_after_the_handoff_costs_the_claim_ttl_plus_one_poll() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let key = "q:frozen-head";
    let holder = process(&server.url(), RetryStrategy::none()).await;
    let guard = holder.lock(key).await.expect("holder locks");
    let mut child = child_at_the_head(&server.url(), &raw, key).await;
    let waiter = waiter_behind(&server.url(), &raw, key).await;

    let stopped = Command::new("kill")
        .args(["-STOP", &child.id().to_string()])
        .status()
        .expect("kill -STOP");
    assert!(stopped.success(), "SIGSTOP the child");
    let released = Instant::now();
    guard.release().await.expect("holder releases");
    // Handed to the frozen child: the key holds its claim.
    queue_reaches(&raw, "", key, 1, Duration::from_secs(2)).await;
    let claim: i64 = raw.pttl(key).await.expect("PTTL");
    assert!(
        claim > 0 && claim <= CLAIM_TTL.as_millis() as i64,
        "after the hand-off the key's PTTL is {claim} ms, not the claim TTL"
    );
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");

    let (acquired, got) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter got the lock within 10 s")
        .expect("waiter task");
    let stall = acquired.saturating_duration_since(released);
    eprintln!(
        "head killed after the hand-off: the next waiter got the lock {stall:?} after the release"
    );
    assert!(
        stall >= CLAIM_TTL - ms(300),
        "the next waiter got the lock {stall:?} after the release, inside the claim TTL"
    );
    assert!(
        stall < CLAIM_TTL + ms(250) + Duration::from_secs(1),
        "the lock moved on {stall:?} after the release: more than the claim TTL plus one poll"
    );
    got.release().await.expect("release");
}

// ---- waiters that give up ----------------------------------------------------

/// Forty queued waiters of two instances that give up (20 cancelled by
/// dropping their future, 20 timing out) leave no entry in the queue; the
/// holder's release then deletes the key, as with no one waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_that_give_up_leave_no_queue_entries() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let key = "q:give-up";
    let holder = process(&server.url(), RetryStrategy::none()).await;
    let instances = [
        process(&server.url(), slow_polls()).await,
        process(&server.url(), slow_polls()).await,
    ];
    let guard = holder.lock(key).await.expect("holder locks");
    let mut cancelled = Vec::new();
    let mut timing_out = Vec::new();
    for i in 0..40 {
        let mutex = instances[i % 2].clone();
        if i % 4 < 2 {
            cancelled.push(tokio::spawn(async move { mutex.lock(key).await }));
        } else {
            timing_out.push(tokio::spawn(async move {
                mutex.acquire(key).timeout(ms(800)).await
            }));
        }
        queue_reaches(&raw, "", key, i as i64 + 1, Duration::from_secs(5)).await;
    }
    for task in &cancelled {
        task.abort();
    }
    for task in timing_out {
        let outcome = task.await.expect("waiter task");
        assert!(
            matches!(outcome, Err(Error::NotObtained { .. })),
            "expected NotObtained, got {outcome:?}"
        );
    }
    queue_reaches(&raw, "", key, 0, Duration::from_secs(5)).await;
    guard.release().await.expect("holder releases");
    let exists: i64 = raw.exists(key).await.expect("EXISTS");
    assert_eq!(exists, 0, "the release left the key: no one is queued");
}

/// A waiter cancelled just as the lock is handed to it passes the lock on.
/// Its process is behind a proxy that delays every byte by 300 ms, so the
/// hand-off message is still on its way when the waiter is cancelled: the
/// waiter never gets the lock, and its leave (through the same proxy)
/// hands the lock to the next waiter well before the claim TTL runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_cancelled_as_the_lock_reaches_it_passes_it_on() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let key = "q:cancel-at-handoff";
    let proxy = Proxy::start(server.port());
    let holder = process(&server.url(), RetryStrategy::none()).await;
    let slow = mutex_via(&proxy, |b| b.retry(slow_polls())).await;
    let next = process(&server.url(), slow_polls()).await;
    for round in 0..3 {
        proxy.set_mode(Mode::Pass);
        let guard = holder.lock(key).await.expect("holder locks");
        let first = {
            let slow = slow.clone();
            tokio::spawn(async move { slow.lock(key).await })
        };
        queue_reaches(&raw, "", key, 1, Duration::from_secs(5)).await;
        let second = {
            let next = next.clone();
            tokio::spawn(async move {
                let outcome = next.lock(key).await;
                (Instant::now(), outcome)
            })
        };
        queue_reaches(&raw, "", key, 2, Duration::from_secs(5)).await;

        proxy.set_mode(Mode::Latency(ms(300)));
        let released = Instant::now();
        guard.release().await.expect("holder releases");
        // Handed to the first waiter, whose message is still delayed.
        queue_reaches(&raw, "", key, 1, Duration::from_secs(1)).await;
        tokio::time::sleep(ms(50)).await;
        first.abort();
        let cancelled = first.await;
        assert!(
            matches!(&cancelled, Err(e) if e.is_cancelled()),
            "round {round}: the first waiter was not cancelled before its hand-off: {cancelled:?}"
        );
        let (acquired, outcome) = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second waiter got the lock: the cancelled one passed it on")
            .expect("task");
        let got = outcome.expect("second waiter locks");
        let took = acquired.saturating_duration_since(released);
        assert!(
            took < CLAIM_TTL,
            "round {round}: the second waiter got the lock {took:?} after the release: the \
             claim ran out instead of being passed on"
        );
        got.release().await.expect("release");
        queue_reaches(&raw, "", key, 0, Duration::from_secs(2)).await;
    }
}

// ---- mutual exclusion with handoffs, cancellations and killed processes -------

/// One step of a task in the property test below.
#[derive(Debug, Clone)]
enum Step {
    /// `lock`, abandoned after this many ms (a cancelled waiter), or kept.
    Lock {
        key: usize,
        cancel_after: Option<u64>,
        hold: u64,
    },
    Sleep(u64),
}

#[derive(Debug, Clone)]
struct Case {
    /// One sequence of steps per task; task `i` runs on process `i % 3`.
    tasks: Vec<Vec<Step>>,
    /// Process 2 is killed (its connections cut and black-holed, its tasks
    /// aborted) this many ms into the case, if set.
    kill_after: Option<u64>,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..2, prop::option::weighted(0.3, 0u64..30), 0u64..4)
            .prop_map(|(key, cancel_after, hold)| Step::Lock { key, cancel_after, hold }),
        1 => (0u64..6).prop_map(Step::Sleep),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(prop::collection::vec(step(), 6..=14), 6..=9),
        prop::option::weighted(0.7, 0u64..150),
    )
        .prop_map(|(tasks, kill_after)| Case { tasks, kill_after })
}

/// Who is inside the critical section of each key: a lease per holder. A
/// holder leaving (or its task aborted) takes its entry out on drop.
#[derive(Default)]
struct Occupancy {
    inside: Mutex<HashMap<usize, Vec<(usize, Lease)>>>,
    sections: AtomicUsize,
    next: AtomicUsize,
}

struct Inside<'a> {
    occupancy: &'a Occupancy,
    key: usize,
    id: usize,
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        let mut inside = self.occupancy.inside.lock().unwrap();
        if let Some(v) = inside.get_mut(&self.key) {
            v.retain(|(id, _)| *id != self.id);
        }
    }
}

impl Occupancy {
    /// Enters `key`'s section with `lease`: an error if another holder
    /// inside still has a lease it believes valid.
    fn enter(&self, key: usize, lease: Lease) -> Result<Inside<'_>, String> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let mut inside = self.inside.lock().unwrap();
        let holders = inside.entry(key).or_default();
        if let Some((_, other)) = holders
            .iter()
            .find(|(_, l)| !l.is_lost() && !l.remaining().is_zero())
        {
            return Err(format!(
                "key {key}: entered while another holder's lease is valid for {:?}",
                other.remaining()
            ));
        }
        holders.push((id, lease));
        self.sections.fetch_add(1, Ordering::Relaxed);
        Ok(Inside {
            occupancy: self,
            key,
            id,
        })
    }
}

async fn run_task(
    mutex: DistributedMutex,
    keys: Arc<Vec<String>>,
    steps: Vec<Step>,
    occupancy: Arc<Occupancy>,
) -> Result<(), String> {
    for step in steps {
        match step {
            Step::Sleep(n) => tokio::time::sleep(ms(n)).await,
            Step::Lock {
                key,
                cancel_after,
                hold,
            } => {
                let lock = mutex.lock(&keys[key]);
                let outcome = match cancel_after {
                    Some(n) => match tokio::time::timeout(ms(n), lock).await {
                        Ok(outcome) => outcome,
                        Err(_) => continue,
                    },
                    None => lock.await,
                };
                let guard = match outcome {
                    Ok(guard) => guard,
                    Err(Error::NotObtained { .. }) => continue,
                    Err(e) => return Err(format!("lock {}: {e}", keys[key])),
                };
                let inside = occupancy.enter(key, guard.lease())?;
                tokio::time::sleep(ms(hold)).await;
                drop(inside);
                if hold % 2 == 0 {
                    drop(guard);
                } else if let Err(e) = guard.release().await {
                    return Err(format!("release {}: {e}", keys[key]));
                }
            }
        }
    }
    Ok(())
}

async fn run_case(
    url: &str,
    upstream: u16,
    keys: &[String],
    case: Case,
) -> Result<usize, TestCaseError> {
    const TTL: Duration = Duration::from_millis(1500);
    let proxy = Proxy::start(upstream);
    let connect = |url: String| async move {
        builder_at(&url)
            .await
            .ttl(TTL)
            .retry(RetryStrategy::linear(ms(100), 40))
            .build()
            .expect("valid settings")
    };
    let processes = [
        connect(url.to_owned()).await,
        connect(url.to_owned()).await,
        mutex_via(&proxy, |b| {
            b.ttl(TTL).retry(RetryStrategy::linear(ms(100), 40))
        })
        .await,
    ];
    let keys = Arc::new(keys.to_vec());
    let occupancy = Arc::new(Occupancy::default());
    let mut tasks = Vec::new();
    for (i, steps) in case.tasks.into_iter().enumerate() {
        let task = tokio::spawn(run_task(
            processes[i % 3].clone(),
            Arc::clone(&keys),
            steps,
            Arc::clone(&occupancy),
        ));
        tasks.push((i % 3, task));
    }
    if let Some(after) = case.kill_after {
        tokio::time::sleep(ms(after)).await;
        proxy.set_mode(Mode::BlackHole);
        proxy.cut_all().await;
        for (p, task) in &tasks {
            if *p == 2 {
                task.abort();
            }
        }
    }
    let mut failures = Vec::new();
    for (p, task) in tasks {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) if p == 2 && case.kill_after.is_some() => {
                // The killed process's own calls fail: expected.
                let _ = e;
            }
            Ok(Ok(Err(e))) => failures.push(e),
            Ok(Err(e)) if e.is_cancelled() => {}
            Ok(Err(e)) => failures.push(format!("task panicked: {e}")),
            Err(_) => failures.push("a task did not finish within 30 s".to_owned()),
        }
    }
    prop_assert!(failures.is_empty(), "{failures:?}");
    for mutex in &processes[..2] {
        mutex.shutdown().await;
    }
    Ok(occupancy.sections.load(Ordering::Relaxed))
}

/// Random lock/hold/release/drop by 6–9 tasks over three processes and two
/// keys, with waiters cancelled at random moments and, in most cases, one
/// process killed at a random moment: a holder never enters while another
/// believes its lease valid, and once the survivors are done (and the
/// killed process's leases and queue entries ran out) no lock or queue key
/// is left.
#[test]
fn handoffs_cancellations_and_killed_processes_keep_mutual_exclusion() {
    let server = RedisServer::start();
    let keys = vec!["q:prop:0".to_owned(), "q:prop:1".to_owned()];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let raw = runtime.block_on(server.client());
    let sections = AtomicUsize::new(0);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 12,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&case(), |case| {
        runtime.block_on(async {
            let n = run_case(&server.url(), server.port(), &keys, case).await?;
            sections.fetch_add(n, Ordering::Relaxed);
            // The killed process's locks expire with their TTL, and a queue
            // entry it added after the last release with its queue's TTL
            // (10 s after its last join or poll, `QUEUE_TTL`): nothing else
            // removes a dead waiter's entry that no release passes.
            let deadline = Instant::now() + Duration::from_secs(12);
            loop {
                let mut left = Vec::new();
                for key in keys.iter() {
                    let held: i64 = raw.exists(key.as_str()).await.unwrap();
                    let queued = queue_len(&raw, "", key).await;
                    if held + queued > 0 {
                        left.push(format!("{key}: held {held}, queued {queued}"));
                    }
                }
                if left.is_empty() {
                    break;
                }
                prop_assert!(Instant::now() < deadline, "left behind: {left:?}");
                tokio::time::sleep(ms(50)).await;
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let sections = sections.load(Ordering::Relaxed);
    eprintln!("12 cases: {sections} critical sections");
    assert!(
        sections >= 60,
        "only {sections} critical sections were entered"
    );
}

// ---- names ---------------------------------------------------------------------

/// The scripts derive a waiter's handoff channel from the lock and queue
/// names (`common.lua`), the mutex subscribes to the one `keys.rs` names:
/// with key prefixes and keys of every hash-tag shape, a release still
/// reaches the waiter at once (its polls are 10 s apart and the holder's
/// lease is 60 s, so nothing else could hand it the lock in time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoffs_reach_the_waiter_whatever_the_prefix_and_key() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let cases = [
        ("app:", "plain"),
        ("{app}:", "x}y"),
        ("", "{tag}rest"),
        ("p}", "a{b}c"),
        ("pre:", "ключ"),
    ];
    for (prefix, key) in cases {
        let configure = |retry| {
            let url = server.url();
            async move {
                builder_at(&url)
                    .await
                    .key_prefix(prefix)
                    .ttl(Duration::from_secs(60))
                    .retry(retry)
                    .build()
                    .expect("valid settings")
            }
        };
        let holder = configure(RetryStrategy::none()).await;
        let waiter = configure(slow_polls()).await;
        let guard = holder.lock(key).await.expect("holder locks");
        let task = tokio::spawn(async move {
            let outcome = waiter.lock(key).await;
            (Instant::now(), outcome)
        });
        // Subscribed to its handoff channel, then queued.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let channels: Vec<String> = raw.pubsub_channels("*:handoff:*").await.unwrap();
            if !channels.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{prefix:?} {key:?}: never subscribed"
            );
            tokio::time::sleep(ms(5)).await;
        }
        tokio::time::sleep(ms(200)).await;
        assert!(!task.is_finished(), "{prefix:?} {key:?}: got a held lock");
        let released = Instant::now();
        guard.release().await.expect("holder releases");
        let (acquired, outcome) = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap_or_else(|_| panic!("{prefix:?} {key:?}: the hand-off never reached the waiter"))
            .expect("waiter task");
        let got = outcome.expect("the waiter gets the lock");
        let took = acquired.saturating_duration_since(released);
        assert!(
            took < ms(1000),
            "{prefix:?} {key:?}: the waiter got the lock {took:?} after the release"
        );
        got.release().await.expect("release");
        holder.shutdown().await;
    }
}

/// Waits until `server` (a replica) reports its link to its master up.
async fn replica_linked(server: &RedisServer, limit: Duration) {
    let deadline = Instant::now() + limit;
    while crate::support::common::info_field(server, "replication", "master_link_status") != "up" {
        assert!(
            Instant::now() < deadline,
            "the replica on port {} did not sync within {limit:?}",
            server.port()
        );
        tokio::time::sleep(ms(20)).await;
    }
}

/// The path a Sentinel failover opens, made deterministic: a waiter's
/// subscriber connection is left on a master that was demoted to a replica
/// of the new one, where its queue entry was replicated. A release on the
/// new master counts no subscriber of that waiter's handoff channel there,
/// moves past it and deletes the key; it must not publish the hand-off,
/// which replication would carry to the waiter, which would then hold a
/// lock the new master does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_left_on_a_demoted_master_never_hears_of_a_handoff_it_was_skipped_for() {
    let old = RedisServer::start();
    let new = RedisServer::start_with(&["--replicaof", "127.0.0.1", &old.port().to_string()]);
    replica_linked(&new, Duration::from_secs(10)).await;
    let (raw_old, raw_new) = (old.client().await, new.client().await);
    let key = "demoted-handoff";

    let holder = process(&old.url(), RetryStrategy::none()).await;
    let held = holder.lock(key).await.expect("free key");
    let token = held.token().to_owned();
    let waiter = process(&old.url(), slow_polls()).await;
    let waiting = tokio::spawn(async move { waiter.lock(key).await });
    queue_reaches(&raw_old, "", key, 1, Duration::from_secs(5)).await;
    queue_reaches(&raw_new, "", key, 1, Duration::from_secs(5)).await;

    // The switch: the replica becomes the master, the old master its replica.
    let _: Value = raw_new
        .custom(fred::cmd!("REPLICAOF"), vec!["NO", "ONE"])
        .await
        .expect("REPLICAOF NO ONE");
    let _: Value = raw_old
        .custom(
            fred::cmd!("REPLICAOF"),
            vec!["127.0.0.1".to_owned(), new.port().to_string()],
        )
        .await
        .expect("REPLICAOF");
    replica_linked(&old, Duration::from_secs(10)).await;

    // The holder's release runs on the new master (another process).
    let releaser = process(&new.url(), RetryStrategy::none()).await;
    releaser
        .release_token(key, &token)
        .await
        .expect("the holder's token is on the new master");
    let on_new: Option<String> = raw_new.get(key).await.expect("GET");
    assert_eq!(on_new, None, "no live waiter was counted on the new master");

    tokio::time::sleep(ms(800)).await;
    if waiting.is_finished() {
        // An error is right too: its polls reach a read-only replica now.
        if let Ok(guard) = waiting.await.expect("the waiter's task") {
            let on_new: Option<String> = raw_new.get(key).await.expect("GET");
            assert!(
                guard.is_lost() || on_new.as_deref() == Some(guard.token()),
                "the waiter holds a lock the new master does not have \
                 (remaining {:?}, key on the new master: {on_new:?})",
                guard.remaining()
            );
        }
    } else {
        waiting.abort();
    }
    drop(held);
}
