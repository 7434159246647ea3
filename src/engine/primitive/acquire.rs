//! The attempt loop of a semaphore permit or a read-write lock guard: the
//! lock's loop (`api/acquire.rs`) for places in sorted sets. An attempt runs the
//! primitive's acquire script; between attempts the acquisition waits per
//! the [`Schedule`] (capped by the first blocking place's expiry), woken
//! early by release messages through the mutex's local FIFO wait queues.
//!
//! Cancel safety: from the first attempt on, the token is "armed": dropped
//! before a guard owns it (cancelled, or failed after an attempt whose
//! outcome is unknown), it queues a release of the token, which also
//! withdraws a waiting writer's intent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::inner::Inner;
use crate::engine::lease::LeaseCore;
use crate::engine::notify::Ticket;
use crate::engine::options::Options;
use crate::engine::primitive::guard::Held;
use crate::engine::primitive::scripts::{self, Attempt, Taken};
use crate::engine::primitive::{Target, MAX_PERMITS};
use crate::engine::release::places::Places as Job;
use crate::policy::error::Error;
use crate::policy::limits::{ttl_millis, validate_key};
use crate::policy::retry::RetryStrategy;
use crate::policy::schedule::{Next, Schedule};

/// The longest a waiting writer waits between two attempts: each attempt
/// refreshes its intent.
const WRITER_POLL: Duration = Duration::from_millis(500);

/// How long a waiting writer's intent lasts after its last attempt: long
/// enough for the next attempt (one poll and one command timeout later),
/// short enough that readers are not blocked long by a writer that died.
pub(crate) fn intent_ttl(command_timeout: Duration) -> Duration {
    command_timeout + WRITER_POLL * 2
}

/// Checks what can be checked before anything is sent.
fn check(inner: &Inner, target: &Target, options: &Options) -> Result<(u64, RetryStrategy), Error> {
    validate_key(&target.name)?;
    let ttl_ms = ttl_millis(&target.name, options.ttl.unwrap_or(inner.settings.ttl))?;
    let retry = options.retry.unwrap_or(inner.settings.retry);
    retry.validate()?;
    if let Attempt::Permit { permits } = target.attempt {
        if permits == 0 || permits > MAX_PERMITS {
            return Err(Error::Config {
                message: format!(
                    "semaphore `{}` has {permits} permits; give it between 1 and {MAX_PERMITS}",
                    crate::policy::error::display_key(&target.name)
                ),
                source: None,
            });
        }
    }
    Ok((ttl_ms, retry))
}

/// A token that may hold a place and has no guard yet: dropped while armed,
/// it queues a release.
struct Armed<'a> {
    inner: &'a Inner,
    job: Job,
    armed: bool,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.releases.queue_places(self.job.clone(), None);
        }
    }
}

/// Runs an acquisition of `target` to its end.
pub(crate) async fn run(
    inner: Arc<Inner>,
    mut target: Target,
    options: Options,
) -> Result<Held, Error> {
    let (ttl_ms, retry) = check(&inner, &target, &options)?;
    if inner.is_shut_down() {
        return Err(Error::Shutdown { key: target.name });
    }
    inner.ensure_background();
    inner.waiters.settle().await;
    let started = Instant::now();
    let schedule = Schedule::new(started, retry, options.timeout);
    let may_wait = schedule.may_wait(started);
    if let Attempt::Write { intent_ms } = &mut target.attempt {
        // A try leaves no intent behind: it must not block readers.
        *intent_ms = if may_wait {
            intent_ttl(inner.settings.command_timeout).as_millis() as u64
        } else {
            0
        };
    }
    let job = Job {
        name: target.name.clone(),
        sets: target.release_sets.clone(),
        token: uuid::Uuid::new_v4().to_string(),
        wakes: target.wakes.clone(),
    };
    let mut run = Run {
        notify: inner.settings.notifications && may_wait,
        inner: &inner,
        target: &target,
        ttl_ms,
        schedule,
        started,
        token: Armed {
            inner: &inner,
            job,
            armed: false,
        },
        ticket: None,
        attempts: 0,
        recheck: false,
        uncertain: false,
        holder_ttl: None,
        last_error: None,
    };
    let mut attempt_now = !run.queue_behind_local_waiters();
    loop {
        if attempt_now {
            if let Some(sent_at) = run.attempt().await? {
                let auto_renew = options.auto_renew.unwrap_or(inner.settings.auto_renew);
                return Ok(run.held(sent_at, auto_renew));
            }
        }
        run.wait().await?;
        attempt_now = true;
    }
}

/// The state of one acquisition between its attempts.
struct Run<'a> {
    inner: &'a Arc<Inner>,
    target: &'a Target,
    ttl_ms: u64,
    schedule: Schedule,
    started: Instant,
    notify: bool,
    token: Armed<'a>,
    ticket: Option<Ticket<'a>>,
    attempts: u32,
    /// The next attempt re-checks right after subscribing.
    recheck: bool,
    /// An attempt's outcome is unknown: giving up must release the token.
    uncertain: bool,
    holder_ttl: Option<Duration>,
    last_error: Option<Error>,
}

impl<'a> Run<'a> {
    fn queue_behind_local_waiters(&mut self) -> bool {
        let waiters = &self.inner.waiters;
        if self.notify && waiters.has_waiters(&self.target.waiting) {
            self.ticket = Some(waiters.join(&self.target.waiting));
            return true;
        }
        false
    }

    /// One attempt: `Some(sent_at)` when the place was taken, `None` when
    /// busy or Redis could not be asked (transient).
    async fn attempt(&mut self) -> Result<Option<Instant>, Error> {
        let name = &self.target.name;
        if self.attempts > 0 && self.inner.is_shut_down() {
            return Err(Error::Shutdown { key: name.clone() });
        }
        if !std::mem::take(&mut self.recheck) {
            self.attempts += 1;
        }
        self.token.armed = true;
        let sent_at = Instant::now();
        let epoch = self.inner.epoch.read();
        let result = scripts::acquire(
            &self.inner.client,
            name,
            &self.target.sets,
            self.target.attempt,
            &self.token.job.token,
            self.ttl_ms,
            self.inner.settings.command_timeout,
        )
        .await;
        match result {
            Ok(Taken::Yes) if !self.inner.epoch.unchanged(epoch) => {
                self.taken_during_failover();
                Ok(None)
            }
            Ok(Taken::Yes) => {
                self.taken();
                Ok(Some(sent_at))
            }
            Ok(Taken::No(wait)) => {
                // A waiting writer's intent is in Redis: release it if we
                // give up.
                let intent =
                    matches!(self.target.attempt, Attempt::Write { intent_ms } if intent_ms > 0);
                self.token.armed = self.uncertain || intent;
                self.holder_ttl = wait;
                self.last_error = None;
                Ok(None)
            }
            Err(mut e) if e.is_transient() => {
                self.uncertain = true;
                e.set_key(name);
                tracing::debug!(name = %name, attempts = self.attempts, error = %e, "attempt failed");
                self.holder_ttl = None;
                self.last_error = Some(e);
                Ok(None)
            }
            Err(mut e) => {
                e.set_key(name);
                Err(e)
            }
        }
    }

    /// The place was taken while the master changed (Sentinel): it may have
    /// been written on the old master. It does not count; the next attempt
    /// (same token) goes to the new master, and giving up releases the
    /// token.
    fn taken_during_failover(&mut self) {
        let name = &self.target.name;
        self.uncertain = true;
        tracing::debug!(name = %name, "place taken while the master changed; trying again on the new master");
        self.holder_ttl = None;
        self.last_error = Some(Error::Unavailable {
            key: name.clone(),
            source: fred::error::Error::new(
                fred::error::ErrorKind::Sentinel,
                "the master changed (Sentinel failover) while the place was being taken",
            ),
        });
    }

    /// The place was taken: the token is the guard's now, and a writer's
    /// local queue place is done with.
    fn taken(&mut self) {
        self.token.armed = false;
        if let Some(ticket) = self.ticket.take() {
            if matches!(self.target.attempt, Attempt::Write { .. }) {
                ticket.acquired();
            }
            // Else dropping the ticket passes the wake-up on: more
            // permits or readers may fit.
        }
        let name = &self.target.name;
        tracing::debug!(name = %name, attempts = self.attempts, "acquired");
    }

    /// Waits for the next attempt, or gives up.
    async fn wait(&mut self) -> Result<(), Error> {
        let mut wait = match self.schedule.next(Instant::now(), self.holder_ttl) {
            Next::Wait(wait) => wait,
            Next::GiveUp => return Err(self.give_up()),
        };
        if matches!(self.target.attempt, Attempt::Write { .. }) {
            wait = wait.min(WRITER_POLL);
        }
        if !self.notify {
            tokio::time::sleep(wait).await;
            self.schedule.waited(false);
            return Ok(());
        }
        if self.ticket.is_none() {
            let mut ticket = self.inner.waiters.join(&self.target.waiting);
            let limit =
                (self.inner.settings.command_timeout).min(self.schedule.left(Instant::now()));
            let subscribed = ticket.subscribed(limit).await;
            self.ticket = Some(ticket);
            if subscribed {
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

    fn give_up(&mut self) -> Error {
        self.last_error
            .take()
            .unwrap_or_else(|| Error::NotObtained {
                key: self.target.name.clone(),
                attempts: self.attempts,
                waited: self.started.elapsed(),
            })
    }

    /// The guard of the place just taken.
    fn held(&mut self, sent_at: Instant, auto_renew: bool) -> Held {
        let name = self.target.name.clone();
        let metrics = self.inner.settings.metrics.lock(&name);
        let holding = self.target.release_sets[0].clone();
        let lease = LeaseCore::new(
            name,
            self.target.waiting.clone(),
            self.token.job.token.clone(),
            None,
            Duration::from_millis(self.ttl_ms),
            sent_at,
            None,
            metrics,
        )
        .in_set(holding);
        let lease = Arc::new(lease);
        if auto_renew {
            self.inner.renewer.track(&lease, sent_at);
        }
        Held::new(Arc::clone(self.inner), lease, self.token.job.clone())
    }
}
