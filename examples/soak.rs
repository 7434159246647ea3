//! Soak run: mixed lock traffic for a given time, then a report; on a
//! local Redis Cluster, with faults at set times.
//!
//! ```sh
//! EXAMPLE=soak scripts/quickstart --secs 600            # private server
//! EXAMPLE=soak scripts/quickstart --cluster --secs 300  # private cluster, faults
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example soak -- --secs 60
//! ```
//!
//! Options: `--secs N` (default 60), `--workers N` (default 16), `--keys N`
//! (default 8). Workers spread over two mutex instances (two connections, as
//! two processes would) take locks on a small key set with a mix of `lock`,
//! `try_lock`, `with_lock`, fencing, `extend`, explicit release and drop, and
//! check mutual exclusion with a non-atomic Redis-side counter per key.
//!
//! On a cluster (`SOAK_CLUSTER_DIR` names the directory `scripts/redis-cluster`
//! keeps its nodes' pid files in; `scripts/quickstart --cluster` sets it and
//! `REDIS_URL`), the key set is half plain keys, half hash-tagged ones
//! (`{t1}:a`), and the mix adds multi-key locks (`lock_all`, within a hash
//! tag and across slots), semaphore permits and read-write guards. Mutual
//! exclusion is checked in the process (every holder is here: no two
//! holders of a key, no more permits than the semaphore has, no writer with
//! anyone else), and each plain lock's token is read back from its master
//! (a guard whose master does not have its token, and that does not know it
//! lost it, is a "ghost"). The faults, at fractions of the run (the node
//! timeout set to 3 s first, so that the stall is not also a failover):
//! 15 %, one master SIGSTOPped for 2 s; 35 %, 1000 slots resharded
//! (`redis-cli --cluster reshard`) from one master to another; 60 %, one
//! master SIGKILLed, its replica taking over. Signals go to the pids the
//! script wrote, nothing else. Counts are printed per fault window.
//!
//! Prints acquisitions, errors by kind, RSS at start and end, and the lock keys
//! left in Redis after shutdown (must be zero). Exits 1 on any exclusion
//! violation, ghost or leftover key.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distributed_mutex::{DistributedMutex, Error, RetryStrategy};
use fred::prelude::*;

/// The fault windows of a cluster run, with the fraction of the run each
/// starts at.
const WINDOWS: [(&str, f64); 5] = [
    ("steady", 0.0),
    ("master stalled 2 s", 0.15),
    ("slots resharded", 0.35),
    ("master killed, replica took over", 0.6),
    ("after the faults", 0.85),
];

#[derive(Default)]
struct Window {
    acquired: AtomicU64,
    busy: AtomicU64,
    violations: AtomicU64,
    ghosts: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    rss_end: AtomicU64,
}

struct Stats {
    started: Instant,
    secs: f64,
    /// One window on one server.
    windows: Vec<Window>,
    /// Holders inside each key's section, per kind (`lock`, `sem`, `read`,
    /// `write`), in this process.
    occupancy: Mutex<HashMap<(String, &'static str), u64>>,
    violation_log: Mutex<Vec<String>>,
}

impl Stats {
    fn window(&self) -> &Window {
        let at = self.started.elapsed().as_secs_f64() / self.secs;
        let i = WINDOWS
            .iter()
            .rposition(|(_, from)| at >= *from)
            .unwrap_or(0)
            .min(self.windows.len() - 1);
        &self.windows[i]
    }

    fn acquired(&self) {
        self.window().acquired.fetch_add(1, Ordering::Relaxed);
    }

    fn busy(&self) {
        self.window().busy.fetch_add(1, Ordering::Relaxed);
    }

    fn violation(&self, what: String) {
        self.window().violations.fetch_add(1, Ordering::Relaxed);
        let mut log = self.violation_log.lock().unwrap();
        if log.len() < 20 {
            log.push(what);
        }
    }

    fn error(&self, e: &Error) {
        let kind = format!("{e:?}");
        let mut kind = kind.split([' ', '{', '(']).next().unwrap_or("?").to_owned();
        if let Error::Unavailable { source, .. } = e {
            kind = format!(
                "{kind}({})",
                source.details().split([':', '.']).next().unwrap_or("")
            );
        }
        if matches!(e, Error::NotHeld { .. }) {
            let mut log = self.violation_log.lock().unwrap();
            if log.len() < 20 {
                log.push(format!("{:.1?}: {e}", self.started.elapsed()));
            }
        }
        *self
            .window()
            .errors
            .lock()
            .unwrap()
            .entry(kind)
            .or_default() += 1;
    }

    /// Enters the section of `key` as a holder of `kind`, until the
    /// returned [`Inside`] is dropped; `limit` is how many may be inside at
    /// once (permits), and `exclusive_with` a kind that may not be inside
    /// meanwhile.
    fn enter(
        &self,
        key: &str,
        kind: &'static str,
        limit: u64,
        exclusive_with: &[&'static str],
    ) -> Inside<'_> {
        let inside = Inside {
            stats: self,
            key: key.to_owned(),
            kind,
        };
        let mut occupancy = self.occupancy.lock().unwrap();
        let n = occupancy.entry((key.to_owned(), kind)).or_default();
        *n += 1;
        if *n > limit {
            let n = *n;
            drop(occupancy);
            self.violation(format!(
                "{key}: {n} {kind} holders inside (at most {limit})"
            ));
            return inside;
        }
        for other in exclusive_with {
            let n = occupancy
                .get(&(key.to_owned(), *other))
                .copied()
                .unwrap_or(0);
            if n > 0 {
                drop(occupancy);
                self.violation(format!("{key}: a {kind} holder with {n} {other} holders"));
                break;
            }
        }
        inside
    }

    fn leave(&self, key: &str, kind: &'static str) {
        let mut occupancy = self.occupancy.lock().unwrap();
        if let Some(n) = occupancy.get_mut(&(key.to_owned(), kind)) {
            *n = n.saturating_sub(1);
        }
    }

    fn total(&self, f: impl Fn(&Window) -> u64) -> u64 {
        self.windows.iter().map(f).sum()
    }
}

/// A holder inside a section until dropped: also when the section's
/// future is dropped mid-way, as `with_lock` does with its closure's when
/// the lease is lost (left inside, it counted as a second holder of every
/// later one).
struct Inside<'a> {
    stats: &'a Stats,
    key: String,
    kind: &'static str,
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.stats.leave(&self.key, self.kind);
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The critical section on one server: a non-atomic read-modify-write of a
/// per-key counter that must read 0 on entry. A second holder inside would
/// see 1.
async fn counter_section(raw: &Client, key: &str, stats: &Stats) -> Result<(), Error> {
    let counter = format!("soak:count:{key}");
    let before: i64 = raw
        .get::<Option<i64>, _>(&counter)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    if before != 0 {
        stats.violation(format!("{key}: counter reads {before} on entry"));
    }
    let _: () = raw
        .set(&counter, before + 1, None, None, false)
        .await
        .unwrap_or(());
    tokio::time::sleep(Duration::from_micros(500)).await;
    let now: i64 = raw
        .get::<Option<i64>, _>(&counter)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    let _: () = raw
        .set(&counter, now - 1, None, None, false)
        .await
        .unwrap_or(());
    Ok(())
}

/// What a worker checks its sections with.
struct Checks {
    stats: Arc<Stats>,
    /// The worker's own client, one command at a time (fred 10.1 can hand a
    /// command another's reply while it follows `ASK` with several in
    /// flight): the Redis counters on one server, the tokens on a cluster.
    raw: Client,
    cluster: bool,
}

impl Checks {
    /// A plain lock's section: mutual exclusion, and on a cluster that the
    /// key's master has the guard's token.
    async fn section(&self, key: &str, token: &str, lost: impl Fn() -> bool) -> Result<(), Error> {
        if !self.cluster {
            return counter_section(&self.raw, key, &self.stats).await;
        }
        let _inside = self.stats.enter(key, "lock", 1, &[]);
        // A read that fails (a stalled or failed master, a key mid-move)
        // checks nothing; nor does a reply that does not name its key (fred
        // 10.1 can hand a command another's reply).
        let read: Result<(String, Option<String>), _> = self
            .raw
            .eval(
                "return {KEYS[1], redis.call('GET', KEYS[1])}",
                vec![key],
                Vec::<String>::new(),
            )
            .await;
        if let Ok((named, held)) = read {
            if named != key {
                *self
                    .stats
                    .window()
                    .errors
                    .lock()
                    .unwrap()
                    .entry("check: a reply of another command".into())
                    .or_default() += 1;
            } else if held.as_deref() != Some(token) && !lost() {
                self.stats.window().ghosts.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .violation(format!("{key}: the guard's master has {held:?}"));
            }
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
        Ok(())
    }

    async fn inside(&self, key: &str, kind: &'static str, limit: u64, not_with: &[&'static str]) {
        let _inside = self.stats.enter(key, kind, limit, not_with);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The cluster's node timeout during the soak (longer than the stall).
const NODE_TIMEOUT_MS: &str = "3000";

/// How many permits each soak semaphore has.
const PERMITS: u64 = 2;

async fn worker(
    id: u64,
    mutex: DistributedMutex,
    checks: Checks,
    keys: Arc<Vec<String>>,
    until: Instant,
) {
    let stats = Arc::clone(&checks.stats);
    let checks = &checks;
    let ops = if checks.cluster { 9 } else { 6 };
    let mut n = id;
    while Instant::now() < until {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = ((n >> 33) % keys.len() as u64) as usize;
        let key = keys[k].as_str();
        let op = (n >> 20) % ops;
        let result: Result<(), Error> = async {
            match op {
                0 => match mutex.try_lock(key).await? {
                    Some(guard) => {
                        stats.acquired();
                        let r = checks.section(key, guard.token(), || guard.is_lost()).await;
                        drop(guard);
                        r
                    }
                    None => {
                        stats.busy();
                        Ok(())
                    }
                },
                1 => {
                    let r = mutex
                        .with_lock(key, |lease| async move {
                            checks.section(key, lease.token(), || lease.is_lost()).await
                        })
                        .await;
                    if r.is_ok() {
                        stats.acquired();
                    }
                    r.and_then(|inner| inner)
                }
                2 => {
                    let guard = mutex.acquire(key).fencing().await?;
                    stats.acquired();
                    checks
                        .section(key, guard.token(), || guard.is_lost())
                        .await?;
                    guard.release().await
                }
                3 => {
                    let guard = mutex.lock(key).await?;
                    stats.acquired();
                    checks
                        .section(key, guard.token(), || guard.is_lost())
                        .await?;
                    guard.extend(Duration::from_secs(5)).await?;
                    checks
                        .section(key, guard.token(), || guard.is_lost())
                        .await?;
                    guard.release().await
                }
                // Cluster only: several keys at once, within one hash tag
                // (its neighbour) or across slots (a key half the set away).
                6 => {
                    let other = if k % 2 == 1 {
                        keys[k ^ 1].as_str()
                    } else {
                        keys[(k + keys.len() / 2) % keys.len()].as_str()
                    };
                    if other == key {
                        return Ok(());
                    }
                    let guard = mutex.lock_all([key, other]).await?;
                    stats.acquired();
                    let inside = [key, other].map(|key| stats.enter(key, "lock", 1, &[]));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    drop(inside);
                    guard.release().await
                }
                7 => {
                    let name = format!("soak:sem:{}", k % 3);
                    let permit = mutex.semaphore(&name, PERMITS as u32).acquire().await?;
                    stats.acquired();
                    checks.inside(&name, "sem", PERMITS, &[]).await;
                    permit.release().await
                }
                8 => {
                    let name = format!("soak:rw:{}", k % 2);
                    let rw = mutex.rw(&name);
                    if n % 4 == 0 {
                        let guard = rw.write().await?;
                        stats.acquired();
                        checks.inside(&name, "write", 1, &["read"]).await;
                        guard.release().await
                    } else {
                        let guard = rw.read().await?;
                        stats.acquired();
                        checks.inside(&name, "read", u64::MAX, &["write"]).await;
                        guard.release().await
                    }
                }
                _ => {
                    let guard = mutex.lock(key).await?;
                    stats.acquired();
                    let r = checks.section(key, guard.token(), || guard.is_lost()).await;
                    drop(guard); // released in the background
                    r
                }
            }
        }
        .await;
        match result {
            Ok(()) => {}
            Err(Error::NotObtained { .. }) => stats.busy(),
            Err(e) => stats.error(&e),
        }
    }
}

// ---- the local cluster and its faults ------------------------------------------

/// The nodes `scripts/redis-cluster` started: `dir/<port>/redis.pid`.
struct Nodes {
    dir: PathBuf,
    ports: Vec<u16>,
}

impl Nodes {
    fn read(dir: PathBuf) -> Result<Nodes, String> {
        let mut ports: Vec<u16> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        ports.sort_unstable();
        if ports.len() < 6 {
            return Err(format!("{}: {} nodes, not 6", dir.display(), ports.len()));
        }
        Ok(Nodes { dir, ports })
    }

    fn pid(&self, port: u16) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(port.to_string()).join("redis.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The live masters, by port, as each node says of itself.
    fn masters(&self) -> Vec<u16> {
        self.ports
            .iter()
            .copied()
            .filter(|&p| cli(p, &["ROLE"]).lines().next() == Some("master"))
            .collect()
    }
}

/// `redis-cli -p port args...`, trimmed stdout ("" when it cannot connect).
fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// `kill -SIG pid`: a pid the cluster script recorded, checked to still run
/// redis-server on `port`.
fn signal(nodes: &Nodes, port: u16, sig: &str) -> Result<u32, String> {
    let pid = nodes.pid(port).ok_or(format!("no pid for node {port}"))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if !cmdline.contains("redis-server") || !cmdline.contains(&format!(":{port}")) {
        return Err(format!("pid {pid} does not run node {port}: {cmdline:?}"));
    }
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(pid).ok_or(format!("kill -{sig} {pid} failed"))
}

/// Runs the faults at their times (blocking; on a thread of its own);
/// returns what happened, one line each, with its time.
fn faults(nodes: &Nodes, started: Instant, secs: f64) -> Vec<String> {
    let mut log = Vec::new();
    let mut note = |what: String| {
        log.push(format!(
            "{:>7.1} s  {what}",
            started.elapsed().as_secs_f64()
        ));
    };
    let at = |fraction: f64| {
        let when = started + Duration::from_secs_f64(secs * fraction);
        std::thread::sleep(when.saturating_duration_since(Instant::now()));
    };
    let masters = nodes.masters();
    if masters.len() != 3 {
        note(format!("expected 3 masters, found {masters:?}: no faults"));
        return log;
    }
    let (m0, m1, m2) = (masters[0], masters[1], masters[2]);
    // A stall shorter than the node timeout is a stall, not a failover:
    // with `scripts/redis-cluster`'s 1 s, the 2 s stall would also promote
    // the stalled master's replica, and the stale master, until it hears
    // of it, takes writes that are lost (Redis Cluster's own split-brain
    // window, which no client can close). The kill below is the failover.
    let set: Vec<String> = nodes
        .ports
        .iter()
        .map(|&p| {
            cli(
                p,
                &["CONFIG", "SET", "cluster-node-timeout", NODE_TIMEOUT_MS],
            )
        })
        .collect();
    note(format!(
        "cluster-node-timeout {NODE_TIMEOUT_MS} ms on every node: {set:?}"
    ));

    at(WINDOWS[1].1);
    match signal(nodes, m1, "STOP") {
        Ok(pid) => {
            note(format!("SIGSTOP master {m1} (pid {pid})"));
            std::thread::sleep(Duration::from_secs(2));
            let _ = signal(nodes, m1, "CONT");
            note(format!("SIGCONT master {m1} (pid {pid})"));
        }
        Err(e) => note(format!("stall failed: {e}")),
    }

    at(WINDOWS[2].1);
    // Every node must agree first (redis-cli checks).
    let from = cli(m0, &["CLUSTER", "MYID"]);
    let to = cli(m2, &["CLUSTER", "MYID"]);
    let reshard_started = Instant::now();
    let out = Command::new("timeout")
        .args(["60", "redis-cli", "--cluster", "reshard"])
        .arg(format!("127.0.0.1:{m0}"))
        .args(["--cluster-from", &from, "--cluster-to", &to])
        .args(["--cluster-slots", "1000", "--cluster-yes"])
        .output();
    match out {
        Ok(o) if o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("[ERR]") => {
            note(format!(
                "resharded 1000 slots from master {m0} to {m2} in {:.1?}",
                reshard_started.elapsed()
            ))
        }
        Ok(o) => note(format!(
            "reshard FAILED ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains("ERR"))
                .collect::<Vec<_>>()
                .join(" / ")
        )),
        Err(e) => note(format!("reshard FAILED: {e}")),
    }

    at(WINDOWS[3].1);
    match signal(nodes, m0, "KILL") {
        Ok(pid) => {
            let killed = Instant::now();
            note(format!("SIGKILL master {m0} (pid {pid})"));
            let deadline = killed + Duration::from_secs(20);
            loop {
                let promoted = nodes
                    .masters()
                    .into_iter()
                    .find(|p| ![m0, m1, m2].contains(p));
                if let Some(p) = promoted {
                    note(format!(
                        "replica {p} took over after {:.1?}",
                        killed.elapsed()
                    ));
                    break;
                }
                if Instant::now() > deadline {
                    note("no replica took over within 20 s".into());
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Err(e) => note(format!("kill failed: {e}")),
    }
    log
}

/// The soak's keys left on the live masters, after deleting the fencing
/// counters (which outlive their locks by design).
fn cluster_leftovers(nodes: &Nodes) -> Vec<String> {
    use std::os::unix::ffi::OsStrExt;
    let mut left = Vec::new();
    for port in nodes.masters() {
        let scan = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["--scan", "--pattern", "*soak*"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        for key in scan.split(|&b| b == b'\n').filter(|k| !k.is_empty()) {
            let name = String::from_utf8_lossy(key);
            if name.contains(":fence") {
                let _ = Command::new("redis-cli")
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "DEL"])
                    .arg(std::ffi::OsStr::from_bytes(key))
                    .output();
            } else {
                left.push(format!("{port}: {name}"));
            }
        }
    }
    left
}

// ---- main ---------------------------------------------------------------------------

/// A client for a worker's own checks: follows redirections (one command
/// in flight at a time), one more attempt than redirections (fred 10 ends
/// its connection task when an ASK meets a command with no attempts left).
async fn raw_client(url: &str) -> Result<Client, fred::error::Error> {
    let config = Config::from_url(url)?;
    let client = fred::types::Builder::from_config(config)
        .with_connection_config(|c| {
            c.max_redirections = 16;
            c.max_command_attempts = 17;
        })
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2))
        .set_policy(ReconnectPolicy::new_constant(0, 100))
        .build()?;
    client.init().await?;
    Ok(client)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let secs = arg("--secs", 60);
    let workers = arg("--workers", 16);
    let keys = arg("--keys", 8).max(2);
    let nodes = match std::env::var_os("SOAK_CLUSTER_DIR") {
        Some(dir) => match Nodes::read(PathBuf::from(dir)) {
            Ok(nodes) => Some(nodes),
            Err(e) => {
                eprintln!("soak: SOAK_CLUSTER_DIR: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let cluster = nodes.is_some();

    let connect = || async {
        let m = DistributedMutex::connect(&url).await?;
        DistributedMutex::builder(m.client().clone())
            .ttl(Duration::from_secs(5))
            .retry(RetryStrategy::exponential(
                Duration::from_millis(1),
                Duration::from_millis(50),
                200,
            ))
            .build()
    };
    let (a, b) = match (connect().await, connect().await) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("soak: cannot reach Redis at {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On a cluster, pairs of keys sharing a hash tag (`{soak:t0}:a`,
    // `{soak:t0}:b`) and pairs of plain keys, in turn.
    let key_set: Vec<String> = (0..keys)
        .map(|k| {
            let pair = k / 2;
            if cluster && pair % 2 == 0 {
                format!("{{soak:t{pair}}}:{}", if k % 2 == 0 { "a" } else { "b" })
            } else {
                format!("soak:lock:{k}")
            }
        })
        .collect();
    let key_set = Arc::new(key_set);

    let rss_start = rss_kib();
    let started = Instant::now();
    let stats = Arc::new(Stats {
        started,
        secs: secs as f64,
        windows: (0..if cluster { WINDOWS.len() } else { 1 })
            .map(|_| Window::default())
            .collect(),
        occupancy: Mutex::new(HashMap::new()),
        violation_log: Mutex::new(Vec::new()),
    });
    println!(
        "soak: {workers} workers, {} keys, 2 mutex instances, {secs} s against {url}{}",
        key_set.len(),
        if cluster {
            " (cluster: faults at 15 %, 35 %, 60 %)"
        } else {
            ""
        }
    );
    let until = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for id in 0..workers {
        let mutex = if id % 2 == 0 { a.clone() } else { b.clone() };
        let raw = if cluster {
            match raw_client(&url).await {
                Ok(raw) => raw,
                Err(e) => {
                    eprintln!("soak: cannot connect a checking client: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            a.client().clone()
        };
        let checks = Checks {
            stats: Arc::clone(&stats),
            raw,
            cluster,
        };
        tasks.push(tokio::spawn(worker(
            id + 1,
            mutex,
            checks,
            Arc::clone(&key_set),
            until,
        )));
    }
    let faults = nodes.map(|nodes| {
        let secs = secs as f64;
        tokio::task::spawn_blocking(move || (faults(&nodes, started, secs), nodes))
    });
    let progress = {
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            for second in 1u64.. {
                tick.tick().await;
                let rss = rss_kib();
                stats.window().rss_end.store(rss, Ordering::Relaxed);
                if second % 10 != 0 {
                    continue;
                }
                println!(
                    "  {:>5.0} s: {} acquisitions, RSS {rss} KiB",
                    started.elapsed().as_secs_f64(),
                    stats.total(|w| w.acquired.load(Ordering::Relaxed)),
                );
            }
        })
    };
    for task in tasks {
        let _ = task.await;
    }
    progress.abort();
    let elapsed = started.elapsed();
    stats.windows[stats.windows.len() - 1]
        .rss_end
        .store(rss_kib(), Ordering::Relaxed);
    a.shutdown().await;
    b.shutdown().await;

    let (fault_log, left) = match faults {
        Some(faults) => {
            let (log, nodes) = faults.await.unwrap_or_default_log();
            let left = tokio::task::spawn_blocking(move || cluster_leftovers(&nodes))
                .await
                .unwrap_or_default();
            (log, left)
        }
        None => (Vec::new(), single_server_leftovers(a.client(), keys).await),
    };

    let acquired = stats.total(|w| w.acquired.load(Ordering::Relaxed));
    let violations = stats.total(|w| w.violations.load(Ordering::Relaxed));
    let ghosts = stats.total(|w| w.ghosts.load(Ordering::Relaxed));
    println!();
    for line in &fault_log {
        println!("fault: {line}");
    }
    for line in stats.violation_log.lock().unwrap().iter() {
        println!("note: {line}");
    }
    if cluster {
        println!();
        println!("| window | acquisitions | busy | errors | violations | ghosts | RSS at end |");
        println!("|---|---|---|---|---|---|---|");
        for ((name, _), w) in WINDOWS.iter().zip(&stats.windows) {
            let errors = w.errors.lock().unwrap().clone();
            let errors = if errors.is_empty() {
                "0".to_owned()
            } else {
                errors
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "| {name} | {} | {} | {errors} | {} | {} | {} KiB |",
                w.acquired.load(Ordering::Relaxed),
                w.busy.load(Ordering::Relaxed),
                w.violations.load(Ordering::Relaxed),
                w.ghosts.load(Ordering::Relaxed),
                w.rss_end.load(Ordering::Relaxed),
            );
        }
    }
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| duration | {:.1} s |", elapsed.as_secs_f64());
    println!(
        "| acquisitions | {acquired} ({:.0}/s) |",
        acquired as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| busy (not obtained / try_lock none) | {} |",
        stats.total(|w| w.busy.load(Ordering::Relaxed))
    );
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for w in &stats.windows {
        for (kind, n) in w.errors.lock().unwrap().iter() {
            *errors.entry(kind.clone()).or_default() += n;
        }
    }
    if errors.is_empty() {
        println!("| errors | 0 |");
    }
    for (kind, n) in &errors {
        println!("| errors: {kind} | {n} |");
    }
    println!("| mutual-exclusion violations | {violations} |");
    if cluster {
        println!("| ghosts (a guard its master does not back) | {ghosts} |");
    }
    println!("| RSS start / end | {rss_start} KiB / {} KiB |", rss_kib());
    println!("| lock keys left after shutdown | {} |", left.len());
    let failed_faults = fault_log
        .iter()
        .any(|l| l.contains("FAILED") || l.contains("failed") || l.contains("no replica"));
    if violations > 0 || !left.is_empty() || failed_faults {
        let log = stats.violation_log.lock().unwrap().clone();
        eprintln!(
            "soak: FAILED ({violations} violations {log:?}, {} keys left: {left:?}{})",
            left.len(),
            if failed_faults {
                ", a fault failed"
            } else {
                ""
            }
        );
        return ExitCode::FAILURE;
    }
    println!("soak: OK");
    ExitCode::SUCCESS
}

/// The fault thread's outcome, or a note that it panicked.
trait FaultsOutcome {
    fn unwrap_or_default_log(self) -> (Vec<String>, Nodes);
}

impl FaultsOutcome for Result<(Vec<String>, Nodes), tokio::task::JoinError> {
    fn unwrap_or_default_log(self) -> (Vec<String>, Nodes) {
        match self {
            Ok(done) => done,
            Err(e) => (
                vec![format!("the fault thread FAILED: {e}")],
                Nodes {
                    dir: PathBuf::new(),
                    ports: Vec::new(),
                },
            ),
        }
    }
}

/// Lock keys left on one server, after deleting the counters and fencing
/// counters this run made.
async fn single_server_leftovers(raw: &Client, keys: u64) -> Vec<String> {
    let mut left: Vec<String> = Vec::new();
    let mut cursor = "0".to_owned();
    loop {
        let (next, batch): (String, Vec<String>) = raw
            .custom(
                fred::cmd!("SCAN"),
                vec![
                    cursor.clone(),
                    "MATCH".into(),
                    "soak:lock:*".into(),
                    "COUNT".into(),
                    "1000".into(),
                ],
            )
            .await
            .unwrap_or(("0".into(), Vec::new()));
        left.extend(batch.into_iter().filter(|k| !k.ends_with(":fence")));
        if next == "0" {
            break;
        }
        cursor = next;
    }
    for k in 0..keys {
        let _: Result<i64, _> = raw
            .del(vec![
                format!("soak:count:soak:lock:{k}"),
                format!("{{soak:lock:{k}}}:fence"),
            ])
            .await;
    }
    left
}
