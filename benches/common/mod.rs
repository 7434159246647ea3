//! What the benches share, included by each with `mod common;` (after
//! `#[path = "../tests/support/mod.rs"] mod support;`, whose `RedisServer`
//! it uses):
//!
//! * this module: the setup — where Redis is ([`Redis`]: `REDIS_URL`, a
//!   private `redis-server`, or with `BENCH_CLUSTER=1` a private 6-node
//!   Redis Cluster), the runtime, per-run key prefixes, knobs read from the
//!   environment, and whether `cargo bench` asked for a full run;
//! * [`masters`]: on a cluster, which master serves a key, keys on a given
//!   master, and commands (INFO, CLIENT LIST) sent to each master;
//! * [`stats`]: medians, percentiles, means, ratios of paired rounds;
//! * [`report`]: tables (aligned text or Markdown) and number formats.
//!
//! Nothing here times anything: the benches measure, `stats` reduces,
//! `report` prints.
#![allow(dead_code)]

pub mod masters;
pub mod report;
pub mod stats;

use tokio::runtime::Runtime;

use crate::support::cluster::RedisCluster;
use crate::support::RedisServer;

/// The Redis a bench runs against: the one at `REDIS_URL` when that is set
/// (and not empty; `redis-cluster://host:port?node=...` for a cluster, e.g.
/// the one `scripts/redis-cluster start` prints), else with `BENCH_CLUSTER=1`
/// a private 6-node cluster (3 masters, 3 replicas; the test fixture), else
/// a private `redis-server` on a free loopback port. Private servers are
/// started here and killed (by their own pids, never by name) when this is
/// dropped.
pub struct Redis {
    pub url: String,
    server: Option<RedisServer>,
    cluster: Option<RedisCluster>,
}

impl Redis {
    pub fn from_env() -> Redis {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Redis {
                url,
                server: None,
                cluster: None,
            },
            _ if env_flag("BENCH_CLUSTER") => Redis::private_cluster(),
            _ => Redis::private_server(),
        }
    }

    /// A private `redis-server`, whatever the environment says.
    pub fn private_server() -> Redis {
        let server = RedisServer::start();
        Redis {
            url: server.url(),
            server: Some(server),
            cluster: None,
        }
    }

    /// A private 6-node cluster, whatever the environment says.
    pub fn private_cluster() -> Redis {
        let cluster = RedisCluster::start();
        Redis {
            url: cluster.url(),
            server: None,
            cluster: Some(cluster),
        }
    }

    /// A server (or cluster) of this run alone: every key and command on it
    /// is ours.
    pub fn is_private(&self) -> bool {
        self.server.is_some() || self.cluster.is_some()
    }

    /// Whether the URL names a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some() || self.url.starts_with("redis-cluster")
    }

    /// The private server, if one was started.
    pub fn server(&self) -> Option<&RedisServer> {
        self.server.as_ref()
    }

    /// The private cluster, if one was started.
    pub fn cluster(&self) -> Option<&RedisCluster> {
        self.cluster.as_ref()
    }

    /// `"private server"`, `"private cluster"` or `"REDIS_URL"`.
    pub fn origin(&self) -> &'static str {
        if self.server.is_some() {
            "private server"
        } else if self.cluster.is_some() {
            "private cluster, BENCH_CLUSTER=1"
        } else {
            "REDIS_URL"
        }
    }
}

/// A multi-thread runtime with every driver enabled; `workers` worker
/// threads, or tokio's default (one per core) with `None`.
pub fn runtime(workers: Option<usize>) -> Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.enable_all().build().expect("tokio runtime")
}

/// `<bench>:<pid>:`, the prefix of every key a bench run makes, so runs
/// against a shared `REDIS_URL` server never meet.
pub fn key_prefix(bench: &str) -> String {
    format!("{bench}:{}:", std::process::id())
}

/// `cargo bench` passes `--bench`; without it (`cargo test --benches`) a
/// bench runs briefly, as a smoke test.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Whether the command line has `flag`.
pub fn has_arg(flag: &str) -> bool {
    std::env::args().any(|a| a == flag)
}

/// An environment variable set to something other than empty or `0`.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A positive whole number from the environment, else `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// A non-empty environment variable, if set.
pub fn env_str(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
