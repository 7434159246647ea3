//! [`MultiGuard::extend`]: every key's lease to a new TTL, one script call
//! per cluster slot of the set.

use std::ops::Range;
use std::time::{Duration, Instant};

use super::{not_held, MultiGuard};
use crate::engine::lease::Asked;
use crate::policy::error::lost::LostReason;
use crate::policy::error::Error;
use crate::policy::limits::ttl_millis;
use crate::protocol::scripts::{self, Compared};

impl MultiGuard {
    /// Extends every key's lease to `ttl` from now, if this guard still holds
    /// every key. Later automatic renewals use the new TTL. One script call
    /// per cluster slot of the set (one on a single server).
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// use std::time::Duration;
    /// let guard = mutex.lock_all(["report:a", "report:b"]).await?;
    /// guard.extend(Duration::from_secs(120)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotHeld`] naming the first key found lost (the guard is then
    /// lost; keys still held stay so until the guard is dropped);
    /// [`Error::InvalidTtl`] for a TTL out of range; [`Error::Unavailable`] or
    /// [`Error::Timeout`] when Redis could not be asked (some keys may have
    /// been extended; each key stays valid for at least what
    /// [`remaining`](Self::remaining) says); [`Error::NotReplicated`] when the
    /// set was taken with `min_replicas` and too few replicas confirmed the
    /// extension of some slot's keys in time (their leases are unchanged).
    ///
    /// # Cancel safety
    /// Cancel-safe: if dropped mid-flight some extensions may have reached
    /// Redis and some not; the guard stays valid for at least what
    /// [`remaining`](Self::remaining) says, and renewal goes on.
    pub async fn extend(&self, ttl: Duration) -> Result<(), Error> {
        let first = self.leases.first().map_or("", |lease| lease.key.as_str());
        let ttl_ms = ttl_millis(first, ttl)?;
        let ttl = Duration::from_millis(ttl_ms);
        self.inner.ensure_background();
        if let Some(lost) = self.lost_key() {
            return Err(not_held(lost));
        }
        let sent_at = Instant::now();
        // Until the answers are in, each lease counts the shorter of the two.
        let asked: Vec<_> = (self.leases.iter())
            .map(|lease| {
                let shorter = ttl < lease.ttl();
                let asked = lease.extending_to(ttl, sent_at);
                if self.auto_renew && shorter {
                    self.inner.renewer.track(lease, sent_at);
                }
                asked
            })
            .collect();
        let mut unconfirmed = None;
        for group in &self.groups {
            let asked = &asked[group.clone()];
            if let Some(e) = self
                .extend_group(group.clone(), ttl_ms, sent_at, asked)
                .await?
            {
                unconfirmed.get_or_insert(e);
            }
        }
        if let Some(lost) = self.lost_key() {
            return Err(not_held(lost));
        }
        if let Some(e) = unconfirmed {
            return Err(e);
        }
        if self.auto_renew {
            for lease in &self.leases {
                self.inner.renewer.track(lease, sent_at);
            }
        }
        Ok(())
    }

    /// Extends the leases of one group (one cluster slot) by one script
    /// call, and applies each answer to its lease; the
    /// [`Error::NotReplicated`] of a write too few replicas confirmed.
    async fn extend_group(
        &self,
        group: Range<usize>,
        ttl_ms: u64,
        sent_at: Instant,
        asked: &[Asked],
    ) -> Result<Option<Error>, Error> {
        let timeout = self.inner.settings.command_timeout;
        let leases = &self.leases[group];
        let entries: Vec<(&str, &str, u64)> = leases
            .iter()
            .map(|lease| (lease.keys.lock.as_str(), lease.token.as_str(), ttl_ms))
            .collect();
        let rekey = |mut e: Error| {
            e.set_key(&leases[0].key);
            e
        };
        let mut unconfirmed = None;
        let (answers, granted) = match leases[0].confirm {
            None => {
                let answers = scripts::extend(&self.inner.client, &entries, false, timeout).await;
                (answers.map_err(rekey)?, true)
            }
            Some(wait) => {
                let confirmer = &self.inner.confirmer;
                let client = confirmer.client(entries[0].0, timeout).await;
                let client = client.map_err(rekey)?;
                let confirmed = scripts::extend_confirmed(client, &entries, false, wait, timeout);
                let (answers, acked) = confirmed.await.map_err(rekey)?;
                if acked < wait.replicas {
                    unconfirmed = Some(Error::NotReplicated {
                        key: leases[0].key.clone(),
                        acked,
                        wanted: wait.replicas,
                        after: wait.timeout(),
                    });
                }
                (answers, acked >= wait.replicas)
            }
        };
        for ((lease, answer), asked) in leases.iter().zip(answers).zip(asked) {
            match answer {
                // Not confirmed by enough replicas: not granted, the
                // lease stays as it was.
                Compared::Held if !granted => {}
                Compared::Held if lease.confirm(sent_at, *asked) => {}
                Compared::Held => lease.mark_lost(LostReason::Expired),
                Compared::Replaced => lease.mark_lost(LostReason::Replaced),
                Compared::Missing => lease.mark_lost(LostReason::Missing),
            }
        }
        Ok(unconfirmed)
    }
}
