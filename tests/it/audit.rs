//! Mutual-exclusion audit under load and injected faults (GitHub issue 5,
//! part 4).
//!
//! One private `redis-server`, two fault proxies in front of it (see
//! `tests/support/proxy.rs`; the rig and the fault injector are in
//! `tests/support/audit.rs`), one [`DistributedMutex`] through each proxy
//! (TTL 2 s, command timeout 500 ms, automatic renewal on), and eight
//! workers (four per mutex) contending for three keys while a fault injector
//! cuts connections, adds latency and black-holes one proxy at a time.
//!
//! * `counter_equals_completed_sections_under_load_and_faults`: inside the
//!   lock each worker increments a per-key counter by a non-atomic read,
//!   pause (1–3 ms; one section in 64 pauses 0.7–1.5 s, past a renewal),
//!   write on a separate client connected straight to the server (the
//!   counter store sees no faults), then releases (explicitly or by drop, in
//!   turn). The counter must equal the number of sections completed under the
//!   lock, no section may have lost its lock (every fault is shorter than the
//!   TTL), and nothing may be left locked after shutdown.
//! * `fencing_store_rejects_every_stale_write`: the same set-up with fencing
//!   tokens and, besides the short faults, a 2.5 s black hole (longer than the
//!   TTL) started by a renewal, writing to a Redis-side store (a Lua script)
//!   that accepts a write only with a token at least the largest it has
//!   accepted. Each section writes twice; one in 64 works 0.7–3 s and, if its
//!   lease runs out meanwhile, writes after its successor. A "frozen holder"
//!   (a third client, no renewal, 300 ms TTL, 800 ms stall) writes late with
//!   its stale token. The store must accept every write of a holder whose
//!   lease was valid, reject every stale one (at least one), and its log must
//!   show tokens strictly increasing from one holder to the next.
//!
//! Both tests also keep an in-process record of who is inside a section of
//! each key: a holder entering while an earlier one is still inside with a
//! lease it reports valid is a mutual-exclusion violation (the events of the
//! run are printed).
//!
//! Each test runs for `AUDIT_SECS` seconds (default 4, as in CI), plus a few
//! seconds to wind down. For a long run by hand:
//!
//! ```text
//! AUDIT_SECS=300 cargo nextest run --test it -E 'test(/^audit::/)'
//! ```
//!
//! Add `--no-capture` to see the counts each test prints at its end
//! (sections, errors by kind, release outcomes, faults injected). On a
//! violation the events leading to it are printed in order;
//! `AUDIT_JOURNAL=<dir>` also writes every event to `<dir>/<test>.log`.
//! `AUDIT_SEED=<n>` fixes the random choices (keys, pauses, faults); timing
//! still varies from run to run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, Error, LockGuard, RetryStrategy};
use fred::prelude::*;

use crate::support::audit::{
    audit_duration, audit_seed, error_kind, inject_faults, lock, lock_key, lock_keys_left, rig,
    short, Faults, Journal, Occupancy, Rng, Tally, ACQUIRE_TIMEOUT, COMMAND_TIMEOUT, KEYS,
    WORKERS_PER_MUTEX,
};
use crate::support::common::ms;

/// The frozen holder's lease (no renewal) and how long it stalls.
const FROZEN_TTL: Duration = ms(300);
const FROZEN_STALL: Duration = ms(800);
/// How long past the deadline workers go on while a frozen round needs a
/// successor.
const FROZEN_GRACE: Duration = ms(3_000);

fn counter_key(k: usize) -> String {
    format!("audit:counter:{k}")
}

// ---- 1. counter == completed sections ---------------------------------------

#[derive(Default)]
struct CounterStats {
    completed: [AtomicU64; KEYS],
    /// Sections with a pause longer than a renewal period.
    long_sections: AtomicU64,
    /// Sections whose lock may have been lost before they ended.
    lost: Mutex<Vec<String>>,
    acquire_errors: Tally,
    release_results: Tally,
}

struct CounterWorker {
    id: usize,
    mutex: DistributedMutex,
    raw: Client,
    deadline: Instant,
    seed: u64,
    stats: Arc<CounterStats>,
    occupancy: Arc<Occupancy>,
    journal: Arc<Journal>,
    holders: Arc<AtomicU64>,
}

impl CounterWorker {
    async fn run(self) {
        let mut rng = Rng::new(self.seed, self.id as u64 + 1);
        let mut section = 0u64;
        while Instant::now() < self.deadline {
            let k = rng.below(KEYS as u64) as usize;
            let guard = match self
                .mutex
                .acquire(lock_key(k))
                .timeout(ACQUIRE_TIMEOUT)
                .await
            {
                Ok(guard) => guard,
                Err(e) => {
                    self.stats.acquire_errors.add(error_kind(&e));
                    self.journal
                        .note(k, format!("w{} acquire failed: {e}", self.id));
                    continue;
                }
            };
            section += 1;
            self.section(k, guard, section % 2 == 0, &mut rng).await;
        }
    }

    async fn section(&self, k: usize, guard: LockGuard, explicit: bool, rng: &mut Rng) {
        let holder = self.holders.fetch_add(1, Ordering::SeqCst);
        let who = format!("w{} h{holder} token {}", self.id, short(guard.token()));
        self.journal.note(k, format!("{who} acquired"));
        self.occupancy
            .enter(k, holder, guard.lease(), &self.journal);

        // The non-atomic increment, on the direct connection.
        let read: Option<i64> = self.raw.get(counter_key(k)).await.expect("GET counter");
        let value = read.unwrap_or(0);
        // Mostly a short pause; now and then work that outlasts a renewal
        // period, so renewals run under the faults too.
        let pause = if rng.below(64) == 0 {
            self.stats.long_sections.fetch_add(1, Ordering::SeqCst);
            rng.millis(700, 1_500)
        } else {
            rng.millis(1, 3)
        };
        tokio::time::sleep(pause).await;
        let () = self
            .raw
            .set(counter_key(k), value + 1, None, None, false)
            .await
            .expect("SET counter");
        self.journal
            .note(k, format!("{who} read {value}, wrote {}", value + 1));
        self.occupancy.exit(k, holder);

        // Held throughout iff the lease was never lost until the end.
        let held = if explicit {
            let valid_before = !guard.is_lost();
            let result = guard.release().await;
            let outcome = match &result {
                Ok(()) => "released: Ok",
                Err(e) => {
                    self.stats.release_results.add(error_kind(e));
                    "released: Err"
                }
            };
            self.journal
                .note(k, format!("{who} {outcome} {:?}", result.as_ref().err()));
            match result {
                Ok(()) => {
                    self.stats.release_results.add("Ok");
                    true
                }
                // Redis could not be asked: the lease was valid up to here,
                // after the write; the release is retried in the background.
                Err(e) if e.is_transient() => valid_before,
                Err(_) => false,
            }
        } else {
            let held = !guard.is_lost();
            self.journal
                .note(k, format!("{who} dropped (lost at drop: {})", !held));
            self.stats
                .release_results
                .add(if held { "dropped" } else { "dropped_lost" });
            drop(guard);
            held
        };
        if held {
            self.stats.completed[k].fetch_add(1, Ordering::SeqCst);
        } else {
            lock(&self.stats.lost).push(format!("key {k}: {who} (explicit release: {explicit})"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counter_equals_completed_sections_under_load_and_faults() {
    let duration = audit_duration();
    let seed = audit_seed();
    let started = Instant::now();
    let rig = rig(false).await;
    let deadline = Instant::now() + duration;
    let stats = Arc::new(CounterStats::default());
    let occupancy = Arc::new(Occupancy::new());
    let journal = Arc::new(Journal::new("counter"));
    let holders = Arc::new(AtomicU64::new(1));
    let faults = Faults::default();

    let mut workers = Vec::new();
    for (m, mutex) in rig.mutexes.iter().enumerate() {
        for w in 0..WORKERS_PER_MUTEX {
            let worker = CounterWorker {
                id: m * WORKERS_PER_MUTEX + w,
                mutex: mutex.clone(),
                raw: rig.raw.clone(),
                deadline,
                seed,
                stats: Arc::clone(&stats),
                occupancy: Arc::clone(&occupancy),
                journal: Arc::clone(&journal),
                holders: Arc::clone(&holders),
            };
            workers.push(tokio::spawn(worker.run()));
        }
    }
    let join_workers = async {
        for worker in workers {
            worker.await.expect("worker panicked");
        }
    };
    tokio::join!(
        inject_faults(&rig.proxies, deadline, seed, false, &faults, &journal),
        join_workers
    );

    // Counters as the workers left them, before anything else runs.
    let mut counters = [0i64; KEYS];
    for (k, counter) in counters.iter_mut().enumerate() {
        let v: Option<i64> = rig.raw.get(counter_key(k)).await.expect("GET counter");
        *counter = v.unwrap_or(0);
    }
    for mutex in &rig.mutexes {
        mutex.shutdown().await;
    }
    let left = lock_keys_left(&rig.server);

    let completed: Vec<u64> = stats
        .completed
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect();
    let total: u64 = completed.iter().sum();
    let lost = lock(&stats.lost).clone();
    let violations = occupancy.violations();
    println!(
        "audit (counter): {:.1} s, seed {seed}\n  sections completed per key {completed:?} \
         (total {total}), counters {counters:?}\n  sections that lost their lock: {}, long sections (> a renewal period): {}\n  \
         acquire errors: {:?}\n  release outcomes: {:?}\n  faults: {:?}\n  \
         overlaps after a lost lease: {}, violations: {}\n  lock keys left: {left:?}",
        started.elapsed().as_secs_f64(),
        lost.len(),
        stats.long_sections.load(Ordering::SeqCst),
        stats.acquire_errors.snapshot(),
        stats.release_results.snapshot(),
        faults.0.snapshot(),
        occupancy.takeovers.load(Ordering::SeqCst),
        violations.len(),
    );

    assert!(
        violations.is_empty(),
        "MUTUAL EXCLUSION VIOLATED: {violations:#?}\nevents:\n{}",
        journal.tail(None, 400)
    );
    for k in 0..KEYS {
        assert_eq!(
            counters[k] as u64,
            completed[k],
            "key {k}: the counter does not equal the sections completed under the lock \
             (an increment was lost or added by an overlapping section); last events:\n{}",
            journal.tail(Some(k), 200)
        );
    }
    assert!(
        lost.is_empty(),
        "sections lost their lock although every fault was shorter than the TTL: {lost:#?}\n\
         events:\n{}",
        journal.tail(None, 400)
    );
    let unexpected: Vec<_> = stats
        .acquire_errors
        .snapshot()
        .into_iter()
        .filter(|(kind, _)| !matches!(*kind, "NotObtained" | "Timeout" | "Unavailable"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected acquisition errors: {unexpected:?}"
    );
    assert!(
        total > 50,
        "only {total} sections completed in {duration:?}: the audit exercised too little"
    );
    assert!(
        faults.0.snapshot().values().sum::<u64>() >= 1,
        "no fault was injected"
    );
    assert!(
        left.is_empty(),
        "lock keys left after both mutexes shut down: {left:?}"
    );
}

// ---- 2. fencing: the store rejects every stale write -----------------------

/// The store: accepts a write only with a fencing token at least the largest
/// accepted so far, and logs every accepted write in order.
const STORE: &str = r#"
-- KEYS[1]: the largest fencing token accepted; KEYS[2]: the accepted writes
-- ARGV[1]: the writer's fencing token; ARGV[2]: the writer (holder id)
local max = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token >= max then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('RPUSH', KEYS[2], ARGV[1] .. ' ' .. ARGV[2])
  return {1, max}
end
return {0, max}
"#;

fn store_max_key(k: usize) -> String {
    format!("audit:store:{k}:max")
}

fn store_log_key(k: usize) -> String {
    format!("audit:store:{k}:log")
}

#[derive(Debug, Clone)]
struct Write {
    key: usize,
    token: u64,
    holder: u64,
    accepted: bool,
    /// The store's largest accepted token when the write arrived.
    max_before: u64,
    /// The writer's lease was still valid after the write returned.
    valid_after: bool,
    /// The frozen holder's late write.
    late: bool,
}

#[derive(Default)]
struct FenceStats {
    writes: Mutex<Vec<Write>>,
    sections: AtomicU64,
    lost_sections: AtomicU64,
    /// Sections with long work, and those whose lease ran out during it.
    long_sections: AtomicU64,
    stalled_lost: AtomicU64,
    frozen_rounds: AtomicU64,
    acquire_errors: Tally,
    release_results: Tally,
}

async fn store_write(raw: &Client, k: usize, token: u64, holder: u64) -> (bool, u64) {
    let reply: Vec<i64> = raw
        .eval(
            STORE,
            vec![store_max_key(k), store_log_key(k)],
            vec![token.to_string(), holder.to_string()],
        )
        .await
        .expect("EVAL store");
    match reply.as_slice() {
        [accepted, max] => (*accepted == 1, *max as u64),
        other => panic!("unexpected store reply {other:?}"),
    }
}

async fn store_max(raw: &Client, k: usize) -> u64 {
    let v: Option<u64> = raw.get(store_max_key(k)).await.expect("GET store max");
    v.unwrap_or(0)
}

struct Ctx {
    raw: Client,
    deadline: Instant,
    seed: u64,
    stats: FenceStats,
    occupancy: Occupancy,
    journal: Journal,
    holders: AtomicU64,
    /// A frozen holder's round is under way.
    frozen_active: AtomicBool,
}

impl Ctx {
    async fn write(&self, k: usize, guard: &LockGuard, holder: u64, late: bool) -> Write {
        let token = guard.fencing_token().expect("locks are taken with fencing");
        let (accepted, max_before) = store_write(&self.raw, k, token, holder).await;
        let write = Write {
            key: k,
            token,
            holder,
            accepted,
            max_before,
            valid_after: !guard.is_lost(),
            late,
        };
        self.journal.note(
            k,
            format!(
                "h{holder} fence {token} writes{}: {} (store max was {max_before}, lease valid \
                 after: {})",
                if late { " late" } else { "" },
                if accepted { "accepted" } else { "REJECTED" },
                write.valid_after
            ),
        );
        lock(&self.stats.writes).push(write.clone());
        write
    }

    /// Workers run until the deadline, and a little longer while the frozen
    /// holder waits for a successor.
    fn keep_going(&self) -> bool {
        let now = Instant::now();
        now < self.deadline
            || (self.frozen_active.load(Ordering::SeqCst) && now < self.deadline + FROZEN_GRACE)
    }

    async fn fence_worker(self: Arc<Self>, id: usize, mutex: DistributedMutex) {
        let mut rng = Rng::new(self.seed, id as u64 + 1);
        let mut section = 0u64;
        while self.keep_going() {
            let k = rng.below(KEYS as u64) as usize;
            let guard = match mutex.acquire(lock_key(k)).timeout(ACQUIRE_TIMEOUT).await {
                Ok(guard) => guard,
                Err(e) => {
                    self.stats.acquire_errors.add(error_kind(&e));
                    self.journal.note(k, format!("w{id} acquire failed: {e}"));
                    continue;
                }
            };
            section += 1;
            let holder = self.holders.fetch_add(1, Ordering::SeqCst);
            self.journal.note(
                k,
                format!(
                    "w{id} h{holder} acquired, fence {:?}",
                    guard.fencing_token()
                ),
            );
            self.occupancy
                .enter(k, holder, guard.lease(), &self.journal);
            self.write(k, &guard, holder, false).await;
            // Mostly a short pause; now and then long work (past a renewal,
            // or past the lease when the mutex's proxy is black-holed).
            if rng.below(64) == 0 {
                self.stats.long_sections.fetch_add(1, Ordering::SeqCst);
                let work = rng.millis(700, 3_000);
                let lost = tokio::select! {
                    () = tokio::time::sleep(work) => None,
                    reason = guard.lost() => Some(reason),
                };
                if let Some(reason) = lost {
                    // Stalled past its lease: it writes once a successor has
                    // (if one comes soon), with its stale token.
                    self.stats.stalled_lost.fetch_add(1, Ordering::SeqCst);
                    self.journal.note(
                        k,
                        format!("w{id} h{holder} lost its lock mid-work: {reason}"),
                    );
                    let token = guard.fencing_token().unwrap_or(0);
                    let until = Instant::now() + ms(3_000);
                    while store_max(&self.raw, k).await <= token && Instant::now() < until {
                        tokio::time::sleep(ms(5)).await;
                    }
                }
            } else {
                tokio::time::sleep(rng.millis(1, 3)).await;
            }
            self.write(k, &guard, holder, false).await;
            self.occupancy.exit(k, holder);
            self.stats.sections.fetch_add(1, Ordering::SeqCst);
            if guard.is_lost() {
                self.stats.lost_sections.fetch_add(1, Ordering::SeqCst);
            }
            if section % 2 == 0 {
                let result = guard.release().await;
                self.stats
                    .release_results
                    .add(result.as_ref().err().map_or("Ok", error_kind));
                self.journal
                    .note(k, format!("w{id} h{holder} released: {result:?}"));
            } else {
                self.stats.release_results.add("dropped");
                self.journal.note(k, format!("w{id} h{holder} dropped"));
                drop(guard);
            }
        }
    }

    /// A holder that stalls past its lease (no renewal) and then writes with
    /// its stale token. At least one round; more while time is left.
    async fn frozen_holder(self: Arc<Self>, mutex: DistributedMutex) {
        let mut rng = Rng::new(self.seed, 0xF202E);
        let mut rounds = 0u64;
        let mut failures = 0u32;
        // A round needs workers to take over after it: none starts (or goes
        // on after a late acquisition) too close to the deadline, except the
        // first.
        let too_late =
            |rounds: u64| rounds > 0 && Instant::now() + FROZEN_STALL + ms(700) > self.deadline;
        loop {
            if too_late(rounds) {
                break;
            }
            assert!(
                failures < 5,
                "the frozen holder could not take a lock 5 times in a row"
            );
            self.frozen_active.store(true, Ordering::SeqCst);
            let k = rng.below(KEYS as u64) as usize;
            let acquisition = mutex
                .acquire(lock_key(k))
                .fencing()
                .auto_renew(false)
                .ttl(FROZEN_TTL)
                .timeout(ACQUIRE_TIMEOUT);
            let guard = match acquisition.await {
                Ok(guard) => guard,
                Err(e) => {
                    failures += 1;
                    self.stats.acquire_errors.add(error_kind(&e));
                    self.journal.note(k, format!("frozen acquire failed: {e}"));
                    continue;
                }
            };
            failures = 0;
            if too_late(rounds) {
                let released = guard.release().await;
                self.journal.note(
                    k,
                    format!("frozen acquired too late, released: {released:?}"),
                );
                break;
            }
            let holder = self.holders.fetch_add(1, Ordering::SeqCst);
            let token = guard.fencing_token().expect("fencing");
            self.journal.note(
                k,
                format!("frozen h{holder} acquired, fence {token}, lease {FROZEN_TTL:?}"),
            );
            self.occupancy
                .enter(k, holder, guard.lease(), &self.journal);
            self.write(k, &guard, holder, false).await;

            // Frozen past the lease; a worker takes the key over and writes.
            tokio::time::sleep(FROZEN_STALL).await;
            let wait_until = Instant::now() + ms(5_000);
            while store_max(&self.raw, k).await <= token {
                assert!(
                    Instant::now() < wait_until,
                    "key {k}: no worker wrote within 5 s after the frozen holder's lease \
                     ran out\n{}",
                    self.journal.tail(None, 300)
                );
                tokio::time::sleep(ms(5)).await;
            }
            assert!(
                guard.is_lost(),
                "key {k}: another holder wrote with a larger fencing token while the frozen \
                 holder's lease ({FROZEN_TTL:?}, not renewed) is still reported valid after \
                 {FROZEN_STALL:?}: {guard:?}"
            );
            let late = self.write(k, &guard, holder, true).await;
            assert!(
                !late.accepted,
                "key {k}: the store accepted the frozen holder's stale write: {late:?}\n{}",
                self.journal.tail(Some(k), 50)
            );
            self.occupancy.exit(k, holder);
            let released = guard.release().await;
            self.journal
                .note(k, format!("frozen h{holder} released: {released:?}"));
            assert!(
                matches!(released, Err(Error::NotHeld { .. })),
                "key {k}: the frozen holder's release after a takeover must be NotHeld, \
                 got {released:?}"
            );
            rounds += 1;
            self.stats.frozen_rounds.fetch_add(1, Ordering::SeqCst);
            self.frozen_active.store(false, Ordering::SeqCst);
            tokio::time::sleep(rng.millis(200, 500)).await;
        }
        self.frozen_active.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fencing_store_rejects_every_stale_write() {
    let duration = audit_duration();
    let seed = audit_seed();
    let started = Instant::now();
    let rig = rig(true).await;
    // The frozen holder is a third client, straight to the server.
    let frozen = {
        let connected = DistributedMutex::connect(&rig.server.url())
            .await
            .expect("connect the frozen holder");
        DistributedMutex::builder(connected.client().clone())
            .command_timeout(COMMAND_TIMEOUT)
            .retry(RetryStrategy::exponential(ms(1), ms(50), 10_000))
            .build()
            .expect("valid settings")
    };
    let deadline = Instant::now() + duration;
    let ctx = Arc::new(Ctx {
        raw: rig.raw.clone(),
        deadline,
        seed,
        stats: FenceStats::default(),
        occupancy: Occupancy::new(),
        journal: Journal::new("fencing"),
        holders: AtomicU64::new(1),
        frozen_active: AtomicBool::new(false),
    });
    let faults = Faults::default();

    let mut tasks = Vec::new();
    for (m, mutex) in rig.mutexes.iter().enumerate() {
        for w in 0..WORKERS_PER_MUTEX {
            let id = m * WORKERS_PER_MUTEX + w;
            tasks.push(tokio::spawn(
                Arc::clone(&ctx).fence_worker(id, mutex.clone()),
            ));
        }
    }
    tasks.push(tokio::spawn(Arc::clone(&ctx).frozen_holder(frozen.clone())));
    let join_tasks = async {
        for task in tasks {
            if let Err(e) = task.await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    };
    tokio::join!(
        inject_faults(&rig.proxies, deadline, seed, true, &faults, &ctx.journal),
        join_tasks
    );

    for mutex in rig.mutexes.iter().chain([&frozen]) {
        mutex.shutdown().await;
    }
    let left = lock_keys_left(&rig.server);

    let writes = lock(&ctx.stats.writes).clone();
    let accepted = writes.iter().filter(|w| w.accepted).count();
    let stale: Vec<&Write> = writes.iter().filter(|w| w.token < w.max_before).collect();
    let late: Vec<&Write> = writes.iter().filter(|w| w.late).collect();
    let violations = ctx.occupancy.violations();
    println!(
        "audit (fencing): {:.1} s, seed {seed}\n  sections {} (lease lost during {}; long work \
         {}, lease lost during long work {}), frozen rounds {}\n  writes by holders whose lease \
         was lost {}\n  writes {} (accepted {accepted}, rejected {}), stale writes {} (late \
         writes of the frozen holder {})\n  acquire errors: {:?}\n  release outcomes: {:?}\n  \
         faults: {:?}\n  overlaps after a lost lease: {}, violations: {}\n  lock keys left: \
         {left:?}",
        started.elapsed().as_secs_f64(),
        ctx.stats.sections.load(Ordering::SeqCst),
        ctx.stats.lost_sections.load(Ordering::SeqCst),
        ctx.stats.long_sections.load(Ordering::SeqCst),
        ctx.stats.stalled_lost.load(Ordering::SeqCst),
        ctx.stats.frozen_rounds.load(Ordering::SeqCst),
        writes.iter().filter(|w| !w.valid_after).count(),
        writes.len(),
        writes.len() - accepted,
        stale.len(),
        late.len(),
        ctx.stats.acquire_errors.snapshot(),
        ctx.stats.release_results.snapshot(),
        faults.0.snapshot(),
        ctx.occupancy.takeovers.load(Ordering::SeqCst),
        violations.len(),
    );

    assert!(
        violations.is_empty(),
        "MUTUAL EXCLUSION VIOLATED: {violations:#?}\nevents:\n{}",
        ctx.journal.tail(None, 400)
    );

    // The store's own rule, write by write: stale (below the largest accepted
    // token) is rejected, anything else accepted.
    for w in &writes {
        assert_eq!(
            w.accepted,
            w.token >= w.max_before,
            "the store decided wrongly: {w:?}"
        );
    }
    // The library's side: a holder whose lease was valid after its write
    // held the largest fencing token drawn so far, so the store accepted it.
    let wrongly_rejected: Vec<&Write> = writes
        .iter()
        .filter(|w| w.valid_after && !w.accepted)
        .collect();
    assert!(
        wrongly_rejected.is_empty(),
        "writes by holders whose lease was valid were rejected as stale (a later holder got a \
         larger fencing token while they held the lock): {wrongly_rejected:#?}\nevents:\n{}",
        ctx.journal.tail(None, 400)
    );

    // Distinct holders of a key never share a fencing token.
    let mut owners: HashMap<(usize, u64), u64> = HashMap::new();
    for w in &writes {
        let owner = *owners.entry((w.key, w.token)).or_insert(w.holder);
        assert_eq!(
            owner, w.holder,
            "key {}: fencing token {} was given to two holders (h{owner} and h{})",
            w.key, w.token, w.holder
        );
    }

    // The accepted writes, in the store's order: tokens never go down, and
    // strictly increase from one holder to the next.
    let mut logged = 0;
    for k in 0..KEYS {
        let log: Vec<String> = rig
            .raw
            .lrange(store_log_key(k), 0, -1)
            .await
            .expect("LRANGE store log");
        logged += log.len();
        let entries: Vec<(u64, u64)> = log
            .iter()
            .map(|e| {
                let (t, h) = e.split_once(' ').expect("log entry");
                (t.parse().expect("token"), h.parse().expect("holder"))
            })
            .collect();
        for pair in entries.windows(2) {
            let ((t0, h0), (t1, h1)) = (pair[0], pair[1]);
            assert!(
                t1 > t0 || (t1 == t0 && h1 == h0),
                "key {k}: accepted write of h{h1} with token {t1} after h{h0}'s with token {t0}"
            );
        }
        let accepted_here = writes.iter().filter(|w| w.key == k && w.accepted).count();
        assert_eq!(
            entries.len(),
            accepted_here,
            "key {k}: the store logged a different number of accepted writes"
        );
    }
    assert_eq!(logged, accepted);

    assert!(
        stale.iter().all(|w| !w.accepted),
        "stale writes accepted: {stale:#?}"
    );
    assert!(
        !stale.is_empty() && !late.is_empty(),
        "no stale write was attempted (frozen rounds: {})",
        ctx.stats.frozen_rounds.load(Ordering::SeqCst)
    );
    assert!(
        late.iter().all(|w| !w.accepted && w.token < w.max_before),
        "late writes: {late:#?}"
    );
    assert!(
        ctx.stats.sections.load(Ordering::SeqCst) >= 10,
        "too few sections to audit"
    );
    let unexpected: Vec<_> = ctx
        .stats
        .acquire_errors
        .snapshot()
        .into_iter()
        .filter(|(kind, _)| !matches!(*kind, "NotObtained" | "Timeout" | "Unavailable"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected acquisition errors: {unexpected:?}"
    );
    assert_eq!(ctx.stats.release_results.get("Redis"), 0);
    assert!(
        left.is_empty(),
        "lock keys left after the mutexes shut down: {left:?}"
    );
}
