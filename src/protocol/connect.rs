//! Making a fred client set up the way a lock needs it, from a URL.

use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::config::{Config, ReconnectPolicy};

use crate::policy::error::Error;

/// The longest pause between reconnection attempts of a Sentinel client.
const SENTINEL_MAX_RECONNECT_DELAY_MS: u32 = 500;

/// Builds a fred client configured for locking and connects it: reconnects
/// by itself (exponential backoff from 100 ms to 2 s, to 500 ms behind
/// Sentinel, forever), bounds
/// connecting and every command by `command_timeout`, and fails at once if
/// the first connection cannot be made.
pub(crate) async fn connect_client(url: &str, command_timeout: Duration) -> Result<Client, Error> {
    let (config, tls) = parse_url(url)?;
    #[cfg(feature = "tls")]
    if tls {
        return connect_tls_client(config, &crate::protocol::tls::Tls::new(), command_timeout)
            .await;
    }
    #[cfg(not(feature = "tls"))]
    let _ = tls; // parse_url refused TLS URLs
    connect_config(config, command_timeout).await
}

/// [`connect_client`] for a `rediss://` URL (or a `redis://` one, which then
/// uses TLS too), secured as `tls` says.
#[cfg(feature = "tls")]
pub(crate) async fn connect_tls_url(
    url: &str,
    tls: &crate::protocol::tls::Tls,
    command_timeout: Duration,
) -> Result<Client, Error> {
    let (config, _) = parse_url(url)?;
    connect_tls_client(config, tls, command_timeout).await
}

#[cfg(feature = "tls")]
async fn connect_tls_client(
    mut config: Config,
    tls: &crate::protocol::tls::Tls,
    command_timeout: Duration,
) -> Result<Client, Error> {
    use fred::types::config::ServerConfig;
    config.tls = Some(tls.config()?);
    if let Some(name) = tls.name() {
        let servers = match &mut config.server {
            ServerConfig::Centralized { server } => std::slice::from_mut(server),
            ServerConfig::Clustered { hosts, .. } | ServerConfig::Sentinel { hosts, .. } => {
                hosts.as_mut_slice()
            }
            #[allow(unreachable_patterns)]
            _ => &mut [],
        };
        for server in servers {
            server.tls_server_name = Some(name.into());
        }
    }
    connect_config(config, command_timeout).await
}

/// Builds the client for `config` as the crate's clients are (timeouts,
/// command attempts, an exponential reconnect policy up to
/// `max_delay_ms`), without connecting it.
pub(crate) fn build_client(
    config: Config,
    command_timeout: Duration,
    max_delay_ms: u32,
) -> Result<Client, Error> {
    fred::types::Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = command_timeout;
            c.internal_command_timeout = command_timeout;
            // No redirection of fred's own: fred 10.1 does not follow ASK
            // (it reads ASKING's reply from a connection with other commands
            // in flight, so replies shift by one, then sends the command back
            // to the old owner), and an option cannot lower a command's
            // redirections below the client's. The crate follows MOVED, ASK
            // and TRYAGAIN itself (`scripts/redirect.rs`); with 0, fred still
            // syncs its slot table on MOVED before it answers.
            c.max_redirections = 0;
            // One attempt more than the cluster redirections a command may
            // follow: fred 10 ends the client's connection task when an ASK
            // meets a command with no attempts left (it sends a command that
            // met ASK back to the old owner, which answers ASK again, each
            // time using an attempt), and the client is dead after.
            c.max_command_attempts = c.max_command_attempts.max(c.max_redirections + 1);
        })
        .with_performance_config(|p| p.default_command_timeout = command_timeout)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, max_delay_ms, 2))
        .build()
        .map_err(|source| Error::Config {
            message: format!("the Redis client could not be built ({})", source.details()),
            source: Some(source),
        })
}

/// Builds the client for `config` and makes its first connection.
async fn connect_config(config: Config, command_timeout: Duration) -> Result<Client, Error> {
    let tls = config_uses_tls(&config);
    // Behind Sentinel, a reconnection asks the sentinels for the master; a
    // lost master is replaced within seconds, and fred sleeps out its
    // backoff before it looks again (a switch announced meanwhile waits for
    // it): look at least every 500 ms there.
    let max_delay = if config.server.is_sentinel() {
        SENTINEL_MAX_RECONNECT_DELAY_MS
    } else {
        2_000
    };
    let client = build_client(config, command_timeout, max_delay)?;
    // Dropped before the first connection is made (the caller gave up), the
    // client would go on reconnecting forever: close it.
    let mut closer = QuitOnDrop(Some(client.clone()));
    let connected = client.init().await;
    closer.0 = None;
    match connected {
        Ok(_) => Ok(client),
        // fred has stopped the client already.
        Err(source) => Err(first_connection_failed(source, tls, command_timeout)),
    }
}

/// The error for a first connection that could not be made: a refused TLS
/// handshake or refused credentials are the caller's configuration; other
/// failures are the server's or the network's.
fn first_connection_failed(source: fred::error::Error, tls: bool, timeout: Duration) -> Error {
    use fred::error::{Error as FredError, ErrorKind};
    let details = source.details();
    // rustls reports what it refused as an I/O error of kind InvalidData
    // (an untrusted certificate, a server that wants a client certificate,
    // a peer that does not speak TLS).
    let handshake = tls && (is_tls_kind(source.kind()) || details.contains("InvalidData"));
    if handshake {
        return Error::Config {
            message: format!(
                "the TLS handshake with Redis failed ({details}); check the CA file, the client \
                 certificate, the server name, and that the port speaks TLS"
            ),
            source: Some(source),
        };
    }
    // Behind Sentinel, fred reports a refused password as a Sentinel error
    // (NOAUTH from a sentinel that wants one, WRONGPASS from the master).
    let refused = details.starts_with("WRONGPASS")
        || details.starts_with("NOAUTH")
        || details.contains(" WRONGPASS ")
        || details.contains(": WRONGPASS")
        || details.contains(": NOAUTH");
    if source.kind() == &ErrorKind::Auth || refused {
        return Error::Config {
            message: format!(
                "Redis refused the credentials ({details}); check the user and password in the URL{}",
                if source.kind() == &ErrorKind::Sentinel {
                    " (behind Sentinel, the sentinels' own are sentinelUsername and \
                     sentinelPassword)"
                } else {
                    ""
                }
            ),
            source: Some(source),
        };
    }
    if !tls && details.contains("ConnectionReset") {
        // What a TLS-only port does with a plaintext client.
        let hint = FredError::new(
            ErrorKind::IO,
            format!(
                "{details}: the server reset the connection during set-up; if this port speaks \
                 TLS, use a rediss:// URL"
            ),
        );
        return Error::from_redis("", hint, timeout);
    }
    Error::from_redis("", source, timeout)
}

#[cfg(feature = "tls")]
fn is_tls_kind(kind: &fred::error::ErrorKind) -> bool {
    kind == &fred::error::ErrorKind::Tls
}

#[cfg(not(feature = "tls"))]
fn is_tls_kind(_: &fred::error::ErrorKind) -> bool {
    false
}

#[cfg(feature = "tls")]
fn config_uses_tls(config: &Config) -> bool {
    config.tls.is_some()
}

#[cfg(not(feature = "tls"))]
fn config_uses_tls(_: &Config) -> bool {
    false
}

/// Parses a Redis URL, refusing what this build cannot honour; `true` when
/// it asks for TLS (`rediss://`, `rediss-cluster://`, ...). The TLS settings
/// are the caller's to add: the URL is parsed as its plain form, so fred's
/// own TLS defaults are never used.
fn parse_url(url: &str) -> Result<(Config, bool), Error> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let tls = scheme.starts_with("rediss") || scheme.starts_with("valkeys");
    if tls && !cfg!(feature = "tls") {
        return Err(Error::Config {
            message: "the URL asks for TLS (rediss://), which this build of distributed-mutex \
                      does not enable; build it with the `tls` feature, use redis://, or build \
                      the fred client yourself with TLS and pass it to DistributedMutex::new"
                .into(),
            source: None,
        });
    }
    if !scheme.starts_with("redis") && !scheme.starts_with("valkey") {
        return Err(Error::Config {
            message: format!(
                "the Redis URL is malformed (`{scheme}://` is not a Redis scheme); expected \
                 redis://[user:password@]host:port[/db]"
            ),
            source: None,
        });
    }
    let plain = if tls {
        format!(
            "{}://{rest}",
            scheme
                .replacen("rediss", "redis", 1)
                .replacen("valkeys", "valkey", 1)
        )
    } else {
        url.to_owned()
    };
    let config = Config::from_url(&plain).map_err(|source| Error::Config {
        message: format!(
            "the Redis URL is malformed ({}); expected redis://[user:password@]host:port[/db]",
            source.details()
        ),
        source: Some(source),
    })?;
    Ok((config, tls))
}

/// Closes a client that is dropped before it was handed over.
pub(crate) struct QuitOnDrop(pub(crate) Option<Client>);

impl Drop for QuitOnDrop {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            quit_in_background(client);
        }
    }
}

/// Closes `client` on a task of the current runtime (outside any runtime:
/// nothing to do, its connection task has no runtime left either).
pub(crate) fn quit_in_background(client: Client) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = client.quit().await;
        });
    }
}
