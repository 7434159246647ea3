//! Multi-key locks: [`AcquireAll`] and the loop that runs it, all or
//! nothing; the guard is in `guard.rs`.
//!
//! The keys are deduplicated and put in the canonical order: by cluster slot,
//! then by key. On one server (or when every key is in one slot), one call
//! of `acquire_all.lua` takes them all or none. On a cluster with keys in
//! several slots, the slots' groups are taken one after another in that
//! order, each by one call of the script; when a group is busy, the groups
//! already taken are released again (queued on the release worker, which
//! sends them at once) and the acquisition waits for the blocking key's
//! release message (capped by its holder's TTL and the retry strategy),
//! then tries the whole set again with a fresh token. Nothing is held while
//! waiting, so two callers locking overlapping sets in any order never
//! deadlock; the canonical order makes them contend on the same first key,
//! so the loser seldom takes (and gives back) anything.
//!
//! Each attempt has a token of its own: a rollback that reaches Redis late
//! (its release retried in the background) can never delete what a later
//! attempt took. With `min_replicas`, each group's script call is followed
//! by `WAIT` on the confirming connection, like the acquire script's.
//!
//! The winning attempt's token becomes the guard's: each key gets a
//! [`LeaseCore`] of its own (same token), renewed by the renewer like a
//! single lock's; the guard is lost when any of them is. Multi-key waiters
//! wait in the local queue of the key that blocked them (`notify.rs`), like
//! single-key waiters, but take no place in any queue kept in Redis.

mod guard;
mod lock_all;

use std::collections::HashSet;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use guard::{LostKey, MultiGuard};

use fred::interfaces::ClientLike;

use crate::engine::inner::Inner;
use crate::engine::lease::LeaseCore;
use crate::engine::notify::Ticket;
use crate::policy::error::Error;
use crate::policy::limits::{ttl_millis, validate_key};
use crate::policy::retry::RetryStrategy;
use crate::policy::schedule::{Next, Schedule};
use crate::protocol::confirm::MinReplicas;
use crate::protocol::keys::LockKeys;
use crate::protocol::scripts::{self, AcquiredAll};

/// The most distinct keys one multi-key lock may take: 1024.
///
/// Every key of a group travels in one script call, and every key is renewed
/// and released on its own; a set larger than this is more likely a bug
/// (keys built from unbounded input) than a lock. A larger set fails with
/// [`Error::InvalidKeySet`] before anything is sent. So does an input of
/// more than 2^20 items, duplicates included: the input is read only that
/// far, so even an endless iterator ends in that error.
pub const MAX_LOCK_ALL_KEYS: usize = 1024;

/// The most items of input read, duplicates included.
const MAX_INPUT: usize = 1 << 20;

/// One multi-key acquisition with per-call options, made by
/// [`DistributedMutex::acquire_all`](crate::DistributedMutex::acquire_all).
/// `.await` it to get the [`MultiGuard`].
///
/// The returned future is `Send + 'static`, so it can be spawned.
///
/// A multi-key lock has no fencing tokens: the mutex's
/// [`Builder::fencing`](crate::Builder::fencing) setting applies to
/// single-key locks only.
///
/// # Cancel safety
/// Dropping the future at any point leaves nothing locked: every key an
/// attempt may have set gets a release of that attempt's token queued.
#[must_use = "an acquisition does nothing until it is awaited"]
pub struct AcquireAll {
    inner: Arc<Inner>,
    /// The distinct keys, in the caller's order.
    keys: Vec<String>,
    /// More distinct keys were given than [`MAX_LOCK_ALL_KEYS`], or more
    /// items than `MAX_INPUT`.
    too_many: bool,
    ttl: Option<Duration>,
    retry: Option<RetryStrategy>,
    timeout: Option<Duration>,
    auto_renew: Option<bool>,
    min_replicas: Option<(u32, Duration)>,
}

impl AcquireAll {
    /// Collects the distinct keys of `keys`; stops reading once there are
    /// more than [`MAX_LOCK_ALL_KEYS`], or after `MAX_INPUT` items (so an
    /// endless iterator ends in an error, not in an endless loop).
    pub(crate) fn new<I>(inner: Arc<Inner>, keys: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut seen = HashSet::new();
        let mut distinct = Vec::new();
        let mut too_many = false;
        for (read, key) in keys.into_iter().enumerate() {
            if read == MAX_INPUT {
                too_many = true;
                break;
            }
            let key = key.as_ref();
            if seen.contains(key) {
                continue;
            }
            if distinct.len() == MAX_LOCK_ALL_KEYS {
                too_many = true;
                break;
            }
            seen.insert(key.to_owned());
            distinct.push(key.to_owned());
        }
        AcquireAll {
            inner,
            keys: distinct,
            too_many,
            ttl: None,
            retry: None,
            timeout: None,
            auto_renew: None,
            min_replicas: None,
        }
    }

    /// The lease of every key, instead of the mutex's.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How to wait for the set, instead of the mutex's retry strategy.
    pub fn retry(mut self, retry: RetryStrategy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The longest time to wait for the whole set to become free, on top of
    /// the retry strategy (whichever ends first). At least one attempt is
    /// always made, so `Duration::ZERO` means "one attempt". The call returns
    /// within this (or the strategy's budget) plus one command timeout per
    /// cluster slot of the set.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Whether the guard renews every key's lease while it lives, instead of
    /// the mutex's setting (default on).
    pub fn auto_renew(mut self, on: bool) -> Self {
        self.auto_renew = Some(on);
        self
    }

    /// Confirms the set's writes (the acquisition of each slot's group, every
    /// renewal and extension) with `WAIT replicas timeout`, instead of the
    /// mutex's setting; `replicas == 0` turns confirmation off. See
    /// [`Acquire::min_replicas`](crate::Acquire::min_replicas): when a
    /// group's write is not confirmed in time, the call fails with
    /// [`Error::NotReplicated`] (at once, without trying again) and releases
    /// of its token are queued for every key it may have set.
    pub fn min_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.min_replicas = Some((replicas, timeout));
        self
    }
}

impl IntoFuture for AcquireAll {
    type Output = Result<MultiGuard, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'static>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self))
    }
}

impl fmt::Debug for AcquireAll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquireAll")
            .field("keys", &self.keys)
            .field("ttl", &self.ttl)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("auto_renew", &self.auto_renew)
            .field("min_replicas", &self.min_replicas)
            .finish()
    }
}

/// One key of the set.
pub(crate) struct Member {
    /// As the caller gave it.
    pub(crate) key: String,
    pub(crate) keys: LockKeys,
}

/// The checked settings of a multi-key acquisition.
struct Plan {
    /// The keys in canonical order: by cluster slot, then by key.
    members: Vec<Member>,
    /// Runs of `members` sent in one script call each: one run per slot on
    /// a cluster, one run for all on a single server.
    groups: Vec<Range<usize>>,
    ttl_ms: u64,
    auto_renew: bool,
    retry: RetryStrategy,
    timeout: Option<Duration>,
    /// Replica confirmation of the set's writes.
    confirm: Option<MinReplicas>,
}

impl Plan {
    fn check(req: &AcquireAll) -> Result<Plan, Error> {
        let settings = &req.inner.settings;
        if req.keys.is_empty() {
            return Err(Error::InvalidKeySet {
                count: 0,
                reason: "a multi-key lock needs at least one key",
            });
        }
        if req.too_many && req.keys.len() == MAX_LOCK_ALL_KEYS {
            return Err(Error::InvalidKeySet {
                count: MAX_LOCK_ALL_KEYS + 1,
                reason: "a multi-key lock takes at most 1024 distinct keys (MAX_LOCK_ALL_KEYS)",
            });
        }
        if req.too_many {
            return Err(Error::InvalidKeySet {
                count: req.keys.len(),
                reason: "more than 2^20 keys were given (duplicates included); \
                         a multi-key lock takes at most 1024 distinct keys",
            });
        }
        for key in &req.keys {
            validate_key(key)?;
        }
        let ttl_ms = ttl_millis(&req.keys[0], req.ttl.unwrap_or(settings.ttl))?;
        let retry = req.retry.unwrap_or(settings.retry);
        retry.validate()?;
        let confirm = match req.min_replicas {
            Some((replicas, timeout)) => MinReplicas::check(replicas, timeout)?,
            None => settings.min_replicas,
        };
        let mut members: Vec<(u16, Member)> = req
            .keys
            .iter()
            .map(|key| {
                let keys = LockKeys::new(&settings.prefix, key);
                let slot = fred::util::redis_keyslot(keys.lock.as_bytes());
                (
                    slot,
                    Member {
                        key: key.clone(),
                        keys,
                    },
                )
            })
            .collect();
        members.sort_by(|(a, x), (b, y)| {
            (a, x.keys.lock.as_bytes()).cmp(&(b, y.keys.lock.as_bytes()))
        });
        let groups = if req.inner.client.is_clustered() {
            slot_runs(members.iter().map(|(slot, _)| *slot))
        } else {
            std::iter::once(0..members.len()).collect()
        };
        Ok(Plan {
            members: members.into_iter().map(|(_, m)| m).collect(),
            groups,
            ttl_ms,
            auto_renew: req.auto_renew.unwrap_or(settings.auto_renew),
            retry,
            timeout: req.timeout,
            confirm,
        })
    }
}

/// The runs of equal slots in a sorted sequence of slots.
pub(crate) fn slot_runs(slots: impl Iterator<Item = u16>) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    let mut last = None;
    for (i, slot) in slots.enumerate() {
        match runs.last_mut() {
            Some(run) if last == Some(slot) => run.end = i + 1,
            _ => runs.push(i..i + 1),
        }
        last = Some(slot);
    }
    runs
}

/// What one attempt at the whole set found.
enum Attempt {
    /// Every key holds the token, written by commands sent from `sent_at`.
    Taken { token: String, sent_at: Instant },
    /// The member at this index is held by someone else.
    Busy {
        member: usize,
        pttl: Option<Duration>,
    },
    /// Redis could not be asked (or the master changed): unknown outcome,
    /// rolled back.
    Transient(Error),
}

/// One attempt at the whole set, with a token of its own. Dropped before it
/// took every key (busy, failed or cancelled), it queues a release of its
/// token for every key it may have set.
struct Round<'a> {
    inner: &'a Inner,
    plan: &'a Plan,
    token: String,
    /// Members `0..touched` may hold the token.
    touched: usize,
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        if self.touched == 0 {
            return;
        }
        tracing::debug!(
            keys = self.touched,
            "multi-key lock: rolling back the keys taken by an attempt that did not take them all"
        );
        for member in &self.plan.members[..self.touched] {
            self.inner
                .releases
                .queue(member.keys.clone(), self.token.clone());
        }
    }
}

impl Round<'_> {
    /// One group's script call (confirmed by `WAIT` with `min_replicas`).
    async fn attempt(&self, keys: &[&str]) -> Result<AcquiredAll, Error> {
        let inner = self.inner;
        let (token, ttl_ms) = (self.token.as_str(), self.plan.ttl_ms);
        let timeout = inner.settings.command_timeout;
        let Some(wait) = self.plan.confirm else {
            return scripts::acquire_all(&inner.client, keys, token, ttl_ms, timeout).await;
        };
        let first = keys.first().copied().unwrap_or("");
        // Boxed: a connect future is large (see `scripts::bounded`).
        let client = Box::pin(inner.confirmer.client(first, timeout)).await?;
        let confirmed = scripts::acquire_all_confirmed(client, keys, token, ttl_ms, wait, timeout);
        match confirmed.await? {
            (AcquiredAll::Yes, acked) if acked < wait.replicas => Err(Error::NotReplicated {
                key: first.to_owned(),
                acked,
                wanted: wait.replicas,
                after: wait.timeout(),
            }),
            (answer, _) => Ok(answer),
        }
    }

    async fn run(mut self) -> Result<Attempt, Error> {
        let inner = self.inner;
        let plan = self.plan;
        let epoch = inner.epoch.read();
        let sent_at = Instant::now();
        for group in &plan.groups {
            let members = &plan.members[group.clone()];
            let keys: Vec<&str> = members.iter().map(|m| m.keys.lock.as_str()).collect();
            // Sent: these keys may hold the token from now on.
            self.touched = group.end;
            let answer = self.attempt(&keys).await;
            match answer {
                Ok(AcquiredAll::Yes) => {}
                Ok(AcquiredAll::Busy { index, pttl }) => {
                    // The script wrote nothing of this group.
                    self.touched = group.start;
                    return Ok(Attempt::Busy {
                        member: group.start + index,
                        pttl,
                    });
                }
                Ok(AcquiredAll::WrongType { index }) => {
                    self.touched = group.start;
                    let key = members.get(index).map_or("", |m| m.key.as_str());
                    return Err(Error::WrongType {
                        key: key.to_owned(),
                        source: fred::error::Error::new(
                            fred::error::ErrorKind::InvalidArgument,
                            "WRONGTYPE the key holds a value that is not a lock",
                        ),
                    });
                }
                Err(mut e) => {
                    // The group's keys stay `touched`: they are released.
                    e.set_key(&members[0].key);
                    if e.is_transient() && !matches!(e, Error::NotReplicated { .. }) {
                        return Ok(Attempt::Transient(e));
                    }
                    return Err(e);
                }
            }
        }
        if !inner.epoch.unchanged(epoch) {
            // Sentinel: the master changed while the attempt was out; it may
            // have written on the old master. Rolled back; try again.
            return Ok(Attempt::Transient(Error::Unavailable {
                key: plan.members[0].key.clone(),
                source: fred::error::Error::new(
                    fred::error::ErrorKind::Sentinel,
                    "the master changed (Sentinel failover) while the locks were being taken",
                ),
            }));
        }
        self.touched = 0;
        Ok(Attempt::Taken {
            token: std::mem::take(&mut self.token),
            sent_at,
        })
    }
}

/// Runs a multi-key acquisition.
pub(crate) async fn run(req: AcquireAll) -> Result<MultiGuard, Error> {
    let plan = Plan::check(&req)?;
    let inner = &req.inner;
    let first = || plan.members[0].key.clone();
    if inner.is_shut_down() {
        return Err(Error::Shutdown { key: first() });
    }
    inner.ensure_background();
    inner.waiters.settle().await;
    let started = Instant::now();
    let command_timeout = inner.settings.command_timeout;
    let mut schedule = Schedule::new(started, plan.retry, plan.timeout);
    let notify = inner.settings.notifications && schedule.may_wait(started);
    // The wait queue of the key that blocked the last attempt.
    let mut ticket: Option<(usize, Ticket<'_>)> = None;
    let mut attempts = 0u32;
    let mut recheck = false;
    let mut blocker = 0usize;
    loop {
        if attempts > 0 && inner.is_shut_down() {
            return Err(Error::Shutdown { key: first() });
        }
        if !std::mem::take(&mut recheck) {
            attempts += 1;
        }
        // Releases of these keys this mutex queued (guards dropped just
        // before, or the rollback of our own last attempt) go out first, so
        // they do not stand in our way. (Each attempt has a token of its
        // own, so a late rollback never deletes what a later one took.)
        // One command timeout at most for them all.
        let sent = async {
            for member in &plan.members {
                let lock = &member.keys.lock;
                inner.releases.sent(lock, command_timeout).await;
            }
        };
        let _ = tokio::time::timeout(command_timeout, sent).await;
        let round = Round {
            inner,
            plan: &plan,
            token: uuid::Uuid::new_v4().to_string(),
            touched: 0,
        };
        let (holder_ttl, last_error) = match round.run().await? {
            Attempt::Taken { token, sent_at } => {
                if let Some((_, ticket)) = ticket.take() {
                    ticket.acquired();
                }
                tracing::debug!(
                    keys = plan.members.len(),
                    first = %plan.members[0].key,
                    attempts,
                    "multi-key lock acquired"
                );
                return Ok(guard(inner, plan, token, sent_at));
            }
            Attempt::Busy { member, pttl } => {
                blocker = member;
                tracing::trace!(key = %plan.members[member].key, ?pttl, "multi-key lock: a key is busy");
                (pttl, None)
            }
            Attempt::Transient(e) => {
                tracing::debug!(attempts, error = %e, "multi-key lock attempt failed");
                (None, Some(e))
            }
        };
        let wait = match schedule.next(Instant::now(), holder_ttl) {
            Next::Wait(wait) => wait,
            Next::GiveUp => {
                tracing::debug!(
                    key = %plan.members[blocker].key,
                    attempts,
                    "multi-key lock not obtained in time"
                );
                return Err(last_error.unwrap_or_else(|| Error::NotObtained {
                    key: plan.members[blocker].key.clone(),
                    attempts,
                    waited: started.elapsed(),
                }));
            }
        };
        let busy = last_error.is_none();
        if !notify || (!busy && ticket.is_none()) {
            tokio::time::sleep(wait).await;
            schedule.waited(false);
            continue;
        }
        if busy && ticket.as_ref().map(|(i, _)| *i) != Some(blocker) {
            // Wait on the key that blocked us now (leaving the queue of the
            // one before, if another).
            drop(ticket.take());
            let mut joined = inner.waiters.join(&plan.members[blocker].keys);
            let limit = command_timeout.min(schedule.left(Instant::now()));
            let subscribed = joined.subscribed(limit).await;
            ticket = Some((blocker, joined));
            if subscribed {
                // A release may have come before the subscription.
                recheck = true;
                continue;
            }
        }
        if let Some((_, ticket)) = &ticket {
            let woken = ticket.wait(wait).await;
            schedule.waited(woken);
        }
    }
}

/// The guard of a set just taken with `token`.
fn guard(inner: &Arc<Inner>, plan: Plan, token: String, sent_at: Instant) -> MultiGuard {
    let ttl = Duration::from_millis(plan.ttl_ms);
    let leases: Vec<Arc<LeaseCore>> = plan
        .members
        .into_iter()
        .map(|member| {
            let metrics = inner.settings.metrics.lock(&member.key);
            let lease = Arc::new(LeaseCore::new(
                member.key,
                member.keys,
                token.clone(),
                None,
                ttl,
                sent_at,
                plan.confirm,
                metrics,
            ));
            if plan.auto_renew {
                inner.renewer.track(&lease, sent_at);
            }
            lease
        })
        .collect();
    MultiGuard::new(Arc::clone(inner), leases, plan.groups, plan.auto_renew)
}

#[cfg(test)]
mod tests {
    use super::slot_runs;

    #[test]
    fn runs_of_equal_slots() {
        assert!(slot_runs(std::iter::empty()).is_empty());
        assert_eq!(slot_runs([5].into_iter()), vec![0..1]);
        assert_eq!(
            slot_runs([1, 1, 2, 7, 7, 7].into_iter()),
            vec![0..2, 2..3, 3..6]
        );
    }
}
