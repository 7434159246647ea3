//! How a script call is sent: bounded by the command timeout, reloaded on
//! `NOSCRIPT` on the node that lacks it, sent once where a re-send could
//! mislead, across slots, or confirmed by `WAIT`.

use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::scripts::Script;
use fred::types::{ClientState, FromValue, Key, MultipleKeys, Value};

use crate::policy::error::Error;
use crate::protocol::background::{revive_client, router_gone};

use super::redirect::follow;

use super::*;

/// Turns a client error into the crate's, noticing a client whose
/// connection task has gone or that was closed.
pub(super) fn failed(
    client: &Client,
    key: &str,
    error: fred::error::Error,
    timeout: Duration,
) -> Error {
    if router_gone(&error) {
        // Transient: the client is connected again on this runtime.
        revive_client(client);
        return Error::Unavailable {
            key: key.to_owned(),
            source: error,
        };
    }
    if client_closed(client) {
        return Error::Shutdown {
            key: key.to_owned(),
        };
    }
    // fred's own timer may be the shorter one: report the one that fired.
    let own = client.inner().default_command_timeout();
    let after = if own.is_zero() {
        timeout
    } else {
        own.min(timeout)
    };
    Error::from_redis(key, error, after)
}

/// `true` once a client that was connected has been closed (`quit`): its
/// connection task has handed back its command queue and nothing reads it
/// any more. (While the task runs it owns the queue, also during a
/// reconnect; a client never connected has no server version.)
pub(crate) fn client_closed(client: &Client) -> bool {
    matches!(
        client.state(),
        ClientState::Disconnecting | ClientState::Disconnected
    ) && client.inner().has_command_rx()
        && client.server_version().is_some()
}

/// Runs `call`, bounded by `timeout`: by the client's own timer when it has
/// the same command timeout (a client made by `connect`), else by one here.
///
/// The command's future is boxed at once: a client's command futures are
/// large (tens of KB with TLS), and held inline they would make every
/// future that awaits a command (`lock`, `lock_all`, a campaign) as large,
/// enough to overflow a 2 MiB thread stack in a debug build.
pub(super) fn bounded<'a, R: 'a, F>(
    client: &'a Client,
    key: &'a str,
    timeout: Duration,
    call: F,
) -> impl std::future::Future<Output = Result<R, Error>> + 'a
where
    F: std::future::Future<Output = Result<R, fred::error::Error>> + 'a,
{
    bounded_boxed(client, key, timeout, Box::pin(call))
}

pub(super) async fn bounded_boxed<R>(
    client: &Client,
    key: &str,
    timeout: Duration,
    call: std::pin::Pin<Box<impl std::future::Future<Output = Result<R, fred::error::Error>>>>,
) -> Result<R, Error> {
    if client.inner().default_command_timeout() == timeout {
        return call.await.map_err(|e| failed(client, key, e, timeout));
    }
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(failed(client, key, e, timeout)),
        Err(_) if client_closed(client) => Err(Error::Shutdown {
            key: key.to_owned(),
        }),
        Err(_) => Err(Error::Timeout {
            key: key.to_owned(),
            after: timeout,
        }),
    }
}

/// Runs one script call, bounded by `timeout`, following cluster
/// redirections (`MOVED`, `ASK`, `TRYAGAIN`: see `redirect.rs`); on
/// `NOSCRIPT` the script is loaded on the node that said so (see [`load`])
/// and sent once more.
pub(crate) async fn run<R: FromValue>(
    client: &Client,
    script: &Script,
    key: &str,
    keys: impl Into<MultipleKeys> + Send,
    args: Vec<Value>,
    timeout: Duration,
) -> Result<R, Error> {
    let keys: Vec<Key> = keys.into().inner();
    let slot = keys
        .first()
        .map_or(0, |k| fred::util::redis_keyslot(k.as_bytes()));
    let mut rest = Vec::with_capacity(1 + keys.len() + args.len());
    rest.push(Value::from(keys.len() as i64));
    rest.extend(keys.into_iter().map(Value::from));
    rest.extend(args);
    let deadline = Instant::now() + timeout;
    let call = async {
        let options = fred::types::config::Options::default();
        follow(client, &options, script, slot, rest, deadline)
            .await?
            .convert::<R>()
    };
    bounded(client, key, timeout, call).await
}

/// Runs one script call, sent once (never re-sent after a reconnect) yet
/// following cluster redirections, bounded by `timeout`.
///
/// fred applies per-command options to commands sent through
/// `ClientLike::custom`, but not to its Lua calls: EVALSHA is sent as one.
/// With `fail_fast`, a command whose connection closes under it (or is
/// down) is answered with the error, never written again, so every write
/// after the first follows a reply that says nothing ran: `MOVED`, `ASK`,
/// `TRYAGAIN` (followed here, see `redirect.rs`) or `NOSCRIPT` (the script
/// is loaded on that node, see [`load`], and sent once more).
pub(super) async fn run_once(
    client: &Client,
    script: &Script,
    first: &str,
    keys: Vec<Value>,
    args: Vec<Value>,
    timeout: Duration,
) -> Result<Value, Error> {
    use fred::types::config::Options;
    // One attempt more than fred's own redirections (none on a client the
    // crate made; a client of the caller's may have some): fred 10 ends the
    // client's connection task when an ASK meets a command with no attempts
    // left.
    let redirections = client.connection_config().max_redirections;
    let once = Options {
        max_attempts: Some(redirections + 1),
        fail_fast: true,
        ..Options::default()
    };
    let slot = fred::util::redis_keyslot(first.as_bytes());
    let mut rest = Vec::with_capacity(1 + keys.len() + args.len());
    rest.push(Value::from(keys.len() as i64));
    rest.extend(keys);
    rest.extend(args);
    let deadline = Instant::now() + timeout;
    let call = follow(client, &once, script, slot, rest, deadline);
    bounded(client, first, timeout, call).await
}

/// Whether `error` is a node's refusal of a cross-slot call before it ran
/// anything: a slot of the call is elsewhere or moving (`MOVED`, `ASK`,
/// neither followed, `TRYAGAIN`, `CROSSSLOT`, or a key the node does not
/// serve, met by `cross_slot_check.lua` before any write). Read from the
/// client's or the server's own error only (never from a text that names
/// a key), and never a reply matched to the wrong command (its outcome is
/// unknown).
pub(crate) fn refused_across_slots(error: &Error) -> bool {
    let source = match error {
        Error::Redis { source, .. } | Error::Unavailable { source, .. } => source,
        _ => return false,
    };
    let details = source.details();
    match source.kind() {
        fred::error::ErrorKind::Routing => details.starts_with("Too many redirections"),
        fred::error::ErrorKind::Protocol => false,
        _ => {
            ["MOVED ", "ASK ", "TRYAGAIN", "CROSSSLOT"]
                .iter()
                .any(|reply| details.starts_with(reply))
                // Met first by `cross_slot_check.lua`, before any write (every
                // other key of a release is in the slot of one checked).
                || details.contains("Script attempted to access a non local key")
        }
    }
}

/// One call of a cross-slot `script` (see `cross_slot.lua`) on the node
/// fred's slot table names for `first`'s slot: `keys` are passed as
/// arguments behind `first`, the only declared key. Not redirected; with
/// `once`, never re-sent after a reconnect either (as [`run_once`]). On
/// `NOSCRIPT` the script is loaded on that node and sent once more.
pub(super) async fn run_cross_slot(
    client: &Client,
    script: &Script,
    (first, keys): (&str, Vec<Value>),
    args: Vec<Value>,
    once: bool,
    timeout: Duration,
) -> Result<Value, Error> {
    use fred::types::config::Options;
    let slot = fred::util::redis_keyslot(first.as_bytes());
    let once = client.with_options(&Options {
        max_redirections: Some(0),
        fail_fast: once,
        ..Options::default()
    });
    // One declared key (Redis refuses declared keys of several slots), the
    // others as arguments (see `cross_slot.lua`).
    let mut rest = Vec::with_capacity(3 + keys.len() + args.len());
    rest.extend([Value::from(1), Value::from(first)]);
    rest.push(Value::from(keys.len() as i64));
    rest.extend(keys);
    rest.extend(args);
    let call = evalsha_reloading(client, &once, script, slot, rest);
    bounded(client, first, timeout, call).await
}

#[cfg(test)]
mod cross_slot_tests {
    use super::*;
    use fred::error::{Error as FredError, ErrorKind};

    fn unavailable(kind: ErrorKind, details: &'static str) -> Error {
        Error::Unavailable {
            key: "TASK:MOVED:1".into(),
            source: FredError::new(kind, details),
        }
    }

    #[test]
    fn only_a_refusal_before_anything_ran_counts() {
        let refused = |e: &Error| refused_across_slots(e);
        assert!(refused(&unavailable(
            ErrorKind::Routing,
            "Too many redirections."
        )));
        assert!(refused(&unavailable(
            ErrorKind::Unknown,
            "TRYAGAIN Multiple keys request during rehashing of slot"
        )));
        assert!(refused(&Error::Redis {
            key: "k".into(),
            source: FredError::new(
                ErrorKind::Unknown,
                "ERR Script attempted to access a non local key in a cluster node script: x"
            ),
        }));
        // A key named like a redirection, a timeout, a reply matched to the
        // wrong command (it mentions ASK): the outcome is unknown.
        assert!(!refused(&unavailable(ErrorKind::IO, "connection reset")));
        assert!(!refused(&Error::Timeout {
            key: "ASK".into(),
            after: Duration::from_secs(2),
        }));
        assert!(!refused(&unavailable(
            ErrorKind::Protocol,
            "the reply was another command's (while it follows an ASK redirection)"
        )));
    }
}
