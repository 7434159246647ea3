//! What every handle of one mutex shares: the client, the settings, and the
//! background machinery (release worker, renewer, waiters).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;

use crate::engine::batch::Batcher;
use crate::engine::epoch::Epoch;
use crate::engine::first_attempts::FirstAttemptBatcher;
use crate::engine::notify::Waiters;
use crate::engine::release::ReleaseQueue;
use crate::engine::renew::Renewer;
use crate::engine::sentinel::{Followers, Watch};
use crate::policy::retry::RetryStrategy;
use crate::protocol::background::Home;
use crate::protocol::channel::Mode;
use crate::protocol::confirm::{Confirmer, MinReplicas};

/// The settings of a mutex, checked by the builder.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) ttl: Duration,
    pub(crate) retry: RetryStrategy,
    pub(crate) prefix: String,
    pub(crate) command_timeout: Duration,
    pub(crate) auto_renew: bool,
    pub(crate) fencing: bool,
    pub(crate) notifications: bool,
    /// Replica confirmation of every write of a lock (off: `None`).
    pub(crate) min_replicas: Option<MinReplicas>,
    /// Metric labels (feature `metrics`; nothing without it).
    pub(crate) metrics: crate::engine::metrics::Config,
    /// The holder label put in lock tokens (`holder.rs`), if any.
    pub(crate) holder: Option<String>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) settings: Settings,
    pub(crate) waiters: Waiters,
    /// Sends releases, grouped while one is in flight.
    pub(crate) batcher: Batcher,
    /// Sends first attempts, grouped when they arrive together (per master on
    /// a cluster).
    pub(crate) first_attempts: FirstAttemptBatcher,
    pub(crate) releases: ReleaseQueue,
    pub(crate) renewer: Renewer,
    /// The connection of replica-confirmed writes (made on first use).
    pub(crate) confirmer: Arc<Confirmer>,
    /// Master switches followed (Sentinel only; always even elsewhere).
    pub(crate) epoch: Arc<Epoch>,
    /// The sentinel watch (a Sentinel client only).
    watch: Option<Watch>,
    home: Home,
    shut_down: AtomicBool,
    /// Guards alive now: the connections close once the mutex is shut down
    /// and none is left.
    live_guards: AtomicUsize,
}

impl Inner {
    pub(crate) fn new(client: Client, owns_client: bool, settings: Settings) -> Self {
        // A random id, sent with releases so this mutex can tell its own.
        let id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let timeout = settings.command_timeout;
        let mode = Arc::new(Mode::default());
        let batcher = Batcher::new(client.clone(), timeout, Arc::clone(&mode));
        let confirmer = Arc::new(Confirmer::new(client.clone()));
        let epoch = Arc::new(Epoch::default());
        let renewer = Renewer::new(
            client.clone(),
            Arc::clone(&confirmer),
            Arc::clone(&epoch),
            timeout,
        );
        let waiters = Waiters::new(client.clone(), timeout, id, Arc::clone(&mode));
        let watch = Watch::new(Followers {
            client: client.clone(),
            confirmer: Arc::clone(&confirmer),
            waiters: waiters.reconnect_handle(),
            renew: renewer.renew_all_handle(),
            epoch: Arc::clone(&epoch),
            timeout,
        });
        let inner = Inner {
            releases: ReleaseQueue::new(
                client.clone(),
                owns_client,
                timeout,
                batcher.clone(),
                Arc::clone(&mode),
                settings.metrics.clone(),
            ),
            batcher,
            first_attempts: FirstAttemptBatcher::new(client.clone(), timeout),
            renewer,
            confirmer,
            epoch,
            watch,
            waiters,
            client,
            settings,
            home: Home::new(),
            shut_down: AtomicBool::new(false),
            live_guards: AtomicUsize::new(0),
        };
        inner.ensure_background();
        inner
    }

    /// Makes sure the background tasks run, on the caller's runtime if the
    /// one they ran on has stopped. Cheap: one lock and one atomic load.
    pub(crate) fn ensure_background(&self) {
        self.home.ensure(|home| {
            self.releases.start(home);
            self.renewer.start(home);
            if self.settings.notifications {
                self.waiters.start(home);
            }
            if let Some(watch) = &self.watch {
                watch.start(home);
            }
        });
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::SeqCst)
    }

    /// Refuses new locks from now on; closes the connections once no guard
    /// is alive (now, or when the last one is dropped).
    pub(crate) fn shut_down(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
        if self.live_guards.load(Ordering::SeqCst) == 0 {
            self.close();
        }
    }

    pub(crate) fn guard_created(&self) {
        self.live_guards.fetch_add(1, Ordering::SeqCst);
    }

    /// Called by a guard's drop, after it queued its release.
    pub(crate) fn guard_dropped(&self) {
        let left = self.live_guards.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 && self.is_shut_down() {
            self.close();
        }
    }

    /// Closes the subscriber connection now, and the client (when the mutex
    /// made it) once every queued release has run.
    fn close(&self) {
        self.ensure_background();
        self.waiters.close();
        self.releases.close();
        self.confirmer.close();
        if let Some(watch) = &self.watch {
            watch.close();
        }
    }

    /// After a shutdown with no guard alive: waits (at most a command
    /// timeout) until the connections are closed.
    pub(crate) async fn wait_closed(&self) {
        if !self.is_shut_down() || self.live_guards.load(Ordering::SeqCst) > 0 {
            return;
        }
        let closed = async {
            self.releases.closed().await;
            self.waiters.closed().await;
        };
        let _ = tokio::time::timeout(self.settings.command_timeout, closed).await;
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
