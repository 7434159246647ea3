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
use std::sync::Arc;
use std::time::Instant;

use crate::api::guard::LockGuard;
use crate::engine::inner::Inner;
use crate::engine::options::{into_future, option_setters, setters, Options};
use crate::policy::error::Error;

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
    options: Options,
    fencing: Option<bool>,
    holder: Option<String>,
}

impl Acquire {
    pub(crate) fn new(inner: Arc<Inner>, key: String) -> Self {
        Acquire {
            inner,
            key,
            options: Options::default(),
            fencing: None,
            holder: None,
        }
    }

    setters! {
        /// The holder label this lock carries, instead of the mutex's (see
        /// [`Builder::holder`](crate::Builder::holder)); a bad label fails the
        /// call with [`Error::Config`] before anything is sent.
        ///
        /// ```no_run
        /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
        /// let guard = mutex.acquire("nightly-report").holder("cron@db-2").await?;
        /// # drop(guard); Ok(()) }
        /// ```
        holder(label: impl Into<String>) => holder = Some(label.into());
    }

    option_setters! {
        /// Whether this guard renews its lease while it lives, instead of the
        /// mutex's setting (default on).
        auto_renew;
    }

    setters! {
        /// Takes this lock with a fencing token (see [`LockGuard::fencing_token`]).
        fencing() => fencing = Some(true);
    }

    option_setters! {
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
        min_replicas;
        /// The lease for this lock, instead of the mutex's.
        ttl;
        /// How to wait for this lock, instead of the mutex's retry strategy.
        retry;
        /// The longest time to wait for the lock to become free, on top of the
        /// retry strategy (whichever ends first). At least one attempt is always
        /// made, so `Duration::ZERO` means "one attempt"; `Duration::MAX` leaves
        /// the strategy alone. The call returns within this (or the strategy's
        /// budget) plus one command timeout.
        timeout;
    }
}

into_future!(Acquire => LockGuard, run);

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Acquire");
        out.field("key", &self.key);
        self.options.fields(&mut out, true);
        out.field("fencing", &self.fencing)
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
