//! Quick start: two "processes" (two independent mutexes, each with its own
//! Redis connection) take turns on one lock.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart
//! ```
//!
//! `REDIS_URL` defaults to `redis://127.0.0.1:6379`; `RUST_LOG` (default
//! `info`) sets what the library logs, e.g. `RUST_LOG=distributed_mutex=debug`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, Error, RetryStrategy};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    match run(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart failed: {e}");
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

type BoxError = Box<dyn std::error::Error>;

async fn run(url: &str) -> Result<(), BoxError> {
    let started = Instant::now();
    let key = format!("quickstart:{}", std::process::id());

    // Two independent mutexes, each with its own connection: two processes.
    let a = DistributedMutex::connect(url).await?;
    let b = DistributedMutex::connect(url).await?;
    println!("connected two clients, A and B, to {url}");

    let guard = a.lock(&key).await?;
    println!(
        "A holds `{}` (token {}), for at least {:?} more",
        guard.key(),
        guard.token(),
        guard.remaining()
    );

    match b.try_lock(&key).await? {
        None => println!("B tried once: the lock is busy (try_lock returned None)"),
        Some(_) => return Err("B got the lock while A held it".into()),
    }

    match b
        .acquire(&key)
        .retry(RetryStrategy::linear(Duration::from_millis(100), 3))
        .await
    {
        Err(Error::NotObtained {
            attempts, waited, ..
        }) => println!(
            "B tried {attempts} times over {waited:.0?} (every 100 ms) and gave up: A still \
             holds it"
        ),
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("B got the lock while A held it".into()),
    }

    guard.release().await?;
    println!("A released the lock");

    let guard = match b.try_lock(&key).await? {
        Some(guard) => guard,
        None => return Err("B could not take the lock after A released it".into()),
    };
    println!(
        "B now holds `{}` (token {}), for at least {:?} more",
        guard.key(),
        guard.token(),
        guard.remaining()
    );
    guard.release().await?;
    println!("B released the lock");

    a.shutdown().await;
    b.shutdown().await;
    println!("done in {:.0?}", started.elapsed());
    Ok(())
}
