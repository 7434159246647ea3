//! The semaphore and the read-write lock against the exclusive lock, in the
//! same run on one private `redis-server` (or `REDIS_URL`, or
//! `BENCH_CLUSTER=1`).
//!
//! * Cycles (one task, uncontended, its own name): `lock` =
//!   `mutex.lock(key)` + `guard.release()`; `permit` = `semaphore(name,
//!   4).acquire()` + `permit.release()`; `read` and `write` =
//!   `rw(name).read()` / `.write()` + `release()`. After criterion's group,
//!   a summary from short interleaved rounds (order rotated each round): the
//!   median time per cycle, and per-round paired ratios (median [min-max])
//!   of each against `lock`.
//! * Handoff throughput: `W` workers (split over two mutexes, as two
//!   processes) loop on one semaphore of `N` permits, each taking a permit,
//!   releasing it at once and asking again; permits granted per second over
//!   a fixed window, for N = 4 and W = 16 (and N = 1, W = 16, and the
//!   exclusive lock with 16 workers, for reference).
//!
//! ```text
//! cargo bench --bench primitives                      # criterion + summary
//! BENCH_SUMMARY_ONLY=1 cargo bench --bench primitives # summary only (~20 s)
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::report::{self, Align, Table};
use common::stats;
use criterion::{Criterion, Throughput};
use distributed_mutex::DistributedMutex;
use tokio::runtime::Runtime;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cycle {
    Lock,
    Permit,
    Read,
    Write,
}

const CYCLES: [Cycle; 4] = [Cycle::Lock, Cycle::Permit, Cycle::Read, Cycle::Write];

impl Cycle {
    fn name(self) -> &'static str {
        match self {
            Cycle::Lock => "lock",
            Cycle::Permit => "permit",
            Cycle::Read => "read",
            Cycle::Write => "write",
        }
    }
}

struct Env {
    mutex: DistributedMutex,
    /// A second "process", for the handoff workers.
    other: DistributedMutex,
    prefix: String,
}

fn name(env: &Env, what: &str) -> String {
    // One hash tag per name: on a cluster, each stays on one master.
    format!("{{{}{what}}}", env.prefix)
}

async fn cycle(env: &Env, what: Cycle, name: &str) {
    match what {
        Cycle::Lock => {
            let guard = env.mutex.lock(name).await.expect("lock");
            guard.release().await.expect("release");
        }
        Cycle::Permit => {
            let permit = env
                .mutex
                .semaphore(name, 4)
                .acquire()
                .await
                .expect("permit");
            permit.release().await.expect("release");
        }
        Cycle::Read => {
            let guard = env.mutex.rw(name).read().await.expect("read");
            guard.release().await.expect("release");
        }
        Cycle::Write => {
            let guard = env.mutex.rw(name).write().await.expect("write");
            guard.release().await.expect("release");
        }
    }
}

fn bench_cycles(c: &mut Criterion, rt: &Runtime, env: &Env) {
    let mut group = c.benchmark_group("primitive_cycle");
    group.throughput(Throughput::Elements(1));
    for what in CYCLES {
        let name = name(env, what.name());
        group.bench_function(what.name(), |b| {
            b.to_async(rt).iter(|| cycle(env, what, &name))
        });
    }
    group.finish();
}

/// Per loop, the time per cycle of each round.
fn measure_cycles(rt: &Runtime, env: &Env, rounds: usize, cycles: u32) -> Vec<Vec<f64>> {
    let mut per_cycle = vec![Vec::with_capacity(rounds); CYCLES.len()];
    rt.block_on(async {
        for round in 0..rounds {
            for offset in 0..CYCLES.len() {
                let j = (round + offset) % CYCLES.len();
                let what = CYCLES[j];
                let name = name(env, what.name());
                let started = Instant::now();
                for _ in 0..cycles {
                    cycle(env, what, &name).await;
                }
                per_cycle[j].push(started.elapsed().as_secs_f64() / f64::from(cycles));
            }
        }
    });
    per_cycle
}

fn print_cycles(per_cycle: &[Vec<f64>], rounds: usize, cycles: u32) {
    let idx = |what: Cycle| CYCLES.iter().position(|c| *c == what).unwrap();
    println!("\nCycle summary: {rounds} rounds x {cycles} cycles per loop, interleaved");
    let mut table = Table::new(&[
        ("loop", Align::Left),
        ("median per cycle", Align::Right),
        ("time ratio to lock, median [min-max]", Align::Right),
    ]);
    for what in CYCLES {
        let time = Duration::from_secs_f64(stats::median(&per_cycle[idx(what)]));
        let ratio = stats::paired_ratios(&per_cycle[idx(what)], &per_cycle[idx(Cycle::Lock)]);
        table.row([
            what.name().to_owned(),
            report::us(time),
            report::spread(ratio),
        ]);
    }
    print!("{}", table.plain());
    println!("(lower is better: below 1.0 the loop is faster than the lock's)");
}

/// What a handoff run loops on.
#[derive(Clone, Copy, Debug)]
enum Handoff {
    Semaphore { permits: u32 },
    Lock,
}

/// `workers` tasks (half on each mutex) cycle on one name for `window`:
/// (grants per second, acquisitions that gave up).
fn handoff(
    rt: &Runtime,
    env: &Env,
    what: Handoff,
    workers: usize,
    window: Duration,
    run: usize,
) -> (f64, u64) {
    let name = name(env, &format!("handoff:{what:?}:{workers}:{run}"));
    let stop = Arc::new(AtomicBool::new(false));
    let grants = Arc::new(AtomicU64::new(0));
    let gave_up = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let mut tasks = Vec::with_capacity(workers);
        for w in 0..workers {
            let mutex = if w % 2 == 0 {
                env.mutex.clone()
            } else {
                env.other.clone()
            };
            let (name, stop) = (name.clone(), Arc::clone(&stop));
            let (grants, gave_up) = (Arc::clone(&grants), Arc::clone(&gave_up));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let ok = match what {
                        Handoff::Semaphore { permits } => {
                            match mutex.semaphore(&name, permits).acquire().await {
                                Ok(p) => p.release().await.is_ok(),
                                Err(_) => false,
                            }
                        }
                        Handoff::Lock => match mutex.lock(&name).await {
                            Ok(g) => g.release().await.is_ok(),
                            Err(_) => false,
                        },
                    };
                    let counter = if ok { &grants } else { &gave_up };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // Warm-up: every worker running and subscribed.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = grants.load(Ordering::SeqCst);
        let started = Instant::now();
        tokio::time::sleep(window).await;
        let done = grants.load(Ordering::SeqCst) - start;
        let elapsed = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.expect("worker");
        }
        (
            done as f64 / elapsed.as_secs_f64(),
            gave_up.load(Ordering::SeqCst),
        )
    })
}

fn print_handoffs(rt: &Runtime, env: &Env, rounds: usize, window: Duration) {
    println!("\nHandoff throughput: {rounds} rounds x {window:?} window per setting, 16 workers over two mutexes");
    let settings = [
        ("semaphore N=4", Handoff::Semaphore { permits: 4 }),
        ("semaphore N=16", Handoff::Semaphore { permits: 16 }),
        ("semaphore N=1", Handoff::Semaphore { permits: 1 }),
        ("exclusive lock", Handoff::Lock),
    ];
    let mut rates = vec![Vec::with_capacity(rounds); settings.len()];
    let mut gave_up = vec![0u64; settings.len()];
    for round in 0..rounds {
        for offset in 0..settings.len() {
            let j = (round + offset) % settings.len();
            let (rate, failed) = handoff(rt, env, settings[j].1, 16, window, round);
            rates[j].push(rate);
            gave_up[j] += failed;
        }
    }
    let mut table = Table::new(&[
        ("setting", Align::Left),
        ("grants/s median", Align::Right),
        ("min-max", Align::Right),
        ("gave up", Align::Right),
    ]);
    for (j, (label, _)) in settings.iter().enumerate() {
        let min = rates[j].iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates[j].iter().copied().fold(0.0, f64::max);
        table.row([
            (*label).to_owned(),
            format!("{:.0}", stats::median(&rates[j])),
            format!("{min:.0}-{max:.0}"),
            gave_up[j].to_string(),
        ]);
    }
    print!("{}", table.plain());
}

fn main() {
    let summary_only = common::has_arg("--summary-only") || common::env_flag("BENCH_SUMMARY_ONLY");
    let quick = !common::full_run() && !summary_only;
    let redis = common::Redis::from_env();
    let rt = common::runtime(Some(2));
    let env = rt.block_on(async {
        Env {
            mutex: DistributedMutex::connect(&redis.url).await.expect("mutex"),
            other: DistributedMutex::connect(&redis.url).await.expect("mutex"),
            prefix: common::key_prefix("primitives"),
        }
    });
    eprintln!("benchmarking against {} ({})", redis.url, redis.origin());

    if !summary_only {
        let mut c = Criterion::default()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .sample_size(30)
            .configure_from_args();
        bench_cycles(&mut c, &rt, &env);
        c.final_summary();
    }
    let (rounds, cycles, handoff_rounds, window) = if quick {
        (1, 20, 1, Duration::from_millis(300))
    } else {
        (
            common::env_u64("BENCH_SUMMARY_ROUNDS", 20) as usize,
            common::env_u64("BENCH_SUMMARY_CYCLES", 200) as u32,
            common::env_u64("BENCH_HANDOFF_ROUNDS", 3) as usize,
            Duration::from_millis(common::env_u64("BENCH_HANDOFF_MS", 2000)),
        )
    };
    let per_cycle = measure_cycles(&rt, &env, rounds, cycles);
    print_cycles(&per_cycle, rounds, cycles);
    print_handoffs(&rt, &env, handoff_rounds, window);
    rt.block_on(async {
        env.mutex.shutdown().await;
        env.other.shutdown().await;
    });
    drop(redis);
}
