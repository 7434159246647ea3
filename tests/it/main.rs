//! The integration suite: one test binary, one module per area, every test
//! against real, private `redis-server` processes started by `support`.
//!
//! | module      | what it covers                                                        |
//! |-------------|-----------------------------------------------------------------------|
//! | `lock`      | lock / try_lock / release / extend / drop / shutdown on a healthy server |
//! | `renewal`   | automatic renewal, loss detection, `with_lock`, fencing tokens        |
//! | `notify`    | waiting through release notifications (pub/sub)                       |
//! | `queue`     | the wait queue in Redis: order across instances, killed and frozen heads, waiters that give up, exclusion with kills (proptest) |
//! | `cancel`    | acquisitions dropped at any point leave no lock behind                |
//! | `faults`    | cut / slow / black-holed connections, restart, pause, SIGKILL, refusals |
//! | `bad_input` | invalid keys, TTLs, settings and URLs; keys of another type           |
//! | `adapter`   | the legacy fire-and-forget `Adapter` shim, its logs and misuse        |
//! | `interop`   | other clients of the same lock protocol (redis-py, raw `SET NX`)      |
//! | `property`  | random interleavings keep mutual exclusion (proptest)                 |
//! | `audit`     | mutual exclusion and fencing under load and injected faults           |
//! | `hardening` | runtimes that stop, the retry budget as a wall-clock bound, extreme durations, closed clients |
//! | `multi`     | multi-key locks (`lock_all`): all or none, opposite orders, renewal and loss, on one server and a cluster |
//! | `cluster`   | a private 3-master Redis Cluster: the single-server checks on every master, a stalled master (every key layout), renewal and release calls per node, notifications |
//! | `failover`  | a master SIGKILLed under held locks; `min_replicas` (WAIT) on a cluster and one server; survival counts (ignored) |
//! | `tls`       | `rediss://` (feature `tls`): trust, mutual TLS, refusals          |
//! | `acl`       | the README's least-privilege ACL user; a missing right gives `NoPermission` |
//! | `sentinel`  | Redis Sentinel: 1 master, 2 replicas, 3 sentinels; failovers under lock traffic |
//! | `reshard`   | slots moved between masters under lock traffic (ASK, MOVED, TRYAGAIN) |
//! | `redlock`   | `Redlock` on 5 independent servers: 2 and 3 down, paused minority and majority, restarts without data (with and without the delay), cancellation, bad input, exclusion under random kills (proptest) |
//! | `semaphore` | the counting semaphore: the permit count across processes (proptest), crashed holders, wake-ups, renewal, loss, cancellation, bad input, a cluster |
//! | `rwlock`    | the read-write lock: writers alone, readers share, writer preference and intent expiry, renewal, loss (proptest), a cluster |
//! | `protocol`  | the lock protocol's defects of issue 20: plain (and, as a control, sharded) pub/sub on a cluster, an extend whose reply is lost, a `try_lock` that wipes a cluster's queue (one server as a control), queue entries that leak, a pattern subscriber, a slow first renewal of a handed-over lock; exclusion (proptest) on a cluster in plain pub/sub mode and with a pattern subscriber |
//! | `election`  | leader election: handover on resign, drop and SIGKILL, terms, `leader()` and `observe()`, exclusion under faults (proptest), a cluster |
//! | `holder`    | holder labels in lock tokens: stored, read back, handed over through the queue, plain to other clients, bad labels |
//! | `election_procs` | leader election with campaigner processes SIGKILLed and SIGSTOPped (proptest), one server and the cluster |
//! | `matrix`    | one exclusion and loss-reporting property over every primitive × topology × fault (CI runs a sample; the rest is ignored, see its docs) |
//! | `harness`   | self-tests of the `support` fixtures                                  |
//!
//! Shared helpers live in `tests/support` (also used by `tests/containers.rs`
//! and the benches); a test module defines only what is specific to it.
//!
//! Run one area with `cargo nextest run --test it -E 'test(/^faults::/)'` or
//! `cargo test --test it faults::`.

#[path = "../support/mod.rs"]
mod support;

mod acl;
mod adapter;
mod audit;
mod bad_input;
mod cancel;
mod cluster;
mod election;
mod election_procs;
mod failover;
mod faults;
mod group_commit;
mod hardening;
mod harness;
mod holder;
mod interop;
mod lock;
mod matrix;
mod multi;
mod notify;
mod property;
mod protocol;
mod queue;
mod redlock;
mod renewal;
mod reshard;
mod rwlock;
mod semaphore;
mod sentinel;
#[cfg(feature = "tls")]
mod tls;
