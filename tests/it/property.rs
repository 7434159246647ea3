//! Property test: random interleavings of lock, try_lock, extend, release,
//! drop and sleep by several tasks across two `DistributedMutex` instances
//! (two "processes", each with its own connection) over a few keys, against a
//! local redis-server and against a local Redis Cluster (keys on every
//! master). The machinery and the invariants are in
//! `tests/support/exclusion.rs` (shared with the container suite).

use std::sync::atomic::Ordering;

use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use crate::support::cluster::{RedisCluster, MASTERS};
use crate::support::exclusion::{run_case_on, scenario, Totals, MAX_KEYS};
use crate::support::RedisServer;

#[test]
fn random_operations_keep_mutual_exclusion_across_two_processes() {
    let server = RedisServer::start();
    let prefix = "prop:lock:";
    let pool: Vec<String> = (0..MAX_KEYS).map(|k| format!("{prefix}{k}")).collect();
    check_cases(&server.url(), prefix, &pool, 32);
}

/// The same property on a cluster: the keys of a case are served by
/// different masters (key `k` by master `k % 3`).
#[test]
fn random_operations_keep_mutual_exclusion_on_a_cluster() {
    let cluster = RedisCluster::start();
    let prefix = "prop:cluster:";
    let per_master: Vec<Vec<String>> = (0..MASTERS)
        .map(|i| cluster.keys_on_master(i, prefix, MAX_KEYS))
        .collect();
    let pool: Vec<String> = (0..MAX_KEYS)
        .map(|k| per_master[k % MASTERS][k / MASTERS].clone())
        .collect();
    check_cases(&cluster.url(), prefix, &pool, 24);
}

/// Runs `cases` generated cases against `url` and checks that locks were
/// actually taken and contended.
fn check_cases(url: &str, prefix: &str, pool: &[String], cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let totals = Totals::default();

    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&scenario(), |scenario| {
        runtime.block_on(run_case_on(url, prefix, pool, scenario, &totals))
    });
    if let Err(e) = result {
        panic!("{e}");
    }

    let sections = totals.sections.load(Ordering::Relaxed);
    let not_obtained = totals.not_obtained.load(Ordering::Relaxed);
    eprintln!("{cases} cases: {sections} critical sections, {not_obtained} attempts not obtained");
    // With cases of 3-4 tasks doing 5-15 operations, a third of them lock
    // attempts, locks must actually have been taken and contended.
    assert!(
        sections >= cases as usize,
        "only {sections} critical sections were entered"
    );
}
