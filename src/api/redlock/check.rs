//! A Redlock's settings and server list, checked before anything is
//! connected: the TTL leaves a validity window, the count is in bounds, no
//! server is given twice.

use std::time::Duration;

use fred::types::config::{Config, ServerConfig};

use super::servers::Settings;
use super::MAX_REDLOCK_SERVERS;
use crate::policy::error::Error;
use crate::policy::limits::{drift, ttl_millis, validate_command_timeout, MAX_PREFIX_LEN};
use crate::protocol::keys::prefix_is_valid;

pub(super) fn config(message: &str) -> Error {
    Error::Config {
        message: message.to_owned(),
        source: None,
    }
}

pub(super) fn check_settings(settings: &Settings) -> Result<(), Error> {
    validate_command_timeout(settings.server_timeout)?;
    check_ttl("", settings.ttl, settings.server_timeout)?;
    settings.retry.validate()?;
    let prefix = &settings.prefix;
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(config(&format!(
            "the key prefix is {} bytes long; at most {MAX_PREFIX_LEN} are accepted",
            prefix.len()
        )));
    }
    if !prefix_is_valid(prefix) {
        return Err(config(&format!(
            "the key prefix {prefix:?} has a `{{` without a matching `}}` after it; close the \
             hash tag or leave braces out"
        )));
    }
    Ok(())
}

/// The TTL in whole milliseconds, refused unless it leaves a validity window
/// after the drift margin and one per-server timeout.
pub(crate) fn check_ttl(key: &str, ttl: Duration, server_timeout: Duration) -> Result<u64, Error> {
    let ms = ttl_millis(key, ttl)?;
    let ttl = Duration::from_millis(ms);
    if ttl <= drift(ttl) + server_timeout {
        return Err(Error::InvalidTtl {
            key: crate::policy::error::display_key(key),
            ttl,
            reason: "a Redlock TTL must exceed the drift margin (1 % of the TTL + 2 ms) plus the \
                     per-server timeout, or no acquisition could ever be valid",
        });
    }
    Ok(ms)
}

pub(super) fn check_count(n: usize) -> Result<(), Error> {
    if n == 0 {
        return Err(config(
            "a Redlock needs at least one Redis server (and at least 3 to survive the loss of \
             one); none was given",
        ));
    }
    if n > MAX_REDLOCK_SERVERS {
        return Err(config(&format!(
            "a Redlock of {n} servers was asked for; at most {MAX_REDLOCK_SERVERS} are accepted"
        )));
    }
    Ok(())
}

/// Refuses the same server twice: two entries on one server would count it
/// twice towards the majority.
pub(super) fn check_distinct(
    identities: impl Iterator<Item = Option<String>>,
) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for id in identities.flatten() {
        if !seen.insert(id.clone()) {
            return Err(config(&format!(
                "the Redis server {id} is given twice; a Redlock's servers must be independent \
                 (one entry each), or it would be counted twice towards the majority"
            )));
        }
    }
    Ok(())
}

/// `host:port` of a URL (lower-cased host), `None` when it does not parse
/// (connecting then reports why).
pub(super) fn url_identity(url: &str) -> Option<String> {
    let plain = url
        .replacen("rediss://", "redis://", 1)
        .replacen("valkeys://", "valkey://", 1);
    Config::from_url(&plain)
        .ok()
        .map(|config| server_identity(&config))
}

/// What names one server in messages and duplicate checks.
pub(super) fn server_identity(config: &Config) -> String {
    match &config.server {
        ServerConfig::Centralized { server } => {
            format!("{}:{}", server.host.to_lowercase(), server.port)
        }
        other => format!("{other:?}"),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn ttls_must_leave_a_validity_window() {
        let ms = Duration::from_millis;
        assert!(check_ttl("k", ms(300), ms(250)).is_ok());
        // 1 % of 252 ms + 2 ms = 4.52 ms, and 252 ms ≤ 4.52 ms + 250 ms.
        assert!(matches!(
            check_ttl("k", ms(252), ms(250)),
            Err(Error::InvalidTtl { .. })
        ));
        assert!(matches!(
            check_ttl("k", ms(1), ms(1)),
            Err(Error::InvalidTtl { .. })
        ));
        assert!(matches!(
            check_ttl("k", Duration::ZERO, ms(1)),
            Err(Error::InvalidTtl { .. })
        ));
    }

    #[test]
    pub(super) fn the_same_server_twice_is_refused() {
        let ids = [
            "redis://127.0.0.1:7000",
            "redis://127.0.0.1:7001/2",
            "redis://127.0.0.1:7000/3",
        ]
        .map(url_identity);
        assert_eq!(ids[0].as_deref(), Some("127.0.0.1:7000"));
        assert!(check_distinct(ids.into_iter()).is_err());
        let ok = ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"].map(url_identity);
        assert!(check_distinct(ok.into_iter()).is_ok());
        assert!(matches!(check_count(0), Err(Error::Config { .. })));
    }
}
