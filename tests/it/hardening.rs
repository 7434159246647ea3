//! The hardening review's defects, each as a behaviour against a real server:
//! runtimes that stop under a live mutex, the retry budget as a wall-clock
//! bound, extreme durations, errors after the client is closed, closing what
//! the mutex owns, and the futures' `Send + 'static` promise.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use crate::support::common::{builder_for, gone_within, ms, mutex_for, raw_get, raw_pttl};
use crate::support::RedisServer;
use distributed_mutex::{Builder, DistributedMutex, Error, RetryStrategy};
use fred::interfaces::ClientLike;
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Locks held on a runtime that is then dropped keep renewing, waiters are
/// woken by release messages, and guards dropped (before or after) are
/// released, all on the next runtime.
#[test]
fn a_mutex_outlives_the_runtime_it_started_on() {
    let server = RedisServer::start();
    let rt1 = runtime();
    let (a, b, held, queued_on_rt1) = rt1.block_on(async {
        let a = builder_for(&server)
            .await
            .ttl(ms(3000))
            .retry(RetryStrategy::linear(Duration::from_secs(10), 2))
            .build()
            .unwrap();
        let b = mutex_for(&server).await;
        // `a` runs all three background tasks here: renewer (a held lock),
        // subscriber (a wait on a busy key), release worker (a drop).
        let held = a.lock("rt:held").await.unwrap();
        let busy = b.lock("rt:busy").await.unwrap();
        let waited = a.acquire("rt:busy").timeout(ms(100)).await;
        assert!(
            matches!(waited, Err(Error::NotObtained { .. })),
            "{waited:?}"
        );
        drop(busy);
        let queued = a.lock("rt:queued").await.unwrap();
        (a, b, held, queued)
    });
    // Dropped with its release queued and the runtime stopping at once.
    drop(queued_on_rt1);
    drop(rt1);

    let rt2 = runtime();
    rt2.block_on(async {
        let raw = server.client().await;
        // Renewal goes on: more than a TTL later the lock is still held.
        tokio::select! {
            reason = held.lost() => panic!("lost on the second runtime: {reason}"),
            () = tokio::time::sleep(ms(4000)) => {}
        }
        assert!(!held.is_lost());
        assert_eq!(
            raw_get(&raw, "rt:held").await.as_deref(),
            Some(held.token())
        );
        assert!(raw_pttl(&raw, "rt:held").await > 0);
        // The release queued as the first runtime stopped has run.
        assert!(
            gone_within(&raw, "rt:queued", ms(2000)).await,
            "queued release lost"
        );

        // A waiter is woken by the release message: `b` holds for 30 s and
        // `a` polls every 10 s, so only the message can wake it in time.
        let busy = b
            .acquire("rt:busy")
            .ttl(Duration::from_secs(30))
            .await
            .unwrap();
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.lock("rt:busy").await })
        };
        tokio::time::sleep(ms(300)).await;
        let released = Instant::now();
        busy.release().await.unwrap();
        let got = tokio::time::timeout(ms(3000), waiter)
            .await
            .expect("the waiter was not woken by the release message")
            .unwrap()
            .unwrap();
        assert!(released.elapsed() < ms(3000));
        drop(got);

        // A drop on the second runtime is released.
        drop(held);
        assert!(
            gone_within(&raw, "rt:held", ms(2000)).await,
            "drop not released"
        );
        assert!(
            gone_within(&raw, "rt:busy", ms(2000)).await,
            "drop not released"
        );
    });
}

/// A waiter that keeps losing to a busy holder still returns within its
/// budget plus one command timeout: message wake-ups do not stretch it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_losing_every_handoff_returns_within_its_budget() {
    let server = RedisServer::start();
    let holder = mutex_for(&server).await;
    let waiter = builder_for(&server)
        .await
        .retry(RetryStrategy::linear(ms(50), 9))
        .command_timeout(ms(500))
        .build()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        tokio::spawn(async move {
            // Takes the key back the moment it is free, again and again.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(Some(guard)) = holder.try_lock("budget:churn").await {
                    tokio::time::sleep(ms(3)).await;
                    drop(guard);
                }
            }
        })
    };
    tokio::time::sleep(ms(50)).await;
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let outcome = waiter.lock("budget:churn").await;
        let took = started.elapsed();
        // Budget 8 × 50 ms = 400 ms; plus one command timeout at most.
        assert!(took < ms(400 + 500), "took {took:?}: {outcome:?}");
        outcomes.push(outcome.map(drop));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.await.unwrap();
    eprintln!("outcomes: {outcomes:?}");
}

/// A holder with a short TTL that renews does not make a waiter give up
/// early: the waiter tries every TTL, and waits its whole budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_renewed_holder_ttl_does_not_shorten_the_wait() {
    let server = RedisServer::start();
    // Renewed every ~83 ms, so Redis always shows 170-250 ms left.
    let holder = builder_for(&server).await.ttl(ms(250)).build().unwrap();
    let waiter = builder_for(&server)
        .await
        .notifications(false)
        .retry(RetryStrategy::linear(ms(500), 5))
        .build()
        .unwrap();
    let guard = holder.lock("budget:short-ttl").await.unwrap();
    let started = Instant::now();
    let outcome = waiter.lock("budget:short-ttl").await;
    let took = started.elapsed();
    match outcome {
        Err(Error::NotObtained { attempts, .. }) => {
            // Budget 4 × 500 ms: waits capped at the holder's TTL (at most
            // ~251 ms) make more than the strategy's 5 attempts.
            assert!(attempts > 5, "only {attempts} attempts");
        }
        other => panic!("expected NotObtained, got {other:?}"),
    }
    assert!(took >= ms(1980), "gave up after {took:?} of a 2 s budget");
    assert!(took < ms(2000 + 2000), "took {took:?}");
    assert!(!guard.is_lost());
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(ms(1)),
        (0u64..50).prop_map(ms),
        Just(Duration::from_secs(u64::MAX / 4)),
        Just(Duration::MAX),
    ]
}

fn attempts() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        1u32..5,
        Just(u32::MAX - 1),
        Just(u32::MAX)
    ]
}

fn retry() -> impl Strategy<Value = RetryStrategy> {
    prop_oneof![
        Just(RetryStrategy::none()),
        (duration(), attempts()).prop_map(|(d, n)| RetryStrategy::linear(d, n)),
        (duration(), duration(), attempts())
            .prop_map(|(a, b, n)| RetryStrategy::exponential(a, b, n)),
    ]
}

/// Extreme durations and attempt counts never panic: every call either
/// works, refuses with a typed error, or is still waiting (and is then
/// cancelled cleanly).
#[test]
fn extreme_durations_and_attempt_counts_never_panic() {
    let server = RedisServer::start();
    let rt = runtime();
    let (holder, raw) = rt.block_on(async { (mutex_for(&server).await, server.client().await) });
    let busy = rt.block_on(holder.lock("extreme:busy")).unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 48,
        failure_persistence: None,
        ..Default::default()
    });
    let strategy = (duration(), duration(), duration(), retry(), retry());
    let case = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(
            &strategy,
            |(ttl, timeout, command_timeout, mutex_retry, call_retry)| {
                let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let free = format!("extreme:free:{n}");
                rt.block_on(async {
                    let built = builder_for(&server)
                        .await
                        .ttl(ttl)
                        .retry(mutex_retry)
                        .command_timeout(command_timeout)
                        .build();
                    let mutex = match built {
                        Ok(mutex) => mutex,
                        Err(Error::InvalidTtl { .. } | Error::Config { .. }) => holder.clone(),
                        Err(other) => panic!("untyped refusal: {other:?}"),
                    };
                    for key in [free.as_str(), "extreme:busy"] {
                        let call = mutex
                            .acquire(key)
                            .ttl(ttl)
                            .timeout(timeout)
                            .retry(call_retry)
                            .into_future();
                        match tokio::time::timeout(ms(60), call).await {
                            Err(_still_waiting) => {}
                            Ok(Ok(guard)) => {
                                assert_eq!(key, free);
                                match guard.release().await {
                                    // A 1 ms lease may be gone already.
                                    Ok(()) | Err(Error::Timeout { .. } | Error::NotHeld { .. }) => {
                                    }
                                    Err(other) => panic!("release: {other:?}"),
                                }
                            }
                            // A command timeout of a few nanoseconds is accepted,
                            // and every command then times out: still typed.
                            Ok(Err(
                                Error::InvalidTtl { .. }
                                | Error::Config { .. }
                                | Error::NotObtained { .. }
                                | Error::Timeout { .. },
                            )) => {}
                            Ok(Err(other)) => panic!("{key}: unexpected {other:?}"),
                        }
                        let lease = std::cmp::min(ttl, Duration::from_secs(3600));
                        if let Ok(Some(guard)) = mutex.try_lock("extreme:extend").await {
                            let _ = guard.extend(ttl).await;
                            let _ = guard.extend(lease).await;
                        }
                    }
                });
                Ok(())
            },
        )
        .unwrap();
    drop(busy);
    rt.block_on(async {
        holder.shutdown().await;
        assert!(raw_get(&raw, "extreme:busy").await.is_none());
    });
}

/// After the mutex's client is closed, calls end at once with `Shutdown`
/// instead of retrying for the whole budget.
#[tokio::test]
async fn a_closed_client_ends_calls_with_shutdown_at_once() {
    let server = RedisServer::start();
    let mutex = mutex_for(&server).await;
    let guard = mutex.lock("closed:held").await.unwrap();
    drop(guard);
    mutex.shutdown().await;
    let started = Instant::now();
    let err = mutex.lock("closed:new").await.unwrap_err();
    assert!(matches!(err, Error::Shutdown { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(started.elapsed() < ms(100));

    let user = DistributedMutex::new(server.client().await);
    user.client().quit().await.unwrap();
    let started = Instant::now();
    let err = user.lock("closed:quit").await.unwrap_err();
    assert!(
        matches!(err, Error::Shutdown { .. }),
        "a quit client gives {err:?} after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

fn client_count(server: &RedisServer) -> usize {
    server.cli(&["CLIENT", "LIST"]).lines().count()
}

/// `shutdown` closes the connections the mutex made: 100 connect, lock and
/// shutdown cycles leave the server's client list where it started.
#[tokio::test]
async fn shutdown_closes_what_the_mutex_made() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let waiter_holder = mutex_for(&server).await;
    let before = client_count(&server);
    for i in 0..100 {
        let mutex = DistributedMutex::connect(&server.url()).await.unwrap();
        let guard = mutex.lock(format!("cycle:{i}")).await.unwrap();
        if i % 10 == 0 {
            // Make the subscriber connection too.
            let busy = waiter_holder.lock("cycle:busy").await.unwrap();
            let _ = mutex.acquire("cycle:busy").timeout(ms(20)).await;
            drop(busy);
        }
        drop(guard);
        mutex.shutdown().await;
    }
    let mut after = client_count(&server);
    for _ in 0..50 {
        if after <= before + 1 {
            break;
        }
        tokio::time::sleep(ms(20)).await;
        after = client_count(&server);
    }
    // `+ 1`: the holder's own subscriber, made by the first waiting cycle.
    assert!(
        after <= before + 1,
        "{before} clients before, {after} after"
    );
    assert!(gone_within(&raw, "cycle:99", ms(1000)).await);
}

/// Dropping the last handle of a mutex that made its client closes it too.
#[tokio::test]
async fn dropping_the_last_handle_closes_the_client_it_made() {
    let server = RedisServer::start();
    let before = client_count(&server);
    for i in 0..20 {
        let mutex = Builder::connect(&server.url())
            .await
            .unwrap()
            .build()
            .unwrap();
        drop(mutex.lock(format!("drop-cycle:{i}")).await.unwrap());
    }
    let mut after = client_count(&server);
    for _ in 0..100 {
        if after <= before {
            break;
        }
        tokio::time::sleep(ms(20)).await;
        after = client_count(&server);
    }
    assert!(after <= before, "{before} clients before, {after} after");
}

/// A fred command timeout and the crate's own are the same error, whichever
/// fires first: here the client's own (100 ms) is shorter than the mutex's.
#[tokio::test]
async fn a_paused_server_gives_timeout_never_unavailable() {
    use fred::prelude::{Builder as FredBuilder, Config, ReconnectPolicy};
    let server = RedisServer::start();
    let client = FredBuilder::from_config(Config::from_url(&server.url()).unwrap())
        .with_performance_config(|p| p.default_command_timeout = ms(100))
        .set_policy(ReconnectPolicy::new_constant(0, 100))
        .build()
        .unwrap();
    client.init().await.unwrap();
    let mutex = DistributedMutex::builder(client)
        .command_timeout(Duration::from_secs(2))
        .retry(RetryStrategy::none())
        .build()
        .unwrap();
    let guard = mutex.lock("paused:held").await.unwrap();
    server.pause();
    let lock = mutex.lock("paused:new").await;
    let extend = guard.extend(ms(60_000)).await;
    let release = guard.release().await;
    server.resume();
    for outcome in [lock.map(drop), extend, release] {
        assert!(
            matches!(outcome, Err(Error::Timeout { after, .. }) if after == ms(100)),
            "{outcome:?}"
        );
    }
}

fn send_static<T: Send + 'static>(_: &T) {}
fn send<T: Send>(_: &T) {}

/// The futures and guards the docs promise to be `Send + 'static` are.
#[tokio::test]
async fn futures_and_guards_are_send_and_static() {
    let server = RedisServer::start();
    let mutex = mutex_for(&server).await;
    send_static(&mutex);
    let acquire = mutex.acquire("send").into_future();
    send_static(&acquire);
    let guard = acquire.await.unwrap();
    send_static(&guard);
    send_static(&guard.lease());
    send(&guard.lost());
    send(&guard.extend(ms(1000)));
    send(&mutex.lock("other"));
    send(&mutex.try_lock("other"));
    send(&mutex.shutdown());
    send(&mutex.with_lock("other", |_| async {}));
    let release = guard.release();
    send_static(&release);
    release.await.unwrap();
}

/// The futures a caller awaits stay small whatever features are built in:
/// a client's command futures are tens of KB (more with TLS), and held
/// inline they made `lock` a 30 KB future, whose polls overflowed a 2 MiB
/// test thread's stack in a debug build with the `tls` feature (a
/// black-holed server's recovery, `faults::a_black_holed_...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_futures_callers_await_stay_small() {
    const LIMIT: usize = 4096;
    let server = RedisServer::start();
    let mutex = mutex_for(&server).await;
    let rw = mutex.rw("small:rw");
    let election = mutex.election("small:election");
    let sizes = [
        ("lock", std::mem::size_of_val(&mutex.lock("small:k"))),
        (
            "try_lock",
            std::mem::size_of_val(&mutex.try_lock("small:k")),
        ),
        (
            "acquire",
            std::mem::size_of_val(&mutex.acquire("small:k").into_future()),
        ),
        (
            "lock_all",
            std::mem::size_of_val(&mutex.lock_all(["small:a", "small:b"])),
        ),
        (
            "semaphore acquire",
            std::mem::size_of_val(&mutex.semaphore("small:s", 2).acquire().into_future()),
        ),
        ("read", std::mem::size_of_val(&rw.read().into_future())),
        ("write", std::mem::size_of_val(&rw.write().into_future())),
        ("campaign", std::mem::size_of_val(&election.campaign("v"))),
        ("leader", std::mem::size_of_val(&election.leader())),
        (
            "release_token",
            std::mem::size_of_val(&mutex.release_token("small:k", "t")),
        ),
    ];
    let large: Vec<_> = sizes.iter().filter(|(_, size)| *size > LIMIT).collect();
    assert!(large.is_empty(), "futures over {LIMIT} bytes: {large:?}");
    mutex.shutdown().await;
}
