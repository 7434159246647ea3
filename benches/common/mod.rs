//! What the benches share, included by each with `mod common;` (after
//! `#[path = "../tests/support/mod.rs"] mod support;`, whose `RedisServer`
//! it uses):
//!
//! * this module: the setup — where Redis is ([`Redis`]: `REDIS_URL`, or a
//!   private `redis-server`), the runtime, per-run key prefixes, knobs read
//!   from the environment, and whether `cargo bench` asked for a full run;
//! * [`stats`]: medians, percentiles, means, ratios of paired rounds;
//! * [`report`]: tables (aligned text or Markdown) and number formats.
//!
//! Nothing here times anything: the benches measure, `stats` reduces,
//! `report` prints.
#![allow(dead_code)]

pub mod report;
pub mod stats;

use tokio::runtime::Runtime;

use crate::support::RedisServer;

/// The Redis server a bench runs against: the one at `REDIS_URL` when that is
/// set (and not empty), else a private `redis-server` on a free loopback
/// port, started here and killed (by its own pid, never by name) when this
/// is dropped.
pub struct Redis {
    pub url: String,
    server: Option<RedisServer>,
}

impl Redis {
    pub fn from_env() -> Redis {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Redis { url, server: None },
            _ => {
                let server = RedisServer::start();
                Redis {
                    url: server.url(),
                    server: Some(server),
                }
            }
        }
    }

    /// A server of this run alone: every key and command on it is ours.
    pub fn is_private(&self) -> bool {
        self.server.is_some()
    }

    /// The private server, if one was started.
    pub fn server(&self) -> Option<&RedisServer> {
        self.server.as_ref()
    }

    /// `"private server"` or `"REDIS_URL"`.
    pub fn origin(&self) -> &'static str {
        if self.is_private() {
            "private server"
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
