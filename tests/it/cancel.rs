//! Cancel safety: an acquisition dropped at any point (before its command is
//! sent, while it is in flight, while it waits out a backoff, right after it
//! succeeded) leaves no lock behind once the mutex has been shut down.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use distributed_mutex::RetryStrategy;
use fred::prelude::*;

use crate::support::common::{command_calls, info_field, ms, redis_keys, reset_stats, Fixture};
use crate::support::RedisServer;

/// The budget of iteration `i`: 0 to 2990 µs in steps of 10 µs.
fn budget(i: u64) -> Duration {
    Duration::from_micros(i * 10)
}

/// Polls `future` once (its first command goes out) and drops it.
fn cancel_after_first_poll<F: std::future::Future>(future: F) {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let _ = future.as_mut().poll(&mut cx);
}

/// How the acquisitions of one test ended (shared with `cluster::cancel`).
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    pub(crate) acquired: usize,
    pub(crate) failed: usize,
    pub(crate) cancelled: usize,
}

impl Outcomes {
    /// Runs the `i`-th acquisition under its budget; every tenth is dropped
    /// right after its first poll instead (its SET sent, no answer read), a
    /// cancellation the timer cannot miss on a fast machine.
    pub(crate) async fn run<T, E>(
        &mut self,
        i: u64,
        lock: impl std::future::Future<Output = Result<T, E>>,
    ) {
        if i % 10 == 5 {
            cancel_after_first_poll(lock);
            self.cancelled += 1;
        } else {
            self.record(tokio::time::timeout(budget(i), lock).await);
        }
    }

    fn record<T, E>(&mut self, result: Result<Result<T, E>, tokio::time::error::Elapsed>) {
        match result {
            Ok(Ok(_guard)) => self.acquired += 1, // dropped here: released
            Ok(Err(_)) => self.failed += 1,
            Err(_) => self.cancelled += 1,
        }
    }
}

#[tokio::test]
async fn acquisitions_cancelled_at_random_points_leave_no_lock_behind() {
    let Fixture {
        server,
        raw: _,
        mutex,
    } = Fixture::start().await;

    let mut outcomes = Outcomes::default();
    for i in 0..300u64 {
        outcomes.run(i, mutex.lock(format!("cancel:{i}"))).await;
    }
    mutex.shutdown().await;

    let left = redis_keys(&server, "*");
    assert!(
        left.is_empty(),
        "locks left behind: {left:?} ({outcomes:?})"
    );
    assert_eq!(outcomes.failed, 0, "{outcomes:?}");
    // Both ends of the range were exercised.
    assert!(outcomes.cancelled > 0, "{outcomes:?}");
    assert!(outcomes.acquired > 0, "{outcomes:?}");
    eprintln!(
        "distinct keys: {outcomes:?} del={}",
        command_calls(&server, "del")
    );
}

#[tokio::test]
async fn acquisitions_of_one_key_cancelled_at_random_points_leave_no_lock_behind() {
    let Fixture {
        server,
        raw: _,
        mutex,
    } = Fixture::start().await;

    let mut outcomes = Outcomes::default();
    for i in 0..300u64 {
        outcomes.run(i, mutex.lock("cancel:one")).await;
    }
    mutex.shutdown().await;

    let left = redis_keys(&server, "*");
    assert!(
        left.is_empty(),
        "locks left behind: {left:?} ({outcomes:?})"
    );
    assert_eq!(outcomes.failed, 0, "{outcomes:?}");
    assert!(outcomes.cancelled > 0, "{outcomes:?}");
    assert!(outcomes.acquired > 0, "{outcomes:?}");
    eprintln!(
        "one key: {outcomes:?} del={}",
        command_calls(&server, "del")
    );
}

/// Resolves after yielding to the scheduler `n` times.
async fn yields(n: u64) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn acquisitions_cancelled_after_n_scheduler_turns_leave_no_lock_behind() {
    // The timer has millisecond granularity, so microsecond budgets bunch up;
    // counting scheduler turns instead stops the acquisition at every step
    // of its way through fred (queued, written, answered, ...).
    let Fixture {
        server,
        raw: _,
        mutex,
    } = Fixture::start().await;

    let mut outcomes = Outcomes::default();
    for i in 0..300u64 {
        let key = format!("cancel:turns:{}", i % 7);
        let result = tokio::select! {
            biased;
            result = mutex.lock(key) => Ok(result),
            () = yields(i % 60) => Err(()),
        };
        match result {
            Ok(Ok(_guard)) => outcomes.acquired += 1,
            Ok(Err(_)) => outcomes.failed += 1,
            Err(()) => outcomes.cancelled += 1,
        }
    }
    mutex.shutdown().await;

    let left = redis_keys(&server, "*");
    assert!(
        left.is_empty(),
        "locks left behind: {left:?} ({outcomes:?})"
    );
    assert_eq!(outcomes.failed, 0, "{outcomes:?}");
    assert!(outcomes.cancelled > 0, "{outcomes:?}");
    assert!(outcomes.acquired > 0, "{outcomes:?}");
    // Some cancelled acquisitions had already set their lock (every lock
    // deletion is one DEL inside the release script): the release of a
    // cancelled acquisition is what removed those.
    let deletions = command_calls(&server, "del") as usize;
    assert!(
        deletions > outcomes.acquired,
        "no cancelled acquisition had set its lock: {outcomes:?}, {deletions} deletions"
    );
    eprintln!("scheduler turns: {outcomes:?}, {deletions} deletions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquisitions_under_contention_leave_no_lock_behind() {
    let server = RedisServer::start();
    // The waiter retries quickly, so cancellations also land in its backoff.
    let waiter = crate::support::common::builder_for(&server)
        .await
        .retry(RetryStrategy::linear(ms(1), 10_000))
        .build()
        .unwrap();
    let rival = crate::support::common::builder_for(&server)
        .await
        .retry(RetryStrategy::linear(ms(1), 10_000))
        .build()
        .unwrap();

    // The rival takes the key again and again, holding it for about 1 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let rival_rounds = Arc::new(AtomicUsize::new(0));
    let holder = tokio::spawn({
        let rival = rival.clone();
        let stop = stop.clone();
        let rounds = rival_rounds.clone();
        async move {
            while !stop.load(Ordering::SeqCst) {
                let guard = rival.lock("cancel:contended").await.unwrap();
                tokio::time::sleep(ms(1)).await;
                // Nobody else may have taken or deleted it meanwhile.
                guard.release().await.unwrap();
                rounds.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        }
    });

    let mut outcomes = Outcomes::default();
    for i in 0..300u64 {
        outcomes.run(i, waiter.lock("cancel:contended")).await;
    }
    stop.store(true, Ordering::SeqCst);
    holder
        .await
        .expect("the rival's lock was taken or released by someone else");
    waiter.shutdown().await;
    rival.shutdown().await;

    let left = redis_keys(&server, "*");
    assert!(
        left.is_empty(),
        "locks left behind: {left:?} ({outcomes:?})"
    );
    assert_eq!(outcomes.failed, 0, "{outcomes:?}");
    assert!(outcomes.cancelled > 0, "{outcomes:?}");
    assert!(rival_rounds.load(Ordering::SeqCst) > 0, "no contention");
    eprintln!(
        "contention: {outcomes:?}, rival rounds {}",
        rival_rounds.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn an_acquisition_dropped_while_the_server_is_paused_leaves_no_lock_after_resume() {
    let server = RedisServer::start();
    // A 10 s TTL is only the fallback: the release must remove the key, not expiry.
    let mutex = crate::support::common::builder_for(&server)
        .await
        .ttl(Duration::from_secs(10))
        .command_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Load the scripts, so that every command below is one EVALSHA.
    mutex
        .lock("warm-up")
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    reset_stats(&server);

    server.pause();
    for i in 0..5u64 {
        // In flight: the SET is written to the paused server, then dropped.
        let result = tokio::time::timeout(ms(20 + 10 * i), mutex.lock(format!("paused:{i}"))).await;
        assert!(
            result.is_err(),
            "lock {i} returned while paused: {result:?}"
        );
    }
    tokio::time::sleep(ms(100)).await;
    server.resume();
    let resumed = Instant::now();
    mutex.shutdown().await;
    let left = redis_keys(&server, "*");
    let after = resumed.elapsed();

    assert!(
        left.is_empty(),
        "locks left after resume + shutdown: {left:?}"
    );
    assert!(
        after < Duration::from_secs(5),
        "took {after:?}: removed by expiry rather than by the release?"
    );
    assert_eq!(
        info_field(&server, "stats", "expired_keys"),
        "0",
        "the locks expired instead of being released"
    );
    // Each acquisition's SET ran (a first attempt is a plain SET NX), then
    // the releases: the first alone, the ones queued behind it together
    // (group commit), so between 2 and 5 script calls.
    assert_eq!(command_calls(&server, "set"), 5);
    let releases = command_calls(&server, "evalsha");
    assert!((2..=5).contains(&releases), "{releases} release calls");
}

#[tokio::test]
async fn an_acquisition_dropped_while_the_server_is_paused_does_not_block_the_key() {
    // Same as above on one key, then the key must be lockable at once.
    let server = RedisServer::start();
    let raw = server.client().await;
    let mutex = crate::support::common::builder_for(&server)
        .await
        .ttl(Duration::from_secs(10))
        .command_timeout(Duration::from_secs(5))
        .retry(RetryStrategy::none())
        .build()
        .unwrap();
    mutex
        .lock("warm-up")
        .await
        .unwrap()
        .release()
        .await
        .unwrap();

    server.pause();
    let result = tokio::time::timeout(ms(50), mutex.lock("paused:one")).await;
    assert!(result.is_err(), "lock returned while paused: {result:?}");
    server.resume();

    // No retries: the release of the cancelled acquisition must have run
    // before this attempt, not stand in its way for the 10 s TTL.
    let guard = mutex.lock("paused:one").await.unwrap();
    let value: Option<String> = raw.get("paused:one").await.unwrap();
    assert_eq!(value.as_deref(), Some(guard.token()));
    drop(guard);
    mutex.shutdown().await;
    assert!(redis_keys(&server, "*").is_empty());
    assert_eq!(info_field(&server, "stats", "expired_keys"), "0");
}
