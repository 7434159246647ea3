//! Fault injection against real, private `redis-server` processes (see
//! `tests/support`): connections cut during each lock command, a black-holed
//! or slow network (through the loopback proxy in `tests/support/proxy.rs`),
//! a killed, restarted or paused server, a holder killed with SIGKILL, a flushed
//! script cache, and servers that refuse commands (out of memory, a password,
//! a read-only replica).
//!
//! Each case asserts what the caller sees and that mutual exclusion held: a
//! rival on its own direct connection never gets a lock that a guard still
//! reports held, an acquisition never reports success for a lock that Redis
//! does not hold with its token, and nothing is left locked beyond its TTL.
//!
//! Mutexes that go through the proxy use a 300 ms command timeout. Time
//! bounds are generous (the machine is small and noisy).

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use distributed_mutex::{Builder, DistributedMutex, Error, LostReason, RetryStrategy};
use fred::prelude::*;
use fred::types::Expiration;

use crate::support::common::{
    assert_no_orphan, builder_for, check_remaining, fence_key, gone_within, load_scripts, ms,
    mutex_for, mutex_via, raw_dbsize, raw_get, raw_get_and_pttl, raw_get_bytes, raw_pttl,
    redis_keys, sha, SCRIPTS,
};
use crate::support::proxy::{Action, Mode, Point, Proxy};
use crate::support::RedisServer;

/// The command timeout of mutexes that go through the proxy.
const COMMAND_TIMEOUT: Duration = ms(300);

/// A mutex through `proxy` ([`mutex_via`]) with a 300 ms command timeout,
/// then `configure`.
async fn via(proxy: &Proxy, configure: impl FnOnce(Builder) -> Builder) -> DistributedMutex {
    mutex_via(proxy, |b| configure(b.command_timeout(COMMAND_TIMEOUT))).await
}

// ---- 1. a connection cut during each command --------------------------------

/// One acquisition of `key` through `proxy` with `action` applied to the
/// `nth` command of `point`; checks what the caller got against Redis.
/// Returns a one-line description of the outcome.
#[allow(clippy::too_many_arguments)]
async fn acquire_through_a_cut(
    server: &RedisServer,
    raw: &Client,
    proxy: &Proxy,
    key: &str,
    (point, nth, action): (Point, u32, Action),
    retry: RetryStrategy,
    fencing: bool,
    busy_for: Option<Duration>,
) -> String {
    let ttl = ms(2000);
    let mutex = via(proxy, |b| b.ttl(ttl).auto_renew(false)).await;
    let other = mutex_for(server).await;
    if let Some(busy) = busy_for {
        let _: () = raw
            .set(
                key,
                "someone-else",
                Some(Expiration::PX(busy.as_millis() as i64)),
                None,
                false,
            )
            .await
            .unwrap();
    }
    let mut fired = proxy.on_nth(point, nth, action);
    let mut acquisition = mutex.acquire(key).retry(retry);
    if fencing {
        acquisition = acquisition.fencing();
    }
    let started = Instant::now();
    let result = acquisition.await;
    let took = started.elapsed();
    assert!(
        fired.wait(ms(1000)).await,
        "{point:?}#{nth} {action:?} on `{key}` never fired"
    );
    proxy.disarm();
    assert!(took < ms(5000), "`{key}`: acquisition took {took:?}");

    let outcome = match result {
        Ok(guard) => {
            // Success is reported only for a lock Redis holds with our token.
            assert_eq!(
                raw_get(raw, key).await.as_deref(),
                Some(guard.token()),
                "`{key}`: Ok(guard) but Redis does not hold its token"
            );
            let left = raw_pttl(raw, key).await;
            assert!(
                left > 0 && left <= ttl.as_millis() as i64,
                "`{key}`: PTTL {left}"
            );
            check_remaining(raw, &guard, key).await;
            assert!(
                other.try_lock(key).await.unwrap().is_none(),
                "`{key}`: a rival got a lock the guard holds"
            );
            if fencing {
                // A re-sent acquisition draws no second fencing token.
                let counter = raw_get_bytes(raw, &fence_key("", key)).await;
                assert_eq!(guard.fencing_token(), Some(1), "`{key}`");
                assert_eq!(counter.as_deref(), Some("1"), "`{key}`: fence counter");
            }
            guard.release().await.expect("release after the cut");
            assert_eq!(raw_get(raw, key).await, None);
            format!("Ok(guard) in {took:?}, Redis holds its token")
        }
        Err(e) => {
            // Nobody else holds the key once the busy lease ended: only a
            // transient error may be reported, never NotObtained.
            assert!(e.is_transient(), "`{key}`: {e:?}");
            format!("Err({e}) in {took:?}")
        }
    };
    mutex.shutdown().await;
    assert_no_orphan(raw, key, ttl).await;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_during_the_first_acquire_command_never_misreports_the_lock() {
    let server = RedisServer::start();
    let raw = server.client().await;
    load_scripts(&raw).await;
    let proxy = Proxy::start(server.port());
    for action in [Action::CutBeforeForward, Action::CutAfterForward] {
        for (name, retry) in [
            ("try", RetryStrategy::none()),
            ("wait", RetryStrategy::linear(ms(100), 5)),
        ] {
            let key = format!("cut:first:{action:?}:{name}");
            let outcome = acquire_through_a_cut(
                &server,
                &raw,
                &proxy,
                &key,
                (Point::Acquire, 1, action),
                retry,
                false,
                None,
            )
            .await;
            println!("{key}: {outcome}");
        }
    }
    assert!(proxy.seen(Point::Acquire) >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_during_a_successful_retry_never_misreports_the_lock() {
    // The key is busy for 200 ms: the first attempt finds it taken, the
    // second acquire-script call (after waiting out the holder's PTTL) is
    // the one that takes it, and is the one cut.
    let server = RedisServer::start();
    let raw = server.client().await;
    load_scripts(&raw).await;
    let proxy = Proxy::start(server.port());
    for action in [Action::CutBeforeForward, Action::CutAfterForward] {
        let key = format!("cut:retry:{action:?}");
        let outcome = acquire_through_a_cut(
            &server,
            &raw,
            &proxy,
            &key,
            (Point::AcquireScript, 2, action),
            RetryStrategy::linear(ms(1000), 3),
            false,
            Some(ms(200)),
        )
        .await;
        println!("{key}: {outcome}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_during_a_fencing_acquire_draws_exactly_one_fencing_token() {
    let server = RedisServer::start();
    let raw = server.client().await;
    load_scripts(&raw).await;
    let proxy = Proxy::start(server.port());
    for action in [Action::CutBeforeForward, Action::CutAfterForward] {
        for (name, retry) in [
            ("try", RetryStrategy::none()),
            ("wait", RetryStrategy::linear(ms(100), 5)),
        ] {
            let key = format!("cut:fence:{action:?}:{name}");
            let outcome = acquire_through_a_cut(
                &server,
                &raw,
                &proxy,
                &key,
                (Point::AcquireScript, 1, action),
                retry,
                true,
                None,
            )
            .await;
            println!("{key}: {outcome}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_during_release_leaves_nothing_locked() {
    let server = RedisServer::start();
    let raw = server.client().await;
    load_scripts(&raw).await;
    let proxy = Proxy::start(server.port());
    let other = mutex_for(&server).await;
    for action in [Action::CutBeforeForward, Action::CutAfterForward] {
        let key = format!("cut:release:{action:?}");
        let mutex = via(&proxy, |b| b.ttl(ms(10_000)).auto_renew(false)).await;
        let guard = mutex.lock(&key).await.unwrap();
        let mut fired = proxy.on_next(Point::Release, action);
        let started = Instant::now();
        let result = guard.release().await;
        let took = started.elapsed();
        assert!(fired.wait(ms(1000)).await, "{action:?} never fired");
        println!("{key}: {result:?} in {took:?}");
        assert!(took < ms(2000), "release took {took:?}");
        match &result {
            Ok(()) => {}
            // The command ran and its reply was lost: the re-sent release
            // finds the key gone (see the ignored test below).
            Err(Error::NotHeld { key: k, .. }) => assert_eq!(k, &key),
            Err(e) => assert!(e.is_transient(), "{e:?}"),
        }
        mutex.shutdown().await;
        // Released, not left to expire (its lease is 10 s).
        assert!(
            gone_within(&raw, &key, ms(1000)).await,
            "`{key}` still locked after {result:?}"
        );
        let next = other.try_lock(&key).await.unwrap();
        assert!(next.is_some(), "`{key}`: a rival cannot take it");
        next.unwrap().release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_cut_after_it_ran_is_not_reported_as_a_lost_lock() {
    let server = RedisServer::start();
    load_scripts(&server.client().await).await;
    let proxy = Proxy::start(server.port());
    let mutex = via(&proxy, |b| b.ttl(ms(10_000)).auto_renew(false)).await;
    let guard = mutex.lock("cut:release:report").await.unwrap();
    let mut fired = proxy.on_next(Point::Release, Action::CutAfterForward);
    let result = guard.release().await;
    assert!(fired.wait(ms(1000)).await);
    // The lock was held until this very release deleted it: NotHeld ("its
    // lease expired or another client took it over; work may have
    // overlapped") is a false alarm. Ok, or a transient error saying the
    // outcome is unknown, would be true.
    assert!(
        result.is_ok() || result.as_ref().is_err_and(Error::is_transient),
        "{result:?}"
    );
}

/// A release whose reply is lost, after which a rival takes the key, is
/// never reported `NotHeld`: the release is not re-sent (a re-send would
/// find the rival's token and say the lock was lost), so its outcome is the
/// truth (`Ok`) or "unknown" (a transient error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_reply_is_lost_is_never_reported_not_held_when_a_rival_took_the_key() {
    let server = RedisServer::start();
    let raw = server.client().await;
    load_scripts(&raw).await;
    let proxy = Proxy::start(server.port());
    let mutex = via(&proxy, |b| b.ttl(ms(10_000)).auto_renew(false)).await;
    let rival = mutex_for(&server).await;
    let key = "cut:release:rival";
    let guard = mutex.lock(key).await.unwrap();
    let mut fired = proxy.on_next(Point::Release, Action::CutAfterForward);
    let release = tokio::spawn(async move { guard.release().await });
    assert!(fired.wait(ms(1000)).await, "the release was not cut");
    // The release ran (the key is gone); the rival takes the key before the
    // client has even reconnected.
    let taken = rival
        .try_lock(key)
        .await
        .unwrap()
        .expect("the release ran, so the key is free");
    let result = release.await.unwrap();
    assert!(
        result.is_ok() || result.as_ref().is_err_and(Error::is_transient),
        "{result:?}"
    );
    tokio::time::sleep(ms(300)).await;
    assert_eq!(
        raw_get(&raw, key).await.as_deref(),
        Some(taken.token()),
        "the rival's lock was touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_during_extend_keeps_remaining_conservative() {
    let server = RedisServer::start();
    let raw = server.client().await;
    load_scripts(&raw).await;
    let proxy = Proxy::start(server.port());
    let other = mutex_for(&server).await;
    for action in [Action::CutBeforeForward, Action::CutAfterForward] {
        let key = format!("cut:extend:{action:?}");
        let mutex = via(&proxy, |b| b.ttl(ms(2000)).auto_renew(false)).await;
        let guard = mutex.lock(&key).await.unwrap();
        let mut fired = proxy.on_next(Point::Extend, action);
        let result = guard.extend(ms(6000)).await;
        assert!(fired.wait(ms(1000)).await, "{action:?} never fired");
        println!("{key}: {result:?}");
        match &result {
            Ok(()) => {
                assert_eq!(guard.ttl(), ms(6000));
                let left = raw_pttl(&raw, &key).await;
                assert!(left > 4000, "extend reported Ok, PTTL {left}");
            }
            Err(e) => {
                assert!(e.is_transient(), "{e:?}");
                assert!(!guard.is_lost(), "a transient error is not a loss");
            }
        }
        check_remaining(&raw, &guard, &key).await;
        assert_eq!(raw_get(&raw, &key).await.as_deref(), Some(guard.token()));
        assert!(other.try_lock(&key).await.unwrap().is_none());
        guard.release().await.expect("release after the cut");
        mutex.shutdown().await;
        assert_eq!(raw_get(&raw, &key).await, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_during_renewal_do_not_lose_the_lock() {
    let server = RedisServer::start();
    let raw = server.client().await;
    load_scripts(&raw).await;
    let proxy = Proxy::start(server.port());
    let other = mutex_for(&server).await;
    let mutex = via(&proxy, |b| b.ttl(ms(1500))).await;
    let key = "cut:renewal";
    let guard = mutex.lock(key).await.unwrap();
    // The next two renewals: one cut after it ran, one before.
    let mut first = proxy.on_next(Point::Extend, Action::CutAfterForward);
    let mut second = proxy.on_next(Point::Extend, Action::CutBeforeForward);
    let until = Instant::now() + ms(3500);
    while Instant::now() < until {
        assert!(!guard.is_lost(), "lost after a cut during renewal");
        assert_eq!(raw_get(&raw, key).await.as_deref(), Some(guard.token()));
        assert!(
            other.try_lock(key).await.unwrap().is_none(),
            "a rival got a renewed lock"
        );
        tokio::time::sleep(ms(50)).await;
    }
    assert!(first.wait(ms(10)).await && second.wait(ms(10)).await);
    assert!(
        proxy.seen(Point::Extend) >= 4,
        "renewal did not go on after the cuts ({} extends)",
        proxy.seen(Point::Extend)
    );
    check_remaining(&raw, &guard, key).await;
    guard.release().await.unwrap();
    assert_eq!(raw_get(&raw, key).await, None);
}

// ---- 2. renewal black-holed: the holder learns first -------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_renewals_tell_the_holder_before_a_rival_gets_in() {
    let server = RedisServer::start();
    let raw = server.client().await;
    load_scripts(&raw).await;
    let proxy = Proxy::start(server.port());
    let other = mutex_for(&server).await;
    let mutex = via(&proxy, |b| b.ttl(ms(1000))).await;
    let key = "blackhole:renewal";
    let guard = mutex.lock(key).await.unwrap();
    let mut fired = proxy.on_next(Point::Extend, Action::BlackHole);
    assert!(fired.wait(ms(1500)).await, "no renewal within 1.5 s");
    let black_holed_at = Instant::now();

    // A rival polls from now on; the moment it gets in, the holder's guard
    // must already say the lock is lost (read from the lease's clock, so
    // scheduling delays cannot make this pass or fail).
    let poller = {
        let (other, lease) = (other.clone(), guard.lease());
        tokio::spawn(async move {
            loop {
                if let Some(taken) = other.try_lock(key).await.unwrap() {
                    return (taken, lease.is_lost(), Instant::now());
                }
                tokio::time::sleep(ms(5)).await;
            }
        })
    };
    let reason = tokio::time::timeout(ms(3000), guard.lost())
        .await
        .expect("lost() did not fire within 3 s");
    let lost_after = black_holed_at.elapsed();
    assert_eq!(reason, LostReason::Expired);
    assert!(
        lost_after <= ms(1300),
        "lost() fired {lost_after:?} after renewals stopped getting through (TTL 1 s)"
    );
    assert_eq!(guard.remaining(), Duration::ZERO);
    let (taken, holder_knew, taken_at) = tokio::time::timeout(ms(3000), poller)
        .await
        .expect("the key was not freed within 3 s of the holder's lease ending")
        .unwrap();
    assert!(
        holder_knew,
        "a rival got the lock while the holder's guard still reported it held"
    );
    println!(
        "lost {lost_after:?} and rival in {:?} after the black hole",
        taken_at - black_holed_at
    );

    // Traffic passes again: the held renewals reach Redis, find another
    // token, and change nothing; the guard stays lost.
    proxy.set_mode(Mode::Pass);
    tokio::time::sleep(ms(500)).await;
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(taken.token()));
    assert!(guard.is_lost());
    assert_eq!(guard.lost().await, LostReason::Expired);
    let err = guard.extend(ms(1000)).await.unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err:?}");
    drop(guard);
    mutex.shutdown().await;
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(taken.token()));
    taken.release().await.unwrap();
}

// ---- 3. faults while waiting ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_while_waiting_neither_stop_the_waiter_nor_let_it_in_early() {
    let server = RedisServer::start();
    let raw = server.client().await;
    load_scripts(&raw).await;
    let proxy = Proxy::start(server.port());
    let holder = mutex_for(&server).await;
    let key = "cut:waiting";
    let held = holder
        .acquire(key)
        .ttl(ms(10_000))
        .auto_renew(false)
        .await
        .unwrap();
    let waiter = via(&proxy, |b| b.retry(RetryStrategy::linear(ms(400), 25))).await;
    // The waiter's subscription is cut right after Redis took it.
    let mut subscribed = proxy.on_next(Point::Subscribe, Action::CutAfterForward);
    let released = Arc::new(AtomicBool::new(false));
    let task = {
        let released = Arc::clone(&released);
        let waiter = waiter.clone();
        tokio::spawn(async move {
            let guard = waiter.lock(key).await;
            (guard, released.load(Ordering::SeqCst), Instant::now())
        })
    };
    assert!(
        subscribed.wait(ms(2000)).await,
        "the waiter never subscribed"
    );
    tokio::time::sleep(ms(300)).await;
    // And every connection is cut while it waits.
    proxy.cut_all().await;
    tokio::time::sleep(ms(300)).await;
    assert!(!task.is_finished(), "the waiter stopped waiting");

    released.store(true, Ordering::SeqCst);
    let released_at = Instant::now();
    held.release().await.unwrap();
    let (guard, after_release, acquired_at) =
        tokio::time::timeout(ms(3000), task).await.unwrap().unwrap();
    let guard = guard.expect("the waiter gets the lock");
    assert!(after_release, "the waiter got in before the release");
    assert!(
        acquired_at - released_at < ms(2000),
        "the waiter took {:?} after the release",
        acquired_at - released_at
    );
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(guard.token()));
    guard.release().await.unwrap();
    waiter.shutdown().await;
    assert_eq!(raw_get(&raw, key).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_while_waiting_ends_in_the_lock_once_traffic_passes() {
    let server = RedisServer::start();
    let raw = server.client().await;
    load_scripts(&raw).await;
    let proxy = Proxy::start(server.port());
    let holder = mutex_for(&server).await;
    let key = "blackhole:waiting";
    let held = holder
        .acquire(key)
        .ttl(ms(10_000))
        .auto_renew(false)
        .await
        .unwrap();
    let waiter = via(&proxy, |b| b.retry(RetryStrategy::linear(ms(200), 40))).await;
    let task = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.lock(key).await })
    };
    tokio::time::sleep(ms(500)).await;
    assert!(proxy.seen(Point::AcquireScript) >= 1);

    proxy.set_mode(Mode::BlackHole);
    held.release().await.unwrap();
    tokio::time::sleep(ms(1200)).await;
    assert!(
        !task.is_finished(),
        "the waiter finished while Redis was unreachable: {:?}",
        task.await
    );
    // The release handed the key to the queued waiter (its subscription
    // looks alive to Redis), which cannot hear it: the key is claimed for
    // it for the claim TTL at most, or already free again.
    let pttl: i64 = raw.pttl(key).await.unwrap();
    assert!(
        pttl <= distributed_mutex::CLAIM_TTL.as_millis() as i64,
        "the key's PTTL is {pttl} ms: longer than a claim, something got through"
    );

    proxy.set_mode(Mode::Pass);
    let guard = tokio::time::timeout(ms(3000), task)
        .await
        .expect("the waiter gets the lock within 3 s of traffic passing")
        .unwrap()
        .expect("the waiter gets the lock");
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(guard.token()));
    assert!(holder.try_lock(key).await.unwrap().is_none());
    guard.release().await.unwrap();
    waiter.shutdown().await;
    assert_eq!(raw_get(&raw, key).await, None);
}

// ---- 4. a black-holed Redis -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_redis_fails_every_call_within_the_command_timeout_and_recovers() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let proxy = Proxy::start(server.port());
    let ttl = ms(5000);
    let configure = |b: Builder| {
        b.ttl(ttl)
            .auto_renew(false)
            .retry(RetryStrategy::linear(ms(50), 3))
    };
    let mutex = via(&proxy, configure).await;
    let dropper = via(&proxy, configure).await;
    // Every script loaded (the acquire script runs on a busy key): what is
    // held reaches Redis after the black hole and runs (see
    // `a_black_hole_on_a_cold_script_cache_leaves_orphans_until_their_ttl`
    // for the other case).
    let warm = mutex.lock("bh:warm").await.unwrap();
    assert!(mutex.try_lock("bh:warm").await.unwrap().is_none());
    warm.extend(ttl).await.unwrap();
    warm.release().await.unwrap();
    let kept = mutex.acquire("bh:kept").ttl(ms(30_000)).await.unwrap();
    let to_release = mutex.lock("bh:released").await.unwrap();
    let to_drop = dropper.lock("bh:dropped").await.unwrap();
    let kept_remaining = kept.remaining();

    proxy.set_mode(Mode::BlackHole);

    // Every call ends with a transient error, bounded by the command timeout.
    async fn bounded<T: std::fmt::Debug>(
        what: &str,
        limit: Duration,
        call: impl std::future::IntoFuture<Output = Result<T, Error>>,
    ) -> Error {
        let started = Instant::now();
        let result = tokio::time::timeout(ms(10_000), call.into_future())
            .await
            .unwrap_or_else(|_| panic!("{what} hung for 10 s"));
        let took = started.elapsed();
        let err = result.expect_err(what);
        println!("{what}: {err:?} in {took:?}");
        assert!(err.is_transient(), "{what}: {err:?}");
        assert!(took <= limit, "{what} took {took:?} (limit {limit:?})");
        err
    }
    let one = COMMAND_TIMEOUT + ms(500);
    let err = bounded("try_lock", one, mutex.try_lock("bh:a")).await;
    assert!(
        matches!(err, Error::Timeout { ref key, after } if key == "bh:a" && after == COMMAND_TIMEOUT),
        "{err:?}"
    );
    // Three attempts, 50 ms apart.
    bounded("lock", COMMAND_TIMEOUT * 3 + ms(700), mutex.lock("bh:b")).await;
    bounded(
        "acquire().timeout(100 ms)",
        one,
        mutex.acquire("bh:c").timeout(ms(100)),
    )
    .await;
    bounded("extend", one, kept.extend(ttl)).await;
    assert!(!kept.is_lost(), "a timed-out extend is not a loss");
    assert!(kept.remaining() <= kept_remaining);
    bounded("release", one, to_release.release()).await;
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    bounded(
        "with_lock",
        COMMAND_TIMEOUT * 3 + ms(700),
        mutex.with_lock(
            "bh:d",
            |_| async move { flag.store(true, Ordering::SeqCst) },
        ),
    )
    .await;
    assert!(
        !ran.load(Ordering::SeqCst),
        "with_lock ran its work unlocked"
    );
    // A new connection: accepted, never answered; bounded by connect's
    // default command timeout (2 s).
    let started = Instant::now();
    let err = DistributedMutex::connect(&proxy.url()).await.unwrap_err();
    println!("connect: {err:?} in {:?}", started.elapsed());
    assert!(err.is_transient(), "connect: {err:?}");
    assert!(
        started.elapsed() < ms(4000),
        "connect took {:?}",
        started.elapsed()
    );
    // A dropped guard, then shutdown: bounded too.
    drop(to_drop);
    let started = Instant::now();
    tokio::time::timeout(ms(3000), dropper.shutdown())
        .await
        .expect("shutdown hung while Redis was black-holed");
    println!("shutdown: {:?}", started.elapsed());
    assert_eq!(raw_get(&raw, "bh:b").await, None, "nothing got through");

    // Traffic passes again: everything works, and what was held reaches
    // Redis in order (timed-out acquisitions, then their queued releases).
    proxy.set_mode(Mode::Pass);
    let started = Instant::now();
    let again = mutex.lock("bh:a").await.expect("lock after recovery");
    assert!(started.elapsed() < ms(2000), "{:?}", started.elapsed());
    assert_eq!(raw_get(&raw, "bh:a").await.as_deref(), Some(again.token()));
    kept.extend(ttl).await.expect("extend after recovery");
    check_remaining(&raw, &kept, "bh:kept").await;
    again.release().await.unwrap();
    kept.release().await.unwrap();
    mutex.shutdown().await;
    // Released, not left to expire (their leases are 5 s).
    for key in [
        "bh:a",
        "bh:b",
        "bh:c",
        "bh:d",
        "bh:kept",
        "bh:released",
        "bh:dropped",
    ] {
        assert!(
            gone_within(&raw, key, ms(1500)).await,
            "`{key}` left locked after recovery (PTTL {})",
            raw_pttl(&raw, key).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_on_a_cold_script_cache_leaves_orphans_until_their_ttl() {
    // No script has run on this server yet. A timed-out acquisition's `SET
    // NX` lands when traffic passes again; its queued release (EVALSHA) lands
    // after it but gets NOSCRIPT, and its caller gave up long before (so
    // nothing reloads it): the orphan lasts until its TTL, not beyond.
    let server = RedisServer::start();
    let raw = server.client().await;
    let proxy = Proxy::start(server.port());
    let ttl = ms(1500);
    let mutex = via(&proxy, |b| b.ttl(ttl).auto_renew(false)).await;
    let key = "bh:cold";
    proxy.set_mode(Mode::BlackHole);
    let err = mutex.try_lock(key).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    mutex.shutdown().await;
    let healed_at = Instant::now();
    proxy.set_mode(Mode::Pass);
    tokio::time::sleep(ms(200)).await;
    let orphan = raw_get(&raw, key).await;
    println!(
        "after the black hole: {orphan:?}, PTTL {}",
        raw_pttl(&raw, key).await
    );
    assert_no_orphan(&raw, key, ttl).await;
    assert!(healed_at.elapsed() <= ttl + ms(1000));
    let other = mutex_for(&server).await;
    let guard = other
        .try_lock(key)
        .await
        .unwrap()
        .expect("free after the TTL");
    guard.release().await.unwrap();
}

// ---- 5. latency -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_100ms_latency_locks_work_and_remaining_stays_conservative() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let proxy = Proxy::start(server.port());
    let ttl = ms(1500);
    // A script's first call costs three round trips (EVALSHA, NOSCRIPT,
    // SCRIPT LOAD, EVALSHA): 600 ms here.
    let a = via(&proxy, |b| b.ttl(ttl).command_timeout(ms(1000))).await;
    let b = via(&proxy, |b| {
        b.ttl(ttl)
            .command_timeout(ms(1000))
            .retry(RetryStrategy::linear(ms(100), 50))
    })
    .await;
    // 100 ms each way: every round trip is at least 200 ms longer.
    proxy.set_mode(Mode::Latency(ms(100)));
    let key = "latency";

    let started = Instant::now();
    let guard = a.lock(key).await.unwrap();
    let took = started.elapsed();
    assert!(took >= ms(200), "the latency is not there: {took:?}");
    // Counted from when the command was sent, not from the reply.
    let remaining = guard.remaining();
    assert!(
        remaining <= ttl - ms(200),
        "remaining() {remaining:?} ignores the {took:?} round trip"
    );
    check_remaining(&raw, &guard, key).await;
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(guard.token()));

    let started = Instant::now();
    assert!(b.try_lock(key).await.unwrap().is_none());
    assert!(started.elapsed() >= ms(200));

    guard.extend(ttl).await.unwrap();
    check_remaining(&raw, &guard, key).await;
    // Renewal keeps it past its TTL.
    tokio::time::sleep(ttl + ms(300)).await;
    assert!(!guard.is_lost(), "lost under 100 ms latency");
    check_remaining(&raw, &guard, key).await;
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(guard.token()));

    // A waiter gets it after the release, and only after.
    let inside = Arc::new(AtomicBool::new(true));
    let task = {
        let (b, inside) = (b.clone(), Arc::clone(&inside));
        tokio::spawn(async move {
            let guard = b.lock(key).await.unwrap();
            assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
            guard
        })
    };
    tokio::time::sleep(ms(400)).await;
    assert!(!task.is_finished());
    inside.store(false, Ordering::SeqCst);
    guard.release().await.unwrap();
    let second = tokio::time::timeout(ms(3000), task).await.unwrap().unwrap();
    check_remaining(&raw, &second, key).await;
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(second.token()));
    second.release().await.unwrap();

    let value = a
        .with_lock("latency:with", |lease| async move { lease.key().len() })
        .await
        .unwrap();
    assert_eq!(value, "latency:with".len());

    proxy.set_mode(Mode::Pass);
    a.shutdown().await;
    b.shutdown().await;
    let keys = redis_keys(&server, "latency*");
    assert!(keys.is_empty(), "left locked: {keys:?}");
}

// ---- 6. a killed server ---------------------------------------------------------------------

#[tokio::test]
async fn a_killed_server_gives_transient_errors_not_not_obtained() {
    let mut server = RedisServer::start();
    let mutex = builder_for(&server)
        .await
        .command_timeout(ms(300))
        .retry(RetryStrategy::none())
        .build()
        .unwrap();
    // In use: a lock taken and released over this connection.
    mutex.lock("killed").await.unwrap().release().await.unwrap();

    server.kill();
    let started = Instant::now();
    let err = mutex.lock("killed").await.unwrap_err();
    assert!(
        err.is_transient(),
        "expected Unavailable or Timeout, got {err:?}"
    );
    assert!(
        matches!(err, Error::Unavailable { ref key, .. } | Error::Timeout { ref key, .. } if key == "killed"),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    let err = mutex.try_lock("killed").await.unwrap_err();
    assert!(err.is_transient(), "try_lock: {err:?}");

    // With retries, the last attempt's error is reported, not NotObtained.
    let started = Instant::now();
    let err = mutex
        .acquire("killed")
        .retry(RetryStrategy::linear(ms(50), 3))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "with retries: {err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

// ---- 7. a restart (data lost) ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_loses_the_data_makes_lost_fire_for_every_holder() {
    let mut server = RedisServer::start();
    // A 3 s lease, renewed every second: a loss found by a renewal
    // (Missing) comes well before the local lease would end (Expired).
    let mutex = builder_for(&server)
        .await
        .ttl(ms(3000))
        .command_timeout(ms(500))
        .build()
        .unwrap();
    let first = mutex.lock("restart:1").await.unwrap();
    let second = mutex.lock("restart:2").await.unwrap();
    let work = {
        let mutex = mutex.clone();
        tokio::spawn(async move {
            mutex
                .with_lock("restart:3", |_| tokio::time::sleep(ms(20_000)))
                .await
        })
    };
    // A long lease without renewal: nothing finds its loss before its release.
    let unrenewed = mutex
        .acquire("restart:4")
        .ttl(ms(30_000))
        .auto_renew(false)
        .await
        .unwrap();
    let raw = server.client().await;
    while raw_get(&raw, "restart:3").await.is_none() {
        tokio::time::sleep(ms(10)).await;
    }
    drop(raw);

    // The new server on the same port has no data. fred reconnects by
    // itself; the next renewal then finds the key gone.
    let restarted_at = Instant::now();
    server.restart();
    println!("restart took {:?}", restarted_at.elapsed());

    for guard in [&first, &second] {
        let reason = tokio::time::timeout(ms(3500), guard.lost())
            .await
            .unwrap_or_else(|_| panic!("{}: lost() did not fire", guard.key()));
        let after = restarted_at.elapsed();
        println!(
            "{}: lost ({reason:?}) {after:?} after the restart",
            guard.key()
        );
        assert_eq!(
            reason,
            LostReason::Missing,
            "{}: renewal should find the key gone once fred has reconnected",
            guard.key()
        );
        assert!(guard.is_lost());
        assert_eq!(guard.remaining(), Duration::ZERO);
    }
    let result = tokio::time::timeout(ms(3500), work)
        .await
        .expect("with_lock did not stop")
        .unwrap();
    assert!(
        matches!(
            result,
            Err(Error::Lost { ref key, reason: LostReason::Missing }) if key == "restart:3"
        ),
        "{result:?}"
    );
    let raw = server.client().await;
    for key in ["restart:1", "restart:2", "restart:3", "restart:4"] {
        assert_eq!(raw_get(&raw, key).await, None, "{key}: the key came back");
    }

    // Released guards report the loss, whether a renewal found it or the
    // release itself does.
    let err = first.release().await.unwrap_err();
    assert!(
        matches!(err, Error::NotHeld { ref key, .. } if key == "restart:1"),
        "{err:?}"
    );
    let err = unrenewed.release().await.unwrap_err();
    assert!(
        matches!(err, Error::NotHeld { ref key, .. } if key == "restart:4"),
        "{err:?}"
    );

    // New locks work, at once, and Redis holds them.
    let started = Instant::now();
    let again = mutex.lock("restart:1").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        raw_get(&raw, "restart:1").await.as_deref(),
        Some(again.token())
    );
    again.release().await.unwrap();
    let rival = mutex_for(&server).await;
    let theirs = rival
        .try_lock("restart:2")
        .await
        .unwrap()
        .expect("a lock lost in the restart is free");
    let err = second.release().await.unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err:?}");
    assert_eq!(
        raw_get(&raw, "restart:2").await.as_deref(),
        Some(theirs.token())
    );
    theirs.release().await.unwrap();
}

// ---- 8. a paused server -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_past_the_ttl_tells_the_holder_before_a_rival_gets_in() {
    let server = RedisServer::start();
    let raw = server.client().await;
    let ttl = ms(1000);
    let mutex = builder_for(&server)
        .await
        .ttl(ttl)
        .command_timeout(COMMAND_TIMEOUT)
        .build()
        .unwrap();
    let other = mutex_for(&server).await;
    let key = "paused";
    let guard = mutex.lock(key).await.unwrap();
    // A renewal or two first.
    tokio::time::sleep(ms(500)).await;
    assert!(!guard.is_lost());
    let lease = guard.lease();
    let watcher = tokio::spawn(async move {
        let reason = lease.lost().await;
        (reason, Instant::now())
    });

    server.pause();
    let paused_at = Instant::now();
    // Every confirmed renewal was sent before the pause, so the local
    // validity ends before `paused_at + ttl`.
    let validity_bound = paused_at + ttl;
    let (reason, lost_at) = tokio::time::timeout(ms(2000), watcher)
        .await
        .expect("lost() did not fire while Redis was paused")
        .unwrap();
    println!(
        "pause -> lost() took {:?} (TTL {ttl:?})",
        lost_at.duration_since(paused_at)
    );
    assert_eq!(reason, LostReason::Expired);
    assert!(
        lost_at <= validity_bound + ms(300),
        "lost() fired {:?} after the local validity",
        lost_at.saturating_duration_since(validity_bound)
    );
    let err = mutex.try_lock("paused:other").await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let err = guard.extend(ttl).await.unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err:?}");

    // Past the TTL (Redis's copy of the key has expired by the time it runs
    // again), then back.
    tokio::time::sleep((paused_at + ms(1600)).saturating_duration_since(Instant::now())).await;
    server.resume();
    let deadline = Instant::now() + ms(3000);
    let taken = loop {
        let attempt_at = Instant::now();
        if let Some(taken) = other.try_lock(key).await.unwrap() {
            break (taken, attempt_at);
        }
        assert!(
            Instant::now() < deadline,
            "the key was not freed after resume"
        );
        tokio::time::sleep(ms(20)).await;
    };
    let (taken, rival_at) = taken;
    // Redis answered no one while paused: the holder knew first.
    assert!(lost_at <= rival_at);

    // The renewals Redis had queued are answered now and change nothing: the
    // guard stays lost, and its token does not come back.
    let until = Instant::now() + ms(1000);
    let mut samples = 0;
    while Instant::now() < until {
        assert!(guard.is_lost(), "reported held again after the resume");
        assert_eq!(guard.remaining(), Duration::ZERO);
        assert_eq!(
            raw_get(&raw, key).await.as_deref(),
            Some(taken.token()),
            "the rival's lock changed after the resume"
        );
        samples += 1;
        tokio::time::sleep(ms(20)).await;
    }
    assert!(samples >= 10, "only {samples} samples in 1 s");
    let err = guard.release().await.unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err:?}");
    mutex.shutdown().await;
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(taken.token()));
    taken.release().await.unwrap();
    assert_eq!(raw_get(&raw, key).await, None);
}

#[tokio::test]
async fn a_paused_server_times_out_and_works_again_after_resume() {
    let server = RedisServer::start();
    let mutex = builder_for(&server)
        .await
        .command_timeout(ms(300))
        .build()
        .unwrap();
    mutex.lock("paused").await.unwrap().release().await.unwrap();

    server.pause();
    let started = Instant::now();
    let result = mutex.try_lock("paused").await;
    let took = started.elapsed();
    server.resume();
    match result {
        Err(Error::Timeout { ref key, after }) => {
            assert_eq!(key, "paused");
            assert_eq!(after, ms(300));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(took >= ms(250) && took < ms(1500), "try_lock took {took:?}");

    // Works again after resume (the timed-out attempt's release may have to
    // run first).
    let raw = server.client().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let guard = loop {
        match mutex.try_lock("paused").await {
            Ok(Some(guard)) => break guard,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "not lockable after resume: {other:?}"
                );
                tokio::time::sleep(ms(50)).await;
            }
        }
    };
    assert_eq!(
        raw_get(&raw, "paused").await.as_deref(),
        Some(guard.token())
    );
    guard.release().await.unwrap();
    assert_eq!(raw_dbsize(&raw).await, 0);
}

// ---- 9. a holder killed with SIGKILL -----------------------------------------------------------

const CHILD_URL: &str = "DISTRIBUTED_MUTEX_FAULTS_CHILD_URL";
const CHILD_KEY: &str = "DISTRIBUTED_MUTEX_FAULTS_CHILD_KEY";
const CHILD_TTL: Duration = ms(1500);
const TOKEN_LINE: &str = "CHILD-HOLDS-TOKEN ";

/// Not a test: the child process of
/// `a_holder_killed_with_sigkill_blocks_a_rival_until_its_ttl_passes`, which
/// runs this binary with `--exact <this test> --ignored`. Takes the lock
/// (renewed), prints its token and holds it until killed (or until its parent
/// goes away and stdin closes, or 30 s pass).
///
/// Ignored so that it never counts as a test; run without the parent's
/// environment (e.g. by `--run-ignored`) it fails, saying so, rather than
/// pass without doing anything. `.ci/run` leaves it out of its run of the
/// ignored tests (`-E 'not test(=faults::sigkill_child_holds_a_lock)'`).
#[tokio::test]
#[ignore = "not a test: the child process of a_holder_killed_with_sigkill_blocks_a_rival_until_its_ttl_passes"]
async fn sigkill_child_holds_a_lock() {
    use tokio::io::AsyncReadExt;
    let (Ok(url), Ok(key)) = (std::env::var(CHILD_URL), std::env::var(CHILD_KEY)) else {
        panic!(
            "not a test: the child process of \
             a_holder_killed_with_sigkill_blocks_a_rival_until_its_ttl_passes, which sets \
             {CHILD_URL} and {CHILD_KEY}; leave it out of runs of ignored tests \
             (cargo nextest run --run-ignored ignored-only -E 'not test(=faults::sigkill_child_holds_a_lock)')"
        );
    };
    let connected = DistributedMutex::connect(&url).await.unwrap();
    let mutex = DistributedMutex::builder(connected.client().clone())
        .ttl(CHILD_TTL)
        .build()
        .unwrap();
    let guard = mutex.lock(&key).await.unwrap();
    println!("{TOKEN_LINE}{}", guard.token());
    let parent_gone = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(1..) = stdin.read(&mut buf).await {}
    };
    tokio::select! {
        () = parent_gone => {}
        () = tokio::time::sleep(Duration::from_secs(30)) => {}
    }
    drop(guard);
}

/// The libtest name of `sigkill_child_holds_a_lock` in this binary: its path
/// below the crate root (`faults::sigkill_child_holds_a_lock`), so that
/// `--exact` finds it whatever module this file is mounted as.
fn child_test_name() -> String {
    let module = module_path!()
        .split_once("::")
        .map_or("", |(_crate, path)| path);
    if module.is_empty() {
        "sigkill_child_holds_a_lock".to_owned()
    } else {
        format!("{module}::sigkill_child_holds_a_lock")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_with_sigkill_blocks_a_rival_until_its_ttl_passes() {
    use tokio::io::AsyncBufReadExt;
    let server = RedisServer::start();
    let raw = server.client().await;
    let other = mutex_for(&server).await;
    let key = "sigkill";
    // Under cargo test and nextest alike this is the test binary, which
    // takes libtest's arguments.
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &child_test_name(), "--ignored", "--nocapture"])
        .env(CHILD_URL, server.url())
        .env(CHILD_KEY, key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let token = tokio::time::timeout(ms(10_000), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(token) = line.strip_prefix(TOKEN_LINE) {
                return token.to_owned();
            }
        }
        panic!("the child exited without taking the lock");
    })
    .await
    .expect("the child did not take the lock within 10 s");
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(token.as_str()));

    // Held (and renewed: a third of the TTL) while the child lives.
    let until = Instant::now() + ms(900);
    while Instant::now() < until {
        assert!(other.try_lock(key).await.unwrap().is_none());
        tokio::time::sleep(ms(50)).await;
    }
    // Every reading of the child's key is GET and PTTL in one script, so it
    // cannot straddle the key's expiry; each one bounds from below when the
    // key can end: no earlier than the reading was sent plus its PTTL.
    let (value, left, sent_at) = raw_get_and_pttl(&raw, key).await;
    assert_eq!(
        value.as_deref(),
        Some(token.as_str()),
        "the child lost its lock"
    );
    assert!(
        left > (CHILD_TTL - ms(900)).as_millis() as i64,
        "the child does not renew (PTTL {left} after 900 ms)"
    );
    let mut not_before = sent_at + ms(left as u64);

    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    let killed_at = Instant::now();

    // Nothing releases the dead child's lock: until its lease ends the key
    // holds its token, with an expiry, and a rival cannot get in; once the
    // key is gone (never before a bound read earlier) the rival gets it.
    let mut readings = 0;
    let (taken, taken_at) = loop {
        let (value, left, sent_at) = raw_get_and_pttl(&raw, key).await;
        let present = value.is_some();
        match value {
            Some(value) => {
                assert_eq!(value, token, "the dead child's key holds another token");
                // 0: under a millisecond left (the script's clock is frozen,
                // so GET still saw the key).
                assert!(
                    left >= 0 && left <= CHILD_TTL.as_millis() as i64,
                    "the dead child's key has PTTL {left}"
                );
                not_before = not_before.max(sent_at + ms(left as u64));
                readings += 1;
            }
            None => assert!(
                Instant::now() >= not_before,
                "the dead child's key was gone {:?} before its lease ended",
                not_before - Instant::now()
            ),
        }
        if let Some(taken) = other.try_lock(key).await.unwrap() {
            break (taken, Instant::now());
        }
        assert!(present, "the key was gone, yet the rival could not take it");
        assert!(
            killed_at.elapsed() < CHILD_TTL + ms(1500),
            "the dead child's lock outlived its TTL"
        );
        tokio::time::sleep(ms(20)).await;
    };
    println!(
        "rival got the lock {:?} after the kill ({readings} readings of the dead child's key)",
        taken_at - killed_at
    );
    assert!(
        taken_at >= not_before,
        "the rival got in {:?} before the dead holder's lease ended",
        not_before - taken_at
    );
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(taken.token()));
    taken.release().await.unwrap();
}

// ---- 10. SCRIPT FLUSH ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_between_calls_reloads_for_renewal_fencing_and_waiting() {
    // `lock` covers lock, extend, release and a dropped guard's
    // release after SCRIPT FLUSH; this covers the rest.
    let server = RedisServer::start();
    let raw = server.client().await;
    let shas = [sha(SCRIPTS[0]), sha(SCRIPTS[1]), sha(SCRIPTS[2])];
    let exists = |server: &RedisServer| -> Vec<String> {
        let mut args = vec!["SCRIPT", "EXISTS"];
        args.extend(shas.iter().map(String::as_str));
        server.cli(&args).lines().map(str::to_owned).collect()
    };
    let connected = DistributedMutex::connect(&server.url()).await.unwrap();
    let mutex = DistributedMutex::builder(connected.client().clone())
        .ttl(ms(600))
        .build()
        .unwrap();

    // Automatic renewal.
    let renewed = mutex.lock("flush:renewed").await.unwrap();
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    assert_eq!(exists(&server), ["0", "0", "0"]);
    tokio::time::sleep(ms(1200)).await;
    assert!(!renewed.is_lost(), "renewal failed after SCRIPT FLUSH");
    assert_eq!(
        raw_get(&raw, "flush:renewed").await.as_deref(),
        Some(renewed.token())
    );
    assert_eq!(
        exists(&server)[2],
        "1",
        "the extend script was not reloaded"
    );
    renewed.release().await.unwrap();

    // Fencing.
    let fenced = mutex.acquire("flush:fenced").fencing().await.unwrap();
    let first = fenced.fencing_token().unwrap();
    fenced.release().await.unwrap();
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    let fenced = mutex.acquire("flush:fenced").fencing().await.unwrap();
    assert_eq!(fenced.fencing_token(), Some(first + 1));
    fenced.release().await.unwrap();

    // A waiter is woken by the release message of a reloaded release script.
    let holder = mutex
        .acquire("flush:waited")
        .ttl(ms(10_000))
        .auto_renew(false)
        .await
        .unwrap();
    let waiter = mutex_for(&server).await;
    let waiter = DistributedMutex::builder(waiter.client().clone())
        .retry(RetryStrategy::linear(ms(3000), 5))
        .build()
        .unwrap();
    let task = tokio::spawn(async move { waiter.lock("flush:waited").await });
    tokio::time::sleep(ms(500)).await;
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    let released_at = Instant::now();
    holder.release().await.unwrap();
    let guard = tokio::time::timeout(ms(2500), task)
        .await
        .expect("the waiter was not woken")
        .unwrap()
        .unwrap();
    assert!(
        released_at.elapsed() < ms(2000),
        "woken by its 3 s poll, not by the release message"
    );
    guard.release().await.unwrap();
    // The release script was loaded again (the acquire script too, unless
    // the woken waiter used the handed-over lock without confirming it).
    assert_eq!(exists(&server)[1], "1");
    let keys = redis_keys(&server, "*flush*");
    assert_eq!(
        keys,
        ["\u{fffd}{flush:fenced}:fence:flush:fenced"],
        "left locked"
    );
}

// ---- 11. servers that refuse commands ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxmemory_with_noeviction_is_a_redis_error_naming_oom() {
    let server =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let raw = server.client().await;
    let mutex = DistributedMutex::connect(&server.url()).await.unwrap();
    let held = mutex
        .acquire("oom:held")
        .ttl(ms(10_000))
        .auto_renew(false)
        .await
        .unwrap();

    // Fill memory until a write is refused, then pin maxmemory below what
    // is used, so that freed client buffers cannot bring it back under.
    let value = "x".repeat(64 * 1024);
    for n in 0.. {
        let set: Result<(), _> = raw
            .set(format!("fill:{n}"), value.as_str(), None, None, false)
            .await;
        if let Err(e) = set {
            assert!(e.details().starts_with("OOM"), "{e:?}");
            break;
        }
        assert!(n < 1000, "maxmemory never reached");
    }
    assert_eq!(server.cli(&["CONFIG", "SET", "maxmemory", "1"]), "OK");
    let probe: Result<(), _> = raw.set("probe", "x", None, None, false).await;
    let probe = probe.unwrap_err();
    assert!(probe.details().starts_with("OOM"), "{probe:?}");

    let started = Instant::now();
    let err = mutex.lock("oom:new").await.unwrap_err();
    println!("lock: {err}");
    assert!(
        matches!(err, Error::Redis { ref key, .. } if key == "oom:new"),
        "{err:?}"
    );
    assert!(err.to_string().contains("OOM"), "{err}");
    assert!(!err.is_transient());
    assert!(
        started.elapsed() < ms(1000),
        "retried: {:?}",
        started.elapsed()
    );
    let err = mutex.try_lock("oom:new").await.unwrap_err();
    assert!(
        matches!(err, Error::Redis { .. }) && err.to_string().contains("OOM"),
        "{err:?}"
    );
    let err = mutex.acquire("oom:fenced").fencing().await.unwrap_err();
    assert!(
        matches!(err, Error::Redis { .. }) && err.to_string().contains("OOM"),
        "{err:?}"
    );
    let fence = raw_get_bytes(&raw, &fence_key("", "oom:fenced")).await;
    assert_eq!(fence, None, "the fencing counter was written");
    for key in ["oom:new", "oom:fenced"] {
        assert_eq!(raw_get(&raw, key).await, None, "`{key}` was written");
    }

    // A lock taken before can still be extended and released (PEXPIRE and
    // DEL are allowed under OOM), so it is not stuck until its TTL.
    held.extend(ms(10_000)).await.expect("extend under OOM");
    held.release().await.expect("release under OOM");
    assert_eq!(raw_get(&raw, "oom:held").await, None);
    mutex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_password_is_a_config_error() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let port = server.port();

    let started = Instant::now();
    let err = DistributedMutex::connect(&server.url()).await.unwrap_err();
    println!("no password: {err}");
    assert!(started.elapsed() < ms(3000));
    assert!(
        matches!(err, Error::Config { ref message, .. } if message.contains("NOAUTH") && message.contains("password")),
        "{err:?}"
    );
    assert!(!err.is_transient());

    let err = DistributedMutex::connect(&format!("redis://:wrong@127.0.0.1:{port}"))
        .await
        .unwrap_err();
    println!("wrong password: {err}");
    assert!(
        matches!(err, Error::Config { ref message, .. } if message.contains("WRONGPASS") && message.contains("password")),
        "{err:?}"
    );

    let mutex = DistributedMutex::connect(&format!("redis://:s3cret@127.0.0.1:{port}"))
        .await
        .expect("the right password");
    let guard = mutex.lock("auth").await.unwrap();
    let value = server.cli(&["-a", "s3cret", "--no-auth-warning", "GET", "auth"]);
    assert_eq!(value, guard.token());
    guard.release().await.unwrap();
    assert_eq!(
        server.cli(&["-a", "s3cret", "--no-auth-warning", "DBSIZE"]),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_replica_is_a_redis_error_naming_readonly() {
    // No 5 s wait before the replica's first sync.
    let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let deadline = Instant::now() + ms(10_000);
    while !replica
        .cli(&["INFO", "replication"])
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "the replica never synced");
        tokio::time::sleep(ms(50)).await;
    }
    let on_primary = mutex_for(&primary).await;
    let held = on_primary.lock("readonly:held").await.unwrap();
    let mutex = DistributedMutex::connect(&replica.url()).await.unwrap();

    let started = Instant::now();
    let err = mutex.lock("readonly:free").await.unwrap_err();
    println!("lock: {err}");
    assert!(
        matches!(err, Error::Redis { ref key, .. } if key == "readonly:free"),
        "{err:?}"
    );
    assert!(err.to_string().contains("READONLY"), "{err}");
    assert!(!err.is_transient());
    assert!(
        started.elapsed() < ms(1000),
        "retried: {:?}",
        started.elapsed()
    );
    // A key held on the primary: still the error, never "busy".
    let err = mutex.try_lock("readonly:held").await.unwrap_err();
    assert!(
        matches!(err, Error::Redis { .. }) && err.to_string().contains("READONLY"),
        "{err:?}"
    );
    let err = mutex
        .acquire("readonly:fenced")
        .fencing()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Redis { .. }) && err.to_string().contains("READONLY"),
        "{err:?}"
    );

    mutex.shutdown().await;
    held.release().await.unwrap();
    let keys = redis_keys(&primary, "*");
    assert!(keys.is_empty(), "{keys:?}");
}
