//! How long to wait between acquisition attempts.

use std::time::Duration;

/// How long to wait for a busy lock, and how often to try again meanwhile.
///
/// The strategy sets a wall-clock budget when the call starts: the sum of
/// its delays ([`max_total_wait`](RetryStrategy::max_total_wait)). The call
/// returns within that budget plus one command timeout, however contended
/// the lock is. Meanwhile a waiter is woken by release messages (see
/// [`Builder::notifications`](crate::Builder::notifications)) and otherwise
/// tries again after the strategy's next delay; it never sleeps past the
/// moment the current holder's lease can end (each failed attempt returns
/// the holder's remaining TTL). A holder with a short, renewed TTL makes the
/// waiter try more often, not give up sooner.
///
/// ```
/// use distributed_mutex::RetryStrategy;
/// use std::time::Duration;
///
/// // The default: every 250 ms, 20 attempts in all (about 5 s).
/// let s = RetryStrategy::linear(Duration::from_millis(250), 20);
/// assert_eq!(s.max_attempts(), 20);
/// assert_eq!(s.delay_after(1), Some(Duration::from_millis(250)));
/// assert_eq!(s.delay_after(20), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryStrategy {
    kind: Kind,
    max_attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    Linear(Duration),
    Exponential { min: Duration, max: Duration },
}

impl RetryStrategy {
    /// One attempt, no waiting (what [`try_lock`](crate::DistributedMutex::try_lock) uses).
    pub const fn none() -> Self {
        RetryStrategy {
            kind: Kind::None,
            max_attempts: 1,
        }
    }

    /// Up to `max_attempts` attempts in all, `interval` apart (a constant
    /// interval, as in bsm/redislock's `LinearBackoff`).
    ///
    /// `max_attempts` counts the first attempt: `linear(250 ms, 20)` polls 20
    /// times and waits at most 19 × 250 ms in all. A strategy with zero
    /// attempts is refused with [`Error::Config`](crate::Error::Config) when
    /// used. Any interval, up to `Duration::MAX`, is accepted; a budget too
    /// large to represent means "no deadline".
    pub const fn linear(interval: Duration, max_attempts: u32) -> Self {
        RetryStrategy {
            kind: Kind::Linear(interval),
            max_attempts,
        }
    }

    /// Up to `max_attempts` attempts in all, with delays that double from
    /// `min` up to `max`, each drawn at random from its upper half (jitter), so
    /// that waiters that failed together do not retry together.
    ///
    /// The n-th delay lies in `[d/2, d]` with `d = min(max, min × 2^(n-1))`,
    /// and never below `min`.
    pub const fn exponential(min: Duration, max: Duration, max_attempts: u32) -> Self {
        RetryStrategy {
            kind: Kind::Exponential { min, max },
            max_attempts,
        }
    }

    /// How many polls the strategy plans, the first attempt included (with
    /// release messages or a short holder TTL, a call may make more
    /// attempts within the same budget).
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay to wait after the `attempt`-th failed attempt (counting from
    /// 1), or `None` when no attempts are left.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        Some(match self.kind {
            Kind::None => Duration::ZERO,
            Kind::Linear(interval) => interval,
            Kind::Exponential { min, max } => {
                let max = max.max(min);
                let ceiling = 1u32
                    .checked_shl(attempt.saturating_sub(1))
                    .and_then(|factor| min.checked_mul(factor))
                    .map_or(max, |d| d.min(max));
                let floor = (ceiling / 2).max(min);
                if ceiling <= floor {
                    ceiling
                } else {
                    // In u128: a span of `Duration::MAX` has more nanoseconds
                    // than a u64 holds. The draw is below 2^64 either way.
                    let span = (ceiling - floor).as_nanos();
                    let draw = u128::from(fastrand::u64(..)) % (span + 1);
                    floor + Duration::from_nanos(draw as u64)
                }
            }
        })
    }

    /// The strategy's budget: the sum of its delays (for `exponential`, of
    /// their upper bounds), saturating at `Duration::MAX`.
    pub fn max_total_wait(&self) -> Duration {
        let mut total = Duration::ZERO;
        let mut attempt = 1;
        while attempt < self.max_attempts {
            let ceiling = match self.kind {
                Kind::None => Duration::ZERO,
                Kind::Linear(interval) => interval,
                Kind::Exponential { min, max } => 1u32
                    .checked_shl(attempt - 1)
                    .and_then(|factor| min.checked_mul(factor))
                    .map_or(max.max(min), |d| d.min(max.max(min))),
            };
            let reached_max = match self.kind {
                Kind::Exponential { min, max } => ceiling >= max.max(min),
                _ => true,
            };
            if reached_max {
                // Every later delay is the same: multiply instead of looping.
                let left = self.max_attempts - attempt;
                return total.saturating_add(ceiling.saturating_mul(left));
            }
            total = total.saturating_add(ceiling);
            attempt += 1;
        }
        total
    }

    /// How long to wait before the `poll`-th poll when no release message
    /// came (counting from 1): the strategy's delay, the last one repeated
    /// once its planned attempts are used up (the budget, not the count,
    /// ends a call).
    pub(crate) fn poll_interval(&self, poll: u32) -> Duration {
        let last = self.max_attempts.saturating_sub(1).max(1);
        self.delay_after(poll.clamp(1, last))
            .or_else(|| self.delay_after(0))
            .unwrap_or(Duration::ZERO)
    }

    /// Checks that the strategy can make at least one attempt.
    pub(crate) fn validate(&self) -> Result<(), crate::policy::error::Error> {
        if self.max_attempts == 0 {
            return Err(crate::policy::error::Error::Config {
                message:
                    "the retry strategy allows zero attempts; use RetryStrategy::none() for a \
                          single attempt or give max_attempts >= 1"
                        .into(),
                source: None,
            });
        }
        Ok(())
    }
}

impl Default for RetryStrategy {
    /// `linear(250 ms, 20)`: the Go package's behaviour, about 5 s in all.
    fn default() -> Self {
        RetryStrategy::linear(Duration::from_millis(250), 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sequence(s: &RetryStrategy) -> Vec<Duration> {
        (1..).map_while(|n| s.delay_after(n)).collect()
    }

    #[test]
    fn none_makes_one_attempt_and_never_waits() {
        let s = RetryStrategy::none();
        assert_eq!(s.max_attempts(), 1);
        assert_eq!(sequence(&s), Vec::<Duration>::new());
    }

    #[test]
    fn linear_repeats_its_interval_until_attempts_run_out() {
        let s = RetryStrategy::linear(ms(250), 20);
        let seq = sequence(&s);
        assert_eq!(seq.len(), 19, "20 attempts leave 19 waits");
        assert!(seq.iter().all(|d| *d == ms(250)));
        assert_eq!(seq.iter().sum::<Duration>(), ms(4750));
    }

    #[test]
    fn linear_with_one_attempt_never_waits() {
        assert_eq!(sequence(&RetryStrategy::linear(ms(10), 1)), vec![]);
    }

    #[test]
    fn default_is_the_go_packages_250ms_by_20() {
        assert_eq!(RetryStrategy::default(), RetryStrategy::linear(ms(250), 20));
    }

    #[test]
    fn exponential_doubles_within_jitter_bounds_and_caps_at_max() {
        let s = RetryStrategy::exponential(ms(10), ms(640), 12);
        for _ in 0..50 {
            let seq = sequence(&s);
            assert_eq!(seq.len(), 11);
            for (i, d) in seq.iter().enumerate() {
                let ceiling = ms(10 * (1 << i)).min(ms(640));
                let floor = (ceiling / 2).max(ms(10));
                assert!(
                    *d >= floor && *d <= ceiling,
                    "delay {i} = {d:?} outside [{floor:?}, {ceiling:?}]"
                );
            }
        }
    }

    #[test]
    fn exponential_jitter_varies() {
        let s = RetryStrategy::exponential(ms(100), ms(10_000), 10);
        let draws: std::collections::HashSet<_> = (0..32).map(|_| s.delay_after(5)).collect();
        assert!(draws.len() > 1, "32 draws of the 5th delay were all equal");
    }

    #[test]
    fn exponential_survives_huge_attempt_numbers() {
        let s = RetryStrategy::exponential(ms(1), Duration::from_secs(3600), u32::MAX);
        let d = s.delay_after(u32::MAX - 1).unwrap();
        assert!(d >= Duration::from_secs(1800) && d <= Duration::from_secs(3600));
    }

    #[test]
    fn exponential_with_max_below_min_uses_min() {
        let s = RetryStrategy::exponential(ms(50), ms(10), 4);
        assert_eq!(sequence(&s), vec![ms(50); 3]);
    }

    #[test]
    fn max_total_wait_sums_the_delays() {
        assert_eq!(RetryStrategy::none().max_total_wait(), Duration::ZERO);
        assert_eq!(RetryStrategy::default().max_total_wait(), ms(4750));
        assert_eq!(
            RetryStrategy::linear(ms(10), 1).max_total_wait(),
            Duration::ZERO
        );
        // 10 + 20 + 40 + 80 + 80 (capped)
        assert_eq!(
            RetryStrategy::exponential(ms(10), ms(80), 6).max_total_wait(),
            ms(230)
        );
        let huge = RetryStrategy::exponential(ms(1), Duration::from_secs(1), u32::MAX);
        assert!(huge.max_total_wait() > Duration::from_secs(1_000_000));
    }

    #[test]
    fn extreme_values_never_panic() {
        let extremes = [Duration::ZERO, Duration::from_nanos(1), Duration::MAX];
        for &a in &extremes {
            for &b in &extremes {
                for attempts in [0, 1, 2, 64, u32::MAX] {
                    for s in [
                        RetryStrategy::linear(a, attempts),
                        RetryStrategy::exponential(a, b, attempts),
                    ] {
                        let _ = s.max_total_wait();
                        for n in [0, 1, 2, 63, 64, 65, u32::MAX - 1, u32::MAX] {
                            let _ = s.delay_after(n);
                            let _ = s.poll_interval(n);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn poll_interval_repeats_the_last_delay() {
        let s = RetryStrategy::linear(ms(30), 3);
        assert_eq!(s.poll_interval(1), ms(30));
        assert_eq!(s.poll_interval(5), ms(30));
        let s = RetryStrategy::exponential(ms(10), ms(40), 3);
        let d = s.poll_interval(100);
        assert!(d >= ms(10) && d <= ms(20), "{d:?}");
    }

    #[test]
    fn zero_attempts_is_refused() {
        assert!(RetryStrategy::linear(ms(1), 0).validate().is_err());
        assert!(RetryStrategy::exponential(ms(1), ms(2), 0)
            .validate()
            .is_err());
        assert!(RetryStrategy::none().validate().is_ok());
    }
}
