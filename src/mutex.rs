//! [`DistributedMutex`], its builder, and the acquisition loop.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::ClientLike;

use crate::error::display_key;
use crate::lease::{Lease, LeaseCore};
use crate::notify::{Ticket, Waiters};
use crate::release::ReleaseQueue;
use crate::renew::Renewer;
use crate::scripts::{self, Acquired};
use crate::{Error, LockGuard, RetryStrategy};

/// The lease a lock gets unless told otherwise: one minute.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// How long one command to Redis may take unless told otherwise: two seconds.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest key accepted, in bytes (not counting the mutex's key prefix).
///
/// Redis would take keys up to 512 MB, but a lock key is sent with every
/// command, stored for the whole lease and printed in every log line and
/// error; 4 KiB leaves room for keys built from URLs or paths while catching
/// a key built from a request body by mistake.
pub const MAX_KEY_LEN: usize = 4096;
/// The longest key prefix accepted, in bytes.
pub const MAX_PREFIX_LEN: usize = 1024;
/// The shortest lease accepted: one millisecond (Redis counts in milliseconds).
pub const MIN_TTL: Duration = Duration::from_millis(1);
/// The longest lease accepted: 365 days. Longer is almost always a unit
/// mistake (seconds given as milliseconds); a lock that must outlive a year
/// is not a lease.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A lock service over one Redis connection: many keys, many tasks, many
/// processes.
///
/// Cheap to clone (clones share the connection and the release worker), and
/// `Send + Sync`. Each lock is a Redis key holding a random token, set with
/// `SET key token NX PX ttl` and released with a token-checked delete, so it
/// interoperates with bsm/redislock, redis-py's `Lock` and other clients of
/// that protocol on the same key.
///
/// ```no_run
/// use distributed_mutex::DistributedMutex;
///
/// # async fn demo() -> Result<(), distributed_mutex::Error> {
/// let mutex = DistributedMutex::connect("redis://127.0.0.1:6379").await?;
/// {
///     let _guard = mutex.lock("tenant:42:settings").await?;
///     // only one holder in the whole fleet runs this at a time
/// } // dropped: released
/// mutex.shutdown().await; // wait for releases still in flight
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DistributedMutex {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) ttl: Duration,
    pub(crate) retry: RetryStrategy,
    pub(crate) prefix: String,
    pub(crate) command_timeout: Duration,
    pub(crate) auto_renew: bool,
    pub(crate) fencing: bool,
    notifications: bool,
    /// A random id, sent with releases so this mutex can tell its own.
    pub(crate) id: Arc<str>,
    waiters: Waiters,
    pub(crate) releases: ReleaseQueue,
    pub(crate) renewer: Renewer,
    shut_down: AtomicBool,
}

impl DistributedMutex {
    /// A mutex over a connected fred client, with the defaults: a TTL of one
    /// minute, [`RetryStrategy::linear`]`(250 ms, 20)`, no key prefix and a
    /// command timeout of two seconds.
    ///
    /// Give the client a reconnect policy (fred has none by default, and
    /// without one a command after a dropped connection fails for good), or
    /// use [`DistributedMutex::connect`], which does.
    pub fn new(client: Client) -> Self {
        DistributedMutex::from_builder(DistributedMutex::builder(client))
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
        Builder {
            client,
            ttl: DEFAULT_TTL,
            retry: RetryStrategy::default(),
            prefix: String::new(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            auto_renew: true,
            fencing: false,
            notifications: true,
        }
    }

    /// Connects to `url` (`redis://[user:password@]host:port[/db]`, or the
    /// other URL forms fred accepts) with a client set up the way a lock needs
    /// it, and returns a mutex with the defaults.
    ///
    /// The client reconnects by itself (exponential backoff from 100 ms to
    /// 2 s, forever), bounds connecting and every command by the command
    /// timeout, and fails at once if the first connection cannot be made.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed URL or a refused password,
    /// [`Error::Unavailable`] when the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let client = connect_client(url, DEFAULT_COMMAND_TIMEOUT).await?;
        Ok(DistributedMutex::new(client))
    }

    /// Builds from settings already checked (or the defaults).
    fn from_builder(b: Builder) -> Self {
        let id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let releases = ReleaseQueue::new(b.client.clone(), b.command_timeout, Arc::clone(&id));
        let renewer = Renewer::new(b.client.clone(), b.command_timeout);
        let waiters = Waiters::new(b.client.clone(), b.command_timeout, Arc::clone(&id));
        DistributedMutex {
            inner: Arc::new(Inner {
                client: b.client,
                ttl: b.ttl,
                retry: b.retry,
                prefix: b.prefix,
                command_timeout: b.command_timeout,
                auto_renew: b.auto_renew,
                fencing: b.fencing,
                notifications: b.notifications,
                id,
                waiters,
                releases,
                renewer,
                shut_down: AtomicBool::new(false),
            }),
        }
    }

    /// The fred client the mutex sends its commands through.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Takes the lock on `key`, waiting per the retry strategy.
    ///
    /// Shorthand for `self.acquire(key).await`; see [`DistributedMutex::acquire`]
    /// for per-call options.
    ///
    /// # Errors
    /// [`Error::NotObtained`] when another holder kept the lock for the whole
    /// wait; [`Error::Unavailable`]/[`Error::Timeout`] when the last attempt
    /// could not reach Redis; [`Error::InvalidKey`] for an empty or too long
    /// key; [`Error::WrongType`] when the key holds something that is not a
    /// lock; [`Error::Shutdown`] after [`shutdown`](Self::shutdown).
    ///
    /// # Cancel safety
    /// Dropping the future at any point leaves nothing locked: if an attempt
    /// may have set the lock, a release of this acquisition's token is queued.
    pub async fn lock(&self, key: impl AsRef<str>) -> Result<LockGuard, Error> {
        self.acquire(key).await
    }

    /// Makes one attempt at the lock on `key`: `Ok(None)` if someone else
    /// holds it.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// match mutex.try_lock("cron:nightly-report").await? {
    ///     Some(_guard) => { /* this replica runs the job */ }
    ///     None => { /* another replica is running it */ }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`lock`](Self::lock), except that a busy lock is `Ok(None)`.
    pub async fn try_lock(&self, key: impl AsRef<str>) -> Result<Option<LockGuard>, Error> {
        match self.acquire(key).retry(RetryStrategy::none()).await {
            Ok(guard) => Ok(Some(guard)),
            Err(Error::NotObtained { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An acquisition of `key` with per-call options; `.await` it.
    ///
    /// ```no_run
    /// use distributed_mutex::RetryStrategy;
    /// use std::time::Duration;
    ///
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let guard = mutex
    ///     .acquire("invoice:2026-11")
    ///     .ttl(Duration::from_secs(30))
    ///     .retry(RetryStrategy::linear(Duration::from_millis(50), 100))
    ///     .timeout(Duration::from_secs(2))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn acquire(&self, key: impl AsRef<str>) -> Acquire {
        Acquire {
            inner: Arc::clone(&self.inner),
            key: key.as_ref().to_owned(),
            ttl: None,
            retry: None,
            timeout: None,
            auto_renew: None,
            fencing: None,
        }
    }

    /// Runs `work` while holding the lock on `key`, and releases it after.
    ///
    /// The lock is taken as by [`lock`](Self::lock) (renewed while the work
    /// runs). `work` gets a [`Lease`] (key, fencing token, remaining time). If
    /// the lock is lost while the work runs, the work future is dropped at its
    /// next await point (cancelled) and the call returns [`Error::Lost`].
    ///
    /// Cancellation does not undo what the work already did: a write sent
    /// before the loss was noticed may land after another holder took the
    /// lock. Where that matters, take the lock with fencing and have the
    /// resource reject stale fencing tokens.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let rows = mutex
    ///     .with_lock("tenant:42:settings", |lease| async move {
    ///         println!("holding {} for at least {:?}", lease.key(), lease.remaining());
    ///         42 // the work's output
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`lock`](Self::lock), and [`Error::Lost`] when the lock was lost
    /// before the work finished (or found lost when releasing it).
    pub async fn with_lock<F, Fut, T>(&self, key: impl AsRef<str>, work: F) -> Result<T, Error>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.lock(key).await?;
        let work = work(guard.lease());
        let output = tokio::select! {
            biased;
            reason = guard.lost() => {
                return Err(Error::Lost { key: guard.key().to_owned(), reason });
            }
            output = work => output,
        };
        let key = guard.key().to_owned();
        match guard.release().await {
            Ok(()) => Ok(output),
            Err(Error::NotHeld { .. }) => Err(Error::Lost {
                key,
                reason: crate::LostReason::Missing,
            }),
            // Redis could not be asked to release: the lock was held as far
            // as anyone can tell; the release is retried in the background.
            Err(e) if e.is_transient() => Ok(output),
            Err(e) => Err(e),
        }
    }

    /// Waits for the releases still queued by dropped guards, then refuses
    /// new locks with [`Error::Shutdown`].
    ///
    /// Guards still alive keep working and are still released when dropped.
    /// A queued release that fails for a transient reason is tried three
    /// times in all, so with Redis unreachable this waits about three command
    /// timeouts; a release that still fails is left to the lock's TTL.
    pub async fn shutdown(&self) {
        self.inner.shut_down.store(true, Ordering::SeqCst);
        self.inner.releases.flush().await;
    }
}

impl fmt::Debug for DistributedMutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistributedMutex")
            .field("ttl", &self.inner.ttl)
            .field("retry", &self.inner.retry)
            .field("prefix", &self.inner.prefix)
            .field("command_timeout", &self.inner.command_timeout)
            .field("shut_down", &self.inner.shut_down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Builds a [`DistributedMutex`] with other settings than the defaults.
/// Made by [`DistributedMutex::builder`].
#[derive(Debug)]
#[must_use = "call .build() to get the mutex"]
pub struct Builder {
    client: Client,
    ttl: Duration,
    retry: RetryStrategy,
    prefix: String,
    command_timeout: Duration,
    auto_renew: bool,
    fencing: bool,
    notifications: bool,
}

impl Builder {
    /// Whether waiters are woken by release messages (default `true`).
    ///
    /// On: the release script publishes on `<key>:released`; the mutex keeps
    /// one extra connection (made on the first wait) subscribed to the
    /// channels of keys it has waiters for, and wakes its waiters of a key
    /// one at a time, in FIFO order. Off: waiters poll at the retry
    /// strategy's delays. Either way a wait never outlasts the holder's TTL.
    pub fn notifications(mut self, on: bool) -> Self {
        self.notifications = on;
        self
    }

    /// Whether guards renew their lease in the background while they live
    /// (default `true`): a third of the TTL after each confirmed renewal,
    /// batched across all the mutex's locks. With `false` a lock lasts one
    /// TTL unless [`extend`](LockGuard::extend)ed.
    pub fn auto_renew(mut self, on: bool) -> Self {
        self.auto_renew = on;
        self
    }

    /// Takes every lock with a fencing token (default off; see
    /// [`LockGuard::fencing_token`]). Each key then also has a counter key
    /// that is never deleted: `<key>:fence` when the key has a cluster hash
    /// tag, `{<key>}:fence` otherwise, so both hash to one cluster slot.
    pub fn fencing(mut self) -> Self {
        self.fencing = true;
        self
    }

    /// The lease of every lock (default one minute), between [`MIN_TTL`] and
    /// [`MAX_TTL`]; whole milliseconds (a fraction is dropped).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long `lock` waits for a busy lock (default `linear(250 ms, 20)`).
    pub fn retry(mut self, retry: RetryStrategy) -> Self {
        self.retry = retry;
        self
    }

    /// A prefix put before every key in Redis (default none), e.g. `"locks:"`.
    ///
    /// Without a prefix the Redis key is the caller's key, so that other
    /// lock clients (bsm/redislock, redis-py's `Lock`) on the same key exclude
    /// this one and the reverse; a prefix keeps lock keys apart from data.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest one command to Redis may take (default two seconds). A
    /// call that runs out of it fails with [`Error::Timeout`].
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Checks the settings and builds the mutex.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] for a TTL out of range; [`Error::Config`] for a
    /// retry strategy without attempts, a zero command timeout or a prefix
    /// longer than [`MAX_PREFIX_LEN`].
    pub fn build(self) -> Result<DistributedMutex, Error> {
        let ttl = Duration::from_millis(ttl_millis("", self.ttl)?);
        self.retry.validate()?;
        if self.command_timeout.is_zero() {
            return Err(Error::Config {
                message: "the command timeout is zero, so every command would time out; give it \
                          at least a few milliseconds"
                    .into(),
                source: None,
            });
        }
        if self.prefix.len() > MAX_PREFIX_LEN {
            return Err(Error::Config {
                message: format!(
                    "the key prefix is {} bytes long; at most {MAX_PREFIX_LEN} are accepted",
                    self.prefix.len()
                ),
                source: None,
            });
        }
        Ok(DistributedMutex::from_builder(Builder { ttl, ..self }))
    }
}

/// One acquisition with per-call options, made by
/// [`DistributedMutex::acquire`]. `.await` it to get the [`LockGuard`].
///
/// The returned future is `Send + 'static`, so it can be spawned.
#[must_use = "an acquisition does nothing until it is awaited"]
#[derive(Debug)]
pub struct Acquire {
    inner: Arc<Inner>,
    key: String,
    ttl: Option<Duration>,
    retry: Option<RetryStrategy>,
    timeout: Option<Duration>,
    auto_renew: Option<bool>,
    fencing: Option<bool>,
}

impl Acquire {
    /// Whether this guard renews its lease while it lives, instead of the
    /// mutex's setting (default on).
    pub fn auto_renew(mut self, on: bool) -> Self {
        self.auto_renew = Some(on);
        self
    }

    /// Takes this lock with a fencing token (see [`LockGuard::fencing_token`]).
    pub fn fencing(mut self) -> Self {
        self.fencing = Some(true);
        self
    }

    /// The lease for this lock, instead of the mutex's.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How to wait for this lock, instead of the mutex's retry strategy.
    pub fn retry(mut self, retry: RetryStrategy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The longest time to wait for the lock to become free, on top of the
    /// retry strategy (whichever ends first). At least one attempt is always
    /// made, so `Duration::ZERO` means "one attempt". An attempt in flight is
    /// bounded by the command timeout, not by this; for a hard bound on the
    /// whole call wrap it in `tokio::time::timeout`, which is cancel-safe.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl IntoFuture for Acquire {
    type Output = Result<LockGuard, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'static>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(acquire(self))
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

/// A token that may have been set in Redis and has no guard yet. Dropped
/// while armed (the acquisition was cancelled or failed with an unknown
/// outcome), it queues a release of its token.
struct Pending<'a> {
    inner: &'a Arc<Inner>,
    redis_key: String,
    token: String,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.releases.queue(
                std::mem::take(&mut self.redis_key),
                std::mem::take(&mut self.token),
            );
        }
    }
}

async fn acquire(req: Acquire) -> Result<LockGuard, Error> {
    let Acquire {
        inner,
        key,
        ttl,
        retry,
        timeout,
        auto_renew,
        fencing,
    } = req;
    let ttl_ms = ttl_millis(&key, ttl.unwrap_or(inner.ttl))?;
    let ttl = Duration::from_millis(ttl_ms);
    validate_key(&key)?;
    let retry = retry.unwrap_or(inner.retry);
    retry.validate()?;
    if inner.shut_down.load(Ordering::SeqCst) {
        return Err(Error::Shutdown { key });
    }
    let redis_key = if inner.prefix.is_empty() {
        key.clone()
    } else {
        format!("{}{key}", inner.prefix)
    };
    let fence_key = if fencing.unwrap_or(inner.fencing) {
        Some(fence_key(&key, &redis_key)?)
    } else {
        None
    };
    let auto_renew = auto_renew.unwrap_or(inner.auto_renew);

    inner.releases.ensure_started();
    // A release of this key that this process queued (a guard dropped just
    // before) goes first, so it does not stand in our own way.
    inner
        .releases
        .settled(&redis_key, inner.command_timeout)
        .await;

    let notify = inner.notifications && retry.max_attempts() > 1;
    let mut pending = Pending {
        inner: &inner,
        redis_key,
        token: uuid::Uuid::new_v4().to_string(),
        armed: false,
    };
    let started = Instant::now();
    let deadline = timeout.map(|t| started + t);
    // The retry strategy bounds the time spent waiting by the sum of its
    // delays (time spent in commands does not count); `.timeout` bounds the
    // whole call.
    let mut budget = retry.max_total_wait();
    let mut attempts = 0u32;
    // Waits that ended without a release message: these advance the retry
    // strategy (a wake-up by a message does not use up an attempt).
    let mut polls = 0u32;
    // Set once an attempt ended without a definite answer: its SET may still
    // land, so the token must be released if we give up.
    let mut uncertain = false;
    let mut holder_ttl = None;
    let mut last_error = None;
    let mut ticket: Option<Ticket<'_>> = None;
    // Waiters of this key already queued in this process go first: join
    // the queue behind them instead of barging in with an attempt.
    let mut skip_attempt = false;
    let may_wait = timeout.map_or(true, |t| !t.is_zero());
    if notify && may_wait && inner.waiters.has_waiters(&pending.redis_key) {
        ticket = Some(inner.waiters.join(&pending.redis_key));
        skip_attempt = true;
    }
    // A re-check right after subscribing is part of the attempt before it.
    let mut recheck = false;
    loop {
        if !std::mem::take(&mut skip_attempt) {
            if attempts > 0 && inner.shut_down.load(Ordering::SeqCst) {
                return Err(Error::Shutdown { key });
            }
            if !std::mem::take(&mut recheck) {
                attempts += 1;
            }
            pending.armed = true;
            let sent_at = Instant::now();
            // First attempt without fencing: a plain SET NX, cheaper than the
            // script, which runs only when the key exists (to tell our own
            // re-sent SET from another holder, and to learn its TTL).
            // (Not for a waiter that was queued: the key was held moments ago,
            // so the script is the likelier answer.)
            let fast = if attempts == 1 && fence_key.is_none() && ticket.is_none() {
                scripts::set_nx(
                    &inner.client,
                    &pending.redis_key,
                    &pending.token,
                    ttl_ms,
                    inner.command_timeout,
                )
                .await
            } else {
                Ok(false)
            };
            let outcome = match fast {
                Ok(true) => Ok(Acquired::Yes {
                    fencing_token: None,
                }),
                Ok(false) => {
                    scripts::acquire(
                        &inner.client,
                        &pending.redis_key,
                        fence_key.as_deref(),
                        &pending.token,
                        ttl_ms,
                        inner.command_timeout,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(Acquired::Yes { fencing_token }) => {
                    pending.armed = false;
                    if let Some(ticket) = ticket.take() {
                        ticket.acquired();
                    }
                    tracing::debug!(key = %key, attempts, ?fencing_token, "lock acquired");
                    let lease = Arc::new(LeaseCore::new(
                        key,
                        std::mem::take(&mut pending.redis_key),
                        std::mem::take(&mut pending.token),
                        fencing_token,
                        ttl,
                        sent_at,
                    ));
                    if auto_renew {
                        inner.renewer.track(&lease, sent_at);
                    }
                    return Ok(LockGuard::new(Arc::clone(&inner), lease, auto_renew));
                }
                Ok(Acquired::No { pttl }) => {
                    pending.armed = uncertain;
                    holder_ttl = pttl;
                    last_error = None;
                }
                Err(mut e) if e.is_transient() => {
                    uncertain = true;
                    e.set_key(&key);
                    tracing::debug!(key = %key, attempts, error = %e, "lock attempt failed");
                    holder_ttl = None;
                    last_error = Some(e);
                }
                Err(mut e) => {
                    e.set_key(&key);
                    return Err(e);
                }
            }
        }

        // Wait for a release message, the holder's lease to end (never
        // sleep past it), or the strategy's next delay, whichever is first.
        let left = deadline.map_or(budget, |d| {
            budget.min(d.saturating_duration_since(Instant::now()))
        });
        let next = retry.delay_after(polls + 1).filter(|_| !left.is_zero());
        let Some(backoff) = next else {
            return Err(last_error.unwrap_or_else(|| Error::NotObtained {
                key,
                attempts,
                waited: started.elapsed(),
            }));
        };
        let mut wait = backoff.min(left);
        if let Some(pttl) = holder_ttl {
            wait = wait.min(pttl + Duration::from_millis(1));
        }
        if notify {
            let ticket = match &mut ticket {
                Some(ticket) => ticket,
                empty => {
                    let mut joined = inner.waiters.join(&pending.redis_key);
                    let subscribed = joined.subscribed(inner.command_timeout).await;
                    let joined = empty.insert(joined);
                    if subscribed {
                        // A release may have come before the subscription:
                        // check again at once.
                        recheck = true;
                        continue;
                    }
                    joined
                }
            };
            let waiting_since = Instant::now();
            if !ticket.wait(wait).await {
                polls += 1;
            }
            // A wait counts for at most its planned length (timer lateness
            // must not eat the budget).
            budget = budget.saturating_sub(waiting_since.elapsed().min(wait));
        } else {
            tokio::time::sleep(wait).await;
            budget = budget.saturating_sub(wait);
            polls += 1;
        }
    }
}

/// Builds a fred client configured for locking and connects it.
pub(crate) async fn connect_client(url: &str, command_timeout: Duration) -> Result<Client, Error> {
    use fred::types::config::{Config, ReconnectPolicy};
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    if scheme.starts_with("rediss") {
        return Err(Error::Config {
            message:
                "the URL asks for TLS (rediss://), which this build of distributed-mutex does \
                      not enable; use redis:// or build the fred client yourself with TLS and pass \
                      it to DistributedMutex::new"
                    .into(),
            source: None,
        });
    }
    if !scheme.starts_with("redis") {
        return Err(Error::Config {
            message: format!(
                "the Redis URL is malformed (`{scheme}://` is not a Redis scheme); expected \
                 redis://[user:password@]host:port[/db]"
            ),
            source: None,
        });
    }
    let config = Config::from_url(url).map_err(|source| Error::Config {
        message: format!(
            "the Redis URL is malformed ({}); expected redis://[user:password@]host:port[/db]",
            source.details()
        ),
        source: Some(source),
    })?;
    let client = fred::types::Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = command_timeout;
            c.internal_command_timeout = command_timeout;
        })
        .with_performance_config(|p| p.default_command_timeout = command_timeout)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()
        .map_err(|source| Error::Config {
            message: format!("the Redis client could not be built ({})", source.details()),
            source: Some(source),
        })?;
    match client.init().await {
        Ok(_) => Ok(client),
        // fred has stopped the client already.
        Err(source) => Err(match source.kind() {
            fred::error::ErrorKind::Auth => Error::Config {
                message: format!(
                    "Redis refused the credentials ({}); check the user and password in the URL",
                    source.details()
                ),
                source: Some(source),
            },
            _ => Error::from_redis("", source),
        }),
    }
}

/// The fencing counter's key: in the same cluster slot as the lock's key.
///
/// A key with a hash tag keeps it when suffixed (`<key>:fence`); a key
/// without braces becomes the tag (`{<key>}:fence`). A key whose stray braces
/// defeat both gets a numeric tag found to hash to its slot
/// (`{<n>}:fence:<key>`).
fn fence_key(key: &str, redis_key: &str) -> Result<String, Error> {
    use fred::util::redis_keyslot;
    let slot = redis_keyslot(redis_key.as_bytes());
    let same_slot = |candidate: &String| redis_keyslot(candidate.as_bytes()) == slot;
    [
        format!("{redis_key}:fence"),
        format!("{{{redis_key}}}:fence"),
    ]
    .into_iter()
    .find(same_slot)
    .or_else(|| {
        (0u32..1 << 20)
            .find(|n| redis_keyslot(n.to_string().as_bytes()) == slot)
            .map(|n| format!("{{{n}}}:fence:{redis_key}"))
    })
    .ok_or_else(|| Error::InvalidKey {
        key: display_key(key),
        reason: "no fencing counter key in the lock key's cluster slot could be derived",
    })
}

/// The TTL in whole milliseconds, or `InvalidTtl`.
pub(crate) fn ttl_millis(key: &str, ttl: Duration) -> Result<u64, Error> {
    let reason = if ttl < MIN_TTL {
        "a lock's TTL must be at least 1 ms"
    } else if ttl > MAX_TTL {
        "a lock's TTL must be at most 365 days (is it a unit mistake?)"
    } else {
        return Ok(ttl.as_millis() as u64);
    };
    Err(Error::InvalidTtl {
        key: display_key(key),
        ttl,
        reason,
    })
}

/// The drift margin taken off a lease: 1 % of it plus 2 ms, for clock rate
/// differences between this host and Redis and for timer granularity.
pub(crate) fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

fn validate_key(key: &str) -> Result<(), Error> {
    let reason = if key.is_empty() {
        "a lock key must not be empty"
    } else if key.len() > MAX_KEY_LEN {
        "a lock key must be at most 4096 bytes long"
    } else {
        return Ok(());
    };
    Err(Error::InvalidKey {
        key: display_key(key),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds() {
        assert!(ttl_millis("k", Duration::ZERO).is_err());
        assert!(ttl_millis("k", Duration::from_micros(999)).is_err());
        assert_eq!(ttl_millis("k", Duration::from_millis(1)).unwrap(), 1);
        assert_eq!(ttl_millis("k", Duration::from_micros(1500)).unwrap(), 1);
        assert_eq!(
            ttl_millis("k", MAX_TTL).unwrap(),
            MAX_TTL.as_millis() as u64
        );
        assert!(ttl_millis("k", MAX_TTL + Duration::from_millis(1)).is_err());
        assert!(ttl_millis("k", Duration::MAX).is_err());
    }

    #[test]
    fn key_bounds() {
        assert!(matches!(validate_key(""), Err(Error::InvalidKey { .. })));
        assert!(validate_key("a").is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(validate_key("spaces {braces}\nnewline ключ 鍵").is_ok());
    }

    #[test]
    fn fence_keys_share_the_lock_keys_slot() {
        use fred::util::redis_keyslot;
        for key in ["plain", "{tag}rest", "a{b}c", "ключ", "with space", "x}y"] {
            let fence = fence_key(key, key).unwrap();
            assert_eq!(
                redis_keyslot(fence.as_bytes()),
                redis_keyslot(key.as_bytes()),
                "{key}"
            );
            assert_ne!(fence, key);
        }
        assert_eq!(fence_key("plain", "plain").unwrap(), "{plain}:fence");
        assert_eq!(fence_key("{t}x", "{t}x").unwrap(), "{t}x:fence");
        assert!(fence_key("x}y", "x}y").unwrap().ends_with(":fence:x}y"));
    }

    #[test]
    fn drift_is_one_percent_plus_two_ms() {
        assert_eq!(drift(Duration::from_secs(60)), Duration::from_millis(602));
        assert_eq!(drift(Duration::from_millis(1)), Duration::from_micros(2010));
    }
}
