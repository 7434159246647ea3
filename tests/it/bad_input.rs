//! Bad input, one test per row (the `// ---- N.` sections below), against
//! real private `redis-server`s. Every row gives a typed error or a
//! documented outcome, never a panic, and leaves nothing locked. The first
//! section checks across rows that nothing invalid reaches Redis and that
//! odd keys round-trip. Misuse of the legacy shim (release twice, a key never
//! acquired, an empty formatted key) is in `adapter`.
//!
//! | row | input                                              | outcome                                                                 |
//! |-----|----------------------------------------------------|-------------------------------------------------------------------------|
//! |  1  | empty key                                          | `InvalidKey` ("must not be empty"), nothing sent                         |
//! |  2  | key over `MAX_KEY_LEN` (4096 bytes)                | `InvalidKey`; 4096 bytes accepted; bytes, not chars; prefix not counted |
//! |  3  | key with spaces and tabs                           | locks exactly that key                                                  |
//! |  4  | keys with braces (hash tags, stray braces)         | lock, exclusive; fencing counter in the lock key's cluster slot         |
//! |  5  | key with newlines                                  | lock; waiters are woken by its release message                          |
//! |  6  | non-ASCII key                                      | lock; errors cut it to 64 chars on a char boundary                      |
//! |  7  | TTL zero                                           | `InvalidTtl` (acquire, builder, extend); the lease is unchanged         |
//! |  8  | TTL 1 ms (and sub-millisecond)                     | accepted, born lost (`remaining()` 0); < 1 ms refused; 1.5 ms → 1 ms    |
//! |  9  | TTL above the millisecond range                    | `InvalidTtl` ("at most 365 days") everywhere                            |
//! | 10  | retry with zero attempts                           | `Config` (acquire, builder), pointing at `RetryStrategy::none()`         |
//! | 11  | timeout zero                                       | command timeout: `Config`; `acquire().timeout(0)`: exactly one attempt  |
//! | 12  | malformed Redis URL                                | `Config` ("the Redis URL is malformed")                                 |
//! | 13  | unreachable port; a client never connected         | `Unavailable` promptly; `Timeout` after the command timeout             |
//! | 14  | key holding a list                                 | `WrongType`, no retries; a key turned into a list: `NotHeld`; untouched  |
//! | 15  | key holding a hash                                 | `WrongType`; hash untouched, no expiry set                              |
//! | 16  | release twice                                      | `release(self)` consumes the guard (shim: see `adapter`)                |
//! | 17  | extend after release                               | `NotHeld`, the key is not brought back, the guard is lost (`Missing`)   |
//! | 18  | shim release of a key never acquired               | a warning, nothing sent (in `adapter`)                                  |
//! | 19  | shim `releasef` expanding to an empty key          | a warning, `acquiref` an error log, nothing sent (in `adapter`)         |
//! | 20  | key prefix over `MAX_PREFIX_LEN` (1024 bytes)      | `Config`                                                                |
//! | 21  | retry with a zero interval                         | `NotObtained` at once, no busy loop                                     |
//! | 22  | a URL naming a database that does not exist        | `Redis` ("DB index is out of range") from `connect`                     |
//!
//! Two more rows were library bugs, now fixed: a
//! `rediss://` or `http://` URL was accepted and used as plain `redis://`, and
//! a `Lease` kept past its guard's release still reported the lock held.

use std::time::{Duration, Instant};

use distributed_mutex::{
    DistributedMutex, Error, LostReason, RetryStrategy, MAX_KEY_LEN, MAX_PREFIX_LEN, MAX_TTL,
    MIN_TTL,
};
use fred::prelude::*;

use crate::support::common::{
    assert_nothing_locked, builder_for, command_stats, fence_key, lock_commands, ms, mutex_for,
    raw_dbsize, raw_get, raw_get_bytes, raw_keys, raw_pttl, redis_keys, reset_stats, Fixture,
};
use crate::support::RedisServer;

// ---- helpers ----------------------------------------------------------------

fn assert_invalid_key(err: &Error, reason_part: &str) {
    match err {
        Error::InvalidKey { reason, .. } => assert!(
            reason.contains(reason_part),
            "reason {reason:?} lacks {reason_part:?}"
        ),
        other => panic!("expected InvalidKey, got {other:?}"),
    }
    assert!(!err.is_transient());
}

fn assert_invalid_ttl(err: &Error, ttl: Duration, reason_part: &str) {
    match err {
        Error::InvalidTtl { ttl: t, reason, .. } => {
            assert_eq!(*t, ttl);
            assert!(
                reason.contains(reason_part),
                "reason {reason:?} lacks {reason_part:?}"
            );
        }
        other => panic!("expected InvalidTtl for {ttl:?}, got {other:?}"),
    }
}

fn assert_config(err: &Error, message_part: &str) {
    match err {
        Error::Config { message, .. } => assert!(
            message.contains(message_part),
            "message {message:?} lacks {message_part:?}"
        ),
        other => panic!("expected Config, got {other:?}"),
    }
    assert!(!err.is_transient());
}

// ---- across rows: nothing invalid reaches Redis; odd keys round-trip ----------

#[tokio::test]
async fn invalid_keys_ttls_and_settings_are_refused_before_anything_is_sent() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let client = mutex.client().clone();
    reset_stats(&server);

    // Keys.
    for key in [String::new(), "k".repeat(MAX_KEY_LEN + 1)] {
        let err = mutex.lock(&key).await.unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "lock: {err:?}");
        let err = mutex.try_lock(&key).await.unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "try_lock: {err:?}");
    }
    // TTLs, per call.
    for ttl in [Duration::ZERO, MAX_TTL + ms(1), Duration::MAX] {
        let err = mutex.acquire("k").ttl(ttl).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidTtl { ref key, ttl: t, .. } if key == "k" && t == ttl),
            "{ttl:?}: {err:?}"
        );
    }
    // TTLs, in the builder.
    for ttl in [Duration::ZERO, MAX_TTL + ms(1), Duration::MAX] {
        let err = DistributedMutex::builder(client.clone())
            .ttl(ttl)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidTtl { .. }), "{ttl:?}: {err:?}");
    }
    // Retry strategies without attempts.
    for retry in [
        RetryStrategy::linear(ms(10), 0),
        RetryStrategy::exponential(ms(10), ms(100), 0),
    ] {
        let err = mutex.acquire("k").retry(retry).await.unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{retry:?}: {err:?}");
        let err = DistributedMutex::builder(client.clone())
            .retry(retry)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{retry:?}: {err:?}");
    }
    // A zero command timeout.
    let err = DistributedMutex::builder(client.clone())
        .command_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");

    // Nothing reached Redis.
    assert_eq!(raw_dbsize(&raw).await, 0);
    let sent = command_stats(&server, &["eval", "set", "script", "pexpire"]);
    assert!(sent.is_empty(), "commands reached Redis: {sent:?}");

    // The limits themselves are accepted.
    let longest = "k".repeat(MAX_KEY_LEN);
    let guard = mutex.lock(&longest).await.unwrap();
    assert_eq!(
        raw_get(&raw, &longest).await.as_deref(),
        Some(guard.token())
    );
    guard.release().await.unwrap();
    let guard = mutex.acquire("a-year").ttl(MAX_TTL).await.unwrap();
    let pttl = raw_pttl(&raw, "a-year").await;
    assert!(pttl > MAX_TTL.as_millis() as i64 - 60_000, "{pttl}");
    guard.release().await.unwrap();
    let guard = mutex.acquire("a-ms").ttl(ms(1)).await;
    assert!(guard.is_ok(), "{guard:?}");
}

#[tokio::test]
async fn keys_with_spaces_braces_newlines_and_non_ascii_round_trip() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;
    let keys = [
        "with spaces",
        "{braces}:and:{tags}",
        "new\nline\r\n",
        "ключ 鍵 🔒",
        "quote\"s 'and' \\backslash",
        "*?[glob]",
    ];
    for key in keys {
        let guard = mutex.lock(key).await.unwrap();
        assert_eq!(guard.key(), key);
        assert_eq!(
            raw_get(&raw, key).await.as_deref(),
            Some(guard.token()),
            "{key:?}"
        );
        assert!(mutex.try_lock(key).await.unwrap().is_none(), "{key:?}");
        guard.release().await.unwrap();
        assert_eq!(raw_get(&raw, key).await, None, "{key:?}");
    }
    assert_eq!(raw_dbsize(&raw).await, 0);
}

#[tokio::test]
async fn extend_with_an_invalid_ttl_is_refused() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;
    let guard = mutex
        .acquire("extend-bad")
        .ttl(Duration::from_secs(30))
        .await
        .unwrap();
    for ttl in [Duration::ZERO, MAX_TTL + ms(1), Duration::MAX] {
        let err = guard.extend(ttl).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidTtl { ref key, ttl: t, .. } if key == "extend-bad" && t == ttl),
            "{ttl:?}: {err:?}"
        );
    }
    // The lease is unchanged and still ours.
    assert_eq!(guard.ttl(), Duration::from_secs(30));
    assert!(guard.remaining() > Duration::from_secs(20));
    let pttl = raw_pttl(&raw, "extend-bad").await;
    assert!(pttl > 20_000 && pttl <= 30_000, "{pttl}");
    guard.release().await.unwrap();
}

// ---- 1. empty key -------------------------------------------------------------

#[tokio::test]
async fn an_empty_key_is_invalid_everywhere_and_nothing_is_sent() {
    let server = RedisServer::start();
    let mutex = mutex_for(&server).await;
    let prefixed = DistributedMutex::builder(mutex.client().clone())
        .key_prefix("locks:")
        .build()
        .unwrap();
    reset_stats(&server);

    for m in [&mutex, &prefixed] {
        assert_invalid_key(&m.lock("").await.unwrap_err(), "must not be empty");
        assert_invalid_key(&m.try_lock("").await.unwrap_err(), "must not be empty");
        let err = m.acquire("").fencing().await.unwrap_err();
        assert_invalid_key(&err, "must not be empty");
        let mut ran = false;
        let err = m.with_lock("", |_| async { ran = true }).await.unwrap_err();
        assert_invalid_key(&err, "must not be empty");
        assert!(!ran, "with_lock ran its work without a lock");
    }
    assert_eq!(lock_commands(&server), 0, "a command reached Redis");
    assert_nothing_locked(&server, &mutex, &[]).await;
}

// ---- 2. very long key ---------------------------------------------------------

#[tokio::test]
async fn a_key_over_4096_bytes_is_invalid_and_4096_bytes_are_accepted() {
    // MAX_KEY_LEN is 4096 bytes: a lock key is sent with every command,
    // stored for the whole lease and printed in every log line and error,
    // so a key built from a request body by mistake is caught, while keys
    // built from URLs or paths fit. Redis itself would take 512 MB.
    assert_eq!(MAX_KEY_LEN, 4096);
    let Fixture { server, raw, mutex } = Fixture::start().await;
    reset_stats(&server);

    let too_long = "k".repeat(MAX_KEY_LEN + 1);
    let err = mutex.lock(&too_long).await.unwrap_err();
    assert_invalid_key(&err, "at most 4096 bytes");
    // Counted in bytes: 2049 two-byte characters are 4098 bytes.
    let err = mutex.lock("é".repeat(2049)).await.unwrap_err();
    assert_invalid_key(&err, "at most 4096 bytes");
    assert_eq!(lock_commands(&server), 0, "a command reached Redis");

    for key in ["k".repeat(MAX_KEY_LEN), "é".repeat(MAX_KEY_LEN / 2)] {
        let guard = mutex.lock(&key).await.unwrap();
        assert_eq!(raw_get(&raw, &key).await.as_deref(), Some(guard.token()));
        guard.release().await.unwrap();
    }
    // The prefix does not count against the limit.
    let prefixed = DistributedMutex::builder(mutex.client().clone())
        .key_prefix("locks:")
        .build()
        .unwrap();
    let key = "k".repeat(MAX_KEY_LEN);
    let guard = prefixed.lock(&key).await.unwrap();
    assert_eq!(
        raw_get(&raw, &format!("locks:{key}")).await.as_deref(),
        Some(guard.token())
    );
    guard.release().await.unwrap();
    prefixed.shutdown().await;
    assert_nothing_locked(&server, &mutex, &[]).await;
}

// ---- 3. spaces ------------------------------------------------------------------

#[tokio::test]
async fn a_key_with_spaces_locks_exactly_that_key() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let key = "  tenant 42\tsettings  ";
    let guard = mutex.lock(key).await.unwrap();
    assert_eq!(guard.key(), key);
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(guard.token()));
    assert_eq!(redis_keys(&server, "*").len(), 1);
    // Not split into words: its parts and its trimmed form are other keys.
    for other in ["tenant", "42", "tenant 42\tsettings"] {
        let part = mutex.try_lock(other).await.unwrap();
        assert!(part.is_some(), "{other:?} is blocked by {key:?}");
    }
    assert!(mutex.try_lock(key).await.unwrap().is_none());
    let err = mutex
        .acquire(key)
        .retry(RetryStrategy::none())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(key), "{err}");
    guard.release().await.unwrap();
    assert_nothing_locked(&server, &mutex, &[]).await;
}

// ---- 4. braces ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_braces_lock_and_fence_in_their_own_cluster_slot() {
    let server = RedisServer::start();
    let raw = server.client().await;
    // Two "processes", fencing on for every acquisition.
    let a = builder_for(&server).await.fencing().build().unwrap();
    let b = builder_for(&server).await.fencing().build().unwrap();
    // Keys with a hash tag, and keys whose braces make none; where the
    // counter's name is documented, it is checked too.
    let keys = [
        ("plain", Some(fence_key("", "plain"))),
        ("{tag}rest", Some(fence_key("", "{tag}rest"))),
        ("{tenant:42}:settings", None),
        ("a}b{", None),
        ("a{}b", None),
        ("x}y{z", None),
        ("{{}}", None),
        ("}{", None),
    ];
    let mut counters = Vec::new();
    for (key, expected_counter) in keys {
        let before = raw_keys(&raw).await;
        let guard = a.lock(key).await.unwrap();
        assert_eq!(
            raw_get(&raw, key).await.as_deref(),
            Some(guard.token()),
            "{key}"
        );
        assert_eq!(guard.fencing_token(), Some(1), "{key}");
        assert!(
            b.try_lock(key).await.unwrap().is_none(),
            "{key}: not exclusive"
        );
        // The one new key besides the lock is its fencing counter, in the
        // lock key's cluster slot, and never a possible lock key (not UTF-8).
        let new: Vec<Vec<u8>> = raw_keys(&raw)
            .await
            .into_iter()
            .filter(|k| k != key.as_bytes() && !before.contains(k))
            .collect();
        assert_eq!(new.len(), 1, "{key}: {new:?}");
        let counter = new[0].clone();
        assert!(std::str::from_utf8(&counter).is_err(), "{key}: {counter:?}");
        if let Some(expected) = expected_counter {
            assert_eq!(counter, expected, "{key}");
        }
        assert_eq!(
            raw_get_bytes(&raw, &counter).await.as_deref(),
            Some("1"),
            "{key}"
        );
        assert_eq!(
            fred::util::redis_keyslot(&counter),
            fred::util::redis_keyslot(key.as_bytes()),
            "{key}: counter {counter:?} in another slot"
        );
        guard.release().await.unwrap();

        // The other process draws the next token from the same counter.
        let again = b.try_lock(key).await.unwrap().expect("free");
        assert_eq!(again.fencing_token(), Some(2), "{key}");
        again.release().await.unwrap();
        assert_eq!(
            raw_get_bytes(&raw, &counter).await.as_deref(),
            Some("2"),
            "{key}"
        );
        assert_eq!(raw_get(&raw, key).await, None, "{key}");
        counters.push(counter);
    }
    // Fencing counters are never deleted (documented); no lock is left.
    b.shutdown().await;
    // (`KEYS` through redis-cli shows the 0xFF byte as U+FFFD.)
    let counters: Vec<String> = counters
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let counters: Vec<&str> = counters.iter().map(String::as_str).collect();
    assert_nothing_locked(&server, &a, &counters).await;
}

// ---- 5. newlines ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_newlines_locks_and_its_release_wakes_waiters() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let key = "line one\nline two\r\n";
    let holder = mutex
        .acquire(key)
        .ttl(ms(10_000))
        .auto_renew(false)
        .await
        .unwrap();
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(holder.token()));
    // A waiter in another "process" that polls only every 3 s.
    let waiter = DistributedMutex::builder(mutex_for(&server).await.client().clone())
        .retry(RetryStrategy::linear(ms(3000), 3))
        .build()
        .unwrap();
    let task = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.lock(key).await })
    };
    tokio::time::sleep(ms(400)).await;
    let released_at = Instant::now();
    holder.release().await.unwrap();
    let guard = tokio::time::timeout(ms(2500), task)
        .await
        .expect("the waiter was not woken by the release message")
        .unwrap()
        .unwrap();
    assert!(released_at.elapsed() < ms(2000));
    assert_eq!(guard.key(), key);
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(guard.token()));
    guard.release().await.unwrap();
    waiter.shutdown().await;
    assert_eq!(raw_dbsize(&raw).await, 0);
    assert_nothing_locked(&server, &mutex, &[]).await;
}

// ---- 6. non-ASCII ---------------------------------------------------------------

#[tokio::test]
async fn a_non_ascii_key_locks_and_errors_cut_it_on_a_char_boundary() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let key = "ключ:鍵:🔒:ü";
    let guard = mutex.lock(key).await.unwrap();
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(guard.token()));
    let err = mutex
        .acquire(key)
        .retry(RetryStrategy::none())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotObtained { key: ref k, attempts: 1, .. } if k == key),
        "{err:?}"
    );
    assert!(err.to_string().contains(key), "{err}");
    guard.release().await.unwrap();

    // A too-long key of 4-byte characters: the error shows its first 64
    // characters (not bytes) and an ellipsis.
    let long = "🔒".repeat(1025);
    let err = mutex.lock(&long).await.unwrap_err();
    assert_invalid_key(&err, "at most 4096 bytes");
    let shown = err.key().unwrap();
    assert_eq!(shown, format!("{}…", "🔒".repeat(64)));
    assert!(err.to_string().contains(shown));
    assert_nothing_locked(&server, &mutex, &[]).await;
}

// ---- 7. TTL zero ----------------------------------------------------------------

#[tokio::test]
async fn a_zero_ttl_is_invalid_everywhere_and_changes_nothing() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let reason = "at least 1 ms";
    let err = mutex.acquire("ttl0").ttl(Duration::ZERO).await.unwrap_err();
    assert_invalid_ttl(&err, Duration::ZERO, reason);
    assert_eq!(err.key(), Some("ttl0"));
    let err = DistributedMutex::builder(mutex.client().clone())
        .ttl(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_invalid_ttl(&err, Duration::ZERO, reason);
    assert_eq!(err.key(), None, "a builder error names no key");
    assert_eq!(raw_dbsize(&raw).await, 0);

    let guard = mutex
        .acquire("ttl0")
        .ttl(ms(30_000))
        .auto_renew(false)
        .await
        .unwrap();
    let before: i64 = raw.pttl("ttl0").await.unwrap();
    let err = guard.extend(Duration::ZERO).await.unwrap_err();
    assert_invalid_ttl(&err, Duration::ZERO, reason);
    assert!(!guard.is_lost());
    assert_eq!(guard.ttl(), ms(30_000));
    let after: i64 = raw.pttl("ttl0").await.unwrap();
    assert!(after <= before && after > 25_000, "{before} -> {after}");
    guard.release().await.unwrap();
    assert_nothing_locked(&server, &mutex, &[]).await;
}

// ---- 8. TTL 1 ms ----------------------------------------------------------------

#[tokio::test]
async fn a_one_millisecond_ttl_is_accepted_and_the_lock_is_born_lost() {
    // MIN_TTL is 1 ms (Redis counts in milliseconds). remaining() takes a
    // drift margin of 1 % + 2 ms off every lease, so a lease of 2 ms or less
    // is reported lost the moment it is granted: the guard never claims to
    // hold a lock Redis may already have expired.
    assert_eq!(MIN_TTL, ms(1));
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let other = mutex_for(&server).await;

    let guard = mutex.acquire("ttl1").ttl(ms(1)).await.unwrap();
    assert_eq!(guard.ttl(), ms(1));
    assert_eq!(guard.remaining(), Duration::ZERO);
    assert!(guard.is_lost());
    assert_eq!(guard.lost().await, LostReason::Expired);
    // Redis lets it go at once; a rival gets in; the dead guard's release
    // (token-checked) leaves the rival's lock alone.
    let deadline = Instant::now() + ms(1000);
    let taken = loop {
        if let Some(taken) = other.try_lock("ttl1").await.unwrap() {
            break taken;
        }
        assert!(Instant::now() < deadline, "a 1 ms lock outlived 1 s");
        tokio::time::sleep(ms(2)).await;
    };
    drop(guard);
    mutex.shutdown().await;
    assert_eq!(raw_get(&raw, "ttl1").await.as_deref(), Some(taken.token()));
    taken.release().await.unwrap();

    // Below a millisecond: refused; fractions are dropped.
    let err = other
        .acquire("ttl1")
        .ttl(Duration::from_micros(999))
        .await
        .unwrap_err();
    assert_invalid_ttl(&err, Duration::from_micros(999), "at least 1 ms");
    let guard = other
        .acquire("ttl1.5")
        .ttl(Duration::from_micros(1500))
        .await
        .unwrap();
    assert_eq!(guard.ttl(), ms(1));
    drop(guard);
    assert_nothing_locked(&server, &other, &[]).await;
}

// ---- 9. TTL above the millisecond range --------------------------------------------

#[tokio::test]
async fn a_ttl_above_the_millisecond_range_is_invalid_everywhere() {
    // Redis takes PX up to 2^63 - 1 ms; the crate stops at MAX_TTL (365
    // days: more is almost always seconds given as milliseconds).
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let guard = mutex
        .acquire("ttl-max")
        .ttl(ms(30_000))
        .auto_renew(false)
        .await
        .unwrap();
    for ttl in [
        MAX_TTL + ms(1),
        Duration::from_millis(i64::MAX as u64),
        Duration::from_millis(u64::MAX),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ] {
        let reason = "at most 365 days";
        let err = mutex.acquire("ttl-big").ttl(ttl).await.unwrap_err();
        assert_invalid_ttl(&err, ttl, reason);
        let err = DistributedMutex::builder(mutex.client().clone())
            .ttl(ttl)
            .build()
            .unwrap_err();
        assert_invalid_ttl(&err, ttl, reason);
        let err = guard.extend(ttl).await.unwrap_err();
        assert_invalid_ttl(&err, ttl, reason);
    }
    assert_eq!(guard.ttl(), ms(30_000));
    let left: i64 = raw.pttl("ttl-max").await.unwrap();
    assert!(left > 25_000 && left <= 30_000, "{left}");
    assert_eq!(raw_get(&raw, "ttl-big").await, None);
    guard.release().await.unwrap();
    assert_nothing_locked(&server, &mutex, &[]).await;
}

// ---- 10. zero attempts ------------------------------------------------------------

#[tokio::test]
async fn a_retry_strategy_with_zero_attempts_is_a_config_error() {
    let server = RedisServer::start();
    let mutex = mutex_for(&server).await;
    reset_stats(&server);
    for retry in [
        RetryStrategy::linear(ms(100), 0),
        RetryStrategy::exponential(ms(10), ms(100), 0),
        RetryStrategy::linear(Duration::ZERO, 0),
    ] {
        assert_eq!(retry.max_attempts(), 0);
        let err = mutex.acquire("zero").retry(retry).await.unwrap_err();
        assert_config(&err, "zero attempts");
        assert!(err.to_string().contains("RetryStrategy::none()"), "{err}");
        let err = DistributedMutex::builder(mutex.client().clone())
            .retry(retry)
            .build()
            .unwrap_err();
        assert_config(&err, "zero attempts");
    }
    assert_eq!(lock_commands(&server), 0, "a command reached Redis");
    assert_nothing_locked(&server, &mutex, &[]).await;
}

// ---- 11. timeout zero ---------------------------------------------------------------

#[tokio::test]
async fn a_zero_timeout_is_a_config_error_or_exactly_one_attempt() {
    let server = RedisServer::start();
    let mutex = mutex_for(&server).await;
    // A zero command timeout would fail every command.
    let err = DistributedMutex::builder(mutex.client().clone())
        .command_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_config(&err, "command timeout is zero");

    // A zero acquisition timeout is one attempt (documented).
    let guard = mutex
        .acquire("timeout0")
        .timeout(Duration::ZERO)
        .await
        .expect("a free lock is taken by the one attempt");
    let other = mutex_for(&server).await;
    let started = Instant::now();
    let err = other
        .acquire("timeout0")
        .timeout(Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotObtained { attempts: 1, .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < ms(500), "{:?}", started.elapsed());
    guard.release().await.unwrap();
    other.shutdown().await;
    assert_nothing_locked(&server, &mutex, &[]).await;
}

// ---- 12. malformed URL -------------------------------------------------------------

#[tokio::test]
async fn a_malformed_redis_url_is_a_config_error() {
    for url in [
        "not a url",
        "redis://127.0.0.1:notaport",
        "redis://[::1",
        "",
        "127.0.0.1:6390",
        "redis://",
        "redis:///0",
        "redis://127.0.0.1:99999",
        "redis://127.0.0.1:6390/not-a-db",
        "redis://127.0.0.1:6390/-1",
        "redis-sentinel://127.0.0.1:26390",
    ] {
        let started = Instant::now();
        let err = DistributedMutex::connect(url).await.unwrap_err();
        assert_config(&err, "the Redis URL is malformed");
        assert!(
            err.to_string()
                .contains("redis://[user:password@]host:port[/db]"),
            "{url:?}: {err}"
        );
        assert!(started.elapsed() < ms(100), "{url:?}: nothing to wait for");
    }
}

// ---- 13. unreachable port -------------------------------------------------------------

#[tokio::test]
async fn an_unreachable_port_is_unavailable_and_an_unconnected_client_times_out() {
    let url = crate::support::unreachable_url();
    let started = Instant::now();
    let err = DistributedMutex::connect(&url).await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { ref key, .. } if key.is_empty()),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(err.to_string().contains("unavailable"), "{err}");
    assert!(started.elapsed() < ms(3000), "{:?}", started.elapsed());

    // A mutex over a client that was never connected (`init` not called):
    // each call ends at the command timeout, nothing is locked.
    let server = RedisServer::start();
    let config = fred::types::config::Config::from_url(&server.url()).unwrap();
    let client = fred::types::Builder::from_config(config).build().unwrap();
    let mutex = DistributedMutex::builder(client)
        .command_timeout(ms(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = mutex.try_lock("unconnected").await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { ref key, after } if key == "unconnected" && after == ms(300)),
        "{err:?}"
    );
    assert!(started.elapsed() < ms(1500), "{:?}", started.elapsed());
    let raw = server.client().await;
    assert_eq!(raw_dbsize(&raw).await, 0);
}

// ---- 14. a list -------------------------------------------------------------------------

#[tokio::test]
async fn a_key_holding_a_list_is_wrong_type_and_left_untouched() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let _: i64 = raw.rpush("list", vec!["a", "b", "c"]).await.unwrap();

    let started = Instant::now();
    let err = mutex.lock("list").await.unwrap_err();
    assert!(
        matches!(err, Error::WrongType { ref key, .. } if key == "list"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    // Not retried for the whole default budget (~5 s).
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "retried: {:?}",
        started.elapsed()
    );
    let err = mutex.try_lock("list").await.unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
    let err = mutex.acquire("list").fencing().await.unwrap_err();
    assert!(
        matches!(err, Error::WrongType { ref key, .. } if key == "list"),
        "{err:?}"
    );
    let mut ran = false;
    let err = mutex
        .with_lock("list", |_| async { ran = true })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
    assert!(!ran);

    // A held (renewed) lock whose key is replaced by a list: its release
    // finds the list in Redis.
    let guard = mutex.lock("became-a-list").await.unwrap();
    let _: i64 = raw.del("became-a-list").await.unwrap();
    let _: i64 = raw.rpush("became-a-list", vec!["x", "y"]).await.unwrap();
    let err = guard.release().await.unwrap_err();
    assert!(
        matches!(err, Error::NotHeld { ref key, .. } if key == "became-a-list"),
        "{err:?}"
    );

    // A lock (not renewed) whose key is replaced by a list: extend finds it.
    let guard = mutex
        .acquire("becomes-a-list")
        .auto_renew(false)
        .await
        .unwrap();
    let _: () = raw.del("becomes-a-list").await.unwrap();
    let _: i64 = raw.rpush("becomes-a-list", vec!["x"]).await.unwrap();
    let err = guard.extend(ms(30_000)).await.unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err:?}");
    assert!(guard.is_lost());
    assert_eq!(guard.lost().await, LostReason::Replaced);
    let err = guard.release().await.unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err:?}");

    // Every list is left as it was, without an expiry.
    for (key, items) in [
        ("list", vec!["a", "b", "c"]),
        ("became-a-list", vec!["x", "y"]),
        ("becomes-a-list", vec!["x"]),
    ] {
        let got: Vec<String> = raw.lrange(key, 0, -1).await.unwrap();
        assert_eq!(got, items, "{key}");
        assert_eq!(
            raw_pttl(&raw, key).await,
            -1,
            "{key}: an expiry was set on the list"
        );
    }
    let fence = raw_get_bytes(&raw, &fence_key("", "list")).await;
    assert_eq!(fence, None, "a fencing token was drawn for a list");
    assert_nothing_locked(
        &server,
        &mutex,
        &["became-a-list", "becomes-a-list", "list"],
    )
    .await;
}

// ---- 15. a hash -------------------------------------------------------------------------

#[tokio::test]
async fn a_key_holding_a_hash_is_wrong_type_and_left_untouched() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let _: i64 = raw.hset("hash", ("field", "value")).await.unwrap();
    let started = Instant::now();
    let err = mutex.lock("hash").await.unwrap_err();
    assert!(
        matches!(err, Error::WrongType { ref key, .. } if key == "hash"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(
        started.elapsed() < ms(1000),
        "retried: {:?}",
        started.elapsed()
    );
    let err = mutex.try_lock("hash").await.unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
    let value: Option<String> = raw.hget("hash", "field").await.unwrap();
    assert_eq!(value.as_deref(), Some("value"));
    let len: i64 = raw.hlen("hash").await.unwrap();
    assert_eq!(len, 1);
    let left: i64 = raw.pttl("hash").await.unwrap();
    assert_eq!(left, -1, "an expiry was set on the hash");
    assert_nothing_locked(&server, &mutex, &["hash"]).await;
}

// ---- 17. extend after release ---------------------------------------------------------------

#[tokio::test]
async fn extend_after_release_is_not_held_and_never_brings_the_key_back() {
    // `release(self)` takes the guard, so `extend` after it does not compile.
    // At run time the same happens when the lock is released by another
    // client of the protocol that has the token (e.g. a Go or Python process
    // handed it): extend must report NotHeld and not recreate the key.
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let key = "extend-after-release";
    let guard = mutex.acquire(key).auto_renew(false).await.unwrap();
    let deleted: Vec<Value> = raw
        .eval(
            crate::support::common::RELEASE_LUA,
            vec![
                key,
                "extend-after-release:queue",
                "extend-after-release:fence",
            ],
            vec![
                "p",
                guard.token(),
                guard.token(),
                "extend-after-release:released",
                "{extend-after-release}:handoff:",
                ":extend-after-release",
                "",
            ],
        )
        .await
        .unwrap();
    // One answer per key, then the first token (see the script).
    assert_eq!(deleted, [Value::Integer(1), Value::from(guard.token())]);

    let err = guard.extend(ms(30_000)).await.unwrap_err();
    assert!(
        matches!(err, Error::NotHeld { key: ref k, .. } if k == key),
        "{err:?}"
    );
    assert_eq!(
        raw_get(&raw, key).await,
        None,
        "extend brought the key back"
    );
    assert!(guard.is_lost());
    assert_eq!(guard.remaining(), Duration::ZERO);
    assert_eq!(guard.lost().await, LostReason::Missing);
    let err = guard.extend(ms(30_000)).await.unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "again: {err:?}");

    // Someone takes the key; dropping the dead guard leaves it alone.
    let other = mutex_for(&server).await;
    let taken = other.lock(key).await.unwrap();
    drop(guard);
    mutex.shutdown().await;
    assert_eq!(raw_get(&raw, key).await.as_deref(), Some(taken.token()));
    taken.release().await.unwrap();
    assert_nothing_locked(&server, &other, &[]).await;
}

#[tokio::test]
async fn a_lease_kept_past_its_guards_release_does_not_claim_the_lock() {
    let server = RedisServer::start();
    let mutex = mutex_for(&server).await;
    let guard = mutex.lock("lease-after-release").await.unwrap();
    let lease = guard.lease();
    guard.release().await.unwrap();
    // The lock is released: "how long the lock is at least still held" is 0.
    assert_eq!(lease.remaining(), Duration::ZERO);
    assert!(lease.is_lost());
}

// ---- 20. key prefix too long --------------------------------------------------------------------

#[tokio::test]
async fn a_key_prefix_over_1024_bytes_is_a_config_error() {
    assert_eq!(MAX_PREFIX_LEN, 1024);
    let Fixture { server, raw, mutex } = Fixture::start().await;
    let err = DistributedMutex::builder(mutex.client().clone())
        .key_prefix("p".repeat(MAX_PREFIX_LEN + 1))
        .build()
        .unwrap_err();
    assert_config(&err, "1025 bytes");
    let longest = DistributedMutex::builder(mutex.client().clone())
        .key_prefix("p".repeat(MAX_PREFIX_LEN))
        .build()
        .unwrap();
    let guard = longest.lock("k").await.unwrap();
    let redis_key = format!("{}k", "p".repeat(MAX_PREFIX_LEN));
    assert_eq!(
        raw_get(&raw, &redis_key).await.as_deref(),
        Some(guard.token())
    );
    guard.release().await.unwrap();
    longest.shutdown().await;
    assert_nothing_locked(&server, &mutex, &[]).await;
}

// ---- 21. zero interval ------------------------------------------------------------------------

#[tokio::test]
async fn a_retry_with_a_zero_interval_gives_up_at_once_without_spinning() {
    let server = RedisServer::start();
    let mutex = mutex_for(&server).await;
    let holder = mutex_for(&server).await;
    let held = holder.lock("busy").await.unwrap();
    reset_stats(&server);
    for retry in [
        RetryStrategy::linear(Duration::ZERO, 1000),
        RetryStrategy::exponential(Duration::ZERO, Duration::ZERO, 1000),
    ] {
        let started = Instant::now();
        let err = mutex.acquire("busy").retry(retry).await.unwrap_err();
        println!("{retry:?}: {err:?}");
        assert!(
            matches!(
                err,
                Error::NotObtained {
                    attempts: 1..=1000,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(started.elapsed() < ms(1000), "{:?}", started.elapsed());
    }
    // The wait budget of a zero interval is zero: at most a handful of
    // commands, not a busy loop of 1000 attempts.
    let sent = lock_commands(&server);
    assert!(
        sent <= 20,
        "{sent} commands for two zero-interval acquisitions"
    );
    held.release().await.unwrap();
    holder.shutdown().await;
    assert_nothing_locked(&server, &mutex, &[]).await;
}

// ---- 22. a database that does not exist ---------------------------------------------------------

#[tokio::test]
async fn a_url_naming_a_database_that_does_not_exist_is_a_redis_error() {
    let server = RedisServer::start();
    let url = format!("{}/99", server.url());
    let err = DistributedMutex::connect(&url).await.unwrap_err();
    assert!(
        matches!(err, Error::Redis { ref key, .. } if key.is_empty()),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("DB index is out of range"),
        "{err}"
    );
    assert!(!err.is_transient());
    // Database 15 exists, and locks there are not seen in database 0.
    let mutex = DistributedMutex::connect(&format!("{}/15", server.url()))
        .await
        .unwrap();
    let guard = mutex.lock("db15").await.unwrap();
    let raw = server.client().await;
    assert_eq!(raw_dbsize(&raw).await, 0);
    assert_eq!(server.cli(&["-n", "15", "GET", "db15"]), guard.token());
    guard.release().await.unwrap();
    assert_eq!(server.cli(&["-n", "15", "DBSIZE"]), "0");
}

// ---- a URL scheme the client cannot honour ----------------------------------------------

/// Without the `tls` feature a `rediss://` URL is refused as such; with it,
/// a TLS handshake against this plain server fails (the server waits for a
/// command line that never comes: `Timeout`). Either way nothing connects in
/// plain text.
#[tokio::test]
async fn a_url_whose_scheme_cannot_be_honoured_is_a_config_error() {
    let server = RedisServer::start();
    let port = server.port();
    for url in [
        format!("rediss://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}"),
    ] {
        let result = DistributedMutex::connect(&url).await;
        let tls_handshake = cfg!(feature = "tls") && url.starts_with("rediss");
        assert!(
            matches!(result, Err(Error::Config { .. }))
                || (tls_handshake && matches!(result, Err(Error::Timeout { .. }))),
            "{url}: {:?}",
            result.map(|_| "connected (in plain text)")
        );
    }
}
