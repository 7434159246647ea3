//! Where a batch of renewals goes on Redis Cluster: one script call per
//! node, not per slot.
//!
//! Redis 7.0+ and Valkey run a script that declares
//! `#!lua flags=allow-cross-slot-keys` on keys of every slot the node that
//! runs it serves. So the renewer groups due leases of plain locks by the
//! node fred's slot table names for their slot ([`Routes::group`]) and renews
//! each group with one call ([`Routes::extend`]): with keys spread over
//! slots, 10,000 held locks cost a few calls a second per node, where one
//! call per slot cost thousands.
//!
//! A slot can move while its leases are out. A call that a node refuses
//! (`MOVED`, `ASK`, `CROSSSLOT`, `TRYAGAIN`: one of its slots is elsewhere,
//! or moving) is answered like any failed renewal (tried again soon; see
//! `renew.rs`), and marks every slot of the call: for [`SPLIT_FOR`] their
//! leases are grouped per slot again, and those calls follow `MOVED` as
//! before. A call that times out marks nothing (a stalled node serves every
//! slot of it alike). Servers older than 7.0, replica-confirmed renewals
//! (`min_replicas`, whose `WAIT` speaks for one call) and places in sorted
//! sets (semaphores, read-write locks) keep one call per slot; one server
//! has one group.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::config::Server;

use crate::policy::error::Error;
use crate::protocol::scripts::{self, Compared};

/// How long the slots of a refused per-node call are renewed per slot.
pub(crate) const SPLIT_FOR: Duration = Duration::from_secs(10);

/// The group a due lease is renewed with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Group {
    /// Every key of one cluster slot (slot 0 on one server).
    Slot(u16),
    /// Every key of the slots this node serves (per fred's slot table).
    Node(Server),
}

/// The slots renewed per slot for a while (see the module docs).
#[derive(Default)]
pub(crate) struct Routes {
    split: Mutex<HashMap<u16, Instant>>,
}

/// What one batch is grouped with: fred's slot table (`(first, last,
/// node)`, sorted) when the servers take cross-slot scripts (empty when
/// not), `None` on one server; and the slots to keep apart.
pub(crate) struct Grouping {
    table: Option<Vec<(u16, u16, Server)>>,
    split: HashMap<u16, Instant>,
    now: Instant,
}

impl Grouping {
    /// The group of a lease whose key (its first key) is `key`; `per_node`
    /// when the lease may share a call with other slots (a plain lock
    /// without `min_replicas`).
    pub(crate) fn group(&self, key: &[u8], per_node: bool) -> Group {
        let Some(table) = &self.table else {
            return Group::Slot(0);
        };
        let slot = fred::util::redis_keyslot(key);
        if !per_node || self.split.get(&slot).is_some_and(|until| *until > self.now) {
            return Group::Slot(slot);
        }
        let at = table.partition_point(|(_, last, _)| *last < slot);
        match table.get(at) {
            Some((first, _, server)) if *first <= slot => Group::Node(server.clone()),
            _ => Group::Slot(slot),
        }
    }
}

/// The node fred's slot table names for `slot`, when `client`'s servers
/// run cross-slot scripts: the group commit of releases (`batch.rs`) sends
/// the releases of one node together. `None` on one server, before Redis
/// 7.0, or for a slot the table lacks.
pub(crate) fn node_for_cross_slot(client: &Client, slot: u16) -> Option<Server> {
    if !client.is_clustered() || !scripts::cross_slot_scripts(client) {
        return None;
    }
    client
        .inner()
        .with_cluster_state(|table| Ok(table.get_server(slot).cloned()))
        .ok()
        .flatten()
}

/// The group commit gate of `key` (see `engine/group_commit.rs`): its
/// cluster node when the servers run cross-slot scripts (Redis 7.0+), else
/// its cluster slot; one gate on one server.
pub(crate) fn gate(client: &Client, key: &str) -> Group {
    if !client.is_clustered() {
        return Group::Slot(0);
    }
    let slot = fred::util::redis_keyslot(key.as_bytes());
    match node_for_cross_slot(client, slot) {
        Some(node) => Group::Node(node),
        None => Group::Slot(slot),
    }
}

impl Routes {
    /// How to group the leases of one batch on `client`: per slot on a
    /// cluster (per node where the servers allow it), one group on one
    /// server.
    pub(crate) fn grouping(&self, client: &Client) -> Grouping {
        let now = Instant::now();
        if !client.is_clustered() {
            return Grouping {
                table: None,
                split: HashMap::new(),
                now,
            };
        }
        let mut split = self.split.lock().unwrap_or_else(|e| e.into_inner());
        split.retain(|_, until| *until > now);
        let mut table = Vec::new();
        if scripts::cross_slot_scripts(client) {
            let _ = client.inner().with_cluster_state(|routing| {
                table.extend(
                    routing
                        .slots()
                        .iter()
                        .map(|r| (r.start, r.end, r.primary.clone())),
                );
                Ok(())
            });
            table.sort_unstable_by_key(|(first, _, _)| *first);
        }
        Grouping {
            // An empty table puts every lease in its slot's group.
            table: Some(table),
            split: split.clone(),
            now,
        }
    }

    /// Renews `entries` (`(key, token, ttl_ms)`, the keys of one group):
    /// one call, declared cross-slot when the keys span slots. A refused
    /// cross-slot call marks its slots to be renewed per slot.
    pub(crate) async fn extend(
        &self,
        client: &Client,
        entries: &[(&str, &str, u64)],
        timeout: Duration,
    ) -> Result<Vec<Compared>, Error> {
        let mut slots: Vec<u16> = entries
            .iter()
            .map(|e| fred::util::redis_keyslot(e.0.as_bytes()))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        if slots.len() <= 1 || !client.is_clustered() {
            return scripts::extend(client, entries, true, timeout).await;
        }
        let result = scripts::extend_cross_slot(client, entries, timeout).await;
        if let Err(e) = &result {
            if !matches!(e, Error::Timeout { .. } | Error::Shutdown { .. }) {
                tracing::debug!(
                    error = %e,
                    slots = slots.len(),
                    "a node refused a renewal across its slots; renewing them per slot for a while"
                );
                let until = Instant::now() + SPLIT_FOR;
                let mut split = self.split.lock().unwrap_or_else(|e| e.into_inner());
                split.extend(slots.into_iter().map(|slot| (slot, until)));
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grouping(split: &[u16]) -> Grouping {
        // Two nodes, half the slots each.
        let table = vec![
            (0, 8191, Server::new("127.0.0.1", 7001)),
            (8192, 16383, Server::new("127.0.0.1", 7002)),
        ];
        let now = Instant::now();
        Grouping {
            table: Some(table),
            split: split.iter().map(|s| (*s, now + SPLIT_FOR)).collect(),
            now,
        }
    }

    #[test]
    fn plain_locks_group_by_node_and_others_by_slot() {
        let g = grouping(&[]);
        // "a" is in slot 15495, "b" in 3300, "c" in 7365.
        let node = |g: &Grouping, k: &str| g.group(k.as_bytes(), true);
        assert_eq!(node(&g, "b"), node(&g, "c"));
        assert_ne!(node(&g, "a"), node(&g, "b"));
        assert!(matches!(node(&g, "a"), Group::Node(_)));
        assert_eq!(g.group(b"b", false), Group::Slot(3300));
    }

    #[test]
    fn a_split_slot_is_its_own_group_until_the_split_ends() {
        let mut g = grouping(&[3300]);
        assert_eq!(g.group(b"b", true), Group::Slot(3300));
        assert!(matches!(g.group(b"c", true), Group::Node(_)));
        g.now += SPLIT_FOR + Duration::from_millis(1);
        assert!(matches!(g.group(b"b", true), Group::Node(_)));
    }

    #[test]
    fn one_server_is_one_group() {
        let g = Grouping {
            table: None,
            split: HashMap::new(),
            now: Instant::now(),
        };
        assert_eq!(g.group(b"a", true), Group::Slot(0));
        assert_eq!(g.group(b"b", false), Group::Slot(0));
    }
}
