//! What `run` supervises a command under: a lock (`dmutex run`) or a
//! leadership (`dmutex elect`), with the same loss and release handling.

use std::future::Future;

use distributed_mutex::{Error, Leadership, LockGuard, LostReason};

/// A held lock or leadership.
pub trait Held {
    /// The token, for `DMUTEX_TOKEN`.
    fn token(&self) -> &str;
    /// The fencing token (a leadership's term), for `DMUTEX_FENCING_TOKEN`.
    fn fencing_token(&self) -> Option<u64>;
    /// Completes when it is known lost.
    fn lost(&self) -> impl Future<Output = LostReason>;
    /// Releases (resigns) now.
    fn release(self) -> impl Future<Output = Result<(), Error>>;
}

impl Held for LockGuard {
    fn token(&self) -> &str {
        LockGuard::token(self)
    }

    fn fencing_token(&self) -> Option<u64> {
        LockGuard::fencing_token(self)
    }

    fn lost(&self) -> impl Future<Output = LostReason> {
        LockGuard::lost(self)
    }

    fn release(self) -> impl Future<Output = Result<(), Error>> {
        LockGuard::release(self)
    }
}

impl Held for Leadership {
    fn token(&self) -> &str {
        Leadership::token(self)
    }

    fn fencing_token(&self) -> Option<u64> {
        Some(self.term())
    }

    fn lost(&self) -> impl Future<Output = LostReason> {
        Leadership::lost(self)
    }

    fn release(self) -> impl Future<Output = Result<(), Error>> {
        Leadership::resign(self)
    }
}
