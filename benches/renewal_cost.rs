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
//!
//! It also reports Redis's memory per held lock: `INFO memory` `used_memory`
//! while holding minus before taking the locks, divided by the locks.
//!
//! On Redis Cluster every Redis figure (commands, `EVALSHA`, CPU, memory,
//! keys) is summed over the masters' `INFO`, and the keys held per master
//! are printed (the 10,000 keys hash over all of them). `BENCH_CLUSTER=1`
//! runs the bench twice, one child process after the other (so that each
//! measures its own resident memory from a fresh heap): on a private
//! `redis-server`, then on a private 6-node cluster (3 masters), and prints
//! the two side by side. `RENEWAL_TARGET=single` or `cluster` runs one of
//! them alone; `REDIS_URL=redis-cluster://...` runs against a cluster of
//! your own.
//!
//! ```text
//! BENCH_CLUSTER=1 cargo bench --bench renewal_cost
//! RENEWAL_HOLD_SECS=60 cargo bench --bench renewal_cost   # a longer 3 s-lease hold
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::time::{Duration, Instant};

use common::masters::{self, Masters};
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
    /// The masters (one on one server): INFO is summed over them.
    masters: Masters,
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
    /// `used_memory` and its replication and client buffers, summed over
    /// the masters, before and while holding.
    redis_mem_before: (u64, u64),
    redis_mem_holding: (u64, u64),
    /// Keys on each master while holding.
    keys_per_master: Vec<u64>,
    keys_held: usize,
    lost: usize,
    keys_after: usize,
}

fn main() {
    if common::env_flag("BENCH_CLUSTER")
        && common::env_str("REDIS_URL").is_none()
        && common::env_str("RENEWAL_TARGET").is_none()
    {
        side_by_side();
        return;
    }
    // What `#[tokio::main]` builds: multi-thread, one worker per core.
    common::runtime(None).block_on(run());
}

/// `BENCH_CLUSTER=1`: this bench on a private server, then on a private
/// cluster, each in a child process of its own; then both side by side.
fn side_by_side() {
    let exe = std::env::current_exe().expect("this bench's executable");
    let mut rows = Vec::new();
    for target in ["single", "cluster"] {
        let output = std::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env("RENEWAL_TARGET", target)
            .env_remove("BENCH_CLUSTER")
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run the bench as a child process");
        let stdout = String::from_utf8_lossy(&output.stdout);
        for line in stdout.lines() {
            match line.strip_prefix("@row\t") {
                Some(row) => rows.push(row.split('\t').map(str::to_owned).collect::<Vec<_>>()),
                None => println!("{line}"),
            }
        }
        if !output.status.success() {
            eprintln!("FAILED: the {target} run exited with {}", output.status);
            std::process::exit(1);
        }
    }
    let mut table = Table::new(&[
        ("hold", Align::Left),
        ("Redis", Align::Left),
        ("EVALSHA/s", Align::Right),
        ("keys renewed/s", Align::Right),
        ("Redis cmds/s (incl. in scripts)", Align::Right),
        ("process CPU (% of a core)", Align::Right),
        ("Redis CPU (% of a core, all masters)", Align::Right),
        ("RSS per lock (bytes)", Align::Right),
        (
            "Redis memory per lock (bytes; without buffers)",
            Align::Right,
        ),
        ("keys per master", Align::Right),
    ]);
    let mut sorted: Vec<&Vec<String>> = rows.iter().collect();
    // By hold, single server first.
    sorted.sort_by_key(|r| (r[0].clone(), r[1] != "single"));
    for r in sorted {
        table.row(r.iter().cloned());
    }
    println!("== side by side: the same bench on one server and on a 3-master cluster ==");
    println!();
    print!("{}", table.markdown());
    println!(
        "(one child process each, run one after the other on the same machine; RSS per lock \
         only for the first hold of each)"
    );
}

async fn run() {
    let started = Instant::now();
    let redis = match common::env_str("RENEWAL_TARGET").as_deref() {
        None => common::Redis::from_env(),
        Some("single") => common::Redis::private_server(),
        Some("cluster") => common::Redis::private_cluster(),
        Some(other) => panic!("RENEWAL_TARGET={other:?}: expected single or cluster"),
    };
    let raw = match redis.server() {
        Some(server) => server.client().await,
        None => connect_raw(&redis.url).await,
    };
    let masters = Masters::of(&raw).await;
    let target = Target {
        redis,
        raw,
        masters,
    };
    println!(
        "renewal_cost: {LOCKS} locks on one mutex, Redis at {} ({}{})",
        target.url(),
        target.redis.origin(),
        if target.masters.is_cluster() {
            format!(", {} masters", target.masters.len())
        } else {
            String::new()
        }
    );

    let rows = vec![
        hold(
            &target,
            "3 s lease",
            Duration::from_secs(3),
            Duration::from_secs(common::env_u64("RENEWAL_HOLD_SECS", 15)),
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
    if common::env_str("RENEWAL_TARGET").is_some() {
        let redis = if target.masters.is_cluster() {
            format!("cluster ({} masters)", target.masters.len())
        } else {
            "single".to_owned()
        };
        for (i, r) in rows.iter().enumerate() {
            println!("@row\t{}", machine_row(r, &redis, i == 0).join("\t"));
        }
    }
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
    let redis_mem_before = used_memory(target).await;

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
    let cmds0 = info_u64(target, InfoKind::Stats, "total_commands_processed").await;
    let (evalsha0, pexpire0) = script_calls(target).await;
    let redis_cpu0 = redis_cpu(target).await;
    let cpu0 = cpu_ticks();
    let hold_started = Instant::now();
    let mut rss_holding_kib = 0;
    let mut rss_samples = Vec::new();
    while hold_started.elapsed() < hold {
        let left = hold.saturating_sub(hold_started.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        let rss = rss_kib();
        rss_samples.push(format!("{:.1}", rss as f64 / 1024.0));
        rss_holding_kib = rss_holding_kib.max(rss);
    }
    eprintln!(
        "{label}: RSS each second while holding (MiB): {}",
        rss_samples.join(" ")
    );
    let cpu_ticks = cpu_ticks() - cpu0;
    let held_for = hold_started.elapsed().as_secs_f64();
    let cmds1 = info_u64(target, InfoKind::Stats, "total_commands_processed").await;
    let (evalsha1, pexpire1) = script_calls(target).await;
    let redis_cpu = redis_cpu(target).await - redis_cpu0;
    let redis_mem_holding = used_memory(target).await;
    let mut keys_per_master = Vec::new();
    if target.private() {
        for i in 0..target.masters.len() {
            keys_per_master.push(target.masters.dbsize(i).await);
        }
    }

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
        redis_mem_before,
        redis_mem_holding,
        keys_per_master,
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
        right("Redis memory per lock (bytes; without buffers)"),
        right("keys per master"),
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
            redis_bytes(r),
            keys_per_master(r),
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
         one freed, so its per-lock figure is not meaningful. Redis memory per lock:\n\
         INFO used_memory (summed over the masters) holding minus before, per lock; in\n\
         brackets without mem_total_replication_buffers and mem_clients_normal (with\n\
         replicas, renewal writes fill each master's replication backlog, 1 MiB by\n\
         default: a fixed cost per master, not one per lock).\n\
         On a cluster every Redis figure is summed over the masters."
    );
    println!();
}

/// Redis bytes per held lock: the `used_memory` delta, and the same without
/// the replication and client buffers (`used_memory - buffers`).
fn redis_bytes_per_lock(r: &Row) -> (f64, f64) {
    let (used0, buffers0) = r.redis_mem_before;
    let (used1, buffers1) = r.redis_mem_holding;
    let used = (used1 as f64 - used0 as f64) / LOCKS as f64;
    let keys = ((used1 - buffers1) as f64 - (used0 - buffers0) as f64) / LOCKS as f64;
    (used, keys)
}

/// `540 (190)`: [`redis_bytes_per_lock`].
fn redis_bytes(r: &Row) -> String {
    let (used, keys) = redis_bytes_per_lock(r);
    format!("{used:.0} ({keys:.0})")
}

/// `3334 + 3323 + 3343`, or `-` on a shared server.
fn keys_per_master(r: &Row) -> String {
    if r.keys_per_master.is_empty() {
        "-".to_owned()
    } else {
        r.keys_per_master
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// The side-by-side table's cells for one row (see `side_by_side`).
fn machine_row(r: &Row, redis: &str, first_hold: bool) -> Vec<String> {
    let held = r.hold.as_secs_f64();
    let per_lock =
        (r.rss_holding_kib.saturating_sub(r.rss_before_kib) * 1024) as f64 / LOCKS as f64;
    vec![
        format!("{} ({:?} / {:?})", r.label, r.ttl, r.ttl / 3),
        redis.to_owned(),
        format!("{:.1}", r.evalsha_per_sec),
        format!("{:.0}", r.renewed_per_sec),
        format!("{:.1}", r.cmds_per_sec),
        format!("{:.2} %", r.cpu_ticks as f64 / TICKS_PER_SEC / held * 100.0),
        format!("{:.2} %", r.redis_cpu / held * 100.0),
        if first_hold {
            format!("{per_lock:.0}")
        } else {
            "-".to_owned()
        },
        redis_bytes(r),
        keys_per_master(r),
    ]
}

/// Keys of this run: `DBSIZE` on a private server, else `SCAN` over
/// `prefix`; on a cluster, summed over the masters.
async fn count_keys(target: &Target, prefix: &str) -> usize {
    if target.private() {
        let mut n = 0;
        for i in 0..target.masters.len() {
            n += target.masters.dbsize(i).await;
        }
        return n as usize;
    }
    let pattern = format!("{prefix}*");
    let mut n = 0;
    for i in 0..target.masters.len() {
        let mut cursor = "0".to_owned();
        loop {
            let page = if target.masters.is_cluster() {
                target
                    .masters
                    .node(i)
                    .scan_page(cursor, pattern.as_str(), Some(1000), None)
                    .await
            } else {
                target
                    .raw
                    .scan_page(cursor, pattern.as_str(), Some(1000), None)
                    .await
            };
            let (next, keys): (String, Vec<String>) = page.expect("SCAN");
            n += keys.len();
            if next == "0" {
                break;
            }
            cursor = next;
        }
    }
    n
}

/// An `INFO` field summed over the masters.
async fn info_sum(target: &Target, section: InfoKind, field: &str) -> f64 {
    target
        .masters
        .info_each(section)
        .await
        .iter()
        .map(|text| {
            masters::info_field(text, field).unwrap_or_else(|| panic!("no {field} in INFO"))
        })
        .sum()
}

async fn info_u64(target: &Target, section: InfoKind, field: &str) -> u64 {
    info_sum(target, section, field).await as u64
}

/// `used_memory`, and the part of it that is replication and client buffers
/// (`mem_total_replication_buffers` + `mem_clients_normal`: the stream of
/// writes kept for replicas, up to `repl-backlog-size`, 1 MiB by default,
/// per master, and the clients' query/output buffers), summed over the
/// masters.
async fn used_memory(target: &Target) -> (u64, u64) {
    let mut used = 0.0;
    let mut buffers = 0.0;
    for text in target.masters.info_each(InfoKind::Memory).await {
        let field = |name| masters::info_field(&text, name).unwrap_or(0.0);
        used += field("used_memory");
        buffers += field("mem_total_replication_buffers") + field("mem_clients_normal");
    }
    (used as u64, buffers as u64)
}

/// `calls` of `cmdstat_evalsha` and of `cmdstat_pexpire` (0 before the
/// first call), summed over the masters. Commands a script runs are counted
/// by Redis too, in `total_commands_processed` and in their own
/// commandstats line.
async fn script_calls(target: &Target) -> (u64, u64) {
    let each: Vec<_> = target
        .masters
        .info_each(InfoKind::CommandStats)
        .await
        .iter()
        .map(|text| masters::command_calls(text))
        .collect();
    let calls = masters::sum_calls(&each);
    let get = |name: &str| calls.get(name).copied().unwrap_or(0);
    (get("evalsha"), get("pexpire"))
}

/// The servers' CPU seconds so far (`used_cpu_user` + `used_cpu_sys`),
/// summed over the masters.
async fn redis_cpu(target: &Target) -> f64 {
    info_sum(target, InfoKind::Cpu, "used_cpu_user").await
        + info_sum(target, InfoKind::Cpu, "used_cpu_sys").await
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
