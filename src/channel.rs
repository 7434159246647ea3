//! Where release messages go: plain or sharded pub/sub.
//!
//! On Redis Cluster with Redis 7 or later, a release is announced with
//! `SPUBLISH` on a shard channel in the lock key's slot, and waiters listen
//! with `SSUBSCRIBE` on the node that owns that slot (and again on its new
//! owner when the slot moves: see `notify.rs`). Elsewhere (one server, or Redis before 7) plain `PUBLISH`
//! and `SUBSCRIBE` are used. The "does anyone listen" check matches:
//! `PUBSUB SHARDNUMSUB` or `PUBSUB NUMSUB`, on the node that runs the release.
//!
//! | mode | channel of the lock `P K` |
//! |---|---|
//! | plain | `P K:released` |
//! | sharded | `P {T}:released:K`, `{T}` the lock key's slot tag (see `keys.rs`) |

use std::sync::OnceLock;

use fred::clients::Client;
use fred::interfaces::ClientLike;

use crate::keys::LockKeys;

/// A lock's release channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ReleaseChannel {
    pub(crate) name: String,
    pub(crate) sharded: bool,
}

impl ReleaseChannel {
    pub(crate) fn of(keys: &LockKeys, sharded: bool) -> Self {
        ReleaseChannel {
            name: if sharded {
                keys.shard_channel()
            } else {
                keys.plain_channel()
            },
            sharded,
        }
    }
}

/// Whether a client's releases use sharded pub/sub, decided once the
/// client knows the server's version.
#[derive(Debug, Default)]
pub(crate) struct Mode {
    sharded: OnceLock<bool>,
}

impl Mode {
    pub(crate) fn sharded(&self, client: &Client) -> bool {
        if let Some(sharded) = self.sharded.get() {
            return *sharded;
        }
        if !client.is_clustered() {
            return *self.sharded.get_or_init(|| false);
        }
        match client.server_version() {
            Some(version) => *self.sharded.get_or_init(|| version.major >= 7),
            // Not connected yet: plain for now, decided later.
            None => false,
        }
    }
}
