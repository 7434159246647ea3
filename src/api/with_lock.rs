//! Running work while a lock is held, for `with_lock` of
//! [`DistributedMutex`](crate::DistributedMutex) and
//! [`Redlock`](crate::Redlock): the work is dropped when the lock is lost,
//! and a loss found by the release is the call's error.

use std::future::Future;

use crate::policy::error::lost::LostReason;
use crate::policy::error::Error;

/// Runs `work` until it ends, or until `lost` does (then `Error::Lost` for
/// `key`, and the work is dropped).
pub(crate) async fn unless_lost<T>(
    key: &str,
    lost: impl Future<Output = LostReason>,
    work: impl Future<Output = T>,
) -> Result<T, Error> {
    tokio::select! {
        biased;
        reason = lost => Err(Error::Lost { key: key.to_owned(), reason }),
        output = work => Ok(output),
    }
}

/// The work's `output`, given how its lock's release went.
pub(crate) fn after_release<T>(output: T, released: Result<(), Error>) -> Result<T, Error> {
    match released {
        Ok(()) => Ok(output),
        Err(Error::NotHeld { key, reason }) => Err(Error::Lost { key, reason }),
        // Redis could not be asked to release: the lock was held as far
        // as anyone can tell; the release is retried in the background.
        Err(e) if e.is_transient() => Ok(output),
        Err(e) => Err(e),
    }
}
