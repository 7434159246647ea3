//! Metrics (feature `metrics`): a scripted scenario against a private
//! `redis-server`, with every metric checked through a `DebuggingRecorder`.
//!
//! The recorder is installed globally, once for this test binary: the
//! mutex's background tasks (renewer, release worker) run on other threads
//! and tasks than the test, where a thread-local recorder would miss their
//! events. Each test gives its mutex a name of its own (`mutex` label) and
//! reads only its own series, so the tests may share the process (threads
//! under `cargo test`).
//!
//! The recorder's snapshots are destructive (counters and gauges are swapped
//! to zero, histograms drained), so every snapshot is added into one shared
//! running total; the library only ever moves gauges up and down, so the
//! sum of a gauge's snapshots is its value.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use distributed_mutex::metrics as names;
use distributed_mutex::{Error, LostReason, RetryStrategy};
use fred::prelude::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;

use support::common::{builder_for, ms};
use support::RedisServer;

/// A series: kind, name, and its labels other than `mutex`, sorted.
type Series = (MetricKind, String, Vec<(String, String)>);

#[derive(Default)]
struct Totals {
    /// By mutex label, then series.
    counters: HashMap<String, HashMap<Series, u64>>,
    gauges: HashMap<String, HashMap<Series, f64>>,
    histograms: HashMap<String, HashMap<Series, usize>>,
}

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        names::describe();
        snapshotter
    })
}

/// Adds a fresh snapshot into the running totals and returns them.
fn totals() -> MutexGuard<'static, Totals> {
    static TOTALS: OnceLock<Mutex<Totals>> = OnceLock::new();
    let mut totals = TOTALS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let (kind, key) = key.into_parts();
        let (name, labels) = key.into_parts();
        let mut mutex = String::new();
        let mut rest = Vec::new();
        for label in labels {
            let (k, v) = label.into_parts();
            if &*k == "mutex" {
                mutex = v.to_string();
            } else {
                rest.push((k.to_string(), v.to_string()));
            }
        }
        rest.sort();
        let series = (kind, name.as_str().to_owned(), rest);
        match value {
            DebugValue::Counter(n) => {
                *totals
                    .counters
                    .entry(mutex)
                    .or_default()
                    .entry(series)
                    .or_default() += n
            }
            DebugValue::Gauge(g) => {
                *totals
                    .gauges
                    .entry(mutex)
                    .or_default()
                    .entry(series)
                    .or_default() += g.0
            }
            DebugValue::Histogram(values) => {
                *totals
                    .histograms
                    .entry(mutex)
                    .or_default()
                    .entry(series)
                    .or_default() += values.len()
            }
        }
    }
    totals
}

/// One mutex's series (by its `mutex` label).
struct View {
    mutex: &'static str,
}

fn series(kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Series {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    (kind, name.to_owned(), labels)
}

impl View {
    /// Installs the recorder (once per binary) before anything is recorded.
    fn new(mutex: &'static str) -> View {
        snapshotter();
        View { mutex }
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let totals = totals();
        let series = series(MetricKind::Counter, name, labels);
        (totals.counters.get(self.mutex))
            .and_then(|m| m.get(&series))
            .copied()
            .unwrap_or(0)
    }

    /// The sum of a counter over all its label values.
    fn counter_sum(&self, name: &str) -> u64 {
        let totals = totals();
        (totals.counters.get(self.mutex))
            .map(|m| m.iter().filter(|(s, _)| s.1 == name).map(|(_, n)| n).sum())
            .unwrap_or(0)
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let totals = totals();
        let series = series(MetricKind::Gauge, name, labels);
        (totals.gauges.get(self.mutex))
            .and_then(|m| m.get(&series))
            .copied()
            .unwrap_or(0.0)
    }

    /// How many values a histogram recorded.
    fn recorded(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        let totals = totals();
        let series = series(MetricKind::Histogram, name, labels);
        (totals.histograms.get(self.mutex))
            .and_then(|m| m.get(&series))
            .copied()
            .unwrap_or(0)
    }

    /// Every series of this mutex (any kind).
    fn all_series(&self) -> Vec<Series> {
        let totals = totals();
        let mut all = Vec::new();
        all.extend(
            totals
                .counters
                .get(self.mutex)
                .into_iter()
                .flat_map(|m| m.keys().cloned()),
        );
        all.extend(
            totals
                .gauges
                .get(self.mutex)
                .into_iter()
                .flat_map(|m| m.keys().cloned()),
        );
        all.extend(
            totals
                .histograms
                .get(self.mutex)
                .into_iter()
                .flat_map(|m| m.keys().cloned()),
        );
        all
    }

    /// Waits (at most `limit`) until `done` holds.
    async fn until(&self, what: &str, limit: Duration, done: impl Fn(&View) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
            tokio::time::sleep(ms(10)).await;
        }
    }
}

const NOTHING: &[(&str, &str)] = &[];

/// The scripted scenario, in order; each step's effect on the metrics is
/// checked right after it, and the totals at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_scenario_gives_exact_counts() {
    let mut server = RedisServer::start();
    let raw = server.client().await;
    let view = View::new("scenario");
    let mutex = builder_for(&server)
        .await
        .metrics_name("scenario")
        .command_timeout(ms(300))
        // Waits are plain sleeps (no subscription and re-check attempt), so
        // a waiter aborted while it waits has no attempt in flight.
        .notifications(false)
        .build()
        .unwrap();
    let obtained = &[("outcome", "obtained")];
    let not_obtained = &[("outcome", "not_obtained")];
    let cancelled = &[("outcome", "cancelled")];

    // 1. Obtained: one held.
    let a = mutex.lock("k1").await.unwrap();
    assert_eq!(view.counter(names::ACQUISITIONS, obtained), 1);
    assert_eq!(view.gauge(names::HELD, NOTHING), 1.0);
    assert_eq!(view.gauge(names::WAITERS, NOTHING), 0.0);

    // 2. try_lock on a held key: not obtained, and it never waited.
    assert!(mutex.try_lock("k1").await.unwrap().is_none());
    assert_eq!(view.counter(names::ACQUISITIONS, not_obtained), 1);
    assert_eq!(view.gauge(names::WAITERS, NOTHING), 0.0);

    // 3. A wait that runs out: one waiter while it waits, none after.
    let waiting = {
        let mutex = mutex.clone();
        tokio::spawn(async move { mutex.acquire("k1").timeout(ms(1500)).await })
    };
    view.until("a waiter", Duration::from_secs(5), |v| {
        v.gauge(names::WAITERS, NOTHING) == 1.0
    })
    .await;
    let gave_up = waiting.await.unwrap();
    assert!(
        matches!(gave_up, Err(Error::NotObtained { .. })),
        "{gave_up:?}"
    );
    assert_eq!(view.counter(names::ACQUISITIONS, not_obtained), 2);
    assert_eq!(view.gauge(names::WAITERS, NOTHING), 0.0);

    // 4. A waiter cancelled (its task aborted while it waits; its next
    //    attempt is 10 s away, so no attempt is in flight and nothing is
    //    queued): `cancelled`, and the waiters gauge back to zero.
    let waiting = {
        let mutex = mutex.clone();
        tokio::spawn(async move {
            mutex
                .acquire("k1")
                .retry(RetryStrategy::linear(Duration::from_secs(10), 3))
                .await
        })
    };
    view.until("a waiter", Duration::from_secs(5), |v| {
        v.gauge(names::WAITERS, NOTHING) == 1.0
    })
    .await;
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    assert_eq!(view.counter(names::ACQUISITIONS, cancelled), 1);
    assert_eq!(view.gauge(names::WAITERS, NOTHING), 0.0);

    // 5. release(): nothing held, one hold time, nothing queued.
    a.release().await.unwrap();
    assert_eq!(view.gauge(names::HELD, NOTHING), 0.0);
    assert_eq!(view.recorded(names::HOLD_SECONDS, NOTHING), 1);
    assert_eq!(view.counter(names::RELEASES_QUEUED, NOTHING), 0);

    // 6. A guard dropped: its release is queued.
    let b = mutex.lock("k2").await.unwrap();
    assert_eq!(view.gauge(names::HELD, NOTHING), 1.0);
    drop(b);
    assert_eq!(view.gauge(names::HELD, NOTHING), 0.0);
    assert_eq!(view.counter(names::RELEASES_QUEUED, NOTHING), 1);

    // 7. Lost, `missing`, found by a renewal (due 1 s after the grant; the
    //    key is deleted at once). Still held until the guard is dropped;
    //    the drop queues nothing (the key is known gone).
    let c = mutex.acquire("k3").ttl(ms(3000)).await.unwrap();
    let _: i64 = raw.del("k3").await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(10), c.lost()).await;
    assert_eq!(reason.unwrap(), LostReason::Missing);
    assert_eq!(view.counter(names::LOST, &[("reason", "missing")]), 1);
    assert_eq!(view.counter(names::RENEWALS, &[("outcome", "lost")]), 1);
    assert_eq!(view.gauge(names::HELD, NOTHING), 1.0);
    drop(c);
    assert_eq!(view.gauge(names::HELD, NOTHING), 0.0);
    assert_eq!(view.counter(names::RELEASES_QUEUED, NOTHING), 1);

    // 8. Lost, `replaced`, found by release().
    let d = mutex.lock("k4").await.unwrap();
    let _: () = raw
        .set("k4", "someone-else", None, None, false)
        .await
        .unwrap();
    let released = d.release().await;
    assert!(
        matches!(
            released,
            Err(Error::NotHeld {
                reason: LostReason::Replaced,
                ..
            })
        ),
        "{released:?}"
    );
    assert_eq!(view.counter(names::LOST, &[("reason", "replaced")]), 1);
    assert_eq!(view.counter(names::RELEASES_QUEUED, NOTHING), 1);

    // 9. Lost, `expired`: no renewal, and the lease runs out. Counted once,
    //    however often it is asked; the drop queues a release (the key may
    //    still be there).
    let e = (mutex.acquire("k5").ttl(ms(150)).auto_renew(false))
        .await
        .unwrap();
    tokio::time::sleep(ms(200)).await;
    assert!(e.is_lost());
    assert!(e.is_lost());
    assert_eq!(e.remaining(), Duration::ZERO);
    assert_eq!(view.counter(names::LOST, &[("reason", "expired")]), 1);
    drop(e);
    assert_eq!(view.counter(names::RELEASES_QUEUED, NOTHING), 2);

    // 10. Renewals of a held lock (alone: one lock per renewal call), each
    //     timed.
    let f = mutex.acquire("k6").ttl(ms(600)).await.unwrap();
    view.until("two renewals", Duration::from_secs(10), |v| {
        v.counter(names::RENEWALS, &[("outcome", "renewed")]) >= 2
    })
    .await;
    drop(f);
    // A renewal call in flight at the drop still lands: let it.
    tokio::time::sleep(ms(300)).await;
    let renewals = view.counter_sum(names::RENEWALS);
    assert_eq!(
        view.recorded(names::RENEWAL_SECONDS, NOTHING) as u64,
        renewals
    );
    assert_eq!(
        renewals,
        view.counter(names::RENEWALS, &[("outcome", "renewed")]) + 1,
        "only renewals and step 7's loss"
    );
    assert_eq!(view.counter(names::RELEASES_QUEUED, NOTHING), 3);

    // 11. An error, by kind.
    assert!(matches!(
        mutex.lock("").await,
        Err(Error::InvalidKey { .. })
    ));
    let invalid = &[("outcome", "error"), ("error", "invalid_key")];
    assert_eq!(view.counter(names::ACQUISITIONS, invalid), 1);

    // 12. A queued release that cannot reach Redis: given up after its
    //     tries (a few command timeouts).
    let g = mutex.lock("k7").await.unwrap();
    server.kill();
    drop(g);
    assert_eq!(view.counter(names::RELEASES_QUEUED, NOTHING), 4);
    view.until("a release failure", Duration::from_secs(30), |v| {
        v.counter_sum(names::RELEASE_FAILURES) == 1
    })
    .await;
    let failed = |kind| view.counter(names::RELEASE_FAILURES, &[("error", kind)]);
    assert_eq!(failed("unavailable") + failed("timeout"), 1);

    // The whole scenario.
    assert_eq!(view.counter(names::ACQUISITIONS, obtained), 7, "k1 to k7");
    assert_eq!(view.counter(names::ACQUISITIONS, not_obtained), 2);
    assert_eq!(view.counter(names::ACQUISITIONS, cancelled), 1);
    assert_eq!(view.counter_sum(names::ACQUISITIONS), 11);
    assert_eq!(view.recorded(names::WAIT_SECONDS, obtained), 7);
    assert_eq!(view.recorded(names::WAIT_SECONDS, not_obtained), 2);
    assert_eq!(view.recorded(names::WAIT_SECONDS, cancelled), 1);
    let error = &[("outcome", "error")];
    assert_eq!(view.recorded(names::WAIT_SECONDS, error), 1);
    assert_eq!(view.recorded(names::HOLD_SECONDS, NOTHING), 7);
    assert_eq!(view.counter_sum(names::LOST), 3);
    assert_eq!(view.gauge(names::HELD, NOTHING), 0.0);
    assert_eq!(view.gauge(names::WAITERS, NOTHING), 0.0);
    // Bounded by default: no series carries a key.
    for (_, name, labels) in view.all_series() {
        assert!(labels.iter().all(|(k, _)| k != "key"), "{name} {labels:?}");
    }
}

/// The `key` label appears only with `metrics_key_label`, with the values
/// it gives (none where it gives `None`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_label_is_opt_in() {
    let server = RedisServer::start();
    let view = View::new("keyed");
    let mutex = builder_for(&server)
        .await
        .metrics_name("keyed")
        .metrics_key_label(|key| {
            key.split_once(':')
                .map(|(kind, _)| kind.to_owned())
                .filter(|kind| kind == "tenant" || kind == "job")
        })
        .build()
        .unwrap();
    let t1 = mutex.lock("tenant:1").await.unwrap();
    let t2 = mutex.lock("tenant:2").await.unwrap();
    let j = mutex.lock("job:nightly").await.unwrap();
    let other = mutex.lock("other:x").await.unwrap();
    assert!(mutex.try_lock("tenant:1").await.unwrap().is_none());

    let tenant = ("key", "tenant");
    assert_eq!(
        view.counter(names::ACQUISITIONS, &[("outcome", "obtained"), tenant]),
        2
    );
    assert_eq!(
        view.counter(names::ACQUISITIONS, &[("outcome", "not_obtained"), tenant]),
        1
    );
    let job = &[("outcome", "obtained"), ("key", "job")];
    assert_eq!(view.counter(names::ACQUISITIONS, job), 1);
    assert_eq!(
        view.counter(names::ACQUISITIONS, &[("outcome", "obtained")]),
        1,
        "other:x, without a key label"
    );
    assert_eq!(view.gauge(names::HELD, &[tenant]), 2.0);
    assert_eq!(view.gauge(names::HELD, &[("key", "job")]), 1.0);
    assert_eq!(view.gauge(names::HELD, NOTHING), 1.0);

    drop((t1, t2, j, other));
    assert_eq!(view.gauge(names::HELD, &[tenant]), 0.0);
    assert_eq!(view.gauge(names::HELD, &[("key", "job")]), 0.0);
    assert_eq!(view.gauge(names::HELD, NOTHING), 0.0);
    assert_eq!(view.recorded(names::HOLD_SECONDS, &[tenant]), 2);
    // Releases are not per lock: no key label there.
    assert_eq!(view.counter(names::RELEASES_QUEUED, NOTHING), 4);
}

/// Many acquisitions of one key at once, some cancelled by a timeout on
/// their future: the gauges come back to exactly zero, and every
/// acquisition is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_do_not_drift_under_contention_and_cancellation() {
    let server = RedisServer::start();
    let view = View::new("contended");
    let mutex = builder_for(&server)
        .await
        .metrics_name("contended")
        .retry(RetryStrategy::linear(ms(20), 50))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let mutex = mutex.clone();
        tasks.push(tokio::spawn(async move {
            let limit = ms(50 + 40 * i);
            match tokio::time::timeout(limit, mutex.lock("hot")).await {
                Ok(Ok(guard)) => {
                    tokio::time::sleep(ms(30)).await;
                    drop(guard);
                    "obtained"
                }
                Ok(Err(Error::NotObtained { .. })) => "not_obtained",
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => "cancelled",
            }
        }));
    }
    let mut outcomes: HashMap<&str, u64> = HashMap::new();
    for task in tasks {
        *outcomes.entry(task.await.unwrap()).or_default() += 1;
    }
    for (outcome, n) in &outcomes {
        assert_eq!(
            view.counter(names::ACQUISITIONS, &[("outcome", outcome)]),
            *n,
            "{outcome}: {outcomes:?}"
        );
    }
    assert_eq!(view.counter_sum(names::ACQUISITIONS), 16);
    assert_eq!(view.gauge(names::HELD, NOTHING), 0.0);
    assert_eq!(view.gauge(names::WAITERS, NOTHING), 0.0);
    let obtained = outcomes.get("obtained").copied().unwrap_or(0);
    assert!(obtained >= 1, "{outcomes:?}");
    assert_eq!(view.recorded(names::HOLD_SECONDS, NOTHING) as u64, obtained);
}
