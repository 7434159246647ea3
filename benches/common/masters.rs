//! Per-master views of the Redis a bench runs against, read from a connected
//! fred client: on a cluster, its masters (ordered by first slot, as the test
//! fixture orders them: master 0 serves slot 0), which one serves a key, keys
//! placed on a given master, and commands sent to each master (`INFO`,
//! `CLIENT LIST`, `DBSIZE`); on one server, that server as the only "master".
//! Works for a private cluster and for one at a `redis-cluster://` URL alike.

use std::collections::BTreeMap;

use fred::clients::WithOptions;
use fred::prelude::*;
use fred::types::config::Server;
use fred::types::{ClusterHash, CustomCommand, InfoKind, Value};
use fred::util::redis_keyslot;

/// A master: its address (`None` on one server) and slot ranges.
type Node = (Option<Server>, Vec<(u16, u16)>);

/// The masters as the client's cached `CLUSTER SLOTS` had them when this was
/// made.
pub struct Masters {
    client: Client,
    nodes: Vec<Node>,
}

impl Masters {
    /// Reads the topology from `client` (connected): `CLUSTER SLOTS` on a
    /// cluster client.
    pub async fn of(client: &Client) -> Masters {
        let nodes = if client.is_clustered() {
            let reply: Value = client
                .custom(
                    CustomCommand::new("CLUSTER", ClusterHash::Random, false),
                    vec!["SLOTS"],
                )
                .await
                .expect("CLUSTER SLOTS");
            let mut by_server: BTreeMap<String, (Server, Vec<(u16, u16)>)> = BTreeMap::new();
            for range in reply.into_array() {
                // [start, end, [host, port, id, ...], replica...]
                let range = range.into_array();
                let slot = |v: &Value| v.as_i64().expect("slot") as u16;
                let primary = range[2].clone().into_array();
                let host = primary[0].as_string().expect("host");
                let port = primary[1].as_i64().expect("port") as u16;
                let server = Server::new(host, port);
                by_server
                    .entry(server.to_string())
                    .or_insert_with(|| (server, Vec::new()))
                    .1
                    .push((slot(&range[0]), slot(&range[1])));
            }
            let mut nodes: Vec<Node> = by_server
                .into_values()
                .map(|(server, mut slots)| {
                    slots.sort();
                    (Some(server), slots)
                })
                .collect();
            nodes.sort_by_key(|(_, slots)| slots[0].0);
            nodes
        } else {
            vec![(None, vec![(0, 16383)])]
        };
        Masters {
            client: client.clone(),
            nodes,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_cluster(&self) -> bool {
        self.nodes[0].0.is_some()
    }

    /// `127.0.0.1:30001`, or `server` on one server.
    pub fn name(&self, i: usize) -> String {
        match &self.nodes[i].0 {
            Some(server) => server.to_string(),
            None => "server".to_owned(),
        }
    }

    /// The index of the master serving `key`.
    pub fn of_key(&self, key: &str) -> usize {
        let slot = redis_keyslot(key.as_bytes());
        self.nodes
            .iter()
            .position(|(_, slots)| slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .unwrap_or_else(|| panic!("no master serves slot {slot} of {key:?}"))
    }

    /// `count` distinct keys `"{prefix}{n}"` served by the `i`-th master
    /// (`prefix` should have no braces).
    pub fn keys_on(&self, i: usize, prefix: &str, count: usize) -> Vec<String> {
        assert!(i < self.len(), "master {i} of {}", self.len());
        (0u64..)
            .map(|n| format!("{prefix}{n}"))
            .filter(|key| self.of_key(key) == i)
            .take(count)
            .collect()
    }

    /// One key `"{prefix}{n}"` served by the `i`-th master.
    pub fn key_on(&self, i: usize, prefix: &str) -> String {
        self.keys_on(i, prefix, 1).remove(0)
    }

    /// `count` distinct keys, the `j`-th served by master `j % len()`.
    pub fn spread(&self, prefix: &str, count: usize) -> Vec<String> {
        let per: Vec<Vec<String>> = (0..self.len())
            .map(|i| self.keys_on(i, prefix, count.div_ceil(self.len())))
            .collect();
        (0..count)
            .map(|j| per[j % self.len()][j / self.len()].clone())
            .collect()
    }

    /// The client with every command sent to the `i`-th master (a cluster
    /// only).
    pub fn node(&self, i: usize) -> WithOptions<Client> {
        let server = self.nodes[i].0.clone().expect("a cluster master");
        self.client.with_cluster_node(server)
    }

    /// `INFO <kind>` of the `i`-th master.
    pub async fn info(&self, i: usize, kind: InfoKind) -> String {
        let text: FredResult<String> = match &self.nodes[i].0 {
            Some(server) => {
                self.client
                    .with_cluster_node(server.clone())
                    .info(Some(kind))
                    .await
            }
            None => self.client.info(Some(kind)).await,
        };
        text.expect("INFO")
    }

    /// `INFO <kind>` of every master, in order.
    pub async fn info_each(&self, kind: InfoKind) -> Vec<String> {
        let mut out = Vec::with_capacity(self.len());
        for i in 0..self.len() {
            out.push(self.info(i, kind.clone()).await);
        }
        out
    }

    /// `CLIENT LIST` of the `i`-th master.
    pub async fn client_list(&self, i: usize) -> String {
        let text: FredResult<String> = match &self.nodes[i].0 {
            Some(server) => {
                self.client
                    .with_cluster_node(server.clone())
                    .client_list::<String, String>(None, None)
                    .await
            }
            None => self.client.client_list::<String, String>(None, None).await,
        };
        text.expect("CLIENT LIST")
    }

    /// `DBSIZE` of the `i`-th master.
    pub async fn dbsize(&self, i: usize) -> u64 {
        let n: FredResult<u64> = match &self.nodes[i].0 {
            Some(server) => self.client.with_cluster_node(server.clone()).dbsize().await,
            None => self.client.dbsize().await,
        };
        n.expect("DBSIZE")
    }
}

/// A numeric field `name:value` of an `INFO` text.
pub fn info_field(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// `INFO commandstats` text as command → calls.
pub fn command_calls(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            let calls = rest.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Sums per-master command → calls maps.
pub fn sum_calls(maps: &[BTreeMap<String, u64>]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for map in maps {
        for (name, n) in map {
            *out.entry(name.clone()).or_insert(0) += n;
        }
    }
    out
}

/// Connections in a `CLIENT LIST` text: all of them, and those subscribed
/// to a channel (`sub=`, `psub=` or, Redis 7, `ssub=` above 0).
pub fn connections(client_list: &str) -> (usize, usize) {
    let lines: Vec<&str> = client_list.lines().filter(|l| l.contains("id=")).collect();
    let subscribed = lines
        .iter()
        .filter(|l| {
            l.split_whitespace().any(|kv| {
                ["sub=", "psub=", "ssub="].iter().any(|p| {
                    kv.strip_prefix(p)
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
            })
        })
        .count();
    (lines.len(), subscribed)
}
