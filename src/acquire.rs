//! [`Acquire`]: one acquisition with per-call options, and the loop that
//! runs it: attempt, then wait per the [`Schedule`], until the lock is taken
//! or the deadline passes.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::inner::Inner;
use crate::keys::LockKeys;
use crate::lease::LeaseCore;
use crate::limits::{ttl_millis, validate_key};
use crate::notify::Ticket;
use crate::schedule::{Next, Schedule};
use crate::scripts::{self, Acquired};
use crate::{Error, LockGuard, RetryStrategy};

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
            .finish()
    }
}

/// An acquisition's settings, checked.
struct Plan {
    key: String,
    keys: LockKeys,
    ttl_ms: u64,
    fencing: bool,
    auto_renew: bool,
    retry: RetryStrategy,
    timeout: Option<Duration>,
}

impl Plan {
    fn check(req: &Acquire) -> Result<Plan, Error> {
        let settings = &req.inner.settings;
        let ttl_ms = ttl_millis(&req.key, req.ttl.unwrap_or(settings.ttl))?;
        validate_key(&req.key)?;
        let retry = req.retry.unwrap_or(settings.retry);
        retry.validate()?;
        Ok(Plan {
            key: req.key.clone(),
            keys: LockKeys::new(&settings.prefix, &req.key),
            ttl_ms,
            fencing: req.fencing.unwrap_or(settings.fencing),
            auto_renew: req.auto_renew.unwrap_or(settings.auto_renew),
            retry,
            timeout: req.timeout,
        })
    }
}

/// A token that may have been set in Redis and has no guard yet. Dropped
/// while armed (the acquisition was cancelled, or failed with an unknown
/// outcome), it queues a release of its token.
struct ArmedToken<'a> {
    inner: &'a Inner,
    keys: Option<LockKeys>,
    token: String,
    armed: bool,
}

impl ArmedToken<'_> {
    fn keys(&self) -> &LockKeys {
        self.keys.as_ref().expect("taken only by a guard")
    }
}

impl Drop for ArmedToken<'_> {
    fn drop(&mut self) {
        if let (true, Some(keys)) = (self.armed, self.keys.take()) {
            self.inner
                .releases
                .queue(keys, std::mem::take(&mut self.token));
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
async fn attempt(inner: &Inner, plan: &Plan, token: &str, fast: bool) -> Result<Attempt, Error> {
    let timeout = inner.settings.command_timeout;
    let client = &inner.client;
    if fast
        && !plan.fencing
        && scripts::set_nx(client, &plan.keys.lock, token, plan.ttl_ms, timeout).await?
    {
        return Ok(Attempt::Taken(None));
    }
    let answer = scripts::acquire(
        client,
        &plan.keys,
        plan.fencing,
        token,
        plan.ttl_ms,
        timeout,
    );
    Ok(match answer.await? {
        Acquired::Yes { fencing_token } => Attempt::Taken(fencing_token),
        Acquired::No { pttl } => Attempt::Busy(pttl),
    })
}

async fn run(req: Acquire) -> Result<LockGuard, Error> {
    let plan = Plan::check(&req)?;
    let inner = &req.inner;
    if inner.is_shut_down() {
        return Err(Error::Shutdown { key: plan.key });
    }
    inner.ensure_background();
    let started = Instant::now();
    let mut schedule = Schedule::new(started, plan.retry, plan.timeout);
    let command_timeout = inner.settings.command_timeout;
    // A release of this key that this mutex queued (a guard dropped just
    // before) is sent first, so it does not stand in our own way.
    inner.releases.sent(&plan.keys.lock, command_timeout).await;

    let notify = inner.settings.notifications && schedule.may_wait(started);
    let mut token = ArmedToken {
        inner,
        keys: Some(plan.keys.clone()),
        token: uuid::Uuid::new_v4().to_string(),
        armed: false,
    };
    let mut ticket: Option<Ticket<'_>> = None;
    // Waiters of this key already queued in this process go first: join the
    // queue behind them instead of barging in with an attempt.
    let mut attempt_now = true;
    if notify && inner.waiters.has_waiters(token.keys().lock.as_str()) {
        ticket = Some(inner.waiters.join(&plan.keys.lock));
        attempt_now = false;
    }
    let mut attempts = 0u32;
    // A re-check right after subscribing belongs to the attempt before it.
    let mut recheck = false;
    let mut holder_ttl = None;
    let mut last_error: Option<Error> = None;
    // Set once an attempt ended without a definite answer: its SET may still
    // land, so the token must be released if we give up.
    let mut uncertain = false;
    loop {
        if attempt_now {
            if attempts > 0 && inner.is_shut_down() {
                return Err(Error::Shutdown { key: plan.key });
            }
            if !std::mem::take(&mut recheck) {
                attempts += 1;
            }
            token.armed = true;
            let sent_at = Instant::now();
            let fast = attempts == 1 && ticket.is_none();
            match attempt(inner, &plan, &token.token, fast).await {
                Ok(Attempt::Taken(fencing_token)) => {
                    token.armed = false;
                    if let Some(ticket) = ticket.take() {
                        ticket.acquired();
                    }
                    tracing::debug!(key = %plan.key, attempts, ?fencing_token, "lock acquired");
                    return Ok(guard(inner, plan, &mut token, fencing_token, sent_at));
                }
                Ok(Attempt::Busy(pttl)) => {
                    token.armed = uncertain;
                    holder_ttl = pttl;
                    last_error = None;
                }
                Err(mut e) if e.is_transient() => {
                    uncertain = true;
                    e.set_key(&plan.key);
                    tracing::debug!(key = %plan.key, attempts, error = %e, "lock attempt failed");
                    holder_ttl = None;
                    last_error = Some(e);
                }
                Err(mut e) => {
                    e.set_key(&plan.key);
                    return Err(e);
                }
            }
        }
        attempt_now = true;

        let wait = match schedule.next(Instant::now(), holder_ttl) {
            Next::Wait(wait) => wait,
            Next::GiveUp => {
                return Err(last_error.unwrap_or(Error::NotObtained {
                    key: plan.key,
                    attempts,
                    waited: started.elapsed(),
                }))
            }
        };
        if !notify {
            tokio::time::sleep(wait).await;
            schedule.waited(false);
            continue;
        }
        let ticket = match &mut ticket {
            Some(ticket) => ticket,
            empty => {
                let joined = empty.insert(inner.waiters.join(&plan.keys.lock));
                let limit = command_timeout.min(schedule.left(Instant::now()));
                if joined.subscribed(limit).await {
                    // A release may have come before the subscription: check
                    // again at once.
                    recheck = true;
                    continue;
                }
                joined
            }
        };
        let woken = ticket.wait(wait).await;
        schedule.waited(woken);
    }
}

/// The guard of a lock just taken with `token`'s token.
fn guard(
    inner: &Arc<Inner>,
    plan: Plan,
    token: &mut ArmedToken<'_>,
    fencing_token: Option<u64>,
    sent_at: Instant,
) -> LockGuard {
    let keys = token.keys.take().expect("taken once");
    let lease = Arc::new(LeaseCore::new(
        plan.key,
        keys,
        std::mem::take(&mut token.token),
        fencing_token,
        Duration::from_millis(plan.ttl_ms),
        sent_at,
    ));
    if plan.auto_renew {
        inner.renewer.track(&lease, sent_at);
    }
    LockGuard::new(Arc::clone(inner), lease, plan.auto_renew)
}
