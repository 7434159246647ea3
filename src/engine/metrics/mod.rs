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

#[cfg(all(test, feature = "metrics"))]
mod cost;
#[cfg(feature = "metrics")]
mod labels;
#[cfg(feature = "metrics")]
mod names;
#[cfg(not(feature = "metrics"))]
mod off;
#[cfg(feature = "metrics")]
mod record;

#[cfg(feature = "metrics")]
pub(crate) use labels::Config;
#[cfg(feature = "metrics")]
pub use names::*;
#[cfg(not(feature = "metrics"))]
pub(crate) use off::*;
#[cfg(feature = "metrics")]
pub(crate) use record::{renewals, Acquisition, Lock};
