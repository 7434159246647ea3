//! Soak run: mixed lock traffic for a given time, then a report.
//!
//! ```sh
//! EXAMPLE=soak scripts/quickstart --secs 600          # private server
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example soak -- --secs 60
//! ```
//!
//! Options: `--secs N` (default 60), `--workers N` (default 16), `--keys N`
//! (default 8). Workers spread over two mutex instances (two connections, as
//! two processes would) take locks on a small key set with a mix of `lock`,
//! `try_lock`, `with_lock`, fencing, `extend`, explicit release and drop, and
//! check mutual exclusion with a non-atomic Redis-side counter per key.
//!
//! Prints acquisitions, errors by kind, RSS at start and end, and the lock keys
//! left in Redis after shutdown (must be zero). Exits 1 on any exclusion
//! violation or leftover key.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, Error, RetryStrategy};
use fred::prelude::*;

struct Stats {
    acquired: AtomicU64,
    busy: AtomicU64,
    violations: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn error(&self, e: &Error) {
        let kind = format!("{e:?}");
        let kind = kind.split([' ', '{', '(']).next().unwrap_or("?").to_owned();
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The critical section: a non-atomic read-modify-write of a per-key counter
/// that must read 0 on entry. A second holder inside would see 1.
async fn critical_section(raw: &Client, key: &str, stats: &Stats) -> Result<(), Error> {
    let counter = format!("soak:count:{key}");
    let before: i64 = raw
        .get::<Option<i64>, _>(&counter)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    if before != 0 {
        stats.violations.fetch_add(1, Ordering::Relaxed);
    }
    let _: () = raw
        .set(&counter, before + 1, None, None, false)
        .await
        .unwrap_or(());
    tokio::time::sleep(Duration::from_micros(500)).await;
    let now: i64 = raw
        .get::<Option<i64>, _>(&counter)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    let _: () = raw
        .set(&counter, now - 1, None, None, false)
        .await
        .unwrap_or(());
    Ok(())
}

async fn worker(
    id: u64,
    mutex: DistributedMutex,
    raw: Client,
    keys: u64,
    until: Instant,
    stats: Arc<Stats>,
) {
    let mut n = id;
    while Instant::now() < until {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let key = format!("soak:lock:{}", (n >> 33) % keys);
        let op = (n >> 20) % 6;
        let result: Result<(), Error> = async {
            match op {
                0 => match mutex.try_lock(&key).await {
                    Ok(Some(guard)) => {
                        stats.acquired.fetch_add(1, Ordering::Relaxed);
                        let r = critical_section(&raw, &key, &stats).await;
                        drop(guard);
                        r
                    }
                    Ok(None) => {
                        stats.busy.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                1 => {
                    let r = mutex
                        .with_lock(&key, |_lease| critical_section(&raw, &key, &stats))
                        .await;
                    if r.is_ok() {
                        stats.acquired.fetch_add(1, Ordering::Relaxed);
                    }
                    r.and_then(|inner| inner)
                }
                2 => match mutex.acquire(&key).fencing().await {
                    Ok(guard) => {
                        stats.acquired.fetch_add(1, Ordering::Relaxed);
                        critical_section(&raw, &key, &stats).await?;
                        guard.release().await
                    }
                    Err(e) => Err(e),
                },
                3 => match mutex.lock(&key).await {
                    Ok(guard) => {
                        stats.acquired.fetch_add(1, Ordering::Relaxed);
                        critical_section(&raw, &key, &stats).await?;
                        guard.extend(Duration::from_secs(5)).await?;
                        critical_section(&raw, &key, &stats).await?;
                        guard.release().await
                    }
                    Err(e) => Err(e),
                },
                _ => match mutex.lock(&key).await {
                    Ok(guard) => {
                        stats.acquired.fetch_add(1, Ordering::Relaxed);
                        let r = critical_section(&raw, &key, &stats).await;
                        drop(guard); // released in the background
                        r
                    }
                    Err(e) => Err(e),
                },
            }
        }
        .await;
        match result {
            Ok(()) => {}
            Err(Error::NotObtained { .. }) => {
                stats.busy.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => stats.error(&e),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let secs = arg("--secs", 60);
    let workers = arg("--workers", 16);
    let keys = arg("--keys", 8).max(1);

    let connect = || async {
        let m = DistributedMutex::connect(&url).await?;
        DistributedMutex::builder(m.client().clone())
            .ttl(Duration::from_secs(5))
            .retry(RetryStrategy::exponential(
                Duration::from_millis(1),
                Duration::from_millis(50),
                200,
            ))
            .build()
    };
    let (a, b) = match (connect().await, connect().await) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("soak: cannot reach Redis at {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let raw = a.client().clone();

    let rss_start = rss_kib();
    let stats = Arc::new(Stats {
        acquired: AtomicU64::new(0),
        busy: AtomicU64::new(0),
        violations: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
    });
    println!("soak: {workers} workers, {keys} keys, 2 mutex instances, {secs} s against {url}");
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for id in 0..workers {
        let mutex = if id % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(worker(
            id + 1,
            mutex,
            raw.clone(),
            keys,
            until,
            Arc::clone(&stats),
        )));
    }
    let progress = {
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                println!(
                    "  {:>5.0} s: {} acquisitions, RSS {} KiB",
                    started.elapsed().as_secs_f64(),
                    stats.acquired.load(Ordering::Relaxed),
                    rss_kib()
                );
            }
        })
    };
    for task in tasks {
        let _ = task.await;
    }
    progress.abort();
    let elapsed = started.elapsed();
    a.shutdown().await;
    b.shutdown().await;

    let mut left: Vec<String> = Vec::new();
    let mut cursor = "0".to_owned();
    loop {
        let (next, batch): (String, Vec<String>) = raw
            .custom(
                fred::cmd!("SCAN"),
                vec![
                    cursor.clone(),
                    "MATCH".into(),
                    "soak:lock:*".into(),
                    "COUNT".into(),
                    "1000".into(),
                ],
            )
            .await
            .unwrap_or(("0".into(), Vec::new()));
        left.extend(batch.into_iter().filter(|k| !k.ends_with(":fence")));
        if next == "0" {
            break;
        }
        cursor = next;
    }
    // Clean up the counters and fencing counters this run made.
    for k in 0..keys {
        let _: Result<i64, _> = raw
            .del(vec![
                format!("soak:count:soak:lock:{k}"),
                format!("{{soak:lock:{k}}}:fence"),
            ])
            .await;
    }

    let acquired = stats.acquired.load(Ordering::Relaxed);
    let violations = stats.violations.load(Ordering::Relaxed);
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| duration | {:.1} s |", elapsed.as_secs_f64());
    println!(
        "| acquisitions | {acquired} ({:.0}/s) |",
        acquired as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| busy (not obtained / try_lock none) | {} |",
        stats.busy.load(Ordering::Relaxed)
    );
    let errors = stats.errors.lock().unwrap().clone();
    if errors.is_empty() {
        println!("| errors | 0 |");
    }
    for (kind, n) in &errors {
        println!("| errors: {kind} | {n} |");
    }
    println!("| mutual-exclusion violations | {violations} |");
    println!("| RSS start / end | {rss_start} KiB / {} KiB |", rss_kib());
    println!("| lock keys left after shutdown | {} |", left.len());
    if violations > 0 || !left.is_empty() {
        eprintln!(
            "soak: FAILED ({violations} violations, {} keys left: {left:?})",
            left.len()
        );
        return ExitCode::FAILURE;
    }
    println!("soak: OK");
    ExitCode::SUCCESS
}
