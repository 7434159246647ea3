//! The topologies of the matrix ([`Env`]), started once per test and shared
//! by its cells, and the faults injected into them ([`Env::inject`]),
//! always by the pid of a process the test started.

use std::time::{Duration, Instant};

use distributed_mutex::{Builder, Redlock};
use fred::prelude::*;

use crate::support::cluster::{RedisCluster, MASTERS};
use crate::support::proxy::Proxy;
use crate::support::readme_user::{cluster_url_as, create_user, ACL_PREFIX, PLAIN_ONLY_WITHOUT};
use crate::support::redlock::Masters;
use crate::support::sentinel::SentinelSet;
use crate::support::RedisServer;

use super::prim::{Handle, Primitive};

/// Where the cells run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One `redis-server`.
    One,
    /// The 3-master cluster (one replica each), sharded pub/sub (Redis 7).
    ClusterSharded,
    /// The same cluster as a user without `+info` and the sharded pub/sub
    /// rights, so the client uses plain pub/sub (as `protocol.rs` does).
    ClusterPlain,
    /// Sentinel: 1 master, 2 replicas, 3 sentinels.
    Sentinel,
    /// 5 independent servers (Redlock's).
    Servers,
}

impl Topology {
    pub fn name(self) -> &'static str {
        match self {
            Topology::One => "one",
            Topology::ClusterSharded => "cluster-sharded",
            Topology::ClusterPlain => "cluster-plain",
            Topology::Sentinel => "sentinel",
            Topology::Servers => "servers",
        }
    }

    /// Whether `min_replicas(1)` makes a write survive a failover: on the
    /// cluster (one replica per master, the one promoted), not on Sentinel,
    /// whose second replica confirms writes on the old master until it is
    /// moved (the README's "Redis Sentinel").
    pub fn confirm_covers_failover(self) -> bool {
        matches!(self, Topology::ClusterSharded | Topology::ClusterPlain)
    }

    /// Whether keys have replicas that take over (a failover is possible).
    pub fn replicated(self) -> bool {
        matches!(
            self,
            Topology::ClusterSharded | Topology::ClusterPlain | Topology::Sentinel
        )
    }
}

/// The faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// SIGSTOP the keys' master (a majority of Redlock's servers) for 1.5
    /// TTL, then SIGCONT.
    Pause,
    /// SIGKILL the keys' master (its replica takes over); 2 of Redlock's 5.
    Kill,
    /// Every connection of every contender cut, three times, through a
    /// proxy per server and process.
    Cut,
    /// A manual failover: `CLUSTER FAILOVER` on the replica, `SENTINEL
    /// FAILOVER`.
    Failover,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Pause => "pause",
            Fault::Kill => "kill",
            Fault::Cut => "cut",
            Fault::Failover => "failover",
        }
    }
}

/// When a fault was injected, and what it may have cost.
#[derive(Debug, Clone)]
pub struct Injected {
    pub start: Instant,
    pub end: Instant,
    /// Writes acknowledged by the old master may be missing on the new one
    /// (a master was replaced without a coordinated handover).
    pub writes_may_be_lost: bool,
    pub what: String,
}

enum Kind {
    One(RedisServer),
    Cluster {
        cluster: RedisCluster,
        /// Masters (as created) killed so far.
        killed: Vec<usize>,
    },
    Sentinel(SentinelSet),
    Servers(Masters),
    /// Stopped, while a fresh one starts.
    Gone,
}

/// A running topology.
pub struct Env {
    pub topology: Topology,
    kind: Kind,
    /// Cells run so far (names each cell's prefix).
    cells: usize,
}

impl Env {
    /// Starts the topology (blocking: call it before entering a runtime,
    /// or from a blocking section).
    pub fn start(topology: Topology) -> Env {
        let kind = Self::start_kind(topology);
        Env {
            topology,
            kind,
            cells: 0,
        }
    }

    fn start_kind(topology: Topology) -> Kind {
        match topology {
            Topology::One => Kind::One(RedisServer::start()),
            Topology::ClusterSharded | Topology::ClusterPlain => {
                let cluster = RedisCluster::start();
                if topology == Topology::ClusterPlain {
                    create_user(&cluster, "locker", PLAIN_ONLY_WITHOUT);
                }
                Kind::Cluster {
                    cluster,
                    killed: Vec::new(),
                }
            }
            Topology::Sentinel => Kind::Sentinel(SentinelSet::start()),
            Topology::Servers => Kind::Servers(Masters::start(5)),
        }
    }

    /// The key prefix of the next cell: unique within the test, under the
    /// ACL user's prefix on the plain-mode cluster.
    pub fn next_prefix(&mut self, label: &str) -> String {
        self.cells += 1;
        let base = format!("mx{}-{label}:", self.cells);
        match self.topology {
            Topology::ClusterPlain => format!("{ACL_PREFIX}{base}"),
            _ => base,
        }
    }

    /// Gets the topology ready for a cell with `fault`: a cluster whose
    /// masters were all killed, or a Sentinel set that lost a data node,
    /// is replaced by a fresh one before a kill. Returns the shard (master
    /// index as created) the cell's keys go to, for a fault on a cluster.
    pub fn prepare(&mut self, fault: Fault) -> Option<usize> {
        let fresh = match &self.kind {
            Kind::Cluster { killed, .. } => fault == Fault::Kill && killed.len() == MASTERS,
            Kind::Sentinel(set) => {
                fault == Fault::Kill && set.nodes().iter().any(|n| n.pid().is_none())
            }
            _ => false,
        };
        if fresh {
            // Stop the old processes before starting new ones.
            self.kind = Kind::Gone;
            self.kind = Self::start_kind(self.topology);
        }
        match &self.kind {
            Kind::Cluster { killed, .. } if fault != Fault::None => {
                let shard = if fault == Fault::Kill {
                    (0..MASTERS)
                        .find(|i| !killed.contains(i))
                        .expect("a live shard")
                } else {
                    self.cells % MASTERS
                };
                Some(shard)
            }
            _ => None,
        }
    }

    /// `count` resource names `{base}{n}` for a cell whose mutexes use
    /// `prefix`: on a cluster, all served by `shard` if given, else name `k`
    /// by master `k % 3`.
    pub fn names(
        &self,
        prefix: &str,
        base: &str,
        count: usize,
        shard: Option<usize>,
    ) -> Vec<String> {
        match &self.kind {
            Kind::Cluster { cluster, .. } => (0..count)
                .map(|k| {
                    let want = shard.unwrap_or(k % MASTERS);
                    (0u64..)
                        .map(|n| format!("{base}{k}-{n}"))
                        .find(|name| cluster.master_for_key(&format!("{prefix}{name}")) == want)
                        .expect("a name on every master")
                })
                .collect(),
            _ => (0..count).map(|k| format!("{base}{k}")).collect(),
        }
    }

    /// The ports a cut goes between: one proxy per port and process.
    pub fn cut_ports(&self) -> Vec<u16> {
        match &self.kind {
            Kind::One(server) => vec![server.port()],
            Kind::Servers(masters) => masters.servers.iter().map(RedisServer::port).collect(),
            _ => panic!("no cut on {}", self.topology.name()),
        }
    }

    /// The URLs a handle connects to: the topology's own, or the proxies'.
    fn urls(&self, proxies: &[Proxy]) -> Vec<String> {
        if !proxies.is_empty() {
            return proxies.iter().map(Proxy::url).collect();
        }
        match &self.kind {
            Kind::One(server) => vec![server.url()],
            Kind::Cluster { cluster, .. } if self.topology == Topology::ClusterPlain => {
                vec![cluster_url_as(cluster, "locker")]
            }
            Kind::Cluster { cluster, .. } => vec![cluster.url()],
            Kind::Sentinel(set) => vec![set.url()],
            Kind::Servers(masters) => masters.urls(),
            Kind::Gone => unreachable!("a topology is running"),
        }
    }

    /// One contender's handle ("process"): a mutex, or a Redlock over the
    /// 5 servers, with key prefix `prefix` and lease `ttl`, through
    /// `proxies` if any; `confirm`: writes confirmed by one replica.
    pub async fn handle(
        &self,
        primitive: Primitive,
        prefix: &str,
        ttl: Duration,
        confirm: bool,
        proxies: &[Proxy],
    ) -> Handle {
        let urls = self.urls(proxies);
        if primitive == Primitive::Redlock {
            let redlock = Redlock::builder(urls)
                .key_prefix(prefix)
                .ttl(ttl)
                .build()
                .await
                .expect("redlock");
            return Handle::Redlock(redlock);
        }
        let url = &urls[0];
        let mut builder = Builder::connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
            .key_prefix(prefix)
            .ttl(ttl);
        if confirm {
            builder = builder.min_replicas(1, Duration::from_millis(250));
        }
        Handle::Mutex(builder.build().expect("valid settings"))
    }

    /// Injects `fault` (on `shard` of a cluster; through `proxies` for a
    /// cut) and returns when it is over: the paused process continued, the
    /// replica promoted, the cuts done.
    pub async fn inject(
        &mut self,
        fault: Fault,
        shard: Option<usize>,
        proxies: &[Proxy],
        ttl: Duration,
    ) -> Injected {
        let start = Instant::now();
        let pause = ttl * 3 / 2;
        let mut writes_may_be_lost = false;
        let what: String = match (&mut self.kind, fault) {
            (_, Fault::None) => "none".into(),
            (_, Fault::Cut) => {
                for _ in 0..3 {
                    for proxy in proxies {
                        proxy.cut_all().await;
                    }
                    tokio::time::sleep(ttl / 5).await;
                }
                format!("3 cuts of {} proxies", proxies.len())
            }
            (Kind::One(server), Fault::Pause) => {
                server.pause();
                tokio::time::sleep(pause).await;
                server.resume();
                format!("paused {pause:?}")
            }
            (Kind::Servers(masters), Fault::Pause) => {
                for s in &masters.servers[..3] {
                    s.pause();
                }
                tokio::time::sleep(pause).await;
                for s in &masters.servers[..3] {
                    s.resume();
                }
                format!("3 of 5 paused {pause:?}")
            }
            (Kind::Servers(masters), Fault::Kill) => {
                masters.servers[3].sigkill();
                masters.servers[4].sigkill();
                "2 of 5 killed".into()
            }
            (Kind::Cluster { cluster, .. }, Fault::Pause) => {
                let shard = shard.expect("a shard");
                let slot = *cluster.slots_of(shard)[0].start();
                let node = serving(cluster, slot);
                cluster.nodes()[node].pause();
                tokio::time::sleep(pause).await;
                cluster.nodes()[node].resume();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let now = serving(cluster, slot);
                writes_may_be_lost = now != node;
                format!("master of shard {shard} paused {pause:?}, served by node {now} after")
            }
            (Kind::Cluster { cluster, killed }, Fault::Kill) => {
                let shard = shard.expect("a shard");
                cluster.kill_master(shard);
                killed.push(shard);
                let promoted = tokio::task::block_in_place(|| {
                    cluster.wait_for_failover(shard, Duration::from_secs(30))
                });
                writes_may_be_lost = true;
                format!("master of shard {shard} killed, node {promoted} took over")
            }
            (Kind::Cluster { cluster, .. }, Fault::Failover) => {
                let shard = shard.expect("a shard");
                let slot = *cluster.slots_of(shard)[0].start();
                let master = serving(cluster, slot);
                let replica = replica_of(cluster, master);
                let node = &cluster.nodes()[replica];
                assert_eq!(node.cli(&["CLUSTER", "FAILOVER"]), "OK");
                let deadline = Instant::now() + Duration::from_secs(20);
                while serving(cluster, slot) != replica {
                    assert!(
                        Instant::now() < deadline,
                        "CLUSTER FAILOVER did not complete"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // Coordinated: the replica caught up before taking over.
                format!("CLUSTER FAILOVER: node {replica} took shard {shard} from node {master}")
            }
            (Kind::Sentinel(set), Fault::Pause) => {
                let port = set.master_port();
                set.node(port).pause();
                tokio::time::sleep(pause).await;
                set.node(port).resume();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let now = set.master_port();
                writes_may_be_lost = now != port;
                format!("master {port} paused {pause:?}, master {now} after")
            }
            (Kind::Sentinel(set), Fault::Kill) => {
                let old = set.master_port();
                set.kill_node(old);
                let new = tokio::task::block_in_place(|| {
                    set.wait_for_new_master(old, Duration::from_secs(30))
                });
                writes_may_be_lost = true;
                format!("master {old} killed, {new} took over")
            }
            (Kind::Sentinel(set), Fault::Failover) => {
                let old = set.master_port();
                set.failover();
                let new = tokio::task::block_in_place(|| {
                    set.wait_for_new_master(old, Duration::from_secs(30))
                });
                // SENTINEL FAILOVER does not stop writes to the old master
                // before promoting the replica.
                writes_may_be_lost = true;
                format!("SENTINEL FAILOVER: {old} -> {new}")
            }
            (_, fault) => panic!("{} on {}", fault.name(), self.topology.name()),
        };
        Injected {
            start,
            end: Instant::now(),
            writes_may_be_lost,
            what,
        }
    }

    /// After a cell: Redlock's killed servers start again (empty: the next
    /// cell uses other keys).
    pub fn heal(&mut self) {
        if let Kind::Servers(masters) = &mut self.kind {
            for s in &mut masters.servers {
                if s.pid().is_none() {
                    s.restart();
                }
            }
        }
    }

    /// Every key under `prefix` on every live master, with its PTTL.
    pub async fn keys_under(&self, prefix: &str) -> Vec<(String, i64)> {
        let servers: Vec<&RedisServer> = match &self.kind {
            Kind::One(server) => vec![server],
            Kind::Cluster { cluster, .. } => cluster.nodes().iter().collect(),
            Kind::Sentinel(set) => set.nodes().iter().collect(),
            Kind::Servers(masters) => masters.servers.iter().collect(),
            Kind::Gone => Vec::new(),
        };
        let mut found = Vec::new();
        for server in servers {
            if server.pid().is_none() || role(server) != "master" {
                continue;
            }
            let client = server.client().await;
            let keys: Vec<Value> = client
                .custom(fred::cmd!("KEYS"), vec![format!("{prefix}*")])
                .await
                .expect("KEYS");
            for key in keys {
                let bytes = key.as_bytes().expect("a key").to_vec();
                let pttl: i64 = client
                    .pttl(fred::types::Key::from(bytes.clone().into_boxed_slice()))
                    .await
                    .expect("PTTL");
                found.push((String::from_utf8_lossy(&bytes).into_owned(), pttl));
            }
            let _ = client.quit().await;
        }
        found
    }
}

/// The first line of `ROLE` (`master`, `slave`; empty if no answer).
fn role(server: &RedisServer) -> String {
    server
        .cli(&["ROLE"])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The node (index into `nodes()`) that serves `slot` now, as that node
/// itself reports (`myself,master` in its `CLUSTER NODES`).
fn serving(cluster: &RedisCluster, slot: u16) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (i, node) in cluster.nodes().iter().enumerate() {
            if node.pid().is_none() {
                continue;
            }
            let nodes = node.cli(&["CLUSTER", "NODES"]);
            let mine = nodes.lines().find(|l| l.contains("myself"));
            let Some(line) = mine else { continue };
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !fields
                .get(2)
                .is_some_and(|f| f.split(',').any(|x| x == "master"))
            {
                continue;
            }
            let serves = fields
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .any(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    let (a, b): (u16, u16) = (a.parse().unwrap(), b.parse().unwrap());
                    (a..=b).contains(&slot)
                });
            if serves {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no node serves slot {slot}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A replica (index into `nodes()`) of the master `master`, by `ROLE`.
fn replica_of(cluster: &RedisCluster, master: usize) -> usize {
    let port = cluster.nodes()[master].port().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (i, node) in cluster.nodes().iter().enumerate() {
            if node.pid().is_none() || i == master {
                continue;
            }
            let role = node.cli(&["ROLE"]);
            let lines: Vec<&str> = role.lines().collect();
            if lines.first() == Some(&"slave") && lines.get(2) == Some(&port.as_str()) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "node {master} has no replica");
        std::thread::sleep(Duration::from_millis(20));
    }
}
