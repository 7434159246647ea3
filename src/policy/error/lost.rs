//! [`LostReason`]: why a lock is known to be lost (a guard's loss, an
//! [`Error::Lost`](crate::Error::Lost)'s reason, a metric's label).

use std::fmt;

/// Why a lock is known to be lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LostReason {
    /// The lease ran out locally (last confirmed send time + TTL − drift)
    /// before a renewal was confirmed: Redis was unreachable, paused or too
    /// slow, or renewal was off and the work outlasted the TTL.
    Expired,
    /// The key is gone from Redis: it was deleted, it expired there, or the
    /// server restarted without its data.
    Missing,
    /// The key holds another client's token (or another type of value) now.
    Replaced,
    /// The guard released the lock (or was dropped, which releases it): seen
    /// by [`Lease`](crate::Lease) handles that outlive their guard.
    Released,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LostReason::Expired => "its lease ran out before a renewal was confirmed",
            LostReason::Missing => "its key is gone from Redis",
            LostReason::Replaced => "its key holds another holder's token",
            LostReason::Released => "it was released",
        })
    }
}
