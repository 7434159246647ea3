//! Job de-duplication: four workers on two mutexes (two "processes" with their
//! own connections) race over the same 20 jobs; each job runs exactly once.
//!
//! A worker goes through the whole list; for each job it `try_lock`s the job's
//! key. If it gets the lock and the job's "done" marker is not set yet, it does
//! the work, sets the marker, then releases. A worker that finds the lock busy
//! skips the job: the holder is doing it (or has seen it done). The marker
//! makes a job finished by one worker a no-op for a worker that takes its lock
//! afterwards.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example job_dedup
//! ```
//!
//! `REDIS_URL` defaults to `redis://127.0.0.1:6379`; `RUST_LOG` defaults to
//! `info`. Exits with status 1 unless exactly 20 jobs ran. Deletes the keys it
//! created at the end.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use distributed_mutex::DistributedMutex;
use fred::interfaces::KeysInterface;
use fred::types::Expiration;
use tracing_subscriber::EnvFilter;

const JOBS: usize = 20;
const WORKERS: usize = 4;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());

    // Two independent mutexes with their own connections: two processes.
    let mut mutexes = Vec::new();
    for _ in 0..2 {
        match DistributedMutex::connect(&url).await {
            Ok(m) => mutexes.push(m),
            Err(e) => {
                eprintln!("cannot reach Redis at {url}: {e}");
                eprintln!("start a server (redis-server) or point REDIS_URL at one");
                return ExitCode::FAILURE;
            }
        }
    }
    match run(&mutexes).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("job_dedup failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Keys of one run.
#[derive(Clone)]
struct Keys {
    run: String,
}

impl Keys {
    fn lock(&self, job: usize) -> String {
        format!("job:{}:{job}", self.run)
    }
    fn done(&self, job: usize) -> String {
        format!("done:{}:{job}", self.run)
    }
    fn counter(&self) -> String {
        format!("processed:{}", self.run)
    }
}

async fn run(mutexes: &[DistributedMutex]) -> Result<bool, BoxError> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let keys = Keys {
        run: format!("{}-{nanos}", std::process::id()),
    };
    println!(
        "run {}: {WORKERS} workers on {} connections race over {JOBS} jobs",
        keys.run,
        mutexes.len()
    );

    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let mutex = mutexes[w % mutexes.len()].clone();
        let keys = keys.clone();
        workers.push(tokio::spawn(async move { worker(w, &mutex, &keys).await }));
    }
    let mut counts = Vec::new();
    let mut failure = None;
    for (w, handle) in workers.into_iter().enumerate() {
        match handle.await {
            Ok(Ok(tally)) => counts.push(tally),
            Ok(Err(e)) => {
                failure.get_or_insert(format!("worker {w} failed: {e}"));
                counts.push(Tally::default());
            }
            Err(e) => {
                failure.get_or_insert(format!("worker {w} panicked: {e}"));
                counts.push(Tally::default());
            }
        }
    }
    for m in mutexes {
        m.shutdown().await; // releases queued by dropped guards, if any
    }

    let client = mutexes[0].client();
    let counted: Option<i64> = client.get(keys.counter()).await?;
    let counted = counted.unwrap_or(0);
    let total: usize = counts.iter().map(|t| t.ran).sum();
    for (w, t) in counts.iter().enumerate() {
        println!(
            "worker {w} (connection {}): ran {} jobs; skipped {} whose lock was busy and {} \
             already done",
            w % mutexes.len(),
            t.ran,
            t.busy,
            t.already_done
        );
    }
    println!("total: {total} jobs run by the workers, {counted} counted in Redis");

    // Clean up what this run created: markers, counter (and any lock left).
    let mut created: Vec<String> = (0..JOBS).map(|n| keys.done(n)).collect();
    created.extend((0..JOBS).map(|n| keys.lock(n)));
    created.push(keys.counter());
    let _: i64 = client.del(created).await?;
    println!("deleted this run's keys");

    if let Some(failure) = failure {
        return Err(failure.into());
    }
    if total == JOBS && counted == JOBS as i64 {
        println!("every job ran exactly once");
        Ok(true)
    } else {
        eprintln!("expected each of the {JOBS} jobs to run exactly once");
        Ok(false)
    }
}

/// What one worker did.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Jobs it ran.
    ran: usize,
    /// Jobs whose lock another worker held when it tried.
    busy: usize,
    /// Jobs it locked but found already done.
    already_done: usize,
}

/// Goes through all jobs: the first half of the workers from the first job
/// up, the others from the last job down, so that every job is contended
/// (across both connections: worker `w` uses connection `w % 2`).
async fn worker(w: usize, mutex: &DistributedMutex, keys: &Keys) -> Result<Tally, BoxError> {
    let client = mutex.client();
    let mut tally = Tally::default();
    for i in 0..JOBS {
        let job = if w < WORKERS / 2 { i } else { JOBS - 1 - i };
        let Some(guard) = mutex.try_lock(keys.lock(job)).await? else {
            tally.busy += 1;
            tracing::debug!(worker = w, job, "busy: another worker has it");
            continue;
        };
        let done: i64 = client.exists(keys.done(job)).await?;
        if done == 0 {
            // The work itself.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let _: i64 = client.incr(keys.counter()).await?;
            let _: () = client
                .set(
                    keys.done(job),
                    w as i64,
                    Some(Expiration::EX(3600)),
                    None,
                    false,
                )
                .await?;
            tally.ran += 1;
            tracing::info!(worker = w, job, "ran job");
        } else {
            tally.already_done += 1;
        }
        // Error::NotHeld here would mean the lease (60 s) ran out mid-job and
        // another worker may have run it too: report it, never hide it.
        guard.release().await?;
    }
    Ok(tally)
}
