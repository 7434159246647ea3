//! Making a [`Redlock`]: [`RedlockBuilder`], its checks, and the connections
//! to the servers (made in parallel; a minority may be down).

use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;

use crate::api::builder::Builder;
use crate::engine::options::setters;
use crate::policy::error::Error;
use crate::policy::retry::RetryStrategy;

use super::servers::{Servers, Settings};
use super::Redlock;

use super::check::{
    check_count, check_distinct, check_settings, config, server_identity, url_identity,
};
use super::connect::connect_all;

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

    setters! {
        /// The lease of every lock (default [`DEFAULT_REDLOCK_TTL`], 10 s).
        /// It must exceed the drift margin (1 % of it + 2 ms) plus the
        /// per-server timeout, or [`build`](Self::build) fails with
        /// [`Error::InvalidTtl`].
        ttl(ttl: Duration) => settings.ttl = ttl;
        /// How long `lock` waits for a busy lock (default
        /// `linear(200 ms, 20)`). Every wait is drawn at random from the upper
        /// half of the strategy's delay, so contenders that failed together do
        /// not try again in lock step.
        retry(retry: RetryStrategy) => settings.retry = retry;
        /// A prefix put before every key on every server (default none).
        key_prefix(prefix: impl Into<String>) => settings.prefix = prefix.into();
        /// How long one server may take to answer one command (default
        /// [`DEFAULT_SERVER_TIMEOUT`], 250 ms): the command timeout of each
        /// server's client. A server that does not answer in time counts as
        /// down for that attempt.
        server_timeout(timeout: Duration) => settings.server_timeout = timeout;
        /// Whether guards renew their lease on every server while they live
        /// (default `true`), a third of the TTL after each renewal a majority
        /// confirmed.
        auto_renew(on: bool) => settings.auto_renew = on;
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
