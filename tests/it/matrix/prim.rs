//! The primitives of the matrix behind one face: a contender's handle
//! ([`Handle`]), one acquisition of any primitive ([`acquire`]), and the
//! guard it gives ([`Guard`]) with what the ledger needs to judge it (the
//! resources it claims, in which role, and a view of its validity).

use std::time::Duration;

use distributed_mutex::{
    DistributedMutex, Error, Lease, LockGuard, MultiGuard, Permit, ReadGuard, Redlock,
    RedlockGuard, RedlockLease, RetryStrategy, WriteGuard,
};
use distributed_mutex::{Leadership, LostReason};

/// The primitives of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    /// `DistributedMutex::lock` (bounded by a timeout) and `try_lock`, on two keys.
    Lock,
    /// `lock_all` / `try_lock_all` of two of three keys.
    Multi,
    /// A permit of a semaphore of [`PERMITS`].
    Permit,
    /// Read (2 in 3) and write (1 in 3) guards of one read-write lock.
    ReadWrite,
    /// `campaign` of one election (bounded by a timeout).
    Election,
    /// `Redlock::lock` (bounded) and `try_lock` on two keys, over 5 servers.
    Redlock,
}

/// Every primitive, in table order.
pub const PRIMITIVES: [Primitive; 6] = [
    Primitive::Lock,
    Primitive::Multi,
    Primitive::Permit,
    Primitive::ReadWrite,
    Primitive::Election,
    Primitive::Redlock,
];

/// The semaphore's permits.
pub const PERMITS: u32 = 2;

impl Primitive {
    pub fn name(self) -> &'static str {
        match self {
            Primitive::Lock => "lock",
            Primitive::Multi => "multi",
            Primitive::Permit => "permit",
            Primitive::ReadWrite => "rwlock",
            Primitive::Election => "election",
            Primitive::Redlock => "redlock",
        }
    }

    /// How many resource names a cell of this primitive uses.
    pub fn resources(self) -> usize {
        match self {
            Primitive::Lock | Primitive::Redlock => 2,
            Primitive::Multi => 3,
            Primitive::Permit | Primitive::ReadWrite | Primitive::Election => 1,
        }
    }

    /// Whether the primitive confirms its writes on replicas with
    /// `min_replicas` (the README: semaphores and read-write locks do not).
    pub fn confirms_replicas(self) -> bool {
        matches!(
            self,
            Primitive::Lock | Primitive::Multi | Primitive::Election
        )
    }

    /// Contenders per cell (beyond the fault's own holder): more than the
    /// semaphore's permits, so permits are contended too.
    pub fn workers(self) -> usize {
        match self {
            Primitive::Permit => 5,
            _ => 4,
        }
    }
}

/// One "process": a mutex (or a Redlock) over its own connections.
#[derive(Clone)]
pub enum Handle {
    Mutex(DistributedMutex),
    Redlock(Redlock),
}

impl Handle {
    pub async fn shutdown(&self) {
        match self {
            Handle::Mutex(m) => m.shutdown().await,
            Handle::Redlock(r) => r.shutdown().await,
        }
    }
}

/// How a guard takes part in a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Alone: a lock, a multi-key lock's key, a writer, a leader.
    Exclusive,
    /// With other readers, never with a writer.
    Reader,
    /// One of at most `n` permits.
    Permit(u32),
}

/// A view of a guard's validity that the ledger keeps while it is held.
#[derive(Clone)]
pub enum View {
    Lease(Lease),
    Leases(Vec<Lease>),
    Redlock(RedlockLease),
}

impl View {
    /// The guard believes it holds: not lost, with lease left (each
    /// guard's own local validity and loss report).
    pub fn valid(&self) -> bool {
        match self {
            View::Lease(l) => !l.is_lost() && !l.remaining().is_zero(),
            View::Leases(ls) => ls.iter().all(|l| !l.is_lost() && !l.remaining().is_zero()),
            View::Redlock(l) => !l.is_lost() && !l.remaining().is_zero(),
        }
    }
}

/// A held guard of any primitive.
pub enum Guard {
    Lock(LockGuard),
    Multi(MultiGuard),
    Permit(Permit),
    Read(ReadGuard),
    Write(WriteGuard),
    Leader(Leadership),
    Redlock(RedlockGuard),
}

impl Guard {
    pub fn view(&self) -> View {
        match self {
            Guard::Lock(g) => View::Lease(g.lease()),
            Guard::Multi(g) => View::Leases(g.leases()),
            Guard::Permit(g) => View::Lease(g.lease()),
            Guard::Read(g) => View::Lease(g.lease()),
            Guard::Write(g) => View::Lease(g.lease()),
            Guard::Leader(g) => View::Lease(g.lease()),
            Guard::Redlock(g) => View::Redlock(g.lease()),
        }
    }

    /// The resources (as the cell names them) and the role in each.
    pub fn claims(&self) -> Vec<(String, Role)> {
        match self {
            Guard::Lock(g) => vec![(g.key().to_owned(), Role::Exclusive)],
            Guard::Multi(g) => g.keys().map(|k| (k.to_owned(), Role::Exclusive)).collect(),
            Guard::Permit(g) => vec![(g.name().to_owned(), Role::Permit(PERMITS))],
            Guard::Read(g) => vec![(g.name().to_owned(), Role::Reader)],
            Guard::Write(g) => vec![(g.name().to_owned(), Role::Exclusive)],
            Guard::Leader(g) => vec![(g.name().to_owned(), Role::Exclusive)],
            Guard::Redlock(g) => vec![(g.key().to_owned(), Role::Exclusive)],
        }
    }

    pub fn remaining(&self) -> Duration {
        match self {
            Guard::Lock(g) => g.remaining(),
            Guard::Multi(g) => g.remaining(),
            Guard::Permit(g) => g.remaining(),
            Guard::Read(g) => g.remaining(),
            Guard::Write(g) => g.remaining(),
            Guard::Leader(g) => g.remaining(),
            Guard::Redlock(g) => g.remaining(),
        }
    }

    pub fn is_lost(&self) -> bool {
        match self {
            Guard::Lock(g) => g.is_lost(),
            Guard::Multi(g) => g.is_lost(),
            Guard::Permit(g) => g.is_lost(),
            Guard::Read(g) => g.is_lost(),
            Guard::Write(g) => g.is_lost(),
            Guard::Leader(g) => g.is_lost(),
            Guard::Redlock(g) => g.is_lost(),
        }
    }

    /// Completes when the guard reports itself lost, with the reason.
    pub async fn lost(&self) -> LostReason {
        match self {
            Guard::Lock(g) => g.lost().await,
            Guard::Multi(g) => g.lost().await.reason,
            Guard::Permit(g) => g.lost().await,
            Guard::Read(g) => g.lost().await,
            Guard::Write(g) => g.lost().await,
            Guard::Leader(g) => g.lost().await,
            Guard::Redlock(g) => g.lost().await,
        }
    }

    /// Releases (resigns) now.
    pub async fn release(self) -> Result<(), Error> {
        match self {
            Guard::Lock(g) => g.release().await,
            Guard::Multi(g) => g.release().await,
            Guard::Permit(g) => g.release().await,
            Guard::Read(g) => g.release().await,
            Guard::Write(g) => g.release().await,
            Guard::Leader(g) => g.resign().await,
            Guard::Redlock(g) => g.release().await,
        }
    }
}

/// What one acquisition asks for.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    /// One attempt (`try_*`) rather than waiting.
    pub once: bool,
    /// A random number choosing keys and roles.
    pub pick: u64,
    /// The longest wait.
    pub wait: Duration,
    /// The lease.
    pub ttl: Duration,
}

/// The wait strategy of waiting acquisitions: the timeout bounds it.
fn retry() -> RetryStrategy {
    RetryStrategy::linear(Duration::from_millis(10), 1000)
}

/// One acquisition of `primitive` over `names` (the cell's resources):
/// `Ok(None)` when the resource was busy (a `try_*` that found it taken, or
/// a wait that ran out).
pub async fn acquire(
    handle: &Handle,
    primitive: Primitive,
    names: &[String],
    ask: Ask,
) -> Result<Option<Guard>, Error> {
    let busy = |r: Result<Guard, Error>| match r {
        Ok(g) => Ok(Some(g)),
        Err(Error::NotObtained { .. }) => Ok(None),
        Err(e) => Err(e),
    };
    let pick = ask.pick as usize;
    match (handle, primitive) {
        (Handle::Mutex(m), Primitive::Lock) => {
            let key = &names[pick % names.len()];
            if ask.once {
                Ok(m.try_lock(key).await?.map(Guard::Lock))
            } else {
                let acquire = m.acquire(key).retry(retry()).timeout(ask.wait);
                busy(acquire.await.map(Guard::Lock))
            }
        }
        (Handle::Mutex(m), Primitive::Multi) => {
            // Two of the three keys, in either order.
            let first = pick % names.len();
            let second = (first + 1 + (pick / 3) % (names.len() - 1)) % names.len();
            let keys = [names[first].clone(), names[second].clone()];
            if ask.once {
                Ok(m.try_lock_all(keys).await?.map(Guard::Multi))
            } else {
                let acquire = m.acquire_all(keys).retry(retry()).timeout(ask.wait);
                busy(acquire.await.map(Guard::Multi))
            }
        }
        (Handle::Mutex(m), Primitive::Permit) => {
            let semaphore = m.semaphore(&names[0], PERMITS);
            if ask.once {
                Ok(semaphore.try_acquire().await?.map(Guard::Permit))
            } else {
                let acquire = semaphore.acquire_with().retry(retry()).timeout(ask.wait);
                busy(acquire.await.map(Guard::Permit))
            }
        }
        (Handle::Mutex(m), Primitive::ReadWrite) => {
            let rw = m.rw(&names[0]);
            let write = pick % 3 == 0;
            match (write, ask.once) {
                (true, true) => Ok(rw.try_write().await?.map(Guard::Write)),
                (false, true) => Ok(rw.try_read().await?.map(Guard::Read)),
                (true, false) => busy(
                    rw.write_with()
                        .retry(retry())
                        .timeout(ask.wait)
                        .await
                        .map(Guard::Write),
                ),
                (false, false) => busy(
                    rw.read_with()
                        .retry(retry())
                        .timeout(ask.wait)
                        .await
                        .map(Guard::Read),
                ),
            }
        }
        (Handle::Mutex(m), Primitive::Election) => {
            // No one-attempt form: a campaign bounded by the wait.
            let election = m
                .election(&names[0])
                .ttl(ask.ttl)
                .retry_period(Duration::from_millis(50));
            match tokio::time::timeout(ask.wait, election.campaign(format!("c{pick}"))).await {
                Ok(led) => Ok(Some(Guard::Leader(led?))),
                Err(_) => Ok(None),
            }
        }
        (Handle::Redlock(r), Primitive::Redlock) => {
            let key = &names[pick % names.len()];
            if ask.once {
                Ok(r.try_lock(key).await?.map(Guard::Redlock))
            } else {
                let acquire = r.acquire(key).retry(retry()).timeout(ask.wait);
                busy(acquire.await.map(Guard::Redlock))
            }
        }
        (_, p) => panic!("{} through the wrong kind of handle", p.name()),
    }
}
