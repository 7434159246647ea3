//! The one runner every cell goes through: contenders over two "processes"
//! take, hold and release (or drop) the cell's primitive at random; a third
//! process holds it across the fault; the ledger judges every guard; then
//! the cell checks what Redis has left and that it contended.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distributed_mutex::Error;

use crate::support::proxy::Proxy;

use super::env::{Env, Fault, Topology};
use super::ledger::Ledger;
use super::prim::{acquire, Ask, Guard, Handle, Primitive};

/// Contention before the fault (the whole run without one).
const WARMUP: Duration = Duration::from_millis(700);
/// Contention after the fault.
const AFTER: Duration = Duration::from_millis(700);
/// The longest wait of one acquisition.
const WAIT: Duration = Duration::from_millis(500);
/// The fault's holder's wait for its guard.
const HOLDER_WAIT: Duration = Duration::from_secs(5);
/// Guards a cell must have obtained, and waits or refusals it must have
/// seen, not to count as vacuous.
const MIN_TAKEN: usize = 8;
const MIN_CONTENDED: usize = 2;

/// The lease of a cell's locks: long without a fault; shorter than the
/// pause (1.5 TTL) and than a cluster's or Sentinel's failure detection
/// (1 s) with one; a third of a second's renewal period otherwise.
fn ttl_of(fault: Fault) -> Duration {
    match fault {
        Fault::None => Duration::from_secs(2),
        Fault::Pause => Duration::from_millis(400),
        Fault::Kill | Fault::Cut | Fault::Failover => Duration::from_secs(1),
    }
}

/// What a cell found.
pub struct Report {
    pub cell: String,
    pub violations: Vec<String>,
    pub line: String,
}

/// Runs `cells` one after the other on one `topology`, started once;
/// panics, listing every violation, if any cell broke the property.
pub fn run_cells(topology: Topology, cells: &[(Primitive, Fault)]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let mut env = Env::start(topology);
    eprintln!("{}: started in {:.1?}", topology.name(), started.elapsed());
    let mut failures = Vec::new();
    for &(primitive, fault) in cells {
        let shard = env.prepare(fault);
        let report = runtime.block_on(run_cell(&mut env, primitive, fault, shard));
        eprintln!("{}", report.line);
        for v in &report.violations {
            eprintln!("  VIOLATION {v}");
        }
        if !report.violations.is_empty() {
            failures.push(format!("{}: {:#?}", report.cell, report.violations));
        }
        env.heal();
    }
    eprintln!(
        "{}: {} cells in {:.1?}",
        topology.name(),
        cells.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "cells that broke the property:\n{}",
        failures.join("\n")
    );
}

/// The interval in which a fault excuses a valid guard whose release found
/// its lease gone: from the fault's start to one TTL (and a second) after
/// its end.
type Window = Arc<Mutex<Option<(Instant, Instant)>>>;

fn in_window(window: &Window, at: Instant) -> bool {
    window
        .lock()
        .unwrap()
        .is_some_and(|(from, to)| from <= at && at <= to)
}

struct Cell {
    primitive: Primitive,
    names: Arc<Vec<String>>,
    ttl: Duration,
    ledger: Arc<Ledger>,
    window: Window,
}

/// Leaves a held guard and ends it (release, or drop when `drop_it`),
/// judging what it says about its lease.
async fn end(cell: &Cell, id: u64, guard: Guard, drop_it: bool) {
    let ledger = &cell.ledger;
    ledger.leave(id);
    let lost = guard.is_lost();
    let remaining = guard.remaining();
    if remaining > cell.ttl {
        ledger.violation(format!(
            "(2) guard {id} claims {remaining:?} left of a {:?} lease",
            cell.ttl
        ));
    }
    if lost {
        ledger.lost.fetch_add(1, Ordering::Relaxed);
        ledger.found_out(id);
    }
    if drop_it {
        drop(guard);
        return;
    }
    match guard.release().await {
        Ok(()) => {}
        Err(Error::NotHeld { .. }) => {
            ledger.found_out(id);
            if !lost {
                ledger.lost.fetch_add(1, Ordering::Relaxed);
            }
            // Valid with half its lease left, and yet Redis no longer had it:
            // it kept claiming a lock Redis did not have, and only a fault
            // (while it lasts, and one lease after) may explain that.
            if !lost && remaining > cell.ttl / 2 && !in_window(&cell.window, Instant::now()) {
                ledger.violation(format!(
                    "(2) guard {id} claimed {remaining:?} of its lease, yet its release found it gone (NotHeld), outside any fault"
                ));
            }
        }
        Err(e) if e.is_transient() => {
            ledger.transient.fetch_add(1, Ordering::Relaxed);
            ledger.found_out(id);
        }
        Err(e) => ledger.violation(format!("release of guard {id}: {e}")),
    }
}

/// One contender: acquisitions (a third of them one attempt) until `stop`.
async fn contender(cell: Arc<Cell>, handle: Handle, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let ledger = &cell.ledger;
    while !stop.load(Ordering::Relaxed) {
        let ask = Ask {
            once: rng.u8(..3) == 0,
            pick: rng.u64(..),
            wait: WAIT,
            ttl: cell.ttl,
        };
        let before = ledger.entered();
        match acquire(&handle, cell.primitive, &cell.names, ask).await {
            Ok(Some(guard)) => {
                ledger.taken.fetch_add(1, Ordering::Relaxed);
                // Another guard came and went while this one waited.
                if ledger.entered() > before && !ask.once {
                    ledger.waited.fetch_add(1, Ordering::Relaxed);
                }
                let id = ledger.id();
                ledger.enter(id, guard.claims(), guard.view());
                tokio::time::sleep(Duration::from_millis(rng.u64(5..30))).await;
                end(&cell, id, guard, rng.u8(..4) == 0).await;
            }
            Ok(None) => {
                ledger.refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_transient() => {
                ledger.transient.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                ledger.violation(format!("acquisition: {e}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Takes the primitive through the third process, holds it across the
/// fault, and checks that it learns of a loss: after a pause longer than
/// its lease it must report itself lost; after any other fault, once one
/// lease has passed, it either reports itself lost or still holds in Redis
/// (its release succeeds).
async fn hold_across(
    cell: &Cell,
    env: &mut Env,
    handle: &Handle,
    fault: Fault,
    shard: Option<usize>,
    proxies: &[Proxy],
) -> Option<Instant> {
    let ledger = &cell.ledger;
    let ask = Ask {
        once: false,
        pick: 0,
        wait: HOLDER_WAIT,
        ttl: cell.ttl,
    };
    let guard = match acquire(handle, cell.primitive, &cell.names, ask).await {
        Ok(Some(guard)) => Some(guard),
        other => {
            let got = other.map(|_| "busy");
            ledger.violation(format!("(4) the fault's holder got no guard: {got:?}"));
            None
        }
    };
    let id = ledger.id();
    if let Some(guard) = &guard {
        ledger.taken.fetch_add(1, Ordering::Relaxed);
        ledger.enter(id, guard.claims(), guard.view());
    }
    // The window opens before the fault and closes one lease after it.
    let far = Instant::now() + Duration::from_secs(3600);
    *cell.window.lock().unwrap() = Some((Instant::now(), far));
    let injected = env.inject(fault, shard, proxies, cell.ttl).await;
    *cell.window.lock().unwrap() = Some((
        injected.start,
        injected.end + cell.ttl + Duration::from_secs(1),
    ));
    eprintln!(
        "  fault: {} ({:.1?})",
        injected.what,
        injected.end - injected.start
    );
    let guard = guard?;
    if fault == Fault::Pause {
        let limit = cell.ttl + Duration::from_secs(2);
        if tokio::time::timeout(limit, guard.lost()).await.is_err() {
            ledger.violation(format!(
                "(2) the fault's holder still claims its lease {limit:?} after a pause of 1.5 leases"
            ));
        }
    } else {
        tokio::time::sleep(cell.ttl + Duration::from_millis(500)).await;
    }
    ledger.leave(id);
    let lost = guard.is_lost();
    if lost {
        ledger.lost.fetch_add(1, Ordering::Relaxed);
        ledger.found_out(id);
    }
    match guard.release().await {
        Ok(()) => {}
        Err(Error::NotHeld { .. }) if lost => {}
        Err(Error::NotHeld { .. }) => ledger.violation(format!(
            "(2) the fault's holder never reported a loss, yet one lease after the fault ({}) its release found the lease gone",
            injected.what
        )),
        Err(e) if e.is_transient() => {
            ledger.transient.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => ledger.violation(format!("release of the fault's holder: {e}")),
    }
    injected.writes_may_be_lost.then_some(injected.start)
}

/// Whether a key may outlive its locks: fencing counters and an
/// election's leader hash are never deleted (by design).
fn kept(key: &str) -> bool {
    key.contains("}:fence:") || key.contains("}:election:")
}

/// The wait queue's own lifetime (`QUEUE_TTL` in `src/engine/queue.rs`):
/// the entry of a waiter whose removal a fault lost goes with it.
const QUEUE_TTL_MS: i64 = 10_000;

/// Whether a key left after a fault is a wait queue that expires by
/// itself within the queue's lifetime.
fn expiring_queue(key: &str, pttl: i64) -> bool {
    key.contains("}:queue:") && pttl > 0 && pttl <= QUEUE_TTL_MS
}

async fn run_cell(
    env: &mut Env,
    primitive: Primitive,
    fault: Fault,
    shard: Option<usize>,
) -> Report {
    let started = Instant::now();
    let name = format!(
        "{}/{}/{}",
        env.topology.name(),
        primitive.name(),
        fault.name()
    );
    let ttl = ttl_of(fault);
    let prefix = env.next_prefix(&format!("{}-{}", primitive.name(), fault.name()));
    let names = env.names(&prefix, "r", primitive.resources(), shard);
    // On replicated topologies, faults meet the strongest setting each
    // primitive has: replica-confirmed writes where it has them.
    let confirm =
        env.topology.replicated() && fault != Fault::None && primitive.confirms_replicas();
    // Three processes (two for the contenders, one for the fault's
    // holder); for a cut, each through its own proxy per server.
    let ports = match fault {
        Fault::Cut => env.cut_ports(),
        _ => Vec::new(),
    };
    let proxies: Vec<Proxy> = (0..3)
        .flat_map(|_| ports.iter().map(|&p| Proxy::start(p)).collect::<Vec<_>>())
        .collect();
    let mut handles = Vec::new();
    for process in 0..3 {
        let via = &proxies[process * ports.len()..(process + 1) * ports.len()];
        handles.push(env.handle(primitive, &prefix, ttl, confirm, via).await);
    }
    let cell = Arc::new(Cell {
        primitive,
        names: Arc::new(names),
        ttl,
        ledger: Arc::new(Ledger::default()),
        window: Arc::new(Mutex::new(None)),
    });
    let ledger = Arc::clone(&cell.ledger);
    let stop = Arc::new(AtomicBool::new(false));
    let seed = fastrand::u64(..);
    let mut contenders = tokio::task::JoinSet::new();
    for w in 0..primitive.workers() {
        contenders.spawn(contender(
            Arc::clone(&cell),
            handles[w % 2].clone(),
            Arc::clone(&stop),
            seed.wrapping_add(w as u64),
        ));
    }
    tokio::time::sleep(WARMUP).await;
    let mut lossy_fault = None;
    if fault != Fault::None {
        lossy_fault = hold_across(&cell, env, &handles[2], fault, shard, &proxies).await;
    }
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let joined = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(done) = contenders.join_next().await {
            if let Err(e) = done {
                ledger.violation(format!("a contender panicked: {e}"));
            }
        }
    })
    .await;
    if joined.is_err() {
        ledger.violation("contenders did not finish within 30 s".into());
    }
    for handle in &handles {
        handle.shutdown().await;
    }
    drop(proxies);

    // (3) Nothing left: at once without a fault; with one, what a lost
    // reply or a lost release left behind has a lease and is gone with it
    // (a wait queue whose entry's removal was lost: with the queue's own
    // lifetime, counted in the cell's line).
    let limit = match fault {
        Fault::None => Duration::ZERO,
        _ => ttl + Duration::from_secs(2),
    };
    let deadline = Instant::now() + limit;
    let mut queues_left;
    loop {
        let (queues, left): (Vec<_>, Vec<_>) = env
            .keys_under(&prefix)
            .await
            .into_iter()
            .filter(|(k, _)| !kept(k))
            .partition(|(k, pttl)| fault != Fault::None && expiring_queue(k, *pttl));
        queues_left = queues.len();
        if left.is_empty() {
            break;
        }
        if left.iter().any(|(_, pttl)| *pttl < 0) || Instant::now() >= deadline {
            ledger.violation(format!(
                "(3) keys left after every guard ended and the mutexes shut down (key, PTTL): {left:?}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // (4) The cell contended.
    let count = |c| Ledger::count(c);
    let (taken, waited, refused) = (
        count(&ledger.taken),
        count(&ledger.waited),
        count(&ledger.refused),
    );
    if taken < MIN_TAKEN || waited + refused < MIN_CONTENDED {
        ledger.violation(format!(
            "(4) vacuous: {taken} guards taken, {waited} waits, {refused} refusals"
        ));
    }

    // (1) Exclusion: strict, but where a fault may have lost acknowledged
    // writes that replica confirmation does not cover.
    let covered = primitive.confirms_replicas() && env.topology.confirm_covers_failover();
    let strict = covered || lossy_fault.is_none();
    let (violations, tolerated) = ledger.judge(strict, lossy_fault);
    let line = format!(
        "cell {name}: {:.1?}, taken {taken}, waited {waited}, refused {refused}, lost {}, transient errors {}, overlaps tolerated {tolerated}{}, queues left to expire {queues_left}, seed {seed}",
        started.elapsed(),
        count(&ledger.lost),
        count(&ledger.transient),
        if strict { " (strict)" } else { "" },
    );
    Report {
        cell: name,
        violations,
        line,
    }
}
