//! Making a fred client set up the way a lock needs it, from a URL.

use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::config::{Config, ReconnectPolicy};

use crate::error::Error;

/// Builds a fred client configured for locking and connects it: reconnects
/// by itself (exponential backoff from 100 ms to 2 s, forever), bounds
/// connecting and every command by `command_timeout`, and fails at once if
/// the first connection cannot be made.
pub(crate) async fn connect_client(url: &str, command_timeout: Duration) -> Result<Client, Error> {
    let config = parse_url(url)?;
    let client = fred::types::Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = command_timeout;
            c.internal_command_timeout = command_timeout;
            // One attempt more than the cluster redirections a command may
            // follow: fred 10 ends the client's connection task when an ASK
            // meets a command with no attempts left (it sends a command that
            // met ASK back to the old owner, which answers ASK again, each
            // time using an attempt), and the client is dead after.
            c.max_command_attempts = c.max_command_attempts.max(c.max_redirections + 1);
        })
        .with_performance_config(|p| p.default_command_timeout = command_timeout)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()
        .map_err(|source| Error::Config {
            message: format!("the Redis client could not be built ({})", source.details()),
            source: Some(source),
        })?;
    // Dropped before the first connection is made (the caller gave up), the
    // client would go on reconnecting forever: close it.
    let mut closer = QuitOnDrop(Some(client.clone()));
    let connected = client.init().await;
    closer.0 = None;
    match connected {
        Ok(_) => Ok(client),
        // fred has stopped the client already.
        Err(source) => Err(match source.kind() {
            fred::error::ErrorKind::Auth => Error::Config {
                message: format!(
                    "Redis refused the credentials ({}); check the user and password in the URL",
                    source.details()
                ),
                source: Some(source),
            },
            _ => Error::from_redis("", source, command_timeout),
        }),
    }
}

/// Parses a Redis URL, refusing what this build cannot honour.
fn parse_url(url: &str) -> Result<Config, Error> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    if scheme.starts_with("rediss") {
        return Err(Error::Config {
            message: "the URL asks for TLS (rediss://), which this build of distributed-mutex \
                      does not enable; use redis:// or build the fred client yourself with TLS \
                      and pass it to DistributedMutex::new"
                .into(),
            source: None,
        });
    }
    if !scheme.starts_with("redis") {
        return Err(Error::Config {
            message: format!(
                "the Redis URL is malformed (`{scheme}://` is not a Redis scheme); expected \
                 redis://[user:password@]host:port[/db]"
            ),
            source: None,
        });
    }
    Config::from_url(url).map_err(|source| Error::Config {
        message: format!(
            "the Redis URL is malformed ({}); expected redis://[user:password@]host:port[/db]",
            source.details()
        ),
        source: Some(source),
    })
}

/// Closes a client that is dropped before it was handed over.
struct QuitOnDrop(Option<Client>);

impl Drop for QuitOnDrop {
    fn drop(&mut self) {
        if let (Some(client), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}
