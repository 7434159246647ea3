//! Leader election: three replicas campaign for one periodic task; one
//! leads at a time, hands over at once when it resigns, and an observer
//! follows every change.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example leader
//! ```
//!
//! Each replica is a mutex of its own (its own connection, as separate
//! processes would have). A replica leads for a few "ticks" of its task,
//! passing its term to the work as a fencing token, then resigns; the next
//! campaigner leads within milliseconds. `REDIS_URL` defaults to
//! `redis://127.0.0.1:6379`. Exits with status 0 when every replica led once
//! with strictly increasing terms.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, Error, Leadership};

const REPLICAS: usize = 3;
const NAME: &str = "example:leader";

/// The periodic task, done only by the leader, tagged with its term.
async fn tick(leadership: &Leadership, n: u32) {
    println!(
        "  {} (term {}) runs tick {n}",
        leadership.value(),
        leadership.term()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One replica: campaign, lead for three ticks (or until the lead is lost),
/// resign. Returns its term.
async fn replica(url: String, id: usize) -> Result<u64, Error> {
    let mutex = DistributedMutex::connect(&url).await?;
    let election = mutex.election(NAME).ttl(Duration::from_secs(10));
    let asked = Instant::now();
    let leadership = election.campaign(format!("replica-{id}")).await?;
    println!(
        "replica-{id} leads (term {}) after waiting {:?}",
        leadership.term(),
        asked.elapsed()
    );
    let term = leadership.term();
    for n in 1..=3 {
        tokio::select! {
            reason = leadership.lost() => {
                println!("replica-{id} lost the lead: {reason}");
                return Ok(term);
            }
            () = tick(&leadership, n) => {}
        }
    }
    leadership.resign().await?;
    mutex.shutdown().await;
    Ok(term)
}

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let observer = match DistributedMutex::connect(&url).await {
        Ok(mutex) => mutex,
        Err(e) => {
            eprintln!("cannot connect to {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut leaders = match observer.election(NAME).observe() {
        Ok(receiver) => receiver,
        Err(e) => {
            eprintln!("cannot observe: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(async move {
        while leaders.changed().await.is_ok() {
            match &*leaders.borrow_and_update() {
                Some(l) => println!("[observer] leader {} (term {})", l.value, l.term),
                None => println!("[observer] no leader"),
            }
        }
    });
    let replicas: Vec<_> = (0..REPLICAS)
        .map(|id| tokio::spawn(replica(url.clone(), id)))
        .collect();
    let mut terms = Vec::new();
    for task in replicas {
        match task.await {
            Ok(Ok(term)) => terms.push(term),
            Ok(Err(e)) => {
                eprintln!("a replica failed: {e}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("a replica panicked: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    terms.sort_unstable();
    terms.dedup();
    if terms.len() == REPLICAS {
        println!("every replica led once, terms {terms:?}");
        ExitCode::SUCCESS
    } else {
        eprintln!("terms were reused: {terms:?}");
        ExitCode::FAILURE
    }
}
