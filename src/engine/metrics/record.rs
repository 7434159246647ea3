//! What is recorded: one acquisition ([`Acquisition`]), one held lock
//! ([`Lock`]), one renewal call ([`renewals`]) (feature `metrics`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::labels::{error_kind, Config, Labels};
use super::names::*;
use crate::policy::error::lost::LostReason;
use crate::policy::error::Error;
use crate::protocol::scripts::Compared;

impl Config {
    /// A lock just obtained: counted as held until [`Lock::ended`].
    pub(crate) fn lock(&self, key: &str) -> Lock {
        let labels = self.labels(key);
        ::metrics::gauge!(HELD, labels.with(&[])).increment(1.0);
        Lock {
            labels,
            taken: Instant::now(),
            ended: AtomicBool::new(false),
            lost: AtomicBool::new(false),
        }
    }

    /// A release handed to the background worker.
    pub(crate) fn release_queued(&self) {
        let labels = Labels {
            mutex: self.mutex.clone(),
            key: None,
        };
        ::metrics::counter!(RELEASES_QUEUED, labels.with(&[])).increment(1);
    }

    /// A queued release given up after its tries.
    pub(crate) fn release_failed(&self, error: &Error) {
        let labels = Labels {
            mutex: self.mutex.clone(),
            key: None,
        };
        let labels = labels.with(&[("error", error_kind(error))]);
        ::metrics::counter!(RELEASE_FAILURES, labels).increment(1);
    }
}

/// The metrics side of one acquisition: its outcome and wait time when
/// it finishes, `cancelled` when it is dropped first, and the waiters
/// gauge while it waits.
pub(crate) struct Acquisition {
    labels: Labels,
    started: Instant,
    waiting: bool,
    finished: bool,
}

impl Acquisition {
    pub(crate) fn start(config: &Config, key: &str) -> Self {
        Acquisition {
            labels: config.labels(key),
            started: Instant::now(),
            waiting: false,
            finished: false,
        }
    }

    /// The acquisition waits for a busy lock (counted once).
    pub(crate) fn waiting(&mut self) {
        if !self.waiting {
            self.waiting = true;
            ::metrics::gauge!(WAITERS, self.labels.with(&[])).increment(1.0);
        }
    }

    /// Records `obtained` (for the cost measurement).
    #[cfg(test)]
    pub(super) fn finish_obtained(mut self) {
        self.finished = true;
        self.record("obtained", None);
    }

    /// Records the outcome and passes it through.
    pub(crate) fn finish<T>(mut self, result: Result<T, Error>) -> Result<T, Error> {
        self.finished = true;
        match &result {
            Ok(_) => self.record("obtained", None),
            Err(Error::NotObtained { .. }) => self.record("not_obtained", None),
            Err(e) => self.record("error", Some(error_kind(e))),
        }
        result
    }

    fn record(&mut self, outcome: &'static str, error: Option<&'static str>) {
        let waited = self.started.elapsed().as_secs_f64();
        let counted = match error {
            Some(kind) => self.labels.with(&[("outcome", outcome), ("error", kind)]),
            None => self.labels.with(&[("outcome", outcome)]),
        };
        ::metrics::counter!(ACQUISITIONS, counted).increment(1);
        let timed = self.labels.with(&[("outcome", outcome)]);
        ::metrics::histogram!(WAIT_SECONDS, timed).record(waited);
        if self.waiting {
            self.waiting = false;
            ::metrics::gauge!(WAITERS, self.labels.with(&[])).decrement(1.0);
        }
    }
}

impl Drop for Acquisition {
    fn drop(&mut self) {
        if !self.finished {
            self.record("cancelled", None);
        }
    }
}

/// The metrics side of one held lock (kept with its lease).
pub(crate) struct Lock {
    labels: Labels,
    taken: Instant,
    ended: AtomicBool,
    lost: AtomicBool,
}

impl Lock {
    /// A lock the metrics do not follow (the per-server leases of a
    /// `Redlock`): it records nothing.
    pub(crate) fn untracked() -> Self {
        Lock {
            labels: Labels::default(),
            taken: Instant::now(),
            ended: AtomicBool::new(true),
            lost: AtomicBool::new(true),
        }
    }

    /// The lock is known lost (counted once per lock; a release is not a
    /// loss).
    pub(crate) fn lost(&self, reason: LostReason) {
        let reason = match reason {
            LostReason::Expired => "expired",
            LostReason::Missing => "missing",
            LostReason::Replaced => "replaced",
            LostReason::Released => return,
        };
        if !self.lost.swap(true, Ordering::Relaxed) {
            let labels = self.labels.with(&[("reason", reason)]);
            ::metrics::counter!(LOST, labels).increment(1);
        }
    }

    /// The guard was released or dropped (counted once).
    pub(crate) fn ended(&self) {
        if !self.ended.swap(true, Ordering::Relaxed) {
            let held = self.taken.elapsed().as_secs_f64();
            ::metrics::histogram!(HOLD_SECONDS, self.labels.with(&[])).record(held);
            ::metrics::gauge!(HELD, self.labels.with(&[])).decrement(1.0);
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.ended();
    }
}

/// One renewal call: its round trip, and each lock's outcome
/// (`unconfirmed`: fewer replicas than asked acknowledged it).
pub(crate) fn renewals<'a>(
    locks: impl Iterator<Item = &'a Lock>,
    answers: &Result<Vec<Compared>, Error>,
    unconfirmed: Option<u32>,
    sent_at: Instant,
) {
    let took = sent_at.elapsed().as_secs_f64();
    let mut first = None;
    for (i, lock) in locks.enumerate() {
        let outcome = match answers.as_ref().map(|a| a.get(i)) {
            Err(_) | Ok(None) => "error",
            Ok(Some(Compared::Held)) if unconfirmed.is_some() => "unconfirmed",
            Ok(Some(Compared::Held)) => "renewed",
            Ok(Some(Compared::Missing | Compared::Replaced)) => "lost",
        };
        let labels = lock.labels.with(&[("outcome", outcome)]);
        ::metrics::counter!(RENEWALS, labels).increment(1);
        first.get_or_insert(&lock.labels);
    }
    if let Some(labels) = first {
        let labels = labels.mutex_only().with(&[]);
        ::metrics::histogram!(RENEWAL_SECONDS, labels).record(took);
    }
}
