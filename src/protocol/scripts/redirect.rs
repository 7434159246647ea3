//! Following Redis Cluster's redirections for the crate's own script calls:
//! `MOVED`, `ASK` and `TRYAGAIN`, here rather than in fred.
//!
//! fred 10.1 does not follow `ASK`: it writes `ASKING` to the importing node
//! and takes that connection's next reply as `ASKING`'s (with other commands
//! in flight, another command's reply: replies shift by one), then sends the
//! command again to the node its slot table names, the old owner, which
//! answers `ASK` again until the redirections run out. A command's
//! `max_redirections` option cannot go below the client's (fred takes 0 as
//! "the client's"), so a client the crate makes has none of fred's own
//! (`connect.rs`): fred then answers a redirection with `Too many
//! redirections.`, after syncing its slot table for a `MOVED`, and [`follow`]
//! does the rest (on a client of the caller's, after fred's own tries):
//!
//! * `MOVED`: fred's table now names another node for the slot; sent again
//!   there.
//! * `ASK`: the node that answered names the slot's importing node in
//!   `CLUSTER NODES` (`[slot->-<node id>]`, the text of fred's error is
//!   gone); `ASKING` and the call are sent to that node in one fred pipeline
//!   on that node's connection, so they go out back to back and nothing else
//!   can come between them (the router task writes a pipeline whole).
//! * `TRYAGAIN` (a call over several keys of a slot split between the two
//!   nodes mid-move, on either side): sent again after a short pause, from
//!   the start, until the call's deadline.
//!
//! Every one of these replies means nothing ran, so a call sent once (see
//! `run_once`) stays sent once where it ran. Calls across slots
//! (`run_cross_slot`) are not followed: their refusal splits them per slot.

use std::time::{Duration, Instant};

use fred::clients::{Client, Pipeline};
use fred::interfaces::ClientLike;
use fred::types::config::{Options, Server};
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, Value};

use super::evalsha::evalsha_reloading;

/// How many times one call follows a `MOVED`, or an `ASK` to a node that
/// redirects it again (an `ASK` answered `TRYAGAIN` waits instead).
const MAX_HOPS: u32 = 8;
/// The first pause after `TRYAGAIN` (doubled each time, up to
/// [`MAX_PAUSE`]): a key's `MIGRATE` takes about a millisecond.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause between two tries.
const MAX_PAUSE: Duration = Duration::from_millis(80);

/// `EVALSHA` of `script` (`rest`: the key count, keys and arguments) on the
/// node of `slot`, following `MOVED`, `ASK` and `TRYAGAIN` (see the module
/// docs) until `deadline`; `base` are the call's own options (sent once or
/// not), without redirections of fred's.
pub(super) async fn follow(
    client: &Client,
    base: &Options,
    script: &Script,
    slot: u16,
    rest: Vec<Value>,
    deadline: Instant,
) -> Result<Value, fred::error::Error> {
    let options = Options {
        max_redirections: Some(0),
        ..base.clone()
    };
    let via = client.with_options(&options);
    if !client.is_clustered() {
        // Nothing to follow on one server (or a Sentinel master).
        return evalsha_reloading(client, &via, script, slot, rest).await;
    }
    let call = Call {
        client,
        options: &options,
        script,
        slot,
        rest: &rest,
        deadline,
    };
    let mut pause = FIRST_PAUSE;
    let mut hops = 0;
    let mut first = true;
    loop {
        let sent_to = owner(client, slot);
        let sent = evalsha_reloading(client, &via, script, slot, rest.clone());
        let error = match within(deadline, !std::mem::take(&mut first), sent).await {
            Ok(reply) => return Ok(reply),
            Err(e) => e,
        };
        let error = if redirected(&error) && client.is_clustered() {
            match call.redirected(sent_to, error, &mut hops).await {
                Next::Reply(reply) => return Ok(reply),
                Next::Fail(error) => return Err(error),
                Next::Again => continue,
                Next::Pause(error) => error,
            }
        } else {
            error
        };
        let retried = try_again(&error) || redirected(&error);
        if !retried || Instant::now() + pause >= deadline {
            return Err(error);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// One call being followed: where it goes and until when.
struct Call<'a> {
    client: &'a Client,
    /// The call's options, without redirections of fred's.
    options: &'a Options,
    script: &'a Script,
    slot: u16,
    rest: &'a [Value],
    deadline: Instant,
}

/// What follows a redirection.
enum Next {
    /// The call ran there: its reply.
    Reply(Value),
    /// Give up with this error.
    Fail(fred::error::Error),
    /// Send the call again at once (to the node the table now names).
    Again,
    /// Send it again after a pause (this error if time runs out).
    Pause(fred::error::Error),
}

impl Call<'_> {
    /// After `error`, a `MOVED` or `ASK` from `sent_to`: a `MOVED` (fred
    /// synced its table before answering) sends the call again to the new
    /// owner; an `ASK` sends it, after `ASKING`, to the node the slot is
    /// migrating to. `hops` counts the redirections followed.
    async fn redirected(
        &self,
        sent_to: Option<Server>,
        error: fred::error::Error,
        hops: &mut u32,
    ) -> Next {
        let Call { client, slot, .. } = *self;
        if owner(client, slot) != sent_to {
            *hops += 1;
            return if *hops > MAX_HOPS {
                Next::Fail(error)
            } else {
                Next::Again
            };
        }
        let Some(source) = sent_to else {
            return Next::Fail(error);
        };
        let found = within(self.deadline, true, importing_node(client, &source, slot)).await;
        let target = match found {
            Ok(Some(target)) => target,
            // Not migrating (any more): a `MOVED` whose new owner fred's
            // table does not show yet. Try again after a pause.
            Ok(None) => return Next::Pause(error),
            Err(_) => return Next::Fail(error),
        };
        let asked = asking(client, self.options, &target, self.script, slot, self.rest);
        match within(self.deadline, true, asked).await {
            Ok(reply) => Next::Reply(reply),
            // The move ended or was undone meanwhile: from the top.
            Err(e) if redirected(&e) && *hops < MAX_HOPS => {
                *hops += 1;
                Next::Again
            }
            Err(e) => Next::Pause(e),
        }
    }
}

/// `call`, bounded by `deadline` when `bound` (a call after the first: the
/// first one is bounded by the caller, by fred's timer or its own).
async fn within<R>(
    deadline: Instant,
    bound: bool,
    call: impl std::future::Future<Output = Result<R, fred::error::Error>>,
) -> Result<R, fred::error::Error> {
    if !bound {
        return call.await;
    }
    match tokio::time::timeout_at(deadline.into(), Box::pin(call)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(fred::error::Error::new(
            fred::error::ErrorKind::Timeout,
            "the call ran out of time while it followed cluster redirections",
        )),
    }
}

/// fred's answer to a `MOVED` or `ASK` it was not allowed to follow.
fn redirected(error: &fred::error::Error) -> bool {
    *error.kind() == fred::error::ErrorKind::Routing
        && error.details().starts_with("Too many redirections")
}

/// A node's `TRYAGAIN`: the keys of a call are split between two nodes while
/// their slot moves.
fn try_again(error: &fred::error::Error) -> bool {
    error.details().starts_with("TRYAGAIN")
}

/// The node fred's slot table names for `slot`.
fn owner(client: &Client, slot: u16) -> Option<Server> {
    client
        .inner()
        .with_cluster_state(|table| Ok(table.get_server(slot).cloned()))
        .ok()
        .flatten()
}

/// The node `slot` is migrating to, as `source` (the node that answered
/// `ASK`) says in `CLUSTER NODES`; `None` when it is not migrating.
async fn importing_node(
    client: &Client,
    source: &Server,
    slot: u16,
) -> Result<Option<Server>, fred::error::Error> {
    let node = client.with_options(&Options {
        cluster_node: Some(source.clone()),
        max_redirections: Some(0),
        ..Options::default()
    });
    let command = CustomCommand::new_static("CLUSTER", ClusterHash::Custom(slot), false);
    let nodes: String = node.custom(command, vec![Value::from("NODES")]).await?;
    Ok(migrating_to(&nodes, slot).map(|(host, port)| known_server(client, &host, port)))
}

/// From a `CLUSTER NODES` reply: the address (`host`, `port`) of the node
/// the answering node (`myself`) migrates `slot` to.
pub(super) fn migrating_to(nodes: &str, slot: u16) -> Option<(String, u16)> {
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    let myself = lines
        .iter()
        .find(|fields| fields.get(2).is_some_and(|f| f.contains("myself")))?;
    let wanted = slot.to_string();
    let id = myself.iter().skip(8).find_map(|field| {
        let inner = field.strip_prefix('[')?.strip_suffix(']')?;
        let (at, id) = inner.split_once("->-")?;
        (at == wanted).then_some(id)
    })?;
    let address = lines
        .iter()
        .find(|fields| fields.first() == Some(&id))?
        .get(1)?;
    let address = address.split(['@', ',']).next()?;
    let (host, port) = address.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// The node of fred's slot table at `host:port` (with its TLS name, if any),
/// else by port alone (a table of host names), else a new one.
fn known_server(client: &Client, host: &str, port: u16) -> Server {
    let mut known = Vec::new();
    let _ = client.inner().with_cluster_state(|table| {
        known.extend(table.slots().iter().map(|r| r.primary.clone()));
        Ok(())
    });
    let same = known
        .iter()
        .find(|s| s.port == port && &*s.host == host)
        .or_else(|| {
            let mut by_port = known.iter().filter(|s| s.port == port);
            match (by_port.next(), by_port.next()) {
                (Some(one), None) => Some(one),
                _ => None,
            }
        });
    same.cloned().unwrap_or_else(|| Server::new(host, port))
}

/// `ASKING`, then the call, back to back on `target`'s connection (one
/// pipeline); on `NOSCRIPT` (nothing ran) the script is loaded on `target`
/// and both are sent once more.
async fn asking(
    client: &Client,
    options: &Options,
    target: &Server,
    script: &Script,
    slot: u16,
    rest: &[Value],
) -> Result<Value, fred::error::Error> {
    let node = client.with_options(&Options {
        cluster_node: Some(target.clone()),
        ..options.clone()
    });
    let command =
        |name: &'static str| CustomCommand::new_static(name, ClusterHash::Custom(slot), false);
    let mut loaded = false;
    loop {
        let pipeline = Pipeline::from(node.clone());
        let mut evalsha = Vec::with_capacity(1 + rest.len());
        evalsha.push(Value::from(script.sha1().clone()));
        evalsha.extend(rest.iter().cloned());
        // Queued only: the pipeline answers when it is sent.
        let _: Value = pipeline
            .custom(command("ASKING"), Vec::<Value>::new())
            .await?;
        let _: Value = pipeline.custom(command("EVALSHA"), evalsha).await?;
        let mut replies = pipeline.try_all::<Value>().await.into_iter();
        let (asked, reply) = match (replies.next(), replies.next()) {
            (Some(asked), Some(reply)) => (asked, reply),
            _ => {
                return Err(fred::error::Error::new(
                    fred::error::ErrorKind::Protocol,
                    "a pipeline of ASKING and EVALSHA had fewer than two replies",
                ))
            }
        };
        asked?;
        match reply {
            Err(e) if !loaded && e.details().starts_with("NOSCRIPT") => {
                let lua = script.lua().cloned().unwrap_or_default();
                let _: Value = node
                    .custom(
                        command("SCRIPT"),
                        vec![Value::from("LOAD"), Value::from(lua)],
                    )
                    .await?;
                loaded = true;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::migrating_to;

    const NODES: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002,node-b master - 0 1426238316232 2 connected 5461-10922 [93-<-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 [93->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1] [77->-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f]
";

    #[test]
    fn the_importing_node_is_read_from_the_answering_nodes_line() {
        assert_eq!(migrating_to(NODES, 93), Some(("127.0.0.1".into(), 30002)));
        assert_eq!(migrating_to(NODES, 77), Some(("127.0.0.1".into(), 30003)));
        // Not migrating, or importing only (another node's line): none.
        assert_eq!(migrating_to(NODES, 94), None);
        assert_eq!(migrating_to("", 93), None);
    }
}
