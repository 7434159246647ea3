//! Sending a script by its SHA (`EVALSHA`), and loading it on the node that
//! answered `NOSCRIPT`: the step under every script call (`call.rs`) and
//! every redirection followed (`redirect.rs`).

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::scripts::Script;
use fred::types::Value;

use super::*;

/// `SCRIPT LOAD` of `script` on the node that serves `slot` (the node that
/// answered `NOSCRIPT`).
///
/// Not fred's `Script::load`: on a cluster that loads the script on every
/// node, and fred 10 sends a command for every node only once every node
/// has answered every command in flight to it, all in its one connection
/// task. One stalled master then holds up every command to every node until
/// it answers: the healthy masters' leases ran out while one was stalled.
///
/// On a cluster the script's other form (per slot or cross-slot, see
/// `route.rs`) is loaded with it: a call sent before a fault (a black-holed
/// connection) and delivered after it then runs, whichever form it was,
/// instead of meeting `NOSCRIPT` (a release that never happens leaves the
/// lock to its TTL). Servers before 7.0 never get the cross-slot form.
pub(super) async fn load(
    client: &Client,
    script: &Script,
    slot: u16,
) -> Result<(), fred::error::Error> {
    use fred::types::{ClusterHash, CustomCommand};
    let load_one = |script: &Script| {
        let lua = script.lua().cloned().unwrap_or_default();
        let command = CustomCommand::new_static("SCRIPT", ClusterHash::Custom(slot), false);
        client.custom::<Value, _>(command, vec![Value::from("LOAD"), Value::from(lua)])
    };
    let both = client.is_clustered() && cross_slot_scripts(client);
    let other = both.then(|| other_form(script)).flatten();
    match other {
        // Both at once: one round trip.
        Some(other) => {
            let (loaded, _) = tokio::join!(load_one(script), load_one(other));
            loaded.map(|_| ())
        }
        None => load_one(script).await.map(|_| ()),
    }
}

/// The other form of a script that has two (per slot and cross-slot).
pub(super) fn other_form(script: &Script) -> Option<&'static Script> {
    let pairs: [(&Script, &'static Script); 6] = [
        (&SET_NX, &SET_NX_CROSS_SLOT),
        (&SET_NX_CROSS_SLOT, &SET_NX),
        (&RELEASE, &RELEASE_CROSS_SLOT),
        (&RELEASE_CROSS_SLOT, &RELEASE),
        (&EXTEND, &EXTEND_CROSS_SLOT),
        (&EXTEND_CROSS_SLOT, &EXTEND),
    ];
    pairs
        .into_iter()
        .find(|(one, _)| one.sha1() == script.sha1())
        .map(|(_, other)| other)
}

/// `EVALSHA <script's sha> rest...` through `once` to the node of `slot`;
/// on `NOSCRIPT` (nothing ran) the script is loaded on that node and sent
/// once more.
pub(super) async fn evalsha_reloading(
    client: &Client,
    once: &fred::clients::WithOptions<Client>,
    script: &Script,
    slot: u16,
    rest: Vec<Value>,
) -> Result<Value, fred::error::Error> {
    use fred::types::{ClusterHash, CustomCommand};
    let send = || {
        let command = CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false);
        let mut call = Vec::with_capacity(1 + rest.len());
        call.push(Value::from(script.sha1().clone()));
        call.extend(rest.iter().cloned());
        once.custom::<Value, _>(command, call)
    };
    match send().await {
        Err(e) if e.details().starts_with("NOSCRIPT") => {
            load(client, script, slot).await?;
            send().await
        }
        other => other,
    }
}
