//! Where a lock lives in Redis.
//!
//! For a lock on key `K` taken through a mutex with key prefix `P`:
//!
//! | what | Redis name | lifetime |
//! |---|---|---|
//! | the lock | `P K` (holds the holder's token) | the lease |
//! | the fencing counter | `P \xff {T}:fence:K` | never deleted |
//! | the release channel | `P K:released`, or `P {T}:released:K` with sharded pub/sub (`channel.rs`) | (pub/sub) |
//! | the wait queue | `P \xff {T}:queue:K` (a list of waiters, see `queue.rs`) | while waiters queue |
//! | a process's handoff channel | `P {T}:handoff:<mutex id>:K` (`queue.rs`) | (pub/sub) |
//!
//! The lock key is the caller's key behind the prefix, unchanged, so other
//! clients of the protocol (bsm/redislock, redis-py's `Lock`) exclude and are
//! excluded on the same key. Every other name starts with `P` followed by the
//! byte `0xFF`, which never occurs in UTF-8: no lock key (always `P` + valid
//! UTF-8) can ever equal one of them, whatever keys callers use. All of them
//! start with `P`, so an ACL rule `~P*` `&P*` covers everything a mutex
//! touches.
//!
//! `{T}` is a cluster hash tag that hashes to the lock key's slot, so one
//! script can touch the lock and its derived keys on Redis Cluster: the lock
//! key's own hash tag when it has one, else the lock key itself when it has
//! no `}`, else a number from a table of one number per slot, computed once
//! per process. A prefix with a hash tag of its own puts every lock of the
//! mutex, and every derived key, in that one slot.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::LazyLock;

use fred::util::redis_keyslot;

/// The byte that separates the prefix from a derived key's name.
const DERIVED: u8 = 0xFF;

/// Where the cluster hash tag of `key` is, as Redis reads it: the bytes
/// between the first `{` and the first `}` after it, when there are any.
fn hash_tag_range(key: &[u8]) -> Option<Range<usize>> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = open + 1 + key[open + 1..].iter().position(|&b| b == b'}')?;
    (close > open + 1).then_some(open + 1..close)
}

/// The cluster hash tag of `key`, if it has one.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    hash_tag_range(key).map(|r| &key[r])
}

/// For each cluster slot, a decimal number that hashes to it.
static SLOT_NUMBERS: LazyLock<Vec<u32>> = LazyLock::new(|| {
    const SLOTS: usize = 16384;
    let mut numbers = vec![u32::MAX; SLOTS];
    let mut missing = SLOTS;
    let mut n = 0u32;
    while missing > 0 {
        let slot = redis_keyslot(n.to_string().as_bytes()) as usize;
        if numbers[slot] == u32::MAX {
            numbers[slot] = n;
            missing -= 1;
        }
        n += 1;
    }
    numbers
});

/// A tag (without braces) that hashes to the slot of `lock_key`.
fn slot_tag(lock_key: &str) -> Cow<'_, str> {
    // `{` and `}` are ASCII, so a tag's bounds never split a character.
    if let Some(range) = hash_tag_range(lock_key.as_bytes()) {
        return Cow::Borrowed(&lock_key[range]);
    }
    if !lock_key.contains('}') {
        return Cow::Borrowed(lock_key);
    }
    let slot = redis_keyslot(lock_key.as_bytes()) as usize;
    Cow::Owned(SLOT_NUMBERS[slot].to_string())
}

/// Whether a key prefix can be used: a `{` in it must be closed within it
/// (a complete hash tag), or every lock key's slot would depend on the
/// caller's key in a way derived keys cannot follow.
pub(crate) fn prefix_is_valid(prefix: &str) -> bool {
    !prefix.contains('{') || hash_tag(prefix.as_bytes()).is_some()
}

/// The Redis names of one lock (see the module docs). Only the lock key is
/// kept; derived names (and their slot tag) are computed when needed.
#[derive(Debug, Clone, Default)]
pub(crate) struct LockKeys {
    /// `P K`.
    pub(crate) lock: String,
    /// The length of `P`.
    prefix_len: usize,
}

impl LockKeys {
    pub(crate) fn new(prefix: &str, key: &str) -> Self {
        let mut lock = String::with_capacity(prefix.len() + key.len());
        lock.push_str(prefix);
        lock.push_str(key);
        LockKeys {
            lock,
            prefix_len: prefix.len(),
        }
    }

    /// `P \xff {T}:<what>:<name>`.
    fn derived(&self, what: &str, name: &str) -> Vec<u8> {
        let prefix = &self.lock.as_bytes()[..self.prefix_len];
        let tag = slot_tag(&self.lock);
        let mut out = Vec::with_capacity(prefix.len() + tag.len() + what.len() + name.len() + 5);
        out.extend_from_slice(prefix);
        out.push(DERIVED);
        out.push(b'{');
        out.extend_from_slice(tag.as_bytes());
        out.push(b'}');
        out.push(b':');
        out.extend_from_slice(what.as_bytes());
        out.push(b':');
        out.extend_from_slice(name.as_bytes());
        out
    }

    /// The plain pub/sub release channel: `P K:released`.
    pub(crate) fn plain_channel(&self) -> String {
        format!("{}:released", self.lock)
    }

    /// The sharded pub/sub release channel, in the lock key's slot:
    /// `P {T}:released:K`. (UTF-8, unlike derived keys: fred reads channel
    /// names as strings; channels never collide with keys anyway.)
    pub(crate) fn shard_channel(&self) -> String {
        let (prefix, key) = self.lock.split_at(self.prefix_len);
        format!("{prefix}{{{}}}:released:{key}", slot_tag(&self.lock))
    }

    /// The fencing counter.
    pub(crate) fn fence(&self) -> Vec<u8> {
        let key = &self.lock[self.prefix_len..];
        self.derived("fence", key)
    }

    /// The wait queue (a list of queued waiters, see `queue.rs`).
    pub(crate) fn queue(&self) -> Vec<u8> {
        let key = &self.lock[self.prefix_len..];
        self.derived("queue", key)
    }

    /// The handoff channel of the mutex `id` for this lock, in the lock
    /// key's slot: `P {T}:handoff:<id>:K` (the scripts derive it from the
    /// lock and queue names, see `common.lua`).
    pub(crate) fn handoff_channel(&self, id: &str) -> String {
        let (prefix, key) = self.lock.split_at(self.prefix_len);
        format!("{prefix}{{{}}}:handoff:{id}:{key}", slot_tag(&self.lock))
    }

    /// A derived key of the semaphore or read-write lock named by this
    /// lock key: `P \xff {T}:<what>:K` (see `primitive/`).
    pub(crate) fn member_set(&self, what: &str) -> Vec<u8> {
        let key = &self.lock[self.prefix_len..];
        self.derived(what, key)
    }

    /// The names a semaphore's or read-write lock's waiters of one `role`
    /// queue and listen under: the lock key `P {T}\0<role>:K`, whose tag
    /// `{T}` is this key's slot tag, so its channels share the slot of
    /// [`member_set`](Self::member_set)'s keys. (No user's lock key is
    /// likely to look like it; if one did, its waiters would only see extra
    /// wake-ups.)
    pub(crate) fn waiting(&self, role: &str) -> LockKeys {
        let (prefix, key) = self.lock.split_at(self.prefix_len);
        let name = format!("{{{}}}\0{role}:{key}", slot_tag(&self.lock));
        LockKeys::new(prefix, &name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(key: &[u8]) -> u16 {
        redis_keyslot(key)
    }

    #[test]
    fn derived_keys_share_the_lock_keys_slot() {
        let keys = [
            "plain",
            "{tag}rest",
            "a{b}c",
            "ключ",
            "with space",
            "x}y",
            "}{",
            "{}x",
            "a{b{c}d",
            "{",
            "}",
            "{{}}",
            "a{}b{c}",
        ];
        for prefix in ["", "locks:", "p}", "{app}:"] {
            for key in keys {
                let k = LockKeys::new(prefix, key);
                assert_eq!(k.lock, format!("{prefix}{key}"));
                assert_eq!(
                    slot(k.shard_channel().as_bytes()),
                    slot(k.lock.as_bytes()),
                    "{prefix:?} {key:?}"
                );
                assert!(k.shard_channel().starts_with(prefix));
                assert_eq!(
                    slot(k.handoff_channel("0123abcd").as_bytes()),
                    slot(k.lock.as_bytes()),
                    "{prefix:?} {key:?}"
                );
                assert!(k.handoff_channel("0123abcd").starts_with(prefix));
                assert_eq!(slot(&k.queue()), slot(k.lock.as_bytes()));
                assert!(k.queue().starts_with(prefix.as_bytes()));
                let derived = k.fence();
                assert_eq!(
                    slot(&derived),
                    slot(k.lock.as_bytes()),
                    "{prefix:?} {key:?}"
                );
                assert!(derived.starts_with(prefix.as_bytes()));
                assert_ne!(derived, k.lock.as_bytes());
                assert!(std::str::from_utf8(&derived).is_err(), "never a lock key");
            }
        }
    }

    #[test]
    fn a_primitives_keys_and_channels_share_one_slot() {
        for prefix in ["", "locks:", "{app}:"] {
            for key in ["plain", "{tag}rest", "x}y", "a{b"] {
                let base = LockKeys::new(prefix, key);
                let slot_of = slot(&base.member_set("sem"));
                for role in ["sem", "rw-read", "rw-write"] {
                    let waiting = base.waiting(role);
                    assert_eq!(slot(waiting.shard_channel().as_bytes()), slot_of);
                    assert_eq!(slot(waiting.lock.as_bytes()), slot_of);
                }
                assert_eq!(slot(&base.member_set("rw-readers")), slot_of);
            }
        }
    }

    #[test]
    fn fence_keys_of_distinct_locks_differ() {
        let a = LockKeys::new("p:", "a").fence();
        let b = LockKeys::new("p:", "a:fence").fence();
        let c = LockKeys::new("p:", "{a}").fence();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, b"p:\xff{p:a}:fence:a".to_vec());
    }

    #[test]
    fn hash_tags_follow_redis_rules() {
        assert_eq!(hash_tag(b"a{b}c"), Some(&b"b"[..]));
        assert_eq!(hash_tag(b"a{}b{c}"), None);
        assert_eq!(hash_tag(b"a{b{c}d"), Some(&b"b{c"[..]));
        assert_eq!(hash_tag(b"x}y{"), None);
        assert_eq!(
            slot_tag("x}y"),
            SLOT_NUMBERS[slot(b"x}y") as usize].to_string()
        );
        assert_eq!(slot_tag("a{b{c}d"), "b{c");
    }

    #[test]
    fn every_slot_has_a_number() {
        assert!(SLOT_NUMBERS.iter().all(|&n| n != u32::MAX));
        for (s, n) in SLOT_NUMBERS.iter().enumerate().step_by(97) {
            assert_eq!(slot(n.to_string().as_bytes()) as usize, s);
        }
    }

    #[test]
    fn prefixes_with_an_open_brace_are_refused() {
        assert!(prefix_is_valid(""));
        assert!(prefix_is_valid("locks:"));
        assert!(prefix_is_valid("{app}:"));
        assert!(prefix_is_valid("a}b"));
        assert!(!prefix_is_valid("a{b"));
        assert!(!prefix_is_valid("a{}b"));
    }
}
