//! Retries of ECS calls: exponential backoff with full jitter
//! (`sleep = random(0, min(max, base × 2^n))`, as in the AWS Architecture Blog's
//! "Exponential Backoff And Jitter"), so workers that were throttled together do not come
//! back together.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How ECS calls are retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Calls in all, the first included (default 6).
    pub attempts: u32,
    /// The first backoff ceiling (default 100 ms); it doubles per retry.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// The largest backoff ceiling (default 5 s).
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 6,
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl RetryConfig {
    /// The ceiling of the backoff before retry `n` (0-based): `min(max, base × 2^n)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A full-jitter backoff before retry `n`: uniform in `[0, ceiling(n)]`.
    pub fn backoff(&self, n: u32) -> Duration {
        use rand::Rng;
        let c = self.ceiling(n);
        let nanos = u64::try_from(c.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn ceilings_double_up_to_max_and_jitter_stays_below() {
        let r = RetryConfig::default();
        assert_eq!(r.ceiling(0), Duration::from_millis(100));
        assert_eq!(r.ceiling(1), Duration::from_millis(200));
        assert_eq!(r.ceiling(5), Duration::from_millis(3200));
        assert_eq!(r.ceiling(6), Duration::from_secs(5));
        assert_eq!(r.ceiling(200), Duration::from_secs(5));
        let samples: Vec<_> = (0..200).map(|_| r.backoff(3)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(800)));
        // Full jitter: spread over the whole range, not bunched at the ceiling.
        assert!(samples.iter().any(|d| *d < Duration::from_millis(200)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(600)));
    }
}
