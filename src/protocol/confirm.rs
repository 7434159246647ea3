//! Replica-confirmed writes (`min_replicas`): the settings, and the
//! connection they go through.
//!
//! Redis replicates asynchronously: a lock written on a master that dies
//! before the write reached a replica is gone after the failover, and a
//! second client can take it while the first still believes it holds it.
//! With `min_replicas(n, timeout)` every write of a lock (the acquire script,
//! with its fencing increment; every renewal and extension) is followed by
//! `WAIT n timeout` on the same connection, and counts only when at least
//! `n` replicas acknowledged it.
//!
//! `WAIT` blocks the connection it is sent on until the replicas answer (or
//! the timeout passes), and every command queued behind it on that
//! connection waits too. So confirmed writes go through a connection of
//! their own ([`Confirmer`]), made on first use: locks taken without the
//! option never wait behind a `WAIT`, and pay nothing for it (no extra
//! command, no extra connection).

use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use tokio::sync::OnceCell;

use crate::policy::error::Error;
use crate::policy::limits::MAX_COMMAND_TIMEOUT;

/// How many replicas must acknowledge a lock's writes, and how long to wait
/// for them. Checked: `replicas >= 1`, `timeout_ms` in `1..=3_600_000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct MinReplicas {
    pub(crate) replicas: u32,
    pub(crate) timeout_ms: u64,
}

impl MinReplicas {
    /// The checked setting: `None` (off) for `replicas == 0`; a
    /// [`Error::Config`] for a timeout of zero (`WAIT n 0` would block
    /// forever) or over [`MAX_COMMAND_TIMEOUT`]. A timeout with a fraction
    /// of a millisecond is rounded up (`WAIT` counts whole milliseconds).
    pub(crate) fn check(replicas: u32, timeout: Duration) -> Result<Option<MinReplicas>, Error> {
        if replicas == 0 {
            return Ok(None);
        }
        let message = if timeout.is_zero() {
            "the min_replicas timeout is zero; Redis reads `WAIT n 0` as \"wait forever\", which \
             a lock cannot do: give it a few milliseconds or more (well under the lock's TTL)"
        } else if timeout > MAX_COMMAND_TIMEOUT {
            "the min_replicas timeout is over one hour; a lock cannot wait that long for its \
             replicas (keep it well under the lock's TTL)"
        } else {
            let timeout_ms = timeout.as_nanos().div_ceil(1_000_000) as u64;
            return Ok(Some(MinReplicas {
                replicas,
                timeout_ms,
            }));
        };
        Err(Error::Config {
            message: message.into(),
            source: None,
        })
    }

    /// The `WAIT` timeout.
    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// The connection (a client of its own, cloned from the mutex's) that
/// replica-confirmed writes and their `WAIT`s go through. Made on first use;
/// closed with the mutex.
pub(crate) struct Confirmer {
    base: Client,
    client: OnceCell<Client>,
}

impl Confirmer {
    pub(crate) fn new(base: Client) -> Self {
        Confirmer {
            base,
            client: OnceCell::new(),
        }
    }

    /// The confirming client, connected on first use (bounded by `timeout`).
    pub(crate) async fn client(&self, key: &str, timeout: Duration) -> Result<&Client, Error> {
        self.client
            .get_or_try_init(|| async {
                let client = self.base.clone_new();
                let mut closer = crate::protocol::connect::QuitOnDrop(Some(client.clone()));
                match tokio::time::timeout(timeout, client.init()).await {
                    Ok(Ok(_)) => {
                        closer.0 = None;
                        Ok(client)
                    }
                    Ok(Err(source)) => Err(Error::from_redis(key, source, timeout)),
                    Err(_) => Err(Error::Timeout {
                        key: key.to_owned(),
                        after: timeout,
                    }),
                }
            })
            .await
    }

    /// The confirming client, if it was made.
    pub(crate) fn made(&self) -> Option<Client> {
        self.client.get().cloned()
    }

    /// Closes the confirming connection, if one was made.
    pub(crate) fn close(&self) {
        if let Some(client) = self.client.get() {
            crate::protocol::connect::quit_in_background(client.clone());
        }
    }
}

impl Drop for Confirmer {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert_eq!(MinReplicas::check(0, Duration::ZERO).unwrap(), None);
        assert_eq!(MinReplicas::check(0, Duration::MAX).unwrap(), None);
        assert!(matches!(
            MinReplicas::check(1, Duration::ZERO),
            Err(Error::Config { .. })
        ));
        assert!(matches!(
            MinReplicas::check(1, Duration::MAX),
            Err(Error::Config { .. })
        ));
        assert!(MinReplicas::check(1, MAX_COMMAND_TIMEOUT).is_ok());
        let tiny = MinReplicas::check(u32::MAX, Duration::from_nanos(1))
            .unwrap()
            .unwrap();
        assert_eq!((tiny.replicas, tiny.timeout_ms), (u32::MAX, 1));
        let frac = MinReplicas::check(2, Duration::from_micros(1500))
            .unwrap()
            .unwrap();
        assert_eq!(frac.timeout_ms, 2);
    }
}
