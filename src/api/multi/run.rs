//! The all-or-nothing loop: one round takes the slots' groups in order and
//! gives back what it took when a group is busy; between rounds the
//! acquisition waits for the blocking key's release.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::plan::Plan;
use super::{AcquireAll, MultiGuard};
use crate::engine::inner::Inner;
use crate::engine::lease::LeaseCore;
use crate::engine::notify::Ticket;
use crate::policy::error::Error;
use crate::policy::schedule::{Next, Schedule};
use crate::protocol::scripts::{self, AcquiredAll};

/// What one attempt at the whole set found.
pub(super) enum Attempt {
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
pub(super) struct Round<'a> {
    pub(super) inner: &'a Inner,
    pub(super) plan: &'a Plan,
    pub(super) token: String,
    /// Members `0..touched` may hold the token.
    pub(super) touched: usize,
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

impl<'a> Round<'a> {
    /// A round of `plan` with a fresh token of its own.
    pub(super) fn new(inner: &'a Inner, plan: &'a Plan) -> Self {
        Round {
            inner,
            plan,
            token: uuid::Uuid::new_v4().to_string(),
            touched: 0,
        }
    }
}

impl Round<'_> {
    /// One group's script call (confirmed by `WAIT` with `min_replicas`).
    pub(super) async fn attempt(&self, keys: &[&str]) -> Result<AcquiredAll, Error> {
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

    pub(super) async fn run(mut self) -> Result<Attempt, Error> {
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
        releases_sent(inner, &plan).await;
        let (holder_ttl, last_error) = match Round::new(inner, &plan).run().await? {
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
            Next::GiveUp => return Err(gave_up(&plan, blocker, attempts, started, last_error)),
        };
        let busy = (last_error.is_none(), blocker);
        recheck = pause(inner, &plan, &mut schedule, &mut ticket, busy, wait, notify).await;
    }
}

/// The error of an acquisition that gave up after `attempts`, `blocker`
/// being the key that blocked the last one: its last transient error, else
/// [`Error::NotObtained`].
fn gave_up(
    plan: &Plan,
    blocker: usize,
    attempts: u32,
    started: Instant,
    last_error: Option<Error>,
) -> Error {
    tracing::debug!(
        key = %plan.members[blocker].key,
        attempts,
        "multi-key lock not obtained in time"
    );
    last_error.unwrap_or_else(|| Error::NotObtained {
        key: plan.members[blocker].key.clone(),
        attempts,
        waited: started.elapsed(),
    })
}

/// Sends first the releases of these keys this mutex queued (guards
/// dropped just before, or the rollback of our own last attempt), so they
/// do not stand in our way. (Each attempt has a token of its own, so a late
/// rollback never deletes what a later one took.) One command timeout at
/// most for them all.
async fn releases_sent(inner: &Inner, plan: &Plan) {
    let command_timeout = inner.settings.command_timeout;
    let sent = async {
        for member in &plan.members {
            let lock = &member.keys.lock;
            inner.releases.sent(lock, command_timeout).await;
        }
    };
    let _ = tokio::time::timeout(command_timeout, sent).await;
}

/// Waits before the next round, for `wait` at most: on the release message
/// of the key that blocked the round (`busy`: whether a key was busy, and
/// which) when notifications are on, else by sleeping. `true` when the next
/// attempt is the re-check right after subscribing (a release may have come
/// before the subscription).
async fn pause<'a>(
    inner: &'a Inner,
    plan: &Plan,
    schedule: &mut Schedule,
    ticket: &mut Option<(usize, Ticket<'a>)>,
    (busy, blocker): (bool, usize),
    wait: Duration,
    notify: bool,
) -> bool {
    if !notify || (!busy && ticket.is_none()) {
        tokio::time::sleep(wait).await;
        schedule.waited(false);
        return false;
    }
    if busy && ticket.as_ref().map(|(i, _)| *i) != Some(blocker) {
        // Wait on the key that blocked us now (leaving the queue of the
        // one before, if another).
        drop(ticket.take());
        let mut joined = inner.waiters.join(&plan.members[blocker].keys);
        let limit = inner
            .settings
            .command_timeout
            .min(schedule.left(Instant::now()));
        let subscribed = joined.subscribed(limit).await;
        *ticket = Some((blocker, joined));
        if subscribed {
            return true;
        }
    }
    if let Some((_, ticket)) = ticket {
        let woken = ticket.wait(wait).await;
        schedule.waited(woken);
    }
    false
}

/// The guard of a set just taken with `token`.
pub(super) fn guard(inner: &Arc<Inner>, plan: Plan, token: String, sent_at: Instant) -> MultiGuard {
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
