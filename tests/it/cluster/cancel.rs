//! Cancel safety on a cluster: acquisitions of keys on every master,
//! dropped at any point (before their command is sent, in flight, in a
//! backoff, right after success), leave no lock on any master once the
//! mutex has been shut down.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use distributed_mutex::RetryStrategy;

use super::keys_on_masters;
use crate::cancel::Outcomes;
use crate::support::cluster::{RedisCluster, MASTERS};
use crate::support::common::{builder_at, ms, mutex_at};

/// 300 acquisitions of distinct keys spread over the masters, each under a
/// budget from 0 to 3 ms (every tenth dropped after its first poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquisitions_cancelled_at_random_points_leave_no_lock_on_any_master() {
    let cluster = RedisCluster::start();
    let mutex = mutex_at(&cluster.url()).await;
    let keys: Vec<Vec<String>> = (0..MASTERS)
        .map(|i| cluster.keys_on_master(i, "cluster:cancel:", 100))
        .collect();

    let mut outcomes = Outcomes::default();
    for i in 0..300u64 {
        let key = &keys[i as usize % MASTERS][i as usize / MASTERS];
        outcomes.run(i, mutex.lock(key)).await;
    }
    mutex.shutdown().await;

    let left = keys_on_masters(&cluster, "cluster:cancel:*");
    assert!(
        left.is_empty(),
        "locks left behind: {left:?} ({outcomes:?})"
    );
    assert_eq!(outcomes.failed, 0, "{outcomes:?}");
    assert!(outcomes.cancelled > 0, "{outcomes:?}");
    assert!(outcomes.acquired > 0, "{outcomes:?}");
    eprintln!("cluster, distinct keys: {outcomes:?}");
}

/// A rival takes one key per master again and again while another mutex's
/// acquisitions of the same keys are cancelled at random points; the
/// rival's own release never finds its key taken or deleted, and nothing is
/// left once both are shut down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquisitions_under_contention_leave_no_lock_on_any_master() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let fast = RetryStrategy::linear(ms(1), 10_000);
    let waiter = builder_at(&url).await.retry(fast).build().unwrap();
    let rival = builder_at(&url).await.retry(fast).build().unwrap();
    let keys: Vec<String> = (0..MASTERS)
        .map(|i| cluster.key_on_master(i, "cluster:contended:"))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let mut holders = Vec::new();
    for key in keys.clone() {
        let (rival, stop, rounds) = (rival.clone(), stop.clone(), rounds.clone());
        holders.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let guard = rival.lock(&key).await.unwrap();
                tokio::time::sleep(ms(1)).await;
                // Nobody else may have taken or deleted it meanwhile.
                guard.release().await.unwrap();
                rounds.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        }));
    }

    let mut outcomes = Outcomes::default();
    for i in 0..300u64 {
        outcomes
            .run(i, waiter.lock(&keys[i as usize % MASTERS]))
            .await;
    }
    stop.store(true, Ordering::SeqCst);
    for holder in holders {
        holder
            .await
            .expect("the rival's lock was taken or released by someone else");
    }
    waiter.shutdown().await;
    rival.shutdown().await;

    let left = keys_on_masters(&cluster, "cluster:contended:*");
    assert!(
        left.is_empty(),
        "locks left behind: {left:?} ({outcomes:?})"
    );
    assert_eq!(outcomes.failed, 0, "{outcomes:?}");
    assert!(outcomes.cancelled > 0, "{outcomes:?}");
    let rounds = rounds.load(Ordering::SeqCst);
    assert!(rounds > 0, "no contention");
    eprintln!("cluster, contention: {outcomes:?}, rival rounds {rounds}");
}
