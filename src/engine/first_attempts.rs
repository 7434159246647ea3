//! Group commit for first attempts (see `group_commit.rs`).
//!
//! On one server (or a Sentinel master), the first attempts of locks that
//! arrive together go out as one script call of plain `SET key token NX PX
//! ttl`s (`set_nx.lua`) instead of one command each: one frame, one socket
//! write and one reply for the lot, on the client and on the server. A lone
//! attempt is a plain `SET NX`, as before.
//!
//! On Redis Cluster (7.0+, Valkey) the attempts are grouped per node, as
//! releases are (`route::gate`), and each group goes as one call of the
//! script's cross-slot form, lone ones included (a plain `SET`'s `OK`
//! cannot be told from another command's reply; the script echoes its
//! token). A call the node refuses (a slot of it moved, or is moving) ran
//! nothing, and its attempts are answered "send it alone", as are those of
//! a cluster older than 7.0.
//!
//! Until a gate (the server, or a cluster node) has run the script, its
//! calls have `SCRIPT LOAD` ahead of them in the same pipeline, so that no
//! call meets `NOSCRIPT` (a call sent again after `NOSCRIPT` could run
//! after the release of a cancelled acquisition).
//!
//! An attempt whose acquisition is dropped before its batch is sent is
//! taken out of it and never sent ([`Withdraw::Unsent`]); once sent, the
//! acquisition's release goes out after it on the same connection.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;

use crate::engine::group_commit::{Flush, GroupCommit, Withdraw};
use crate::engine::join::Boxed;
use crate::policy::error::Error;
use crate::protocol::route::{self, Group};
use crate::protocol::scripts::{self, FirstAttempt};

/// How a batch of first attempts is sent.
pub(crate) struct FirstAttempts {
    client: Client,
    timeout: Duration,
    /// The gates that have run `set_nx.lua` (its cross-slot form on a
    /// cluster): their calls need no `SCRIPT LOAD` ahead.
    loaded: Arc<Mutex<HashSet<Group>>>,
}

/// What a first attempt sent with others found: `Some(true)` when it set
/// the key, `Some(false)` when the key exists, `None` when it was not sent
/// (on a cluster: the caller sends it alone).
type Answer = Result<Option<bool>, Error>;

impl Flush for FirstAttempts {
    type Entry = FirstAttempt;
    type Answer = Answer;

    fn flush(&self, mut batch: Vec<FirstAttempt>) -> Boxed<'static, Vec<Answer>> {
        let (client, timeout) = (self.client.clone(), self.timeout);
        if batch.len() == 1 && !client.is_clustered() {
            // Alone on one server: a plain `SET NX`.
            let a = batch.pop().expect("one attempt");
            return Box::pin(async move {
                let set = scripts::set_nx_one(&client, &a.key, &a.token, a.ttl_ms, timeout).await;
                vec![set.map(Some)]
            });
        }
        let gate = batch.first().map(|a| route::gate(&client, &a.key));
        let loaded = Arc::clone(&self.loaded);
        let preload = !gate.as_ref().is_some_and(|g| known(&loaded).contains(g));
        Box::pin(async move {
            let sent = scripts::set_nx_many(&client, &batch, preload, timeout).await;
            if let (true, Ok(_), Some(gate)) = (preload, &sent, gate) {
                known(&loaded).insert(gate);
            }
            answers(&batch, sent)
        })
    }
}

/// The answers to a batch sent as one call: a node's refusal (nothing ran)
/// sends each attempt alone; any other error is every attempt's.
fn answers(batch: &[FirstAttempt], sent: Result<Vec<bool>, Error>) -> Vec<Answer> {
    match sent {
        Ok(set) => set.into_iter().map(|s| Ok(Some(s))).collect(),
        Err(e) if scripts::refused_across_slots(&e) => {
            tracing::debug!(error = %e, attempts = batch.len(), "a node refused first attempts across its slots; sending them alone");
            batch.iter().map(|_| Ok(None)).collect()
        }
        Err(e) => batch
            .iter()
            .map(|a| {
                let mut e = e.clone();
                e.set_key(&a.key);
                Err(e)
            })
            .collect(),
    }
}

/// Sends first attempts, grouping those that arrive together.
#[derive(Clone)]
pub(crate) struct FirstAttemptBatcher {
    commit: GroupCommit<FirstAttempts>,
}

impl FirstAttemptBatcher {
    pub(crate) fn new(client: Client, timeout: Duration) -> Self {
        FirstAttemptBatcher {
            commit: GroupCommit::new(
                FirstAttempts {
                    client,
                    timeout,
                    loaded: Arc::default(),
                },
                Withdraw::Unsent,
            ),
        }
    }

    /// `SET key token NX PX ttl_ms`, with the others of its gate that
    /// arrive together: `Some(true)` when it set the key, `Some(false)` when
    /// the key exists, `None` when the caller must send it alone (on a
    /// cluster; see the module docs).
    ///
    /// Cancel-safe: dropped before its batch is sent, the attempt is never
    /// sent; after, its answer is dropped.
    pub(crate) async fn set_nx(&self, key: &str, token: &str, ttl_ms: u64) -> Answer {
        let client = &self.commit.flusher().client;
        let gate = route::gate(client, key);
        if client.is_clustered() && matches!(gate, Group::Slot(_)) {
            // Before Redis 7.0 (or a slot fred's table lacks): one by one.
            return Ok(None);
        }
        let attempt = FirstAttempt {
            key: key.to_owned(),
            token: token.to_owned(),
            ttl_ms,
        };
        let timeout = self.commit.flusher().timeout;
        // Never answered (no runtime left to send its batch): unknown.
        self.commit.submit(gate, attempt).await.unwrap_or_else(|| {
            Err(Error::Timeout {
                key: key.to_owned(),
                after: timeout,
            })
        })
    }
}

/// The gates known to have the script (a poisoned lock is still a set).
fn known(nodes: &Mutex<HashSet<Group>>) -> std::sync::MutexGuard<'_, HashSet<Group>> {
    nodes.lock().unwrap_or_else(|e| e.into_inner())
}
