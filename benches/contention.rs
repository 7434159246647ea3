//! Contention on one key: 8 workers spread over 2 mutex instances (4 each,
//! each instance its own `DistributedMutex::connect`, as two processes
//! would be), a 1 ms critical section, in two workloads, each once with
//! release notifications and once with polling forced
//! (`.notifications(false)`):
//!
//! * free-for-all: every worker loops lock → 1 ms → release → lock …;
//! * strict handoff: a worker that released calls `lock` again only after
//!   another worker acquired (it waits on a shared "last holder" id), so
//!   every acquisition is a handoff between two workers.
//!
//! Reported per combination, over a measurement window that follows a short
//! warm-up (the subscriber connection, script loading):
//!
//! * acquisitions/s;
//! * handoff wait p50/p99/max: from the previous holder's `release()`
//!   completing to this acquisition's `lock()` returning, for acquisitions
//!   whose previous holder was another worker. Every acquisition and
//!   release is timestamped with a sequence number (acquisitions are
//!   serialised by the lock itself) and the pairs are matched after the run,
//!   so no bookkeeping lock sits on the measured path. When the next
//!   holder's `lock()` returned before the releaser's `release()` did
//!   (possible: the release reply and the message race), the wait counts as
//!   0 and the row's `inv` counts it;
//! * `lock()` p50: the whole call, including time queued behind the other
//!   waiters (informative; not a target);
//! * per-worker share min/max: the fewest acquisitions of a worker divided by
//!   the most;
//! * commands per acquisition: `evalsha` (`INFO commandstats` before/after
//!   the window); `top-level` = every command the mutex instances' clients
//!   sent (fred's latency samples: evalsha, the first attempt's plain
//!   `SET NX`, …) plus their subscriber connections' SUBSCRIBE, UNSUBSCRIBE
//!   and PING (commandstats); `all` = every command Redis ran, the scripts'
//!   own (SET, GET, DEL, LPOP, PUBLISH, …) included (commandstats; our own
//!   INFO excluded). The ≤ 4 target is checked against `top-level`.
//!
//! Two more tables say where the time between two acquisitions goes
//! (critical section, `release()`, release → next acquisition) and which
//! mutex instance wins the acquisitions (with the chance that the instance
//! that won one acquisition wins the next as well).
//!
//! The 1 ms critical section is, by default, a busy-wait of exactly 1 ms
//! (`std::hint::spin_loop`) on a blocking-pool thread (`spawn_blocking`):
//! tokio's timer has 1 ms granularity, so `tokio::time::sleep(1 ms)` lasts
//! 1–2 ms and would by itself cap the handoff rate below 600/s.
//! `CONTENTION_CS=sleep` uses `tokio::time::sleep(1 ms)` instead,
//! `CONTENTION_CS=thread` a `std::thread::sleep(1 ms)` on a blocking thread.
//!
//! Every waiter uses `linear(250 ms, 400)` (nothing times out). The runtime
//! is multi-threaded with 2 workers. A private `redis-server` is started
//! unless `REDIS_URL` is set. `CONTENTION_SECS` sets the measurement window
//! of each combination (default 3 s).
//!
//! ```text
//! cargo bench --bench contention
//! CONTENTION_SECS=10 cargo bench --bench contention
//! CONTENTION_PROBE=1 cargo bench --bench contention   # + where a handoff's time goes
//! ```
//!
//! On Redis Cluster (`BENCH_CLUSTER=1` starts a private 6-node cluster, 3
//! masters; or `REDIS_URL=redis-cluster://...`) every combination runs once
//! per master, one run after another (combination by combination, the
//! masters in turn within each), with the hot key on that master; the
//! commands per acquisition are summed over the masters' `INFO
//! commandstats`, and the reference round trips are measured per master on
//! the same cluster in the same run (`PING` sent to that master, `SPUBLISH`
//! on a shard channel of that master to a fred subscriber's `message_rx`).
//! A table per master then gives the strict-handoff wait p50 beside those
//! references, the release messages (`SPUBLISH`/`PUBLISH` calls) and Redis
//! CPU (`INFO cpu`, all masters) per acquisition, and the connections each
//! mutex instance holds on each
//! master (`CLIENT LIST` at the window's start, minus the connections open
//! before the run's mutexes were made), with those subscribed to a channel.
//! `CONTENTION_PROBE` is single-server only.
//!
//! ```text
//! BENCH_CLUSTER=1 cargo bench --bench contention
//! ```
//!
//! `CONTENTION_FLEET=1` measures how waiting scales with the number of
//! processes instead: strict handoff with notifications, for (workers, mutex
//! instances) = (8, 1), (64, 1), (256, 1), (8, 2), (64, 4) and (256, 8), a 4 s window
//! each (`CONTENTION_SECS` overrides), each instance its own
//! `DistributedMutex::connect` as a separate process would have. Its table
//! gives acquisitions/s, the waiter gap (release() returned → the next
//! holder's lock() returned; 0 when the next holder had it first) p50/p99,
//! the handoff (release() called → the next holder's lock() returned) p50,
//! client commands per acquisition (every command the instances' clients
//! sent, counted by fred's latency metrics, plus the
//! subscriber connections' SUBSCRIBE/UNSUBSCRIBE/PING from `INFO
//! commandstats`), Redis commands per acquisition (`INFO commandstats`,
//! scripts' commands included), and the per-worker acquisitions min–max.
//!
//! ```text
//! CONTENTION_FLEET=1 cargo bench --bench contention
//! ```
//!
//! `CONTENTION_PROBE=1` adds a third subscriber (a plain fred subscriber,
//! outside the library) that timestamps each release message, and splits
//! each handoff at that moment: release sent → message delivered (Redis and
//! fred's reader), and message delivered → the next holder's `lock()`
//! returned (the library's wake-up path plus one acquire round trip).

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "contention/analysis.rs"]
mod analysis;
mod common;
#[path = "contention/report.rs"]
mod report;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::masters::{self, Masters};
use distributed_mutex::{DistributedMutex, RetryStrategy};
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::InfoKind;
use tokio::sync::Notify;

const WORKERS: usize = 8;
const INSTANCES: usize = 2;
/// `CONTENTION_FLEET=1`: strict handoff with notifications, as (workers,
/// mutex instances), each instance its own connections as a process would
/// have.
const FLEET: [(usize, usize); 6] = [(8, 1), (64, 1), (256, 1), (8, 2), (64, 4), (256, 8)];
/// The fleet rows' measurement window (unless `CONTENTION_SECS` is set).
const FLEET_WINDOW: Duration = Duration::from_secs(4);
const CRITICAL_SECTION: Duration = Duration::from_millis(1);
const WARM_UP: Duration = Duration::from_millis(500);

// Targets (issue 4), for the notification rows.
const TARGET_ACQ_PER_SEC: f64 = 600.0;
const TARGET_P50: Duration = Duration::from_millis(1);
const TARGET_P99: Duration = Duration::from_millis(5);
const TARGET_CMDS: f64 = 4.0;
const TARGET_SHARE: f64 = 0.8;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    FreeForAll,
    StrictHandoff,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CriticalSection {
    Spin,
    Sleep,
    Thread,
}

/// What every worker of one run shares.
struct Shared {
    key: String,
    mode: Mode,
    cs: CriticalSection,
    /// Acquisitions so far (the next acquisition's sequence number).
    seq: AtomicU64,
    /// The worker that acquired last (strict handoff).
    last_holder: AtomicUsize,
    /// Notified on every acquisition and on stop (strict handoff).
    acquired: Notify,
    stop: AtomicBool,
    /// Set while someone holds the lock: a second holder is a violation.
    held: AtomicBool,
    violations: AtomicU64,
}

#[derive(Default)]
struct WorkerLog {
    /// (sequence number, `lock()` returned, `lock()` called).
    acquisitions: Vec<(u64, Instant, Instant)>,
    /// (sequence number of the acquisition released, critical section
    /// ended = `release()` called, `release()` returned).
    releases: Vec<(u64, Instant, Instant)>,
}

async fn spin_1ms() {
    tokio::task::spawn_blocking(|| {
        let end = Instant::now() + CRITICAL_SECTION;
        while Instant::now() < end {
            std::hint::spin_loop();
        }
    })
    .await
    .expect("critical section");
}

async fn worker(id: usize, mutex: DistributedMutex, shared: Arc<Shared>) -> WorkerLog {
    let mut log = WorkerLog::default();
    while !shared.stop.load(Ordering::SeqCst) {
        let called = Instant::now();
        let guard = mutex
            .lock(&shared.key)
            .await
            .unwrap_or_else(|e| panic!("worker {id}: lock failed: {e}"));
        let acquired = Instant::now();
        if shared.held.swap(true, Ordering::SeqCst) {
            shared.violations.fetch_add(1, Ordering::SeqCst);
        }
        let seq = shared.seq.fetch_add(1, Ordering::SeqCst);
        shared.last_holder.store(id, Ordering::SeqCst);
        if shared.mode == Mode::StrictHandoff {
            shared.acquired.notify_waiters();
        }
        log.acquisitions.push((seq, acquired, called));

        match shared.cs {
            CriticalSection::Spin => spin_1ms().await,
            CriticalSection::Sleep => tokio::time::sleep(CRITICAL_SECTION).await,
            CriticalSection::Thread => {
                tokio::task::spawn_blocking(|| std::thread::sleep(CRITICAL_SECTION))
                    .await
                    .expect("critical section");
            }
        }

        shared.held.store(false, Ordering::SeqCst);
        let releasing = Instant::now();
        guard
            .release()
            .await
            .unwrap_or_else(|e| panic!("worker {id}: release failed: {e}"));
        log.releases.push((seq, releasing, Instant::now()));

        if shared.mode == Mode::StrictHandoff {
            // Re-enter only after another worker acquired.
            loop {
                let next = shared.acquired.notified();
                if shared.last_holder.load(Ordering::SeqCst) != id
                    || shared.stop.load(Ordering::SeqCst)
                {
                    break;
                }
                next.await;
            }
        }
    }
    log
}

/// `INFO commandstats` as command → calls, summed over the masters (our
/// own `info` and `client|list` left out).
async fn command_stats(masters: &Masters) -> BTreeMap<String, u64> {
    let each: Vec<BTreeMap<String, u64>> = masters
        .info_each(InfoKind::CommandStats)
        .await
        .iter()
        .map(|text| masters::command_calls(text))
        .collect();
    let mut all = masters::sum_calls(&each);
    all.remove("info");
    all.remove("client|list");
    all
}

/// Redis CPU seconds so far (`used_cpu_user` + `used_cpu_sys`), summed over
/// the masters.
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

/// Connections on one master: (all, subscribed to a channel).
type Connections = (usize, usize);

/// Per master: (connections, connections subscribed to a channel), from
/// `CLIENT LIST`.
async fn connections(masters: &Masters) -> Vec<Connections> {
    let mut out = Vec::with_capacity(masters.len());
    for i in 0..masters.len() {
        out.push(masters::connections(&masters.client_list(i).await));
    }
    out
}

/// What every combination of one bench run shares.
struct Settings {
    url: String,
    cs: CriticalSection,
    measure: Duration,
    probe: bool,
    masters: Masters,
}

/// What one combination's run recorded, before any reduction (see
/// [`analysis::analyse`]).
struct Recorded {
    mode: Mode,
    /// Workers, and the mutex instances they are spread over.
    shape: (usize, usize),
    /// Commands the instances' clients sent in the window (fred's latency
    /// samples), not counting their subscriber connections.
    client_commands: u64,
    notifications: bool,
    /// The master serving the key (0 on one server).
    master: usize,
    /// Per master: connections (all, subscribed) open before the run's
    /// mutexes were made, and at the window's start.
    connections: (Vec<Connections>, Vec<Connections>),
    /// The measurement window: acquisitions whose `lock()` returned in
    /// `[window.0, window.1)` count.
    window: (Instant, Instant),
    logs: Vec<WorkerLog>,
    /// `INFO commandstats` at the window's start and end.
    before: BTreeMap<String, u64>,
    after: BTreeMap<String, u64>,
    /// Redis CPU seconds in the window, summed over the masters.
    redis_cpu: f64,
    violations: u64,
    /// When the probe saw each release message (`CONTENTION_PROBE`).
    messages: Option<Vec<Instant>>,
}

#[allow(clippy::too_many_arguments)]
async fn run(
    settings: &Settings,
    raw: &Client,
    mode: Mode,
    notifications: bool,
    index: usize,
    master: usize,
    (workers, instances): (usize, usize),
) -> Recorded {
    let Settings {
        ref url,
        cs,
        measure,
        probe,
        ref masters,
    } = *settings;
    let key = masters.key_on(
        master,
        &format!("{}{index}:", common::key_prefix("contention")),
    );
    let connections_before = connections(masters).await;
    let probe = if probe {
        Some(Probe::start(url, raw, &format!("{key}:released")).await)
    } else {
        None
    };
    let mut mutexes = Vec::new();
    for _ in 0..instances {
        let base = DistributedMutex::connect(url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        mutexes.push(
            DistributedMutex::builder(base.client().clone())
                .notifications(notifications)
                .retry(RetryStrategy::linear(Duration::from_millis(250), 400))
                .build()
                .expect("valid settings"),
        );
    }
    let start = Instant::now();
    let window = (start + WARM_UP, start + WARM_UP + measure);
    let shared = Arc::new(Shared {
        key,
        mode,
        cs,
        seq: AtomicU64::new(0),
        last_holder: AtomicUsize::new(usize::MAX),
        acquired: Notify::new(),
        stop: AtomicBool::new(false),
        held: AtomicBool::new(false),
        violations: AtomicU64::new(0),
    });
    let tasks: Vec<_> = (0..workers)
        .map(|id| {
            tokio::spawn(worker(
                id,
                mutexes[id % instances].clone(),
                Arc::clone(&shared),
            ))
        })
        .collect();

    tokio::time::sleep_until(window.0.into()).await;
    for mutex in &mutexes {
        mutex.client().take_latency_metrics();
    }
    let before = command_stats(masters).await;
    let cpu_before = redis_cpu(masters).await;
    let connections_during = connections(masters).await;
    tokio::time::sleep_until(window.1.into()).await;
    let client_commands = mutexes
        .iter()
        .map(|m| m.client().take_latency_metrics().samples)
        .sum();
    let redis_cpu = redis_cpu(masters).await - cpu_before;
    let after = command_stats(masters).await;
    shared.stop.store(true, Ordering::SeqCst);
    shared.acquired.notify_waiters();

    let mut logs = Vec::new();
    for task in tasks {
        logs.push(task.await.expect("worker task"));
    }
    for mutex in &mutexes {
        mutex.shutdown().await;
        // Built on a client the bench made (`connect`, then `builder`): the
        // mutex does not close it, so that the next run starts without this
        // run's connections.
        let _ = mutex.client().quit().await;
    }
    let messages = match probe {
        Some(probe) => Some(probe.finish().await),
        None => None,
    };
    Recorded {
        mode,
        shape: (workers, instances),
        client_commands,
        notifications,
        master,
        connections: (connections_before, connections_during),
        window,
        logs,
        before,
        after,
        redis_cpu,
        violations: shared.violations.load(Ordering::SeqCst),
        messages,
    }
}

/// A fred subscriber of the key's release channel, outside the library,
/// that timestamps every release message (`CONTENTION_PROBE=1`).
struct Probe {
    subscriber: SubscriberClient,
    task: tokio::task::JoinHandle<Vec<Instant>>,
}

impl Probe {
    async fn start(url: &str, raw: &Client, channel: &str) -> Probe {
        let config = Config::from_url(url).expect("valid REDIS_URL");
        let subscriber = Builder::from_config(config)
            .with_performance_config(|p| p.broadcast_channel_capacity = 1 << 16)
            .build_subscriber_client()
            .expect("subscriber client");
        subscriber.init().await.expect("connect the probe");
        let mut rx = subscriber.message_rx();
        subscriber.subscribe(channel).await.expect("SUBSCRIBE");
        wait_for_subscriber(raw, channel).await;
        let task = tokio::spawn(async move {
            let mut at = Vec::new();
            while let Ok(_message) = rx.recv().await {
                at.push(Instant::now());
            }
            at
        });
        Probe { subscriber, task }
    }

    async fn finish(self) -> Vec<Instant> {
        let _ = self.subscriber.quit().await;
        drop(self.subscriber);
        self.task.await.expect("probe task")
    }
}

/// Waits until Redis counts a subscriber of `channel`: fred resolves
/// `subscribe()` when the command is queued, not when Redis has subscribed.
async fn wait_for_subscriber(raw: &Client, channel: &str) {
    loop {
        let reply: Vec<fred::types::Value> =
            raw.pubsub_numsub(channel).await.expect("PUBSUB NUMSUB");
        if reply.get(1).and_then(|n| n.as_i64()) >= Some(1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Round trips on idle connections, for reference (per master on a
/// cluster).
struct Reference {
    /// `PING` on the stats client (sent to that master).
    pings: Vec<Duration>,
    /// `PUBLISH` (`SPUBLISH` on a cluster, on a shard channel of that master)
    /// until a fred subscriber's `message_rx` yields it.
    deliveries: Vec<Duration>,
}

/// Round trips on idle connections, for reference: a `PING` on the stats
/// client, and a `PUBLISH` until a fred subscriber's `message_rx` yields it;
/// on a cluster, a `PING` to master `master` and an `SPUBLISH` on a shard
/// channel that master serves.
async fn floor(url: &str, raw: &Client, masters: &Masters, master: usize) -> Reference {
    if masters.is_cluster() {
        return cluster_floor(url, raw, masters, master).await;
    }
    let mut pings = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        let _: String = raw.ping(None).await.expect("PING");
        pings.push(t.elapsed());
    }

    let config = Config::from_url(url).expect("valid REDIS_URL");
    let subscriber = Builder::from_config(config)
        .build_subscriber_client()
        .expect("subscriber client");
    subscriber.init().await.expect("connect the subscriber");
    let channel = format!("contention:{}:probe", std::process::id());
    let mut messages = subscriber.message_rx();
    subscriber
        .subscribe(channel.as_str())
        .await
        .expect("SUBSCRIBE");
    wait_for_subscriber(raw, &channel).await;
    let mut deliveries = Vec::new();
    for i in 0..1000 {
        let t = Instant::now();
        let _: i64 = raw.publish(channel.as_str(), i).await.expect("PUBLISH");
        tokio::time::timeout(Duration::from_secs(2), messages.recv())
            .await
            .expect("a published message reaches the subscriber within 2 s")
            .expect("message");
        deliveries.push(t.elapsed());
    }
    let _ = subscriber.quit().await;
    Reference { pings, deliveries }
}

/// [`floor`] on a cluster: `PING` to one master, `SPUBLISH` → `SSUBSCRIBE`
/// on a shard channel that master serves.
async fn cluster_floor(url: &str, raw: &Client, masters: &Masters, master: usize) -> Reference {
    let node = masters.node(master);
    let mut pings = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        let _: String = node.ping(None).await.expect("PING");
        pings.push(t.elapsed());
    }

    let config = Config::from_url(url).expect("valid REDIS_URL");
    let subscriber = Builder::from_config(config)
        .build_subscriber_client()
        .expect("subscriber client");
    subscriber.init().await.expect("connect the subscriber");
    let channel = masters.key_on(
        master,
        &format!("contention:{}:probe:{master}:", std::process::id()),
    );
    let mut messages = subscriber.message_rx();
    subscriber
        .ssubscribe(channel.as_str())
        .await
        .expect("SSUBSCRIBE");
    loop {
        let reply: Vec<fred::types::Value> = raw
            .pubsub_shardnumsub(channel.as_str())
            .await
            .expect("PUBSUB SHARDNUMSUB");
        if reply.get(1).and_then(|n| n.as_i64()) >= Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut deliveries = Vec::new();
    for i in 0..1000 {
        let t = Instant::now();
        let _: i64 = raw.spublish(channel.as_str(), i).await.expect("SPUBLISH");
        tokio::time::timeout(Duration::from_secs(2), messages.recv())
            .await
            .expect("a published message reaches the subscriber within 2 s")
            .expect("message");
        deliveries.push(t.elapsed());
    }
    let _ = subscriber.quit().await;
    Reference { pings, deliveries }
}

fn main() {
    // Without `--bench` (`cargo test --benches`) every combination runs
    // briefly, as a smoke test.
    let quick = !common::full_run();
    let measure = match common::env_str("CONTENTION_SECS") {
        Some(s) => Duration::from_secs_f64(
            s.parse()
                .unwrap_or_else(|_| panic!("CONTENTION_SECS={s:?} is not a number of seconds")),
        ),
        None if quick => Duration::from_millis(300),
        None => Duration::from_secs(3),
    };
    let mut probe = common::env_flag("CONTENTION_PROBE");
    let fleet = common::env_flag("CONTENTION_FLEET");
    let measure = match (fleet, common::env_str("CONTENTION_SECS")) {
        (true, None) if !quick => FLEET_WINDOW,
        _ => measure,
    };
    let cs = match std::env::var("CONTENTION_CS").as_deref() {
        Ok("sleep") => CriticalSection::Sleep,
        Ok("thread") => CriticalSection::Thread,
        Ok("spin") | Ok("") | Err(_) => CriticalSection::Spin,
        Ok(other) => panic!("CONTENTION_CS={other:?}: expected spin, sleep or thread"),
    };

    let redis = common::Redis::from_env();
    let url = redis.url.clone();
    let rt = common::runtime(Some(2));
    eprintln!(
        "contention on one key against {url} ({}): {WORKERS} workers over {INSTANCES} mutex \
         instances, 1 ms critical section ({}), {:?} warm-up + {measure:?} measured per combination",
        redis.origin(),
        match cs {
            CriticalSection::Spin => "busy-wait on a blocking thread",
            CriticalSection::Sleep => "tokio::time::sleep",
            CriticalSection::Thread => "std::thread::sleep on a blocking thread",
        },
        WARM_UP,
    );

    if probe && redis.is_cluster() {
        eprintln!("CONTENTION_PROBE is single-server only; ignored on a cluster");
        probe = false;
    }
    let (references, rows) = rt.block_on(async {
        let raw = {
            let config = Config::from_url(&url).expect("valid REDIS_URL");
            let client = Builder::from_config(config).build().expect("fred client");
            client.init().await.expect("connect the stats client");
            client
        };
        let settings = Settings {
            url: url.clone(),
            cs,
            measure,
            probe,
            masters: Masters::of(&raw).await,
        };
        let masters = &settings.masters;
        if masters.is_cluster() {
            eprintln!(
                "Redis Cluster, {} masters ({}): every combination runs once per master, one \
                 run after another, the hot key on that master",
                masters.len(),
                (0..masters.len())
                    .map(|i| masters.name(i))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let mut references = Vec::new();
        for master in 0..masters.len() {
            references.push(floor(&url, &raw, masters, master).await);
        }
        let mut rows = Vec::new();
        let combos: Vec<(Mode, bool, (usize, usize))> = if fleet {
            FLEET
                .iter()
                .map(|&shape| (Mode::StrictHandoff, true, shape))
                .collect()
        } else {
            vec![
                (Mode::FreeForAll, true, (WORKERS, INSTANCES)),
                (Mode::FreeForAll, false, (WORKERS, INSTANCES)),
                (Mode::StrictHandoff, true, (WORKERS, INSTANCES)),
                (Mode::StrictHandoff, false, (WORKERS, INSTANCES)),
            ]
        };
        for (index, (mode, notifications, shape)) in combos.into_iter().enumerate() {
            for master in 0..masters.len() {
                let recorded =
                    run(&settings, &raw, mode, notifications, index, master, shape).await;
                let row = analysis::analyse(&recorded);
                eprintln!(
                    "{mode:?}, notifications {notifications}, master {master}: {} acquisitions, \
                     per worker {:?}, commands {:?} (client commands: {}), Redis CPU {:.1} µs \
                     per acquisition",
                    row.acquisitions,
                    row.counts,
                    row.commands,
                    row.client_commands,
                    row.redis_us()
                );
                assert_eq!(
                    row.violations, 0,
                    "two holders at once: mutual exclusion broken"
                );
                rows.push(row);
            }
        }
        let _ = raw.quit().await;
        (references, rows)
    });
    if fleet {
        report::print_fleet(&rows);
    } else {
        report::print(&rows, probe, &references);
    }
}
