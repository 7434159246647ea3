//! Connecting to a Redlock's servers from URLs, in parallel; a server that
//! is down gets a client that keeps reconnecting in the background.

use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::config::Config;

use super::fanout::gather;
use super::quorum::{no_majority, quorum};
use crate::policy::error::Error;
use crate::protocol::connect::{build_client, QuitOnDrop};

/// Connects to every URL in parallel. A server that cannot be reached gets
/// a client that keeps reconnecting in the background; fewer than a
/// majority reached is [`Error::Unavailable`], and any other error (a
/// malformed URL, refused credentials, TLS) is returned as it is.
pub(super) async fn connect_all(urls: &[String], timeout: Duration) -> Result<Vec<Client>, Error> {
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

pub(super) fn is_tls(url: &str) -> bool {
    url.starts_with("rediss") || url.starts_with("valkeys")
}

/// A client of a server that is down now: set up as the crate's own
/// clients are, but its first connection is retried in the background by
/// the reconnect policy (instead of failing the call). Commands sent
/// meanwhile wait at most the command timeout, and fred drops them unsent
/// once it has passed.
pub(super) fn reconnecting_client(url: &str, timeout: Duration) -> Result<Client, Error> {
    let mut config = Config::from_url(url).map_err(|source| Error::Config {
        message: format!("the Redis URL is malformed ({})", source.details()),
        source: Some(source),
    })?;
    config.fail_fast = false;
    let client = build_client(config, timeout, 2_000)?;
    // The connection task; it runs until the client is closed.
    drop(client.connect());
    Ok(client)
}
