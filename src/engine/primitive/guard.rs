//! [`Held`]: a place held in a semaphore or read-write lock, shared by the
//! public guards ([`Permit`](crate::Permit), [`ReadGuard`](crate::ReadGuard),
//! [`WriteGuard`](crate::WriteGuard)).

use std::sync::Arc;
use std::time::Duration;

use crate::engine::inner::Inner;
use crate::engine::lease::{Lease, LeaseCore};
use crate::engine::release::places::Places as Job;
use crate::policy::error::lost::LostReason;
use crate::policy::error::Error;
use crate::protocol::scripts::Compared;

/// A held place: renewed while it lives (unless taken without renewal),
/// released on drop by the background release.
pub(crate) struct Held {
    inner: Arc<Inner>,
    lease: Arc<LeaseCore>,
    job: Job,
    /// Whether `Drop` must release.
    armed: bool,
}

impl Held {
    pub(crate) fn new(inner: Arc<Inner>, lease: Arc<LeaseCore>, job: Job) -> Self {
        inner.guard_created();
        Held {
            inner,
            lease,
            job,
            armed: true,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.lease.key
    }

    pub(crate) fn token(&self) -> &str {
        &self.lease.token
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.lease.ttl()
    }

    pub(crate) fn remaining(&self) -> Duration {
        self.lease.remaining()
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.inner.ensure_background();
        self.lease.lost_reason().is_some()
    }

    pub(crate) async fn lost(&self) -> LostReason {
        self.inner.ensure_background();
        self.lease.lost().await
    }

    pub(crate) fn lease(&self) -> Lease {
        Lease {
            core: Arc::clone(&self.lease),
        }
    }

    /// Releases now: `Ok` when the place was still held, `NotHeld` when it
    /// had expired. On a transient error the release goes to the background.
    pub(crate) async fn release(mut self) -> Result<(), Error> {
        self.lease.end();
        self.inner.ensure_background();
        let result = self.inner.releases.places_now(&self.job).await;
        match result {
            Ok(Compared::Held) => {
                self.armed = false;
                tracing::debug!(name = %self.name(), "released");
                Ok(())
            }
            Ok(_) => {
                self.armed = false;
                self.lease.metrics.lost(LostReason::Missing);
                Err(Error::NotHeld {
                    key: self.name().to_owned(),
                    reason: LostReason::Missing,
                })
            }
            Err(mut e) => {
                e.set_key(self.name());
                Err(e)
            }
        }
    }
}

/// Counts as a live guard of the mutex until dropped: a dropped guard's
/// release holds one until it has finished, so a shut-down mutex does not
/// close its connections under it.
struct Alive(Arc<Inner>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.guard_dropped();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.lease.end();
        self.inner.ensure_background();
        let alive = Alive(Arc::clone(&self.inner));
        if self.armed && !self.lease.known_gone() {
            let job = self.job.clone();
            self.inner.releases.queue_places(job, Some(Box::new(alive)));
        }
    }
}
