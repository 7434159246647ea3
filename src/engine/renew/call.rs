//! Renewing a batch: one script call per chunk (one cluster node or slot,
//! one `min_replicas` setting), and what each answer does to its lease.

use std::collections::HashMap;

use fred::interfaces::ClientLike;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::due::Shared;
use super::{period, Clients, InFlight, BATCH, MAX_CALLS};
use crate::engine::lease::{Asked, LeaseCore};
use crate::policy::error::lost::LostReason;
use crate::policy::error::Error;
use crate::protocol::confirm::MinReplicas;
use crate::protocol::route::{self};
use crate::protocol::scripts::{self, Compared};

/// Renews a batch: one task per chunk (one script call, one cluster node or
/// slot, one `min_replicas` setting), up to `MAX_CALLS` at once, each putting its
/// leases back on the queue as soon as its own answer is in. A slow or
/// stalled node delays only its own leases, never those on healthy nodes.
pub(super) fn renew(
    shared: &Arc<Shared>,
    clients: &Clients,
    batch: Vec<(Arc<LeaseCore>, u64)>,
    timeout: Duration,
) {
    let client = &clients.client;
    // Plain locks and places in sorted sets (semaphores, read-write locks)
    // are renewed by different scripts: they never share a chunk.
    type Group = (route::Group, Option<MinReplicas>, bool);
    let mut groups: HashMap<Group, Vec<(Arc<LeaseCore>, u64)>> = HashMap::new();
    let grouping = clients.routes.grouping(client);
    for entry in batch {
        let lease = &entry.0;
        let key = lease.member_set.as_deref();
        let member = lease.member_set.is_some();
        // Only plain locks without `min_replicas` share a call across slots.
        let per_node = !member && lease.confirm.is_none();
        let group = grouping.group(key.unwrap_or(lease.keys.lock.as_bytes()), per_node);
        groups
            .entry((group, lease.confirm, member))
            .or_default()
            .push(entry);
    }
    // One server: one call at a time per connection (concurrency buys
    // nothing there, and each call in flight holds its arguments). A
    // cluster: up to `MAX_CALLS`, so each node's calls go out independently.
    // Confirmed renewals (which wait for replicas) have permits of their
    // own, so they never hold up the others.
    let permits = if client.is_clustered() { MAX_CALLS } else { 1 };
    let calls = Arc::new(tokio::sync::Semaphore::new(permits));
    let confirmed_calls = Arc::new(tokio::sync::Semaphore::new(permits));
    for ((_, confirm, _), group) in groups {
        let calls = if confirm.is_some() {
            &confirmed_calls
        } else {
            &calls
        };
        for chunk in group.chunks(BATCH) {
            let chunk = chunk.to_vec();
            let mut in_flight = InFlight {
                shared: Arc::clone(shared),
                batch: chunk.iter().map(|(l, g)| (Arc::downgrade(l), *g)).collect(),
            };
            let (clients, calls) = (clients.clone(), Arc::clone(calls));
            tokio::spawn(async move {
                let _call = calls.acquire_owned().await;
                let next = renew_chunk(&clients, &chunk, confirm, timeout).await;
                in_flight.batch.clear();
                for (lease, generation, due) in next {
                    in_flight.shared.push(lease, generation, due);
                }
            });
        }
    }
}

/// Sends one chunk's renewal (confirmed by `WAIT` when `confirm` is set)
/// and returns when each of its leases is due next.
///
/// With `confirm`, a renewal that found the token but was acknowledged by
/// fewer replicas than asked counts as not made: the lease stays as it was
/// (the master may hold a longer one; the guard never claims more than was
/// confirmed) and the renewal is retried soon, as after a renewal that did
/// not reach Redis. A lease that is never confirmed again is reported lost
/// (`Expired`) when its local validity ends.
pub(super) async fn renew_chunk(
    clients: &Clients,
    chunk: &[(Arc<LeaseCore>, u64)],
    confirm: Option<MinReplicas>,
    timeout: Duration,
) -> Vec<(Weak<LeaseCore>, u64, Instant)> {
    let asks: Vec<Asked> = chunk.iter().map(|(l, _)| l.asked()).collect();
    let ttls: Vec<Duration> = asks.iter().map(|a| a.ttl).collect();
    let entries: Vec<(&str, &str, u64)> = chunk
        .iter()
        .zip(&ttls)
        .map(|((l, _), ttl)| {
            (
                l.keys.lock.as_str(),
                l.token.as_str(),
                ttl.as_millis() as u64,
            )
        })
        .collect();
    let sent_at = Instant::now();
    // On Sentinel: an answer counts only if the client stayed on one master
    // while the call was out (see `sentinel.rs`).
    let epoch = clients.epoch.read();
    let (result, unconfirmed) = send_chunk(clients, chunk, &entries, &ttls, confirm, timeout).await;
    if let Some(acked) = unconfirmed {
        tracing::debug!(
            acked,
            keys = chunk.len(),
            "lease renewal not confirmed by enough replicas; retrying"
        );
    }
    let locks = chunk.iter().map(|(lease, _)| &lease.metrics);
    crate::engine::metrics::renewals(locks, &result, unconfirmed, sent_at);
    let mut next = Vec::with_capacity(chunk.len());
    match result {
        Ok(answers) => {
            // An answer counts when enough replicas confirmed it, and the
            // client stayed on one master while the call was out.
            let counts = || unconfirmed.is_none() && clients.epoch.unchanged(epoch);
            next_due(chunk, asks, answers, counts, sent_at, &mut next);
        }
        Err(e) => {
            // Redis could not be asked: try again soon; the lease stays as it
            // was and is reported lost when its local validity passes.
            tracing::debug!(error = %e, keys = chunk.len(), "lease renewal failed; retrying");
            for ((lease, generation), ttl) in chunk.iter().zip(ttls) {
                if lease.lost_reason().is_none() {
                    next.push((Arc::downgrade(lease), *generation, retry_at(lease, ttl)));
                }
            }
        }
    }
    next
}

/// Sends one chunk's renewal: the sorted-set script for places, the
/// extend script per route otherwise, with `WAIT` when `confirm` is set.
/// The answers, and `Some(acked)` when the chunk's writes were confirmed by
/// too few replicas.
async fn send_chunk(
    clients: &Clients,
    chunk: &[(Arc<LeaseCore>, u64)],
    entries: &[(&str, &str, u64)],
    ttls: &[Duration],
    confirm: Option<MinReplicas>,
    timeout: Duration,
) -> (Result<Vec<Compared>, Error>, Option<u32>) {
    let first = entries.first().map_or("", |e| e.0);
    let members = chunk.first().is_some_and(|(l, _)| l.member_set.is_some());
    match confirm {
        None if members => (
            crate::engine::primitive::scripts::renew(&clients.client, chunk, ttls, timeout).await,
            None,
        ),
        None => (
            clients
                .routes
                .extend(&clients.client, entries, timeout)
                .await,
            None,
        ),
        Some(wait) => {
            let confirmed = match clients.confirmer.client(first, timeout).await {
                Ok(client) => scripts::extend_confirmed(client, entries, true, wait, timeout).await,
                Err(e) => Err(e),
            };
            match confirmed {
                Ok((answers, acked)) if acked < wait.replicas => (Ok(answers), Some(acked)),
                Ok((answers, _)) => (Ok(answers), None),
                Err(e) => (Err(e), None),
            }
        }
    }
}

/// When each lease of a chunk whose call was answered is due next (pushed
/// to `next`); `counts` tells whether a `Held` answer counts (else the
/// renewal is retried soon). Leases found gone are marked lost.
fn next_due(
    chunk: &[(Arc<LeaseCore>, u64)],
    asks: Vec<Asked>,
    answers: Vec<Compared>,
    counts: impl Fn() -> bool,
    sent_at: Instant,
    next: &mut Vec<(Weak<LeaseCore>, u64, Instant)>,
) {
    for (((lease, generation), asked), answer) in chunk.iter().zip(asks).zip(answers) {
        let ttl = asked.ttl;
        match answer {
            Compared::Held if !counts() => {
                if lease.lost_reason().is_none() {
                    next.push((Arc::downgrade(lease), *generation, retry_at(lease, ttl)));
                }
            }
            Compared::Held => {
                if lease.confirm(sent_at, asked) && !lease.is_ended() {
                    let due = sent_at + period(ttl);
                    next.push((Arc::downgrade(lease), *generation, due));
                }
            }
            Compared::Missing => lost(lease, LostReason::Missing),
            Compared::Replaced => lost(lease, LostReason::Replaced),
        }
    }
}

/// When to try again after a renewal that did not count: a ninth of the
/// TTL (between 1 ms and 1 s) from now, and sooner when the lease's local
/// validity would end first, so that at least one more try fits in what is
/// left (half of it), whatever the TTL. A lease handed over by a release is
/// valid for the claim TTL only until its first renewal: with a long TTL a
/// ninth of it would come after the end.
pub(super) fn retry_at(lease: &LeaseCore, ttl: Duration) -> Instant {
    let pause = (period(ttl) / 3).clamp(Duration::from_millis(1), Duration::from_secs(1));
    let left = lease.remaining();
    Instant::now() + pause.min(left / 2).max(Duration::from_millis(1))
}

pub(super) fn lost(lease: &LeaseCore, reason: LostReason) {
    if !lease.is_ended() {
        tracing::warn!(key = %lease.key, %reason, "lock lost");
    }
    lease.mark_lost(reason);
}
