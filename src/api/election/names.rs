//! Where an election lives in Redis (all in one cluster slot, under the
//! mutex's key prefix `P`; `{T}` is the name's slot tag, see `keys.rs`):
//!
//! | what | Redis name |
//! |---|---|
//! | the lock its leader holds | `P {T}\0election:NAME` (a lock like any other: queue, fencing counter, release channel) |
//! | the leader's token, value, term and since | `P \xff {T}:election:NAME` (a hash, never deleted) |
//! | the news channel | `P {T}\0election-news:NAME:released`, or `P {T}:released:{T}\0election-news:NAME` (sharded) |

use crate::policy::error::Error;
use crate::policy::limits::validate_key;
use crate::protocol::channel::ReleaseChannel;
use crate::protocol::keys::LockKeys;

/// The longest election name accepted, in bytes (its lock key holds it
/// twice, and must stay within [`MAX_KEY_LEN`](crate::MAX_KEY_LEN)).
pub const MAX_ELECTION_NAME_LEN: usize = 1024;

/// The role of an election's lock among a name's derived locks.
const LOCK_ROLE: &str = "election";
/// The role of its news channel.
const NEWS_ROLE: &str = "election-news";

/// The Redis names of one election.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// The lock key as an acquisition takes it (without the prefix).
    pub(crate) lock_key: String,
    /// The lock's names (with the prefix).
    pub(crate) lock: LockKeys,
    /// The hash of the leader's token, value, term and since.
    pub(crate) info: Vec<u8>,
    /// The names whose release channel carries the election's news.
    news: LockKeys,
}

impl Names {
    /// The names of the election `name` under `prefix`, or
    /// [`Error::InvalidKey`] for an empty or too long name.
    pub(crate) fn new(prefix: &str, name: &str) -> Result<Self, Error> {
        validate_key(name)?;
        if name.len() > MAX_ELECTION_NAME_LEN {
            return Err(Error::InvalidKey {
                key: name.chars().take(64).collect(),
                reason: "an election name must be at most 1024 bytes long",
            });
        }
        let base = LockKeys::new(prefix, name);
        let lock = base.waiting(LOCK_ROLE);
        Ok(Names {
            lock_key: lock.lock[prefix.len()..].to_owned(),
            lock,
            info: base.member_set(LOCK_ROLE),
            news: base.waiting(NEWS_ROLE),
        })
    }

    /// The news channel (plain or sharded, as the mutex's releases).
    pub(crate) fn news_channel(&self, sharded: bool) -> ReleaseChannel {
        ReleaseChannel::of(&self.news, sharded)
    }

    /// The names whose release channel is the news channel (to wait on).
    pub(crate) fn news_keys(&self) -> &LockKeys {
        &self.news
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::util::redis_keyslot;

    #[test]
    fn every_name_shares_one_slot_under_the_prefix() {
        for prefix in ["", "p:", "{app}:"] {
            for name in ["leader", "{tag}x", "a}b", "ключ"] {
                let n = Names::new(prefix, name).unwrap();
                let slot = redis_keyslot(n.lock.lock.as_bytes());
                assert_eq!(redis_keyslot(&n.info), slot, "{prefix:?} {name:?}");
                let channel = n.news_channel(true).name;
                assert_eq!(redis_keyslot(channel.as_bytes()), slot);
                assert!(channel.starts_with(prefix));
                assert!(n.lock.lock.starts_with(prefix));
                assert!(n.info.starts_with(prefix.as_bytes()));
                assert_ne!(n.lock.lock, format!("{prefix}{name}"));
            }
        }
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(matches!(Names::new("", ""), Err(Error::InvalidKey { .. })));
        let long = "n".repeat(MAX_ELECTION_NAME_LEN + 1);
        assert!(matches!(
            Names::new("", &long),
            Err(Error::InvalidKey { .. })
        ));
        let longest = "n".repeat(MAX_ELECTION_NAME_LEN);
        let prefix = "p".repeat(crate::policy::limits::MAX_PREFIX_LEN);
        assert!(validate_key(&Names::new(&prefix, &longest).unwrap().lock_key).is_ok());
    }
}
