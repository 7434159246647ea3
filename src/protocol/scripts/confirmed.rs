//! A script call whose writes are confirmed by `WAIT` (`min_replicas`):
//! four commands pipelined on one connection.

use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::scripts::Script;
use fred::types::{FromValue, Value};

use crate::policy::error::Error;
use crate::protocol::confirm::MinReplicas;

use super::*;

/// Runs `script` and confirms its writes with `WAIT`, on `client` (the
/// mutex's confirming connection, see `confirm.rs`): one round trip of four
/// commands pipelined on the connection to the node that serves `first`'s
/// slot, `CLIENT ID`, `EVALSHA`, `WAIT n timeout`, `CLIENT ID`. Returns the
/// script's answer and `WAIT`'s (how many replicas acknowledged every
/// write this connection made up to then, the script's included).
///
/// `WAIT` speaks for the connection it runs on, so the four must run on one
/// connection, in order:
/// * on a cluster they are pinned to one node (the one the client's slot
///   table names), and a redirection is not followed (`MOVED` fails the call
///   as [`Error::Unavailable`], and the client's slot table is refreshed);
/// * each is sent at most once (no re-send after a reconnect), and the two
///   `CLIENT ID`s must match: a connection replaced between the script and
///   `WAIT` (whose fresh connection would confirm nothing of ours) fails the
///   call as [`Error::Unavailable`].
///
/// Bounded by `timeout` plus the `WAIT` timeout.
pub(super) async fn confirmed<R: FromValue>(
    client: &Client,
    script: &Script,
    first: &str,
    keys: Vec<Value>,
    args: Vec<Value>,
    wait: MinReplicas,
    timeout: Duration,
) -> Result<(R, u32), Error> {
    use fred::types::config::Options;
    let slot = fred::util::redis_keyslot(first.as_bytes());
    let node = if client.is_clustered() {
        let owner = client
            .inner()
            .with_cluster_state(|state| Ok(state.get_server(slot).cloned()));
        match owner {
            Ok(Some(node)) => Some(node),
            _ => {
                return Err(Error::Unavailable {
                    key: first.to_owned(),
                    source: fred::error::Error::new(
                        fred::error::ErrorKind::Cluster,
                        format!("no cluster node is known to serve slot {slot}"),
                    ),
                })
            }
        }
    } else {
        None
    };
    let total = timeout + wait.timeout();
    let once = client.with_options(&Options {
        max_attempts: Some(1),
        max_redirections: Some(0),
        timeout: Some(total),
        cluster_node: node,
        ..Options::default()
    });
    // Boxed, as in `bounded`: four command futures held at once.
    let call = Box::pin(pipelined(client, &once, script, slot, (&keys, &args), wait));
    match tokio::time::timeout(total, call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) if *e.kind() == fred::error::ErrorKind::Timeout => Err(Error::Timeout {
            key: first.to_owned(),
            after: total,
        }),
        Ok(Err(e)) => Err(failed(client, first, e, total)),
        Err(_) if client_closed(client) => Err(Error::Shutdown {
            key: first.to_owned(),
        }),
        Err(_) => Err(Error::Timeout {
            key: first.to_owned(),
            after: total,
        }),
    }
}

/// `CLIENT ID`, `EVALSHA`, `WAIT`, `CLIENT ID`, pipelined through `once` to
/// the node of `slot` (see [`confirmed`]); on `NOSCRIPT` (nothing ran: a
/// new master after a failover has an empty script cache) the script is
/// loaded and the four are sent again, once.
async fn pipelined<R: FromValue>(
    client: &Client,
    once: &fred::clients::WithOptions<Client>,
    script: &Script,
    slot: u16,
    (keys, args): (&[Value], &[Value]),
    wait: MinReplicas,
) -> Result<(R, u32), fred::error::Error> {
    use fred::types::{ClusterHash, CustomCommand};
    let command =
        |name: &'static str| CustomCommand::new_static(name, ClusterHash::Custom(slot), false);
    let client_id = || once.custom::<i64, _>(command("CLIENT"), vec![Value::from("ID")]);
    let mut loaded = false;
    loop {
        let mut evalsha = Vec::with_capacity(2 + keys.len() + args.len());
        evalsha.push(Value::from(script.sha1().clone()));
        evalsha.push(Value::from(keys.len() as i64));
        evalsha.extend(keys.iter().cloned());
        evalsha.extend(args.iter().cloned());
        // `join!` polls each future once, in order, before any answer
        // comes: each is handed to the client (which writes them to the
        // connection in that order) on its first poll.
        let (before, reply, acked, after) = tokio::join!(
            client_id(),
            once.custom::<R, _>(command("EVALSHA"), evalsha),
            once.custom::<i64, _>(
                command("WAIT"),
                vec![
                    Value::from(i64::from(wait.replicas)),
                    Value::from(wait.timeout_ms as i64),
                ],
            ),
            client_id(),
        );
        let reply = match reply {
            Err(e) if !loaded && e.details().starts_with("NOSCRIPT") => {
                // Nothing ran (a new master after a failover has an empty
                // script cache): load the script and go again.
                load(client, script, slot).await?;
                loaded = true;
                continue;
            }
            other => other?,
        };
        let (before, after, acked) = (before?, after?, acked?);
        if before != after {
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::IO,
                "the connection was replaced between a write and its WAIT",
            ));
        }
        return Ok((reply, u32::try_from(acked.max(0)).unwrap_or(u32::MAX)));
    }
}
