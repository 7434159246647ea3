//! Automatic lease renewal, loss detection, `with_lock` and fencing tokens,
//! against real, private `redis-server` processes (see `tests/support`).
//! Losses through a restarted or paused server are in `faults`; fencing
//! with keys holding braces is in `bad_input`.
//!
//! Timing bounds are generous on purpose (a noisy 2-core machine): each one
//! is far above what a correct implementation needs and far below what a
//! broken one (no renewal, no loss detection) would show.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use distributed_mutex::{Error, LostReason, RetryStrategy};
use fred::prelude::*;

use crate::support::common::{
    builder_for, command_calls, fence_key, gone_within, ms, mutex_for, raw_dbsize, raw_get,
    raw_get_bytes, raw_pttl, SetOnDrop,
};
use crate::support::RedisServer;

// ---- renewal keeps a short lease alive ----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500ms_lease_held_for_2s_keeps_its_token_and_excludes_a_rival() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let ttl = ms(500);
    let mutex = builder_for(&server).await.ttl(ttl).build().unwrap();
    let rival = mutex_for(&server).await;
    let key = "renewed";

    let guard = mutex.lock(key).await.unwrap();
    assert_eq!(guard.ttl(), ttl);
    assert!(rival.try_lock(key).await.unwrap().is_none());
    let calls_before = command_calls(&server, "evalsha");

    let started = Instant::now();
    let mut samples = 0u32;
    let mut rival_attempts = 0u32;
    while started.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            raw_get(&raw, key).await.as_deref(),
            Some(guard.token()),
            "token in Redis changed or vanished after {:?}",
            started.elapsed()
        );
        let pttl = raw_pttl(&raw, key).await;
        assert!(
            pttl > 0 && pttl <= 500,
            "PTTL {pttl} after {:?}",
            started.elapsed()
        );
        assert!(!guard.is_lost(), "lost after {:?}", started.elapsed());
        let remaining = guard.remaining();
        assert!(
            !remaining.is_zero() && remaining <= ttl,
            "remaining {remaining:?} after {:?}",
            started.elapsed()
        );
        if samples % 4 == 0 {
            rival_attempts += 1;
            assert!(
                rival.try_lock(key).await.unwrap().is_none(),
                "rival got the lock after {:?}",
                started.elapsed()
            );
        }
        samples += 1;
        tokio::time::sleep(ms(25)).await;
    }
    let held_for = started.elapsed();
    // Four TTLs passed: the key survived only because it was renewed. The
    // renewals are batched per period (a third of the TTL), not a busy loop.
    let renewals = command_calls(&server, "evalsha") - calls_before - u64::from(rival_attempts);
    assert!(
        (4..=40).contains(&renewals),
        "{renewals} renewals in {held_for:?} with a {ttl:?} lease (period ~167 ms)"
    );
    assert!(samples >= 20, "only {samples} samples");

    drop(guard);
    mutex.shutdown().await;
    assert_eq!(raw_get(&raw, key).await, None, "key left after drop");
    assert!(rival.try_lock(key).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_never_exceeds_the_ttl_nor_what_redis_has_left() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let ttl = ms(400);
    let mutex = builder_for(&server).await.ttl(ttl).build().unwrap();
    let key = "remaining";

    let guard = mutex.lock(key).await.unwrap();
    let check = |phase: &str, ttl: Duration, remaining: Duration, pttl: i64, gap: Duration| {
        assert!(
            !remaining.is_zero() && remaining <= ttl,
            "{phase}: remaining {remaining:?} with ttl {ttl:?}"
        );
        // Redis counts the lease from when it got the command, the guard from
        // when it was sent, less a drift: the guard never claims more time
        // than Redis has left (PTTL read `gap` later, truncated to whole ms).
        let pttl = Duration::from_millis(u64::try_from(pttl).expect("key alive"));
        assert!(
            remaining <= pttl + gap + ms(1),
            "{phase}: remaining {remaining:?} > PTTL {pttl:?} (+{gap:?})"
        );
    };
    let started = Instant::now();
    while started.elapsed() < ms(1200) {
        let t = Instant::now();
        let remaining = guard.remaining();
        let pttl = raw_pttl(&raw, key).await;
        check("renewed", ttl, remaining, pttl, t.elapsed());
        tokio::time::sleep(ms(7)).await;
    }

    // After an extension to a longer lease, the bound is the new TTL.
    let longer = Duration::from_secs(2);
    guard.extend(longer).await.unwrap();
    assert_eq!(guard.ttl(), longer);
    let started = Instant::now();
    while started.elapsed() < ms(800) {
        let t = Instant::now();
        let remaining = guard.remaining();
        let pttl = raw_pttl(&raw, key).await;
        check("extended", longer, remaining, pttl, t.elapsed());
        tokio::time::sleep(ms(7)).await;
    }
    guard.release().await.unwrap();
}

// ---- loss behind a live guard ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_key_fires_lost_missing_within_two_periods_and_release_is_not_held() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let ttl = ms(1500);
    let period = ttl / 3;
    let mutex = builder_for(&server).await.ttl(ttl).build().unwrap();
    let key = "deleted";

    let guard = mutex.lock(key).await.unwrap();
    // Let one renewal happen first, so the deletion lands mid-cycle.
    tokio::time::sleep(ms(700)).await;
    assert!(!guard.is_lost());

    let lease = guard.lease();
    let watcher = tokio::spawn(async move {
        let reason = lease.lost().await;
        (reason, Instant::now())
    });
    let deleted: i64 = raw.del(key).await.unwrap();
    let deleted_at = Instant::now();
    assert_eq!(deleted, 1);

    let (reason, fired_at) = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("lost() did not fire within 5 s of the DEL")
        .unwrap();
    let took = fired_at.saturating_duration_since(deleted_at);
    println!(
        "DEL -> lost() took {} ms (TTL {} ms, renewal period {} ms)",
        took.as_millis(),
        ttl.as_millis(),
        period.as_millis()
    );
    assert_eq!(reason, LostReason::Missing);
    assert!(
        took <= 2 * period,
        "lost() fired {took:?} after the DEL; two renewal periods are {:?}",
        2 * period
    );
    assert!(guard.is_lost());
    assert_eq!(guard.remaining(), Duration::ZERO);
    let again = tokio::time::timeout(ms(100), guard.lost()).await;
    assert_eq!(again, Ok(LostReason::Missing), "the reason sticks");

    let err = guard.release().await.unwrap_err();
    assert!(
        matches!(&err, Error::NotHeld { key: k, .. } if k == key),
        "{err:?}"
    );
    assert_eq!(
        raw_get(&raw, key).await,
        None,
        "nothing brought the key back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwriting_the_key_fires_lost_replaced_and_leaves_the_other_value() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let ttl = ms(1500);
    let period = ttl / 3;
    let mutex = builder_for(&server).await.ttl(ttl).build().unwrap();
    let key = "overwritten";

    let guard = mutex.lock(key).await.unwrap();
    let lease = guard.lease();
    let watcher = tokio::spawn(async move {
        let reason = lease.lost().await;
        (reason, Instant::now())
    });
    let _: () = raw
        .set(key, "intruder", Some(Expiration::PX(10_000)), None, false)
        .await
        .unwrap();
    let set_at = Instant::now();

    let (reason, fired_at) = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("lost() did not fire within 5 s of the overwrite")
        .unwrap();
    let took = fired_at.saturating_duration_since(set_at);
    println!("SET -> lost() took {} ms", took.as_millis());
    assert_eq!(reason, LostReason::Replaced);
    assert!(took <= 2 * period, "lost() fired {took:?} after the SET");
    assert!(guard.is_lost());

    let err = guard.release().await.unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err:?}");
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some("intruder"));
    let pttl = raw_pttl(&raw, key).await;
    assert!(pttl > 8_000, "the other value's expiry was touched: {pttl}");
}

// ---- renewal off ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_renew_a_300ms_lease_is_lost_expired_and_a_rival_gets_it() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let ttl = ms(300);
    let off = builder_for(&server)
        .await
        .ttl(ttl)
        .auto_renew(false)
        .build()
        .unwrap();
    // The default (renewal on), turned off for one acquisition.
    let on = builder_for(&server).await.ttl(ttl).build().unwrap();
    let rival = builder_for(&server)
        .await
        .retry(RetryStrategy::linear(ms(10), 300))
        .build()
        .unwrap();

    let started = Instant::now();
    let by_builder = off.lock("off:builder").await.unwrap();
    let by_acquire = on.acquire("off:acquire").auto_renew(false).await.unwrap();
    let renewed = on.lock("on").await.unwrap();
    let read_at = Instant::now();
    let left = by_builder.remaining();
    assert!(!left.is_zero() && left <= ttl, "{left:?}");

    let mut first_fired_at = None;
    for guard in [&by_builder, &by_acquire] {
        let reason = tokio::time::timeout(Duration::from_secs(3), guard.lost())
            .await
            .unwrap_or_else(|_| panic!("{}: lost() never fired", guard.key()));
        let fired_at = Instant::now();
        first_fired_at.get_or_insert(fired_at);
        assert_eq!(reason, LostReason::Expired, "{}", guard.key());
        assert!(
            fired_at - started <= ttl + ms(500),
            "{}: lost() fired {:?} after the lock call",
            guard.key(),
            fired_at - started
        );
        assert!(guard.is_lost());
        assert_eq!(guard.remaining(), Duration::ZERO, "{}", guard.key());
    }
    // Not before the lease it reported had passed.
    let fired_at = first_fired_at.unwrap();
    assert!(
        fired_at + ms(2) >= read_at + left,
        "lost() fired {:?} before remaining() said it would",
        (read_at + left) - fired_at
    );

    // Nothing renews them in Redis either: the rival gets both keys.
    let mut theirs_held = Vec::new();
    for guard in [&by_builder, &by_acquire] {
        let theirs = rival
            .acquire(guard.key())
            .timeout(Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("{}: rival did not get the lock: {e}", guard.key()));
        assert_eq!(
            raw_get(&raw, guard.key()).await.as_deref(),
            Some(theirs.token())
        );
        theirs_held.push(theirs); // held for the release check below
    }
    for guard in [by_builder, by_acquire] {
        let key = guard.key().to_owned();
        let theirs = raw_get(&raw, &key).await;
        let err = guard.release().await.unwrap_err();
        assert!(matches!(err, Error::NotHeld { .. }), "{key}: {err:?}");
        assert_eq!(
            raw_get(&raw, &key).await,
            theirs,
            "{key}: rival's lock touched"
        );
    }

    // Meanwhile the renewed lock with the same lease is still held.
    assert!(started.elapsed() > ttl);
    assert!(!renewed.is_lost());
    assert_eq!(raw_get(&raw, "on").await.as_deref(), Some(renewed.token()));
    renewed.release().await.unwrap();
    for theirs in theirs_held {
        theirs.release().await.unwrap();
    }
}

// ---- with_lock ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_returns_the_works_output_and_releases_the_key() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let ttl = ms(300);
    let mutex = builder_for(&server).await.ttl(ttl).build().unwrap();
    let key = "with-lock";

    let raw2 = raw.clone();
    let output = mutex
        .with_lock(key, |lease| async move {
            assert_eq!(lease.key(), key);
            assert_eq!(lease.fencing_token(), None);
            // Work longer than the lease: it is renewed meanwhile.
            for _ in 0..8 {
                tokio::time::sleep(ms(100)).await;
                assert!(!lease.is_lost());
                assert!(lease.remaining() <= ttl);
                assert_eq!(raw_get(&raw2, key).await.as_deref(), Some(lease.token()));
            }
            format!("done by {}", lease.token())
        })
        .await
        .unwrap();
    assert!(output.starts_with("done by "), "{output}");
    // Released before with_lock returned: no shutdown or polling needed.
    assert_eq!(raw_get(&raw, key).await, None);
    assert!(mutex.try_lock(key).await.unwrap().is_some());
}

/// `with_lock` reports how the lock was lost: a key another client wrote
/// over while the work ran is `Replaced`, not `Missing`.
#[tokio::test]
async fn with_lock_reports_a_key_written_over_as_replaced() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let mutex = builder_for(&server).await.ttl(ms(30_000)).build().unwrap();
    let key = "with-lock-replaced";
    let other = raw.clone();
    let err = mutex
        .with_lock(key, |_| async move {
            let _: () = other
                .set(key, "someone-else", None, None, false)
                .await
                .unwrap();
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Lost {
                reason: LostReason::Replaced,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some("someone-else"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_cancels_the_work_when_the_lock_is_lost() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let mutex = builder_for(&server).await.ttl(ms(900)).build().unwrap();
    let key = "with-lock-lost";

    let dropped = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let ticks = Arc::new(AtomicU64::new(0));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let task = {
        let (dropped, finished, ticks) = (dropped.clone(), finished.clone(), ticks.clone());
        let mutex = mutex.clone();
        tokio::spawn(async move {
            mutex
                .with_lock(key, move |lease| async move {
                    let _flag = SetOnDrop(dropped);
                    let _ = started_tx.send(lease.token().to_owned());
                    for _ in 0..100 {
                        tokio::time::sleep(ms(50)).await;
                        ticks.fetch_add(1, Ordering::SeqCst);
                    }
                    finished.store(true, Ordering::SeqCst);
                    "finished"
                })
                .await
        })
    };
    let token = started_rx.await.expect("work started");
    assert_eq!(raw_get(&raw, key).await, Some(token));
    tokio::time::sleep(ms(200)).await;
    let deleted: i64 = raw.del(key).await.unwrap();
    assert_eq!(deleted, 1);
    let deleted_at = Instant::now();

    let result = tokio::time::timeout(Duration::from_secs(4), task)
        .await
        .expect("with_lock still running 4 s after the lock was lost")
        .unwrap();
    let took = deleted_at.elapsed();
    match result {
        Err(Error::Lost { key: k, reason }) => {
            assert_eq!(k, key);
            assert_eq!(reason, LostReason::Missing);
        }
        other => panic!("expected Error::Lost, got {other:?}"),
    }
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the work future was not dropped"
    );
    assert!(!finished.load(Ordering::SeqCst), "the work ran to its end");
    let seen = ticks.load(Ordering::SeqCst);
    assert!(seen < 100);
    tokio::time::sleep(ms(300)).await;
    assert_eq!(ticks.load(Ordering::SeqCst), seen, "the work kept running");
    assert_eq!(raw_get(&raw, key).await, None);
}

// ---- fencing ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_strictly_increase_over_1000_acquisitions_by_two_mutexes() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let key = "fenced";
    const PER_MUTEX: u64 = 500;

    let order: Arc<std::sync::Mutex<Vec<(u64, char)>>> = Arc::default();
    let mut tasks = Vec::new();
    for who in ['A', 'B'] {
        let mutex = builder_for(&server)
            .await
            .fencing()
            .retry(RetryStrategy::linear(ms(2), 20_000))
            .build()
            .unwrap();
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            let mut expired = 0;
            for i in 0..PER_MUTEX {
                // Every 100th lease runs out without a release.
                let expire = i % 100 == 50;
                let guard = if expire {
                    mutex
                        .acquire(key)
                        .ttl(ms(150))
                        .auto_renew(false)
                        .await
                        .unwrap()
                } else {
                    mutex.lock(key).await.unwrap()
                };
                let token = guard.fencing_token().expect("fencing is on");
                order.lock().unwrap().push((token, who));
                // Recorded while held, so `order` is the order of holders.
                assert!(!guard.is_lost(), "{who}: lost before recording {token}");
                if expire {
                    let reason = tokio::time::timeout(Duration::from_secs(3), guard.lost())
                        .await
                        .expect("lost() did not fire for an expired lease");
                    assert_eq!(reason, LostReason::Expired);
                    expired += 1;
                    drop(guard); // its release is a no-op by now
                } else {
                    guard.release().await.unwrap();
                }
                tokio::time::sleep(ms(1)).await;
            }
            mutex.shutdown().await;
            expired
        }));
    }
    let mut expired = 0;
    for task in tasks {
        expired += task.await.unwrap();
    }
    assert_eq!(expired, 10);

    let order = order.lock().unwrap().clone();
    assert_eq!(order.len(), 2 * PER_MUTEX as usize);
    for pair in order.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "fencing token did not increase: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    // One draw per acquisition, from a counter that is never reset.
    assert_eq!(order.first().unwrap().0, 1);
    assert_eq!(order.last().unwrap().0, 2 * PER_MUTEX);
    let counter = raw_get_bytes(&raw, &fence_key("", "fenced")).await;
    assert_eq!(counter.as_deref(), Some("1000"));
    // Both mutexes took turns, including right after one another.
    let switches = order.windows(2).filter(|p| p[0].1 != p[1].1).count();
    assert!(switches >= 10, "only {switches} hand-overs between A and B");
    assert_eq!(raw_get(&raw, key).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_over_try_lock_and_across_an_expired_lease() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let a = builder_for(&server).await.fencing().build().unwrap();
    // Fencing asked for per acquisition, on a mutex without it.
    let b = mutex_for(&server).await;
    let key = "fenced-try";

    let first = a.try_lock(key).await.unwrap().expect("free");
    let t1 = first.fencing_token().expect("fencing on the builder");
    assert!(b.try_lock(key).await.unwrap().is_none());
    first.release().await.unwrap();

    let second = b
        .acquire(key)
        .fencing()
        .retry(RetryStrategy::none())
        .await
        .unwrap();
    let t2 = second.fencing_token().expect("fencing on the acquisition");
    assert!(t2 > t1, "{t2} after {t1}");
    second.release().await.unwrap();

    // A lease that runs out without a release.
    let stale = a
        .acquire(key)
        .ttl(ms(300))
        .auto_renew(false)
        .retry(RetryStrategy::none())
        .await
        .unwrap();
    let t3 = stale.fencing_token().unwrap();
    assert!(t3 > t2, "{t3} after {t2}");
    let reason = tokio::time::timeout(Duration::from_secs(3), stale.lost())
        .await
        .expect("lost() did not fire for an expired lease");
    assert_eq!(reason, LostReason::Expired);
    assert!(gone_within(&raw, key, Duration::from_secs(2)).await);

    // The key has expired in Redis: one attempt gets it.
    let after = b
        .acquire(key)
        .fencing()
        .retry(RetryStrategy::none())
        .await
        .unwrap();
    let t4 = after.fencing_token().unwrap();
    assert!(t4 > t3, "{t4} after the expired {t3}");
    // The stale holder's release leaves the new holder alone.
    let err = stale.release().await.unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err:?}");
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(after.token()));
    after.release().await.unwrap();

    let last = a.try_lock(key).await.unwrap().expect("free");
    assert!(last.fencing_token().unwrap() > t4);
    // Without fencing, no token (and no counter drawn).
    last.release().await.unwrap();
    let plain = b.try_lock(key).await.unwrap().expect("free");
    assert_eq!(plain.fencing_token(), None);
    let counter = raw_get_bytes(&raw, &fence_key("", "fenced-try")).await;
    assert_eq!(counter, Some((t4 + 1).to_string()));
    plain.release().await.unwrap();
}

// ---- renewal racing release -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_racing_a_release_never_leaves_the_key_alive() {
    let server = RedisServer::start();
    let raw = server.client().await;
    // Short leases, so renewals (every 100 ms, 200 keys) are in flight
    // nearly all the time while the guards are released or dropped.
    let ttl = ms(300);
    const KEYS: u64 = 200;

    for round in 0..3u64 {
        let mutex = builder_for(&server).await.ttl(ttl).build().unwrap();
        let mut tasks = Vec::new();
        for i in 0..KEYS {
            let mutex = mutex.clone();
            let raw = raw.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("race:{round}:{i}");
                let guard = mutex.lock(&key).await.unwrap();
                // A spread of hold times across several renewal periods.
                let hold = (i * 7_919 + round * 104_729) % 700;
                tokio::time::sleep(ms(hold)).await;
                assert!(!guard.is_lost(), "{key} lost while held");
                if i % 2 == 0 {
                    guard.release().await.unwrap();
                    // Its Redis expiry was at least 200 ms away: only the
                    // release can have removed it.
                    assert_eq!(raw_get(&raw, &key).await, None, "{key} alive after release");
                } else {
                    drop(guard);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        mutex.shutdown().await;
        // Every drop's release has run by now; nothing is alive.
        assert_eq!(raw_dbsize(&raw).await, 0, "round {round}: keys left");
    }

    // Late renewal replies cannot bring a key back, and nothing is renewed
    // any more once every guard is gone.
    tokio::time::sleep(ms(150)).await;
    let calls = command_calls(&server, "evalsha");
    tokio::time::sleep(ms(500)).await;
    assert_eq!(raw_dbsize(&raw).await, 0);
    assert_eq!(
        command_calls(&server, "evalsha"),
        calls,
        "renewals after every guard was gone"
    );
}

// ---- extend reschedules renewal --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_to_a_shorter_ttl_keeps_the_lock_renewed() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let mutex = builder_for(&server)
        .await
        .ttl(Duration::from_secs(3))
        .build()
        .unwrap();
    let guard = mutex.lock("shorter").await.unwrap();
    guard.extend(ms(300)).await.unwrap();
    assert_eq!(guard.ttl(), ms(300));
    // The next renewal was scheduled a third of 3 s after the acquisition.
    tokio::time::sleep(ms(1500)).await;
    assert!(!guard.is_lost(), "lost: {:?}", guard.lost().await);
    assert_eq!(
        raw_get(&raw, "shorter").await.as_deref(),
        Some(guard.token())
    );
    guard.release().await.unwrap();
}
