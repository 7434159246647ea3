//! The container suite: Redis in a Docker container started through
//! testcontainers-modules (`Redis`, tag 7.2), instead of the local
//! `redis-server` processes the rest of the suite uses.
//!
//! * the mutual-exclusion property test (`tests/support/exclusion.rs`, as in
//!   `tests/it/property.rs`), with
//!   both "processes" connected through the container's mapped port;
//! * a container paused mid-hold: the guard reports the lock lost by the time
//!   its lease ran out, and keeps reporting it lost after the unpause;
//! * a container stopped mid-hold: the guard reports the lock lost, and lock
//!   calls fail with a transient error (Redis unreachable), not `NotObtained`.
//!
//! Every test here needs a Docker engine and the local `redis:7.2` image, so
//! they are `#[ignore]`d: a plain `cargo nextest run` / `cargo test` reports
//! them as skipped, never as passed. Run them with
//!
//! ```text
//! scripts/build-redis-image
//! cargo nextest run --test containers --run-ignored ignored-only
//! ```
//!
//! (`.ci/run` does). Run that way, a missing engine or image is a failure
//! that says what is missing. No image is ever pulled: it must exist locally.

mod support;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, Error, LockGuard, LostReason, RetryStrategy};
use fred::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use support::common::builder_at;
use support::exclusion::{run_case, scenario, Totals};
use testcontainers_modules::redis::{Redis, REDIS_PORT};
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};

const IMAGE_TAG: &str = "7.2";
/// Every container of this suite carries this label, so `.ci/run` can remove
/// any that a killed test process left behind.
const SUITE_LABEL: (&str, &str) = ("io.github.distributed-mutex.suite", "containers");

// ---------------------------------------------------------------------------
// The container fixture
// ---------------------------------------------------------------------------

/// Panics, saying what is missing, unless a Docker engine answers and the
/// `redis:7.2` image exists locally.
fn require_docker() {
    let image = format!("redis:{IMAGE_TAG}");
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the container suite needs a Docker engine, and `docker info` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("the container suite needs Docker, and the docker CLI cannot be run: {e}"),
    }
    let inspect = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &image])
        .output();
    match inspect {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the image {image} is not available locally (no image can be pulled here; build it \
             with scripts/build-redis-image): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("the docker CLI could not be run: {e}"),
    }
}

/// A Redis container and the URL of its mapped port.
struct RedisContainer {
    container: ContainerAsync<Redis>,
    url: String,
}

impl RedisContainer {
    async fn start() -> RedisContainer {
        let container = Redis::default()
            .with_tag(IMAGE_TAG)
            .with_label(SUITE_LABEL.0, SUITE_LABEL.1)
            .with_startup_timeout(Duration::from_secs(30))
            .start()
            .await
            .expect("start the redis:7.2 container (is the Docker engine running?)");
        let port = container
            .get_host_port_ipv4(REDIS_PORT)
            .await
            .expect("the container's mapped port");
        let host = container.get_host().await.expect("the container's host");
        // The engine runs here: talk to it over loopback, never through
        // the bridge network's addresses.
        let host = match host.to_string().as_str() {
            "localhost" => "127.0.0.1".to_owned(),
            other => other.to_owned(),
        };
        RedisContainer {
            container,
            url: format!("redis://{host}:{port}"),
        }
    }

    /// Removes the container (it is also removed on drop, inside a runtime).
    async fn remove(self) {
        self.container.rm().await.expect("remove the container");
    }
}

/// A mutex over a client connected to `url` (the library's reconnecting
/// client), with a short command timeout and lease for fault tests.
async fn fault_mutex(url: &str, ttl: Duration, command_timeout: Duration) -> DistributedMutex {
    builder_at(url)
        .await
        .ttl(ttl)
        .command_timeout(command_timeout)
        .build()
        .expect("valid settings")
}

// ---------------------------------------------------------------------------
// 1. Mutual exclusion under random operations (as tests/it/property.rs)
// ---------------------------------------------------------------------------

const PROP_CASES: u32 = 16;

#[test]
#[ignore = "needs Docker and the redis:7.2 image (scripts/build-redis-image); .ci/run runs it"]
fn random_operations_keep_mutual_exclusion_against_a_redis_container() {
    require_docker();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The container is removed on drop, which needs a runtime context (also
    // when a failed case unwinds).
    let _context = runtime.enter();
    let redis = runtime.block_on(RedisContainer::start());
    let totals = Totals::default();

    let mut runner = TestRunner::new(ProptestConfig {
        cases: PROP_CASES,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&scenario(), |scenario| {
        runtime.block_on(run_case(&redis.url, "ctr:lock:", scenario, &totals))
    });
    if let Err(e) = result {
        panic!("{e}");
    }

    let sections = totals.sections.load(Ordering::Relaxed);
    let not_obtained = totals.not_obtained.load(Ordering::Relaxed);
    eprintln!(
        "{PROP_CASES} cases against {}: {sections} critical sections, {not_obtained} attempts \
         not obtained",
        redis.url
    );
    // 16 cases of 3-4 tasks doing 5-15 operations, a third of them lock
    // attempts: locks must actually have been taken.
    assert!(
        sections >= PROP_CASES as usize,
        "only {sections} critical sections were entered"
    );
    runtime.block_on(redis.remove());
}

// ---------------------------------------------------------------------------
// 2. and 3. The container goes away mid-hold
// ---------------------------------------------------------------------------

const FAULT_TTL: Duration = Duration::from_secs(1);
const FAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(300);
/// Allowance on top of the lease for `lost()` to fire on a loaded 2-core
/// machine. Generous: the point is "reported, and not much later than the
/// lease", not a latency measurement.
const LOSS_SLACK: Duration = Duration::from_secs(2);

/// Takes `key` and holds it past several renewals while Redis is up, so the
/// later loss is the fault's doing, not a renewal that never worked.
async fn lock_and_hold(mutex: &DistributedMutex, key: &str) -> LockGuard {
    let guard = mutex.lock(key).await.expect("lock while Redis is up");
    assert_eq!(guard.ttl(), FAULT_TTL);
    // 1.5 leases: without working renewal the lock would be lost by now.
    tokio::time::sleep(FAULT_TTL * 3 / 2).await;
    assert!(
        !guard.is_lost(),
        "the lock was lost while Redis was up: renewal does not work against the container"
    );
    assert!(!guard.remaining().is_zero());
    guard
}

/// Waits for `guard.lost()`, and checks it fired neither while the lease was
/// still valid nor much later than the lease's end. Returns the reason.
async fn expect_loss_within_lease(guard: &LockGuard, what: &str) -> LostReason {
    let remaining = guard.remaining();
    let started = Instant::now();
    let reason = tokio::time::timeout(remaining + LOSS_SLACK, guard.lost())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: lost() did not fire within the {remaining:?} left on the lease + \
                 {LOSS_SLACK:?}"
            )
        });
    let took = started.elapsed();
    eprintln!("{what}: lost() = {reason:?} after {took:?} ({remaining:?} were left)");
    // Timers never fire early: a loss reported before the lease ran out would
    // mean the guard gave up a lock it still held.
    assert!(
        took + Duration::from_millis(20) >= remaining,
        "{what}: lost() fired after {took:?}, before the {remaining:?} left on the lease ran out"
    );
    assert!(guard.is_lost());
    assert_eq!(guard.remaining(), Duration::ZERO);
    reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the redis:7.2 image (scripts/build-redis-image); .ci/run runs it"]
async fn paused_container_mid_hold_reports_the_lock_lost_and_keeps_it_lost() {
    require_docker();
    let redis = RedisContainer::start().await;
    let mutex = fault_mutex(&redis.url, FAULT_TTL, FAULT_COMMAND_TIMEOUT).await;
    let guard = lock_and_hold(&mutex, "ctr:paused").await;

    redis.container.pause().await.expect("pause the container");
    let reason = expect_loss_within_lease(&guard, "paused container").await;
    assert_eq!(
        reason,
        LostReason::Expired,
        "no renewal could be confirmed while Redis was paused"
    );

    redis
        .container
        .unpause()
        .await
        .expect("unpause the container");
    // Redis answers again (the reconnecting client may need a moment).
    let other = fault_mutex(&redis.url, FAULT_TTL, FAULT_COMMAND_TIMEOUT).await;
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if other.client().ping::<String>(None).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(answered.is_ok(), "Redis did not answer after the unpause");
    // Give renewal (period ~1/3 s) every chance to "revive" the lease.
    tokio::time::sleep(FAULT_TTL).await;

    assert!(
        guard.is_lost(),
        "the guard reports the lock held again after the unpause"
    );
    assert_eq!(guard.remaining(), Duration::ZERO);
    let again = tokio::time::timeout(Duration::from_millis(100), guard.lost())
        .await
        .expect("lost() of a lost guard completes at once");
    assert_eq!(again, LostReason::Expired, "the first reason sticks");
    assert!(
        matches!(
            guard.extend(FAULT_TTL).await,
            Err(Error::NotHeld { ref key, .. }) if key == "ctr:paused"
        ),
        "extend on a lost guard must report NotHeld"
    );
    // The loss was real: the key ran out in Redis too, so another client
    // takes the lock now.
    let taken = other
        .acquire("ctr:paused")
        .retry(RetryStrategy::linear(Duration::from_millis(100), 30))
        .await
        .expect("another client takes the lock the paused holder lost");
    assert_ne!(taken.token(), guard.token());
    assert!(
        matches!(guard.release().await, Err(Error::NotHeld { .. })),
        "the lost guard's release must report NotHeld and leave the new holder's lock alone"
    );
    let value: Option<String> = other.client().get("ctr:paused").await.unwrap();
    assert_eq!(value.as_deref(), Some(taken.token()));
    taken.release().await.expect("the new holder releases");

    mutex.shutdown().await;
    other.shutdown().await;
    redis.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the redis:7.2 image (scripts/build-redis-image); .ci/run runs it"]
async fn stopped_container_mid_hold_reports_the_lock_lost_and_lock_calls_fail_transiently() {
    require_docker();
    let redis = RedisContainer::start().await;
    let mutex = fault_mutex(&redis.url, FAULT_TTL, FAULT_COMMAND_TIMEOUT).await;
    let guard = lock_and_hold(&mutex, "ctr:stopped").await;

    redis
        .container
        .stop_with_timeout(Some(2))
        .await
        .expect("stop the container");
    assert!(!redis.container.is_running().await.unwrap());
    let reason = expect_loss_within_lease(&guard, "stopped container").await;
    assert_eq!(
        reason,
        LostReason::Expired,
        "no renewal could be confirmed with Redis gone"
    );
    assert!(
        matches!(guard.extend(FAULT_TTL).await, Err(Error::NotHeld { .. })),
        "extend on a lost guard must report NotHeld"
    );
    drop(guard);

    // With Redis gone, lock calls say "Redis unreachable" (transient), never
    // "someone else holds it" (NotObtained), and they return.
    let bound = Duration::from_secs(15);
    for key in ["ctr:stopped", "ctr:fresh"] {
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            bound,
            mutex
                .acquire(key)
                .retry(RetryStrategy::linear(Duration::from_millis(50), 3)),
        )
        .await
        .unwrap_or_else(|_| panic!("lock({key}) with Redis stopped did not return in {bound:?}"));
        match outcome {
            Err(e) => {
                assert!(
                    matches!(e, Error::Unavailable { .. } | Error::Timeout { .. })
                        && e.is_transient(),
                    "lock({key}) with Redis stopped: expected Unavailable or Timeout, got {e:?}"
                );
                eprintln!("lock({key}) after {:?}: {e}", started.elapsed());
            }
            Ok(g) => panic!("lock({key}) succeeded with Redis stopped: {g:?}"),
        }
        let outcome = tokio::time::timeout(bound, mutex.try_lock(key))
            .await
            .unwrap_or_else(|_| {
                panic!("try_lock({key}) with Redis stopped did not return in {bound:?}")
            });
        match outcome {
            Err(e) => assert!(
                matches!(e, Error::Unavailable { .. } | Error::Timeout { .. }) && e.is_transient(),
                "try_lock({key}) with Redis stopped: expected Unavailable or Timeout, got {e:?}"
            ),
            Ok(g) => panic!("try_lock({key}) with Redis stopped answered {g:?}"),
        }
    }

    tokio::time::timeout(Duration::from_secs(10), mutex.shutdown())
        .await
        .expect("shutdown returns with Redis gone");
    redis.remove().await;
}
