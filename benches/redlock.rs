//! A Redlock lock/unlock cycle on 3 and on 5 servers, against the
//! single-server cycle and against rslock's Redlock on the same servers, in
//! the same run.
//!
//! * `single`: `DistributedMutex::lock(key)` + `guard.release()` on server 0.
//! * `redlock3`, `redlock5`: `Redlock::lock(key)` + `guard.release()` over
//!   servers 0-2 and 0-4 (the defaults: renewal on, 250 ms per-server
//!   timeout).
//! * `rslock3`, `rslock5`: rslock's `LockManager::lock(key, ttl)` +
//!   `unlock(&lock)` over the same servers (the `redis` crate's
//!   multiplexed connections).
//!
//! Every cycle is uncontended (one task, its own key) and ends with the key
//! released on every server. After criterion's group a summary is printed
//! from short rounds of every loop interleaved (order rotated each round):
//! the median time per cycle of each, and per-round paired ratios (median
//! [min-max]) of Redlock against rslock and against the single-server cycle.
//! Waiting by release notifications is not part of Redlock (it polls at
//! jittered delays), so there is no contended comparison here.
//!
//! ```text
//! cargo bench --bench redlock                      # criterion group + summary
//! BENCH_SUMMARY_ONLY=1 cargo bench --bench redlock # summary only (~15 s)
//! ```
//!
//! Five private `redis-server` processes are started on free ports (killed
//! by pid when the bench ends).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::time::{Duration, Instant};

use common::report::{self, Align, Table};
use common::stats;
use criterion::{Criterion, Throughput};
use distributed_mutex::{DistributedMutex, Redlock};
use rslock::LockManager;
use support::redlock::Masters;
use tokio::runtime::Runtime;

const TTL: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cycle {
    Single,
    Redlock3,
    Redlock5,
    Rslock3,
    Rslock5,
}

const CYCLES: [Cycle; 5] = [
    Cycle::Single,
    Cycle::Redlock3,
    Cycle::Redlock5,
    Cycle::Rslock3,
    Cycle::Rslock5,
];

impl Cycle {
    fn name(self) -> &'static str {
        match self {
            Cycle::Single => "single",
            Cycle::Redlock3 => "redlock3",
            Cycle::Redlock5 => "redlock5",
            Cycle::Rslock3 => "rslock3",
            Cycle::Rslock5 => "rslock5",
        }
    }
}

struct Env {
    single: DistributedMutex,
    redlock3: Redlock,
    redlock5: Redlock,
    rslock3: LockManager,
    rslock5: LockManager,
    prefix: String,
}

async fn cycle(env: &Env, what: Cycle, key: &str) {
    match what {
        Cycle::Single => {
            let guard = env.single.lock(key).await.expect("lock");
            guard.release().await.expect("release");
        }
        Cycle::Redlock3 | Cycle::Redlock5 => {
            let redlock = if what == Cycle::Redlock3 {
                &env.redlock3
            } else {
                &env.redlock5
            };
            let guard = redlock.lock(key).await.expect("redlock");
            guard.release().await.expect("release");
        }
        Cycle::Rslock3 | Cycle::Rslock5 => {
            let manager = if what == Cycle::Rslock3 {
                &env.rslock3
            } else {
                &env.rslock5
            };
            let lock = manager
                .lock(key.as_bytes(), TTL)
                .await
                .expect("rslock lock");
            manager.unlock(&lock).await;
        }
    }
}

fn key(env: &Env, what: Cycle) -> String {
    format!("{}{}", env.prefix, what.name())
}

fn bench_cycles(c: &mut Criterion, rt: &Runtime, env: &Env) {
    let mut group = c.benchmark_group("redlock_cycle");
    group.throughput(Throughput::Elements(1));
    for what in CYCLES {
        let key = key(env, what);
        group.bench_function(what.name(), |b| {
            b.to_async(rt).iter(|| cycle(env, what, &key))
        });
    }
    group.finish();
}

/// Per loop, the time per cycle of each round.
fn measure_summary(rt: &Runtime, env: &Env, rounds: usize, cycles: u32) -> Vec<Vec<f64>> {
    let mut per_cycle = vec![Vec::with_capacity(rounds); CYCLES.len()];
    rt.block_on(async {
        for round in 0..rounds {
            for offset in 0..CYCLES.len() {
                let j = (round + offset) % CYCLES.len();
                let what = CYCLES[j];
                let key = key(env, what);
                let started = Instant::now();
                for _ in 0..cycles {
                    cycle(env, what, &key).await;
                }
                per_cycle[j].push(started.elapsed().as_secs_f64() / f64::from(cycles));
            }
        }
    });
    per_cycle
}

fn print_summary(per_cycle: &[Vec<f64>], rounds: usize, cycles: u32) {
    let idx = |what: Cycle| CYCLES.iter().position(|c| *c == what).unwrap();
    let time = |what: Cycle| Duration::from_secs_f64(stats::median(&per_cycle[idx(what)]));
    println!("\nRedlock summary: {rounds} rounds x {cycles} cycles per loop, interleaved");
    let mut table = Table::new(&[("loop", Align::Left), ("median per cycle", Align::Right)]);
    for what in CYCLES {
        table.row([what.name().to_owned(), report::us(time(what))]);
    }
    print!("{}", table.plain());
    let ratio = |num: Cycle, den: Cycle| {
        report::spread(stats::paired_ratios(
            &per_cycle[idx(num)],
            &per_cycle[idx(den)],
        ))
    };
    let mut ratios = Table::new(&[
        ("time ratio", Align::Left),
        ("median [min-max]", Align::Right),
    ]);
    for (num, den) in [
        (Cycle::Redlock3, Cycle::Rslock3),
        (Cycle::Redlock5, Cycle::Rslock5),
        (Cycle::Redlock3, Cycle::Single),
        (Cycle::Redlock5, Cycle::Single),
        (Cycle::Rslock3, Cycle::Single),
        (Cycle::Rslock5, Cycle::Single),
    ] {
        ratios.row([format!("{}/{}", num.name(), den.name()), ratio(num, den)]);
    }
    print!("{}", ratios.plain());
    println!("(lower is better: below 1.0 the first loop is faster)");
}

fn main() {
    let summary_only = common::has_arg("--summary-only") || common::env_flag("BENCH_SUMMARY_ONLY");
    let quick = !common::full_run() && !summary_only;
    let masters = Masters::start(5);
    let urls = masters.urls();
    let rt = common::runtime(Some(2));
    let env = rt.block_on(async {
        let redlock = |n: usize| {
            let urls = urls[..n].to_vec();
            async move { Redlock::connect(urls).await.expect("redlock") }
        };
        Env {
            single: DistributedMutex::connect(&urls[0]).await.expect("mutex"),
            redlock3: redlock(3).await,
            redlock5: redlock(5).await,
            rslock3: LockManager::new(urls[..3].to_vec()),
            rslock5: LockManager::new(urls.clone()),
            prefix: common::key_prefix("redlock"),
        }
    });
    eprintln!("benchmarking against 5 private redis-server processes: {urls:?}");

    if !summary_only {
        let mut c = Criterion::default()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .sample_size(30)
            .configure_from_args();
        bench_cycles(&mut c, &rt, &env);
        c.final_summary();
    }
    let (rounds, cycles) = if quick {
        (1, 20)
    } else {
        (
            common::env_u64("BENCH_SUMMARY_ROUNDS", 20) as usize,
            common::env_u64("BENCH_SUMMARY_CYCLES", 200) as u32,
        )
    };
    let per_cycle = measure_summary(&rt, &env, rounds, cycles);
    print_summary(&per_cycle, rounds, cycles);
    drop(env);
    drop(masters);
}
