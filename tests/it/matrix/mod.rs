//! One mutual-exclusion and loss-reporting property over the whole matrix
//! of primitive × topology × fault (issue 22, "One property suite over
//! every combination").
//!
//! # The property, in every cell
//! Contenders in two "processes" (two mutexes, or two Redlocks, each with
//! its own connections) take the cell's primitive at random (waiting, or
//! one attempt), hold it 5–30 ms, and release or drop it; in a cell with a
//! fault, a third process holds it across the fault. A ledger records every
//! guard with a view of its own validity (`is_lost()`, `remaining()`):
//!
//! 1. **exclusion**: no guard is obtained while holders that exclude it
//!    still believe they hold (not lost, lease left): never two holders of
//!    a key, more than [`PERMITS`](prim::PERMITS) permits, or a writer with
//!    anyone else;
//! 2. **loss is reported**: no guard claims more than its TTL; a guard that
//!    still claims half its lease is never told `NotHeld` by its release
//!    outside a fault (from its start to one lease after its end); the
//!    fault's holder, after a pause of 1.5 leases, reports itself lost
//!    within a lease, and after any other fault, one lease later, either
//!    reports itself lost or still holds in Redis (its release succeeds);
//! 3. **nothing left**: once every guard ended and the handles shut down,
//!    no key under the cell's prefix is left (fencing counters and an
//!    election's leader hash are kept by design) — at once without a
//!    fault; with one, within a lease (a lost reply leaves a key that
//!    expires), and never a key without expiry;
//! 4. **it contended**: at least 8 guards were taken and 2 acquisitions
//!    waited for a holder or were refused, and the fault's holder held
//!    when the fault hit.
//!
//! One cell of each topology runs after the other on one topology started
//! once per test (`run::run_cells`); each cell has its own key prefix.
//!
//! **Replication.** On a cluster or Sentinel, fault cells take the lock,
//! multi-key and election primitives with `min_replicas(1, 250 ms)`: the
//! README says a failover can otherwise lose a lock just written. That
//! covers a cluster (one replica per master: the one promoted), not
//! Sentinel (the README: its second replica confirms writes on the old
//! master until it is moved), and the semaphore and the read-write lock
//! have no `min_replicas` at all. So where a fault replaced a master
//! without a coordinated handover (a kill, `SENTINEL FAILOVER`, a pause
//! that ended in a failover) and confirmation does not cover it, an overlap
//! is tolerated (and counted) only if it began after the fault and one of
//! its guards found out its lease was lost (reported lost, or `NotHeld` on
//! release); any other overlap fails the cell. `CLUSTER FAILOVER` is
//! coordinated (the replica catches up first): strict.
//!
//! # The cells
//! Primitives: `lock` (`lock` with a timeout, `try_lock`; 2 keys), `multi`
//! (`lock_all`/`try_lock_all`, 2 of 3 keys, on a cluster on different
//! masters), `permit` (2 permits, 5 contenders), `rwlock` (read 2 in 3,
//! write 1 in 3), `election` (`campaign` with a timeout), `redlock`.
//! Faults: `pause` (SIGSTOP of the keys' master for 1.5 TTL; a TTL of
//! 400 ms keeps it under a cluster's and Sentinel's failure detection),
//! `kill` (SIGKILL of the keys' master; its replica takes over), `cut`
//! (every connection of every process cut three times through a proxy per
//! server), `failover` (`CLUSTER FAILOVER` on the replica, `SENTINEL
//! FAILOVER`).
//!
//! | topology \ fault | none | pause | kill | cut | failover |
//! |---|---|---|---|---|---|
//! | one server | **CI**: all 5 | **CI**: lock; full: the other 4 | excluded (a) | full: all 5 | excluded (b) |
//! | cluster, sharded pub/sub | full: all 5 | full: all 5 | full: all 5 | excluded (c) | full: all 5 |
//! | cluster, plain pub/sub | **CI**: all 5 | full: all 5 | **CI**: lock; full: the other 4 | excluded (c) | full: all 5 |
//! | Sentinel | full: all 5 | full: all 5 | full: all 5 | excluded (c) | full: all 5 |
//! | 5 servers (Redlock) | **CI**: redlock | full: redlock (3 of 5 paused) | full: redlock (2 of 5 killed) | full: redlock | excluded (b) |
//!
//! "All 5" are lock, multi, permit, rwlock and election. Excluded:
//!
//! * Redlock anywhere but on its 5 independent servers, and the other
//!   primitives on those: Redlock is a lock over independent masters (on
//!   one server it is the lock; on a cluster or Sentinel its "servers"
//!   would replicate each other);
//! * (a) kill on one server: without a replica, a kill is a restart
//!   without data, outside the lock's guarantee ("on one Redis server that
//!   keeps its data"; `faults::` covers restarts);
//! * (b) failover without replicas;
//! * (c) cut on a cluster or Sentinel: the client learns the nodes' own
//!   addresses (`CLUSTER SLOTS`, the sentinels), so a proxy in front of one
//!   is bypassed.
//!
//! Valkey: the same tests with `REDIS_SERVER_BIN`/`REDIS_CLI_BIN` pointing
//! at `valkey-server`/`valkey-cli` (as `.ci/run`'s Valkey step does).
//!
//! # Running it
//! CI runs the sample (the **CI** cells above): `ci_one_server`,
//! `ci_cluster_plain` and `ci_redlock` (13 cells; 16 s of wall time under
//! nextest on 2 cores, 27 s one after the other). The rest of the matrix is
//! in the ignored tests `full_one`, `full_cluster_sharded`,
//! `full_cluster_plain`, `full_sentinel` and `full_redlock`; the whole
//! matrix (79 cells, sample and rest: about 3 minutes) runs with
//!
//! ```text
//! cargo nextest run --all-features -E 'test(/^matrix::/)' --run-ignored all --no-capture
//! ```
//!
//! Each cell prints one line (guards taken, waits, refusals, losses,
//! transient errors, tolerated overlaps, the contenders' seed); a failing
//! cell prints every violation with the property it breaks.

mod env;
mod ledger;
mod prim;
mod run;

use env::{Fault, Topology};
use prim::{Primitive, PRIMITIVES};

/// Every topology.
const TOPOLOGIES: [Topology; 5] = [
    Topology::One,
    Topology::ClusterSharded,
    Topology::ClusterPlain,
    Topology::Sentinel,
    Topology::Servers,
];

/// Every fault, in the order a topology's cells run: kills last, since
/// they leave a cluster's shard without its replica.
const FAULTS: [Fault; 5] = [
    Fault::None,
    Fault::Pause,
    Fault::Cut,
    Fault::Failover,
    Fault::Kill,
];

/// The CI sample: every primitive on one server and on a cluster in plain
/// pub/sub mode without faults, Redlock without faults, one pause and one
/// kill.
const CI: &[(Topology, Primitive, Fault)] = &[
    (Topology::One, Primitive::Lock, Fault::None),
    (Topology::One, Primitive::Multi, Fault::None),
    (Topology::One, Primitive::Permit, Fault::None),
    (Topology::One, Primitive::ReadWrite, Fault::None),
    (Topology::One, Primitive::Election, Fault::None),
    (Topology::One, Primitive::Lock, Fault::Pause),
    (Topology::Servers, Primitive::Redlock, Fault::None),
    (Topology::ClusterPlain, Primitive::Lock, Fault::None),
    (Topology::ClusterPlain, Primitive::Multi, Fault::None),
    (Topology::ClusterPlain, Primitive::Permit, Fault::None),
    (Topology::ClusterPlain, Primitive::ReadWrite, Fault::None),
    (Topology::ClusterPlain, Primitive::Election, Fault::None),
    (Topology::ClusterPlain, Primitive::Lock, Fault::Kill),
];

/// Why a cell is not run (see the module docs), or `None`.
fn excluded(topology: Topology, primitive: Primitive, fault: Fault) -> Option<&'static str> {
    use Fault as F;
    use Topology as T;
    if (primitive == Primitive::Redlock) != (topology == T::Servers) {
        return Some("Redlock runs on independent servers, the rest on one primary per key");
    }
    match (topology, fault) {
        (T::One, F::Kill) => Some("(a) a kill without a replica is a restart without data"),
        (T::One | T::Servers, F::Failover) => Some("(b) no replicas"),
        (T::ClusterSharded | T::ClusterPlain | T::Sentinel, F::Cut) => {
            Some("(c) a proxy in front of one node is bypassed")
        }
        _ => None,
    }
}

/// The cells of `topology` in the CI sample (`ci`) or in the rest of the
/// matrix, in run order.
fn cells(topology: Topology, ci: bool) -> Vec<(Primitive, Fault)> {
    let mut cells = Vec::new();
    for fault in FAULTS {
        for primitive in PRIMITIVES {
            if excluded(topology, primitive, fault).is_some() {
                continue;
            }
            if CI.contains(&(topology, primitive, fault)) == ci {
                cells.push((primitive, fault));
            }
        }
    }
    cells
}

fn run(topology: Topology, ci: bool) {
    let cells = cells(topology, ci);
    assert!(!cells.is_empty(), "no cells for {}", topology.name());
    run::run_cells(topology, &cells);
}

/// The table itself: no CI cell is excluded, and every topology has cells.
#[test]
fn the_table_runs_every_topology_and_no_excluded_cell() {
    for &(t, p, f) in CI {
        assert_eq!(excluded(t, p, f), None, "{t:?} {p:?} {f:?} is in CI");
    }
    for t in TOPOLOGIES {
        let all = cells(t, true).len() + cells(t, false).len();
        assert!(all > 0, "{t:?} has no cells");
    }
}

#[test]
fn ci_one_server() {
    run(Topology::One, true);
}

#[test]
fn ci_cluster_plain() {
    run(Topology::ClusterPlain, true);
}

#[test]
fn ci_redlock() {
    run(Topology::Servers, true);
}

#[test]
#[ignore = "the full matrix; see the module docs"]
fn full_one() {
    run(Topology::One, false);
}

#[test]
#[ignore = "the full matrix; see the module docs"]
fn full_cluster_sharded() {
    run(Topology::ClusterSharded, false);
}

#[test]
#[ignore = "the full matrix; see the module docs"]
fn full_cluster_plain() {
    run(Topology::ClusterPlain, false);
}

#[test]
#[ignore = "the full matrix; see the module docs"]
fn full_sentinel() {
    run(Topology::Sentinel, false);
}

#[test]
#[ignore = "the full matrix; see the module docs"]
fn full_redlock() {
    run(Topology::Servers, false);
}
