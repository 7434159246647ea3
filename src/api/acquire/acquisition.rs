//! The state of one acquisition between its attempts: subscribing,
//! queueing, waiting for a hand-off or a release, giving up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::guard::LockGuard;
use crate::engine::inner::Inner;
use crate::engine::lease::LeaseCore;
use crate::engine::notify::{Ticket, Wake};
use crate::engine::queue;
use crate::policy::error::Error;
use crate::policy::schedule::{Next, Schedule};
use crate::protocol::keys::LockKeys;
use crate::protocol::scripts::{QueueSpot, Queueing};

use super::attempt::{attempt, ArmedToken, Attempt};
use super::plan::Plan;
use super::Step;

/// The state of one acquisition between its attempts.
pub(super) struct Acquisition<'a> {
    pub(super) inner: &'a Arc<Inner>,
    pub(super) plan: Plan,
    pub(super) started: Instant,
    pub(super) schedule: Schedule,
    /// Whether this acquisition queues and waits for messages.
    pub(super) notify: bool,
    pub(super) token: ArmedToken<'a>,
    /// The place among this mutex's waiters of the lock, once it waits.
    pub(super) ticket: Option<Ticket<'a>>,
    /// When (and in which Sentinel epoch) this acquisition first sent a
    /// command that may queue it: any hand-off to it comes later.
    pub(super) joined: Option<(Instant, u64)>,
    pub(super) attempts: u32,
    /// The next attempt is the re-check right after subscribing, which
    /// belongs to the attempt before it.
    pub(super) recheck: bool,
    /// An attempt ended without a definite answer: its SET may still land,
    /// so the token must be released if we give up.
    pub(super) uncertain: bool,
    pub(super) holder_ttl: Option<Duration>,
    pub(super) last_error: Option<Error>,
}

impl<'a> Acquisition<'a> {
    pub(super) fn new(inner: &'a Arc<Inner>, plan: Plan, keys: LockKeys, started: Instant) -> Self {
        let schedule = Schedule::new(started, plan.retry, plan.timeout);
        let token = crate::protocol::holder::token(plan.holder.as_deref());
        Acquisition {
            notify: inner.settings.notifications && schedule.may_wait(started),
            inner,
            plan,
            started,
            schedule,
            token: ArmedToken {
                inner,
                keys,
                token,
                spot: None,
                armed: false,
            },
            ticket: None,
            joined: None,
            attempts: 0,
            recheck: false,
            uncertain: false,
            holder_ttl: None,
            last_error: None,
        }
    }

    /// Joins this mutex's waiters of the lock if it has any (their
    /// subscription is in place, or being made); `true` when the
    /// acquisition should then join the Redis queue at once.
    pub(super) async fn join_local_queue(&mut self) -> bool {
        let waiters = &self.inner.waiters;
        if !self.notify || !waiters.has_queue(&self.token.keys) {
            return false;
        }
        self.subscribe().await
    }

    /// Joins this mutex's waiters of the lock and waits for the handoff
    /// subscription; `true` when it is in place (the acquisition can queue
    /// in Redis), `false` when it failed (the acquisition polls).
    pub(super) async fn subscribe(&mut self) -> bool {
        let inner = self.inner;
        let mut ticket = inner
            .waiters
            .join_handoff(&self.token.keys, &self.token.token);
        let limit = inner
            .settings
            .command_timeout
            .min(self.schedule.left(Instant::now()));
        let ready = ticket.ready(limit).await;
        self.ticket = Some(ticket);
        if !ready {
            self.notify = false;
        }
        ready
    }

    /// Runs one step: `Some(guard)` when it took the lock, `None` when the
    /// lock is busy or Redis could not be asked (transient), an error
    /// otherwise.
    pub(super) async fn step(&mut self, step: Step) -> Result<Option<LockGuard>, Error> {
        if step == Step::Claim {
            if let Some(guard) = self.claim_without_confirming() {
                return Ok(Some(guard));
            }
        }
        self.attempt(step).await
    }

    /// A lock handed to this waiter, used without a round trip when the
    /// script that handed it over counted this waiter's subscription (see
    /// `channel.rs`) and the claim leaves enough validity (see `queue.rs`).
    pub(super) fn claim_without_confirming(&mut self) -> Option<LockGuard> {
        let (joined, epoch) = self.joined?;
        let plan = &self.plan;
        if !plan.auto_renew
            || plan.fencing
            || plan.confirm.is_some()
            || !self.inner.epoch.unchanged(epoch)
            || !self.ticket.as_ref().is_some_and(|t| t.counted())
        {
            return None;
        }
        let ttl = Duration::from_millis(plan.ttl_ms);
        queue::usable_without_confirming(joined, ttl, Instant::now())?;
        tracing::debug!(key = %plan.key, "lock handed over by its releaser");
        Some(self.taken(None, joined, true))
    }

    /// One attempt: `Some(guard)` when it took the lock, `None` when the lock
    /// is busy or Redis could not be asked (transient), an error otherwise.
    pub(super) async fn attempt(&mut self, step: Step) -> Result<Option<LockGuard>, Error> {
        if self.attempts > 0 && self.inner.is_shut_down() {
            return Err(Error::Shutdown {
                key: self.plan.key.clone(),
            });
        }
        if !std::mem::take(&mut self.recheck) {
            self.attempts += 1;
        }
        self.token.armed = true;
        let sent_at = Instant::now();
        let fast = step == Step::Attempt && self.attempts == 1;
        let epoch = self.inner.epoch.read();
        if step != Step::Attempt && self.joined.is_none() {
            // The first attempt that may queue this acquisition.
            self.joined = Some((sent_at, epoch));
            let inner = self.inner;
            self.token.spot = Some(QueueSpot::new(
                inner.waiters.id(),
                Duration::from_millis(self.plan.ttl_ms),
                &self.token.token,
                self.plan.fencing,
            ));
        }
        let token = &self.token;
        let queueing = match (step, &token.spot) {
            (Step::Attempt, _) | (_, None) => Queueing::No,
            // The first of this mutex's waiters learns the holder's lease,
            // and polls when it may have ended.
            (Step::Join, Some(spot)) => Queueing::Join {
                spot,
                holder_ttl: self.ticket.as_ref().is_none_or(|t| t.is_first()),
            },
            (Step::Poll | Step::Claim, Some(spot)) => Queueing::Poll(spot),
        };
        let result = attempt(
            self.inner,
            &self.plan,
            &token.keys,
            &token.token,
            fast,
            queueing,
        )
        .await;
        self.answered(result, step, sent_at, epoch)
    }

    /// What an attempt sent at `sent_at` (in Sentinel epoch `epoch`) as
    /// `step` found: `Some(guard)` when it took the lock, `None` when the
    /// lock is busy or the answer was a transient error, an error otherwise.
    fn answered(
        &mut self,
        result: Result<Attempt, Error>,
        step: Step,
        sent_at: Instant,
        epoch: u64,
    ) -> Result<Option<LockGuard>, Error> {
        match result {
            Ok(Attempt::Taken(_)) if !self.inner.epoch.unchanged(epoch) => {
                self.taken_while_master_changed();
                Ok(None)
            }
            Ok(Attempt::Taken(fencing_token)) => {
                let key = &self.plan.key;
                tracing::debug!(key = %key, attempts = self.attempts, ?fencing_token, "lock acquired");
                Ok(Some(self.taken(fencing_token, sent_at, false)))
            }
            Ok(Attempt::Busy(pttl)) => {
                self.token.armed = self.uncertain || self.joined.is_some();
                self.holder_ttl = pttl;
                self.last_error = None;
                self.refreshed(step, sent_at);
                Ok(None)
            }
            Ok(Attempt::Queued) => {
                self.holder_ttl = None;
                self.last_error = None;
                self.refreshed(step, sent_at);
                Ok(None)
            }
            Err(mut e @ Error::NotReplicated { .. }) => {
                // Written on the master, not confirmed: undone. The token
                // stays armed, so dropping the acquisition queues its release.
                e.set_key(&self.plan.key);
                let key = &self.plan.key;
                tracing::debug!(key = %key, error = %e, "lock taken but not replicated; releasing it");
                Err(e)
            }
            Err(mut e) if e.is_transient() => {
                self.uncertain = true;
                e.set_key(&self.plan.key);
                let key = &self.plan.key;
                tracing::debug!(key = %key, attempts = self.attempts, error = %e, "lock attempt failed");
                self.holder_ttl = None;
                self.last_error = Some(e);
                Ok(None)
            }
            Err(mut e) => {
                e.set_key(&self.plan.key);
                Err(e)
            }
        }
    }

    /// Sentinel: the master changed while an attempt that took the lock was
    /// out (or before, and the client was still moving): it may have been
    /// written on the old master. It does not count; the next attempt (same
    /// token) goes to the new master. The token stays armed, so giving up
    /// releases it.
    fn taken_while_master_changed(&mut self) {
        self.uncertain = true;
        let key = &self.plan.key;
        tracing::debug!(key = %key, "lock taken while the master changed; trying again on the new master");
        self.holder_ttl = None;
        self.last_error = Some(Error::Unavailable {
            key: key.clone(),
            source: fred::error::Error::new(
                fred::error::ErrorKind::Sentinel,
                "the master changed (Sentinel failover) while the lock was being taken",
            ),
        });
    }

    /// An attempt sent at `at` that queues (`step` other than `Attempt`)
    /// was answered: the lock's queue in Redis lives on from then.
    pub(super) fn refreshed(&self, step: Step, at: Instant) {
        if step != Step::Attempt {
            if let Some(ticket) = &self.ticket {
                ticket.refreshed(at);
            }
        }
    }

    /// Waits for the next step per the schedule, or gives up with the
    /// error that ends the call.
    pub(super) async fn wait(
        &mut self,
        observed: &mut crate::engine::metrics::Acquisition,
    ) -> Result<Step, Error> {
        observed.waiting();
        if self.notify && self.ticket.is_none() {
            // The first wait: subscribe, then queue at once (a release may
            // have come meanwhile; the attempt takes a free lock).
            self.next_wait()?;
            if self.subscribe().await {
                self.recheck = true;
                return Ok(Step::Join);
            }
        }
        if !self.notify {
            // No queueing (notifications off, or the subscription failed):
            // poll.
            let wait = self.next_wait()?;
            tokio::time::sleep(wait).await;
            self.schedule.waited(false);
            return Ok(Step::Attempt);
        }
        loop {
            // Queued: at least every QUEUE_REFRESH, the process's first
            // waiter polls and so keeps the queue alive.
            let due = self.next_wait()?;
            let wait = due.min(queue::QUEUE_REFRESH);
            let since = Instant::now();
            let Some(ticket) = &self.ticket else {
                return Ok(Step::Poll);
            };
            match ticket.wait_for(wait).await {
                Wake::HandedOff => return Ok(Step::Claim),
                Wake::Woken => return Ok(Step::Poll),
                Wake::TimedOut => {
                    if wait == due {
                        self.schedule.waited(false);
                    }
                    // One waiter per process polls, and only while no
                    // hand-off reaches this process: hand-offs mean the
                    // queue moves.
                    if ticket.should_poll(since, queue::QUEUE_REFRESH) {
                        return Ok(Step::Poll);
                    }
                }
            }
        }
    }

    /// How long to wait before the next attempt, or the error that ends the
    /// call.
    pub(super) fn next_wait(&mut self) -> Result<Duration, Error> {
        match self.schedule.next(Instant::now(), self.holder_ttl) {
            Next::Wait(wait) => Ok(wait),
            Next::GiveUp => Err(self.give_up()),
        }
    }

    /// The error of a call that ran out of time: the last transient error
    /// when the last attempt had one, else `NotObtained`.
    pub(super) fn give_up(&mut self) -> Error {
        self.last_error
            .take()
            .unwrap_or_else(|| Error::NotObtained {
                key: self.plan.key.clone(),
                attempts: self.attempts,
                waited: self.started.elapsed(),
            })
    }

    /// The guard of the lock just taken with this acquisition's token; its
    /// lease counts from `sent_at`. `handed_over`: taken without confirming,
    /// valid for the claim TTL until the renewer extends it.
    pub(super) fn taken(
        &mut self,
        fencing_token: Option<u64>,
        sent_at: Instant,
        handed_over: bool,
    ) -> LockGuard {
        self.token.armed = false;
        if let Some(ticket) = self.ticket.take() {
            ticket.acquired();
        }
        let keys = std::mem::take(&mut self.token.keys);
        let metrics = self.inner.settings.metrics.lock(&self.plan.key);
        let ttl = Duration::from_millis(self.plan.ttl_ms);
        let lease = Arc::new(LeaseCore::new(
            std::mem::take(&mut self.plan.key),
            keys,
            std::mem::take(&mut self.token.token),
            fencing_token,
            ttl,
            sent_at,
            self.plan.confirm,
            metrics,
        ));
        if handed_over {
            lease.limit_validity(sent_at, queue::claim(ttl));
            self.inner
                .renewer
                .track_at(&lease, queue::first_renewal(sent_at, ttl));
        } else if self.plan.auto_renew {
            self.inner.renewer.track(&lease, sent_at);
        }
        LockGuard::new(Arc::clone(self.inner), lease, self.plan.auto_renew)
    }
}
