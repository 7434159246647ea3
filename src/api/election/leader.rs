//! [`Leader`]: what anyone can read about an election's leader.

use std::time::{Duration, SystemTime};

/// An election's current leader, as read from Redis by
/// [`Election::leader`](crate::Election::leader) or followed by
/// [`Election::observe`](crate::Election::observe).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leader {
    /// The value the leader campaigned with, or last proclaimed.
    pub value: String,
    /// The leader's term: strictly greater than every earlier leader's of
    /// this election (the fencing counter of its lock; see the README for
    /// what holds across a Redis restart without data).
    pub term: u64,
    /// The lease the leader had left when this was read (its lock's `PTTL`).
    /// A live leader renews it; without renewal it ends after this.
    pub lease_left: Duration,
    /// When this leader was elected, by the Redis server's clock.
    pub since: SystemTime,
}

impl Leader {
    /// Whether `self` and `other` describe the same leader with the same
    /// value (the lease left aside): what [`observe`](crate::Election::observe)
    /// reports a change on.
    pub fn same_as(&self, other: &Leader) -> bool {
        self.term == other.term && self.value == other.value
    }
}
