//! The legacy fire-and-forget `Adapter` shim against a real Redis server:
//! defaults, waiting and giving up, logs, formatted keys, leak pruning and
//! concurrent use of one adapter by many tasks.
//!
//! Log assertions capture the events of the test's thread
//! (`support::logs`), so those tests run on a current-thread runtime.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distributed_mutex::{provide_adapter, Adapter, DistributedMutex, RedisAdapter, RetryStrategy};
use fred::prelude::*;
use tracing::Level;

use crate::support::common::{
    assert_nothing_locked, assert_uuid_v4, lock_commands, mutex_for, raw_dbsize, raw_exists,
    raw_get, reset_stats,
};
use crate::support::logs::Logs;
use crate::support::RedisServer;

// ---- helpers ---------------------------------------------------------------

fn assert_send_sync<T: Send + Sync + ?Sized>() {}
fn assert_send<T: Send>(_: &T) {}

// ---- defaults --------------------------------------------------------------

#[tokio::test]
async fn provide_adapter_locks_for_one_minute_with_a_uuid_token() {
    let server = RedisServer::start();
    let redis = server.client().await;
    let adapter = provide_adapter(server.client().await);
    let key = "adapter:defaults";

    adapter.acquire(key).await;

    let pttl: i64 = redis.pttl(key).await.unwrap();
    assert!(
        (59_000..=60_000).contains(&pttl),
        "a fresh adapter lock should have a ~60 s lease, PTTL is {pttl} ms"
    );
    let token = raw_get(&redis, key)
        .await
        .expect("the adapter's lock is in Redis");
    assert_uuid_v4(&token);

    let other = mutex_for(&server).await;
    assert!(
        other.try_lock(key).await.unwrap().is_none(),
        "a rival must not get a key the adapter holds"
    );
    assert_eq!(raw_get(&redis, key).await.as_deref(), Some(token.as_str()));

    adapter.release(key).await;
    assert!(
        !raw_exists(&redis, key).await,
        "release must delete the lock key"
    );
    let guard = other.try_lock(key).await.unwrap();
    assert!(
        guard.is_some(),
        "the rival gets the key once it is released"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn acquire_waits_about_five_seconds_then_gives_up_and_logs() {
    let logs = Logs::capture();
    let server = RedisServer::start();
    let redis = server.client().await;
    let key = "adapter:busy";

    let other = mutex_for(&server).await;
    let held = other
        .acquire(key)
        .ttl(Duration::from_secs(30))
        .await
        .expect("rival takes the lock");

    let adapter = provide_adapter(server.client().await);
    let started = Instant::now();
    adapter.acquire(key).await;
    let waited = started.elapsed();

    // 20 attempts, 250 ms apart: 19 waits of 250 ms = 4.75 s.
    assert!(
        waited >= Duration::from_millis(4_500) && waited <= Duration::from_secs(7),
        "acquire should give up after ~5 s (250 ms x 20), took {waited:?}"
    );
    assert_eq!(
        raw_get(&redis, key).await.as_deref(),
        Some(held.token()),
        "the rival's lock must be untouched"
    );
    logs.assert_logged(Level::ERROR, "timed out acquiring lock", key);

    // The adapter does not think it holds the key: releasing it only warns and
    // leaves the rival's lock alone.
    adapter.release(key).await;
    logs.assert_logged(
        Level::WARN,
        "release of a lock this adapter does not hold",
        key,
    );
    assert_eq!(raw_get(&redis, key).await.as_deref(), Some(held.token()));
    held.release().await.unwrap();
}

// ---- logs ------------------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn acquire_and_release_log_at_debug_with_the_key() {
    let logs = Logs::capture();
    let server = RedisServer::start();
    let adapter = RedisAdapter::new(DistributedMutex::new(server.client().await));
    let key = "adapter:logs";

    adapter.acquire(key).await;
    logs.assert_logged(Level::DEBUG, "lock acquired", key);
    assert_eq!(logs.count(Level::DEBUG, "lock released", key), 0);

    adapter.release(key).await;
    logs.assert_logged(Level::DEBUG, "lock released", key);
    assert!(
        logs.at_least(Level::WARN).is_empty(),
        "a clean acquire/release logs no warning or error: {:#?}",
        logs.events()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn releasing_a_key_the_adapter_does_not_hold_warns_and_sends_nothing() {
    let logs = Logs::capture();
    let server = RedisServer::start();
    let redis = server.client().await;
    // Through the `Arc<dyn Adapter>` of `provide_adapter`, before any acquire
    // ran.
    let adapter: Arc<dyn Adapter> = provide_adapter(server.client().await);
    reset_stats(&server);

    // A key nobody holds, by `release` and by `releasef`.
    adapter.release("never-acquired").await;
    adapter.releasef(format_args!("never-{}", "acquired")).await;
    assert_eq!(
        logs.count(
            Level::WARN,
            "release of a lock this adapter does not hold",
            "never-acquired"
        ),
        2,
        "{:#?}",
        logs.events()
    );
    assert_eq!(lock_commands(&server), 0, "a release reached Redis");
    assert_eq!(raw_dbsize(&redis).await, 0);

    // A key someone else holds.
    let other = mutex_for(&server).await;
    let held = other.lock("adapter:someone-elses").await.unwrap();
    reset_stats(&server);
    adapter.release("adapter:someone-elses").await;
    logs.assert_logged(
        Level::WARN,
        "release of a lock this adapter does not hold",
        "adapter:someone-elses",
    );
    assert_eq!(lock_commands(&server), 0, "the release reached Redis");
    assert_eq!(
        raw_get(&redis, "adapter:someone-elses").await.as_deref(),
        Some(held.token()),
        "releasing a key the adapter does not hold must not touch it"
    );
    assert_eq!(
        logs.count(Level::DEBUG, "lock released", "adapter:someone-elses"),
        0
    );
}

#[tokio::test(flavor = "current_thread")]
async fn releasing_a_key_twice_warns_and_leaves_the_next_holder_alone() {
    // `LockGuard::release(self)` takes the guard: a second release does not
    // compile, and a guard released once is not released again on drop. The
    // shim's `release(key)` can be called twice: the second warns and does
    // nothing, even when someone else took the key in between.
    let logs = Logs::capture();
    let server = RedisServer::start();
    let raw = server.client().await;
    let adapter = RedisAdapter::new(mutex_for(&server).await);
    let key = "twice";
    adapter.acquire(key).await;
    assert_eq!(adapter.held_count(), 1);
    adapter.release(key).await;
    logs.assert_logged(Level::DEBUG, "lock released", key);
    assert_eq!(raw_get(&raw, key).await, None);

    let other = mutex_for(&server).await;
    let taken = other.lock(key).await.unwrap();
    reset_stats(&server);
    adapter.release(key).await;
    assert_eq!(
        logs.count(
            Level::WARN,
            "release of a lock this adapter does not hold",
            key
        ),
        1,
        "{:#?}",
        logs.events()
    );
    assert_eq!(
        lock_commands(&server),
        0,
        "the second release reached Redis"
    );
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(taken.token()));
    taken.release().await.unwrap();
    assert_nothing_locked(&server, adapter.mutex(), &[]).await;
}

#[tokio::test(flavor = "current_thread")]
async fn release_of_a_lost_lock_logs_an_error() {
    let logs = Logs::capture();
    let server = RedisServer::start();
    let redis = server.client().await;
    let mutex = DistributedMutex::builder(server.client().await)
        .ttl(Duration::from_millis(150))
        .build()
        .unwrap();
    let adapter = RedisAdapter::new(mutex);
    let key = "adapter:lost";

    let lease_from = Instant::now();
    adapter.acquire(key).await;
    // Taken: in Redis, unless the machine stalled past the lease already.
    assert!(
        raw_exists(&redis, key).await || lease_from.elapsed() >= Duration::from_millis(150),
        "the adapter's lock is not in Redis"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !raw_exists(&redis, key).await,
        "the 150 ms lease has run out"
    );

    adapter.release(key).await;
    logs.assert_logged(Level::ERROR, "failed to release lock", key);
    assert_eq!(logs.count(Level::DEBUG, "lock released", key), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn acquire_dropped_by_a_deadline_logs_cancellation() {
    let logs = Logs::capture();
    let server = RedisServer::start();
    let redis = server.client().await;
    let key = "adapter:deadline";
    let other = mutex_for(&server).await;
    let held = other
        .acquire(key)
        .ttl(Duration::from_secs(30))
        .await
        .unwrap();

    let mutex = DistributedMutex::new(server.client().await);
    let adapter = RedisAdapter::new(mutex.clone());
    let outcome = tokio::time::timeout(Duration::from_millis(300), adapter.acquire(key)).await;
    assert!(
        outcome.is_err(),
        "the acquire must still be waiting at the deadline"
    );

    logs.assert_logged(Level::ERROR, "lock acquisition cancelled", key);
    assert_eq!(logs.count(Level::ERROR, "timed out acquiring lock", key), 0);
    assert_eq!(adapter.held_count(), 0);
    // Whatever the cancelled acquisition queued, the rival's lock survives it.
    mutex.shutdown().await;
    assert_eq!(raw_get(&redis, key).await.as_deref(), Some(held.token()));
}

// ---- formatted keys --------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn acquiref_and_releasef_lock_the_formatted_key() {
    let logs = Logs::capture();
    let server = RedisServer::start();
    let redis = server.client().await;
    let adapter = RedisAdapter::new(DistributedMutex::new(server.client().await));
    let key = "tenant:42:settings";

    adapter
        .acquiref(format_args!("tenant:{}:settings", 42))
        .await;
    assert_eq!(adapter.held_count(), 1);
    let token = raw_get(&redis, key)
        .await
        .expect("tenant:42:settings is locked");
    assert_uuid_v4(&token);
    assert!(mutex_for(&server)
        .await
        .try_lock(key)
        .await
        .unwrap()
        .is_none());
    logs.assert_logged(Level::DEBUG, "lock acquired", key);

    adapter
        .releasef(format_args!("tenant:{}:settings", 42))
        .await;
    assert!(
        !raw_exists(&redis, key).await,
        "releasef must free the formatted key"
    );
    assert_eq!(adapter.held_count(), 0);
    logs.assert_logged(Level::DEBUG, "lock released", key);
}

#[tokio::test(flavor = "current_thread")]
async fn an_empty_key_logs_an_error_on_acquire_and_a_warning_on_release_and_sends_nothing() {
    let logs = Logs::capture();
    let server = RedisServer::start();
    let redis = server.client().await;
    let adapter = RedisAdapter::new(mutex_for(&server).await);
    reset_stats(&server);

    // acquire and acquiref of "": the invalid key is logged, nothing held.
    adapter.acquire("").await;
    let failed = logs.find(Level::ERROR, "failed to acquire lock", "");
    assert_eq!(failed.len(), 1, "{:#?}", logs.events());
    let tenant = "";
    adapter.acquiref(format_args!("{tenant}")).await;
    let failed = logs.find(Level::ERROR, "failed to acquire lock", "");
    assert_eq!(failed.len(), 2, "{:#?}", logs.events());
    for event in &failed {
        let error = event.error.as_deref().unwrap_or_default();
        assert!(error.contains("must not be empty"), "{error}");
    }
    assert_eq!(adapter.held_count(), 0);

    // releasef expanding to "": a warning.
    adapter.releasef(format_args!("{tenant}")).await;
    assert_eq!(
        logs.count(
            Level::WARN,
            "release of a lock this adapter does not hold",
            ""
        ),
        1,
        "{:#?}",
        logs.events()
    );
    assert_eq!(lock_commands(&server), 0, "a command reached Redis");
    assert_eq!(raw_dbsize(&redis).await, 0);

    // ... which leaves the locks the adapter does hold alone.
    adapter.acquire("adapter:kept").await;
    let empty = "";
    adapter.releasef(format_args!("{empty}")).await;
    assert_eq!(
        logs.count(
            Level::WARN,
            "release of a lock this adapter does not hold",
            ""
        ),
        2,
        "{:#?}",
        logs.events()
    );
    assert_eq!(adapter.held_count(), 1, "other locks are unaffected");
    assert!(raw_exists(&redis, "adapter:kept").await);
    adapter.release("adapter:kept").await;
    assert_nothing_locked(&server, adapter.mutex(), &[]).await;
}

// ---- leak pruning ----------------------------------------------------------

#[tokio::test]
async fn forgotten_locks_are_pruned_once_their_lease_passed() {
    let server = RedisServer::start();
    let redis = server.client().await;
    // The brief's numbers are 100 ms / 300 ms; a longer lease keeps a busy
    // machine (tests run in parallel, as threads under cargo test) from
    // letting the first locks pass before all 50 are counted.
    let ttl = Duration::from_millis(1000);
    let mutex = DistributedMutex::builder(server.client().await)
        .ttl(ttl)
        .build()
        .unwrap();
    let adapter = Arc::new(RedisAdapter::new(mutex));

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let adapter = Arc::clone(&adapter);
        tasks.spawn(async move { adapter.acquire(&format!("adapter:leak:{i}")).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(adapter.held_count(), 50, "all 50 forgotten locks are held");
    let in_redis: i64 = redis.dbsize().await.unwrap();
    assert_eq!(in_redis, 50, "all 50 locks are in Redis");

    tokio::time::sleep(ttl * 2).await;
    assert_eq!(
        adapter.held_count(),
        0,
        "entries whose lease has passed must be dropped from the map"
    );
    let in_redis: i64 = redis.dbsize().await.unwrap();
    assert_eq!(in_redis, 0, "the forgotten locks expired in Redis");
}

#[tokio::test]
async fn dropping_the_adapter_releases_what_it_holds() {
    let server = RedisServer::start();
    let redis = server.client().await;
    let mutex = DistributedMutex::new(server.client().await);
    let adapter = RedisAdapter::new(mutex.clone());
    adapter.acquire("adapter:drop:a").await;
    adapter.acquire("adapter:drop:b").await;
    assert_eq!(adapter.held_count(), 2);

    drop(adapter);
    mutex.shutdown().await;
    assert!(!raw_exists(&redis, "adapter:drop:a").await);
    assert!(!raw_exists(&redis, "adapter:drop:b").await);
}

// ---- concurrency -----------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn same_key_through_one_adapter_waits_for_the_holder() {
    let logs = Logs::capture();
    let server = RedisServer::start();
    let redis = server.client().await;
    let mutex = DistributedMutex::builder(server.client().await)
        .retry(RetryStrategy::linear(Duration::from_millis(50), 200))
        .build()
        .unwrap();
    let adapter = Arc::new(RedisAdapter::new(mutex));
    let key = "adapter:shared";

    // Task A.
    adapter.acquire(key).await;
    let token_a = raw_get(&redis, key).await.expect("A holds the key");

    // Task B, same adapter, same key.
    let b = {
        let adapter = Arc::clone(&adapter);
        tokio::spawn(async move { adapter.acquire(key).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!b.is_finished(), "B must wait while A holds the key");
    assert_eq!(
        raw_get(&redis, key).await.as_deref(),
        Some(token_a.as_str()),
        "A's lock must not be replaced while A holds it"
    );
    assert_eq!(adapter.held_count(), 1, "only A's entry");

    tokio::time::sleep(Duration::from_millis(100)).await;
    adapter.release(key).await; // A releases its own lock ...
    logs.assert_logged(Level::DEBUG, "lock released", key);
    assert_eq!(logs.count(Level::ERROR, "failed to release lock", key), 0);

    // ... and B gets the key right after.
    tokio::time::timeout(Duration::from_secs(3), b)
        .await
        .expect("B acquires soon after A's release")
        .unwrap();
    let token_b = raw_get(&redis, key).await.expect("B holds the key");
    assert_uuid_v4(&token_b);
    assert_ne!(token_a, token_b, "B holds its own lock, not A's");
    assert_eq!(adapter.held_count(), 1);

    // The API is key-based: the next release(key), from this task, frees
    // B's lock, and says so in a warning.
    adapter.release(key).await;
    assert!(!raw_exists(&redis, key).await);
    assert_eq!(adapter.held_count(), 0);
    let warnings = logs.at_least(Level::WARN);
    assert_eq!(
        warnings.len(),
        1,
        "one warning expected: {:#?}",
        logs.events()
    );
    assert!(
        format!("{:?}", warnings[0]).contains("other than the one that acquired it"),
        "{:#?}",
        warnings[0]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn many_tasks_on_one_key_through_one_adapter_are_mutually_exclusive() {
    const TASKS: usize = 20;
    let logs = Logs::capture();
    let server = RedisServer::start();
    let redis = server.client().await;
    let mutex = DistributedMutex::builder(server.client().await)
        // A 10 s budget: no task gives up, so every acquire that returns holds
        // the key (checked below through the logs and the tokens).
        .retry(RetryStrategy::linear(Duration::from_millis(10), 1000))
        .build()
        .unwrap();
    let adapter: Arc<RedisAdapter> = Arc::new(RedisAdapter::new(mutex));
    let key = "adapter:contended";
    let occupancy = Arc::new(AtomicUsize::new(0));
    let max_occupancy = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(Mutex::new(HashSet::new()));

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let adapter = Arc::clone(&adapter);
        let occupancy = Arc::clone(&occupancy);
        let max_occupancy = Arc::clone(&max_occupancy);
        let tokens = Arc::clone(&tokens);
        let redis = redis.clone();
        tasks.spawn(async move {
            adapter.acquire(key).await;
            let inside = occupancy.fetch_add(1, Ordering::SeqCst) + 1;
            max_occupancy.fetch_max(inside, Ordering::SeqCst);

            // Did this acquire get the lock? A fresh token in Redis, and the
            // adapter's single entry.
            let token = raw_get(&redis, key).await.expect("the key is locked");
            assert!(
                tokens.lock().unwrap().insert(token.clone()),
                "token {token} seen by two critical sections: an acquire returned without the lock"
            );
            assert_eq!(adapter.held_count(), 1);
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(
                raw_get(&redis, key).await.as_deref(),
                Some(token.as_str()),
                "the lock changed hands inside a critical section"
            );

            occupancy.fetch_sub(1, Ordering::SeqCst);
            adapter.release(key).await;
        });
    }
    let deadline = Duration::from_secs(30);
    tokio::time::timeout(deadline, async {
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    })
    .await
    .expect("20 short critical sections finish well within 30 s");

    assert_eq!(max_occupancy.load(Ordering::SeqCst), 1, "mutual exclusion");
    assert_eq!(
        tokens.lock().unwrap().len(),
        TASKS,
        "one acquisition per task"
    );
    assert!(
        logs.at_least(Level::WARN).is_empty(),
        "no acquire may time out and no release fail: {:#?}",
        logs.at_least(Level::WARN)
    );
    assert_eq!(adapter.held_count(), 0);
    assert!(!raw_exists(&redis, key).await);
}

#[tokio::test]
async fn arc_dyn_adapter_is_send_sync_and_works_from_spawned_tasks() {
    assert_send_sync::<dyn Adapter>();
    assert_send_sync::<Arc<dyn Adapter>>();
    assert_send_sync::<RedisAdapter>();

    let server = RedisServer::start();
    let redis = server.client().await;
    let adapter: Arc<dyn Adapter> = provide_adapter(server.client().await);
    assert_send(&adapter.acquire("adapter:send"));

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..4 {
        let adapter = Arc::clone(&adapter);
        let redis = redis.clone();
        tasks.spawn(async move {
            let key = format!("adapter:spawned:{i}");
            // `format_args!`'s temporaries live to the end of the statement
            // and are not `Send`: make the future in its own statement so a
            // spawned (Send) task does not hold them across the await.
            let acquiring = adapter.acquiref(format_args!("adapter:spawned:{i}"));
            acquiring.await;
            let token = raw_get(&redis, &key)
                .await
                .expect("locked from a spawned task");
            assert_uuid_v4(&token);
            adapter.release(&key).await;
            assert!(!raw_exists(&redis, &key).await);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}
