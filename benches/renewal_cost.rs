//! What holding 10,000 auto-renewed locks in one process costs.
//!
//! ```text
//! cargo bench --bench renewal_cost                 # private redis-server
//! REDIS_URL=redis://127.0.0.1:6379 cargo bench --bench renewal_cost
//! ```
//!
//! Takes 10,000 locks on one mutex (concurrently, in batches) and holds them:
//! first with a 3 s lease (renewed every second) for 15 s, then with the
//! default 60 s lease (renewed every 20 s) for 5 s, the idle cost. For each
//! hold it reports the commands per second Redis processed (`INFO stats`
//! `total_commands_processed`) and the `EVALSHA` calls among them (`INFO
//! commandstats`; renewals are batched script calls), this process's CPU time
//! (`/proc/self/stat` utime + stime, 100 Hz ticks) and the Redis server's
//! (`INFO cpu`), and this process's resident memory (`/proc/self/status`
//! `VmRSS`) before taking the locks and while holding them. It then checks
//! that every lock is still held (key count, a spot check of tokens, no guard
//! lost), drops them all, shuts the mutex down and checks that no key is left.
//!
//! Without `REDIS_URL` it starts a private `redis-server` (the test fixture),
//! so the command counts are this benchmark's alone; on a shared server other
//! clients' commands are counted too, and keys are counted with `SCAN` over
//! this run's key prefix instead of `DBSIZE`.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::time::{Duration, Instant};

use common::report::{Align, Table};
use distributed_mutex::{DistributedMutex, LockGuard};
use fred::prelude::*;
use fred::types::InfoKind;

const LOCKS: usize = 10_000;
/// Acquisitions in flight at once while taking the locks.
const BATCH: usize = 1_000;
/// Clock ticks per second of `/proc/self/stat` (USER_HZ; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

struct Target {
    redis: common::Redis,
    /// A plain client for INFO, DBSIZE/SCAN and spot checks.
    raw: Client,
}

impl Target {
    fn url(&self) -> &str {
        &self.redis.url
    }

    /// Private server: `DBSIZE` counts only our keys.
    fn private(&self) -> bool {
        self.redis.is_private()
    }
}

struct Row {
    label: &'static str,
    ttl: Duration,
    hold: Duration,
    setup: Duration,
    cmds_per_sec: f64,
    evalsha_per_sec: f64,
    /// Keys renewed per second (`PEXPIRE` run by the renewal script).
    renewed_per_sec: f64,
    cpu_ticks: u64,
    redis_cpu: f64,
    rss_before_kib: u64,
    rss_holding_kib: u64,
    keys_held: usize,
    lost: usize,
    keys_after: usize,
}

fn main() {
    // What `#[tokio::main]` builds: multi-thread, one worker per core.
    common::runtime(None).block_on(run());
}

async fn run() {
    let started = Instant::now();
    let redis = common::Redis::from_env();
    let raw = match redis.server() {
        Some(server) => server.client().await,
        None => connect_raw(&redis.url).await,
    };
    let target = Target { redis, raw };
    println!(
        "renewal_cost: {LOCKS} locks on one mutex, Redis at {} ({})",
        target.url(),
        target.redis.origin()
    );

    let rows = vec![
        hold(
            &target,
            "3 s lease",
            Duration::from_secs(3),
            Duration::from_secs(15),
        )
        .await,
        hold(
            &target,
            "60 s lease (idle)",
            Duration::from_secs(60),
            Duration::from_secs(5),
        )
        .await,
    ];
    print_table(&rows);
    println!("total run time {:.1} s", started.elapsed().as_secs_f64());

    let failed: Vec<&Row> = rows
        .iter()
        .filter(|r| r.keys_held != LOCKS || r.lost != 0 || r.keys_after != 0)
        .collect();
    if !failed.is_empty() {
        for r in failed {
            eprintln!(
                "FAILED {}: {} of {LOCKS} keys held at the end, {} guards lost, {} keys left after release",
                r.label, r.keys_held, r.lost, r.keys_after
            );
        }
        std::process::exit(1);
    }
}

async fn connect_raw(url: &str) -> Client {
    let config = Config::from_url(url).unwrap_or_else(|e| panic!("bad REDIS_URL {url}: {e}"));
    let client = Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(5))
        .build()
        .expect("build fred client");
    client
        .init()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    client
}

/// Takes `LOCKS` locks with `ttl`, holds them for `hold`, measures, checks,
/// releases.
async fn hold(target: &Target, label: &'static str, ttl: Duration, hold: Duration) -> Row {
    let prefix = format!("{}{}:", common::key_prefix("renewal_cost"), ttl.as_secs());
    let mutex = DistributedMutex::builder(
        DistributedMutex::connect(target.url())
            .await
            .expect("connect the mutex")
            .client()
            .clone(),
    )
    .ttl(ttl)
    .key_prefix(prefix.clone())
    .build()
    .expect("build the mutex");
    let rss_before_kib = rss_kib();

    // Take the locks, BATCH at a time.
    let setup_started = Instant::now();
    let mut guards: Vec<LockGuard> = Vec::with_capacity(LOCKS);
    for first in (0..LOCKS).step_by(BATCH) {
        let mut batch = tokio::task::JoinSet::new();
        for i in first..(first + BATCH).min(LOCKS) {
            let mutex = mutex.clone();
            batch.spawn(async move { mutex.lock(format!("k{i}")).await });
        }
        while let Some(joined) = batch.join_next().await {
            guards.push(joined.expect("join").expect("take a lock"));
        }
    }
    let setup = setup_started.elapsed();
    assert_eq!(guards.len(), LOCKS);

    // Hold, measuring.
    let cmds0 = info_u64(&target.raw, InfoKind::Stats, "total_commands_processed").await;
    let (evalsha0, pexpire0) = script_calls(&target.raw).await;
    let redis_cpu0 = redis_cpu(&target.raw).await;
    let cpu0 = cpu_ticks();
    let hold_started = Instant::now();
    let mut rss_holding_kib = 0;
    while hold_started.elapsed() < hold {
        let left = hold.saturating_sub(hold_started.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        rss_holding_kib = rss_holding_kib.max(rss_kib());
    }
    let cpu_ticks = cpu_ticks() - cpu0;
    let held_for = hold_started.elapsed().as_secs_f64();
    let cmds1 = info_u64(&target.raw, InfoKind::Stats, "total_commands_processed").await;
    let (evalsha1, pexpire1) = script_calls(&target.raw).await;
    let redis_cpu = redis_cpu(&target.raw).await - redis_cpu0;

    // Every lock still held: no guard lost, every key there, tokens intact.
    let lost = guards.iter().filter(|g| g.is_lost()).count();
    let keys_held = count_keys(target, &prefix).await;
    for guard in guards.iter().step_by(LOCKS / 100) {
        let value: Option<String> = target
            .raw
            .get(format!("{prefix}{}", guard.key()))
            .await
            .expect("GET");
        assert_eq!(
            value.as_deref(),
            Some(guard.token()),
            "{label}: token of {} not in Redis",
            guard.key()
        );
    }

    drop(guards);
    mutex.shutdown().await;
    let keys_after = count_keys(target, &prefix).await;

    Row {
        label,
        ttl,
        hold: Duration::from_secs_f64(held_for),
        setup,
        cmds_per_sec: (cmds1 - cmds0) as f64 / held_for,
        evalsha_per_sec: (evalsha1 - evalsha0) as f64 / held_for,
        renewed_per_sec: (pexpire1 - pexpire0) as f64 / held_for,
        cpu_ticks,
        redis_cpu,
        rss_before_kib,
        rss_holding_kib,
        keys_held,
        lost,
        keys_after,
    }
}

fn print_table(rows: &[Row]) {
    let right = |h| (h, Align::Right);
    let mut table = Table::new(&[
        ("hold", Align::Left),
        ("TTL / renewal every", Align::Left),
        right("setup (s)"),
        right("held (s)"),
        right("Redis cmds/s (incl. in scripts)"),
        right("EVALSHA/s"),
        right("keys renewed/s"),
        right("process CPU (ticks; % of a core)"),
        right("Redis CPU (% of a core)"),
        right("RSS before -> holding (MiB)"),
        right("per lock (bytes)"),
        right("held at end"),
        right("lost"),
        right("keys after release"),
    ]);
    for r in rows {
        let held = r.hold.as_secs_f64();
        let per_lock =
            (r.rss_holding_kib.saturating_sub(r.rss_before_kib) * 1024) as f64 / LOCKS as f64;
        table.row([
            r.label.to_owned(),
            format!("{:?} / {:?}", r.ttl, r.ttl / 3),
            format!("{:.2}", r.setup.as_secs_f64()),
            format!("{held:.1}"),
            format!("{:.1}", r.cmds_per_sec),
            format!("{:.1}", r.evalsha_per_sec),
            format!("{:.0}", r.renewed_per_sec),
            format!(
                "{} ; {:.2} %",
                r.cpu_ticks,
                r.cpu_ticks as f64 / TICKS_PER_SEC / held * 100.0
            ),
            format!("{:.2} %", r.redis_cpu / held * 100.0),
            format!(
                "{:.1} -> {:.1}",
                r.rss_before_kib as f64 / 1024.0,
                r.rss_holding_kib as f64 / 1024.0
            ),
            format!("{per_lock:.0}"),
            format!("{}/{LOCKS}", r.keys_held),
            r.lost.to_string(),
            r.keys_after.to_string(),
        ]);
    }
    println!();
    print!("{}", table.markdown());
    println!(
        "Redis counts the GET and PEXPIRE a script runs as commands: with renewal the\n\
         commands/s are ~2 per renewed key plus the EVALSHA calls (at most 500 keys each).\n\
         RSS is the process's resident memory; the second hold reuses memory the first\n\
         one freed, so its per-lock figure is not meaningful."
    );
    println!();
}

/// Keys of this run: `DBSIZE` on a private server, else `SCAN` over `prefix`.
async fn count_keys(target: &Target, prefix: &str) -> usize {
    if target.private() {
        let n: i64 = target.raw.dbsize().await.expect("DBSIZE");
        return n as usize;
    }
    let pattern = format!("{prefix}*");
    let mut cursor = "0".to_owned();
    let mut n = 0;
    loop {
        let (next, keys): (String, Vec<String>) = target
            .raw
            .scan_page(cursor, pattern.as_str(), Some(1000), None)
            .await
            .expect("SCAN");
        n += keys.len();
        if next == "0" {
            return n;
        }
        cursor = next;
    }
}

async fn info(raw: &Client, section: InfoKind) -> String {
    raw.info(Some(section)).await.expect("INFO")
}

async fn info_u64(raw: &Client, section: InfoKind, field: &str) -> u64 {
    let text = info(raw, section).await;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO"))
}

/// `calls` of `cmdstat_evalsha` and of `cmdstat_pexpire` (0 before the
/// first call). Commands a script runs are counted by Redis too, in
/// `total_commands_processed` and in their own commandstats line.
async fn script_calls(raw: &Client) -> (u64, u64) {
    let text = info(raw, InfoKind::CommandStats).await;
    let calls = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    };
    (calls("cmdstat_evalsha:"), calls("cmdstat_pexpire:"))
}

/// The server's CPU seconds so far (`used_cpu_user` + `used_cpu_sys`).
async fn redis_cpu(raw: &Client) -> f64 {
    let text = info(raw, InfoKind::Cpu).await;
    ["used_cpu_user:", "used_cpu_sys:"]
        .iter()
        .map(|field| {
            text.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum()
}

/// This process's user + system CPU time, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // Fields after "(comm) ": state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

/// This process's resident set size, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("read /proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}
