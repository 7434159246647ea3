//! Interoperability with other clients of the `SET key token NX PX ttl` lock
//! protocol on the same key: redis-py's `Lock` and raw commands.
//!
//! The redis-py test needs python3 with the `redis` package, so it is
//! `#[ignore]`d: reported as skipped by a plain run, run (and failing if the
//! package is missing) by `cargo nextest run --run-ignored ignored-only`,
//! which `.ci/run` does.

use std::process::Stdio;
use std::time::Duration;

use distributed_mutex::{DistributedMutex, Error};
use fred::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::support::RedisServer;

const LINE_TIMEOUT: Duration = Duration::from_secs(15);

// ---- redis-py ----------------------------------------------------------------

/// Takes `redis.Redis(port=P).lock(name, timeout=10)` without blocking and
/// reports the outcome, then waits for a line on stdin before releasing.
const PY_HOLD: &str = r#"
import sys, redis
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
lock = r.lock(sys.argv[2], timeout=10)
if not lock.acquire(blocking=False):
    print("busy", flush=True)
    sys.exit(0)
print("held", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
"#;

/// Tries the lock without blocking, prints the result, waits for a line on
/// stdin and tries again; releases whatever it got.
const PY_TRY_TWICE: &str = r#"
import sys, redis
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
lock = r.lock(sys.argv[2], timeout=10)
got = lock.acquire(blocking=False)
print("acquired=%s" % got, flush=True)
if got:
    lock.release()
sys.stdin.readline()
got = lock.acquire(blocking=False)
print("acquired=%s" % got, flush=True)
if got:
    lock.release()
    print("released", flush=True)
"#;

/// Panics, saying what to install, when python3 with the `redis` package is
/// missing: the test that needs it is `#[ignore]`d by default (skipped, not
/// passed, where it cannot run) and `.ci/run` runs it explicitly.
fn require_python_redis() {
    let status = std::process::Command::new("python3")
        .args(["-c", "import redis"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(_) => panic!(
            "python3 has no `redis` package: install it (python3 -m pip install 'redis>=5') \
             to run the redis-py interop test"
        ),
        Err(e) => panic!("python3 cannot be run ({e}): the redis-py interop test needs it"),
    }
}

struct Python {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Python {
    fn spawn(script: &str, server: &RedisServer, key: &str) -> Python {
        let mut child = Command::new("python3")
            .args(["-c", script, &server.port().to_string(), key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn python3");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Python {
            child,
            stdin,
            stdout,
        }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(LINE_TIMEOUT, self.stdout.next_line())
            .await
            .expect("python did not answer in time")
            .expect("read python stdout")
            .expect("python exited without printing the expected line")
    }

    async fn go_on(&mut self) {
        self.stdin.write_all(b"go\n").await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn finish(mut self) {
        let status = tokio::time::timeout(LINE_TIMEOUT, self.child.wait())
            .await
            .expect("python did not exit")
            .unwrap();
        assert!(status.success(), "python exited with {status}");
    }
}

#[tokio::test]
#[ignore = "needs python3 with the redis package (pip install 'redis>=5'); .ci/run runs it"]
async fn a_redis_py_lock_and_ours_exclude_each_other() {
    require_python_redis();
    let server = RedisServer::start();
    let redis = server.client().await;
    let mutex = DistributedMutex::new(server.client().await);

    // redis-py holds K: we cannot take it.
    let key = "interop:py-holds";
    let mut py = Python::spawn(PY_HOLD, &server, key);
    assert_eq!(py.line().await, "held");
    let py_token: Option<String> = redis.get(key).await.unwrap();
    let py_token = py_token.expect("redis-py stored its token under the plain key");
    assert!(
        mutex.try_lock(key).await.unwrap().is_none(),
        "try_lock must fail while redis-py holds the key"
    );
    let after: Option<String> = redis.get(key).await.unwrap();
    assert_eq!(
        after,
        Some(py_token),
        "our attempt must not touch redis-py's lock"
    );

    py.go_on().await;
    assert_eq!(py.line().await, "released");
    py.finish().await;
    let guard = mutex
        .try_lock(key)
        .await
        .unwrap()
        .expect("try_lock succeeds once redis-py released");
    guard.release().await.unwrap();

    // We hold K: redis-py cannot take it, until we release.
    let key = "interop:we-hold";
    let guard = mutex.lock(key).await.unwrap();
    let mut py = Python::spawn(PY_TRY_TWICE, &server, key);
    assert_eq!(
        py.line().await,
        "acquired=False",
        "redis-py must not get a key we hold"
    );
    let value: Option<String> = redis.get(key).await.unwrap();
    assert_eq!(
        value.as_deref(),
        Some(guard.token()),
        "our lock is untouched"
    );

    guard.release().await.unwrap();
    py.go_on().await;
    assert_eq!(
        py.line().await,
        "acquired=True",
        "redis-py gets the key after our release"
    );
    assert_eq!(py.line().await, "released");
    py.finish().await;
    let left: i64 = redis.exists(key).await.unwrap();
    assert_eq!(left, 0);
}

// ---- raw protocol --------------------------------------------------------------

async fn raw_set_nx(redis: &Client, key: &str, value: &str) -> bool {
    let reply: Option<String> = redis
        .set(
            key,
            value,
            Some(Expiration::PX(5000)),
            Some(SetOptions::NX),
            false,
        )
        .await
        .unwrap();
    reply.is_some()
}

#[tokio::test]
async fn a_raw_set_nx_holder_excludes_our_try_lock() {
    let server = RedisServer::start();
    let redis = server.client().await;
    let mutex = DistributedMutex::new(server.client().await);
    let key = "interop:raw-holds";

    assert!(raw_set_nx(&redis, key, "othertoken").await);
    assert!(
        mutex.try_lock(key).await.unwrap().is_none(),
        "a foreign SET NX holder must exclude try_lock"
    );
    let value: Option<String> = redis.get(key).await.unwrap();
    assert_eq!(value.as_deref(), Some("othertoken"));
    let pttl: i64 = redis.pttl(key).await.unwrap();
    assert!(
        pttl > 0 && pttl <= 5000,
        "the foreign lease is not refreshed by us: PTTL {pttl}"
    );

    // Once the foreign holder deletes its key, we get it.
    let _: i64 = redis.del(key).await.unwrap();
    let guard = mutex.try_lock(key).await.unwrap().expect("free again");
    guard.release().await.unwrap();
}

#[tokio::test]
async fn our_lock_makes_a_raw_set_nx_fail() {
    let server = RedisServer::start();
    let redis = server.client().await;
    let mutex = DistributedMutex::new(server.client().await);
    let key = "interop:we-hold-raw";

    let guard = mutex.lock(key).await.unwrap();
    assert!(
        !raw_set_nx(&redis, key, "x").await,
        "SET NX by another client must return nil while we hold the key"
    );
    let value: Option<String> = redis.get(key).await.unwrap();
    assert_eq!(value.as_deref(), Some(guard.token()));

    guard.release().await.unwrap();
    assert!(
        raw_set_nx(&redis, key, "x").await,
        "the key is free for other clients after our release"
    );
}

#[tokio::test]
async fn our_release_and_extend_leave_a_foreign_token_untouched() {
    let server = RedisServer::start();
    let redis = server.client().await;
    let mutex = DistributedMutex::new(server.client().await);
    let key = "interop:foreign-took-over";

    // Our lease runs out and another client takes the key.
    let guard = mutex
        .acquire(key)
        .ttl(Duration::from_millis(100))
        .auto_renew(false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        raw_set_nx(&redis, key, "othertoken").await,
        "our 100 ms lease has run out"
    );

    let extended = guard.extend(Duration::from_secs(10)).await;
    assert!(
        matches!(extended, Err(Error::NotHeld { ref key, .. }) if key == "interop:foreign-took-over"),
        "extend of a lost lock must report NotHeld, got {extended:?}"
    );
    let released = guard.release().await;
    assert!(
        matches!(released, Err(Error::NotHeld { .. })),
        "release of a lost lock must report NotHeld, got {released:?}"
    );

    let value: Option<String> = redis.get(key).await.unwrap();
    assert_eq!(
        value.as_deref(),
        Some("othertoken"),
        "the foreign lock must be untouched"
    );
    let pttl: i64 = redis.pttl(key).await.unwrap();
    assert!(
        pttl > 0 && pttl <= 5000,
        "its lease must not have been extended: PTTL {pttl}"
    );

    // A dropped guard whose lock was taken over releases nothing either.
    let _: i64 = redis.del(key).await.unwrap();
    let guard = mutex
        .acquire(key)
        .ttl(Duration::from_millis(100))
        .auto_renew(false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(raw_set_nx(&redis, key, "othertoken-2").await);
    drop(guard);
    mutex.shutdown().await;
    let value: Option<String> = redis.get(key).await.unwrap();
    assert_eq!(value.as_deref(), Some("othertoken-2"));
}
