//! [`Acquire`]: one acquisition with per-call options, and the loop that
//! runs it: attempt, then wait per the [`Schedule`], until the lock is taken
//! or the deadline passes.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;

use crate::api::guard::LockGuard;
use crate::engine::inner::Inner;
use crate::engine::lease::LeaseCore;
use crate::engine::notify::{Ticket, Wake};
use crate::engine::queue;
use crate::policy::error::Error;
use crate::policy::limits::{ttl_millis, validate_key};
use crate::policy::retry::RetryStrategy;
use crate::policy::schedule::{Next, Schedule};
use crate::protocol::confirm::MinReplicas;
use crate::protocol::keys::LockKeys;
use crate::protocol::scripts::{self, Acquired, Ask, QueueSpot, Queueing};

/// One acquisition with per-call options, made by
/// [`DistributedMutex::acquire`](crate::DistributedMutex::acquire). `.await`
/// it to get the [`LockGuard`].
///
/// The returned future is `Send + 'static`, so it can be spawned.
///
/// # Cancel safety
/// Dropping the future at any point leaves nothing locked and no place in the
/// wait queue: if an attempt may have set the lock, or queued the
/// acquisition, a release of its token is queued, which also takes it out of
/// the queue and passes the lock on if it was just handed to it.
#[must_use = "an acquisition does nothing until it is awaited"]
pub struct Acquire {
    inner: Arc<Inner>,
    key: String,
    ttl: Option<Duration>,
    retry: Option<RetryStrategy>,
    timeout: Option<Duration>,
    auto_renew: Option<bool>,
    fencing: Option<bool>,
    min_replicas: Option<(u32, Duration)>,
    holder: Option<String>,
}

impl Acquire {
    pub(crate) fn new(inner: Arc<Inner>, key: String) -> Self {
        Acquire {
            inner,
            key,
            ttl: None,
            retry: None,
            timeout: None,
            auto_renew: None,
            fencing: None,
            min_replicas: None,
            holder: None,
        }
    }

    /// The holder label this lock carries, instead of the mutex's (see
    /// [`Builder::holder`](crate::Builder::holder)); a bad label fails the
    /// call with [`Error::Config`] before anything is sent.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let guard = mutex.acquire("nightly-report").holder("cron@db-2").await?;
    /// # drop(guard); Ok(()) }
    /// ```
    pub fn holder(mut self, label: impl Into<String>) -> Self {
        self.holder = Some(label.into());
        self
    }

    /// Whether this guard renews its lease while it lives, instead of the
    /// mutex's setting (default on).
    pub fn auto_renew(mut self, on: bool) -> Self {
        self.auto_renew = Some(on);
        self
    }

    /// Takes this lock with a fencing token (see [`LockGuard::fencing_token`]).
    pub fn fencing(mut self) -> Self {
        self.fencing = Some(true);
        self
    }

    /// Confirms this lock's writes (the acquisition, its renewals and
    /// extensions) with `WAIT replicas timeout`, instead of the mutex's
    /// setting; `replicas == 0` turns confirmation off for this lock. See
    /// [`Builder::min_replicas`](crate::Builder::min_replicas) for what it
    /// guarantees and costs.
    ///
    /// When the acquisition's write is not confirmed by `replicas` replicas
    /// within `timeout`, the call fails with [`Error::NotReplicated`] (at
    /// once, without trying again) and a release of its token is queued.
    /// A `timeout` of zero or over one hour fails the call with
    /// [`Error::Config`] before anything is sent.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// use distributed_mutex::Error;
    /// use std::time::Duration;
    ///
    /// match mutex
    ///     .acquire("ledger:close-day")
    ///     .min_replicas(1, Duration::from_millis(200))
    ///     .await
    /// {
    ///     Ok(guard) => { /* written on the master and one replica at least */ }
    ///     Err(Error::NotReplicated { acked, .. }) => eprintln!("only {acked} replica(s) in sync"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn min_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.min_replicas = Some((replicas, timeout));
        self
    }

    /// The lease for this lock, instead of the mutex's.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How to wait for this lock, instead of the mutex's retry strategy.
    pub fn retry(mut self, retry: RetryStrategy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The longest time to wait for the lock to become free, on top of the
    /// retry strategy (whichever ends first). At least one attempt is always
    /// made, so `Duration::ZERO` means "one attempt"; `Duration::MAX` leaves
    /// the strategy alone. The call returns within this (or the strategy's
    /// budget) plus one command timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl IntoFuture for Acquire {
    type Output = Result<LockGuard, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'static>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self))
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("auto_renew", &self.auto_renew)
            .field("fencing", &self.fencing)
            .field("min_replicas", &self.min_replicas)
            .field("holder", &self.holder)
            .finish()
    }
}

/// An acquisition's settings, checked.
struct Plan {
    key: String,
    ttl_ms: u64,
    fencing: bool,
    auto_renew: bool,
    retry: RetryStrategy,
    timeout: Option<Duration>,
    /// Replica confirmation of this lock's writes.
    confirm: Option<MinReplicas>,
    /// The holder label its token carries.
    holder: Option<String>,
}

impl Plan {
    /// The checked settings, and the lock's Redis names.
    fn check(req: &Acquire) -> Result<(Plan, LockKeys), Error> {
        let settings = &req.inner.settings;
        let ttl_ms = ttl_millis(&req.key, req.ttl.unwrap_or(settings.ttl))?;
        validate_key(&req.key)?;
        let retry = req.retry.unwrap_or(settings.retry);
        retry.validate()?;
        let confirm = match req.min_replicas {
            Some((replicas, timeout)) => MinReplicas::check(replicas, timeout)?,
            None => settings.min_replicas,
        };
        let keys = LockKeys::new(&settings.prefix, &req.key);
        let holder = req.holder.as_ref().or(settings.holder.as_ref()).cloned();
        if let Some(label) = &holder {
            crate::protocol::holder::validate(label)?;
        }
        Ok((
            Plan {
                key: req.key.clone(),
                ttl_ms,
                fencing: req.fencing.unwrap_or(settings.fencing),
                auto_renew: req.auto_renew.unwrap_or(settings.auto_renew),
                retry,
                timeout: req.timeout,
                confirm,
                holder,
            },
            keys,
        ))
    }
}

/// A token that may have been set in Redis (or queued) and has no guard
/// yet. Dropped while armed (the acquisition was cancelled, gave up while
/// queued, or failed with an unknown outcome), it queues a release of its
/// token that also takes it out of the lock's queue.
struct ArmedToken<'a> {
    inner: &'a Inner,
    /// The lock's Redis names (moved to the guard on success).
    keys: LockKeys,
    token: String,
    /// The acquisition's place in the lock's queue, made by its first attempt
    /// that may queue it: its member is removed by the release, which also
    /// passes the lock on if it was handed to this token.
    spot: Option<QueueSpot>,
    armed: bool,
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
enum Attempt {
    Taken(Option<u64>),
    Busy(Option<Duration>),
    /// Busy, and this acquisition joined the lock's queue.
    Queued,
}

/// One attempt: a plain `SET NX` when `fast`, falling back to the acquire
/// script when the key exists (it may be our own re-sent SET, and the script
/// also returns the holder's TTL).
async fn attempt(
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
        // On one server, first attempts that arrive together go as one call.
        let set = if client.is_clustered() {
            scripts::set_nx(client, keys, ask, timeout).await?
        } else {
            (inner.first_attempts)
                .set_nx(&keys.lock, token, plan.ttl_ms)
                .await?
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

/// Runs an acquisition (unboxed: `lock` and `try_lock` await this directly).
pub(crate) async fn run(req: Acquire) -> Result<LockGuard, Error> {
    let mut observed =
        crate::engine::metrics::Acquisition::start(&req.inner.settings.metrics, &req.key);
    let result = acquire(req, &mut observed).await;
    observed.finish(result)
}

/// What an acquisition does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// An attempt that does not queue: the first one (a plain `SET NX`),
    /// or a poll without notifications.
    Attempt,
    /// An attempt that joins the lock's queue when the lock is held.
    Join,
    /// A queued waiter's poll: an attempt that joins the queue again if
    /// this waiter is no longer in it.
    Poll,
    /// The lock was handed to this waiter.
    Claim,
}

/// The acquisition itself; `observed` is told when it waits.
async fn acquire(
    req: Acquire,
    observed: &mut crate::engine::metrics::Acquisition,
) -> Result<LockGuard, Error> {
    let (plan, keys) = Plan::check(&req)?;
    let inner = &req.inner;
    if inner.is_shut_down() {
        return Err(Error::Shutdown { key: plan.key });
    }
    inner.ensure_background();
    let started = Instant::now();
    // How hand-offs travel (a cluster asks its servers once).
    inner.waiters.settle().await;
    // A release of this key that this mutex queued (a guard dropped just
    // before) is sent first, so it does not stand in our own way.
    let command_timeout = inner.settings.command_timeout;
    inner.releases.sent(&keys.lock, command_timeout).await;

    let mut acquisition = Acquisition::new(inner, plan, keys, started);
    // With waiters of this lock already queued from this process, the lock
    // is contended: join the queue at once (one command) instead of a
    // `SET NX` that would fail first.
    let mut step = if acquisition.join_local_queue().await {
        Step::Join
    } else {
        Step::Attempt
    };
    loop {
        if let Some(guard) = acquisition.step(step).await? {
            return Ok(guard);
        }
        step = acquisition.wait(observed).await?;
    }
}

/// The state of one acquisition between its attempts.
struct Acquisition<'a> {
    inner: &'a Arc<Inner>,
    plan: Plan,
    started: Instant,
    schedule: Schedule,
    /// Whether this acquisition queues and waits for messages.
    notify: bool,
    token: ArmedToken<'a>,
    /// The place among this mutex's waiters of the lock, once it waits.
    ticket: Option<Ticket<'a>>,
    /// When (and in which Sentinel epoch) this acquisition first sent a
    /// command that may queue it: any hand-off to it comes later.
    joined: Option<(Instant, u64)>,
    attempts: u32,
    /// The next attempt is the re-check right after subscribing, which
    /// belongs to the attempt before it.
    recheck: bool,
    /// An attempt ended without a definite answer: its SET may still land,
    /// so the token must be released if we give up.
    uncertain: bool,
    holder_ttl: Option<Duration>,
    last_error: Option<Error>,
}

impl<'a> Acquisition<'a> {
    fn new(inner: &'a Arc<Inner>, plan: Plan, keys: LockKeys, started: Instant) -> Self {
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
    async fn join_local_queue(&mut self) -> bool {
        let waiters = &self.inner.waiters;
        if !self.notify || !waiters.has_queue(&self.token.keys) {
            return false;
        }
        self.subscribe().await
    }

    /// Joins this mutex's waiters of the lock and waits for the handoff
    /// subscription; `true` when it is in place (the acquisition can queue
    /// in Redis), `false` when it failed (the acquisition polls).
    async fn subscribe(&mut self) -> bool {
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
    async fn step(&mut self, step: Step) -> Result<Option<LockGuard>, Error> {
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
    fn claim_without_confirming(&mut self) -> Option<LockGuard> {
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
    async fn attempt(&mut self, step: Step) -> Result<Option<LockGuard>, Error> {
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
        match result {
            Ok(Attempt::Taken(_)) if !self.inner.epoch.unchanged(epoch) => {
                // Sentinel: the master changed while this attempt was out (or
                // before, and the client was still moving): it may have been
                // written on the old master. It does not count; the next
                // attempt (same token) goes to the new master. The token
                // stays armed, so giving up releases it.
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

    /// An attempt sent at `at` that queues (`step` other than `Attempt`)
    /// was answered: the lock's queue in Redis lives on from then.
    fn refreshed(&self, step: Step, at: Instant) {
        if step != Step::Attempt {
            if let Some(ticket) = &self.ticket {
                ticket.refreshed(at);
            }
        }
    }

    /// Waits for the next step per the schedule, or gives up with the
    /// error that ends the call.
    async fn wait(
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
    fn next_wait(&mut self) -> Result<Duration, Error> {
        match self.schedule.next(Instant::now(), self.holder_ttl) {
            Next::Wait(wait) => Ok(wait),
            Next::GiveUp => Err(self.give_up()),
        }
    }

    /// The error of a call that ran out of time: the last transient error
    /// when the last attempt had one, else `NotObtained`.
    fn give_up(&mut self) -> Error {
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
    fn taken(
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
