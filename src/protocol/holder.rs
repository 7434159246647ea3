//! Holder labels: who holds a lock, carried in its token.
//!
//! A lock's Redis value is its token. Without a label it is a v4 UUID, as
//! before. With a label (`Builder::holder`, `Acquire::holder`) it is
//!
//! ```text
//! <v4 UUID>:<unix ms>:<label>
//! ```
//!
//! the UUID keeping the token unguessable and unique, the time when the
//! acquisition started (the holder's clock), and the label as given. It is
//! still an opaque string to every other client of the protocol
//! (bsm/redislock, redis-py, the Go package compare tokens only), it costs
//! no extra command, and `dmutex status` / `dmutex ls` read it back with
//! [`Holder::from_token`].

use std::time::{Duration, SystemTime};

use crate::policy::error::Error;

/// The longest holder label accepted, in bytes.
pub const MAX_HOLDER_LEN: usize = 256;

/// The length of a hyphenated UUID.
const UUID_LEN: usize = 36;

/// Checks a holder label: 1 to [`MAX_HOLDER_LEN`] bytes, no control
/// characters (it is shown in terminals).
pub(crate) fn validate(label: &str) -> Result<(), Error> {
    let reason = if label.is_empty() {
        "is empty"
    } else if label.len() > MAX_HOLDER_LEN {
        "is longer than 256 bytes"
    } else if label.chars().any(char::is_control) {
        "has a control character"
    } else {
        return Ok(());
    };
    Err(Error::Config {
        message: format!(
            "the holder label {:?} {reason}; give 1 to {MAX_HOLDER_LEN} bytes without control characters",
            label.chars().take(64).collect::<String>()
        ),
        source: None,
    })
}

/// A new token for an acquisition by `label` (a plain UUID without one).
pub(crate) fn token(label: Option<&str>) -> String {
    let uuid = uuid::Uuid::new_v4();
    match label {
        None => uuid.to_string(),
        Some(label) => {
            let ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            format!("{uuid}:{ms}:{label}")
        }
    }
}

/// Who holds a lock, read back from its token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The label the holder gave.
    pub label: String,
    /// When the holder started to acquire the lock, by its own clock (for a
    /// lock taken after waiting, earlier than when it got it).
    pub since: SystemTime,
}

impl Holder {
    /// The holder a token names, when it has the labelled format
    /// (`<uuid>:<unix ms>:<label>`); `None` for a plain token (no label, or
    /// another client's).
    ///
    /// ```
    /// use distributed_mutex::Holder;
    /// let holder = Holder::from_token("0f8e1c52-6f8e-4b8e-9d4c-2a1b3c4d5e6f:1700000000000:web-3").unwrap();
    /// assert_eq!(holder.label, "web-3");
    /// assert!(Holder::from_token("0f8e1c52-6f8e-4b8e-9d4c-2a1b3c4d5e6f").is_none());
    /// ```
    pub fn from_token(token: &str) -> Option<Holder> {
        let uuid = token.get(..UUID_LEN)?;
        uuid::Uuid::try_parse(uuid).ok()?;
        let rest = token.get(UUID_LEN..)?.strip_prefix(':')?;
        let (ms, label) = rest.split_once(':')?;
        if label.is_empty() || ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let ms: u64 = ms.parse().ok()?;
        Some(Holder {
            label: label.to_owned(),
            since: SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_tokens_round_trip() {
        for label in [
            "web-3",
            "host:1234",
            "a|b",
            "ключ",
            &"x".repeat(MAX_HOLDER_LEN),
        ] {
            validate(label).unwrap();
            let token = token(Some(label));
            let holder = Holder::from_token(&token).unwrap();
            assert_eq!(holder.label, label);
            let age = SystemTime::now().duration_since(holder.since).unwrap();
            assert!(age < Duration::from_secs(5));
        }
        let plain = token(None);
        assert_eq!(plain.len(), UUID_LEN);
        assert_eq!(Holder::from_token(&plain), None);
    }

    #[test]
    fn bad_labels_and_foreign_tokens_are_refused() {
        for label in ["", "a\nb", "\u{7f}", &"x".repeat(MAX_HOLDER_LEN + 1)] {
            assert!(
                matches!(validate(label), Err(Error::Config { .. })),
                "{label:?}"
            );
        }
        let uuid = "0f8e1c52-6f8e-4b8e-9d4c-2a1b3c4d5e6f";
        for token in [
            "",
            "abc",
            "ZZZZZZZZ-6f8e-4b8e-9d4c-2a1b3c4d5e6f:1:x",
            &format!("{uuid}:"),
            &format!("{uuid}:12:"),
            &format!("{uuid}::x"),
            &format!("{uuid}:-1:x"),
            &format!("{uuid}:99999999999999999999999:x"),
            &format!("{uuid}x1:x"),
            "Ab3dE_fG-hIjKlMnOpQrSt",
            "6f8e4b8e9d4c2a1b3c4d5e6f0f8e1c52",
        ] {
            assert_eq!(Holder::from_token(token), None, "{token:?}");
        }
        assert!(Holder::from_token(&format!("{uuid}:0:x")).is_some());
    }
}
