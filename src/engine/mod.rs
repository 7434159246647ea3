//! The lease engine: what every handle shares ([`inner`]), the per-call
//! options and the macros that write the builders ([`options`]), a held
//! lease and its loss ([`lease`]), the background tasks (the release worker
//! [`release`] with its group commit [`batch`], on the one group-commit
//! machinery [`group_commit`] that first attempts use too ([`first_attempts`]), the renewer [`renew`], the
//! subscriber and local waiters [`notify`], Sentinel failover [`sentinel`]
//! with its count of switches [`epoch`]), the wait queue and hand-off
//! ([`queue`]), the sorted-set leases that semaphores and read-write locks
//! share ([`primitive`]), and the metrics hooks ([`metrics`]). It uses the
//! protocol and policy layers.

pub(crate) mod batch;
pub(crate) mod epoch;
pub(crate) mod first_attempts;
pub(crate) mod group_commit;
pub(crate) mod inner;
pub(crate) mod join;
pub(crate) mod lease;
pub mod metrics;
pub(crate) mod notify;
pub(crate) mod options;
pub(crate) mod primitive;
pub(crate) mod queue;
pub(crate) mod release;
pub(crate) mod renew;
pub(crate) mod sentinel;
