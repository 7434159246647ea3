//! A private Redis Cluster: six [`RedisServer`]s (3 masters, 3 replicas) on
//! free loopback ports, joined with `redis-cli --cluster create`.
//!
//! ```ignore
//! let cluster = RedisCluster::start();
//! let mutex = DistributedMutex::connect(&cluster.url()).await?;
//! let key = cluster.key_on_master(1, "jobs:"); // a key served by the 2nd master
//! cluster.pause_master(1); // SIGSTOP
//! cluster.resume_master(1); // SIGCONT
//! ```
//!
//! The topology ([`masters`](RedisCluster::masters), slot ranges) is read
//! once, when the cluster is up, and ordered by slot: master 0 serves slot 0.
//! A failover later (the nodes run with `--cluster-node-timeout 1000`, so a
//! master paused for more than a second or two is replaced by its replica)
//! changes who serves the slots, not what these methods return:
//! `pause_master(i)` / `resume_master(i)` always signal the same process.
//!
//! Every process is stopped when the `RedisCluster` is dropped (and by each
//! server's watchdog if the test process dies first).

use std::net::TcpListener;
use std::ops::RangeInclusive;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::util::redis_keyslot;

use super::{free_port, redis_cli_bin, RedisServer};

/// Nodes in the cluster: 3 masters, each with one replica.
pub const NODES: usize = 6;
/// Masters in the cluster.
pub const MASTERS: usize = 3;
/// The cluster bus port is the client port plus this.
const BUS_PORT_OFFSET: u16 = 10_000;
/// How long `redis-cli --cluster create` may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long every node may take to report `cluster_state:ok` afterwards.
const STATE_OK_TIMEOUT: Duration = Duration::from_secs(20);

/// One master as read from `CLUSTER NODES` when the cluster came up.
#[derive(Debug, Clone)]
struct Master {
    /// Index in `RedisCluster::nodes`.
    node: usize,
    /// Index in `RedisCluster::nodes` of its replica.
    replica: usize,
    port: u16,
    slots: Vec<RangeInclusive<u16>>,
}

/// Six private `redis-server` processes forming one cluster. Stopped on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Ordered by first slot.
    masters: Vec<Master>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster (one replica per master) and
    /// waits until every node reports `cluster_state:ok` and every master
    /// has its replica online (initial sync done, so a write from then on is
    /// replicated and a failover keeps the data). Panics, with the nodes'
    /// logs, if that does not happen in time.
    pub fn start() -> RedisCluster {
        let mut nodes = Vec::with_capacity(NODES);
        for _ in 0..NODES {
            nodes.push(RedisServer::start_on_ports(
                &[
                    "--cluster-enabled",
                    "yes",
                    // Relative to the server's own temporary `--dir`.
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-replica-validity-factor",
                    "0",
                    // A failing master must not take the healthy ones down
                    // with it (CLUSTERDOWN on every node), as production
                    // clusters that serve partial coverage are set up.
                    "--cluster-require-full-coverage",
                    "no",
                    // Replicas sync at once (the default waits 5 s for
                    // more replicas to share a diskless transfer), so
                    // `start` can wait for them: until a replica is in
                    // sync, a failover promotes it empty.
                    "--repl-diskless-sync-delay",
                    "0",
                ],
                port_with_free_bus_port,
            ));
        }
        let mut cluster = RedisCluster {
            nodes,
            masters: Vec::new(),
        };
        cluster.create();
        cluster.wait_state_ok();
        cluster.masters = cluster.read_masters();
        cluster.wait_replicas_online();
        cluster
    }

    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=...` (every node).
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(RedisServer::port);
        let first = ports.next().expect("nodes");
        let rest: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&"))
    }

    /// Every node (masters and replicas), in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The ports of the 3 masters, ordered by slot (master 0 serves slot 0).
    pub fn masters(&self) -> Vec<u16> {
        self.masters.iter().map(|m| m.port).collect()
    }

    /// The `i`-th master's server.
    pub fn master(&self, i: usize) -> &RedisServer {
        &self.nodes[self.masters[i].node]
    }

    /// The slot ranges the `i`-th master served when the cluster came up.
    pub fn slots_of(&self, i: usize) -> &[RangeInclusive<u16>] {
        &self.masters[i].slots
    }

    /// The index (into [`masters`](RedisCluster::masters)) of the master
    /// serving `slot`.
    pub fn master_for_slot(&self, slot: u16) -> usize {
        self.masters
            .iter()
            .position(|m| m.slots.iter().any(|r| r.contains(&slot)))
            .unwrap_or_else(|| panic!("no master serves slot {slot}: {:?}", self.masters))
    }

    /// The index of the master serving `key`.
    pub fn master_for_key(&self, key: &str) -> usize {
        self.master_for_slot(redis_keyslot(key.as_bytes()))
    }

    /// `"{prefix}{n}"` for the smallest `n` whose slot the `i`-th master
    /// serves (no braces are added: `prefix` should have none either).
    pub fn key_on_master(&self, i: usize, prefix: &str) -> String {
        self.keys_on_master(i, prefix, 1).remove(0)
    }

    /// `count` distinct keys `"{prefix}{n}"` served by the `i`-th master.
    pub fn keys_on_master(&self, i: usize, prefix: &str, count: usize) -> Vec<String> {
        assert!(
            i < self.masters.len(),
            "master {i} of {}",
            self.masters.len()
        );
        (0u64..)
            .map(|n| format!("{prefix}{n}"))
            .filter(|key| self.master_for_key(key) == i)
            .take(count)
            .collect()
    }

    /// SIGSTOP the `i`-th master (as created; see the module docs).
    pub fn pause_master(&self, i: usize) {
        self.master(i).pause();
    }

    /// SIGCONT the `i`-th master.
    pub fn resume_master(&self, i: usize) {
        self.master(i).resume();
    }

    /// SIGKILL the `i`-th master (as created) at once; see
    /// [`RedisServer::sigkill`]. Its replica takes over after the cluster
    /// node timeout (see [`wait_for_failover`](RedisCluster::wait_for_failover)).
    /// Returns when the signal was sent.
    pub fn kill_master(&mut self, i: usize) -> Instant {
        let node = self.masters[i].node;
        self.nodes[node].sigkill()
    }

    /// The index (into [`nodes`](RedisCluster::nodes)) of the `i`-th
    /// master's replica, as created.
    pub fn replica_of(&self, i: usize) -> usize {
        self.masters[i].replica
    }

    /// The `i`-th master's replica, as created.
    pub fn replica(&self, i: usize) -> &RedisServer {
        &self.nodes[self.masters[i].replica]
    }

    /// Waits until a node other than the `i`-th master (as created) is a
    /// healthy master serving that master's slots, as that node itself and
    /// `CLUSTER NODES` on it report; returns its index in
    /// [`nodes`](RedisCluster::nodes). Panics, with every node's log, after
    /// `limit`.
    pub fn wait_for_failover(&self, i: usize, limit: Duration) -> usize {
        let old = self.masters[i].port;
        let slot = *self.masters[i].slots[0].start();
        let deadline = Instant::now() + limit;
        loop {
            for (index, node) in self.nodes.iter().enumerate() {
                if node.port() == old || node.pid().is_none() {
                    continue;
                }
                let lines = parse_nodes(&node.cli(&["CLUSTER", "NODES"]));
                let promoted = lines.iter().any(|n| {
                    n.myself
                        && n.role == "master"
                        && !n.failing
                        && n.slots.iter().any(|r| r.contains(&slot))
                });
                if promoted {
                    return index;
                }
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "no node took over master {i} (port {old}) within {limit:?}: {:?}",
                    self.roles()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A connected raw fred cluster client for assertions (constant 100 ms
    /// reconnect policy; 2 s connection and command timeouts).
    pub async fn client(&self) -> Client {
        super::raw_client(&self.url()).await
    }

    /// `CLUSTER INFO` field `cluster_state` of every node, in start order.
    pub fn states(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| {
                n.cli(&["CLUSTER", "INFO"])
                    .lines()
                    .find_map(|l| l.strip_prefix("cluster_state:"))
                    .unwrap_or("(no cluster_state)")
                    .trim()
                    .to_owned()
            })
            .collect()
    }

    /// `(port, role)` of every node as `CLUSTER NODES` on the first live
    /// node reports it now (`role` is `master` or `slave`).
    pub fn roles(&self) -> Vec<(u16, String)> {
        let live = self
            .nodes
            .iter()
            .find(|n| n.pid().is_some())
            .expect("a live node");
        parse_nodes(&live.cli(&["CLUSTER", "NODES"]))
            .into_iter()
            .map(|n| (n.port, n.role))
            .collect()
    }

    // ---- internals ------------------------------------------------------

    fn create(&self) {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut child = Command::new(redis_cli_bin())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to run {} --cluster create: {e}", redis_cli_bin()));
        let deadline = Instant::now() + CREATE_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = child.kill();
                    break None;
                }
            }
        };
        let output = child.wait_with_output().expect("redis-cli output");
        let out = String::from_utf8_lossy(&output.stdout);
        let err = String::from_utf8_lossy(&output.stderr);
        match status {
            Some(s) if s.success() && out.contains("[OK] All 16384 slots covered") => {}
            Some(s) => self.fail(&format!(
                "redis-cli --cluster create failed ({s})\n{out}\n{err}"
            )),
            None => self.fail(&format!(
                "redis-cli --cluster create took more than {CREATE_TIMEOUT:?}\n{out}\n{err}"
            )),
        }
    }

    fn wait_state_ok(&self) {
        let deadline = Instant::now() + STATE_OK_TIMEOUT;
        loop {
            let states = self.states();
            if states.iter().all(|s| s == "ok") {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "not every node reports cluster_state:ok after {STATE_OK_TIMEOUT:?}: {states:?}"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every master reports its replica `state=online` in
    /// `INFO replication`.
    fn wait_replicas_online(&self) {
        let deadline = Instant::now() + STATE_OK_TIMEOUT;
        loop {
            let lagging: Vec<u16> = (0..self.masters.len())
                .filter(|&i| {
                    let info = self.master(i).cli(&["INFO", "replication"]);
                    let online = info
                        .lines()
                        .any(|l| l.starts_with("slave0:") && l.contains("state=online"));
                    // The master counts its replica online once the snapshot
                    // is sent; the replica may still be loading it, and a
                    // `WAIT` sent then goes unanswered for that long (a
                    // test's 100 ms `min_replicas` once failed so, right after
                    // the start). So also wait for the replica's own view.
                    let replica = self.nodes[self.masters[i].replica].cli(&["INFO", "replication"]);
                    let synced = replica.lines().any(|l| l == "master_link_status:up")
                        && replica.lines().any(|l| l == "master_sync_in_progress:0");
                    !(online && synced)
                })
                .map(|i| self.masters[i].port)
                .collect();
            if lagging.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "masters {lagging:?} have no replica online after {STATE_OK_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The masters as node 0 sees them, each with its replica. Node 0 may
    /// learn a replica's master a moment after `cluster_state:ok` (gossip):
    /// asks again until every master has one, for up to the state timeout.
    fn read_masters(&self) -> Vec<Master> {
        let deadline = Instant::now() + STATE_OK_TIMEOUT;
        loop {
            match self.try_read_masters() {
                Ok(masters) => return masters,
                Err(e) if Instant::now() >= deadline => {
                    self.fail(&format!("{e} after {STATE_OK_TIMEOUT:?}"))
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn try_read_masters(&self) -> Result<Vec<Master>, String> {
        let nodes = parse_nodes(&self.nodes[0].cli(&["CLUSTER", "NODES"]));
        let index_of = |port: u16| {
            self.nodes
                .iter()
                .position(|s| s.port() == port)
                .unwrap_or_else(|| panic!("CLUSTER NODES names unknown port {port}"))
        };
        let mut masters = Vec::new();
        for n in nodes
            .iter()
            .filter(|n| n.role == "master" && !n.slots.is_empty())
        {
            let replica = nodes
                .iter()
                .find(|r| r.master_id == n.id)
                .map(|r| index_of(r.port))
                .ok_or_else(|| format!("master {} has no replica", n.port))?;
            masters.push(Master {
                node: index_of(n.port),
                replica,
                port: n.port,
                slots: n.slots.clone(),
            });
        }
        masters.sort_by_key(|m| *m.slots[0].start());
        if masters.len() != MASTERS {
            return Err(format!("expected {MASTERS} masters, found {masters:?}"));
        }
        let covered: usize = masters
            .iter()
            .flat_map(|m| &m.slots)
            .map(|r| usize::from(r.end() - r.start()) + 1)
            .sum();
        if covered != 16384 {
            return Err(format!("masters cover {covered} slots: {masters:?}"));
        }
        Ok(masters)
    }

    fn fail(&self, msg: &str) -> ! {
        let logs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("--- node {} ---\n{}", n.port(), n.log()))
            .collect();
        panic!("{msg}\n{}", logs.join("\n"));
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeLine {
    id: String,
    port: u16,
    role: String,
    /// The node's master's id (`-` for a master).
    master_id: String,
    /// The line describes the node that answered.
    myself: bool,
    /// Flagged `fail` or `fail?`.
    failing: bool,
    slots: Vec<RangeInclusive<u16>>,
}

/// `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`
fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 8, "unexpected CLUSTER NODES line {line:?}");
            let port = fields[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no port in CLUSTER NODES line {line:?}"));
            let flags: Vec<&str> = fields[2].split(',').collect();
            let role = if flags.contains(&"master") {
                "master"
            } else if flags.contains(&"slave") {
                "slave"
            } else {
                "other"
            };
            let slots = fields[8..]
                .iter()
                // `[slot->-id]` / `[slot-<-id]`: a migration, not ownership.
                .filter(|s| !s.starts_with('['))
                .map(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    let parse = |x: &str| -> u16 {
                        x.parse()
                            .unwrap_or_else(|_| panic!("bad slot {s:?} in {line:?}"))
                    };
                    parse(a)..=parse(b)
                })
                .collect();
            NodeLine {
                id: fields[0].to_owned(),
                port,
                role: role.to_owned(),
                master_id: fields[3].to_owned(),
                myself: flags.contains(&"myself"),
                failing: flags.contains(&"fail") || flags.contains(&"fail?"),
                slots,
            }
        })
        .collect()
}

/// A free loopback port whose cluster bus port (port + 10000) is free too
/// and fits in 16 bits. Another process may still take either before the
/// server binds them; `RedisServer::start_on_ports` then tries again.
fn port_with_free_bus_port() -> u16 {
    for _ in 0..1000 {
        let port = free_port();
        let Some(bus) = port.checked_add(BUS_PORT_OFFSET) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", bus)).is_ok() {
            return port;
        }
    }
    panic!("no free port with a free cluster bus port in 1000 tries");
}

/// The subscribers, on one node, of the shard channels matching `pattern`
/// (`PUBSUB SHARDCHANNELS`, then `PUBSUB SHARDNUMSUB` of each); `cli` runs
/// a command on that node and returns its text.
pub fn shard_subscribers(cli: impl Fn(&[&str]) -> String, pattern: &str) -> i64 {
    cli(&["PUBSUB", "SHARDCHANNELS", pattern])
        .lines()
        .map(str::trim)
        .filter(|channel| !channel.is_empty())
        .map(|channel| {
            let reply = cli(&["PUBSUB", "SHARDNUMSUB", channel]);
            reply
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<i64>().ok())
                .unwrap_or_else(|| panic!("PUBSUB SHARDNUMSUB {channel}: {reply:?}"))
        })
        .sum()
}
