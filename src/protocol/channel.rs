//! Where release messages go: plain or sharded pub/sub.
//!
//! On a Redis Cluster whose servers have sharded pub/sub (Redis 7+, Valkey),
//! a release is announced with `SPUBLISH` on a shard channel in the lock
//! key's slot, and waiters listen with `SSUBSCRIBE` on the node that owns
//! that slot (and again on its new owner when the slot moves: see
//! `engine/notify/`). Elsewhere (one server, Sentinel, a cluster without sharded
//! pub/sub) plain `PUBLISH` and `SUBSCRIBE` are used. See [`PubSub`] for
//! what each mode can count, and so what a hand-off may rely on.
//!
//! | mode | channel of the lock `P K` |
//! |---|---|
//! | plain | `P K:released` |
//! | sharded | `P {T}:released:K`, `{T}` the lock key's slot tag (see `keys.rs`) |

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};

use crate::protocol::keys::LockKeys;

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

/// How hand-offs and release messages travel for one client.
///
/// | mode | when | receiver counts |
/// |---|---|---|
/// | [`Plain`](PubSub::Plain) | one server, Sentinel | exact: `PUBSUB NUMSUB` on the node that runs the script (pattern subscribers left out) |
/// | [`Sharded`](PubSub::Sharded) | a cluster whose servers have sharded pub/sub (Redis 7+, Valkey) | exact: `PUBSUB SHARDNUMSUB` on the slot's master |
/// | [`PlainOnCluster`](PubSub::PlainOnCluster) | a cluster without sharded pub/sub, or whose user may not use it | none: plain subscribers sit on any node, and `PUBLISH` is broadcast to every node |
///
/// Where counts are exact, a hand-off is published only when its waiter's
/// channel has a subscriber on the node that runs the script, so a waiter
/// can only hear of a hand-off the script counted as delivered (a message
/// never reaches a subscriber of another node, through replication or the
/// cluster bus, after the script moved on). Without exact counts every
/// hand-off is final once published, and the woken waiter confirms it with
/// one round trip before it uses the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PubSub {
    Plain,
    Sharded,
    PlainOnCluster,
}

impl PubSub {
    /// The scripts' argument for this mode.
    pub(crate) fn arg(self) -> &'static str {
        match self {
            PubSub::Plain => "p",
            PubSub::Sharded => "s",
            PubSub::PlainOnCluster => "c",
        }
    }

    /// Shard channels, `SSUBSCRIBE` and `SPUBLISH`.
    pub(crate) fn sharded(self) -> bool {
        self == PubSub::Sharded
    }

    /// Whether a hand-off that reached a waiter was counted by the script
    /// that made it, so the waiter may use it without confirming.
    pub(crate) fn counts_receivers(self) -> bool {
        self != PubSub::PlainOnCluster
    }
}

/// A client's [`PubSub`] mode, decided once from what its servers support.
#[derive(Debug, Default)]
pub(crate) struct Mode {
    decided: OnceLock<PubSub>,
    /// After a probe that could not reach the cluster, none is sent again
    /// before this.
    next_probe: Mutex<Option<Instant>>,
}

/// How long a cluster whose probe failed (unreachable) is not probed again.
const PROBE_PAUSE: Duration = Duration::from_secs(1);

impl Mode {
    /// The mode. On a cluster: sharded when its servers are known to have
    /// sharded pub/sub (Redis 7+ or Valkey, by the version the client
    /// read); when the version is hidden (an ACL without `INFO`), what
    /// [`settle`](Self::settle) found, and until then plain without
    /// counts, which is safe whatever the servers support.
    pub(crate) fn get(&self, client: &Client) -> PubSub {
        if let Some(mode) = self.decided.get() {
            return *mode;
        }
        if !client.is_clustered() {
            return *self.decided.get_or_init(|| PubSub::Plain);
        }
        match client.server_version() {
            Some(version) if version.major >= 7 => *self.decided.get_or_init(|| PubSub::Sharded),
            Some(_) => *self.decided.get_or_init(|| PubSub::PlainOnCluster),
            None => PubSub::PlainOnCluster,
        }
    }

    /// Whether hand-offs and release messages use sharded pub/sub.
    pub(crate) fn sharded(&self, client: &Client) -> bool {
        self.get(client).sharded()
    }

    /// Decides the mode of a cluster client whose server version is hidden
    /// from what its servers do: `PUBSUB SHARDNUMSUB` answered means sharded
    /// pub/sub is there and allowed to this user; an error reply (an older
    /// server, or an ACL without it) means plain. One command, once per
    /// client; when the cluster cannot be reached the mode stays undecided
    /// (plain without counts), and is asked again no sooner than a second
    /// later.
    pub(crate) async fn settle(&self, client: &Client, timeout: Duration) {
        if self.decided.get().is_some() || self.get(client) != PubSub::PlainOnCluster {
            return;
        }
        if !self.may_probe() {
            return;
        }
        // Boxed: a client's command future is large, and this one is rare.
        let probe = Box::pin(client.custom::<Value, _>(
            CustomCommand::new_static("PUBSUB", ClusterHash::Random, false),
            vec!["SHARDNUMSUB"],
        ));
        let mode = match tokio::time::timeout(timeout, probe).await {
            Ok(Ok(_)) => PubSub::Sharded,
            Ok(Err(e)) if is_refusal(&e) => PubSub::PlainOnCluster,
            _ => {
                *self.probe_slot() = Some(Instant::now() + PROBE_PAUSE);
                return;
            }
        };
        if self.decided.set(mode).is_ok() {
            tracing::debug!(?mode, "pub/sub mode decided by probing the cluster");
        }
    }

    fn probe_slot(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.next_probe.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn may_probe(&self) -> bool {
        self.probe_slot().is_none_or(|at| Instant::now() >= at)
    }
}

/// An error reply of the server (an unknown subcommand, a command the ACL
/// denies), not a connection failure or a timeout.
fn is_refusal(e: &fred::error::Error) -> bool {
    let details = e.details();
    details.starts_with("ERR") || details.starts_with("NOPERM")
}
