//! Fixtures of the Redlock tests and bench: N private, independent
//! `redis-server` processes ([`Masters`]), what each holds for a key, and the
//! exclusion check of Redlock guards ([`Ledger`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use distributed_mutex::{Redlock, RedlockBuilder, RedlockLease};

use super::RedisServer;

/// N independent masters (no replication between them).
pub struct Masters {
    pub servers: Vec<RedisServer>,
}

impl Masters {
    /// `n` fresh servers, started one after the other (~0.1 s each).
    pub fn start(n: usize) -> Masters {
        Masters {
            servers: (0..n).map(|_| RedisServer::start()).collect(),
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(RedisServer::url).collect()
    }

    /// A builder over every server's URL.
    pub fn builder(&self) -> RedlockBuilder {
        Redlock::builder(self.urls())
    }

    /// A Redlock over every server with `ttl` and a per-server timeout of
    /// `server_timeout`.
    pub async fn redlock(&self, ttl: Duration, server_timeout: Duration) -> Redlock {
        self.builder()
            .ttl(ttl)
            .server_timeout(server_timeout)
            .build()
            .await
            .expect("redlock")
    }

    /// What each server holds at `key` (`None` for a killed server or no
    /// key), read with `redis-cli` (a paused server would block it: resume
    /// first).
    pub fn values(&self, key: &str) -> Vec<Option<String>> {
        self.servers
            .iter()
            .map(|s| {
                s.pid()?;
                Some(s.cli(&["GET", key])).filter(|v| !v.is_empty())
            })
            .collect()
    }

    /// How many servers hold `token` at `key`.
    pub fn holding(&self, key: &str, token: &str) -> usize {
        self.values(key)
            .iter()
            .filter(|v| v.as_deref() == Some(token))
            .count()
    }

    /// How many servers have anything at `key`.
    pub fn locked(&self, key: &str) -> usize {
        self.values(key).iter().filter(|v| v.is_some()).count()
    }

    /// Waits (at most `limit`) until no server has `key`.
    pub async fn gone_within(&self, key: &str, limit: Duration) -> bool {
        let all: Vec<usize> = (0..self.servers.len()).collect();
        self.gone_within_on(&all, key, limit).await
    }

    /// Waits (at most `limit`) until none of the servers `which` has `key`.
    pub async fn gone_within_on(&self, which: &[usize], key: &str, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let values = self.values(key);
            if which.iter().all(|&i| values[i].is_none()) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The exclusion check of Redlock guards in one process: every lease
/// handed out, per key. A guard that is granted while another lease of the
/// same key still reports time left ([`RedlockLease::remaining`]) is a
/// violation: two holders who both believe they hold the lock.
#[derive(Default)]
pub struct Ledger {
    leases: Mutex<HashMap<String, Vec<(usize, RedlockLease)>>>,
    violations: Mutex<Vec<String>>,
}

impl Ledger {
    /// Records a lease just granted to `holder`; returns the violations it
    /// makes (another holder's lease of the key still valid).
    pub fn granted(&self, holder: usize, lease: RedlockLease) -> usize {
        let mut leases = self.leases.lock().unwrap();
        let entries = leases.entry(lease.key().to_owned()).or_default();
        // Forget leases that are over for good.
        entries.retain(|(_, l)| !l.is_lost());
        let mut found = 0;
        for (other, l) in entries.iter() {
            let left = l.remaining();
            if !left.is_zero() {
                found += 1;
                self.violations.lock().unwrap().push(format!(
                    "{}: granted to holder {holder} while holder {other}'s lease has {left:?} left",
                    lease.key()
                ));
            }
        }
        entries.push((holder, lease));
        found
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}
