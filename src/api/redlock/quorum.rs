//! Counting the servers' answers: when a majority decides, and the error
//! when none can. Pure, so every case is a unit test.

use std::time::Duration;

use crate::policy::error::lost::LostReason;
use crate::policy::error::Error;
use crate::protocol::scripts::Compared;

/// The majority of `n` servers: `n / 2 + 1`.
pub(crate) fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// What one server answered an acquisition attempt.
#[derive(Debug)]
pub(crate) enum Took {
    /// The key now holds this attempt's token.
    Taken,
    /// Another holder's token is there (with its remaining lease, when known).
    Busy(Option<Duration>),
    /// The server could not be asked (down, paused, too slow, refused).
    Failed(Error),
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptEnd {
    /// A majority holds this attempt's token.
    Won,
    /// More than a minority is held by others: this attempt cannot win.
    Busy,
}

/// The answers of one acquisition attempt so far.
#[derive(Debug)]
pub(crate) struct AcquireTally {
    n: usize,
    quorum: usize,
    pub(crate) taken: usize,
    pub(crate) busy: usize,
    pub(crate) failed: usize,
    /// The shortest remaining lease among the servers held by others.
    pub(crate) holder_ttl: Option<Duration>,
    pub(crate) last_error: Option<Error>,
}

impl AcquireTally {
    pub(crate) fn new(n: usize) -> Self {
        AcquireTally {
            n,
            quorum: quorum(n),
            taken: 0,
            busy: 0,
            failed: 0,
            holder_ttl: None,
            last_error: None,
        }
    }

    /// Counts one answer; `Some` once the attempt is decided. A failure is
    /// decided only by waiting for every answer (see [`Self::unavailable`]),
    /// unless other holders already have more than a minority.
    pub(crate) fn record(&mut self, answer: Took) -> Option<AttemptEnd> {
        match answer {
            Took::Taken => self.taken += 1,
            Took::Busy(pttl) => {
                self.busy += 1;
                if let Some(pttl) = pttl {
                    self.holder_ttl = Some(self.holder_ttl.map_or(pttl, |t| t.min(pttl)));
                }
            }
            Took::Failed(e) => {
                self.failed += 1;
                self.last_error = Some(e);
            }
        }
        if self.taken >= self.quorum {
            Some(AttemptEnd::Won)
        } else if self.busy > self.n - self.quorum {
            Some(AttemptEnd::Busy)
        } else {
            None
        }
    }

    /// The transient error of an attempt that every server answered without
    /// a decision: too many could not be asked.
    pub(crate) fn unavailable(&self, key: &str) -> Error {
        let detail = format!(
            "Redlock on {n} servers needs {q}: {taken} taken, {busy} held by another holder, \
             {failed} could not be asked",
            n = self.n,
            q = self.quorum,
            taken = self.taken,
            busy = self.busy,
            failed = self.failed,
        );
        no_majority(
            key,
            self.taken + self.busy,
            self.n,
            self.quorum,
            &detail,
            self.last_error.as_ref(),
        )
    }
}

/// How a token-checked command (extend, renew, release) went on all servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckedEnd {
    /// A majority held the token (and did the command).
    Held,
    /// More than a minority no longer holds it: the lock is lost.
    Gone(LostReason),
}

/// The answers to a token-checked command so far.
#[derive(Debug)]
pub(crate) struct CheckedTally {
    n: usize,
    quorum: usize,
    pub(crate) held: usize,
    pub(crate) missing: usize,
    pub(crate) replaced: usize,
    pub(crate) failed: usize,
    pub(crate) last_error: Option<Error>,
}

impl CheckedTally {
    pub(crate) fn new(n: usize) -> Self {
        CheckedTally {
            n,
            quorum: quorum(n),
            held: 0,
            missing: 0,
            replaced: 0,
            failed: 0,
            last_error: None,
        }
    }

    /// Counts one answer; `Some` once the outcome is decided.
    pub(crate) fn record(&mut self, answer: Result<Compared, Error>) -> Option<CheckedEnd> {
        match answer {
            Ok(Compared::Held) => self.held += 1,
            Ok(Compared::Missing) => self.missing += 1,
            Ok(Compared::Replaced) => self.replaced += 1,
            Err(e) => {
                self.failed += 1;
                self.last_error = Some(e);
            }
        }
        self.decided()
    }

    /// The outcome, if the answers so far decide it.
    pub(crate) fn decided(&self) -> Option<CheckedEnd> {
        if self.held >= self.quorum {
            Some(CheckedEnd::Held)
        } else if self.missing + self.replaced > self.n - self.quorum {
            // Another holder's token on some servers says more than "gone".
            let reason = if self.replaced > 0 && self.replaced >= self.missing {
                LostReason::Replaced
            } else {
                LostReason::Missing
            };
            Some(CheckedEnd::Gone(reason))
        } else {
            None
        }
    }

    /// The transient error when too few servers answered to decide.
    pub(crate) fn unavailable(&self, key: &str, what: &str) -> Error {
        let detail = format!(
            "{what} on {n} servers needs {q}: {held} held the token, {gone} no longer did, \
             {failed} could not be asked",
            n = self.n,
            q = self.quorum,
            held = self.held,
            gone = self.missing + self.replaced,
            failed = self.failed,
        );
        let answered = self.held + self.missing + self.replaced;
        no_majority(
            key,
            answered,
            self.n,
            self.quorum,
            &detail,
            self.last_error.as_ref(),
        )
    }
}

/// [`Error::Unavailable`] naming how many servers answered out of how many.
pub(crate) fn no_majority(
    key: &str,
    answered: usize,
    n: usize,
    quorum: usize,
    detail: &str,
    last: Option<&Error>,
) -> Error {
    let last = last.map_or(String::new(), |e| format!("; last server error: {e}"));
    Error::Unavailable {
        key: key.to_owned(),
        source: fred::error::Error::new(
            fred::error::ErrorKind::IO,
            format!(
                "only {answered} of {n} Redis servers answered, and a majority of {quorum} is \
                 needed ({detail}){last}"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> Took {
        Took::Failed(Error::Timeout {
            key: "k".into(),
            after: Duration::from_millis(1),
        })
    }

    #[test]
    fn majorities() {
        assert_eq!([1, 2, 3, 4, 5, 6, 7].map(quorum), [1, 2, 2, 3, 3, 4, 4]);
    }

    #[test]
    fn three_taken_of_five_wins_at_once() {
        let mut t = AcquireTally::new(5);
        assert_eq!(t.record(Took::Taken), None);
        assert_eq!(t.record(down()), None);
        assert_eq!(t.record(Took::Taken), None);
        assert_eq!(t.record(Took::Taken), Some(AttemptEnd::Won));
    }

    #[test]
    fn three_busy_of_five_is_busy_and_three_down_is_undecided() {
        let mut t = AcquireTally::new(5);
        t.record(Took::Taken);
        t.record(Took::Busy(Some(Duration::from_millis(40))));
        t.record(Took::Busy(Some(Duration::from_millis(20))));
        assert_eq!(t.record(Took::Busy(None)), Some(AttemptEnd::Busy));
        assert_eq!(t.holder_ttl, Some(Duration::from_millis(20)));

        let mut t = AcquireTally::new(5);
        for answer in [Took::Taken, Took::Taken, down(), down(), down()] {
            assert_eq!(t.record(answer), None);
        }
        let e = t.unavailable("k");
        assert!(e.is_transient());
        let text = e.to_string();
        assert!(
            text.contains("only 2 of 5 Redis servers answered"),
            "{text}"
        );
        assert!(text.contains("majority of 3"), "{text}");
    }

    #[test]
    fn checked_commands_need_a_majority_either_way() {
        let mut t = CheckedTally::new(5);
        assert_eq!(t.record(Ok(Compared::Held)), None);
        assert_eq!(t.record(Ok(Compared::Missing)), None);
        assert_eq!(t.record(Ok(Compared::Held)), None);
        assert_eq!(t.record(Ok(Compared::Held)), Some(CheckedEnd::Held));

        let mut t = CheckedTally::new(5);
        t.record(Ok(Compared::Missing));
        t.record(Ok(Compared::Replaced));
        assert_eq!(
            t.record(Ok(Compared::Replaced)),
            Some(CheckedEnd::Gone(LostReason::Replaced))
        );

        let mut t = CheckedTally::new(3);
        t.record(Ok(Compared::Held));
        t.record(Err(Error::Timeout {
            key: "k".into(),
            after: Duration::from_millis(1),
        }));
        assert_eq!(t.record(Ok(Compared::Missing)), None);
        assert!(t
            .unavailable("k", "renewal")
            .to_string()
            .contains("only 2 of 3"));
    }
}
