//! An all-or-nothing acquisition's settings, checked: the keys
//! deduplicated and in canonical order (by cluster slot, then by key), in
//! runs of one slot each.

use std::ops::Range;
use std::time::Duration;

use fred::interfaces::ClientLike;

use super::{AcquireAll, MAX_LOCK_ALL_KEYS};
use crate::policy::error::Error;
use crate::policy::limits::{ttl_millis, validate_key};
use crate::policy::retry::RetryStrategy;
use crate::protocol::confirm::MinReplicas;
use crate::protocol::keys::LockKeys;

/// One key of the set.
pub(crate) struct Member {
    /// As the caller gave it.
    pub(crate) key: String,
    pub(crate) keys: LockKeys,
}

/// The checked settings of a multi-key acquisition.
pub(super) struct Plan {
    /// The keys in canonical order: by cluster slot, then by key.
    pub(super) members: Vec<Member>,
    /// Runs of `members` sent in one script call each: one run per slot on
    /// a cluster, one run for all on a single server.
    pub(super) groups: Vec<Range<usize>>,
    pub(super) ttl_ms: u64,
    pub(super) auto_renew: bool,
    pub(super) retry: RetryStrategy,
    pub(super) timeout: Option<Duration>,
    /// Replica confirmation of the set's writes.
    pub(super) confirm: Option<MinReplicas>,
}

impl Plan {
    pub(super) fn check(req: &AcquireAll) -> Result<Plan, Error> {
        let settings = &req.inner.settings;
        check_count(req)?;
        for key in &req.keys {
            validate_key(key)?;
        }
        let ttl_ms = ttl_millis(&req.keys[0], req.options.ttl.unwrap_or(settings.ttl))?;
        let retry = req.options.retry.unwrap_or(settings.retry);
        retry.validate()?;
        let confirm = match req.options.min_replicas {
            Some((replicas, timeout)) => MinReplicas::check(replicas, timeout)?,
            None => settings.min_replicas,
        };
        let members = canonical(&settings.prefix, &req.keys);
        let groups = if req.inner.client.is_clustered() {
            slot_runs(members.iter().map(|(slot, _)| *slot))
        } else {
            std::iter::once(0..members.len()).collect()
        };
        Ok(Plan {
            members: members.into_iter().map(|(_, m)| m).collect(),
            groups,
            ttl_ms,
            auto_renew: req.options.auto_renew.unwrap_or(settings.auto_renew),
            retry,
            timeout: req.options.timeout,
            confirm,
        })
    }
}

/// Refuses an empty set, and one of more keys than a multi-key lock takes.
fn check_count(req: &AcquireAll) -> Result<(), Error> {
    if req.keys.is_empty() {
        return Err(Error::InvalidKeySet {
            count: 0,
            reason: "a multi-key lock needs at least one key",
        });
    }
    if req.too_many && req.keys.len() == MAX_LOCK_ALL_KEYS {
        return Err(Error::InvalidKeySet {
            count: MAX_LOCK_ALL_KEYS + 1,
            reason: "a multi-key lock takes at most 1024 distinct keys (MAX_LOCK_ALL_KEYS)",
        });
    }
    if req.too_many {
        return Err(Error::InvalidKeySet {
            count: req.keys.len(),
            reason: "more than 2^20 keys were given (duplicates included); \
                     a multi-key lock takes at most 1024 distinct keys",
        });
    }
    Ok(())
}

/// The members of `keys` (distinct), each with its slot, in canonical
/// order: by cluster slot, then by Redis key.
fn canonical(prefix: &str, keys: &[String]) -> Vec<(u16, Member)> {
    let mut members: Vec<(u16, Member)> = keys
        .iter()
        .map(|key| {
            let keys = LockKeys::new(prefix, key);
            let slot = fred::util::redis_keyslot(keys.lock.as_bytes());
            (
                slot,
                Member {
                    key: key.clone(),
                    keys,
                },
            )
        })
        .collect();
    members.sort_by(|(a, x), (b, y)| (a, x.keys.lock.as_bytes()).cmp(&(b, y.keys.lock.as_bytes())));
    members
}

/// The runs of equal slots in a sorted sequence of slots.
pub(crate) fn slot_runs(slots: impl Iterator<Item = u16>) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    let mut last = None;
    for (i, slot) in slots.enumerate() {
        match runs.last_mut() {
            Some(run) if last == Some(slot) => run.end = i + 1,
            _ => runs.push(i..i + 1),
        }
        last = Some(slot);
    }
    runs
}
#[cfg(test)]
mod tests {
    use super::slot_runs;

    #[test]
    pub(super) fn runs_of_equal_slots() {
        assert!(slot_runs(std::iter::empty()).is_empty());
        assert_eq!(slot_runs([5].into_iter()), vec![0..1]);
        assert_eq!(
            slot_runs([1, 1, 2, 7, 7, 7].into_iter()),
            vec![0..2, 2..3, 3..6]
        );
    }
}
