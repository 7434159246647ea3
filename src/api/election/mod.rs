//! Leader election on the lock machinery: an election is a lock (taken with
//! a fencing token, which is the term) plus the leader's value in a hash
//! beside it, and a news channel observers listen on.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Election`]: campaigning, reading the leader, observing; `DistributedMutex::election` |
//! | `names.rs` | the election's Redis names (one slot, under the prefix) |
//! | `leader.rs` | [`Leader`]: what anyone can read |
//! | `leadership.rs` | [`Leadership`]: the guard of a leader |
//! | `observe.rs` | the one observer task per election and mutex, and its watch channel |
//! | `scripts.rs`, `*.lua` | claiming, proclaiming, reading, announcing |
//!
//! Campaigning takes the election's lock as any acquisition does (the wait
//! queue in Redis, direct handoff on release, the holder's TTL bounding the
//! wait after a crash), then writes the leader's value and term beside it
//! and announces the change.
//!
//! **Terms.** A term is the lock's fencing token, drawn by the acquisition
//! (`INCR` of the lock's fencing counter). Before each campaign the counter
//! is raised to the server's clock in milliseconds if it is below
//! (`floor.lua`), and a claim whose term is below that floor (the counter
//! was lost meanwhile) is refused and the campaign starts over. So terms
//! strictly increase while Redis keeps its data, and after a restart
//! without data (or a failover that lost increments) the next term is above
//! the clock, which is above every earlier term as long as the servers'
//! clocks do not go back and fewer than 1000 leaders a second were elected.
//! A leader is *established* once that write is
//! done: [`Election::leader`] reports a leader only while the lock holds the
//! token the hash names.

mod leader;
mod leadership;
mod names;
mod observe;
mod scripts;

use std::fmt;
use std::time::Duration;

use tokio::sync::watch;

pub use leader::Leader;
pub use leadership::Leadership;
pub use names::MAX_ELECTION_NAME_LEN;
pub use observe::OBSERVE_POLL;

use crate::api::guard::LockGuard;
use crate::api::mutex::DistributedMutex;
use crate::engine::options::setters;
use crate::policy::error::Error;
use crate::policy::retry::RetryStrategy;
use names::Names;
use scripts::{Claimed, Target, Write};

/// The longest value a leader may publish, in bytes.
pub const MAX_ELECTION_VALUE_LEN: usize = 64 * 1024;

/// How long a campaigner waits between attempts when it must poll (no
/// notification came: the leader crashed, or notifications are off), and
/// after a transient error, unless set with [`Election::retry_period`].
pub const DEFAULT_ELECTION_RETRY_PERIOD: Duration = Duration::from_millis(250);

/// A leader election named `name`, made by
/// [`DistributedMutex::election`](crate::DistributedMutex::election). Cheap
/// to clone; nothing is sent until it is used.
///
/// * [`campaign`](Election::campaign) waits until this caller leads, and
///   gives a [`Leadership`] (term, value, proclaim, resign, loss).
/// * [`leader`](Election::leader) reads the current leader, for anyone.
/// * [`observe`](Election::observe) follows the leader as it changes.
///
/// At most one caller holds a valid [`Leadership`] of an election at a time
/// (the lock's guarantee: while its `remaining()` is above zero no one else
/// holds the lock, on one Redis server that keeps its data).
///
/// ```no_run
/// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
/// # async fn run_scheduler(term: u64) {}
/// let election = mutex.election("scheduler");
/// let leadership = election.campaign("web-3").await?;
/// tokio::select! {
///     reason = leadership.lost() => eprintln!("leadership lost: {reason}"),
///     () = run_scheduler(leadership.term()) => {}
/// }
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Election {
    mutex: DistributedMutex,
    name: String,
    ttl: Option<Duration>,
    retry_period: Duration,
}

impl Election {
    pub(crate) fn new(mutex: DistributedMutex, name: String) -> Self {
        Election {
            mutex,
            name,
            ttl: None,
            retry_period: DEFAULT_ELECTION_RETRY_PERIOD,
        }
    }

    /// The election's name, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    setters! {
        /// The leader's lease (default: the mutex's TTL). A crashed leader is
        /// replaced within this plus one retry period; a live one renews it.
        ttl(ttl: Duration) => ttl = Some(ttl);
        /// How long a campaigner waits between attempts when it must poll, and
        /// after a transient error (default [`DEFAULT_ELECTION_RETRY_PERIOD`]; at least
        /// 1 ms).
        retry_period(period: Duration) => retry_period = period.max(Duration::from_millis(1));
    }

    /// Waits until this caller leads the election with `value`, and returns
    /// the guard of its leadership.
    ///
    /// While another caller leads, this one waits in the election lock's
    /// queue: a resignation (or a dropped [`Leadership`]) hands the lead to
    /// the first waiter at once; a crashed leader's lease runs out first.
    /// Transient errors (Redis unreachable, a failover) are retried every
    /// retry period for as long as the call runs.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let leadership = mutex.election("scheduler").campaign("web-3").await?;
    /// println!("leading in term {}", leadership.term());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for an empty or too long name
    /// ([`MAX_ELECTION_NAME_LEN`]); [`Error::Config`] for a value longer than
    /// [`MAX_ELECTION_VALUE_LEN`] or a bad TTL ([`Error::InvalidTtl`]);
    /// [`Error::Shutdown`] after shutdown; [`Error::NoPermission`],
    /// [`Error::WrongType`] or [`Error::Redis`] when Redis refuses the
    /// commands. Never [`Error::NotObtained`]: it waits as long as it runs.
    ///
    /// # Cancel safety
    /// Dropping the future leaves nothing behind: a lock taken or a place in
    /// the queue is released (as for a dropped acquisition), and a leadership
    /// just established is resigned.
    pub async fn campaign(&self, value: impl Into<String>) -> Result<Leadership, Error> {
        let value = value.into();
        check_value(&self.name, &value)?;
        let names = self.names()?;
        loop {
            let floor = self.raise_floor(&names).await?;
            let guard = self.take_lock(&names).await?;
            let term = guard.fencing_token().unwrap_or_default();
            match self.claim(&names, &guard, &value, term, floor).await? {
                Claimed::Yes => {
                    tracing::debug!(election = %self.name, term, "elected");
                    return Ok(Leadership::new(self.clone(), names, guard, value, term));
                }
                Claimed::BelowFloor => {
                    tracing::warn!(election = %self.name, term, floor, "the term counter was lost (Redis restarted without its data?); campaigning again above the clock");
                }
                Claimed::NotHeld => {
                    tracing::debug!(election = %self.name, "lock lost before the leader was published; campaigning again");
                }
            }
        }
    }

    /// The current leader (value, term, lease left), or `None` when there is
    /// none: no one holds the election, or its new holder has not published
    /// itself yet. One round trip; anyone may call it.
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// match mutex.election("scheduler").leader().await? {
    ///     Some(leader) => println!("{} leads (term {})", leader.value, leader.term),
    ///     None => println!("no leader"),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for a bad name; [`Error::Unavailable`] or
    /// [`Error::Timeout`] when Redis could not be asked.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    pub async fn leader(&self) -> Result<Option<Leader>, Error> {
        let names = self.names()?;
        self.target(&names).leader().await
    }

    /// Follows the election's leader: a receiver whose value is the current
    /// leader (`None`: no leader), changed each time the leader or its value
    /// changes, in order.
    ///
    /// It is a [`tokio::sync::watch`] receiver: a state, not a log. A slow
    /// reader sees the latest state and may skip states in between (the
    /// terms say how many leaders it missed); a reader never sees an older
    /// state after a newer one. One task per election and mutex reads the
    /// state when a claim, proclamation or resignation is announced (pub/sub,
    /// on the election's news channel), when the leader's lease may have
    /// run out, and at least every [`OBSERVE_POLL`];
    /// it stops when the last receiver is dropped, or when the mutex is shut
    /// down (then [`changed`](watch::Receiver::changed) returns an error). While Redis cannot be
    /// asked the last state stays (unknown is not "no leader").
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let mut leaders = mutex.election("scheduler").observe()?;
    /// while leaders.changed().await.is_ok() {
    ///     match &*leaders.borrow_and_update() {
    ///         Some(leader) => println!("leader: {} (term {})", leader.value, leader.term),
    ///         None => println!("no leader"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for a bad name; [`Error::Config`] outside a
    /// Tokio runtime (the observer task runs on the caller's).
    pub fn observe(&self) -> Result<watch::Receiver<Option<Leader>>, Error> {
        let names = self.names()?;
        observe::subscribe(self, names)
    }

    fn names(&self) -> Result<Names, Error> {
        Names::new(&self.mutex.inner().settings.prefix, &self.name)
    }

    pub(crate) fn target<'a>(&'a self, names: &'a Names) -> Target<'a> {
        let inner = self.mutex.inner();
        Target {
            client: &inner.client,
            names,
            name: &self.name,
            sharded: inner.waiters.sharded(),
            timeout: inner.settings.command_timeout,
        }
    }

    /// Takes the election's lock, waiting as long as it takes.
    async fn take_lock(&self, names: &Names) -> Result<LockGuard, Error> {
        loop {
            let mut acquire = self
                .mutex
                .acquire(&names.lock_key)
                .fencing()
                .retry(RetryStrategy::linear(self.retry_period, u32::MAX))
                .timeout(Duration::MAX);
            if let Some(ttl) = self.ttl {
                acquire = acquire.ttl(ttl);
            }
            match acquire.await {
                Ok(guard) => return Ok(guard),
                Err(e) if e.is_transient() || matches!(e, Error::NotObtained { .. }) => {
                    tracing::debug!(election = %self.name, error = %e, "campaign: trying again");
                    tokio::time::sleep(self.retry_period).await;
                }
                Err(mut e) => {
                    e.set_key(&self.name);
                    return Err(e);
                }
            }
        }
    }

    /// Raises the term counter to the server's clock, trying again after
    /// transient errors; the floor the next term must reach.
    async fn raise_floor(&self, names: &Names) -> Result<u64, Error> {
        loop {
            match self.target(names).floor().await {
                Ok(floor) => return Ok(floor),
                Err(e) if e.is_transient() => {
                    tracing::debug!(election = %self.name, error = %e, "campaign: trying again");
                    tokio::time::sleep(self.retry_period).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Publishes the holder of `guard` as leader with `term`, if the term
    /// reaches `floor`.
    async fn claim(
        &self,
        names: &Names,
        guard: &LockGuard,
        value: &str,
        term: u64,
        floor: u64,
    ) -> Result<Claimed, Error> {
        let target = self.target(names);
        let write = Write::NewLeader { floor };
        loop {
            let result = target.claim(guard.token(), value, term, write).await;
            match result {
                Ok(claimed) => return Ok(claimed),
                Err(e) if e.is_transient() && !guard.is_lost() => {
                    tracing::debug!(election = %self.name, error = %e, "claim: trying again");
                    tokio::time::sleep(self.retry_period.min(guard.remaining() / 2)).await;
                }
                Err(e) if e.is_transient() => return Ok(Claimed::NotHeld),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Refuses a value too long to publish.
pub(crate) fn check_value(name: &str, value: &str) -> Result<(), Error> {
    if value.len() <= MAX_ELECTION_VALUE_LEN {
        return Ok(());
    }
    Err(Error::Config {
        message: format!(
            "the value for election `{}` is {} bytes long; at most {MAX_ELECTION_VALUE_LEN} are accepted",
            name.chars().take(64).collect::<String>(),
            value.len()
        ),
        source: None,
    })
}

impl fmt::Debug for Election {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("retry_period", &self.retry_period)
            .finish()
    }
}

// Leader elections over this mutex (here, since an election uses the mutex).
impl DistributedMutex {
    /// A leader election named `name` (see [`Election`]): campaign, read
    /// and follow its leader. Nothing is sent until it is used; a bad name
    /// is refused then, with [`Error::InvalidKey`].
    ///
    /// ```no_run
    /// # async fn demo(mutex: distributed_mutex::DistributedMutex) -> Result<(), distributed_mutex::Error> {
    /// let leadership = mutex.election("scheduler").campaign("web-3").await?;
    /// # drop(leadership); Ok(()) }
    /// ```
    pub fn election(&self, name: impl AsRef<str>) -> Election {
        Election::new(self.clone(), name.as_ref().to_owned())
    }
}
