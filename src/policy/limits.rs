//! The defaults and bounds of every setting, and the checks that enforce them
//! before anything is sent to Redis.

use std::time::Duration;

use crate::policy::error::display_key;
use crate::policy::error::Error;

/// The lease a lock gets unless told otherwise: one minute.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// How long one command to Redis may take unless told otherwise: two seconds.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest command timeout accepted: one hour. Longer is a unit mistake
/// or an attempt to say "never", which a lock cannot honour (a command that
/// never answers would hold a caller forever).
pub const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// The longest key accepted, in bytes (not counting the mutex's key prefix).
///
/// Redis would take keys up to 512 MB, but a lock key is sent with every
/// command, stored for the whole lease and printed in every log line and
/// error; 4 KiB leaves room for keys built from URLs or paths while catching
/// a key built from a request body by mistake.
pub const MAX_KEY_LEN: usize = 4096;
/// The longest key prefix accepted, in bytes.
pub const MAX_PREFIX_LEN: usize = 1024;
/// The shortest lease accepted: one millisecond (Redis counts in milliseconds).
pub const MIN_TTL: Duration = Duration::from_millis(1);
/// The longest lease accepted: 365 days. Longer is almost always a unit
/// mistake (seconds given as milliseconds); a lock that must outlive a year
/// is not a lease.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The TTL in whole milliseconds, or `InvalidTtl`.
pub(crate) fn ttl_millis(key: &str, ttl: Duration) -> Result<u64, Error> {
    let reason = if ttl < MIN_TTL {
        "a lock's TTL must be at least 1 ms"
    } else if ttl > MAX_TTL {
        "a lock's TTL must be at most 365 days (is it a unit mistake?)"
    } else {
        return Ok(ttl.as_millis() as u64);
    };
    Err(Error::InvalidTtl {
        key: display_key(key),
        ttl,
        reason,
    })
}

/// Checks a lock key as the caller gave it.
pub(crate) fn validate_key(key: &str) -> Result<(), Error> {
    let reason = if key.is_empty() {
        "a lock key must not be empty"
    } else if key.len() > MAX_KEY_LEN {
        "a lock key must be at most 4096 bytes long"
    } else {
        return Ok(());
    };
    Err(Error::InvalidKey {
        key: display_key(key),
        reason,
    })
}

/// Checks a command timeout: above zero, at most [`MAX_COMMAND_TIMEOUT`].
pub(crate) fn validate_command_timeout(timeout: Duration) -> Result<(), Error> {
    let message = if timeout.is_zero() {
        "the command timeout is zero, so every command would time out; give it at least a few \
         milliseconds"
    } else if timeout > MAX_COMMAND_TIMEOUT {
        "the command timeout is over one hour; a lock cannot wait that long for one command \
         (use acquire(..).timeout(..) or the retry strategy to wait longer for a busy lock)"
    } else {
        return Ok(());
    };
    Err(Error::Config {
        message: message.into(),
        source: None,
    })
}

/// The drift margin taken off a lease: 1 % of it plus 2 ms, for clock rate
/// differences between this host and Redis and for timer granularity.
pub(crate) fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds() {
        assert!(ttl_millis("k", Duration::ZERO).is_err());
        assert!(ttl_millis("k", Duration::from_micros(999)).is_err());
        assert_eq!(ttl_millis("k", Duration::from_millis(1)).unwrap(), 1);
        assert_eq!(ttl_millis("k", Duration::from_micros(1500)).unwrap(), 1);
        assert_eq!(
            ttl_millis("k", MAX_TTL).unwrap(),
            MAX_TTL.as_millis() as u64
        );
        assert!(ttl_millis("k", MAX_TTL + Duration::from_millis(1)).is_err());
        assert!(ttl_millis("k", Duration::MAX).is_err());
    }

    #[test]
    fn key_bounds() {
        assert!(matches!(validate_key(""), Err(Error::InvalidKey { .. })));
        assert!(validate_key("a").is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(validate_key("spaces {braces}\nnewline ключ 鍵").is_ok());
    }

    #[test]
    fn command_timeout_bounds() {
        assert!(validate_command_timeout(Duration::ZERO).is_err());
        assert!(validate_command_timeout(Duration::from_millis(1)).is_ok());
        assert!(validate_command_timeout(MAX_COMMAND_TIMEOUT).is_ok());
        assert!(validate_command_timeout(Duration::MAX).is_err());
    }

    #[test]
    fn drift_is_one_percent_plus_two_ms() {
        assert_eq!(drift(Duration::from_secs(60)), Duration::from_millis(602));
        assert_eq!(drift(Duration::from_millis(1)), Duration::from_micros(2010));
    }
}
