//! Making a [`Redlock`]: [`RedlockBuilder`], its checks, and the connections
//! to the servers (made in parallel; a minority may be down).

use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::config::{Config, ReconnectPolicy, ServerConfig};

use crate::api::builder::Builder;
use crate::policy::error::Error;
use crate::policy::limits::{drift, ttl_millis, validate_command_timeout, MAX_PREFIX_LEN};
use crate::policy::retry::RetryStrategy;
use crate::protocol::connect::QuitOnDrop;
use crate::protocol::keys::prefix_is_valid;

use super::fanout::gather;
use super::quorum::{no_majority, quorum};
use super::servers::{Servers, Settings};
use super::Redlock;

/// A Redlock's lease unless told otherwise: 10 s. Short, because a server
/// that restarts without its data must stay down for one TTL (see the
/// README's "Redlock"); renewal keeps a longer hold alive.
pub const DEFAULT_REDLOCK_TTL: Duration = Duration::from_secs(10);

/// How long one server may take to answer one command unless told
/// otherwise: 250 ms. Small against the TTL, so that a dead or paused
/// server costs an acquisition little of its validity.
pub const DEFAULT_SERVER_TIMEOUT: Duration = Duration::from_millis(250);

/// The most servers accepted (a Redlock is a handful of masters; more is a
/// list given by mistake).
pub const MAX_REDLOCK_SERVERS: usize = 64;

/// Where the servers come from.
enum Source {
    Urls(Vec<String>),
    Clients(Vec<Client>),
}

/// Builds a [`Redlock`] with other settings than the defaults. Made by
/// [`Redlock::builder`] (URLs) or [`Redlock::builder_with_clients`].
#[must_use = "call .build().await to get the Redlock"]
pub struct RedlockBuilder {
    source: Source,
    settings: Settings,
}

impl RedlockBuilder {
    pub(crate) fn from_urls(urls: Vec<String>) -> Self {
        Self::with_source(Source::Urls(urls))
    }

    pub(crate) fn from_clients(clients: Vec<Client>) -> Self {
        Self::with_source(Source::Clients(clients))
    }

    fn with_source(source: Source) -> Self {
        RedlockBuilder {
            source,
            settings: Settings {
                ttl: DEFAULT_REDLOCK_TTL,
                retry: default_retry(),
                prefix: String::new(),
                server_timeout: DEFAULT_SERVER_TIMEOUT,
                auto_renew: true,
            },
        }
    }

    /// The lease of every lock (default [`DEFAULT_REDLOCK_TTL`], 10 s).
    /// It must exceed the drift margin (1 % of it + 2 ms) plus the
    /// per-server timeout, or [`build`](Self::build) fails with
    /// [`Error::InvalidTtl`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.settings.ttl = ttl;
        self
    }

    /// How long `lock` waits for a busy lock (default
    /// `linear(200 ms, 20)`). Every wait is drawn at random from the upper
    /// half of the strategy's delay, so contenders that failed together do
    /// not try again in lock step.
    pub fn retry(mut self, retry: RetryStrategy) -> Self {
        self.settings.retry = retry;
        self
    }

    /// A prefix put before every key on every server (default none).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.prefix = prefix.into();
        self
    }

    /// How long one server may take to answer one command (default
    /// [`DEFAULT_SERVER_TIMEOUT`], 250 ms): the command timeout of each
    /// server's client. A server that does not answer in time counts as
    /// down for that attempt.
    pub fn server_timeout(mut self, timeout: Duration) -> Self {
        self.settings.server_timeout = timeout;
        self
    }

    /// Whether guards renew their lease on every server while they live
    /// (default `true`), a third of the TTL after each renewal a majority
    /// confirmed.
    pub fn auto_renew(mut self, on: bool) -> Self {
        self.settings.auto_renew = on;
        self
    }

    /// Checks the settings, connects to every server in parallel (URLs) and
    /// builds the Redlock.
    ///
    /// With URLs, a server that cannot be reached now (refused, timed out)
    /// is not an error while a majority can: its client keeps reconnecting
    /// in the background and it takes part once it is back. A `rediss://`
    /// server must be reachable here (its client is made by the TLS path,
    /// which connects first).
    ///
    /// # Errors
    /// [`Error::Config`] for no server, more than [`MAX_REDLOCK_SERVERS`], the same
    /// server twice (by host and port), a Redis Cluster client, a malformed
    /// URL, refused credentials, a retry strategy without attempts, a
    /// server timeout of zero or over one hour, or a bad key prefix;
    /// [`Error::InvalidTtl`] for a TTL out of range or too small for the
    /// drift margin and the server timeout; [`Error::Unavailable`] when
    /// fewer than a majority of the servers could be reached.
    ///
    /// # Cancel safety
    /// Cancel-safe: connections not yet handed over are closed.
    pub async fn build(self) -> Result<Redlock, Error> {
        let settings = self.settings;
        check_settings(&settings)?;
        let (clients, owned) = match self.source {
            Source::Urls(urls) => {
                check_count(urls.len())?;
                check_distinct(urls.iter().map(|u| url_identity(u)))?;
                (connect_all(&urls, settings.server_timeout).await?, true)
            }
            Source::Clients(clients) => {
                check_count(clients.len())?;
                for client in &clients {
                    if client.is_clustered() {
                        return Err(config(
                            "a Redlock server's client is a Redis Cluster client; Redlock takes \
                             independent masters (one standalone client each)",
                        ));
                    }
                }
                check_distinct(
                    clients
                        .iter()
                        .map(|c| Some(server_identity(&c.client_config()))),
                )?;
                (clients, false)
            }
        };
        let names: Vec<String> = clients
            .iter()
            .map(|c| server_identity(&c.client_config()))
            .collect();
        let mut mutexes = Vec::with_capacity(clients.len());
        for client in clients {
            let mutex = Builder::new(client, owned)
                .key_prefix(settings.prefix.clone())
                .command_timeout(settings.server_timeout)
                .notifications(false)
                .auto_renew(false)
                .build()?;
            mutexes.push(mutex);
        }
        Ok(Redlock {
            servers: Arc::new(Servers::new(mutexes, names, settings)),
        })
    }
}

impl std::fmt::Debug for RedlockBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let servers = match &self.source {
            Source::Urls(urls) => urls.len(),
            Source::Clients(clients) => clients.len(),
        };
        f.debug_struct("RedlockBuilder")
            .field("servers", &servers)
            .field("settings", &self.settings)
            .finish()
    }
}

/// `linear(200 ms, 20)`: about 4 s of waiting, jittered.
pub(crate) fn default_retry() -> RetryStrategy {
    RetryStrategy::linear(Duration::from_millis(200), 20)
}

fn config(message: &str) -> Error {
    Error::Config {
        message: message.to_owned(),
        source: None,
    }
}

fn check_settings(settings: &Settings) -> Result<(), Error> {
    validate_command_timeout(settings.server_timeout)?;
    check_ttl("", settings.ttl, settings.server_timeout)?;
    settings.retry.validate()?;
    let prefix = &settings.prefix;
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(config(&format!(
            "the key prefix is {} bytes long; at most {MAX_PREFIX_LEN} are accepted",
            prefix.len()
        )));
    }
    if !prefix_is_valid(prefix) {
        return Err(config(&format!(
            "the key prefix {prefix:?} has a `{{` without a matching `}}` after it; close the \
             hash tag or leave braces out"
        )));
    }
    Ok(())
}

/// The TTL in whole milliseconds, refused unless it leaves a validity window
/// after the drift margin and one per-server timeout.
pub(crate) fn check_ttl(key: &str, ttl: Duration, server_timeout: Duration) -> Result<u64, Error> {
    let ms = ttl_millis(key, ttl)?;
    let ttl = Duration::from_millis(ms);
    if ttl <= drift(ttl) + server_timeout {
        return Err(Error::InvalidTtl {
            key: crate::policy::error::display_key(key),
            ttl,
            reason: "a Redlock TTL must exceed the drift margin (1 % of the TTL + 2 ms) plus the \
                     per-server timeout, or no acquisition could ever be valid",
        });
    }
    Ok(ms)
}

fn check_count(n: usize) -> Result<(), Error> {
    if n == 0 {
        return Err(config(
            "a Redlock needs at least one Redis server (and at least 3 to survive the loss of \
             one); none was given",
        ));
    }
    if n > MAX_REDLOCK_SERVERS {
        return Err(config(&format!(
            "a Redlock of {n} servers was asked for; at most {MAX_REDLOCK_SERVERS} are accepted"
        )));
    }
    Ok(())
}

/// Refuses the same server twice: two entries on one server would count it
/// twice towards the majority.
fn check_distinct(identities: impl Iterator<Item = Option<String>>) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for id in identities.flatten() {
        if !seen.insert(id.clone()) {
            return Err(config(&format!(
                "the Redis server {id} is given twice; a Redlock's servers must be independent \
                 (one entry each), or it would be counted twice towards the majority"
            )));
        }
    }
    Ok(())
}

/// `host:port` of a URL (lower-cased host), `None` when it does not parse
/// (connecting then reports why).
fn url_identity(url: &str) -> Option<String> {
    let plain = url
        .replacen("rediss://", "redis://", 1)
        .replacen("valkeys://", "valkey://", 1);
    Config::from_url(&plain)
        .ok()
        .map(|config| server_identity(&config))
}

/// What names one server in messages and duplicate checks.
fn server_identity(config: &Config) -> String {
    match &config.server {
        ServerConfig::Centralized { server } => {
            format!("{}:{}", server.host.to_lowercase(), server.port)
        }
        other => format!("{other:?}"),
    }
}

/// Connects to every URL in parallel. A server that cannot be reached gets
/// a client that keeps reconnecting in the background; fewer than a
/// majority reached is [`Error::Unavailable`], and any other error (a
/// malformed URL, refused credentials, TLS) is returned as it is.
async fn connect_all(urls: &[String], timeout: Duration) -> Result<Vec<Client>, Error> {
    let calls: Vec<_> = urls
        .iter()
        .map(|url| crate::protocol::connect::connect_client(url, timeout))
        .collect();
    let mut results: Vec<Option<Result<Client, Error>>> = (0..urls.len()).map(|_| None).collect();
    gather(calls, |i, result| -> Option<()> {
        results[i] = Some(result);
        None
    })
    .await;
    // Every client made so far is closed if we return early.
    let mut made: Vec<QuitOnDrop> = Vec::with_capacity(urls.len());
    let mut reached = 0;
    let mut last_error = None;
    let mut fatal = None;
    for (url, result) in urls.iter().zip(results) {
        match result.expect("every call answered") {
            Ok(client) => {
                reached += 1;
                made.push(QuitOnDrop(Some(client)));
            }
            Err(e) if e.is_transient() && !is_tls(url) => {
                made.push(QuitOnDrop(Some(reconnecting_client(url, timeout)?)));
                last_error = Some(e);
            }
            Err(e) => {
                fatal.get_or_insert(e);
            }
        }
    }
    if let Some(e) = fatal {
        return Err(e);
    }
    let (n, q) = (urls.len(), quorum(urls.len()));
    if reached < q {
        return Err(no_majority(
            "",
            reached,
            n,
            q,
            "connecting the Redlock",
            last_error.as_ref(),
        ));
    }
    Ok(made.into_iter().filter_map(|mut c| c.0.take()).collect())
}

fn is_tls(url: &str) -> bool {
    url.starts_with("rediss") || url.starts_with("valkeys")
}

/// A client of a server that is down now: set up as the crate's own
/// clients are, but its first connection is retried in the background by
/// the reconnect policy (instead of failing the call). Commands sent
/// meanwhile wait at most the command timeout, and fred drops them unsent
/// once it has passed.
fn reconnecting_client(url: &str, timeout: Duration) -> Result<Client, Error> {
    let mut config = Config::from_url(url).map_err(|source| Error::Config {
        message: format!("the Redis URL is malformed ({})", source.details()),
        source: Some(source),
    })?;
    config.fail_fast = false;
    let client = fred::types::Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            c.max_command_attempts = c.max_command_attempts.max(c.max_redirections + 1);
        })
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()
        .map_err(|source| Error::Config {
            message: format!("the Redis client could not be built ({})", source.details()),
            source: Some(source),
        })?;
    // The connection task; it runs until the client is closed.
    drop(client.connect());
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_must_leave_a_validity_window() {
        let ms = Duration::from_millis;
        assert!(check_ttl("k", ms(300), ms(250)).is_ok());
        // 1 % of 252 ms + 2 ms = 4.52 ms, and 252 ms ≤ 4.52 ms + 250 ms.
        assert!(matches!(
            check_ttl("k", ms(252), ms(250)),
            Err(Error::InvalidTtl { .. })
        ));
        assert!(matches!(
            check_ttl("k", ms(1), ms(1)),
            Err(Error::InvalidTtl { .. })
        ));
        assert!(matches!(
            check_ttl("k", Duration::ZERO, ms(1)),
            Err(Error::InvalidTtl { .. })
        ));
    }

    #[test]
    fn the_same_server_twice_is_refused() {
        let ids = [
            "redis://127.0.0.1:7000",
            "redis://127.0.0.1:7001/2",
            "redis://127.0.0.1:7000/3",
        ]
        .map(url_identity);
        assert_eq!(ids[0].as_deref(), Some("127.0.0.1:7000"));
        assert!(check_distinct(ids.into_iter()).is_err());
        let ok = ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"].map(url_identity);
        assert!(check_distinct(ok.into_iter()).is_ok());
        assert!(matches!(check_count(0), Err(Error::Config { .. })));
    }
}
