//! [`MultiGuard`]: a held multi-key lock, and [`LostKey`], which key of it
//! was lost.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::engine::inner::Inner;
use crate::engine::join::{join_all, Boxed};
use crate::engine::lease::{Lease, LeaseCore};
use crate::policy::error::lost::LostReason;
use crate::policy::error::Error;
use crate::protocol::scripts::Compared;

mod extend;

/// Which key of a multi-key lock was lost, and why: what
/// [`MultiGuard::lost`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct LostKey {
    /// The key as the caller gave it (without the mutex's key prefix).
    pub key: String,
    /// Why it was lost.
    pub reason: LostReason,
}

impl fmt::Display for LostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lock `{}` of the set: {}", self.key, self.reason)
    }
}

/// A held multi-key lock, from
/// [`DistributedMutex::lock_all`](crate::DistributedMutex::lock_all): every
/// key of the set holds this guard's [`token`](MultiGuard::token). Dropping
/// it releases every key.
///
/// It behaves as a [`LockGuard`](crate::LockGuard) for each key at once:
///
/// * every key's lease is renewed in the background while the guard lives
///   (unless taken with `auto_renew(false)`);
/// * [`remaining`](MultiGuard::remaining) is the shortest remaining lease
///   of the keys;
/// * the guard is lost as soon as any one key is lost:
///   [`is_lost`](MultiGuard::is_lost), and [`lost`](MultiGuard::lost) which
///   says which key and why. The other keys are still held (and renewed)
///   until the guard is released or dropped;
/// * [`release`](MultiGuard::release) releases every key now and reports
///   whether all were still held; dropping the guard hands the releases to
///   the mutex's background worker (`Drop` never blocks and never panics).
///   Every release is token-checked.
///
/// A multi-key lock has no fencing tokens.
#[must_use = "the locks are released as soon as the guard is dropped"]
pub struct MultiGuard {
    inner: Arc<Inner>,
    /// One lease per key, in canonical order (cluster slot, then key).
    leases: Vec<Arc<LeaseCore>>,
    /// Runs of `leases` in one cluster slot (one run on a single server).
    groups: Vec<Range<usize>>,
    auto_renew: bool,
    /// Whether `Drop` must release.
    armed: bool,
}

impl MultiGuard {
    pub(crate) fn new(
        inner: Arc<Inner>,
        leases: Vec<Arc<LeaseCore>>,
        groups: Vec<Range<usize>>,
        auto_renew: bool,
    ) -> Self {
        inner.guard_created();
        MultiGuard {
            inner,
            leases,
            groups,
            auto_renew,
            armed: true,
        }
    }

    /// The keys of the set as the caller gave them, without duplicates, in
    /// the order they were taken: by cluster slot, then by key.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.leases.iter().map(|lease| lease.key.as_str())
    }

    /// The random token (a v4 UUID) stored as the value of every key of the
    /// set.
    pub fn token(&self) -> &str {
        self.leases.first().map_or("", |lease| lease.token.as_str())
    }

    /// The lease the set was last taken, extended or renewed with.
    pub fn ttl(&self) -> Duration {
        self.leases
            .iter()
            .map(|lease| lease.ttl())
            .min()
            .unwrap_or_default()
    }

    /// How long every key of the set is at least still held: the shortest
    /// of their remaining leases (see
    /// [`LockGuard::remaining`](crate::LockGuard::remaining)). Zero once any
    /// key is lost.
    pub fn remaining(&self) -> Duration {
        self.leases
            .iter()
            .map(|lease| lease.remaining())
            .min()
            .unwrap_or_default()
    }

    /// `true` once any key of the set is known lost.
    pub fn is_lost(&self) -> bool {
        self.lost_key().is_some()
    }

    /// The first key of the set (in the order of [`keys`](Self::keys)) known
    /// lost now, if any; [`lost`](Self::lost) waits for one.
    pub fn lost_key(&self) -> Option<LostKey> {
        self.inner.ensure_background();
        self.leases.iter().find_map(|lease| {
            lease.lost_reason().map(|reason| LostKey {
                key: lease.key.clone(),
                reason,
            })
        })
    }

    /// Completes when any key of the set is known lost, with that key and
    /// the reason (see [`LockGuard::lost`](crate::LockGuard::lost) for the
    /// reasons). When several are lost at once, the first in the order of
    /// [`keys`](Self::keys).
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// # async fn transfer() {}
    /// let guard = mutex.lock_all(["account:1", "account:2"]).await?;
    /// tokio::select! {
    ///     lost = guard.lost() => eprintln!("{lost}; stopping"),
    ///     () = transfer() => {}
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    /// Cancel-safe: it only watches; dropping it changes nothing.
    pub async fn lost(&self) -> LostKey {
        self.inner.ensure_background();
        if let Some(lost) = self.lost_key() {
            return lost;
        }
        let mut watches: Vec<Boxed<'_, LostReason>> = self
            .leases
            .iter()
            .map(|lease| Box::pin(lease.lost()) as Boxed<'_, LostReason>)
            .collect();
        let (index, reason) = std::future::poll_fn(|cx| {
            for (i, watch) in watches.iter_mut().enumerate() {
                if let Poll::Ready(reason) = watch.as_mut().poll(cx) {
                    return Poll::Ready((i, reason));
                }
            }
            Poll::Pending
        })
        .await;
        // Another key may have been lost first in the same instant.
        self.lost_key().unwrap_or_else(|| LostKey {
            key: self.leases[index].key.clone(),
            reason,
        })
    }

    /// A cheap, cloneable view of each key's lease, in the order of
    /// [`keys`](Self::keys), for work that runs under the lock.
    pub fn leases(&self) -> Vec<Lease> {
        self.leases
            .iter()
            .map(|lease| Lease {
                core: Arc::clone(lease),
            })
            .collect()
    }

    /// Releases every key of the set now (the releases go out together).
    ///
    /// # Errors
    /// [`Error::NotHeld`] naming the first key (in the order of
    /// [`keys`](Self::keys)) that had already been lost: gone
    /// ([`LostReason::Missing`]) or held by someone else
    /// ([`LostReason::Replaced`], left untouched); the keys still held were
    /// released all the same. Else, on a transient error
    /// ([`Error::Unavailable`], [`Error::Timeout`]) for some key, that error:
    /// the releases whose outcome is unknown are handed to the background
    /// worker for more tries, and the keys otherwise expire with their lease.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let guard = mutex.lock_all(["account:1", "account:2"]).await?;
    /// // ... move the money ...
    /// guard.release().await?; // Err(NotHeld) if a lease ran out meanwhile
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    /// Cancel-safe: if the future is dropped before the answers, the guard's
    /// drop queues the releases in the background (a second release of the
    /// same token is harmless: it finds the key gone).
    pub async fn release(mut self) -> Result<(), Error> {
        for lease in &self.leases {
            lease.end();
        }
        self.inner.ensure_background();
        let inner = &self.inner;
        let releases: Vec<Boxed<'_, Result<Compared, Error>>> = self
            .leases
            .iter()
            .map(|lease| {
                Box::pin(inner.batcher.release(&lease.keys, &lease.token, "", None))
                    as Boxed<'_, Result<Compared, Error>>
            })
            .collect();
        let answers = join_all(releases).await;
        let mut lost = None;
        let mut failed = None;
        for (lease, answer) in self.leases.iter().zip(answers) {
            let reason = match answer {
                Ok(Compared::Held) => continue,
                Ok(Compared::Missing) => LostReason::Missing,
                Ok(Compared::Replaced) => LostReason::Replaced,
                Err(mut e) => {
                    // Unknown outcome: more tries in the background.
                    self.inner
                        .releases
                        .queue(lease.keys.clone(), lease.token.clone());
                    e.set_key(&lease.key);
                    failed.get_or_insert(e);
                    continue;
                }
            };
            lease.metrics.lost(reason);
            lost.get_or_insert(LostKey {
                key: lease.key.clone(),
                reason,
            });
        }
        self.armed = false;
        if let Some(lost) = lost {
            return Err(not_held(lost));
        }
        if let Some(e) = failed {
            return Err(e);
        }
        tracing::debug!(keys = self.leases.len(), "multi-key lock released");
        Ok(())
    }
}

fn not_held(lost: LostKey) -> Error {
    Error::NotHeld {
        key: lost.key,
        reason: lost.reason,
    }
}

impl Drop for MultiGuard {
    fn drop(&mut self) {
        for lease in &self.leases {
            lease.end();
            if self.armed && !lease.known_gone() {
                self.inner
                    .releases
                    .queue(lease.keys.clone(), lease.token.clone());
            }
        }
        self.inner.ensure_background();
        self.inner.guard_dropped();
    }
}

impl fmt::Debug for MultiGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiGuard")
            .field("keys", &self.keys().collect::<Vec<_>>())
            .field("token", &self.token())
            .field("remaining", &self.remaining())
            .finish()
    }
}
