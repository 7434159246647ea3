//! Group commit of first attempts and releases on one server: attempts and
//! releases that arrive together go out as one script call each, and every
//! lock still has exactly one holder, its own token in Redis, and nothing
//! left behind when its acquisition is cancelled.
//!
//! * `first_attempts_that_arrive_together_go_out_as_few_calls`: 64 tasks
//!   take 64 keys at once; every key holds its guard's token, and the 64
//!   `SET NX`s ran inside a handful of script calls, not 64 commands.
//! * `batched_first_attempts_on_one_key_give_one_holder`: 64 tasks try one
//!   key at once: exactly one holds it, and Redis has its token.
//! * `concurrent_acquisitions_cancelled_at_random_points_leave_no_lock_behind`:
//!   64 tasks, each dropping its acquisitions after a random number of
//!   scheduler turns (inside a batch, before or after it went out): no lock
//!   left once the mutex is shut down.
//! * `releases_that_arrive_together_go_out_as_few_calls`: 64 guards
//!   released at once: every key gone, in a handful of script calls.

use std::sync::Arc;

use distributed_mutex::DistributedMutex;
use fred::prelude::*;
use tokio::sync::Barrier;

use crate::support::common::{command_calls, redis_keys, reset_stats, Fixture};

const TASKS: usize = 64;

/// Takes (and releases) 64 locks at once, so that the batch script is loaded
/// and the calls after it are grouped.
async fn warm_up(mutex: &DistributedMutex) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let mutex = mutex.clone();
            tokio::spawn(async move {
                let guard = mutex.lock(format!("gc:warm:{i}")).await.unwrap();
                guard.release().await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_attempts_that_arrive_together_go_out_as_few_calls() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    warm_up(&mutex).await;
    reset_stats(&server);

    let barrier = Arc::new(Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let (mutex, barrier) = (mutex.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                mutex.try_lock(format!("gc:key:{i}")).await.unwrap()
            })
        })
        .collect();
    let mut guards = Vec::new();
    for task in tasks {
        guards.push(task.await.unwrap().expect("a free key is taken"));
    }
    let sets = command_calls(&server, "set");
    let calls = command_calls(&server, "evalsha");
    for guard in &guards {
        let held: Option<String> = raw.get(guard.key()).await.unwrap();
        assert_eq!(held.as_deref(), Some(guard.token()), "{}", guard.key());
    }
    assert_eq!(sets, TASKS as u64, "one SET NX per lock");
    // Not one command per lock: the SETs ran inside script calls (one per
    // batch; a lone attempt is a plain SET, counted above too).
    assert!(
        calls >= 1 && calls <= (TASKS / 4) as u64,
        "{calls} script calls for {TASKS} first attempts"
    );
    eprintln!("{TASKS} first attempts: {calls} script calls");
    drop(guards);
    mutex.shutdown().await;
    assert!(redis_keys(&server, "gc:*").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_first_attempts_on_one_key_give_one_holder() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    warm_up(&mutex).await;
    for round in 0..20 {
        let barrier = Arc::new(Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (mutex, barrier) = (mutex.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    mutex.try_lock("gc:one").await.unwrap()
                })
            })
            .collect();
        let mut holders = Vec::new();
        for task in tasks {
            holders.extend(task.await.unwrap());
        }
        assert_eq!(holders.len(), 1, "round {round}: {} holders", holders.len());
        let held: Option<String> = raw.get("gc:one").await.unwrap();
        assert_eq!(held.as_deref(), Some(holders[0].token()), "round {round}");
        holders.pop().unwrap().release().await.unwrap();
    }
    mutex.shutdown().await;
    assert!(redis_keys(&server, "gc:*").is_empty());
}

/// Resolves after yielding to the scheduler `n` times.
async fn yields(n: u64) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquisitions_cancelled_at_random_points_leave_no_lock_behind() {
    let Fixture {
        server,
        raw: _,
        mutex,
    } = Fixture::start().await;
    warm_up(&mutex).await;
    let tasks: Vec<_> = (0..TASKS as u64)
        .map(|t| {
            let mutex = mutex.clone();
            tokio::spawn(async move {
                let (mut taken, mut cancelled) = (0, 0);
                for i in 0..40u64 {
                    let key = format!("gc:cancel:{}", (t + i) % 16);
                    tokio::select! {
                        biased;
                        result = mutex.lock(key) => {
                            drop(result.unwrap());
                            taken += 1;
                        }
                        () = yields((t * 7 + i * 13) % 12) => cancelled += 1,
                    }
                }
                (taken, cancelled)
            })
        })
        .collect();
    let (mut taken, mut cancelled) = (0, 0);
    for task in tasks {
        let (t, c) = task.await.unwrap();
        taken += t;
        cancelled += c;
    }
    mutex.shutdown().await;
    let left = redis_keys(&server, "*");
    assert!(left.is_empty(), "locks left behind: {left:?}");
    assert!(
        taken > 0 && cancelled > 0,
        "taken {taken}, cancelled {cancelled}"
    );
    eprintln!("taken {taken}, cancelled {cancelled}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_that_arrive_together_go_out_as_few_calls() {
    let Fixture { server, raw, mutex } = Fixture::start().await;
    warm_up(&mutex).await;
    let mut guards = Vec::new();
    for i in 0..TASKS {
        guards.push(mutex.lock(format!("gc:rel:{i}")).await.unwrap());
    }
    reset_stats(&server);
    let barrier = Arc::new(Barrier::new(TASKS));
    let tasks: Vec<_> = guards
        .into_iter()
        .map(|guard| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                guard.release().await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("released while held");
    }
    let calls = command_calls(&server, "evalsha");
    let deletions = command_calls(&server, "del");
    assert_eq!(deletions, TASKS as u64, "one DEL per lock");
    assert!(
        calls >= 1 && calls <= (TASKS / 4) as u64,
        "{calls} script calls for {TASKS} releases"
    );
    let left: u64 = raw
        .exists(
            (0..TASKS)
                .map(|i| format!("gc:rel:{i}"))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    assert_eq!(left, 0);
    eprintln!("{TASKS} releases: {calls} script calls");
    mutex.shutdown().await;
}
