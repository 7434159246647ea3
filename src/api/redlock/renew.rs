//! Renewing a Redlock lease: the token-checked extend script on every
//! server at once, confirmed by a majority; one task per auto-renewed guard.
//!
//! Not the single-server renewer (`engine/renew/`): that one batches leases per
//! client and confirms a lease by one server's answer, where a Redlock
//! lease needs the answers of several clients counted together. A task per
//! guard is cheap for the handful of long-held locks Redlock is used for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::engine::lease::LeaseCore;

use crate::engine::renew::period;
use crate::policy::error::lost::LostReason;
use crate::policy::error::Error;

use super::fanout::gather;
use super::quorum::{CheckedEnd, CheckedTally};
use super::servers::Servers;

/// Why an extension on all servers did not confirm the lease.
pub(crate) enum NotExtended {
    /// More than a minority no longer holds the token: the lock is lost.
    Gone(LostReason),
    /// Too few servers answered to decide (transient).
    Undecided(Error),
}

/// Extends `lease` to `ttl` on every server at once; `Ok` as soon as a
/// majority confirms. The caller confirms the lease locally (with the send
/// time it took before calling).
pub(crate) async fn extend_all(
    servers: &Servers,
    lease: &LeaseCore,
    ttl: Duration,
    what: &str,
) -> Result<(), NotExtended> {
    let ttl_ms = ttl.as_millis() as u64;
    let calls: Vec<_> = (0..servers.len())
        .map(|i| servers.extend(i, &lease.key, &lease.keys, &lease.token, ttl_ms))
        .collect();
    let mut tally = CheckedTally::new(servers.len());
    match gather(calls, |_, answer| tally.record(answer)).await {
        Some(CheckedEnd::Held) => Ok(()),
        Some(CheckedEnd::Gone(reason)) => Err(NotExtended::Gone(reason)),
        None => Err(NotExtended::Undecided(tally.unavailable(&lease.key, what))),
    }
}

/// Starts renewing `lease` (taken or last confirmed at `sent_at`) until it
/// ends or is lost. `wake` is notified after an `extend`, so the next
/// renewal follows the new TTL.
pub(crate) fn start(
    servers: Arc<Servers>,
    lease: Arc<LeaseCore>,
    wake: Arc<Notify>,
    sent_at: Instant,
) {
    let due = sent_at + period(lease.ttl());
    tokio::spawn(run(servers, lease, wake, due));
}

async fn run(servers: Arc<Servers>, lease: Arc<LeaseCore>, wake: Arc<Notify>, mut due: Instant) {
    loop {
        tokio::select! {
            biased;
            _ = lease.lost() => return,
            _ = wake.notified() => {
                // An extension was just confirmed: a period of its TTL from now.
                due = Instant::now() + period(lease.ttl());
                continue;
            }
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let asked = lease.asked();
        let ttl = asked.ttl;
        let sent_at = Instant::now();
        match extend_all(&servers, &lease, ttl, "the renewal").await {
            Ok(()) => {
                if !lease.confirm(sent_at, asked) {
                    return;
                }
                due = sent_at + period(ttl);
            }
            Err(NotExtended::Gone(reason)) => {
                if !lease.is_ended() {
                    tracing::warn!(key = %lease.key, %reason, "redlock lost: a majority of its servers no longer hold it");
                    lease.mark_lost(reason);
                }
                return;
            }
            Err(NotExtended::Undecided(e)) => {
                // Try again soon; the lease is reported lost when its local
                // validity ends without a confirmed renewal.
                tracing::debug!(key = %lease.key, error = %e, "redlock renewal not confirmed; retrying");
                due = Instant::now()
                    + (period(ttl) / 3).clamp(Duration::from_millis(1), Duration::from_secs(1));
            }
        }
    }
}
