//! Making a [`DistributedMutex`]: `new`, `connect`, and the [`Builder`] for
//! other settings than the defaults.

use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;

use crate::api::mutex::DistributedMutex;
use crate::engine::inner::{Inner, Settings};
use crate::engine::options::setters;
use crate::policy::error::Error;
use crate::policy::limits::{
    ttl_millis, validate_command_timeout, DEFAULT_COMMAND_TIMEOUT, DEFAULT_TTL, MAX_PREFIX_LEN,
};
use crate::policy::retry::RetryStrategy;
use crate::protocol::confirm::MinReplicas;
use crate::protocol::keys::prefix_is_valid;

#[cfg(feature = "metrics")]
mod metrics;

/// The ways to make a mutex: over a client, or over a connection it makes.
impl DistributedMutex {
    /// A mutex over a connected fred client, with the defaults: a TTL of one
    /// minute, [`RetryStrategy::linear`]`(250 ms, 20)`, no key prefix and a
    /// command timeout of two seconds.
    ///
    /// Give the client a reconnect policy (fred has none by default, and
    /// without one a command after a dropped connection fails for good), or
    /// use [`DistributedMutex::connect`], which does.
    pub fn new(client: Client) -> Self {
        Builder::new(client, false).build_unchecked()
    }

    /// A builder to change the defaults.
    ///
    /// ```no_run
    /// use distributed_mutex::{DistributedMutex, RetryStrategy};
    /// use std::time::Duration;
    ///
    /// # fn demo(client: fred::clients::Client) -> Result<(), distributed_mutex::Error> {
    /// let mutex = DistributedMutex::builder(client)
    ///     .ttl(Duration::from_secs(10))
    ///     .retry(RetryStrategy::exponential(Duration::from_millis(10), Duration::from_secs(1), 30))
    ///     .key_prefix("locks:")
    ///     .command_timeout(Duration::from_millis(500))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn builder(client: Client) -> Builder {
        Builder::new(client, false)
    }

    /// Connects to `url` (`redis://[user:password@]host:port[/db]`, or the
    /// other URL forms fred accepts) with a client set up the way a lock needs
    /// it, and returns a mutex with the defaults.
    ///
    /// The client reconnects by itself (exponential backoff from 100 ms to
    /// 2 s, forever), bounds connecting and every command by the command
    /// timeout, and fails at once if the first connection cannot be made.
    ///
    /// Behind Redis Sentinel, give the sentinels and the service name:
    /// `redis-sentinel://[[user:]password@]sentinel1:26379?node=sentinel2:26379&sentinelServiceName=mymaster`,
    /// with `sentinelUsername=...&sentinelPassword=...` when the sentinels
    /// have credentials of their own (the ones before `@` are the data
    /// nodes'). The mutex then follows a failover by itself: it listens to
    /// the sentinels' `+switch-master` and `+promoted-slave`, reconnects to
    /// the new master, and re-checks every held lock there at once (a guard
    /// whose key did not reach the new master is reported lost right away);
    /// an acquisition answered while the master was changing does not count
    /// and is tried again on the new master. A lock written on the old
    /// master in the moment before the switch was announced can still be
    /// lost with it; [`Builder::min_replicas`] closes that gap.
    ///
    /// The mutex owns this client: [`shutdown`](Self::shutdown) (or dropping
    /// the last handle and guard) closes it.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed URL or a refused password,
    /// [`Error::Unavailable`] or [`Error::Timeout`] when the server cannot be
    /// reached.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future drops the half-made client.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Ok(Builder::connect(url).await?.build_unchecked())
    }
}

/// Builds a [`DistributedMutex`] with other settings than the defaults.
/// Made by [`DistributedMutex::builder`].
#[derive(Debug)]
#[must_use = "call .build() to get the mutex"]
pub struct Builder {
    client: Client,
    /// Whether the mutex made the client (and so closes it).
    owns_client: bool,
    pub(crate) settings: Settings,
    /// `min_replicas` as given, checked by `build`.
    min_replicas: Option<(u32, Duration)>,
}

impl Builder {
    pub(crate) fn new(client: Client, owns_client: bool) -> Self {
        Builder {
            client,
            owns_client,
            settings: Settings {
                ttl: DEFAULT_TTL,
                retry: RetryStrategy::default(),
                prefix: String::new(),
                command_timeout: DEFAULT_COMMAND_TIMEOUT,
                auto_renew: true,
                fencing: false,
                notifications: true,
                min_replicas: None,
                metrics: Default::default(),
                holder: None,
            },
            min_replicas: None,
        }
    }

    /// Connects to `url` as [`DistributedMutex::connect`] does, and returns a
    /// builder over that connection. The mutex owns the client: it closes it
    /// on [`shutdown`](DistributedMutex::shutdown), or when its last handle
    /// and guard are dropped.
    ///
    /// ```no_run
    /// use distributed_mutex::Builder;
    /// use std::time::Duration;
    ///
    /// # async fn demo() -> Result<(), distributed_mutex::Error> {
    /// let mutex = Builder::connect("redis://127.0.0.1:6379")
    ///     .await?
    ///     .ttl(Duration::from_secs(10))
    ///     .key_prefix("locks:")
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`DistributedMutex::connect`].
    ///
    /// # Cancel safety
    /// Cancel-safe: a connection not yet made is closed.
    pub async fn connect(url: &str) -> Result<Builder, Error> {
        let client = crate::protocol::connect::connect_client(url, DEFAULT_COMMAND_TIMEOUT).await?;
        Ok(Builder::new(client, true))
    }

    /// Connects to `url` over TLS as `tls` says (trusted roots, client
    /// certificate, server name), and returns a builder over that
    /// connection. `rediss://` and `redis://` URLs (and their `-cluster` and
    /// `-sentinel` forms) both use TLS here. Otherwise as
    /// [`Builder::connect`]. Needs the cargo feature `tls`.
    ///
    /// ```no_run
    /// use distributed_mutex::{Builder, Tls};
    ///
    /// # async fn demo() -> Result<(), distributed_mutex::Error> {
    /// let tls = Tls::new().ca_file("/etc/redis/ca.pem");
    /// let mutex = Builder::connect_tls("rediss://redis.internal:6380", tls)
    ///     .await?
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`DistributedMutex::connect`], and [`Error::Config`] when a
    /// certificate or key file cannot be read or the TLS handshake fails (an
    /// untrusted server certificate, a refused or missing client
    /// certificate). Never falls back to plaintext.
    ///
    /// # Cancel safety
    /// Cancel-safe: a connection not yet made is closed.
    #[cfg(feature = "tls")]
    pub async fn connect_tls(url: &str, tls: crate::protocol::tls::Tls) -> Result<Builder, Error> {
        let client =
            crate::protocol::connect::connect_tls_url(url, &tls, DEFAULT_COMMAND_TIMEOUT).await?;
        Ok(Builder::new(client, true))
    }

    setters! {
        /// Whether waiters queue in Redis and are handed the lock (default
        /// `true`).
        ///
        /// On: a waiter joins the key's wait queue in Redis, and a release hands
        /// the key to the first live waiter in it, whatever its process, and
        /// tells that waiter's mutex on its own handoff channel; the mutex keeps
        /// one extra connection (made on the first wait) subscribed to the
        /// channels of keys it has waiters for (see the README's "How waiting
        /// works" and [`CLAIM_TTL`](crate::CLAIM_TTL)). Off: waiters do not
        /// queue; they poll at the retry strategy's delays (never past the
        /// holder's TTL) and take a free key only when no one is queued.
        notifications(on: bool) => settings.notifications = on;
        /// Whether guards renew their lease in the background while they live
        /// (default `true`): a third of the TTL after each confirmed renewal,
        /// batched across all the mutex's locks. With `false` a lock lasts one
        /// TTL unless [`extend`](crate::LockGuard::extend)ed.
        auto_renew(on: bool) => settings.auto_renew = on;
        /// Takes every lock with a fencing token (default off; see
        /// [`LockGuard::fencing_token`](crate::LockGuard::fencing_token)). Each key then also has a counter key
        /// that is never deleted, under the key prefix and in the lock key's
        /// cluster slot (see the README's "Redis layout").
        fencing() => settings.fencing = true;
        /// Confirms every write of every lock with `WAIT replicas timeout`
        /// (default off): an acquisition (with its fencing increment), every
        /// automatic renewal and every [`extend`](crate::LockGuard::extend)
        /// counts only once at least `replicas` replicas of the lock key's master
        /// have acknowledged it. Per lock: [`Acquire::min_replicas`](crate::Acquire::min_replicas).
        ///
        /// Redis replicates asynchronously, so without this a lock written on a
        /// master that fails before the write reached its replica is gone after
        /// the failover, and another client can take it while the first still
        /// holds a guard (until that guard's next renewal reports it lost). With
        /// it, a lock the guard believes held has reached `replicas` replicas.
        ///
        /// * An acquisition not confirmed within `timeout` fails with
        ///   [`Error::NotReplicated`] and releases its token (it does not try
        ///   again: the caller decides).
        /// * A renewal not confirmed does not extend the lease; it is retried,
        ///   and the guard is reported lost ([`LostReason::Expired`](crate::LostReason::Expired))
        ///   when the lease runs out without a confirmed one. So a shard that
        ///   has fewer live replicas than `replicas` (e.g. right after a failover
        ///   with one replica per master, until the old master rejoins) loses
        ///   its confirmed locks at the end of their lease, and refuses new ones.
        ///   Ask for fewer replicas than each shard has to ride out one failure.
        /// * `replicas == 0` turns confirmation off (the default).
        /// * `timeout` is how long each write may wait for its replicas, rounded
        ///   up to whole milliseconds; keep it well under a third of the TTL.
        ///   Zero (which Redis reads as "forever") and over one hour are refused
        ///   by [`build`](Self::build) with [`Error::Config`]. A `replicas` larger
        ///   than the shard has is accepted and fails every write after
        ///   `timeout`.
        ///
        /// Cost: none when off. When on, each confirmed write is one round trip
        /// (script and `WAIT` pipelined) on a connection the mutex opens for them
        /// on first use, so that a `WAIT` never holds up other locks' commands;
        /// it lasts as long as the slowest of the `replicas` fastest replicas
        /// takes to acknowledge (or `timeout`).
        ///
        /// ```no_run
        /// use distributed_mutex::DistributedMutex;
        /// use std::time::Duration;
        ///
        /// # fn demo(client: fred::clients::Client) -> Result<(), distributed_mutex::Error> {
        /// let mutex = DistributedMutex::builder(client)
        ///     .min_replicas(1, Duration::from_millis(200))
        ///     .build()?;
        /// # Ok(()) }
        /// ```
        min_replicas(replicas: u32, timeout: Duration) => min_replicas = Some((replicas, timeout));
        /// The lease of every lock (default one minute), between
        /// [`MIN_TTL`](crate::MIN_TTL) and [`MAX_TTL`](crate::MAX_TTL); whole
        /// milliseconds (a fraction is dropped).
        ttl(ttl: Duration) => settings.ttl = ttl;
        /// How long `lock` waits for a busy lock (default `linear(250 ms, 20)`,
        /// about 5 s).
        retry(retry: RetryStrategy) => settings.retry = retry;
        /// A prefix put before every key in Redis (default none), e.g. `"locks:"`.
        ///
        /// Without a prefix the Redis key is the caller's key, so that other
        /// lock clients (bsm/redislock, redis-py's `Lock`) on the same key exclude
        /// this one and the reverse; a prefix keeps lock keys apart from data.
        /// Every key and channel the mutex touches starts with the prefix. A `{`
        /// in the prefix must be closed in it (a cluster hash tag, which then puts
        /// every lock of the mutex in one slot).
        key_prefix(prefix: impl Into<String>) => settings.prefix = prefix.into();
        /// The longest one command to Redis may take (default two seconds, at
        /// most one hour). A call that runs out of it fails with
        /// [`Error::Timeout`].
        command_timeout(timeout: Duration) => settings.command_timeout = timeout;
        /// A holder label (a host name, a pod, `web-3`) carried by every lock
        /// this mutex takes, so operators see who holds what (`dmutex status`,
        /// `dmutex ls`, [`Holder::from_token`](crate::Holder::from_token)).
        /// Default none. The label goes into the lock's token
        /// (`<uuid>:<unix ms>:<label>`): no extra command, and other clients of
        /// the protocol, which compare tokens only, are unaffected. Exclusive
        /// locks and elections carry it; multi-key locks, semaphores and
        /// read-write locks do not. 1 to [`MAX_HOLDER_LEN`](crate::MAX_HOLDER_LEN)
        /// bytes without control characters, checked by
        /// [`build`](Self::build).
        ///
        /// ```no_run
        /// # async fn demo() -> Result<(), distributed_mutex::Error> {
        /// let mutex = distributed_mutex::Builder::connect("redis://127.0.0.1:6379")
        ///     .await?
        ///     .holder("web-3")
        ///     .build()?;
        /// # Ok(()) }
        /// ```
        holder(label: impl Into<String>) => settings.holder = Some(label.into());
    }

    /// Checks the settings and builds the mutex.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] for a TTL out of range; [`Error::Config`] for a
    /// retry strategy without attempts, a command timeout of zero or over
    /// one hour, a prefix longer than [`MAX_PREFIX_LEN`] or with an
    /// unclosed `{`, a [`min_replicas`](Self::min_replicas) timeout of
    /// zero or over one hour, or a bad [`holder`](Self::holder) label.
    pub fn build(mut self) -> Result<DistributedMutex, Error> {
        self.settings.ttl = Duration::from_millis(ttl_millis("", self.settings.ttl)?);
        if let Some((replicas, timeout)) = self.min_replicas {
            self.settings.min_replicas = MinReplicas::check(replicas, timeout)?;
        }
        self.settings.retry.validate()?;
        validate_command_timeout(self.settings.command_timeout)?;
        if let Some(label) = &self.settings.holder {
            crate::protocol::holder::validate(label)?;
        }
        let prefix = &self.settings.prefix;
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(Error::Config {
                message: format!(
                    "the key prefix is {} bytes long; at most {MAX_PREFIX_LEN} are accepted",
                    prefix.len()
                ),
                source: None,
            });
        }
        if !prefix_is_valid(prefix) {
            return Err(Error::Config {
                message: format!(
                    "the key prefix {prefix:?} has a `{{` without a matching `}}` after it, so \
                     each lock's cluster slot would depend on the lock key; close the hash tag \
                     (e.g. \"{{app}}:locks:\") or leave braces out"
                ),
                source: None,
            });
        }
        Ok(self.build_unchecked())
    }

    /// Builds with settings known to be valid (the defaults).
    pub(crate) fn build_unchecked(self) -> DistributedMutex {
        if self.owns_client {
            // The client's own command timeout follows the mutex's.
            let mut perf = self.client.perf_config();
            perf.default_command_timeout = self.settings.command_timeout;
            self.client.update_perf_config(perf);
        }
        DistributedMutex::from_inner(Arc::new(Inner::new(
            self.client,
            self.owns_client,
            self.settings,
        )))
    }
}
