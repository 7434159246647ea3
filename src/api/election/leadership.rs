//! [`Leadership`]: the guard of an election's leader.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::names::Names;
use super::scripts::{Claimed, Write};
use super::{check_value, Election};
use crate::api::guard::LockGuard;
use crate::engine::lease::Lease;
use crate::policy::error::lost::LostReason;
use crate::policy::error::Error;

/// This caller leads the election, made by
/// [`Election::campaign`](crate::Election::campaign). Dropping it resigns.
///
/// It wraps the [`LockGuard`](crate::LockGuard) of the election's lock: the
/// lease is renewed while it lives, [`remaining`](Leadership::remaining)
/// never overstates it, and [`lost`](Leadership::lost) reports a leadership
/// lost to a renewal that found the lock gone or taken, or to a lease that
/// ran out. A lost leadership is never reported held again; campaign again
/// to lead again (with a new term).
#[must_use = "leadership is resigned as soon as the guard is dropped"]
pub struct Leadership {
    election: Election,
    names: Names,
    /// `None` once resigned.
    guard: Option<LockGuard>,
    value: Mutex<String>,
    term: u64,
}

impl Leadership {
    pub(crate) fn new(
        election: Election,
        names: Names,
        guard: LockGuard,
        value: String,
        term: u64,
    ) -> Self {
        Leadership {
            election,
            names,
            guard: Some(guard),
            value: Mutex::new(value),
            term,
        }
    }

    fn guard(&self) -> &LockGuard {
        self.guard
            .as_ref()
            .expect("present until resigned or dropped")
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        self.election.name()
    }

    /// This leadership's term: strictly greater than every earlier leader's
    /// of this election (see the README for what holds across a Redis
    /// restart without data). Pass it to the resource with every write, as
    /// a fencing token.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The value this leader campaigned with, or last proclaimed.
    pub fn value(&self) -> String {
        self.value
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The token of the election's lock (as `LockGuard::token`).
    pub fn token(&self) -> &str {
        self.guard().token()
    }

    /// How long this caller at least still leads (as
    /// [`LockGuard::remaining`](crate::LockGuard::remaining)); zero once lost.
    pub fn remaining(&self) -> Duration {
        self.guard().remaining()
    }

    /// A cheap, cloneable view of the election's lock (token, term as
    /// fencing token, remaining, loss), for work that runs under it.
    pub fn lease(&self) -> Lease {
        self.guard().lease()
    }

    /// `true` once the leadership is known lost.
    pub fn is_lost(&self) -> bool {
        self.guard().is_lost()
    }

    /// Completes when the leadership is known lost, with the reason (as
    /// [`LockGuard::lost`](crate::LockGuard::lost)).
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// # async fn lead() {}
    /// let leadership = mutex.election("scheduler").campaign("web-3").await?;
    /// tokio::select! {
    ///     reason = leadership.lost() => eprintln!("no longer leader: {reason}"),
    ///     () = lead() => {}
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    /// Cancel-safe: it only watches.
    pub async fn lost(&self) -> LostReason {
        self.guard().lost().await
    }

    /// Publishes a new value for this leadership, without an election: the
    /// term stays, and observers see the change.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let leadership = mutex.election("scheduler").campaign("10.0.0.7:8080").await?;
    /// leadership.proclaim("10.0.0.7:9090").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotHeld`] when the leadership was lost (the value is then
    /// unchanged); [`Error::Config`] for a value longer than
    /// [`MAX_ELECTION_VALUE_LEN`](crate::MAX_ELECTION_VALUE_LEN);
    /// [`Error::Unavailable`] or [`Error::Timeout`] when Redis could not be
    /// asked (the new value may or may not have been written).
    ///
    /// # Cancel safety
    /// Cancel-safe in that the leadership stays as it was; a proclamation
    /// dropped mid-flight may or may not have reached Redis, and
    /// [`value`](Leadership::value) keeps the old value.
    pub async fn proclaim(&self, value: impl Into<String>) -> Result<(), Error> {
        let value = value.into();
        check_value(self.name(), &value)?;
        if self.is_lost() {
            return Err(self.not_held(self.lost().await));
        }
        let target = self.election.target(&self.names);
        let written = target
            .claim(self.token(), &value, self.term, Write::Value)
            .await?;
        if written != Claimed::Yes {
            return Err(self.not_held(LostReason::Replaced));
        }
        *self.value.lock().unwrap_or_else(PoisonError::into_inner) = value;
        Ok(())
    }

    /// Resigns now: releases the election's lock (handing it to the first
    /// campaigner waiting, at once) and announces the change to observers.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let leadership = mutex.election("scheduler").campaign("web-3").await?;
    /// leadership.resign().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`LockGuard::release`](crate::LockGuard::release):
    /// [`Error::NotHeld`] when the leadership had already been lost; on a
    /// transient error the release goes on in the background.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropped mid-flight, the release is queued in the
    /// background (observers then learn of it by polling).
    pub async fn resign(mut self) -> Result<(), Error> {
        let guard = self.guard.take().expect("present until resigned");
        resign(&self.election, &self.names, guard).await
    }

    fn not_held(&self, reason: LostReason) -> Error {
        Error::NotHeld {
            key: self.name().to_owned(),
            reason,
        }
    }
}

/// Releases `guard` and announces it.
async fn resign(election: &Election, names: &Names, guard: LockGuard) -> Result<(), Error> {
    let released = guard.release().await.map_err(|mut e| {
        e.set_key(election.name());
        e
    });
    if let Err(e) = election.target(names).news().await {
        tracing::debug!(election = %election.name(), error = %e, "resignation not announced; observers poll");
    }
    released
}

impl Drop for Leadership {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        // With a runtime, resign (and announce) in a task; without one the
        // guard's own drop queues the release.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let election = self.election.clone();
            let names = self.names.clone();
            handle.spawn(async move {
                let _ = resign(&election, &names, guard).await;
            });
        }
    }
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("name", &self.name())
            .field("term", &self.term)
            .field("value", &self.value())
            .field("remaining", &self.guard.as_ref().map(LockGuard::remaining))
            .finish()
    }
}
