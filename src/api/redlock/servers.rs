//! The N independent servers of a [`Redlock`](crate::Redlock), one
//! [`DistributedMutex`] each (its own client, release worker and release
//! batching), and the per-server commands: each one is the single-server
//! lock's own script, sent on that server's client and bounded by its
//! command timeout (the Redlock's per-server timeout).

use std::sync::Arc;
use std::time::Duration;

use crate::api::mutex::DistributedMutex;
use crate::engine::inner::Inner;
use crate::policy::error::Error;
use crate::policy::retry::RetryStrategy;
use crate::protocol::keys::LockKeys;
use crate::protocol::scripts::{self, Acquired, Compared};

use super::quorum::{quorum, Took};

/// The settings of a Redlock, checked by the builder.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) ttl: Duration,
    pub(crate) retry: RetryStrategy,
    pub(crate) prefix: String,
    /// Each server's command timeout.
    pub(crate) server_timeout: Duration,
    pub(crate) auto_renew: bool,
}

pub(crate) struct Servers {
    /// One per server, in the order given; notifications off, renewal and
    /// waiting are the Redlock's.
    pub(crate) mutexes: Vec<DistributedMutex>,
    /// `host:port` of each, for messages.
    pub(crate) names: Vec<String>,
    pub(crate) quorum: usize,
    pub(crate) settings: Settings,
}

impl Servers {
    pub(crate) fn new(
        mutexes: Vec<DistributedMutex>,
        names: Vec<String>,
        settings: Settings,
    ) -> Self {
        Servers {
            quorum: quorum(mutexes.len()),
            mutexes,
            names,
            settings,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.mutexes.len()
    }

    pub(crate) fn inner(&self, i: usize) -> &Arc<Inner> {
        self.mutexes[i].inner()
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.mutexes.iter().any(|m| m.inner().is_shut_down())
    }

    /// Makes sure every server's release worker runs.
    pub(crate) fn ensure_background(&self) {
        for m in &self.mutexes {
            m.inner().ensure_background();
        }
    }

    /// One acquisition attempt on server `i`: `SET key token NX PX ttl`,
    /// and when the key exists, the acquire script (which sees a re-sent
    /// `SET` of ours, and returns the holder's remaining lease).
    pub(crate) async fn take(
        &self,
        i: usize,
        key: &str,
        keys: &LockKeys,
        token: &str,
        ttl_ms: u64,
    ) -> Took {
        let inner = self.inner(i);
        let (client, timeout) = (&inner.client, inner.settings.command_timeout);
        let ask = scripts::Ask {
            token,
            ttl_ms,
            fencing: false,
            queueing: scripts::Queueing::No,
            pubsub: inner.waiters.pubsub(),
        };
        let call = async {
            if scripts::set_nx(client, keys, ask, timeout).await? {
                return Ok(Took::Taken);
            }
            Ok(match scripts::acquire(client, keys, ask, timeout).await? {
                Acquired::Yes { .. } => Took::Taken,
                Acquired::No { pttl } => Took::Busy(pttl),
                // Only an attempt that queues can be answered so.
                Acquired::Queued => Took::Busy(None),
            })
        };
        match call.await {
            Ok(took) => took,
            Err(e) => Took::Failed(self.named(i, key, e)),
        }
    }

    /// Compare-and-pexpire on server `i`.
    pub(crate) async fn extend(
        &self,
        i: usize,
        key: &str,
        keys: &LockKeys,
        token: &str,
        ttl_ms: u64,
    ) -> Result<Compared, Error> {
        let inner = self.inner(i);
        let entry = [(keys.lock.as_str(), token, ttl_ms)];
        let answer =
            scripts::extend(&inner.client, &entry, false, inner.settings.command_timeout).await;
        match answer {
            Ok(answers) => Ok(answers.first().copied().unwrap_or(Compared::Missing)),
            Err(e) => Err(self.named(i, key, e)),
        }
    }

    /// Compare-and-delete on server `i` (through its release batching).
    pub(crate) async fn release(
        &self,
        i: usize,
        key: &str,
        keys: &LockKeys,
        token: &str,
    ) -> Result<Compared, Error> {
        let inner = self.inner(i);
        inner.ensure_background();
        match inner.batcher.release(keys, token, "", None).await {
            Ok(answer) => Ok(answer),
            Err(e) => Err(self.named(i, key, e)),
        }
    }

    /// Hands a release of `token` on server `i` to its release worker:
    /// never blocks, retried on transient errors, then left to the TTL.
    pub(crate) fn queue_release(&self, i: usize, keys: &LockKeys, token: &str) {
        let inner = self.inner(i);
        inner.releases.queue(keys.clone(), token.to_owned());
        inner.ensure_background();
    }

    /// An error of server `i`, about `key` as the caller gave it, with the
    /// server named (Unavailable's source says which one).
    fn named(&self, i: usize, key: &str, mut e: Error) -> Error {
        e.set_key(key);
        match e {
            Error::Unavailable { key, source } => Error::Unavailable {
                key,
                source: fred::error::Error::new(
                    source.kind().clone(),
                    format!("{} ({})", source.details(), self.names[i]),
                ),
            },
            other => other,
        }
    }
}
