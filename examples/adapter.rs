//! The fire-and-forget `Adapter` shim, for code ported from the Go package
//! (`Acquire`/`Acquiref`/`Release`/`Releasef`): nothing is returned, every
//! outcome goes to the logs. The subscriber below shows the crate's debug
//! logs, so each step's outcome is visible.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example adapter
//! ```
//!
//! `REDIS_URL` defaults to `redis://127.0.0.1:6379`; `RUST_LOG` defaults to
//! `info,distributed_mutex=debug`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use distributed_mutex::{provide_adapter, Adapter};
use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::{Config, ReconnectPolicy};
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,distributed_mutex=debug".into()),
        )
        .init();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());

    // The application's own fred client, as a legacy service already has one.
    let client = match connect(&url).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("cannot reach Redis at {url}: {e}");
            eprintln!("start a server (redis-server) or point REDIS_URL at one");
            return ExitCode::FAILURE;
        }
    };
    let result = run(client.clone()).await;
    let _ = client.quit().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("adapter example failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A fred client with a reconnect policy and timeouts (fred has neither by
/// default); fails at once when the server cannot be reached.
async fn connect(url: &str) -> Result<Client, fred::error::Error> {
    let client = fred::types::Builder::from_config(Config::from_url(url)?)
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2))
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()?;
    client.init().await?;
    Ok(client)
}

async fn run(client: Client) -> Result<(), BoxError> {
    // What a dependency-injection container would hand out.
    let locks: Arc<dyn Adapter> = provide_adapter(client.clone());
    let tenant = std::process::id();
    let key = format!("tenant:{tenant}:settings");

    println!("1. acquiref(\"tenant:{{}}:settings\", {tenant}): the call returns nothing");
    locks
        .acquiref(format_args!("tenant:{}:settings", tenant))
        .await;
    let token: Option<String> = client.get(&key).await?;
    match &token {
        Some(token) => println!("   Redis now has `{key}` = {token} (the lock's token)"),
        None => return Err(format!("`{key}` is not set after acquiref").into()),
    }

    println!("2. doing the tenant's work under the lock");
    tokio::time::sleep(Duration::from_millis(50)).await;

    println!(
        "3. a second acquire of the same key, with a 300 ms deadline (the Go context): it waits \
         for the holder, then gives up; the error is logged"
    );
    let waited = tokio::time::timeout(Duration::from_millis(300), locks.acquire(&key)).await;
    if waited.is_ok() {
        return Err("the second acquire returned while the lock was held".into());
    }

    println!("4. releasef(\"tenant:{{}}:settings\", {tenant})");
    locks
        .releasef(format_args!("tenant:{}:settings", tenant))
        .await;
    let exists: i64 = client.exists(&key).await?;
    if exists != 0 {
        return Err(format!("`{key}` is still set after releasef").into());
    }
    println!("   `{key}` is gone from Redis");

    let other = format!("tenant:{tenant}:billing");
    println!(
        "5. release(\"{other}\"), a lock this adapter never took: nothing happens in Redis, a \
         warning is logged"
    );
    locks.release(&other).await;

    println!("done");
    Ok(())
}
