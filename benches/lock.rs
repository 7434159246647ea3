//! Lock/unlock cost against the raw-command floor, measured in the same run on
//! the same fred client.
//!
//! * `floor` = `SET key token NX PX 60000` + `EVALSHA` compare-and-delete
//!   (two round trips, a fresh token each cycle): what any lock client must
//!   send.
//! * (a) `uncontended_cycle/lock_release`: one task, one key,
//!   `mutex.lock(key)` + `guard.release()`, against `uncontended_cycle/floor`.
//! * (b) `parallel_64/lock_release`: 64 tasks on 64 distinct keys, each doing
//!   lock + `release()` cycles back to back; cycles per second against
//!   `parallel_64/floor`.
//! * (c) `uncontended_cycle/lock_drop`: the scoped use the crate exists for,
//!   `let _g = mutex.lock(key).await?;` and the guard dropped at the end of
//!   the scope (its release runs in the background), in a loop on one task
//!   on the same key (the next `lock` waits for that release, as it would in
//!   a user's loop); against `uncontended_cycle/floor`.
//! * `rslock`: the peer, rslock 0.10 (redis-rs) `LockManager::lock` +
//!   `unlock` on the same server, sequential and 64 tasks, so that its
//!   ratios to the same floor sit beside the library's (one server only).
//!
//! After criterion's groups a summary is printed from simple timed loops
//! (short rounds of every loop interleaved, order rotated each round, so
//! background load hits them alike): per loop the median time per cycle, the
//! p50 of single cycles, cycles per second, and library/floor ratios as the
//! median [min-max] of the per-round ratios; then the three headline ratios,
//! (a) as library/floor time (lower is better, target <= 1.05), (b) and (c)
//! as library/floor throughput (higher is better; targets at least 1.4
//! and 2.0), each with rslock's ratio beside it. It also times
//! `floor_scripts`: the library's own acquire and release scripts sent raw,
//! which splits a gap between the protocol's share (a Lua acquire instead of
//! a plain `SET`) and the library's. `BENCH_SUMMARY_ROUNDS` (30),
//! `BENCH_SUMMARY_CYCLES` (200 sequential cycles per loop per round) and
//! `BENCH_SUMMARY_PARALLEL_CYCLES` (10 cycles per task per round) change its
//! size.
//!
//! ```text
//! cargo bench --bench lock                      # criterion groups + summary
//! BENCH_SUMMARY_ONLY=1 cargo bench --bench lock # summary only (~10 s)
//! BENCH_HOLDER=web-3 BENCH_SUMMARY_ONLY=1 cargo bench --bench lock # locks with a holder label
//! cargo bench --bench lock -- --summary-only    # the same
//! cargo bench --bench lock -- lock_drop         # criterion, one function (+ summary)
//! ```
//!
//! A private `redis-server` is started on a free port unless `REDIS_URL` is
//! set (then that server is used; the keys are `bench:<pid>:*` and are left
//! deleted).
//!
//! On Redis Cluster (`BENCH_CLUSTER=1` starts a private 6-node cluster, 3
//! masters; or `REDIS_URL=redis-cluster://...`, e.g. from
//! `scripts/redis-cluster start`) the floor runs on the same cluster client
//! as the library, in the same interleaved rounds. The 64 parallel keys are
//! spread evenly over the masters (key `t` on master `t % masters`), and each
//! summary round puts its sequential keys on one master, round `r` on master
//! `r % masters`, so every master gets the same number of rounds; the
//! summary then also gives (a) per master.
//!
//! The summary also gives the CPU per parallel cycle, Redis's (`INFO cpu`,
//! summed over the masters) and this process's, over all rounds' batches of
//! each parallel loop (meaningful on a private server or cluster only).
//!
//! ```text
//! BENCH_CLUSTER=1 BENCH_SUMMARY_ONLY=1 cargo bench --bench lock
//! ```
//!
//! With `--features metrics` the library's metrics go to a Prometheus
//! recorder (`metrics-exporter-prometheus`'s, without its HTTP listener,
//! histograms as buckets), so the summary includes their cost; the
//! acquisitions it counted are printed at the end. `BENCH_METRICS_RECORDER=0`
//! installs none (the facade's no-op recorder). Compare with a run without
//! the feature:
//!
//! ```text
//! BENCH_SUMMARY_ONLY=1 cargo bench --bench lock
//! BENCH_SUMMARY_ONLY=1 cargo bench --bench lock --features metrics
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::masters::{self, Masters};
use common::report::{self, Align, Table};
use common::stats::{self, Spread};
use criterion::{Criterion, Throughput};
use distributed_mutex::DistributedMutex;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{Expiration, InfoKind, SetOptions};
use tokio::runtime::Runtime;

/// The compare-and-delete the floor runs (the same logic as the library's
/// release script, sent the same way: EVALSHA with reload on NOSCRIPT).
const COMPARE_AND_DELETE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) end return 0";

/// The library's own acquire script, sent raw by the diagnostic
/// `floor_scripts` loop of the summary.
const ACQUIRE_LUA: &str = concat!(
    include_str!("../src/protocol/scripts/common.lua"),
    include_str!("../src/protocol/scripts/acquire.lua")
);

/// Tasks in the parallel group.
const TASKS: usize = 64;
/// Cycles each task does per criterion iteration in the parallel group.
const CYCLES_PER_TASK: u64 = 8;

/// Everything a benchmark needs, shared by all groups. Cheap to clone.
#[derive(Clone)]
struct Env {
    mutex: DistributedMutex,
    client: Client,
    compare_and_delete: Arc<Script>,
    acquire: Arc<Script>,
    prefix: String,
    /// The masters (one entry on one server).
    masters: Arc<Masters>,
    /// The parallel tasks' keys: task `t`'s on master `t % masters`.
    parallel_keys: Arc<Vec<String>>,
    /// The peer, rslock (redis-rs), on the same server; `None` on a cluster.
    rslock: Option<Arc<rslock::LockManager>>,
}

impl Env {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A key of a sequential loop, served by master `master`.
    fn key_on(&self, name: &str, master: usize) -> String {
        self.masters.key_on(master, &self.key(&format!("{name}:")))
    }
}

/// One lock/unlock cycle, in one of the ways measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cycle {
    /// `SET key token NX PX 60000` + `EVALSHA` compare-and-delete.
    Floor,
    /// The library's acquire and release scripts sent raw (EVALSHA + EVALSHA):
    /// what the library sends, without the library. Summary only.
    FloorScripts,
    /// `mutex.lock(key)` + `guard.release()`.
    LockRelease,
    /// `let _g = mutex.lock(key).await?;`, dropped at the end of the scope.
    LockDrop,
    /// The peer: rslock's `LockManager::lock(key, ttl)` + `unlock` on the
    /// same server (one server only; on a cluster this row runs the floor).
    Rslock,
}

impl Cycle {
    fn name(self) -> &'static str {
        match self {
            Cycle::Floor => "floor",
            Cycle::FloorScripts => "floor_scripts",
            Cycle::LockRelease => "lock_release",
            Cycle::LockDrop => "lock_drop",
            Cycle::Rslock => "rslock",
        }
    }
}

async fn cycle(env: &Env, what: Cycle, key: &str) {
    match what {
        Cycle::Floor => floor_cycle(env, key).await,
        Cycle::FloorScripts => floor_scripts_cycle(env, key).await,
        Cycle::LockRelease => {
            let guard = env.mutex.lock(key).await.expect("lock");
            guard.release().await.expect("release");
        }
        Cycle::LockDrop => {
            // (c), as a user writes it: the guard lives to the end of the
            // scope, and its drop hands the release to the background.
            let _g = black_box(env.mutex.lock(key).await.expect("lock"));
        }
        Cycle::Rslock => match &env.rslock {
            Some(manager) => {
                let lock = manager
                    .lock(key.as_bytes(), Duration::from_secs(60))
                    .await
                    .expect("rslock lock");
                manager.unlock(&lock).await;
            }
            None => floor_cycle(env, key).await,
        },
    }
}

/// The raw floor: `SET NX PX` then compare-and-delete, one fresh token.
async fn floor_cycle(env: &Env, key: &str) {
    let token = uuid::Uuid::new_v4().to_string();
    let set: Option<String> = env
        .client
        .set(
            key,
            token.as_str(),
            Some(Expiration::PX(60_000)),
            Some(SetOptions::NX),
            false,
        )
        .await
        .expect("floor SET NX");
    assert!(set.is_some(), "floor: {key} was already set");
    compare_and_delete(env, key, token).await;
}

async fn floor_scripts_cycle(env: &Env, key: &str) {
    let token = uuid::Uuid::new_v4().to_string();
    // `{1, token}`: the script names its call's token at the end.
    // The lock, its fencing counter and its wait queue (in the key's slot),
    // then: token, TTL, no fencing, attempt only (see the script).
    let keys = vec![
        key.to_owned(),
        format!("{{{key}}}:fence"),
        format!("{{{key}}}:queue"),
    ];
    let args = vec![token.clone(), "60000".into(), String::new(), "a".into()];
    let reply: Vec<fred::types::Value> = env
        .acquire
        .evalsha_with_reload(&env.client, keys, args)
        .await
        .expect("floor_scripts EVALSHA acquire");
    let taken = reply.first().and_then(fred::types::Value::as_i64);
    assert_eq!(taken, Some(1), "floor_scripts: {key} was already set");
    compare_and_delete(env, key, token).await;
}

async fn compare_and_delete(env: &Env, key: &str, token: String) {
    let deleted: i64 = env
        .compare_and_delete
        .evalsha_with_reload(&env.client, key, vec![token])
        .await
        .expect("floor EVALSHA");
    assert_eq!(deleted, 1, "floor: compare-and-delete missed {key}");
}

/// `TASKS` tasks on distinct keys, each doing `cycles` cycles; returns the
/// wall time of the whole batch.
async fn parallel_batch(env: &Env, what: Cycle, cycles: u64) -> Duration {
    let mut tasks = Vec::with_capacity(TASKS);
    let started = Instant::now();
    for t in 0..TASKS {
        let key = env.parallel_keys[t].clone();
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..cycles {
                cycle(&env, what, &key).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("bench task panicked");
    }
    started.elapsed()
}

fn bench_uncontended(c: &mut Criterion, rt: &Runtime, env: &Env) {
    let mut group = c.benchmark_group("uncontended_cycle");
    // One cycle per iteration: criterion's thrpt line is the cycle rate.
    group.throughput(Throughput::Elements(1));
    // (a) is lock_release, (c) lock_drop, both against floor.
    for what in [Cycle::Floor, Cycle::LockRelease, Cycle::LockDrop] {
        // One key per function; the same key every iteration (a dropped
        // guard's background release is awaited by the next acquire).
        let key = env.key(what.name());
        group.bench_function(what.name(), |b| {
            b.to_async(rt).iter(|| cycle(env, what, &key))
        });
    }
    group.finish();
}

fn bench_parallel(c: &mut Criterion, rt: &Runtime, env: &Env) {
    // (b) is lock_release against floor.
    let mut group = c.benchmark_group("parallel_64");
    group.throughput(Throughput::Elements(TASKS as u64 * CYCLES_PER_TASK));
    for what in [Cycle::Floor, Cycle::LockRelease] {
        group.bench_function(what.name(), |b| {
            b.to_async(rt)
                .iter_custom(|iters| parallel_batch(env, what, iters * CYCLES_PER_TASK))
        });
    }
    group.finish();
}

/// How big the summary's rounds are.
struct Size {
    rounds: usize,
    cycles: u64,
    par_cycles: u64,
}

/// Loops of the summary, sequential (one task, one key) and parallel.
const SEQ: [Cycle; 5] = [
    Cycle::Floor,
    Cycle::FloorScripts,
    Cycle::LockRelease,
    Cycle::LockDrop,
    Cycle::Rslock,
];
const PAR: [Cycle; 4] = [
    Cycle::Floor,
    Cycle::FloorScripts,
    Cycle::LockRelease,
    Cycle::Rslock,
];

/// What the summary's rounds measured; `SEQ[0]` and `PAR[0]` are the floor.
struct Measured {
    size: Size,
    /// Per sequential loop: µs per cycle in each round.
    seq_per_cycle: [Vec<f64>; SEQ.len()],
    /// Per sequential loop: every single cycle of every round.
    seq_cycles: [Vec<Duration>; SEQ.len()],
    /// Per parallel loop: cycles per second in each round.
    par_rate: [Vec<f64>; PAR.len()],
    /// Per parallel loop, over all rounds: Redis CPU seconds (`INFO cpu`
    /// `used_cpu_user` + `used_cpu_sys`, summed over the masters) and this
    /// process's CPU ticks (`/proc/self/stat`, 100 Hz), around the batches.
    par_redis_cpu: [f64; PAR.len()],
    par_client_ticks: [u64; PAR.len()],
    /// The master each round's sequential keys were on.
    round_master: Vec<usize>,
    /// How many masters (1 on one server).
    masters: usize,
}

/// `cycles` sequential cycles on one key served by master `master`; pushes
/// each cycle's time onto `each` and returns µs per cycle over the loop.
async fn sequential(
    env: &Env,
    what: Cycle,
    master: usize,
    cycles: u64,
    each: &mut Vec<Duration>,
) -> f64 {
    let key = env.key_on(&format!("summary:{}", what.name()), master);
    each.reserve(cycles as usize);
    let started = Instant::now();
    let mut last = started;
    for _ in 0..cycles {
        cycle(env, what, &key).await;
        let now = Instant::now();
        each.push(now - last);
        last = now;
    }
    (last - started).as_secs_f64() * 1e6 / cycles as f64
}

/// Timed loops, all of them in each short round (the order rotated each
/// round) so that background load hits them alike.
fn measure_summary(rt: &Runtime, env: &Env, size: Size) -> Measured {
    let mut m = Measured {
        seq_per_cycle: Default::default(),
        seq_cycles: Default::default(),
        par_rate: Default::default(),
        par_redis_cpu: Default::default(),
        par_client_ticks: Default::default(),
        round_master: Vec::new(),
        masters: env.masters.len(),
        size,
    };
    let Size {
        rounds,
        cycles,
        par_cycles,
    } = m.size;
    rt.block_on(async {
        // Warm up connections, scripts and the release worker.
        let mut discard = Vec::new();
        for master in 0..env.masters.len() {
            for what in SEQ {
                sequential(env, what, master, 100, &mut discard).await;
            }
        }
        for what in PAR {
            parallel_batch(env, what, 2).await;
        }
        let total = (TASKS as u64 * par_cycles) as f64;
        for round in 0..rounds {
            let master = round % env.masters.len();
            m.round_master.push(master);
            for i in 0..SEQ.len() {
                let j = (round + i) % SEQ.len();
                let per_cycle = sequential(env, SEQ[j], master, cycles, &mut m.seq_cycles[j]).await;
                m.seq_per_cycle[j].push(per_cycle);
            }
            for i in 0..PAR.len() {
                let j = (round + i) % PAR.len();
                let redis0 = redis_cpu(&env.masters).await;
                let ticks0 = cpu_ticks();
                let took = parallel_batch(env, PAR[j], par_cycles).await;
                m.par_client_ticks[j] += cpu_ticks() - ticks0;
                m.par_redis_cpu[j] += redis_cpu(&env.masters).await - redis0;
                m.par_rate[j].push(total / took.as_secs_f64());
            }
        }
        // Let the last dropped guard's release finish before the server goes.
        env.mutex.shutdown().await;
    });
    m
}

/// Redis CPU seconds so far, summed over the masters.
async fn redis_cpu(masters: &Masters) -> f64 {
    masters
        .info_each(InfoKind::Cpu)
        .await
        .iter()
        .map(|text| {
            masters::info_field(text, "used_cpu_user").unwrap_or(0.0)
                + masters::info_field(text, "used_cpu_sys").unwrap_or(0.0)
        })
        .sum()
}

/// This process's user + system CPU time, in clock ticks (100 Hz).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after "(comm) ": utime is the 12th, stime the 13th.
    let Some(close) = stat.rfind(')') else {
        return 0;
    };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    field(11) + field(12)
}

/// Per-round throughput and time ratios of a sequential loop to the floor.
fn seq_ratios(m: &Measured, j: usize) -> (Spread, Spread) {
    let floor = &m.seq_per_cycle[0];
    let this = &m.seq_per_cycle[j];
    (
        stats::paired_ratios(floor, this),
        stats::paired_ratios(this, floor),
    )
}

/// Per-round throughput and time ratios of a parallel loop to the floor.
fn par_ratios(m: &Measured, j: usize) -> (Spread, Spread) {
    let floor = &m.par_rate[0];
    let this = &m.par_rate[j];
    (
        stats::paired_ratios(this, floor),
        stats::paired_ratios(floor, this),
    )
}

fn print_summary(m: &Measured) {
    let Size {
        rounds,
        cycles,
        par_cycles,
    } = m.size;
    println!();
    println!(
        "== summary: {rounds} interleaved round(s) of {cycles} sequential cycles per loop and \
         {TASKS} tasks x {par_cycles} cycles per parallel batch =="
    );
    let mut table = Table::new(&[
        ("benchmark", Align::Left),
        ("time/cycle", Align::Right),
        ("p50 cycle", Align::Right),
        ("cycles/s", Align::Right),
        ("library/floor throughput", Align::Right),
        ("library/floor time", Align::Right),
    ]);
    for (j, what) in SEQ.iter().enumerate() {
        let (rate, time) = seq_ratios(m, j);
        let per_cycle = stats::median(&m.seq_per_cycle[j]);
        let rates: Vec<f64> = m.seq_per_cycle[j].iter().map(|us| 1e6 / us).collect();
        table.row([
            format!("uncontended_cycle/{}", what.name()),
            report::us(Duration::from_secs_f64(per_cycle / 1e6)),
            report::us(stats::median_duration(&m.seq_cycles[j])),
            format!("{:.0}", stats::median(&rates)),
            report::spread(rate),
            report::spread(time),
        ]);
    }
    for (j, what) in PAR.iter().enumerate() {
        let (rate, time) = par_ratios(m, j);
        table.row([
            format!("parallel_64/{}", what.name()),
            "-".into(),
            "-".into(),
            format!("{:.0}", stats::median(&m.par_rate[j])),
            report::spread(rate),
            report::spread(time),
        ]);
    }
    print!("{}", table.plain());
    println!("(ratios: median [min-max] of the per-round ratios to the floor of the same round)");
    println!();
    let cycles = (rounds as u64 * TASKS as u64 * par_cycles) as f64;
    let cpu: Vec<String> = PAR
        .iter()
        .enumerate()
        .map(|(j, what)| {
            format!(
                "{} {:.1} µs Redis (all masters) / {:.1} µs process",
                what.name(),
                m.par_redis_cpu[j] / cycles * 1e6,
                m.par_client_ticks[j] as f64 / 100.0 / cycles * 1e6
            )
        })
        .collect();
    println!(
        "CPU per parallel cycle, over every round's batches (INFO cpu; /proc/self/stat; \
         meaningful on a private server only): {}",
        cpu.join("; ")
    );
    println!();

    let seq = |what| SEQ.iter().position(|&w| w == what).expect("in SEQ");
    let par = |what| PAR.iter().position(|&w| w == what).expect("in PAR");
    let (_, a) = seq_ratios(m, seq(Cycle::LockRelease));
    let (b, _) = par_ratios(m, par(Cycle::LockRelease));
    let (c, _) = seq_ratios(m, seq(Cycle::LockDrop));
    let (b_peer, _) = par_ratios(m, par(Cycle::Rslock));
    let (_, a_peer) = seq_ratios(m, seq(Cycle::Rslock));
    let p50 = |j: usize| report::us(stats::median_duration(&m.seq_cycles[j]));
    let mut headline = Table::new(&[
        ("", Align::Left),
        ("what", Align::Left),
        ("ratio", Align::Left),
        ("value", Align::Right),
        ("", Align::Left),
    ]);
    headline.row([
        "(a)".to_owned(),
        "one task, lock + release()".to_owned(),
        "library/floor time".to_owned(),
        format!("{:.3}", a.median),
        format!(
            "lower is better; target <= 1.05 ({}); rslock {:.3}",
            report::check(a.median <= 1.05),
            a_peer.median
        ),
    ]);
    headline.row([
        "(b)".to_owned(),
        format!("{TASKS} tasks on distinct keys, lock + release()"),
        "library/floor throughput".to_owned(),
        format!("{:.3}", b.median),
        format!(
            "higher is better; target >= 1.4 ({}); rslock {:.3}",
            report::check(b.median >= 1.4),
            b_peer.median
        ),
    ]);
    headline.row([
        "(c)".to_owned(),
        "one task, same key, `let _g = lock().await` + drop".to_owned(),
        "library/floor throughput".to_owned(),
        format!("{:.3}", c.median),
        format!(
            "higher is better; target >= 2.0 ({}); p50 cycle {} library vs {} floor",
            report::check(c.median >= 2.0),
            p50(seq(Cycle::LockDrop)),
            p50(0)
        ),
    ]);
    print!("{}", headline.plain());
    println!(
        "(floor_scripts sends the library's own acquire and release scripts raw: the part of \
         a gap that is the protocol's, not the library's)"
    );
    if m.masters > 1 {
        print_per_master(m);
    }
}

/// (a) and (c) over the rounds whose sequential keys were on each master.
fn print_per_master(m: &Measured) {
    let seq = |what| SEQ.iter().position(|&w| w == what).expect("in SEQ");
    let mut table = Table::new(&[
        ("master", Align::Left),
        ("rounds", Align::Right),
        ("floor time/cycle", Align::Right),
        ("(a) lock_release library/floor time", Align::Right),
        ("(c) lock_drop library/floor throughput", Align::Right),
    ]);
    for master in 0..m.masters {
        let rounds: Vec<usize> = (0..m.round_master.len())
            .filter(|&r| m.round_master[r] == master)
            .collect();
        if rounds.is_empty() {
            // A short run (`cargo test --benches`) has fewer rounds than masters.
            continue;
        }
        let pick =
            |j: usize| -> Vec<f64> { rounds.iter().map(|&r| m.seq_per_cycle[j][r]).collect() };
        let floor = pick(0);
        let a = stats::paired_ratios(&pick(seq(Cycle::LockRelease)), &floor);
        let c = stats::paired_ratios(&floor, &pick(seq(Cycle::LockDrop)));
        table.row([
            master.to_string(),
            rounds.len().to_string(),
            report::us(Duration::from_secs_f64(stats::median(&floor) / 1e6)),
            report::spread(a),
            report::spread(c),
        ]);
    }
    println!();
    println!("per master (each round's sequential keys were on one master, in turn):");
    print!("{}", table.plain());
}

fn main() {
    let summary_only = common::has_arg("--summary-only") || common::env_flag("BENCH_SUMMARY_ONLY");
    // Without `--bench` (`cargo test --benches`) criterion runs each
    // benchmark once as a test, and the summary is short.
    let quick = !common::full_run() && !summary_only;

    let redis = common::Redis::from_env();
    let url = redis.url.clone();
    let rt = common::runtime(Some(2));
    let env = rt.block_on(async {
        let mutex = DistributedMutex::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        // `BENCH_HOLDER=web-3`: every lock carries that holder label.
        let mutex = match std::env::var("BENCH_HOLDER") {
            Ok(label) => DistributedMutex::builder(mutex.client().clone())
                .holder(label)
                .build()
                .expect("a valid holder label"),
            Err(_) => mutex,
        };
        let client = mutex.client().clone();
        let compare_and_delete = Script::from_lua(COMPARE_AND_DELETE);
        compare_and_delete.load(&client).await.expect("SCRIPT LOAD");
        let acquire = Script::from_lua(ACQUIRE_LUA);
        acquire.load(&client).await.expect("SCRIPT LOAD");
        let masters = Masters::of(&client).await;
        let prefix = common::key_prefix("bench");
        let parallel_keys = masters.spread(&format!("{prefix}parallel:"), TASKS);
        let rslock =
            (masters.len() == 1).then(|| Arc::new(rslock::LockManager::new(vec![url.clone()])));
        Env {
            rslock,
            mutex,
            client,
            compare_and_delete: Arc::new(compare_and_delete),
            acquire: Arc::new(acquire),
            prefix,
            masters: Arc::new(masters),
            parallel_keys: Arc::new(parallel_keys),
        }
    });
    eprintln!("benchmarking against {url} ({})", redis.origin());
    if env.masters.len() > 1 {
        let per: Vec<usize> = (0..env.masters.len())
            .map(|i| {
                env.parallel_keys
                    .iter()
                    .filter(|k| env.masters.of_key(k) == i)
                    .count()
            })
            .collect();
        eprintln!(
            "Redis Cluster, {} masters ({}); parallel keys per master {per:?}; the floor runs on \
             the same cluster client",
            env.masters.len(),
            (0..env.masters.len())
                .map(|i| env.masters.name(i))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    #[cfg(feature = "metrics")]
    let prometheus = prometheus_recorder();

    if !summary_only {
        let mut c = Criterion::default()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .sample_size(30)
            .configure_from_args();
        bench_uncontended(&mut c, &rt, &env);
        bench_parallel(&mut c, &rt, &env);
        c.final_summary();
    }
    let size = if quick {
        Size {
            rounds: 1,
            cycles: 50,
            par_cycles: 2,
        }
    } else {
        Size {
            rounds: common::env_u64("BENCH_SUMMARY_ROUNDS", 30) as usize,
            cycles: common::env_u64("BENCH_SUMMARY_CYCLES", 200),
            par_cycles: common::env_u64("BENCH_SUMMARY_PARALLEL_CYCLES", 10),
        }
    };
    let measured = measure_summary(&rt, &env, size);
    print_summary(&measured);
    #[cfg(feature = "metrics")]
    if let Some(handle) = prometheus {
        let acquisitions = handle.render();
        let acquisitions = acquisitions
            .lines()
            .filter(|l| l.starts_with(distributed_mutex::metrics::ACQUISITIONS));
        println!("metrics recorded (Prometheus recorder):");
        acquisitions.for_each(|l| println!("  {l}"));
    }
}

/// Installs the Prometheus exporter's recorder (feature `metrics`), unless
/// `BENCH_METRICS_RECORDER=0`.
#[cfg(feature = "metrics")]
fn prometheus_recorder() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    if std::env::var("BENCH_METRICS_RECORDER").is_ok_and(|v| v == "0") {
        eprintln!("metrics: feature on, no recorder installed");
        return None;
    }
    let buckets = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&buckets)
        .expect("buckets")
        .install_recorder()
        .expect("install the Prometheus recorder");
    distributed_mutex::metrics::describe();
    eprintln!("metrics: feature on, Prometheus recorder installed");
    Some(handle)
}
