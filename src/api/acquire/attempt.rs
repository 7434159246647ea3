//! One attempt (a plain `SET NX` first, else the acquire script), and the
//! token armed until a guard owns it.

use std::time::Duration;

use crate::engine::inner::Inner;
use crate::policy::error::Error;
use crate::protocol::keys::LockKeys;
use crate::protocol::scripts::{self, Acquired, Ask, QueueSpot, Queueing};

use super::plan::Plan;

/// A token that may have been set in Redis (or queued) and has no guard
/// yet. Dropped while armed (the acquisition was cancelled, gave up while
/// queued, or failed with an unknown outcome), it queues a release of its
/// token that also takes it out of the lock's queue.
pub(super) struct ArmedToken<'a> {
    pub(super) inner: &'a Inner,
    /// The lock's Redis names (moved to the guard on success).
    pub(super) keys: LockKeys,
    pub(super) token: String,
    /// The acquisition's place in the lock's queue, made by its first attempt
    /// that may queue it: its member is removed by the release, which also
    /// passes the lock on if it was handed to this token.
    pub(super) spot: Option<QueueSpot>,
    pub(super) armed: bool,
}

impl Drop for ArmedToken<'_> {
    fn drop(&mut self) {
        if self.armed {
            let keys = std::mem::take(&mut self.keys);
            let token = std::mem::take(&mut self.token);
            let leave = self.spot.take().map(|s| s.member).unwrap_or_default();
            self.inner.releases.queue_leaving(keys, token, leave);
        }
    }
}

/// What one attempt found.
pub(super) enum Attempt {
    Taken(Option<u64>),
    Busy(Option<Duration>),
    /// Busy, and this acquisition joined the lock's queue.
    Queued,
}

/// One attempt: a plain `SET NX` when `fast`, falling back to the acquire
/// script when the key exists (it may be our own re-sent SET, and the script
/// also returns the holder's TTL).
pub(super) async fn attempt(
    inner: &Inner,
    plan: &Plan,
    keys: &LockKeys,
    token: &str,
    fast: bool,
    queueing: Queueing<'_>,
) -> Result<Attempt, Error> {
    let timeout = inner.settings.command_timeout;
    let ask = Ask {
        token,
        ttl_ms: plan.ttl_ms,
        fencing: plan.fencing,
        queueing,
        pubsub: inner.waiters.pubsub(),
    };
    if let Some(wait) = plan.confirm {
        // Boxed: a connect future is large, and kept inline it would make
        // every future awaiting a lock as large (see `scripts::bounded`).
        let client = Box::pin(inner.confirmer.client(&keys.lock, timeout)).await?;
        let confirmed = scripts::acquire_confirmed(client, keys, ask, wait, timeout);
        return match confirmed.await? {
            (Acquired::Yes { fencing_token }, acked) if acked >= wait.replicas => {
                Ok(Attempt::Taken(fencing_token))
            }
            (Acquired::Yes { .. }, acked) => Err(Error::NotReplicated {
                key: keys.lock.clone(),
                acked,
                wanted: wait.replicas,
                after: wait.timeout(),
            }),
            (Acquired::No { pttl }, _) => Ok(Attempt::Busy(pttl)),
            (Acquired::Queued, _) => Ok(Attempt::Queued),
        };
    }
    let client = &inner.client;
    if fast && !plan.fencing {
        // First attempts that arrive together go as one call (per node on a
        // cluster); one the batch did not send goes alone.
        let batched = inner.first_attempts.set_nx(&keys.lock, token, plan.ttl_ms);
        let set = match batched.await? {
            Some(set) => set,
            None => scripts::set_nx(client, keys, ask, timeout).await?,
        };
        if set {
            return Ok(Attempt::Taken(None));
        }
    }
    Ok(match scripts::acquire(client, keys, ask, timeout).await? {
        Acquired::Yes { fencing_token } => Attempt::Taken(fencing_token),
        Acquired::No { pttl } => Attempt::Busy(pttl),
        Acquired::Queued => Attempt::Queued,
    })
}
