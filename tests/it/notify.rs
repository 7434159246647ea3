//! Notification-based waiting against real, private `redis-server` processes
//! (see `tests/support`): release messages wake waiters at once, waits stay
//! bounded without messages, waiters of one process queue FIFO without
//! barging, and subscriptions last only while someone waits.
//!
//! Every test starts its own server. Holders whose lease must run out are
//! taken with `auto_renew(false)`. Time bounds are generous (the machine is
//! small and noisy); each test is built so that the behaviour it names being
//! broken moves the measured time far outside its bound.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, Error, RetryStrategy};
use fred::prelude::*;
use fred::types::client::{ClientKillFilter, ClientKillType};
use fred::types::Value;

use crate::support::common::{command_calls, ms};
use crate::support::RedisServer;

const KEY: &str = "notify:key";
/// The handoff channels of `KEY`, one per mutex with waiters:
/// `{notify:key}:handoff:<mutex id>:notify:key`.
const CHANNEL: &str = "{notify:key}:handoff:*:notify:key";

/// A mutex over its own connection (as a separate process would have),
/// made from `DistributedMutex::connect`'s client (reconnect policy and
/// timeouts), with notifications on or off and the given retry strategy.
async fn mutex(
    server: &RedisServer,
    notifications: bool,
    retry: RetryStrategy,
) -> DistributedMutex {
    let base = DistributedMutex::connect(&server.url())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", server.url()));
    DistributedMutex::builder(base.client().clone())
        .notifications(notifications)
        .retry(retry)
        .build()
        .expect("valid settings")
}

/// How many subscriptions there are to the channels matching `pattern`
/// (`PUBSUB CHANNELS`, then `PUBSUB NUMSUB` of each).
async fn numsub(client: &Client, pattern: &str) -> i64 {
    let channels: Vec<String> = client
        .pubsub_channels(pattern)
        .await
        .expect("PUBSUB CHANNELS");
    let mut total = 0;
    for channel in channels {
        let reply: Vec<Value> = client
            .pubsub_numsub(channel.as_str())
            .await
            .expect("PUBSUB NUMSUB");
        match reply.get(1) {
            Some(Value::Integer(n)) => total += *n,
            _ => panic!("unexpected PUBSUB NUMSUB reply {reply:?}"),
        }
    }
    total
}

/// Polls [`numsub`] until it equals `want`; `true` if it did within
/// `limit`.
async fn numsub_reaches(client: &Client, channel: &str, want: i64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if numsub(client, channel).await == want {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(ms(5)).await;
    }
}

/// The connections in pubsub mode (`CLIENT LIST TYPE pubsub`), one per line.
async fn pubsub_clients(client: &Client) -> Vec<String> {
    let list: String = client
        .client_list::<String, ()>(Some(ClientKillType::Pubsub), None)
        .await
        .expect("CLIENT LIST TYPE pubsub");
    list.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// A waiter on another connection blocked behind a holder; the holder
/// releases once the waiter is asleep in its wait. Returns the time from the
/// release call's completion to the waiter's acquisition.
///
/// The waiter's strategy is `linear(1 s, 10)` and the holder's lease 60 s,
/// so a waiter that only polls acquires at its next poll, about 1 s after its
/// first attempt (about 850 ms after the release).
async fn handoff_after_release(notifications: bool) -> Duration {
    let server = RedisServer::start();
    let raw = server.client().await;
    let holder = mutex(&server, true, RetryStrategy::none()).await;
    let waiter = mutex(&server, notifications, RetryStrategy::linear(ms(1000), 10)).await;

    let guard = holder.lock(KEY).await.expect("holder locks");
    let task = tokio::spawn(async move {
        let outcome = waiter.lock(KEY).await;
        (Instant::now(), outcome)
    });
    if notifications {
        assert!(
            numsub_reaches(&raw, CHANNEL, 1, Duration::from_secs(3)).await,
            "the waiter never subscribed to {CHANNEL}"
        );
    }
    // Let the waiter's first attempt (and, with notifications, its re-check
    // after subscribing) go by, so that it is asleep in its wait.
    tokio::time::sleep(ms(150)).await;
    assert!(!task.is_finished(), "the waiter got a lock that is held");
    guard.release().await.expect("holder releases");
    let released = Instant::now();
    let (acquired, outcome) = task.await.expect("waiter task");
    let guard = outcome.expect("the waiter gets the lock");
    let handoff = acquired.saturating_duration_since(released);
    eprintln!("notifications {notifications}: acquired {handoff:?} after the release");
    guard.release().await.expect("waiter releases");
    handoff
}

// ---- tests ----------------------------------------------------------------

/// A waiter blocked behind a holder acquires within a few milliseconds of
/// the release (asserted under 200 ms), where polling would take ~850 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_acquires_promptly_after_the_release() {
    let handoff = handoff_after_release(true).await;
    assert!(
        handoff < ms(200),
        "with notifications the waiter took {handoff:?} after the release \
         (polling alone would take ~850 ms)"
    );
}

/// The same handoff with `.notifications(false)` waits for the next poll:
/// about the backoff (1 s after the first attempt, ~850 ms after the
/// release). Shows the test above can tell the two apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notifications_a_waiter_acquires_at_its_next_poll() {
    let handoff = handoff_after_release(false).await;
    assert!(
        handoff >= ms(500) && handoff < ms(2500),
        "polling every 1 s, the waiter took {handoff:?} after the release (expected ~850 ms)"
    );
}

/// A holder that expires without releasing sends no message; the waiter
/// still acquires once the lease ends (its wait is capped by the holder's
/// PTTL), not at its next poll 5 s later, and never before the lease ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_acquires_once_an_unreleased_lease_expires() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let holder = mutex(&server, true, RetryStrategy::none()).await;
    let waiter = mutex(&server, true, RetryStrategy::linear(ms(5000), 5)).await;

    let taken = Instant::now();
    let guard = holder
        .acquire(KEY)
        .ttl(ms(600))
        .auto_renew(false)
        .await
        .expect("holder locks");
    let token = guard.token().to_owned();
    let publishes_before = command_calls(&server, "publish");

    let task = tokio::spawn(async move {
        let outcome = waiter.lock(KEY).await;
        (Instant::now(), outcome)
    });
    assert!(
        numsub_reaches(&raw, CHANNEL, 1, Duration::from_secs(3)).await,
        "the waiter never subscribed"
    );
    let (acquired, outcome) = task.await.expect("waiter task");
    let got = outcome.expect("the waiter gets the lock after the lease ends");
    let after = acquired - taken;
    eprintln!("acquired {after:?} after the 600 ms lease was taken");
    assert_ne!(got.token(), token);
    assert!(
        after >= ms(550),
        "acquired {after:?} after a 600 ms lease was taken: before it ended"
    );
    assert!(
        after < ms(2000),
        "acquired {after:?} after a 600 ms lease was taken (the next poll was 5 s away)"
    );
    assert_eq!(
        command_calls(&server, "publish"),
        publishes_before,
        "no release message was sent (the holder never released)"
    );
    // The holder finds its lock gone.
    assert!(matches!(guard.release().await, Err(Error::NotHeld { .. })));
    got.release().await.expect("waiter releases");
}

/// Killing the subscriber's connection (CLIENT KILL TYPE pubsub) while a
/// waiter waits still ends in acquisition within the holder's PTTL bound;
/// and afterwards (fred reconnects and resubscribes) a release message
/// again wakes a waiter at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_connection_still_acquires_within_the_pttl() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let holder = mutex(&server, true, RetryStrategy::none()).await;
    let waiter = mutex(&server, true, RetryStrategy::linear(ms(10_000), 5)).await;

    let taken = Instant::now();
    let guard = holder
        .acquire(KEY)
        .ttl(ms(1500))
        .auto_renew(false)
        .await
        .expect("holder locks");
    let first = waiter.clone();
    let task = tokio::spawn(async move {
        let outcome = first.lock(KEY).await;
        (Instant::now(), outcome)
    });
    assert!(
        numsub_reaches(&raw, CHANNEL, 1, Duration::from_secs(3)).await,
        "the waiter never subscribed"
    );
    let killed: i64 = raw
        .client_kill(vec![ClientKillFilter::Type(ClientKillType::Pubsub)])
        .await
        .expect("CLIENT KILL TYPE pubsub");
    assert!(killed >= 1, "no pubsub connection was killed");

    let (acquired, outcome) = task.await.expect("waiter task");
    let got = outcome.expect("the waiter gets the lock within the lease bound");
    let after = acquired - taken;
    eprintln!("acquired {after:?} after the 1.5 s lease was taken");
    assert!(
        after >= ms(1400) && after < ms(3500),
        "acquired {after:?} after a 1.5 s lease was taken (next poll was 10 s away)"
    );
    drop(guard);

    // The subscriber is back: a second waiter is woken by the release.
    let second = waiter.clone();
    let task = tokio::spawn(async move {
        let outcome = second.lock(KEY).await;
        (Instant::now(), outcome)
    });
    assert!(
        numsub_reaches(&raw, CHANNEL, 1, Duration::from_secs(5)).await,
        "no subscription to {CHANNEL} after the kill"
    );
    tokio::time::sleep(ms(150)).await;
    got.release().await.expect("first waiter releases");
    let released = Instant::now();
    let (acquired, outcome) = task.await.expect("second waiter task");
    let last = outcome.expect("second waiter gets the lock");
    let handoff = acquired.saturating_duration_since(released);
    eprintln!("handoff after the subscriber came back: {handoff:?}");
    assert!(
        handoff < ms(500),
        "after the subscriber came back, a waiter took {handoff:?} after the release"
    );
    last.release().await.expect("second waiter releases");
}

/// Five waiters queued in one process acquire in the order they queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_one_process_acquire_in_fifo_order() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let holder = mutex(&server, true, RetryStrategy::none()).await;
    // Polls 10 s apart: only release messages move the queue.
    let waiters = mutex(&server, true, RetryStrategy::linear(ms(10_000), 5)).await;

    let guard = holder.lock(KEY).await.expect("holder locks");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let waiters = waiters.clone();
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            let guard = waiters.lock(KEY).await.expect("waiter gets the lock");
            order.lock().unwrap().push(i);
            tokio::time::sleep(ms(20)).await;
            guard.release().await.expect("waiter releases");
        }));
        if i == 0 {
            assert!(
                numsub_reaches(&raw, CHANNEL, 1, Duration::from_secs(3)).await,
                "the first waiter never subscribed"
            );
        }
        // Queue one after the other.
        tokio::time::sleep(ms(100)).await;
    }
    guard.release().await.expect("holder releases");
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the queue drained within 5 s (release messages move it)")
            .expect("waiter task");
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
}

/// A holder that releases and at once locks the same key again through the
/// same mutex queues behind the waiter already queued in its process: the
/// waiter gets the lock first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_relock_does_not_barge_ahead_of_a_queued_waiter() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let mutex = mutex(&server, true, RetryStrategy::linear(ms(10_000), 5)).await;

    let guard = mutex.lock(KEY).await.expect("holder locks");
    let order = Arc::new(Mutex::new(Vec::new()));
    let waiter = {
        let mutex = mutex.clone();
        let order = Arc::clone(&order);
        tokio::spawn(async move {
            let guard = mutex.lock(KEY).await.expect("waiter gets the lock");
            order.lock().unwrap().push("waiter");
            tokio::time::sleep(ms(50)).await;
            guard.release().await.expect("waiter releases");
        })
    };
    assert!(
        numsub_reaches(&raw, CHANNEL, 1, Duration::from_secs(3)).await,
        "the waiter never subscribed"
    );
    tokio::time::sleep(ms(100)).await;

    guard.release().await.expect("holder releases");
    let again = tokio::time::timeout(Duration::from_secs(5), mutex.lock(KEY))
        .await
        .expect("the holder's second lock completes once the waiter releases")
        .expect("holder locks again");
    order.lock().unwrap().push("holder");
    // Released before waiting for the waiter, so that a barging holder
    // fails the assertion below instead of keeping the waiter out.
    again.release().await.expect("holder releases again");
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter got the lock within 5 s")
        .expect("waiter task");
    assert_eq!(*order.lock().unwrap(), vec!["waiter", "holder"]);
}

/// With notifications, a `lock` that never gets the lock still gives up
/// after the strategy's total (`linear(250 ms, 5)`: 4 waits, ~1 s) with
/// `NotObtained { attempts: 5 }`, and leaves no subscription behind. (The
/// budget is wall-clock, so the fifth attempt comes only if the first four
/// calls took under ~60 ms each on average: 250 ms, not 50 ms, keeps that
/// true on a busy machine, where 4 calls of 12.5 ms can cost the fifth.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_with_notifications_gives_up_after_the_strategy() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let holder = mutex(&server, true, RetryStrategy::none()).await;
    let waiter = mutex(&server, true, RetryStrategy::linear(ms(250), 5)).await;

    let guard = holder.lock(KEY).await.expect("holder locks");
    let started = Instant::now();
    let outcome = waiter.lock(KEY).await;
    let elapsed = started.elapsed();
    eprintln!("gave up after {elapsed:?}: {outcome:?}");
    match outcome {
        Err(Error::NotObtained { attempts, .. }) => assert_eq!(attempts, 5),
        other => panic!("expected NotObtained after 5 attempts, got {other:?}"),
    }
    assert!(
        elapsed >= ms(900) && elapsed < ms(2300),
        "gave up after {elapsed:?} (the strategy waits 4 x 250 ms)"
    );
    assert!(
        command_calls(&server, "subscribe") >= 1,
        "the waiter never subscribed: this test did not exercise notifications"
    );
    assert!(
        numsub_reaches(&raw, CHANNEL, 0, Duration::from_secs(2)).await,
        "a subscription outlived the waiter that gave up"
    );
    guard.release().await.expect("holder releases");
}

/// The subscription to a key's channel is dropped (PUBSUB NUMSUB back to 0)
/// once no one in the process waits for the key, after an acquisition as
/// well as after several waiters queued together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_count_returns_to_zero_when_no_one_waits() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let holder = mutex(&server, true, RetryStrategy::none()).await;
    let waiter = mutex(&server, true, RetryStrategy::linear(ms(1000), 10)).await;
    assert_eq!(numsub(&raw, CHANNEL).await, 0);

    // One waiter.
    let guard = holder.lock(KEY).await.expect("holder locks");
    let task = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.lock(KEY).await })
    };
    assert!(
        numsub_reaches(&raw, CHANNEL, 1, Duration::from_secs(3)).await,
        "the waiter never subscribed"
    );
    guard.release().await.expect("holder releases");
    let got = task.await.expect("task").expect("waiter gets the lock");
    assert!(
        numsub_reaches(&raw, CHANNEL, 0, Duration::from_secs(2)).await,
        "still subscribed after the only waiter acquired (NUMSUB {})",
        numsub(&raw, CHANNEL).await
    );

    // Three waiters on one mutex share one subscription, dropped after the
    // last one is done.
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let waiter = waiter.clone();
        tasks.push(tokio::spawn(async move {
            let guard = waiter.lock(KEY).await.expect("waiter gets the lock");
            guard.release().await.expect("waiter releases");
        }));
    }
    assert!(
        numsub_reaches(&raw, CHANNEL, 1, Duration::from_secs(3)).await,
        "the waiters never subscribed"
    );
    tokio::time::sleep(ms(100)).await;
    assert_eq!(numsub(&raw, CHANNEL).await, 1, "one subscription per mutex");
    got.release().await.expect("release");
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the waiters finished")
            .expect("waiter task");
    }
    assert!(
        numsub_reaches(&raw, CHANNEL, 0, Duration::from_secs(2)).await,
        "still subscribed after the last waiter (NUMSUB {})",
        numsub(&raw, CHANNEL).await
    );
}

/// `try_lock` on a busy key never subscribes: no SUBSCRIBE reaches Redis,
/// PUBSUB NUMSUB stays 0 and no connection is in pubsub mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_never_subscribes() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let holder = mutex(&server, true, RetryStrategy::none()).await;
    // Notifications on, and a strategy that would wait for `lock`.
    let other = mutex(&server, true, RetryStrategy::linear(ms(1000), 10)).await;

    let guard = holder.lock(KEY).await.expect("holder locks");
    for _ in 0..5 {
        let attempt = other.try_lock(KEY).await.expect("try_lock");
        assert!(attempt.is_none(), "try_lock got a held lock");
        assert_eq!(numsub(&raw, CHANNEL).await, 0);
    }
    tokio::time::sleep(ms(100)).await;
    assert_eq!(numsub(&raw, CHANNEL).await, 0);
    assert_eq!(command_calls(&server, "subscribe"), 0, "SUBSCRIBE was sent");
    assert_eq!(pubsub_clients(&raw).await, Vec::<String>::new());

    // Control: a waiting `lock` of the same mutex does subscribe.
    let task = {
        let other = other.clone();
        tokio::spawn(async move { other.lock(KEY).await })
    };
    assert!(
        numsub_reaches(&raw, CHANNEL, 1, Duration::from_secs(3)).await,
        "a waiting lock never subscribed (control)"
    );
    assert_eq!(pubsub_clients(&raw).await.len(), 1);
    guard.release().await.expect("holder releases");
    task.await
        .expect("task")
        .expect("waiter gets the lock")
        .release()
        .await
        .expect("release");
}
