//! When an acquisition tries again, and when it gives up.
//!
//! A pure function of the clock, the retry strategy and what the last attempt
//! saw, so that every case is a unit test. The strategy is a wall-clock
//! budget set when the call starts: the sum of its delays (bounded further by
//! `acquire(..).timeout(..)`). Its delays say how long to wait for a release
//! message before polling again. A wait never outlasts the holder's
//! remaining TTL (the lock may be free then), nor the deadline. A wake-up by
//! a release message does not advance the strategy's delays; a short TTL does
//! not shorten the budget. So a call gives up at its deadline, whatever the
//! contention, after one last attempt: it returns within the budget plus one
//! command timeout.

use std::time::{Duration, Instant};

use crate::policy::retry::RetryStrategy;

/// What to do after an attempt that did not get the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Wait this long for a release message, then try again.
    Wait(Duration),
    /// The deadline has passed: give up.
    GiveUp,
}

/// The waiting plan of one acquisition.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    /// `None`: no deadline (the budget does not fit in an `Instant`).
    deadline: Option<Instant>,
    strategy: RetryStrategy,
    /// Waits that ended without a release message: they advance the
    /// strategy's delays.
    polls: u32,
}

impl Schedule {
    /// The plan of a call that starts at `started`.
    pub(crate) fn new(
        started: Instant,
        strategy: RetryStrategy,
        timeout: Option<Duration>,
    ) -> Self {
        let budget = strategy.max_total_wait();
        let budget = timeout.map_or(budget, |t| t.min(budget));
        Schedule {
            deadline: started.checked_add(budget),
            strategy,
            polls: 0,
        }
    }

    /// How long is left until the deadline.
    pub(crate) fn left(&self, now: Instant) -> Duration {
        self.deadline
            .map_or(Duration::MAX, |d| d.saturating_duration_since(now))
    }

    /// Whether the plan allows any waiting at all (`false` for one attempt).
    pub(crate) fn may_wait(&self, now: Instant) -> bool {
        !self.left(now).is_zero()
    }

    /// After a failed attempt at `now`: wait, or give up. `holder_ttl` is the
    /// holder's remaining lease when the attempt saw one.
    pub(crate) fn next(&self, now: Instant, holder_ttl: Option<Duration>) -> Next {
        let left = self.left(now);
        if left.is_zero() {
            return Next::GiveUp;
        }
        let mut wait = self.strategy.poll_interval(self.polls + 1).min(left);
        if let Some(ttl) = holder_ttl {
            // The lease may end then: try just after.
            wait = wait.min(ttl.saturating_add(Duration::from_millis(1)));
        }
        Next::Wait(wait)
    }

    /// Records a wait that ended, woken by a release message or not.
    pub(crate) fn waited(&mut self, by_message: bool) {
        if !by_message {
            self.polls = self.polls.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn linear() -> RetryStrategy {
        RetryStrategy::linear(ms(250), 20)
    }

    #[test]
    fn a_first_failed_attempt_waits_the_first_delay() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, linear(), None);
        assert_eq!(s.next(t0, None), Next::Wait(ms(250)));
    }

    #[test]
    fn one_attempt_strategies_give_up_at_once() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, RetryStrategy::none(), None);
        assert!(!s.may_wait(t0));
        assert_eq!(s.next(t0, Some(ms(5))), Next::GiveUp);
        let s = Schedule::new(t0, linear(), Some(Duration::ZERO));
        assert_eq!(s.next(t0, None), Next::GiveUp);
    }

    #[test]
    fn the_holders_ttl_caps_a_wait_without_using_up_the_budget() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, linear(), None);
        // A renewed holder with a 100 ms lease: many short waits...
        let mut now = t0;
        for _ in 0..40 {
            assert_eq!(s.next(now, Some(ms(100))), Next::Wait(ms(101)));
            s.waited(false);
            now += ms(101);
        }
        // ...and the budget (4.75 s) is still not over after 4.04 s.
        assert!(matches!(s.next(now, Some(ms(100))), Next::Wait(_)));
        assert_eq!(s.next(t0 + ms(4750), Some(ms(100))), Next::GiveUp);
    }

    #[test]
    fn a_message_wake_up_does_not_advance_the_delays() {
        let t0 = Instant::now();
        let strategy = RetryStrategy::exponential(ms(10), ms(1000), 10);
        let mut s = Schedule::new(t0, strategy, None);
        for _ in 0..100 {
            s.waited(true);
        }
        let Next::Wait(d) = s.next(t0, None) else {
            panic!("gave up")
        };
        assert!(d <= ms(10), "{d:?}");
        s.waited(false);
        s.waited(false);
        let Next::Wait(d) = s.next(t0, None) else {
            panic!("gave up")
        };
        assert!(d >= ms(20) && d <= ms(40), "{d:?}");
    }

    #[test]
    fn the_budget_ends_the_call_whatever_the_contention() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, linear(), None);
        // Woken by messages all along (never advancing the delays), the call
        // still ends at the budget.
        assert_eq!(s.next(t0 + ms(4749), None), Next::Wait(ms(1)));
        assert_eq!(s.next(t0 + ms(4750), None), Next::GiveUp);
        assert_eq!(s.next(t0 + ms(9999), None), Next::GiveUp);
    }

    #[test]
    fn a_timeout_shorter_than_the_strategy_is_the_deadline() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, linear(), Some(ms(300)));
        assert_eq!(s.next(t0 + ms(100), None), Next::Wait(ms(200)));
        assert_eq!(s.next(t0 + ms(300), None), Next::GiveUp);
    }

    #[test]
    fn waits_never_pass_the_deadline() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, RetryStrategy::linear(ms(400), 2), None);
        assert_eq!(s.next(t0 + ms(350), None), Next::Wait(ms(50)));
    }

    #[test]
    fn extreme_budgets_have_no_deadline_and_never_panic() {
        let t0 = Instant::now();
        for strategy in [
            RetryStrategy::linear(Duration::MAX, u32::MAX),
            RetryStrategy::exponential(Duration::MAX, Duration::MAX, u32::MAX),
            RetryStrategy::exponential(Duration::from_nanos(1), Duration::MAX, u32::MAX),
        ] {
            for timeout in [None, Some(Duration::MAX)] {
                let mut s = Schedule::new(t0, strategy, timeout);
                assert_eq!(s.left(t0), Duration::MAX);
                assert!(matches!(s.next(t0, Some(Duration::MAX)), Next::Wait(_)));
                for _ in 0..70 {
                    s.waited(false);
                    assert!(matches!(s.next(t0, None), Next::Wait(_)));
                }
            }
        }
    }

    #[test]
    fn an_uncertain_attempt_changes_nothing_in_the_plan() {
        // A failed attempt without an answer has no holder TTL: the plain delay.
        let t0 = Instant::now();
        let s = Schedule::new(t0, linear(), None);
        assert_eq!(s.next(t0 + ms(10), None), Next::Wait(ms(250)));
    }
}
