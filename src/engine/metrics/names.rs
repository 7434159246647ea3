//! Every metric's name, and [`describe`] for exporters (feature `metrics`).

use ::metrics::Unit;

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
