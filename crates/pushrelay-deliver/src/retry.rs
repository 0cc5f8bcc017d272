//! When to try a push again: exponential backoff with full jitter, honouring the
//! provider's `Retry-After`, within a budget of attempts.

use std::time::Duration;

/// The retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay scale of the first retry.
    pub base: Duration,
    /// Largest computed delay.
    pub cap: Duration,
    /// Attempts in all (the first send included); after them, dead letters.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(300),
            max_attempts: 8,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempts + 1`, or `None` when the budget is spent.
    /// `random` is a uniformly random `u64` (full jitter: a delay in `[0, min(cap,
    /// base·2^(attempts-1))]`); a provider's `Retry-After` is a floor.
    pub fn next_delay(
        &self,
        attempts: u32,
        retry_after: Option<Duration>,
        random: u64,
    ) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let exponent = attempts.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exponent).min(self.cap);
        let ceiling_ms = ceiling.as_millis() as u64;
        let jittered = Duration::from_millis(if ceiling_ms == 0 {
            0
        } else {
            random % (ceiling_ms + 1)
        });
        Some(match retry_after {
            Some(floor) => jittered.max(floor),
            None => jittered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let policy = RetryPolicy::default();
        // The largest random value gives the ceiling of each step.
        let ceiling = |attempts| {
            policy
                .next_delay(attempts, None, u64::MAX - (u64::MAX % 1_000_000))
                .map(|d| d.as_millis())
        };
        assert!(ceiling(1).is_some_and(|ms| ms <= 500));
        assert!(
            policy
                .next_delay(4, None, 3_999)
                .is_some_and(|d| d <= Duration::from_secs(4))
        );
        for attempts in 1..8 {
            let d = policy
                .next_delay(attempts, None, 123_456_789)
                .expect("within budget");
            assert!(d <= policy.cap);
        }
        assert_eq!(policy.next_delay(0, None, 0), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let policy = RetryPolicy::default();
        let d = policy
            .next_delay(1, Some(Duration::from_secs(60)), 0)
            .expect("delay");
        assert_eq!(d, Duration::from_secs(60));
    }

    #[test]
    fn budget_ends_retries() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(policy.next_delay(2, None, 1).is_some());
        assert_eq!(policy.next_delay(3, None, 1), None);
    }
}
