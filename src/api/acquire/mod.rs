//! [`Acquire`]: one acquisition with per-call options, and the loop that
//! runs it: attempt, then wait per the [`Schedule`], until the lock is taken
//! or the deadline passes.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the [`Acquire`] builder and the loop's entry (`run`) |
//! | `plan.rs` | an acquisition's settings, checked |
//! | `attempt.rs` | one attempt, and the token armed until a guard owns it |
//! | `acquisition.rs` | the state between attempts: waiting, hand-off, giving up |

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::guard::LockGuard;
use crate::engine::inner::Inner;
use crate::policy::error::Error;
use crate::policy::retry::RetryStrategy;

mod acquisition;
mod attempt;
mod plan;

use acquisition::Acquisition;
use plan::Plan;

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

/// Runs an acquisition (unboxed: `lock` and `try_lock` await this directly).
pub(crate) async fn run(req: Acquire) -> Result<LockGuard, Error> {
    let mut observed =
        crate::engine::metrics::Acquisition::start(&req.inner.settings.metrics, &req.key);
    let result = acquire(req, &mut observed).await;
    observed.finish(result)
}

/// What an acquisition does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
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
