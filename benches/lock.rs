//! Lock/unlock cost against the raw-command floor, measured in the same run on
//! the same fred client.
//!
//! * `uncontended_cycle`: one task, one key.
//!   `floor` = `SET key token NX PX 60000` + `EVALSHA` compare-and-delete;
//!   `lock_release` = `mutex.lock(key)` + `guard.release()`;
//!   `lock_drop` = `mutex.lock(key)` + dropping the guard (background release).
//! * `parallel_64`: 64 tasks on 64 distinct keys, each doing cycles back to
//!   back; throughput in cycles per second, lock+release against the floor.
//!
//! After criterion's groups a summary table is printed from simple timed
//! loops (short rounds of floor and lock interleaved, order rotated each
//! round, median per cycle), with the ratios lock/floor as the median of the
//! per-round ratios. It also times `floor_scripts`: the library's own acquire
//! and release scripts sent raw, which splits the gap between the protocol's
//! share (a Lua acquire instead of a plain `SET`) and the library's.
//! `BENCH_SUMMARY_ROUNDS` (30), `BENCH_SUMMARY_CYCLES` (200
//! sequential cycles per loop per round) and `BENCH_SUMMARY_PARALLEL_CYCLES`
//! (10 cycles per task per round) change its size.
//!
//! ```text
//! cargo bench --bench lock                     # criterion groups + summary
//! BENCH_SUMMARY_ONLY=1 cargo bench --bench lock # summary only (~10 s)
//! cargo bench --bench lock -- --summary-only    # the same
//! ```
//!
//! A private `redis-server` is started on a free port unless `REDIS_URL` is
//! set (then that server is used; the keys are `bench:<pid>:*` and are left
//! deleted).

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use distributed_mutex::DistributedMutex;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions};
use tokio::runtime::Runtime;

/// The compare-and-delete the floor runs (the same logic as the library's
/// release script, sent the same way: EVALSHA with reload on NOSCRIPT).
const COMPARE_AND_DELETE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) end return 0";

/// The library's own acquire script, sent raw by the diagnostic
/// `floor_scripts` loop of the summary.
const ACQUIRE_LUA: &str = include_str!("../src/scripts/acquire.lua");

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
}

impl Env {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
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
    /// `mutex.lock(key)` + dropping the guard.
    LockDrop,
}

impl Cycle {
    fn name(self) -> &'static str {
        match self {
            Cycle::Floor => "floor",
            Cycle::FloorScripts => "floor_scripts",
            Cycle::LockRelease => "lock_release",
            Cycle::LockDrop => "lock_drop",
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
            let guard = env.mutex.lock(key).await.expect("lock");
            drop(black_box(guard));
        }
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
    let reply: Vec<i64> = env
        .acquire
        .evalsha_with_reload(&env.client, key, vec![token.clone(), "60000".into()])
        .await
        .expect("floor_scripts EVALSHA acquire");
    assert_eq!(reply, [1], "floor_scripts: {key} was already set");
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
        let key = env.key(&format!("parallel:{t}"));
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

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// `cycles` sequential cycles on one key; µs per cycle.
async fn sequential(env: &Env, what: Cycle, cycles: u64) -> f64 {
    let key = env.key(&format!("summary:{}", what.name()));
    let t = Instant::now();
    for _ in 0..cycles {
        cycle(env, what, &key).await;
    }
    t.elapsed().as_secs_f64() * 1e6 / cycles as f64
}

/// Per-round paired ratios `num / den`: median, min, max.
fn ratio_stats(num: &[f64], den: &[f64]) -> (f64, f64, f64) {
    let ratios: Vec<f64> = num.iter().zip(den).map(|(n, d)| n / d).collect();
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(ratios), min, max)
}

/// Timed loops, floor and lock interleaved in short rounds (the order rotated
/// each round) so that background load hits both alike; prints the median per
/// cycle, and the ratios as the median of the per-round ratios.
fn summary(rt: &Runtime, env: &Env, quick: bool) {
    let (rounds, cycles, par_cycles) = if quick {
        (1, 50, 2)
    } else {
        (
            env_u64("BENCH_SUMMARY_ROUNDS", 30),
            env_u64("BENCH_SUMMARY_CYCLES", 200),
            env_u64("BENCH_SUMMARY_PARALLEL_CYCLES", 10),
        )
    };
    const SEQ: [Cycle; 4] = [
        Cycle::Floor,
        Cycle::FloorScripts,
        Cycle::LockRelease,
        Cycle::LockDrop,
    ];
    const PAR: [Cycle; 3] = [Cycle::Floor, Cycle::FloorScripts, Cycle::LockRelease];
    // Per loop: µs per cycle (sequential), cycles per second (parallel).
    let mut seq: [Vec<f64>; SEQ.len()] = Default::default();
    let mut par: [Vec<f64>; PAR.len()] = Default::default();
    rt.block_on(async {
        // Warm up connections, scripts and the release worker.
        for what in SEQ {
            sequential(env, what, 100).await;
        }
        for what in PAR {
            parallel_batch(env, what, 2).await;
        }
        let total = (TASKS as u64 * par_cycles) as f64;
        for round in 0..rounds as usize {
            for i in 0..SEQ.len() {
                let j = (round + i) % SEQ.len();
                seq[j].push(sequential(env, SEQ[j], cycles).await);
            }
            for i in 0..PAR.len() {
                let j = (round + i) % PAR.len();
                let took = parallel_batch(env, PAR[j], par_cycles).await;
                par[j].push(total / took.as_secs_f64());
            }
        }
        // Let the last dropped guard's release finish before the server goes.
        env.mutex.shutdown().await;
    });

    println!();
    println!(
        "== summary: {rounds} interleaved round(s) of {cycles} sequential cycles per loop and \
         {TASKS} tasks x {par_cycles} cycles per parallel batch =="
    );
    println!(
        "{:<32} {:>14}   vs floor: median [min-max] of the rounds",
        "benchmark", "median"
    );
    let spread = |(r, lo, hi): (f64, f64, f64)| format!("{r:.3}x [{lo:.2}-{hi:.2}]");
    let mut ratio_a = 0.0;
    for (j, what) in SEQ.iter().enumerate() {
        let stats = ratio_stats(&seq[j], &seq[0]);
        if *what == Cycle::LockRelease {
            ratio_a = stats.0;
        }
        println!(
            "{:<32} {:>11.1} µs   {}",
            format!("uncontended_cycle/{}", what.name()),
            median(seq[j].clone()),
            spread(stats)
        );
    }
    let mut ratio_b = 0.0;
    for (j, what) in PAR.iter().enumerate() {
        // Throughput: floor / this.
        let stats = ratio_stats(&par[0], &par[j]);
        if *what == Cycle::LockRelease {
            ratio_b = stats.0;
        }
        println!(
            "{:<32} {:>10.0} c/s   {}",
            format!("parallel_64/{}", what.name()),
            median(par[j].clone()),
            spread(stats)
        );
    }
    println!("ratio (a) lock_release / floor, time per cycle = {ratio_a:.3} (target <= 1.10)");
    println!("ratio (b) floor / lock_release, throughput     = {ratio_b:.3}");
    println!(
        "(floor_scripts sends the library's own acquire and release scripts raw: the part of \
         the ratio that is the protocol's, not the library's)"
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let summary_only = args.iter().any(|a| a == "--summary-only")
        || std::env::var("BENCH_SUMMARY_ONLY").is_ok_and(|v| !v.is_empty() && v != "0");
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`)
    // criterion runs each benchmark once as a test, and the summary is short.
    let quick = !args.iter().any(|a| a == "--bench");

    let (_server, url) = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            let server = support::RedisServer::start();
            let url = server.url();
            (Some(server), url)
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let env = rt.block_on(async {
        let mutex = DistributedMutex::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        let client = mutex.client().clone();
        let compare_and_delete = Script::from_lua(COMPARE_AND_DELETE);
        compare_and_delete.load(&client).await.expect("SCRIPT LOAD");
        let acquire = Script::from_lua(ACQUIRE_LUA);
        acquire.load(&client).await.expect("SCRIPT LOAD");
        Env {
            mutex,
            client,
            compare_and_delete: Arc::new(compare_and_delete),
            acquire: Arc::new(acquire),
            prefix: format!("bench:{}:", std::process::id()),
        }
    });
    eprintln!("benchmarking against {url}");

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
    summary(&rt, &env, quick && !summary_only);
}
