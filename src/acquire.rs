//! [`Acquire`]: one acquisition with per-call options, and the loop that
//! runs it: attempt, then wait per the [`Schedule`], until the lock is taken
//! or the deadline passes.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::confirm::MinReplicas;
use crate::error::Error;
use crate::guard::LockGuard;
use crate::inner::Inner;
use crate::keys::LockKeys;
use crate::lease::LeaseCore;
use crate::limits::{ttl_millis, validate_key};
use crate::notify::Ticket;
use crate::retry::RetryStrategy;
use crate::schedule::{Next, Schedule};
use crate::scripts::{self, Acquired};

/// One acquisition with per-call options, made by
/// [`DistributedMutex::acquire`](crate::DistributedMutex::acquire). `.await`
/// it to get the [`LockGuard`].
///
/// The returned future is `Send + 'static`, so it can be spawned.
///
/// # Cancel safety
/// Dropping the future at any point leaves nothing locked: if an attempt may
/// have set the lock, a release of this acquisition's token is queued.
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
        }
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
        Ok((
            Plan {
                key: req.key.clone(),
                ttl_ms,
                fencing: req.fencing.unwrap_or(settings.fencing),
                auto_renew: req.auto_renew.unwrap_or(settings.auto_renew),
                retry,
                timeout: req.timeout,
                confirm,
            },
            keys,
        ))
    }
}

/// A token that may have been set in Redis and has no guard yet. Dropped
/// while armed (the acquisition was cancelled, or failed with an unknown
/// outcome), it queues a release of its token.
struct ArmedToken<'a> {
    inner: &'a Inner,
    /// The lock's Redis names (moved to the guard on success).
    keys: LockKeys,
    token: String,
    armed: bool,
}

impl Drop for ArmedToken<'_> {
    fn drop(&mut self) {
        if self.armed {
            let keys = std::mem::take(&mut self.keys);
            let token = std::mem::take(&mut self.token);
            self.inner.releases.queue(keys, token);
        }
    }
}

/// What one attempt found.
enum Attempt {
    Taken(Option<u64>),
    Busy(Option<Duration>),
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
) -> Result<Attempt, Error> {
    let timeout = inner.settings.command_timeout;
    if let Some(wait) = plan.confirm {
        let client = inner.confirmer.client(&keys.lock, timeout).await?;
        let confirmed = scripts::acquire_confirmed(
            client,
            keys,
            plan.fencing,
            token,
            plan.ttl_ms,
            wait,
            timeout,
        );
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
        };
    }
    let client = &inner.client;
    if fast
        && !plan.fencing
        && scripts::set_nx(client, &keys.lock, token, plan.ttl_ms, timeout).await?
    {
        return Ok(Attempt::Taken(None));
    }
    let answer = scripts::acquire(client, keys, plan.fencing, token, plan.ttl_ms, timeout);
    Ok(match answer.await? {
        Acquired::Yes { fencing_token } => Attempt::Taken(fencing_token),
        Acquired::No { pttl } => Attempt::Busy(pttl),
    })
}

/// Runs an acquisition (unboxed: `lock` and `try_lock` await this directly).
pub(crate) async fn run(req: Acquire) -> Result<LockGuard, Error> {
    let mut observed = crate::metrics::Acquisition::start(&req.inner.settings.metrics, &req.key);
    let result = acquire(req, &mut observed).await;
    observed.finish(result)
}

/// The acquisition itself; `observed` is told when it waits.
async fn acquire(
    req: Acquire,
    observed: &mut crate::metrics::Acquisition,
) -> Result<LockGuard, Error> {
    let (plan, keys) = Plan::check(&req)?;
    let inner = &req.inner;
    if inner.is_shut_down() {
        return Err(Error::Shutdown { key: plan.key });
    }
    inner.ensure_background();
    let started = Instant::now();
    // A release of this key that this mutex queued (a guard dropped just
    // before) is sent first, so it does not stand in our own way.
    let command_timeout = inner.settings.command_timeout;
    inner.releases.sent(&keys.lock, command_timeout).await;

    let mut acquisition = Acquisition::new(inner, plan, keys, started);
    // Waiters of this key already queued in this process go first: join the
    // queue behind them instead of barging in with an attempt.
    let mut attempt_now = !acquisition.queue_behind_local_waiters();
    loop {
        if attempt_now {
            if let Some(guard) = acquisition.attempt().await? {
                return Ok(guard);
            }
        }
        acquisition.wait(observed).await?;
        attempt_now = true;
    }
}

/// The state of one acquisition between its attempts.
struct Acquisition<'a> {
    inner: &'a Arc<Inner>,
    plan: Plan,
    started: Instant,
    schedule: Schedule,
    /// Whether waits end early on release messages.
    notify: bool,
    token: ArmedToken<'a>,
    /// The place in the local wait queue, once the acquisition waits.
    ticket: Option<Ticket<'a>>,
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
        let token = ArmedToken {
            inner,
            keys,
            token: uuid::Uuid::new_v4().to_string(),
            armed: false,
        };
        Acquisition {
            notify: inner.settings.notifications && schedule.may_wait(started),
            inner,
            plan,
            started,
            schedule,
            token,
            ticket: None,
            attempts: 0,
            recheck: false,
            uncertain: false,
            holder_ttl: None,
            last_error: None,
        }
    }

    /// Joins the local queue of the key if it has waiters; `true` if so.
    fn queue_behind_local_waiters(&mut self) -> bool {
        let waiters = &self.inner.waiters;
        if self.notify && waiters.has_waiters(&self.token.keys.lock) {
            self.ticket = Some(waiters.join(&self.token.keys));
            return true;
        }
        false
    }

    /// One attempt: `Some(guard)` when it took the lock, `None` when the lock
    /// is busy or Redis could not be asked (transient), an error otherwise.
    async fn attempt(&mut self) -> Result<Option<LockGuard>, Error> {
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
        let fast = self.attempts == 1 && self.ticket.is_none();
        let token = &self.token;
        let epoch = self.inner.epoch.read();
        let result = attempt(self.inner, &self.plan, &token.keys, &token.token, fast).await;
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
                self.token.armed = false;
                if let Some(ticket) = self.ticket.take() {
                    ticket.acquired();
                }
                let key = &self.plan.key;
                tracing::debug!(key = %key, attempts = self.attempts, ?fencing_token, "lock acquired");
                Ok(Some(self.guard(fencing_token, sent_at)))
            }
            Ok(Attempt::Busy(pttl)) => {
                self.token.armed = self.uncertain;
                self.holder_ttl = pttl;
                self.last_error = None;
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

    /// Waits for the next attempt per the schedule, or gives up with the
    /// error that ends the call.
    async fn wait(&mut self, observed: &mut crate::metrics::Acquisition) -> Result<(), Error> {
        let wait = match self.schedule.next(Instant::now(), self.holder_ttl) {
            Next::Wait(wait) => wait,
            Next::GiveUp => return Err(self.give_up()),
        };
        observed.waiting();
        if !self.notify {
            tokio::time::sleep(wait).await;
            self.schedule.waited(false);
            return Ok(());
        }
        if self.ticket.is_none() {
            let mut ticket = self.inner.waiters.join(&self.token.keys);
            let limit =
                (self.inner.settings.command_timeout).min(self.schedule.left(Instant::now()));
            let subscribed = ticket.subscribed(limit).await;
            self.ticket = Some(ticket);
            if subscribed {
                // A release may have come before the subscription: check
                // again at once.
                self.recheck = true;
                return Ok(());
            }
        }
        if let Some(ticket) = &self.ticket {
            let woken = ticket.wait(wait).await;
            self.schedule.waited(woken);
        }
        Ok(())
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

    /// The guard of the lock just taken with this acquisition's token.
    fn guard(&mut self, fencing_token: Option<u64>, sent_at: Instant) -> LockGuard {
        let keys = std::mem::take(&mut self.token.keys);
        let metrics = self.inner.settings.metrics.lock(&self.plan.key);
        let lease = Arc::new(LeaseCore::new(
            std::mem::take(&mut self.plan.key),
            keys,
            std::mem::take(&mut self.token.token),
            fencing_token,
            Duration::from_millis(self.plan.ttl_ms),
            sent_at,
            self.plan.confirm,
            metrics,
        ));
        if self.plan.auto_renew {
            self.inner.renewer.track(&lease, sent_at);
        }
        LockGuard::new(Arc::clone(self.inner), lease, self.plan.auto_renew)
    }
}
