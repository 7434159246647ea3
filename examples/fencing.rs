//! Fencing tokens: why a lease alone cannot stop a late write, and how the
//! resource can.
//!
//! Two "processes" (two mutexes, each with its own connection) write to one
//! resource under the same lock, taken with fencing tokens. Holder A takes the
//! lock with renewal off and then freezes (think of a long GC pause or a
//! stopped VM) for longer than its lease. The lease runs out, B takes the lock
//! (with a larger fencing token) and writes. Then A wakes up and, unaware,
//! writes late. The resource is a Redis hash updated by a Lua script that
//! remembers the largest fencing token it has seen and rejects a write with a
//! smaller one, so A's stale write is refused and B's value stays.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example fencing
//! ```
//!
//! `REDIS_URL` defaults to `redis://127.0.0.1:6379`; `RUST_LOG` defaults to
//! `warn`. Exits with status 0 when the stale write was rejected, 1 otherwise.
//! Deletes the keys it created at the end.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, Error, LockGuard, RetryStrategy};
use fred::clients::Client;
use fred::interfaces::{HashesInterface, KeysInterface};
use fred::types::scripts::Script;
use tokio::sync::oneshot;
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A's lease: it freezes for longer than this.
const LEASE: Duration = Duration::from_secs(1);
const FREEZE: Duration = Duration::from_secs(2);

/// The resource's write: accepted only with a fencing token at least as large
/// as every one seen before (equal: the same holder writing again).
///
/// KEYS[1]: the resource, a hash {token, value}
/// ARGV[1]: the writer's fencing token; ARGV[2]: the value
/// Returns {1, previous token} when written, {0, largest token seen} when not.
const GUARDED_WRITE: &str = r"
local seen = tonumber(redis.call('HGET', KEYS[1], 'token') or '0')
local token = tonumber(ARGV[1])
if token < seen then
  return {0, seen}
end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'value', ARGV[2])
return {1, seen}
";

/// A resource that checks fencing tokens, kept in Redis next to the lock.
#[derive(Clone)]
struct Resource {
    client: Client,
    key: String,
    script: Script,
}

impl Resource {
    /// `Ok(true)` when written, `Ok(false)` when rejected as stale.
    async fn write(&self, token: u64, value: &str) -> Result<(bool, u64), BoxError> {
        let reply: Vec<i64> = self
            .script
            .evalsha_with_reload(
                &self.client,
                self.key.as_str(),
                vec![token.to_string(), value.to_owned()],
            )
            .await?;
        match reply.as_slice() {
            [written, seen] => Ok((*written == 1, *seen as u64)),
            other => Err(format!("unexpected reply from the resource: {other:?}").into()),
        }
    }

    async fn value(&self) -> Result<Option<String>, BoxError> {
        Ok(self.client.hget(self.key.as_str(), "value").await?)
    }
}

/// Prints one line of the story, with the time since the start.
fn say(started: Instant, who: &str, what: impl std::fmt::Display) {
    println!(
        "[{:>5.2}s] {who:<8} {what}",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    match run(&url).await {
        Ok(true) => {
            println!("\nThe stale write was rejected: fencing tokens protected B's data.");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\nThe stale write was NOT rejected: B's data was overwritten.");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fencing example failed: {e}");
            if e.downcast_ref::<Error>().is_some_and(Error::is_transient) {
                eprintln!(
                    "is a Redis server running at {url}? Start one (redis-server) or point \
                     REDIS_URL at one."
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// Tells the story; `Ok(true)` when A's late write was rejected and B's value
/// stayed.
async fn run(url: &str) -> Result<bool, BoxError> {
    let pid = std::process::id();
    let lock_key = format!("fencing-example:{pid}:lock");
    let a = distributed_mutex::Builder::connect(url)
        .await?
        .fencing()
        .build()?;
    let b = distributed_mutex::Builder::connect(url)
        .await?
        .fencing()
        .retry(RetryStrategy::linear(Duration::from_millis(50), 200))
        .build()?;
    let resource = Resource {
        client: a.client().clone(),
        key: format!("fencing-example:{pid}:resource"),
        script: Script::from_lua(GUARDED_WRITE),
    };
    let started = Instant::now();
    say(
        started,
        "",
        format!(
            "A and B (two connections to {url}) share the lock `{lock_key}` and write to \
             the resource `{}`, which rejects writes with a fencing token smaller than the \
             largest it has seen.",
            resource.key
        ),
    );

    let result = story(started, &a, &b, &resource, &lock_key).await;

    // Clean up: the resource, the lock (already released) and its fencing
    // counter, which is never deleted by the library.
    let fence_counter = format!("{{{lock_key}}}:fence");
    let _: i64 = a
        .client()
        .del(vec![resource.key.clone(), lock_key.clone(), fence_counter])
        .await?;
    a.shutdown().await;
    b.shutdown().await;
    result
}

async fn story(
    started: Instant,
    a: &DistributedMutex,
    b: &DistributedMutex,
    resource: &Resource,
    lock_key: &str,
) -> Result<bool, BoxError> {
    // A takes the lock with a 1 s lease and no renewal, then writes.
    let a_guard = a.acquire(lock_key).ttl(LEASE).auto_renew(false).await?;
    let a_token = a_guard.fencing_token().ok_or("no fencing token")?;
    say(
        started,
        "A",
        format!("took the lock: fencing token {a_token}, lease {LEASE:?}, renewal off"),
    );
    let (written, _) = resource
        .write(a_token, &format!("written by A with token {a_token}"))
        .await?;
    say(
        started,
        "A",
        format!(
            "wrote with token {a_token}: {}",
            if written { "accepted" } else { "rejected" }
        ),
    );

    // B waits for the lock, writes, and holds on until A has tried its late
    // write; A freezes past its lease, then writes anyway.
    let (b_wrote_tx, b_wrote_rx) = oneshot::channel::<()>();
    let (a_done_tx, a_done_rx) = oneshot::channel::<()>();
    let b_task = {
        let b = b.clone();
        let resource = resource.clone();
        let lock_key = lock_key.to_owned();
        tokio::spawn(async move {
            say(started, "B", "waits for the lock");
            let guard = b.lock(&lock_key).await?;
            let token = guard.fencing_token().ok_or("no fencing token")?;
            say(
                started,
                "B",
                format!("took the lock: fencing token {token} (A's lease has run out)"),
            );
            let (written, _) = resource
                .write(token, &format!("written by B with token {token}"))
                .await?;
            say(
                started,
                "B",
                format!(
                    "wrote with token {token}: {}",
                    if written { "accepted" } else { "rejected" }
                ),
            );
            let _ = b_wrote_tx.send(());
            let _ = a_done_rx.await;
            guard.release().await?;
            say(started, "B", "released the lock");
            Ok::<bool, BoxError>(written)
        })
    };

    say(
        started,
        "A",
        format!("freezes for {FREEZE:?} (a GC pause, a stopped VM): longer than its lease"),
    );
    tokio::time::sleep(FREEZE).await;
    // On a very slow machine B may not have written yet: the story needs it.
    let _ = tokio::time::timeout(Duration::from_secs(10), b_wrote_rx).await;
    say(
        started,
        "A",
        format!(
            "wakes up; its guard would say the lock is lost ({}), but it is already \
             past its check and writes anyway",
            describe(&a_guard)
        ),
    );
    let (written, seen) = resource
        .write(a_token, &format!("LATE write by A with token {a_token}"))
        .await?;
    if written {
        say(
            started,
            "resource",
            format!("ACCEPTED A's late write with token {a_token}: B's data is lost"),
        );
    } else {
        say(
            started,
            "resource",
            format!(
                "REJECTED A's late write: token {a_token} is smaller than {seen}, the \
                 largest it has seen"
            ),
        );
    }
    match a_guard.release().await {
        Err(Error::NotHeld { .. }) => say(
            started,
            "A",
            "release() says NotHeld: the lease had run out under it",
        ),
        Ok(()) => say(
            started,
            "A",
            "released the lock (unexpected: it had expired)",
        ),
        Err(e) => return Err(e.into()),
    }
    let _ = a_done_tx.send(());
    let b_written = b_task.await??;

    let value = resource.value().await?;
    say(
        started,
        "resource",
        format!("now holds: {}", value.as_deref().unwrap_or("<nothing>")),
    );
    let b_value_stayed = value.is_some_and(|v| v.starts_with("written by B"));
    Ok(!written && b_written && b_value_stayed)
}

fn describe(guard: &LockGuard) -> String {
    if guard.is_lost() {
        format!("is_lost() = true, remaining() = {:?}", guard.remaining())
    } else {
        format!("remaining() = {:?}", guard.remaining())
    }
}
