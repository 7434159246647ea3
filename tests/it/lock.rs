//! Core behaviour of `DistributedMutex` and `LockGuard` against a healthy,
//! real, private `redis-server` (see `tests/support`): acquire, release,
//! expiry, concurrency, extend, `remaining()`, drop on every runtime flavour,
//! shutdown, and the scripts. A killed, restarted or paused server is in
//! `faults`; invalid input and keys of another type are in `bad_input`.

use std::time::{Duration, Instant};

use distributed_mutex::{Error, LockGuard, RetryStrategy};
use fred::prelude::*;

use crate::support::common::{
    assert_uuid_v4, builder_for, gone_within, ms, mutex_for, raw_dbsize, raw_get, raw_pttl, Fixture,
};
use crate::support::RedisServer;

// ---- 1. double acquire --------------------------------------------------

#[tokio::test]
async fn try_lock_on_a_held_key_is_none_and_lock_gives_up_after_its_attempts() {
    let server = RedisServer::start();
    let mutex = mutex_for(&server).await;
    let _held = mutex.lock("double").await.unwrap();

    assert!(mutex.try_lock("double").await.unwrap().is_none());

    // A second client (own connection) sees it held too.
    let other = builder_for(&server)
        .await
        .retry(RetryStrategy::linear(ms(100), 3))
        .build()
        .unwrap();
    assert!(other.try_lock("double").await.unwrap().is_none());

    let started = Instant::now();
    let err = other.lock("double").await.unwrap_err();
    let elapsed = started.elapsed();
    match err {
        Error::NotObtained {
            ref key,
            attempts,
            waited,
        } => {
            assert_eq!(key, "double");
            // The strategy's budget is wall-clock (200 ms): on a loaded
            // machine a late wake-up can pass the deadline before the third
            // attempt, and the call then ends after one last attempt. (With
            // 20 ms waits, a first wake-up 20 ms late, seen with many tests
            // running, left the call at one attempt.)
            assert!((2..=3).contains(&attempts), "{attempts} attempts");
            assert!(waited >= ms(199), "two 100 ms waits, but waited {waited:?}");
            assert!(waited < Duration::from_secs(2), "waited {waited:?}");
        }
        other => panic!("expected NotObtained, got {other:?}"),
    }
    assert!(elapsed >= ms(199) && elapsed < Duration::from_secs(2));

    // The per-call retry overrides the mutex's.
    let err = mutex
        .acquire("double")
        .retry(RetryStrategy::linear(ms(100), 3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotObtained { attempts: 2..=3, waited, .. } if waited >= ms(199)),
        "{err:?}"
    );
}

// ---- 2. release then re-acquire -------------------------------------------

#[tokio::test]
async fn release_deletes_the_key_and_the_lock_can_be_taken_again_at_once() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;

    let guard = mutex.lock("relock").await.unwrap();
    assert_eq!(
        raw_get(&raw, "relock").await.as_deref(),
        Some(guard.token())
    );
    guard.release().await.unwrap();
    assert_eq!(
        raw_get(&raw, "relock").await,
        None,
        "key left after release"
    );

    let again = mutex.try_lock("relock").await.unwrap();
    let again = again.expect("lock free again after release");
    assert_eq!(
        raw_get(&raw, "relock").await.as_deref(),
        Some(again.token())
    );
    again.release().await.unwrap();
}

#[tokio::test]
async fn drop_then_relock_in_the_same_task_does_not_wait_for_the_backoff() {
    let server = RedisServer::start();
    let mutex = builder_for(&server)
        .await
        .retry(RetryStrategy::linear(Duration::from_secs(1), 2))
        .build()
        .unwrap();

    let mut guard = mutex.lock("drop-relock").await.unwrap();
    for round in 0..5 {
        let old_token = guard.token().to_owned();
        drop(guard);
        let started = Instant::now();
        guard = mutex.lock("drop-relock").await.unwrap();
        let took = started.elapsed();
        assert!(
            took < ms(900),
            "round {round}: relock after drop took {took:?} (waited for the 1 s backoff?)"
        );
        assert_ne!(guard.token(), old_token, "each acquisition has a new token");
    }
    guard.release().await.unwrap();
}

// ---- 3. what is stored in Redis -------------------------------------------

#[tokio::test]
async fn the_redis_value_is_the_token_and_pttl_is_within_the_ttl() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let mutex = builder_for(&server)
        .await
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();

    let guard = mutex.lock("stored").await.unwrap();
    assert_uuid_v4(guard.token());
    assert_eq!(guard.key(), "stored");
    assert_eq!(guard.ttl(), Duration::from_secs(10));
    assert_eq!(
        raw_get(&raw, "stored").await.as_deref(),
        Some(guard.token())
    );
    let pttl = raw_pttl(&raw, "stored").await;
    assert!(pttl > 0 && pttl <= 10_000, "PTTL {pttl}");
    // Nothing else was written.
    assert_eq!(raw_dbsize(&raw).await, 1);

    // Two acquisitions never share a token.
    let second = mutex.lock("stored-2").await.unwrap();
    assert_ne!(second.token(), guard.token());
    assert_eq!(
        raw_get(&raw, "stored-2").await.as_deref(),
        Some(second.token())
    );
}

#[tokio::test]
async fn a_key_prefix_applies_in_redis_but_not_to_guard_key() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let mutex = builder_for(&server)
        .await
        .key_prefix("locks:")
        .build()
        .unwrap();

    let guard = mutex.lock("tenant:42").await.unwrap();
    assert_eq!(guard.key(), "tenant:42");
    assert_eq!(
        raw_get(&raw, "locks:tenant:42").await.as_deref(),
        Some(guard.token())
    );
    assert_eq!(raw_get(&raw, "tenant:42").await, None);
    assert_eq!(raw_dbsize(&raw).await, 1);

    // The unprefixed key is a different lock: a client without the prefix
    // can take it; one with the prefix cannot take the prefixed one.
    let plain = mutex_for(&server).await;
    let unprefixed = plain.try_lock("tenant:42").await.unwrap();
    assert!(unprefixed.is_some());
    assert!(mutex.try_lock("tenant:42").await.unwrap().is_none());

    guard.release().await.unwrap();
    assert_eq!(raw_get(&raw, "locks:tenant:42").await, None);
}

// ---- 4. expiry lets a rival in ----------------------------------------------

#[tokio::test]
async fn an_expired_lock_lets_a_rival_in_after_its_ttl() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let holder = mutex_for(&server).await;
    let rival = mutex_for(&server).await; // default retry: linear(250 ms, 20)

    // The lease starts when Redis runs the holder's command, after this.
    let lease_from = Instant::now();
    let stale = holder
        .acquire("expiry")
        .ttl(ms(200))
        .auto_renew(false)
        .await
        .unwrap();
    let started = Instant::now();
    let fresh = rival.lock("expiry").await.unwrap();
    let took = started.elapsed();
    assert!(
        lease_from.elapsed() >= ms(200),
        "rival got the lock {:?} after the holder asked for a 200 ms lease",
        lease_from.elapsed()
    );
    assert!(
        took < Duration::from_secs(2),
        "rival got the lock after {took:?}; the holder's TTL was 200 ms"
    );
    assert_eq!(
        raw_get(&raw, "expiry").await.as_deref(),
        Some(fresh.token())
    );

    // The stale holder learns it lost the lock and touches nothing.
    assert_eq!(stale.remaining(), Duration::ZERO);
    assert!(matches!(
        stale.release().await,
        Err(Error::NotHeld { ref key, .. }) if key == "expiry"
    ));
    assert_eq!(
        raw_get(&raw, "expiry").await.as_deref(),
        Some(fresh.token())
    );
    fresh.release().await.unwrap();
}

#[tokio::test]
async fn a_waiter_never_sleeps_past_the_holders_pttl() {
    let server = RedisServer::start();
    let holder = mutex_for(&server).await;
    let waiter = builder_for(&server)
        .await
        .retry(RetryStrategy::linear(Duration::from_secs(5), 3))
        .build()
        .unwrap();

    // The lease starts when Redis runs the holder's command, after this.
    let lease_from = Instant::now();
    let _held = holder
        .acquire("pttl-rule")
        .ttl(ms(300))
        .auto_renew(false)
        .await
        .unwrap();
    let started = Instant::now();
    let guard = waiter.lock("pttl-rule").await.unwrap();
    let took = started.elapsed();
    assert!(
        lease_from.elapsed() >= ms(300),
        "waiter got the lock {:?} after the holder asked for a 300 ms lease, before it ended",
        lease_from.elapsed()
    );
    assert!(
        took < Duration::from_millis(2500),
        "waiter took {took:?}: it slept its 5 s backoff instead of the holder's PTTL"
    );
    guard.release().await.unwrap();
}

// ---- 5. concurrency ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_100_concurrent_try_locks_exactly_one_wins() {
    let server = RedisServer::start();
    let raw = server.client().await;
    // Four connections, 25 tasks each.
    let mut mutexes = Vec::new();
    for _ in 0..4 {
        mutexes.push(mutex_for(&server).await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let mutex = mutexes[i % 4].clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            mutex.try_lock("contended").await
        });
    }
    // Keep every guard alive until all tasks are done.
    let mut winners: Vec<LockGuard> = Vec::new();
    let mut losers = 0;
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task panicked") {
            Ok(Some(guard)) => winners.push(guard),
            Ok(None) => losers += 1,
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "errors: {errors:?}");
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(losers, 99);
    assert_eq!(
        raw_get(&raw, "contended").await.as_deref(),
        Some(winners[0].token())
    );
    winners.pop().unwrap().release().await.unwrap();
}

// ---- 6. losing the lock -----------------------------------------------------------

#[tokio::test]
async fn releasing_an_expired_lock_is_not_held_and_recreates_nothing() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;

    let guard = mutex
        .acquire("expired")
        .ttl(ms(100))
        .auto_renew(false)
        .await
        .unwrap();
    tokio::time::sleep(ms(250)).await;
    assert_eq!(raw_get(&raw, "expired").await, None);
    let err = guard.release().await.unwrap_err();
    assert!(
        matches!(err, Error::NotHeld { ref key, .. } if key == "expired"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(
        raw_dbsize(&raw).await,
        0,
        "release must not recreate the key"
    );
}

#[tokio::test]
async fn release_after_a_takeover_is_not_held_and_leaves_the_other_value() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;

    let guard = mutex.lock("taken-over").await.unwrap();
    let _: () = raw
        .set("taken-over", "someone-else", None, None, false)
        .await
        .unwrap();
    let err = guard.release().await.unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err:?}");
    assert_eq!(
        raw_get(&raw, "taken-over").await.as_deref(),
        Some("someone-else")
    );
}

#[tokio::test]
async fn dropping_a_taken_over_guard_leaves_the_other_value() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;

    let guard = mutex.lock("taken-over-drop").await.unwrap();
    let _: () = raw
        .set("taken-over-drop", "someone-else", None, None, false)
        .await
        .unwrap();
    // A guard of ours on another key, dropped at the same time, shows that
    // the drop releases did run by the time shutdown returns.
    let control = mutex.lock("control").await.unwrap();
    drop(guard);
    drop(control);
    mutex.shutdown().await;
    assert_eq!(
        raw_get(&raw, "control").await,
        None,
        "drop release did not run"
    );
    assert_eq!(
        raw_get(&raw, "taken-over-drop").await.as_deref(),
        Some("someone-else")
    );
}

// ---- 7. extend -----------------------------------------------------------------------

#[tokio::test]
async fn extend_before_expiry_prolongs_the_lease_in_redis_and_locally() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;

    let guard = mutex
        .acquire("extend")
        .ttl(Duration::from_secs(1))
        .await
        .unwrap();
    tokio::time::sleep(ms(200)).await;
    let pttl_before = raw_pttl(&raw, "extend").await;
    let remaining_before = guard.remaining();
    assert!(pttl_before > 0 && pttl_before <= 1000, "{pttl_before}");

    guard.extend(Duration::from_secs(5)).await.unwrap();
    let pttl_after = raw_pttl(&raw, "extend").await;
    assert!(
        pttl_after > pttl_before && pttl_after > 4000 && pttl_after <= 5000,
        "PTTL {pttl_before} -> {pttl_after}"
    );
    let remaining_after = guard.remaining();
    assert!(
        remaining_after > remaining_before
            && remaining_after > Duration::from_secs(4)
            && remaining_after <= Duration::from_secs(5),
        "remaining {remaining_before:?} -> {remaining_after:?}"
    );
    assert_eq!(guard.ttl(), Duration::from_secs(5));

    // Outlives the original 1 s lease.
    tokio::time::sleep(ms(1200)).await;
    assert_eq!(
        raw_get(&raw, "extend").await.as_deref(),
        Some(guard.token())
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn extend_after_expiry_is_not_held_and_remaining_becomes_zero() {
    let Fixture { server, raw, mutex } = Fixture::start().await;

    let guard = mutex
        .acquire("extend-late")
        .ttl(ms(100))
        .auto_renew(false)
        .await
        .unwrap();
    tokio::time::sleep(ms(250)).await;
    let err = guard.extend(Duration::from_secs(10)).await.unwrap_err();
    assert!(
        matches!(err, Error::NotHeld { ref key, .. } if key == "extend-late"),
        "{err:?}"
    );
    assert_eq!(guard.remaining(), Duration::ZERO);
    assert_eq!(
        raw_get(&raw, "extend-late").await,
        None,
        "extend recreated the key"
    );

    // Taken over by a rival meanwhile: the extend leaves the rival's lease alone.
    let guard = mutex
        .acquire("extend-rival")
        .ttl(ms(100))
        .auto_renew(false)
        .await
        .unwrap();
    tokio::time::sleep(ms(250)).await;
    let rival = mutex_for(&server).await;
    let rival_guard = rival
        .acquire("extend-rival")
        .ttl(Duration::from_secs(60))
        .await
        .unwrap();
    let err = guard.extend(ms(500)).await.unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err:?}");
    assert_eq!(guard.remaining(), Duration::ZERO);
    let pttl = raw_pttl(&raw, "extend-rival").await;
    assert!(pttl > 50_000, "rival's lease was changed: PTTL {pttl}");
    assert_eq!(
        raw_get(&raw, "extend-rival").await.as_deref(),
        Some(rival_guard.token())
    );
}

// ---- 8. remaining() ------------------------------------------------------------------------

#[tokio::test]
async fn remaining_is_conservative_and_reaches_zero() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;
    let ttl = ms(500);

    let guard = mutex
        .acquire("remaining")
        .ttl(ttl)
        .auto_renew(false)
        .await
        .unwrap();
    let remaining = guard.remaining();
    let asked = Instant::now();
    let pttl = raw_pttl(&raw, "remaining").await;
    let rtt = asked.elapsed();
    assert!(
        remaining > Duration::ZERO && remaining <= ttl,
        "{remaining:?}"
    );
    // Never more than what Redis still grants (PTTL was read after
    // `remaining`, at most `rtt` later; 2 ms for Redis's ms rounding).
    assert!(pttl > 0);
    assert!(
        remaining <= ms(pttl as u64) + rtt + ms(2),
        "remaining {remaining:?} overstates Redis's PTTL {pttl} ms (rtt {rtt:?})"
    );
    // It counts down.
    tokio::time::sleep(ms(100)).await;
    assert!(guard.remaining() < remaining);

    tokio::time::sleep(ttl).await;
    assert_eq!(guard.remaining(), Duration::ZERO);
}

// ---- 9. drop on every runtime flavour, shutdown ---------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn a_guard_dropped_in_a_current_thread_runtime_task_is_released() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;

    let guard = mutex.lock("drop-ct").await.unwrap();
    assert!(raw_get(&raw, "drop-ct").await.is_some());
    tokio::spawn(async move { drop(guard) }).await.unwrap();
    assert!(
        gone_within(&raw, "drop-ct", Duration::from_secs(2)).await,
        "lock still in Redis 2 s after its guard was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_dropped_in_a_multi_thread_runtime_is_released() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;

    let guard = mutex.lock("drop-mt").await.unwrap();
    assert!(raw_get(&raw, "drop-mt").await.is_some());
    tokio::spawn(async move { drop(guard) }).await.unwrap();
    assert!(
        gone_within(&raw, "drop-mt", Duration::from_secs(2)).await,
        "lock still in Redis 2 s after its guard was dropped"
    );

    // And dropped directly in the test's own task.
    let guard = mutex.lock("drop-mt-2").await.unwrap();
    drop(guard);
    assert!(gone_within(&raw, "drop-mt-2", Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "current_thread")]
async fn a_guard_dropped_on_a_plain_thread_outside_any_runtime_is_released() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;

    let guard = mutex.lock("drop-thread").await.unwrap();
    assert!(raw_get(&raw, "drop-thread").await.is_some());
    std::thread::spawn(move || {
        assert!(tokio::runtime::Handle::try_current().is_err());
        drop(guard);
    })
    .join()
    .expect("dropping a guard outside a runtime panicked");
    assert!(
        gone_within(&raw, "drop-thread", Duration::from_secs(2)).await,
        "lock still in Redis 2 s after its guard was dropped on a plain thread"
    );
}

#[tokio::test]
async fn shutdown_waits_for_queued_releases_then_refuses_new_locks() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;

    let mut guards = Vec::new();
    for i in 0..20 {
        guards.push(mutex.lock(format!("shutdown:{i}")).await.unwrap());
    }
    let survivor = mutex.lock("shutdown:survivor").await.unwrap();
    assert_eq!(raw_dbsize(&raw).await, 21);
    drop(guards);
    mutex.shutdown().await;
    // Right after shutdown returns: every dropped guard's release has run.
    assert_eq!(
        raw_dbsize(&raw).await,
        1,
        "releases still pending after shutdown"
    );

    let err = mutex.lock("shutdown:new").await.unwrap_err();
    assert!(
        matches!(err, Error::Shutdown { ref key } if key == "shutdown:new"),
        "{err:?}"
    );
    assert!(matches!(
        mutex.try_lock("shutdown:new").await,
        Err(Error::Shutdown { .. })
    ));
    // Clones share the shutdown.
    assert!(matches!(
        mutex.clone().lock("shutdown:clone").await,
        Err(Error::Shutdown { .. })
    ));
    assert_eq!(raw_get(&raw, "shutdown:new").await, None);

    // A guard alive across shutdown keeps working and is released on drop.
    survivor.extend(Duration::from_secs(30)).await.unwrap();
    drop(survivor);
    assert!(gone_within(&raw, "shutdown:survivor", Duration::from_secs(2)).await);
    mutex.shutdown().await; // idempotent
    assert_eq!(raw_dbsize(&raw).await, 0);
}

// ---- 10. scripts reload ------------------------------------------------------------------------

#[tokio::test]
async fn lock_and_release_keep_working_after_script_flush() {
    let Fixture { server, raw, mutex } = Fixture::start().await;

    let guard = mutex.lock("flush").await.unwrap();
    guard.extend(Duration::from_secs(30)).await.unwrap();
    guard.release().await.unwrap();

    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    let guard = mutex.lock("flush").await.unwrap();
    assert_eq!(raw_get(&raw, "flush").await.as_deref(), Some(guard.token()));
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    guard.extend(Duration::from_secs(30)).await.unwrap();
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    guard.release().await.unwrap();
    assert_eq!(raw_get(&raw, "flush").await, None);

    // The release worker (drop) reloads too.
    let guard = mutex.lock("flush").await.unwrap();
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    drop(guard);
    mutex.shutdown().await;
    assert_eq!(raw_get(&raw, "flush").await, None);
}

#[tokio::test]
async fn the_acquire_script_is_idempotent_for_its_own_token() {
    // fred re-sends in-flight commands after a reconnect; the acquire script
    // must then confirm (and refresh) the lock it already set.
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;
    let script = crate::support::common::ACQUIRE_LUA;

    let guard = mutex
        .acquire("idem")
        .ttl(Duration::from_secs(5))
        .await
        .unwrap();
    // Every reply ends with the call's token (see the script).
    let again: Vec<Value> = raw
        .eval(script, vec!["idem"], vec![guard.token(), "20000"])
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![Value::Integer(1), Value::from(guard.token())],
        "re-run with the holder's token must succeed"
    );
    let pttl = raw_pttl(&raw, "idem").await;
    assert!(
        pttl > 5_000 && pttl <= 20_000,
        "lease not refreshed: {pttl}"
    );
    assert_eq!(raw_get(&raw, "idem").await.as_deref(), Some(guard.token()));

    // Another token is refused with the holder's PTTL, and changes nothing.
    let other: Vec<Value> = raw
        .eval(script, vec!["idem"], vec!["not-the-token", "1000"])
        .await
        .unwrap();
    assert_eq!(other.len(), 3, "{other:?}");
    assert_eq!(other[0], Value::Integer(0));
    let pttl = other[1].as_i64().unwrap_or(-1);
    assert!(pttl > 5_000 && pttl <= 20_000, "{other:?}");
    assert_eq!(other[2], Value::from("not-the-token"), "{other:?}");
    assert_eq!(raw_get(&raw, "idem").await.as_deref(), Some(guard.token()));
    guard.release().await.unwrap();
}
