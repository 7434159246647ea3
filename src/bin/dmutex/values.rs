//! The values of the command line: checked keys, tokens, holder labels and
//! TTLs, and what `run` does when the lock is lost (used by `args.rs` and
//! `options.rs`).

use std::time::Duration;

use clap::ValueEnum;
use distributed_mutex::{MAX_HOLDER_LEN, MAX_KEY_LEN, MAX_TTL, MIN_TTL};

use crate::duration;

/// What `run` does to the command when the lock is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnLost {
    /// SIGTERM, then SIGKILL after --grace
    Term,
    /// SIGKILL at once
    Kill,
    /// Let it run on (a line on stderr; dmutex still exits 79)
    Ignore,
}

pub fn parse_key(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("a lock key must not be empty".into());
    }
    if text.len() > MAX_KEY_LEN {
        return Err(format!(
            "a lock key must be at most {MAX_KEY_LEN} bytes long (this one is {})",
            text.len()
        ));
    }
    Ok(text.to_owned())
}

pub fn parse_token(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the token must not be empty".into());
    }
    Ok(text.to_owned())
}

pub fn parse_holder(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > MAX_HOLDER_LEN || text.chars().any(char::is_control) {
        return Err(format!(
            "a holder label must be 1 to {MAX_HOLDER_LEN} bytes without control characters"
        ));
    }
    Ok(text.to_owned())
}

pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = duration::parse(text)?;
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(format!(
            "a lock's TTL must be between 1ms and 365d (got {})",
            duration::human(ttl)
        ));
    }
    Ok(ttl)
}
