//! Sorting an error from the fred client into an [`Error`] variant: ACL
//! denials, wrong types, transient server states, redirections not followed.

use std::time::Duration;

use super::Error;

impl Error {
    /// Sorts an error from the fred client into the variant a caller can act
    /// on; `timeout` is the command timeout in force (fred's own timer and
    /// the crate's both report [`Error::Timeout`]).
    pub(crate) fn from_redis(key: &str, source: fred::error::Error, timeout: Duration) -> Self {
        use fred::error::ErrorKind;
        let key = key.to_owned();
        let details = source.details();
        if details.starts_with("WRONGTYPE") || details.contains(" WRONGTYPE ") {
            return Error::WrongType { key, source };
        }
        if let Some(command) = denied(details) {
            return Error::NoPermission {
                key,
                command,
                source,
            };
        }
        match source.kind() {
            ErrorKind::IO
            | ErrorKind::Canceled
            | ErrorKind::Routing
            | ErrorKind::Cluster
            | ErrorKind::Backpressure
            | ErrorKind::Sentinel => Error::Unavailable { key, source },
            ErrorKind::Timeout => Error::Timeout {
                key,
                after: timeout,
            },
            ErrorKind::Config | ErrorKind::Url => Error::Config {
                message: format!("the Redis client is misconfigured ({})", source.details()),
                source: Some(source),
            },
            // LOADING and TRYAGAIN are transient server states; the other two
            // are the client's, for a command sent while it reconnects.
            _ if details.starts_with("LOADING")
                || details.starts_with("TRYAGAIN")
                || details.starts_with("Failed to route command")
                || details.starts_with("Too many failed write attempts") =>
            {
                Error::Unavailable { key, source }
            }
            _ => Error::Redis { key, source },
        }
    }
}

/// What an ACL denial (`NOPERM`, or Redis 7.0's "can't run this command"
/// inside a script, which the crate's scripts follow with `[COMMAND]`)
/// refused; `None` for any other error.
fn denied(details: &str) -> Option<String> {
    // Redis: "NOPERM ..." at the top level, "... can't run this command ..."
    // in a script; Valkey: "NOPERM User u has no permissions ..." and "ERR
    // ACL failure in script: User u has no permissions ...".
    let acl = details.starts_with("NOPERM")
        || details.contains("can't run this command")
        || details.contains("ACL failure")
        || details.contains("has no permissions to");
    if !acl {
        return None;
    }
    let named = |open: char, close: char| {
        let start = details.find(open)? + 1;
        let len = details[start..].find(close)?;
        Some(details[start..start + len].to_uppercase())
    };
    let in_script = details.contains("script");
    let what = if let Some(command) = named('[', ']').filter(|_| in_script) {
        Some(format!("`{command}` (in the lock script)"))
    } else if details.contains("permissions to run") {
        named('\'', '\'').map(|c| format!("`{c}`"))
    } else if details.contains("channel") {
        Some("commands on a channel outside its channel patterns (&...)".to_owned())
    } else if details.contains("key") {
        Some("commands on a key outside its key patterns (~...)".to_owned())
    } else {
        None
    };
    Some(what.unwrap_or_else(|| "a command".to_owned()))
}

/// Whether a command fred made with one attempt (its own `SSUBSCRIBE`)
/// failed because the node redirected it (`MOVED`): fred counts the write
/// to the node it was redirected to as another attempt, and answers this
/// instead of making it. A redirected command did not run, and after
/// `MOVED` the client's slot table is up to date. (The other paths that
/// would write a command again, after a reconnect, check the attempts left
/// first and answer the connection's error.)
pub(crate) fn redirect_not_followed(error: &fred::error::Error) -> bool {
    error
        .details()
        .starts_with("Too many failed write attempts")
}

#[cfg(test)]
mod tests {
    use super::denied;

    #[test]
    fn acl_denials_name_what_was_denied() {
        assert_eq!(
            denied("NOPERM this user has no permissions to run the 'script|load' command"),
            Some("`SCRIPT|LOAD`".to_owned())
        );
        assert_eq!(
            denied(
                "ERR The user executing the script can't run this command or subcommand [INCR] \
                 script: 538c, on @user_script:22."
            ),
            Some("`INCR` (in the lock script)".to_owned())
        );
        assert_eq!(
            denied(
                "NOPERM this user has no permissions to access one of the keys used as arguments"
            ),
            Some("commands on a key outside its key patterns (~...)".to_owned())
        );
        assert_eq!(
            denied("NOPERM this user has no permissions to access one of the channels used as arguments"),
            Some("commands on a channel outside its channel patterns (&...)".to_owned())
        );
        assert_eq!(
            denied(
                "ERR ACL failure in script: User u has no permissions to run the 'get' command \
                 [GET] script: 538c, on @user_script:22."
            ),
            Some("`GET` (in the lock script)".to_owned())
        );
        assert_eq!(
            denied("NOPERM User u has no permissions to run the 'evalsha' command"),
            Some("`EVALSHA`".to_owned())
        );
        assert_eq!(denied("WRONGTYPE Operation against a key"), None);
        assert_eq!(denied("ERR unknown command"), None);
    }
}
