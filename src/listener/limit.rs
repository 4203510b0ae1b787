//! Per-provider request limits at the door (`rate_limit = { requests, per, burst }`): a
//! provider that misbehaves (a replay storm, a bug resending a day of events) is answered
//! `429` with `Retry-After` before its bodies are read, so it can fill neither the broker nor
//! the worker's backlog, and the other providers go on. A token bucket (GCRA, the `governor`
//! crate): `requests` every `per` on average, up to `burst` at once.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use serde::Deserialize;

/// `rate_limit` as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    requests: u32,
    #[serde(with = "humantime_serde")]
    per: Duration,
    burst: Option<u32>,
}

/// A provider's limit, checked at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per `per`, on average.
    pub requests: NonZeroU32,
    /// The period.
    pub per: Duration,
    /// Requests allowed at once (default: `requests`).
    pub burst: NonZeroU32,
}

impl TryFrom<RawRateLimit> for RateLimit {
    type Error = String;

    fn try_from(raw: RawRateLimit) -> Result<Self, String> {
        let requests = NonZeroU32::new(raw.requests)
            .ok_or_else(|| "requests must be at least 1".to_owned())?;
        if raw.per.is_zero() {
            return Err("per must be more than 0s".to_owned());
        }
        let burst = match raw.burst {
            None => requests,
            Some(b) => NonZeroU32::new(b).ok_or_else(|| "burst must be at least 1".to_owned())?,
        };
        let limit = Self {
            requests,
            per: raw.per,
            burst,
        };
        // A token more often than every nanosecond is no limit the clock can keep.
        limit
            .quota()
            .ok_or_else(|| "requests per period is more than one a nanosecond".to_owned())?;
        Ok(limit)
    }
}

impl RateLimit {
    fn quota(&self) -> Option<Quota> {
        let interval = self.per / self.requests.get();
        Quota::with_period(interval).map(|q| q.allow_burst(self.burst))
    }

    /// The limit in words, for `--check`.
    pub fn describe(&self) -> String {
        format!(
            "{} per {} (burst {})",
            self.requests,
            humantime::format_duration(self.per),
            self.burst
        )
    }
}

/// One provider's bucket.
pub struct Limiter(DefaultDirectRateLimiter);

impl Limiter {
    /// A full bucket for `limit`; `None` for a limit [`RateLimit::try_from`] would refuse.
    pub fn new(limit: &RateLimit) -> Option<Self> {
        Some(Self(governor::RateLimiter::direct(limit.quota()?)))
    }

    /// Takes a token, or says in how many whole seconds (at least 1) one is free.
    pub fn check(&self) -> Result<(), u64> {
        self.0.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            // Retry-After is whole seconds: rounded up, so a client that waits that long
            // finds a token.
            (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, per: Duration, burst: Option<u32>) -> Result<RateLimit, String> {
        RateLimit::try_from(RawRateLimit {
            requests,
            per,
            burst,
        })
    }

    #[test]
    fn a_burst_passes_then_the_rest_wait_whole_seconds() {
        let l = Limiter::new(&limit(1, Duration::from_secs(10), Some(3)).unwrap()).unwrap();
        for _ in 0..3 {
            assert_eq!(l.check(), Ok(()));
        }
        let wait = l.check().unwrap_err();
        assert!((1..=10).contains(&wait), "{wait}");
    }

    #[test]
    fn nonsense_limits_are_refused() {
        assert!(
            limit(0, Duration::from_secs(1), None)
                .unwrap_err()
                .contains("requests")
        );
        assert!(limit(5, Duration::ZERO, None).unwrap_err().contains("per"));
        assert!(
            limit(5, Duration::from_secs(1), Some(0))
                .unwrap_err()
                .contains("burst")
        );
        assert!(limit(u32::MAX, Duration::from_nanos(1), None).is_err());
        assert_eq!(
            limit(1000, Duration::from_secs(1), Some(2000))
                .unwrap()
                .describe(),
            "1000 per 1s (burst 2000)"
        );
    }
}
