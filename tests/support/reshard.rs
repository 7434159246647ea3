//! Moving hash slots between the masters of a [`RedisCluster`] while it
//! serves traffic: the hand-rolled form of `redis-cli --cluster reshard`,
//! one slot at a time, with pauses where a client meets `ASK` and `MOVED`.
//!
//! ```ignore
//! let cluster = RedisCluster::start();
//! let reshard = Resharder::new(&cluster);
//! let slot = redis_keyslot(key.as_bytes());
//! // Master 0 -> master 2, pausing 30 ms after each step, so that for a
//! // while the slot is MIGRATING with its keys on both nodes.
//! let moved = reshard.move_slot(slot, 2, Duration::from_millis(30))?;
//! // Or in the background, until stopped: every slot in turn to the next
//! // master (0 -> 1 -> 2 -> 0: each pair of masters in both directions).
//! let mover = Mover::start(Arc::new(reshard), slots, Duration::from_millis(20));
//! let report = mover.stop();
//! ```
//!
//! One move of slot `s` from `A` to `B` (as `redis-cli --cluster reshard`
//! does it, and the Redis Cluster specification describes):
//! 1. `CLUSTER SETSLOT s IMPORTING A` on `B`, `CLUSTER SETSLOT s MIGRATING B`
//!    on `A`, then a pause: `A` still has every key; a command for a key it
//!    does not have (a new lock) is answered `ASK B`;
//! 2. its keys are moved one at a time with `MIGRATE` (never `REPLACE`: a
//!    key on both nodes would be a bug, and fails the move with `BUSYKEY`),
//!    with a pause after each: a key already moved is answered `ASK`, a
//!    script over keys on both nodes `TRYAGAIN`;
//! 3. `CLUSTER SETSLOT s NODE B` on `B`, then on `A` (from here `A` answers
//!    `MOVED B`, and drops its shard channel subscriptions of `s`), then on
//!    every other master, so the whole cluster agrees at once instead of
//!    through gossip.
//!
//! [`Resharder::reshard_with_cli`] runs `redis-cli --cluster reshard`
//! itself instead (the tool moves the source's lowest slots).
//!
//! Every `redis-cli` run is bounded in time ([`CLI_TIMEOUT`],
//! [`CLI_RESHARD_TIMEOUT`]); one that runs over is killed (by its own
//! handle: only processes started here are stopped).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::cluster::{shard_subscribers, RedisCluster};
use super::redis_cli_bin;

/// How long one `redis-cli` run may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one `redis-cli --cluster reshard` may take.
pub const CLI_RESHARD_TIMEOUT: Duration = Duration::from_secs(30);
/// How many keys one move migrates at most before giving up: new keys keep
/// arriving only through `ASK` on the target, so the source drains.
const MAX_KEYS_PER_MOVE: usize = 10_000;
/// `MIGRATE`'s own timeout, in milliseconds.
const MIGRATE_TIMEOUT_MS: &str = "5000";

/// One master: its port and cluster node id.
#[derive(Debug, Clone)]
struct Node {
    port: u16,
    id: String,
}

/// What one slot move did.
#[derive(Debug, Clone, Default)]
pub struct Moved {
    pub slot: u16,
    pub from: usize,
    pub to: usize,
    /// Keys migrated with `MIGRATE` (locks, counters: whatever was there).
    pub keys: usize,
    /// Start to the last `SETSLOT NODE`.
    pub took: Duration,
}

/// Moves slots between the masters of one cluster (indices as in
/// [`RedisCluster::masters`]). Knows who owns each slot it has moved; a
/// slot it never moved is where the cluster put it at creation.
pub struct Resharder {
    masters: Vec<Node>,
    /// Every node's port (masters and replicas).
    ports: Vec<u16>,
    /// Slots moved so far, by their owner now.
    owners: Mutex<HashMap<u16, usize>>,
    /// The layout at creation, for the others.
    initial: Vec<Vec<std::ops::RangeInclusive<u16>>>,
}

impl Resharder {
    /// Reads every master's node id (`CLUSTER MYID`).
    pub fn new(cluster: &RedisCluster) -> Resharder {
        let masters = cluster
            .masters()
            .into_iter()
            .enumerate()
            .map(|(i, port)| {
                let id = cluster.master(i).cli(&["CLUSTER", "MYID"]);
                assert_eq!(id.len(), 40, "CLUSTER MYID on {port}: {id:?}");
                Node { port, id }
            })
            .collect::<Vec<_>>();
        let initial = (0..masters.len())
            .map(|i| cluster.slots_of(i).to_vec())
            .collect();
        Resharder {
            masters,
            ports: cluster.nodes().iter().map(|n| n.port()).collect(),
            owners: Mutex::new(HashMap::new()),
            initial,
        }
    }

    /// How many masters there are.
    pub fn masters(&self) -> usize {
        self.masters.len()
    }

    /// The master that owns `slot` now (as far as this resharder knows:
    /// see [`owner_seen_by`](Self::owner_seen_by) for what a node says).
    pub fn owner(&self, slot: u16) -> usize {
        if let Some(owner) = self.owners.lock().unwrap().get(&slot) {
            return *owner;
        }
        self.initial
            .iter()
            .position(|ranges| ranges.iter().any(|r| r.contains(&slot)))
            .unwrap_or_else(|| panic!("no master served slot {slot} at creation"))
    }

    /// The port of the `i`-th master.
    pub fn port(&self, i: usize) -> u16 {
        self.masters[i].port
    }

    /// The index of the master that owns `slot` in `CLUSTER NODES` of the
    /// `i`-th master, `None` when it names no owner (or one not a master).
    pub fn owner_seen_by(&self, i: usize, slot: u16) -> Option<usize> {
        let text = cli_text(self.masters[i].port, &["CLUSTER", "NODES"]).ok()?;
        let line = text.lines().find(|line| {
            line.split_whitespace()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .any(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    match (a.parse::<u16>(), b.parse::<u16>()) {
                        (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                        _ => false,
                    }
                })
        })?;
        let id = line.split_whitespace().next()?;
        self.masters.iter().position(|m| m.id == id)
    }

    /// Keys in `slot` on the `i`-th master (`CLUSTER GETKEYSINSLOT`), raw.
    pub fn keys_in_slot(&self, i: usize, slot: u16, count: usize) -> Result<Vec<Vec<u8>>, String> {
        let out = cli(
            self.masters[i].port,
            &[
                "CLUSTER",
                "GETKEYSINSLOT",
                &slot.to_string(),
                &count.to_string(),
            ],
        )?;
        Ok(lines(&out))
    }

    /// Moves `slot` to the `to`-th master (see the module docs), pausing
    /// `pause` after the slot is marked migrating and after each key.
    pub fn move_slot(&self, slot: u16, to: usize, pause: Duration) -> Result<Moved, String> {
        let started = Instant::now();
        let from = self.owner(slot);
        self.begin(slot, to)?;
        thread::sleep(pause);
        let mut keys = 0;
        while self.migrate_one(slot, to)? {
            keys += 1;
            if keys > MAX_KEYS_PER_MOVE {
                return Err(format!(
                    "slot {slot}: still keys on master {from} after migrating {keys}"
                ));
            }
            thread::sleep(pause);
        }
        self.finish(slot, to)?;
        Ok(Moved {
            slot,
            from,
            to,
            keys,
            took: started.elapsed(),
        })
    }

    /// Step 1 of a move: `slot` is importing on the `to`-th master and
    /// migrating on its owner.
    pub fn begin(&self, slot: u16, to: usize) -> Result<(), String> {
        let from = self.owner(slot);
        assert_ne!(from, to, "slot {slot} is already on master {to}");
        let (src, dst) = (&self.masters[from], &self.masters[to]);
        let s = slot.to_string();
        expect_ok(dst.port, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &src.id])?;
        expect_ok(src.port, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &dst.id])
    }

    /// Step 2 of a move: migrates one key of `slot` from its owner to the
    /// `to`-th master; `false` when none was left.
    pub fn migrate_one(&self, slot: u16, to: usize) -> Result<bool, String> {
        let from = self.owner(slot);
        let (src, dst) = (&self.masters[from], &self.masters[to]);
        let Some(key) = self.keys_in_slot(from, slot, 1)?.into_iter().next() else {
            return Ok(false);
        };
        let port = dst.port.to_string();
        let head = [
            "MIGRATE",
            "127.0.0.1",
            &port,
            "",
            "0",
            MIGRATE_TIMEOUT_MS,
            "KEYS",
        ];
        let args: Vec<&OsStr> = head
            .iter()
            .map(OsStr::new)
            .chain([OsStr::from_bytes(&key)])
            .collect();
        let reply = cli_os(src.port, &args)?;
        match String::from_utf8_lossy(&reply).trim() {
            // NOKEY: the key expired or was deleted since it was listed.
            "OK" | "NOKEY" => Ok(true),
            other => Err(format!(
                "slot {slot}: MIGRATE {:?} from master {from} to {to}: {other}",
                String::from_utf8_lossy(&key)
            )),
        }
    }

    /// Step 3 of a move: `slot` belongs to the `to`-th master, on every
    /// master (the new owner first, then the old one). A third master that
    /// cannot be reached (killed, its replica taking over) is left to
    /// gossip: the new owner's `SETSLOT NODE` bumped its config epoch.
    pub fn finish(&self, slot: u16, to: usize) -> Result<(), String> {
        let from = self.owner(slot);
        let dst = &self.masters[to];
        let s = slot.to_string();
        let setslot = ["CLUSTER", "SETSLOT", &s, "NODE", &dst.id];
        for i in [to, from] {
            expect_ok(self.masters[i].port, &setslot)?;
        }
        for i in (0..self.masters.len()).filter(|&i| i != from && i != to) {
            match cli_text(self.masters[i].port, &setslot) {
                Ok(reply) if reply == "OK" => {}
                // No reply at all: the node is down.
                Ok(reply) if reply.is_empty() => {}
                Err(_) => {}
                Ok(reply) => {
                    return Err(format!(
                        "CLUSTER SETSLOT {s} NODE on {}: {reply}",
                        self.masters[i].port
                    ))
                }
            }
        }
        self.owners.lock().unwrap().insert(slot, to);
        Ok(())
    }

    /// Waits (at most `limit`) until every master names the owner this
    /// resharder knows for each of `slots`.
    pub fn wait_agreed(&self, slots: &[u16], limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let disagree: Vec<String> = slots
                .iter()
                .flat_map(|&slot| {
                    let owner = self.owner(slot);
                    (0..self.masters.len()).filter_map(move |i| {
                        let seen = self.owner_seen_by(i, slot);
                        (seen != Some(owner)).then(|| {
                            format!("master {i} says slot {slot} is on {seen:?}, not {owner}")
                        })
                    })
                })
                .collect();
            if disagree.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(disagree.join("; "));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Resharder {
    /// Slots some master reports as migrating or importing (`[slot->-id]`,
    /// `[slot-<-id]` in its `CLUSTER NODES`), as `(master, entry)`.
    pub fn migrations_in_progress(&self) -> Vec<(usize, String)> {
        (0..self.masters.len())
            .flat_map(|i| {
                let text = cli_text(self.masters[i].port, &["CLUSTER", "NODES"])
                    .unwrap_or_else(|e| panic!("{e}"));
                text.split_whitespace()
                    .filter(|w| w.starts_with('['))
                    .map(|w| (i, w.to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// `KEYS pattern` on the `i`-th master itself (no `-c`: only what that
    /// node holds), lossy UTF-8.
    pub fn keys_on(&self, i: usize, pattern: &str) -> Vec<String> {
        let out = cli(self.masters[i].port, &["KEYS", pattern]).unwrap_or_else(|e| panic!("{e}"));
        lines(&out)
            .into_iter()
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }

    /// `GET key` on the `i`-th master itself: `None` for nil, or for a
    /// redirection (the node does not serve the key's slot).
    pub fn get_on(&self, i: usize, key: &str) -> Option<String> {
        let out = cli_text(self.masters[i].port, &["GET", key]).unwrap_or_else(|e| panic!("{e}"));
        (!out.is_empty() && !out.starts_with("MOVED") && !out.starts_with("ASK")).then_some(out)
    }

    /// The subscribers on the `i`-th master of the shard channels matching
    /// `pattern` (`PUBSUB SHARDCHANNELS`, then `SHARDNUMSUB` of each).
    pub fn shard_numsub_on(&self, i: usize, pattern: &str) -> i64 {
        let port = self.masters[i].port;
        shard_subscribers(
            |args| cli_text(port, args).unwrap_or_else(|e| panic!("{e}")),
            pattern,
        )
    }
}

impl Resharder {
    /// `redis-cli --cluster reshard`: moves `slots` slots from the `from`-th
    /// master to the `to`-th (the tool takes the source's lowest slots),
    /// bounded by [`CLI_RESHARD_TIMEOUT`]. Waits first until every node
    /// agrees on the slots (the tool refuses to run otherwise), and records
    /// the new owners afterwards. Returns how long the tool ran.
    pub fn reshard_with_cli(&self, from: usize, to: usize, slots: u32) -> Result<Duration, String> {
        self.wait_all_nodes_agree(Duration::from_secs(10))?;
        let started = Instant::now();
        let mut child = Command::new(redis_cli_bin())
            .args(["--cluster", "reshard"])
            .arg(format!("127.0.0.1:{}", self.masters[from].port))
            .args(["--cluster-from", &self.masters[from].id])
            .args(["--cluster-to", &self.masters[to].id])
            .args(["--cluster-slots", &slots.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("failed to run {} --cluster reshard: {e}", redis_cli_bin()))?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let out = thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stdout.read_to_end(&mut out);
            let _ = stderr.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        });
        let deadline = Instant::now() + CLI_RESHARD_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    // Our own child, by its handle.
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let took = started.elapsed();
        let out = out.join().unwrap_or_default();
        self.refresh_owners()?;
        match status {
            Some(s) if s.success() && !out.contains("[ERR]") => Ok(took),
            Some(s) => Err(format!("redis-cli --cluster reshard failed ({s}):\n{out}")),
            None => Err(format!(
                "redis-cli --cluster reshard took more than {CLI_RESHARD_TIMEOUT:?}:\n{out}"
            )),
        }
    }

    /// Reads every slot's owner from the first master's `CLUSTER NODES`.
    pub fn refresh_owners(&self) -> Result<(), String> {
        let text = cli_text(self.masters[0].port, &["CLUSTER", "NODES"])?;
        let mut owners = self.owners.lock().unwrap();
        for (id, ranges) in master_slots(&text) {
            let Some(i) = self.masters.iter().position(|m| m.id == id) else {
                continue;
            };
            for range in ranges {
                for slot in range {
                    owners.insert(slot, i);
                }
            }
        }
        Ok(())
    }

    /// Waits (at most `limit`) until every node, replicas too, reports the
    /// same masters with the same slots, and no slot mid-move.
    pub fn wait_all_nodes_agree(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let views: Vec<String> = self
                .ports
                .iter()
                .map(|&port| {
                    let text = cli_text(port, &["CLUSTER", "NODES"]).unwrap_or_default();
                    let mut view: Vec<String> = master_slots(&text)
                        .into_iter()
                        .map(|(id, ranges)| format!("{id} {ranges:?}"))
                        .collect();
                    view.sort();
                    if text.contains('[') {
                        view.push("(a slot mid-move)".into());
                    }
                    view.join("; ")
                })
                .collect();
            if views.windows(2).all(|w| w[0] == w[1]) && !views[0].contains("mid-move") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("nodes disagree after {limit:?}: {views:#?}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `(master id, slot ranges)` of every master line of `CLUSTER NODES` that
/// serves slots (migration entries `[...]` left out).
fn master_slots(text: &str) -> Vec<(String, Vec<std::ops::RangeInclusive<u16>>)> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].split(',').any(|f| f == "master") {
                return None;
            }
            let ranges: Vec<_> = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    Some(a.parse::<u16>().ok()?..=b.parse::<u16>().ok()?)
                })
                .collect();
            Some((fields[0].to_owned(), ranges))
        })
        .collect()
}

/// What a [`Mover`] did.
#[derive(Debug, Default, Clone)]
pub struct MoverReport {
    /// Every completed move, in order.
    pub moves: Vec<Moved>,
    /// The error that stopped the mover early, if one did.
    pub error: Option<String>,
}

impl MoverReport {
    /// Keys migrated in all.
    pub fn keys(&self) -> usize {
        self.moves.iter().map(|m| m.keys).sum()
    }

    /// Moves from `a` to `b`.
    pub fn between(&self, a: usize, b: usize) -> usize {
        self.moves
            .iter()
            .filter(|m| m.from == a && m.to == b)
            .count()
    }

    /// The longest move.
    pub fn longest(&self) -> Duration {
        self.moves.iter().map(|m| m.took).max().unwrap_or_default()
    }
}

/// A thread that moves slots until stopped: `slots` in turn; on even
/// rounds (passes over `slots`) each to the master after its owner
/// (0 -> 1 -> 2 -> 0), on odd rounds to the one before (0 -> 2 -> 1 -> 0),
/// so every pair of masters sees slots go both ways. A move in progress is
/// finished before it stops (a slot is never left half-moved).
pub struct Mover {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<MoverReport>>,
}

impl Mover {
    pub fn start(resharder: Arc<Resharder>, slots: Vec<u16>, pause: Duration) -> Mover {
        assert!(!slots.is_empty(), "no slots to move");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut report = MoverReport::default();
                let n = resharder.masters();
                for (i, &slot) in slots.iter().cycle().enumerate() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let step = if (i / slots.len()) % 2 == 0 { 1 } else { n - 1 };
                    let to = (resharder.owner(slot) + step) % n;
                    match resharder.move_slot(slot, to, pause) {
                        Ok(moved) => report.moves.push(moved),
                        Err(e) => {
                            report.error = Some(e);
                            break;
                        }
                    }
                }
                report
            })
        };
        Mover {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops after the move in progress and returns what was done.
    pub fn stop(mut self) -> MoverReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .unwrap_or_else(|_| MoverReport {
                error: Some("the mover thread panicked".into()),
                ..MoverReport::default()
            })
    }
}

impl Drop for Mover {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---- redis-cli -------------------------------------------------------------

fn expect_ok(port: u16, args: &[&str]) -> Result<(), String> {
    let reply = cli_text(port, args)?;
    if reply == "OK" {
        Ok(())
    } else {
        Err(format!("{} on {port}: {reply}", args.join(" ")))
    }
}

fn cli_text(port: u16, args: &[&str]) -> Result<String, String> {
    Ok(String::from_utf8_lossy(&cli(port, args)?).trim().to_owned())
}

fn cli(port: u16, args: &[&str]) -> Result<Vec<u8>, String> {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    cli_os(port, &args)
}

/// `redis-cli -p PORT args...` (no `-c`: a redirection is an answer, not
/// followed), stdout raw, killed after [`CLI_TIMEOUT`].
fn cli_os(port: u16, args: &[&OsStr]) -> Result<Vec<u8>, String> {
    let mut child = Command::new(redis_cli_bin())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("failed to run {}: {e}", redis_cli_bin()))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + CLI_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(1)),
            _ => {
                // Our own child, by its handle.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-cli -p {port} {:?} took more than {CLI_TIMEOUT:?}",
                    args
                ));
            }
        }
    }
    Ok(reader.join().unwrap_or_default())
}

/// Raw `redis-cli` output, one element a line.
fn lines(out: &[u8]) -> Vec<Vec<u8>> {
    out.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// A raw fred client over `url` for a test's own reads and writes while
/// slots move (exclusion counters, checks): like
/// [`raw_client`](super::raw_client), but it follows up to 16 redirections
/// and makes up to 17 attempts, so a slot in the middle of a move (`ASK`
/// after `MOVED` after `ASK` ...) does not fail the test's bookkeeping.
pub async fn patient_client(url: &str) -> fred::clients::Client {
    super::raw_client_with(url, |c| {
        // One more attempt than redirections: fred 10 ends the client's
        // connection task when an ASK meets a command with no attempts left.
        c.max_command_attempts = 17;
        c.max_redirections = 16;
    })
    .await
}
