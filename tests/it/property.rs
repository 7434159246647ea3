//! Property test: random interleavings of lock, try_lock, extend, release,
//! drop and sleep by several tasks across two `DistributedMutex` instances
//! (two "processes", each with its own connection) over a few keys, against a
//! local redis-server. The machinery and the invariants are in
//! `tests/support/exclusion.rs` (shared with the container suite).

use std::sync::atomic::Ordering;

use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use crate::support::exclusion::{run_case, scenario, Totals};
use crate::support::RedisServer;

#[test]
fn random_operations_keep_mutual_exclusion_across_two_processes() {
    let server = RedisServer::start();
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let totals = Totals::default();

    let mut runner = TestRunner::new(ProptestConfig {
        cases: 32,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&scenario(), |scenario| {
        runtime.block_on(run_case(&url, "prop:lock:", scenario, &totals))
    });
    if let Err(e) = result {
        panic!("{e}");
    }

    let sections = totals.sections.load(Ordering::Relaxed);
    let not_obtained = totals.not_obtained.load(Ordering::Relaxed);
    eprintln!("32 cases: {sections} critical sections, {not_obtained} attempts not obtained");
    // With 32 cases of 3-4 tasks doing 5-15 operations, a third of them lock
    // attempts, locks must actually have been taken and contended.
    assert!(
        sections >= 32,
        "only {sections} critical sections were entered"
    );
}
