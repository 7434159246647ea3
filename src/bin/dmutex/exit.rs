//! Exit codes: the child's own on a normal run, flock(1)/sysexits(3)
//! practice for dmutex's own outcomes, and which error gets which.

use distributed_mutex::Error;

/// Success: the child's own 0, `status`: the key is held, `release`: released.
pub const OK: u8 = 0;
/// `status`: the key is not held; `release`: nothing was released.
pub const NOT_HELD: u8 = 1;
/// EX_USAGE: bad arguments, a malformed URL, an invalid key or TTL.
pub const USAGE: u8 = 64;
/// EX_DATAERR: the key holds a value that is not a lock (WRONGTYPE).
pub const DATAERR: u8 = 65;
/// EX_UNAVAILABLE: Redis is unreachable, timed out, or refused the command.
pub const UNAVAILABLE: u8 = 69;
/// EX_SOFTWARE: an internal error of dmutex.
pub const SOFTWARE: u8 = 70;
/// EX_OSERR: the command could not be started for another reason than
/// "not found" or "not executable" (fork failed, too many processes, ...).
pub const OSERR: u8 = 71;
/// EX_TEMPFAIL: the lock is busy (`--no-wait`, or the `--wait` ran out).
pub const BUSY: u8 = 75;
/// EX_NOPERM: the Redis user may not do this (ACL), or its credentials were
/// refused.
pub const NOPERM: u8 = 77;
/// The lock was lost while the command ran (or was found lost when
/// releasing it). The first code after sysexits' range (64-78): it claims
/// none of its meanings, is below the shell's 126-165, and is not a code
/// programs commonly use.
pub const LOST: u8 = 79;
/// The command was found but could not be executed (as shells do).
pub const CANNOT_EXECUTE: u8 = 126;
/// The command was not found (as shells do).
pub const NOT_FOUND: u8 = 127;

/// The table `dmutex --help` and `dmutex run --help` end with.
pub const TABLE: &str = "\
Exit codes:
  (child's)  run: the command's own exit code
  128+N      run: the command was killed by signal N (e.g. 143 for SIGTERM)
  0          status: the key is held; release: released
  1          status: the key is not held; release: nothing released (key gone,
             or it holds another token)
  64         usage error: bad option or duration, missing command, empty key,
             malformed URL
  65         the key holds a value that is not a lock
  69         Redis is unreachable (or timed out, or refused the command)
  70         internal error
  71         run: the command could not be started (fork failed)
  75         run: the lock is busy (--no-wait, or the --wait ran out)
  77         the Redis user may not do this (ACL), or its password was refused
  79         run: the lock was lost while the command ran (or found lost when
             released); the command got SIGTERM (see --on-lost)
  126        run: the command is not executable
  127        run: the command was not found";

/// A way dmutex ends other than with the child's code: the code, and the
/// line to print on stderr.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// A status line (busy, lost), which `--quiet` hides; errors are always
    /// printed.
    pub status_line: bool,
}

impl Failure {
    pub fn error(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            status_line: false,
        }
    }

    pub fn status(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            status_line: true,
        }
    }

    /// A library error, with what dmutex was doing.
    pub fn from_lib(context: &str, e: &Error) -> Self {
        let code = code_of(e);
        if code == BUSY {
            return Failure::status(code, format!("{context}: {e}"));
        }
        Failure::error(code, format!("{context}: {e}"))
    }

    /// Prints the message (unless `--quiet` hides it) and gives the code.
    pub fn report(self, quiet: bool) -> u8 {
        if !(quiet && self.status_line) {
            if self.status_line {
                eprintln!("dmutex: {}", self.message);
            } else {
                eprintln!("dmutex: error: {}", self.message);
            }
        }
        self.code
    }
}

/// The exit code for a library error.
pub fn code_of(e: &Error) -> u8 {
    match e {
        Error::NotObtained { .. } => BUSY,
        Error::Unavailable { .. } | Error::Timeout { .. } | Error::Redis { .. } => UNAVAILABLE,
        Error::NoPermission { .. } => NOPERM,
        Error::WrongType { .. } => DATAERR,
        Error::InvalidKey { .. } | Error::InvalidKeySet { .. } | Error::InvalidTtl { .. } => USAGE,
        Error::Config {
            source: Some(source),
            ..
        } if *source.kind() == fred::error::ErrorKind::Auth => NOPERM,
        Error::Config { .. } => USAGE,
        Error::NotHeld { .. } | Error::Lost { .. } => LOST,
        _ => SOFTWARE,
    }
}

/// The code for a child's exit status: its own code, or 128 + the signal
/// that killed it, as shells report it.
pub fn of_child(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        // Exit codes are 0-255 on Unix; `code()` is the low byte already.
        return u8::try_from(code & 0xff).unwrap_or(SOFTWARE);
    }
    match status.signal() {
        Some(signal) => u8::try_from(128 + signal).unwrap_or(SOFTWARE),
        None => SOFTWARE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;
    use std::time::Duration;

    #[test]
    fn child_codes_pass_through_and_signals_add_128() {
        assert_eq!(of_child(ExitStatus::from_raw(0)), 0);
        assert_eq!(of_child(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(of_child(ExitStatus::from_raw(255 << 8)), 255);
        assert_eq!(of_child(ExitStatus::from_raw(15)), 143);
        assert_eq!(of_child(ExitStatus::from_raw(9)), 137);
    }

    #[test]
    fn errors_map_to_sysexits() {
        let busy = Error::NotObtained {
            key: "k".into(),
            attempts: 1,
            waited: Duration::ZERO,
        };
        assert_eq!(code_of(&busy), BUSY);
        let timeout = Error::Timeout {
            key: "k".into(),
            after: Duration::from_secs(2),
        };
        assert_eq!(code_of(&timeout), UNAVAILABLE);
        let url = Error::Config {
            message: "malformed".into(),
            source: None,
        };
        assert_eq!(code_of(&url), USAGE);
        let auth = Error::Config {
            message: "refused".into(),
            source: Some(fred::error::Error::new(
                fred::error::ErrorKind::Auth,
                "WRONGPASS",
            )),
        };
        assert_eq!(code_of(&auth), NOPERM);
    }

    #[test]
    fn own_codes_are_distinct() {
        let mut codes = [
            NOT_HELD,
            USAGE,
            DATAERR,
            UNAVAILABLE,
            SOFTWARE,
            OSERR,
            BUSY,
            NOPERM,
            LOST,
            CANNOT_EXECUTE,
            NOT_FOUND,
        ];
        codes.sort_unstable();
        assert!(codes.windows(2).all(|w| w[0] != w[1]));
        for code in codes {
            assert!(
                TABLE.contains(&format!("  {code} ")),
                "{code} is in the table"
            );
        }
    }
}
