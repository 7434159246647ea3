//! Following a Redis Sentinel failover.
//!
//! fred's Sentinel client asks the sentinels for the master (and checks its
//! `ROLE`) only when it connects. After a failover the old master may stay
//! up, and go on answering as a master, for several seconds (a manual
//! `SENTINEL FAILOVER` leaves it a master until a sentinel reconfigures it,
//! about ten seconds later); a client that stays connected to it writes its
//! locks there, where they are lost.
//!
//! So a mutex over a Sentinel client watches the sentinels itself: one
//! subscriber connection per configured sentinel, subscribed to
//! `+switch-master` and `+promoted-slave`. When a sentinel announces a new
//! master for the service (or that the replica it promoted answers as one),
//! the mutex
//!
//! 1. marks the switch as begun ([`Epoch`]): from now until it is done, no
//!    acquisition and no renewal answered by Redis counts (an acquisition
//!    tries again, on the new master; a renewal is retried);
//! 2. reconnects its client until it is connected to the announced master
//!    (fred asks the sentinels again; one that has not heard of the switch
//!    yet may name the old master, so it retries until the address matches),
//!    then the replica-confirming connection the same way, and the
//!    release-notification subscriber;
//! 3. marks the switch as done and renews every held lease at once, so a
//!    guard whose key did not reach the new master is reported lost now,
//!    not a renewal period later.
//!
//! Nothing of this runs for a client that is not a Sentinel client, and an
//! acquisition or a renewal only reads one atomic counter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::{Config, ServerConfig};
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::engine::epoch::Epoch;
use crate::engine::notify::Reconnect;
use crate::engine::renew::RenewAll;
use crate::protocol::confirm::Confirmer;

/// The channel on which sentinels announce a new master (every sentinel,
/// once it has adopted the new configuration: the one that ran the
/// failover at its end).
const SWITCH_MASTER: &str = "+switch-master";
/// The channel on which the sentinel running a failover announces that the
/// replica it chose answers as a master: the earliest sign that the old
/// master is no longer the master (up to a second before `+switch-master`,
/// while the other replicas are moved over).
const PROMOTED_REPLICA: &str = "+promoted-slave";
/// The longest a switch is followed before giving up (the client then
/// stays where fred's own reconnection puts it).
const FOLLOW_LIMIT: Duration = Duration::from_secs(10);
/// Between two reconnections while following.
const FOLLOW_PAUSE: Duration = Duration::from_millis(100);
/// After a sentinel could not be reached, before trying it again.
const SENTINEL_PAUSE: Duration = Duration::from_secs(1);

/// What is reconnected after a switch.
pub(crate) struct Followers {
    pub(crate) client: Client,
    pub(crate) confirmer: Arc<Confirmer>,
    pub(crate) waiters: Reconnect,
    pub(crate) renew: RenewAll,
    pub(crate) epoch: Arc<Epoch>,
    pub(crate) timeout: Duration,
}

/// The sentinel watch of one mutex (only over a Sentinel client).
pub(crate) struct Watch {
    shared: Arc<Shared>,
}

struct Shared {
    followers: Followers,
    service: String,
    /// One template per configured sentinel (a centralized config with the
    /// sentinels' credentials and the client's TLS settings).
    sentinels: Vec<Config>,
    /// One switch followed at a time.
    following: tokio::sync::Mutex<()>,
    /// The subscribers of the current home runtime, closed with the mutex.
    subscribers: Mutex<Vec<SubscriberClient>>,
    closed: AtomicBool,
    close: Notify,
}

impl Watch {
    /// A watch for `followers.client` if it is a Sentinel client.
    pub(crate) fn new(followers: Followers) -> Option<Watch> {
        let config = followers.client.client_config();
        let ServerConfig::Sentinel {
            hosts,
            service_name,
            username,
            password,
        } = &config.server
        else {
            return None;
        };
        let sentinels = hosts
            .iter()
            .map(|host| Config {
                server: ServerConfig::Centralized {
                    server: host.clone(),
                },
                username: username.clone(),
                password: password.clone(),
                #[cfg(feature = "tls")]
                tls: config.tls.clone(),
                ..Config::default()
            })
            .collect();
        Some(Watch {
            shared: Arc::new(Shared {
                service: service_name.clone(),
                followers,
                sentinels,
                following: tokio::sync::Mutex::new(()),
                subscribers: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                close: Notify::new(),
            }),
        })
    }

    /// Starts one watcher task per sentinel on `home` (again, when the old
    /// home runtime stopped).
    pub(crate) fn start(&self, home: &Handle) {
        if self.shared.closed.load(Ordering::SeqCst) {
            return;
        }
        for config in &self.shared.sentinels {
            home.spawn(watch(Arc::clone(&self.shared), config.clone()));
        }
    }

    /// Stops watching and closes the sentinel connections.
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.close.notify_waiters();
        let subscribers = std::mem::take(
            &mut *self
                .shared
                .subscribers
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if let Ok(runtime) = Handle::try_current() {
            for s in subscribers {
                runtime.spawn(async move {
                    let _ = s.quit().await;
                });
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.shared.closed.load(Ordering::SeqCst) {
            self.close();
        }
    }
}

/// Watches one sentinel: (re)connects, subscribes to `+switch-master`, and
/// follows every switch of our service it announces.
async fn watch(shared: Arc<Shared>, config: Config) {
    let timeout = shared.followers.timeout;
    while !shared.closed.load(Ordering::SeqCst) {
        let Some(subscriber) = subscribe(&shared, &config, timeout).await else {
            tokio::select! {
                _ = tokio::time::sleep(SENTINEL_PAUSE) => continue,
                _ = shared.close.notified() => return,
            }
        };
        let mut messages = subscriber.message_rx();
        loop {
            let message = tokio::select! {
                m = messages.recv() => m,
                _ = shared.close.notified() => return,
            };
            match message {
                Ok(message) => {
                    if let Some(target) =
                        switched_to(&shared.service, &message.channel, &message.value)
                    {
                        follow(&shared, target).await;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    }
}

/// A subscriber to `+switch-master` on one sentinel (reconnecting and
/// resubscribing by itself), or `None` if the sentinel cannot be reached.
async fn subscribe(
    shared: &Shared,
    config: &Config,
    timeout: Duration,
) -> Option<SubscriberClient> {
    let client = &shared.followers.client;
    let mut builder = fred::types::Builder::from_config(config.clone());
    builder.set_connection_config(client.connection_config().clone());
    if let Some(policy) = client.client_reconnect_policy() {
        builder.set_policy(policy);
    }
    let subscriber = builder.build_subscriber_client().ok()?;
    let ready = tokio::time::timeout(timeout, async {
        subscriber.init().await?;
        subscriber
            .subscribe(vec![SWITCH_MASTER, PROMOTED_REPLICA])
            .await
    })
    .await;
    match ready {
        Ok(Ok(())) => {
            drop(subscriber.manage_subscriptions());
            let mut subscribers = shared.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            if shared.closed.load(Ordering::SeqCst) {
                drop(subscribers);
                let _ = subscriber.quit().await;
                return None;
            }
            subscribers.push(subscriber.clone());
            Some(subscriber)
        }
        outcome => {
            tracing::debug!(
                error = ?outcome.ok().and_then(|r| r.err()),
                "a sentinel could not be reached to watch for failovers; trying again"
            );
            let _ = subscriber.quit().await;
            None
        }
    }
}

/// The new master a message announces for `service`: on `+switch-master`,
/// `<name> <old-ip> <old-port> <new-ip> <new-port>`; on `+promoted-slave`,
/// `slave <ip>:<port> <ip> <port> @ <name> <master-ip> <master-port>`.
fn switched_to(service: &str, channel: &str, value: &fred::types::Value) -> Option<(String, u16)> {
    let text = value.as_str()?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    let (name, ip, port) = match (channel, fields.as_slice()) {
        (SWITCH_MASTER, [name, _, _, ip, port]) => (*name, *ip, *port),
        (PROMOTED_REPLICA, ["slave", _, ip, port, "@", name, _, _]) => (*name, *ip, *port),
        _ => return None,
    };
    (name == service).then(|| Some((ip.to_owned(), port.parse().ok()?)))?
}

fn connected_to(client: &Client, target: &(String, u16)) -> bool {
    client
        .active_connections()
        .iter()
        .any(|s| s.port == target.1 && *s.host == *target.0)
}

/// Reconnects `client` until it is connected to `target` (or `deadline`).
async fn reconnect_to(
    client: &Client,
    target: &(String, u16),
    deadline: Instant,
    timeout: Duration,
) {
    while !connected_to(client, target) && Instant::now() < deadline {
        let _ = tokio::time::timeout(timeout, client.force_reconnection()).await;
        if connected_to(client, target) {
            return;
        }
        tokio::time::sleep(FOLLOW_PAUSE).await;
    }
}

/// Moves every connection of the mutex to the master at `target`, then
/// renews every held lease at once.
async fn follow(shared: &Shared, target: (String, u16)) {
    let _one = shared.following.lock().await;
    let f = &shared.followers;
    let confirmer = f.confirmer.made();
    let behind = !connected_to(&f.client, &target)
        || confirmer
            .as_ref()
            .is_some_and(|c| !connected_to(c, &target));
    if !behind {
        return;
    }
    let started = Instant::now();
    f.epoch.begin();
    tracing::info!(
        master = %format!("{}:{}", target.0, target.1),
        "Sentinel announced a new master; reconnecting to it"
    );
    let deadline = started + FOLLOW_LIMIT;
    reconnect_to(&f.client, &target, deadline, f.timeout).await;
    if let Some(confirmer) = &confirmer {
        reconnect_to(confirmer, &target, deadline, f.timeout).await;
    }
    f.waiters.now();
    f.epoch.end();
    f.renew.now();
    if connected_to(&f.client, &target) {
        tracing::info!(
            master = %format!("{}:{}", target.0, target.1),
            after = ?started.elapsed(),
            "following the new master; held locks are being checked there"
        );
    } else {
        tracing::warn!(
            master = %format!("{}:{}", target.0, target.1),
            "could not reconnect to the new master Sentinel announced within {FOLLOW_LIMIT:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch() {
        let e = Epoch::default();
        let before = e.read();
        assert!(e.unchanged(before));
        e.begin();
        assert!(!e.unchanged(before));
        let during = e.read();
        assert!(!e.unchanged(during));
        e.end();
        let after = e.read();
        assert!(e.unchanged(after));
        assert!(!e.unchanged(during));
    }

    #[test]
    fn switch_message() {
        let to = Some(("127.0.0.1".to_owned(), 6380));
        let v = fred::types::Value::from("mymaster 127.0.0.1 6379 127.0.0.1 6380");
        assert_eq!(switched_to("mymaster", SWITCH_MASTER, &v), to);
        assert_eq!(switched_to("other", SWITCH_MASTER, &v), None);
        assert_eq!(switched_to("mymaster", PROMOTED_REPLICA, &v), None);
        let bad = fred::types::Value::from("mymaster 127.0.0.1 6379");
        assert_eq!(switched_to("mymaster", SWITCH_MASTER, &bad), None);
        let promoted = fred::types::Value::from(
            "slave 127.0.0.1:6380 127.0.0.1 6380 @ mymaster 127.0.0.1 6379",
        );
        assert_eq!(switched_to("mymaster", PROMOTED_REPLICA, &promoted), to);
        assert_eq!(switched_to("other", PROMOTED_REPLICA, &promoted), None);
    }
}
