//! Group commit for first attempts (see `group_commit.rs`).
//!
//! On one server (or a Sentinel master), the first attempts of locks that
//! arrive together go out as one script call of plain `SET key token NX PX
//! ttl`s (`set_nx.lua`) instead of one command each: one frame, one socket
//! write and one reply for the lot, on the client and on the server. A lone
//! attempt is a plain `SET NX`, as before. A cluster sends its first
//! attempts one by one (see `scripts::set_nx`).
//!
//! An attempt whose acquisition is dropped before its batch is sent is
//! taken out of it and never sent ([`Withdraw::Unsent`]); once sent, the
//! acquisition's release goes out after it on the same connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;

use crate::engine::group_commit::{Flush, GroupCommit, Withdraw};
use crate::engine::join::{join_all, Boxed};
use crate::policy::error::Error;
use crate::protocol::route::Group;
use crate::protocol::scripts::{self, FirstAttempt};

/// How a batch of first attempts is sent.
pub(crate) struct FirstAttempts {
    client: Client,
    timeout: Duration,
    /// `set_nx.lua` is loaded: batches go as one `EVALSHA`.
    loaded: Arc<AtomicBool>,
    /// A load is under way (or done); cleared when one fails, so the next
    /// batch tries again.
    loading: Arc<AtomicBool>,
}

impl FirstAttempts {
    fn new(client: Client, timeout: Duration) -> Self {
        FirstAttempts {
            client,
            timeout,
            loaded: Arc::default(),
            loading: Arc::default(),
        }
    }

    /// Loads the script in the background (again after a load failed).
    fn load(&self) {
        if self.loading.swap(true, Ordering::Relaxed) {
            return;
        }
        let client = self.client.clone();
        let (timeout, loaded) = (self.timeout, Arc::clone(&self.loaded));
        let under_way = Arc::clone(&self.loading);
        let loading = async move {
            let ok = scripts::load_set_nx(&client, timeout).await;
            loaded.store(ok, Ordering::Relaxed);
            under_way.store(ok, Ordering::Relaxed);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(loading)),
            Err(_) => self.loading.store(false, Ordering::Relaxed),
        }
    }
}

impl Flush for FirstAttempts {
    type Entry = FirstAttempt;
    type Answer = Result<bool, Error>;

    fn flush(&self, batch: Vec<FirstAttempt>) -> Boxed<'static, Vec<Self::Answer>> {
        let client = self.client.clone();
        let timeout = self.timeout;
        if batch.len() > 1 && self.loaded.load(Ordering::Relaxed) {
            return Box::pin(async move {
                match scripts::set_nx_many(&client, &batch, timeout).await {
                    Ok(set) => set.into_iter().map(Ok).collect(),
                    Err(e) => batch
                        .iter()
                        .map(|a| {
                            let mut e = e.clone();
                            e.set_key(&a.key);
                            Err(e)
                        })
                        .collect(),
                }
            });
        }
        if batch.len() > 1 {
            self.load();
        }
        // One `SET NX` each, all handed to the client by the first poll.
        let sets: Vec<Boxed<'static, Result<bool, Error>>> = batch
            .into_iter()
            .map(|a| {
                let client = client.clone();
                Box::pin(async move {
                    scripts::set_nx_one(&client, &a.key, &a.token, a.ttl_ms, timeout).await
                }) as Boxed<'static, _>
            })
            .collect();
        Box::pin(join_all(sets))
    }
}

/// Sends first attempts on one server, grouping those that arrive together.
#[derive(Clone)]
pub(crate) struct FirstAttemptBatcher {
    commit: GroupCommit<FirstAttempts>,
}

impl FirstAttemptBatcher {
    pub(crate) fn new(client: Client, timeout: Duration) -> Self {
        FirstAttemptBatcher {
            commit: GroupCommit::new(FirstAttempts::new(client, timeout), Withdraw::Unsent),
        }
    }

    /// `SET key token NX PX ttl_ms`, with the others that arrive together:
    /// `true` when it set the key.
    pub(crate) async fn set_nx(&self, key: &str, token: &str, ttl_ms: u64) -> Result<bool, Error> {
        let attempt = FirstAttempt {
            key: key.to_owned(),
            token: token.to_owned(),
            ttl_ms,
        };
        let timeout = self.commit.flusher().timeout;
        // Never answered (no runtime left to send its batch): unknown.
        self.commit
            .submit(Group::Slot(0), attempt)
            .await
            .unwrap_or_else(|| {
                Err(Error::Timeout {
                    key: key.to_owned(),
                    after: timeout,
                })
            })
    }
}
