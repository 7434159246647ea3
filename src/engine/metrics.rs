//! Metrics, through the [`metrics`](https://docs.rs/metrics) crate's facade
//! (cargo feature `metrics`): install any recorder (a Prometheus, StatsD or
//! OpenTelemetry exporter) and every mutex of the process reports to it.
//! Without the feature nothing is recorded, the `metrics` crate is not
//! built, and every hook below is an empty inline function.
//!
//! # The metrics
//! | name | type | labels | unit | what it counts |
//! |---|---|---|---|---|
//! | `distributed_mutex_acquisitions_total` | counter | `outcome`, `error` | | finished acquisitions (`lock`, `try_lock`, `acquire(..).await`, `with_lock`): `outcome` is `obtained`, `not_obtained` (busy for the whole wait; a `try_lock` that found the lock held), `error` (then `error` names the [`Error`](crate::Error) variant, see below) or `cancelled` (the future was dropped first) |
//! | `distributed_mutex_wait_seconds` | histogram | `outcome` | seconds | how long each acquisition took, from the call to its outcome (same `outcome` values, without `error`) |
//! | `distributed_mutex_hold_seconds` | histogram | | seconds | how long each guard lived: from the reply that granted the lock until [`LockGuard::release`](crate::LockGuard::release) was called or the guard was dropped |
//! | `distributed_mutex_renewals_total` | counter | `outcome` | | automatic lease renewals, one per lock per renewal call: `renewed`, `lost` (the key was gone or replaced), `unconfirmed` (fewer replicas than `min_replicas` acknowledged it; retried) or `error` (Redis could not be asked; retried) |
//! | `distributed_mutex_renewal_seconds` | histogram | | seconds | the round trip of each renewal call (one call renews a batch of locks) |
//! | `distributed_mutex_lost_total` | counter | `reason` | | guards whose lock became known lost while they lived, at most once per lock: `expired` (the lease ran out locally before a renewal was confirmed), `missing` (the key was gone) or `replaced` (another holder's token is there); found by a renewal, an [`extend`](crate::LockGuard::extend), a [`release`](crate::LockGuard::release), or a look at [`remaining`](crate::LockGuard::remaining) / [`is_lost`](crate::LockGuard::is_lost) / [`lost`](crate::LockGuard::lost) |
//! | `distributed_mutex_releases_queued_total` | counter | | | releases handed to the background worker: guards dropped without `release()` (unless the lock was already known gone), `release()` calls that could not reach Redis, and cancelled or failed acquisitions that may have set their token |
//! | `distributed_mutex_release_failures_total` | counter | `error` | | queued releases given up after their tries (the lock then expires with its TTL); `error` names the last [`Error`](crate::Error) variant |
//! | `distributed_mutex_held` | gauge | | | guards alive now: up when a lock is obtained, down once when its guard is released or dropped (a guard whose lock was lost counts until then) |
//! | `distributed_mutex_waiters` | gauge | | | acquisitions waiting now: up when an acquisition first waits for a busy lock (not for its first attempt), down once when it ends (obtained, given up, failed or cancelled) |
//!
//! `error` values, one per [`Error`](crate::Error) variant: `not_held`, `lost`,
//! `invalid_key`, `invalid_ttl`, `timeout`, `unavailable`,
//! `not_replicated`, `wrong_type`, `no_permission`, `redis`, `config`,
//! `shutdown` (`not_obtained` is an `outcome` of its own).
//!
//! Every metric also carries:
//! * `mutex`, when the mutex was given a name with
//!   [`Builder::metrics_name`](crate::Builder::metrics_name) (bounded by the
//!   number of mutexes the program makes);
//! * `key`, only when the user opts in with
//!   [`Builder::metrics_key_label`](crate::Builder::metrics_key_label), on
//!   the per-lock metrics (`acquisitions_total`, `wait_seconds`,
//!   `hold_seconds`, `renewals_total`, `lost_total`, `held`, `waiters`):
//!   whatever that function returns for the key, none where it returns
//!   `None`. Labels are bounded by default: no key appears in any label
//!   unless that function puts it there.
//!
//! Call [`describe`] once after installing the recorder to give exporters
//! each metric's description and unit (the `# HELP` lines of Prometheus).
//!
//! # Cost
//! Without the feature: none (the hooks compile to nothing, the fields they
//! use are zero-sized). With it, each lock/release cycle records a counter,
//! two histograms and a gauge up and down through the facade: about 1.5 µs
//! into the Prometheus exporter's recorder with the default labels, 2 µs
//! with a mutex name or a key label (`cost::recording_cost_per_lock_release_cycle`,
//! an ignored test), against 80 to 170 µs for the two round trips of the
//! cycle on loopback; renewals add one histogram per call and one counter
//! per lock.

#[cfg(feature = "metrics")]
pub use on::*;

#[cfg(not(feature = "metrics"))]
pub(crate) use off::*;

/// With the feature: records through the `metrics` facade.
#[cfg(feature = "metrics")]
mod on {
    use std::fmt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use ::metrics::{Label, SharedString, Unit};

    use crate::api::builder::Builder;
    use crate::api::guard::LockGuard;
    use crate::engine::lease::LostReason;
    use crate::policy::error::Error;
    use crate::protocol::scripts::Compared;

    /// Counter: finished acquisitions, by `outcome` (and `error`).
    pub const ACQUISITIONS: &str = "distributed_mutex_acquisitions_total";
    /// Histogram (seconds): how long acquisitions took, by `outcome`.
    pub const WAIT_SECONDS: &str = "distributed_mutex_wait_seconds";
    /// Histogram (seconds): how long guards lived.
    pub const HOLD_SECONDS: &str = "distributed_mutex_hold_seconds";
    /// Counter: automatic renewals of one lock, by `outcome`.
    pub const RENEWALS: &str = "distributed_mutex_renewals_total";
    /// Histogram (seconds): the round trip of each renewal call.
    pub const RENEWAL_SECONDS: &str = "distributed_mutex_renewal_seconds";
    /// Counter: locks known lost while their guard lived, by `reason`.
    pub const LOST: &str = "distributed_mutex_lost_total";
    /// Counter: releases handed to the background worker.
    pub const RELEASES_QUEUED: &str = "distributed_mutex_releases_queued_total";
    /// Counter: queued releases given up, by `error`.
    pub const RELEASE_FAILURES: &str = "distributed_mutex_release_failures_total";
    /// Gauge: guards alive now.
    pub const HELD: &str = "distributed_mutex_held";
    /// Gauge: acquisitions waiting for a busy lock now.
    pub const WAITERS: &str = "distributed_mutex_waiters";

    /// Gives the installed recorder every metric's description and unit.
    /// Call it once, after installing the recorder; recording works without
    /// it.
    pub fn describe() {
        use ::metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_counter!(ACQUISITIONS, "Finished lock acquisitions, by outcome");
        describe_histogram!(
            WAIT_SECONDS,
            Unit::Seconds,
            "Time from an acquisition's call to its outcome"
        );
        describe_histogram!(
            HOLD_SECONDS,
            Unit::Seconds,
            "Time a guard lived, from the lock's grant to its release or drop"
        );
        describe_counter!(RENEWALS, "Automatic lease renewals of one lock, by outcome");
        describe_histogram!(
            RENEWAL_SECONDS,
            Unit::Seconds,
            "Round trip of each renewal call (one call renews a batch of locks)"
        );
        describe_counter!(LOST, "Locks known lost while their guard lived, by reason");
        describe_counter!(
            RELEASES_QUEUED,
            "Releases handed to the background release worker"
        );
        describe_counter!(
            RELEASE_FAILURES,
            "Queued releases given up after their tries (the lock expires with its TTL)"
        );
        describe_gauge!(HELD, "Lock guards alive now");
        describe_gauge!(WAITERS, "Acquisitions waiting for a busy lock now");
    }

    /// Maps a lock key to the value of its `key` label, or to none.
    type KeyLabel = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

    /// A mutex's metric labels (set on the builder).
    #[derive(Clone, Default)]
    pub(crate) struct Config {
        /// `mutex="..."`, when named.
        mutex: Option<SharedString>,
        key_label: Option<KeyLabel>,
    }

    impl fmt::Debug for Config {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Config")
                .field("mutex", &self.mutex)
                .field("key_label", &self.key_label.is_some())
                .finish()
        }
    }

    /// The labels of one lock: the mutex's, and the key's when opted in.
    #[derive(Clone, Default)]
    struct Labels {
        mutex: Option<SharedString>,
        key: Option<SharedString>,
    }

    impl Labels {
        /// These labels and `extra`.
        fn with(&self, extra: &[(&'static str, &'static str)]) -> Vec<Label> {
            let mut labels = Vec::with_capacity(extra.len() + 2);
            if let Some(mutex) = &self.mutex {
                labels.push(Label::new("mutex", mutex.clone()));
            }
            if let Some(key) = &self.key {
                labels.push(Label::new("key", key.clone()));
            }
            labels.extend(extra.iter().map(|&(k, v)| Label::from_static_parts(k, v)));
            labels
        }

        /// The mutex's label only (for metrics about no one lock).
        fn mutex_only(&self) -> Labels {
            Labels {
                mutex: self.mutex.clone(),
                key: None,
            }
        }
    }

    impl Config {
        fn labels(&self, key: &str) -> Labels {
            Labels {
                mutex: self.mutex.clone(),
                key: self
                    .key_label
                    .as_ref()
                    .and_then(|f| f(key))
                    .map(SharedString::from),
            }
        }

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
        pub(crate) fn finish(
            mut self,
            result: Result<LockGuard, Error>,
        ) -> Result<LockGuard, Error> {
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

    /// The `error` label of an error: its variant, in snake case.
    fn error_kind(error: &Error) -> &'static str {
        match error {
            Error::NotObtained { .. } => "not_obtained",
            Error::NotHeld { .. } => "not_held",
            Error::Lost { .. } => "lost",
            Error::InvalidKey { .. } => "invalid_key",
            Error::InvalidKeySet { .. } => "invalid_key_set",
            Error::InvalidTtl { .. } => "invalid_ttl",
            Error::Timeout { .. } => "timeout",
            Error::Unavailable { .. } => "unavailable",
            Error::NotReplicated { .. } => "not_replicated",
            Error::WrongType { .. } => "wrong_type",
            Error::NoPermission { .. } => "no_permission",
            Error::Redis { .. } => "redis",
            Error::Config { .. } => "config",
            Error::Shutdown { .. } => "shutdown",
        }
    }

    /// Metric labels (cargo feature `metrics`; see the
    /// [`metrics`](crate::metrics) module for the metrics themselves).
    impl Builder {
        /// Adds the label `mutex="<name>"` to every metric this mutex
        /// records (default: no `mutex` label), to tell mutexes apart (one
        /// per Redis deployment, say). Give each mutex a fixed name: every
        /// distinct name is a set of series of its own.
        pub fn metrics_name(mut self, name: impl Into<String>) -> Self {
            self.settings.metrics.mutex = Some(SharedString::from(name.into()));
            self
        }

        /// Opts in to a `key` label on the per-lock metrics: `label(key)`
        /// gives its value for a lock key (as the caller gave it, without the
        /// key prefix), `None` for no `key` label. Default: no key label, so
        /// the number of series does not grow with the number of keys.
        ///
        /// Each distinct value is a set of series in the exporter: return a
        /// bounded set of values (a key's kind or tenant tier, not the key
        /// itself, unless the program locks a few fixed keys). The function
        /// runs once per acquisition, on the caller's task; it must be cheap
        /// and return the same value for the same key.
        ///
        /// ```no_run
        /// # fn demo(client: fred::clients::Client) -> Result<(), distributed_mutex::Error> {
        /// use distributed_mutex::DistributedMutex;
        ///
        /// // "job:nightly-report" -> key="job", "tenant:42:settings" -> key="tenant".
        /// let mutex = DistributedMutex::builder(client)
        ///     .metrics_key_label(|key| key.split(':').next().map(str::to_owned))
        ///     .build()?;
        /// # Ok(()) }
        /// ```
        pub fn metrics_key_label<F>(mut self, label: F) -> Self
        where
            F: Fn(&str) -> Option<String> + Send + Sync + 'static,
        {
            self.settings.metrics.key_label = Some(Arc::new(label));
            self
        }
    }
}

/// What the recording costs, measured apart from Redis and its noise.
#[cfg(all(test, feature = "metrics"))]
mod cost {
    use std::time::{Duration, Instant};

    use super::on::{Acquisition, Config};
    use crate::Builder;

    /// The metrics of one lock/release cycle (an acquisition obtained, a
    /// lock held and ended: 2 counters/histograms, 2 gauge moves and one
    /// more histogram), into the Prometheus exporter's recorder.
    fn cycle(config: &Config) {
        let acquisition = Acquisition::start(config, "tenant:42:settings");
        let lock = config.lock("tenant:42:settings");
        acquisition.finish_obtained();
        lock.ended();
    }

    /// Median time per cycle over `rounds` rounds of `n` cycles.
    fn per_cycle(config: &Config, rounds: usize, n: u32) -> Duration {
        let mut times: Vec<Duration> = (0..rounds)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..n {
                    cycle(config);
                }
                started.elapsed() / n
            })
            .collect();
        times.sort();
        times[rounds / 2]
    }

    #[test]
    #[ignore = "a measurement: cargo test --profile bench --features metrics --lib cost:: -- --ignored --nocapture"]
    fn recording_cost_per_lock_release_cycle() {
        let _handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[0.001, 0.01, 0.1, 1.0])
            .expect("buckets")
            .install_recorder()
            .expect("the only recorder of this test binary");
        let client = fred::clients::Client::default();
        let plain = Builder::new(client.clone(), false).settings.metrics;
        let named = Builder::new(client.clone(), false).metrics_name("orders");
        let named = named.settings.metrics;
        let keyed = Builder::new(client, false)
            .metrics_name("orders")
            .metrics_key_label(|key| key.split(':').next().map(str::to_owned));
        let keyed = keyed.settings.metrics;
        per_cycle(&plain, 3, 20_000);
        for (what, config) in [
            ("default labels", &plain),
            ("mutex name", &named),
            ("mutex name + key label", &keyed),
        ] {
            let took = per_cycle(config, 9, 50_000);
            println!("metrics per lock/release cycle, {what}: {took:?}");
        }
    }
}

/// Without the feature: nothing, inline.
#[cfg(not(feature = "metrics"))]
mod off {
    use std::time::Instant;

    use crate::api::guard::LockGuard;
    use crate::engine::lease::LostReason;
    use crate::policy::error::Error;
    use crate::protocol::scripts::Compared;

    #[derive(Debug, Clone, Default)]
    pub(crate) struct Config;

    impl Config {
        #[inline(always)]
        pub(crate) fn lock(&self, _key: &str) -> Lock {
            Lock
        }

        #[inline(always)]
        pub(crate) fn release_queued(&self) {}

        #[inline(always)]
        pub(crate) fn release_failed(&self, _error: &Error) {}
    }

    pub(crate) struct Acquisition;

    impl Acquisition {
        #[inline(always)]
        pub(crate) fn start(_config: &Config, _key: &str) -> Self {
            Acquisition
        }

        #[inline(always)]
        pub(crate) fn waiting(&mut self) {}

        #[inline(always)]
        pub(crate) fn finish(self, result: Result<LockGuard, Error>) -> Result<LockGuard, Error> {
            result
        }
    }

    pub(crate) struct Lock;

    impl Lock {
        #[inline(always)]
        pub(crate) fn untracked() -> Self {
            Lock
        }

        #[inline(always)]
        pub(crate) fn lost(&self, _reason: LostReason) {}

        #[inline(always)]
        pub(crate) fn ended(&self) {}
    }

    #[inline(always)]
    pub(crate) fn renewals<'a>(
        _locks: impl Iterator<Item = &'a Lock>,
        _answers: &Result<Vec<Compared>, Error>,
        _unconfirmed: Option<u32>,
        _sent_at: Instant,
    ) {
    }
}
