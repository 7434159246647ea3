//! Typed wrappers over the Lua scripts in `src/protocol/scripts/*.lua`, and the plain
//! `SET NX` of a first attempt.
//!
//! Every script takes its keys through `KEYS`, so it runs on Redis Cluster.
//! Scripts are sent with `EVALSHA` and loaded again on `NOSCRIPT` (after a
//! restart, a failover or `SCRIPT FLUSH`), on the node that answered it
//! only: never with a command for every cluster node (see [`load`]). Every
//! call is bounded by the command timeout: by fred's own timer when the
//! client has the same one, else by `tokio::time::timeout` here; a timeout
//! is always [`Error::Timeout`], whichever timer fired.
//!
//! | file | owns |
//! |---|---|
//! | `call.rs` | sending a call: timeout, `NOSCRIPT` reload, sent once, cross-slot |
//! | `evalsha.rs` | `EVALSHA`, and loading a script on the node that answered `NOSCRIPT` |
//! | `redirect.rs` | following `MOVED`, `ASK` and `TRYAGAIN` on a cluster (not fred) |
//! | `confirmed.rs` | a call confirmed by `WAIT` (`min_replicas`) |
//! | `acquire.rs` | the acquire script, the first attempt's `SET NX`, and the batched `SET NX`s of first attempts (`set_nx.lua`) |
//! | `release.rs` | the release script |
//! | `extend.rs` | the extend (and renewal) script |
//! | `acquire_all.rs` | the multi-key acquire script |
//! | `members.rs` | the sorted-set scripts of semaphores and read-write locks (their calls: `engine/primitive/scripts.rs`) |

use fred::types::{Key, Value};

use crate::policy::error::Error;

mod acquire;
mod acquire_all;
mod call;
mod confirmed;
mod evalsha;
mod extend;
pub(crate) mod members;
mod redirect;
mod release;

pub(crate) use acquire::*;
pub(crate) use acquire_all::*;
pub(crate) use call::*;
use confirmed::confirmed;
use evalsha::{evalsha_reloading, load};
pub(crate) use extend::*;
pub(crate) use release::*;

/// The text of `src/protocol/scripts/<name>.lua`, with `common.lua` (the helpers
/// every script uses) put before it.
macro_rules! lua {
    ($name:literal) => {
        concat!(
            include_str!("common.lua"),
            include_str!(concat!($name, ".lua"))
        )
    };
}
pub(crate) use lua;

/// Whether `client`'s servers run scripts that touch keys of several slots
/// (Redis 7.0 and later, which Valkey reports too).
pub(crate) fn cross_slot_scripts(client: &fred::clients::Client) -> bool {
    use fred::interfaces::ClientLike;
    client.server_version().is_some_and(|v| v.major >= 7)
}

/// A script's cross-slot form (see `route.rs`), as a `LazyLock<Script>`:
/// the shebang `#!lua flags=allow-cross-slot-keys` with `$flags` after it,
/// `cross_slot.lua` (the keys, passed as arguments), then `$part`s (a
/// script that writes puts `cross_slot_check.lua` first).
macro_rules! cross_slot {
    ($flags:literal, $($part:expr),+ $(,)?) => {
        LazyLock::new(|| {
            Script::from_lua(concat!(
                "#!lua flags=allow-cross-slot-keys",
                $flags,
                "\n",
                include_str!("cross_slot.lua"),
                $($part),+
            ))
        })
    };
}
pub(crate) use cross_slot;

/// What a token-checked command (release, extend, renew) found for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compared {
    /// The key held the caller's token, and the command did its work.
    Held,
    /// The key was gone.
    Missing,
    /// The key holds something else (another token, or a value of another
    /// type); it was left untouched.
    Replaced,
}

impl Compared {
    pub(crate) fn from_reply(n: i64) -> Self {
        match n {
            1 => Compared::Held,
            0 => Compared::Missing,
            _ => Compared::Replaced,
        }
    }
}

pub(crate) fn binary_key(bytes: Vec<u8>) -> Key {
    Key::from(bytes.into_boxed_slice())
}

/// The numbers of a script reply that ends with `echo` (the scripts end
/// every reply with the call's token); `None` for anything else: a reply
/// to another command, which fred 10.1 can hand over while it follows an
/// `ASK` redirection with other commands in flight to the same node.
pub(crate) fn checked(reply: Value, echo: &str) -> Option<Vec<i64>> {
    let Value::Array(mut items) = reply else {
        return None;
    };
    let last = items.pop()?;
    if last.as_str().as_deref() != Some(echo) {
        return None;
    }
    items
        .into_iter()
        .map(|v| match v {
            Value::Integer(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// The reply was not this command's (see [`checked`]): what the command did
/// is unknown, as after a lost reply.
pub(crate) fn mismatched(key: &str, script: &str) -> Error {
    Error::Unavailable {
        key: key.to_owned(),
        source: fred::error::Error::new(
            fred::error::ErrorKind::Protocol,
            format!(
                "the reply to the {script} script was another command's (the Redis client \
                 matched replies to the wrong commands, as fred 10.1 can while it follows an \
                 ASK redirection); its outcome is unknown"
            ),
        ),
    }
}

pub(crate) fn unexpected(key: &str, script: &str, reply: impl std::fmt::Debug) -> Error {
    Error::Redis {
        key: key.to_owned(),
        source: fred::error::Error::new(
            fred::error::ErrorKind::Protocol,
            format!("unexpected reply from the {script} script: {reply:?}"),
        ),
    }
}
