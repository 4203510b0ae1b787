//! Pacing one action in one worker: `rate = { max, per }` starts at most `max` firings per
//! `per`, one every `per / max` rounded up (governor's GCRA bucket without a burst, so that no
//! window of length `per` holds more than `max`), `concurrency = N` keeps at most N open at
//! once. A firing over its pace waits for its turn; it is neither dropped nor failed. The
//! wait holds that firing, the actions after it in its rule and its subject's later events;
//! the event's other rules, the batch's other subjects and later batches without that subject
//! go on ([`crate::worker::batch`], [`crate::worker::gate`]). Its delivery is acked once it
//! has gone. Retries inside one firing are not paced again.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

use super::Compiler;

/// `rate = { max, per }` as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateTable {
    max: u32,
    #[serde(with = "humantime_serde")]
    per: Duration,
}

/// Most firings one action may have open at once.
const MAX_CONCURRENCY: u32 = 10_000;

/// The longest gap between two starts a rate may ask for.
const MAX_GAP: Duration = Duration::from_secs(24 * 3600);

/// An action's pace; unpaced by default.
#[derive(Default)]
pub struct Pace {
    rate: Option<(RateTable, DefaultDirectRateLimiter)>,
    slots: Option<(u32, Arc<Semaphore>)>,
    /// Waiters ask the bucket one at a time, first come first served: otherwise every one of
    /// them wakes at each free start and an arbitrary one wins.
    queue: Mutex<()>,
}

impl std::fmt::Debug for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe().unwrap_or_else(|| "unpaced".to_owned()))
    }
}

/// A turn to send: held until the send is over, it keeps a `concurrency` slot taken.
pub struct Turn {
    _slot: Option<OwnedSemaphorePermit>,
    /// How long the action waited for it.
    pub waited: Duration,
}

impl Pace {
    /// Reads `rate` and `concurrency` of the table `c` compiles; `None` after reporting why
    /// either is refused.
    pub(super) fn compile(
        c: &mut Compiler<'_, '_>,
        rate: Option<::config::Value>,
        concurrency: Option<::config::Value>,
    ) -> Option<Self> {
        let mut pace = Self::default();
        let mut ok = true;
        if let Some(value) = rate {
            match value.try_deserialize::<RateTable>() {
                Ok(table) => match quota(table) {
                    Some(quota) => pace.rate = Some((table, RateLimiter::direct(quota))),
                    None => {
                        c.problem(
                            "rate",
                            format!(
                                "max must be at least 1, per longer than 0, and per / max at most {}",
                                humantime::format_duration(MAX_GAP)
                            ),
                        );
                        ok = false;
                    }
                },
                Err(err) => {
                    c.problem(
                        "rate",
                        format!("must be {{ max = N, per = \"1s\" }}: {err}"),
                    );
                    ok = false;
                }
            }
        }
        if let Some(value) = concurrency {
            match value.try_deserialize::<u32>() {
                Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => {
                    pace.slots = Some((n, Arc::new(Semaphore::new(n as usize))));
                }
                _ => {
                    c.problem(
                        "concurrency",
                        format!("must be a whole number from 1 to {MAX_CONCURRENCY}"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(pace)
    }

    /// The time between two starts under `rate`, if it has one.
    pub fn gap(&self) -> Option<Duration> {
        let (table, _) = self.rate.as_ref()?;
        let gap = table.per.as_nanos().div_ceil(u128::from(table.max.max(1)));
        Some(Duration::from_nanos(u64::try_from(gap).unwrap_or(u64::MAX)))
    }

    /// Whether anything limits the action.
    pub fn is_paced(&self) -> bool {
        self.rate.is_some() || self.slots.is_some()
    }

    /// `20 per 1s, 4 at once`, for `--check`; `None` when unpaced.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some((table, _)) = &self.rate {
            parts.push(format!(
                "{} per {}",
                table.max,
                humantime::format_duration(table.per)
            ));
        }
        if let Some((n, _)) = &self.slots {
            parts.push(format!("{n} at once"));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// Waits for a free slot, then for the rate to allow one more start.
    ///
    /// The slot first: a send that holds one is about to start, so the bucket is asked only
    /// by those that can go at once.
    pub async fn turn(&self) -> Turn {
        let started = tokio::time::Instant::now();
        let slot = match &self.slots {
            // The semaphore is never closed, so acquiring fails only if it were.
            Some((_, slots)) => slots.clone().acquire_owned().await.ok(),
            None => None,
        };
        if let Some((_, limiter)) = &self.rate {
            let _first = self.queue.lock().await;
            limiter.until_ready().await;
        }
        Turn {
            _slot: slot,
            waited: started.elapsed(),
        }
    }
}

/// `max` per `per`, spread evenly: one every `per / max` (rounded up, so a window of `per`
/// never holds `max + 1`), even after a quiet spell (a burst of `max` then would put nearly
/// `2 × max` into the following `per`); `None` for a zero `max` or `per`, or a gap over a day
/// (governor's clock panics on durations of centuries).
fn quota(table: RateTable) -> Option<Quota> {
    let max = NonZeroU32::new(table.max)?;
    let gap = table.per.as_nanos().div_ceil(u128::from(max.get()));
    let gap = Duration::from_nanos(u64::try_from(gap).ok()?);
    if gap.is_zero() || gap > MAX_GAP {
        return None;
    }
    Quota::with_period(gap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paced(max: u32, per: Duration, slots: Option<u32>) -> Pace {
        Pace {
            rate: quota(RateTable { max, per })
                .map(|q| (RateTable { max, per }, RateLimiter::direct(q))),
            slots: slots.map(|n| (n, Arc::new(Semaphore::new(n as usize)))),
            queue: Mutex::new(()),
        }
    }

    #[test]
    fn a_zero_rate_is_refused_and_a_pace_says_what_it_is() {
        assert!(
            quota(RateTable {
                max: 0,
                per: Duration::from_secs(1)
            })
            .is_none()
        );
        assert!(
            quota(RateTable {
                max: 5,
                per: Duration::ZERO
            })
            .is_none()
        );
        // A gap of centuries: refused, not a panic in governor's clock. (A gap under a
        // nanosecond rounds up to one: slower than asked, never faster.)
        let per = Duration::from_secs(1);
        let centuries = Duration::from_secs(600 * 365 * 24 * 3600);
        assert!(
            quota(RateTable {
                max: 1,
                per: centuries
            })
            .is_none()
        );
        assert!(quota(RateTable { max: 3, per }).is_some());
        let pace = paced(20, Duration::from_secs(1), Some(4));
        assert_eq!(pace.describe().as_deref(), Some("20 per 1s, 4 at once"));
        assert!(Pace::default().describe().is_none());
        assert!(!Pace::default().is_paced());
    }

    #[tokio::test]
    async fn turns_beyond_the_slots_wait_until_one_is_given_back() {
        let pace = paced(1000, Duration::from_secs(1), Some(2));
        let first = pace.turn().await;
        let _second = pace.turn().await;
        let third = tokio::time::timeout(Duration::from_millis(50), pace.turn()).await;
        assert!(third.is_err(), "a third turn while two are out");
        drop(first);
        let third = tokio::time::timeout(Duration::from_millis(50), pace.turn()).await;
        assert!(third.is_ok(), "a slot given back is taken");
    }

    #[tokio::test]
    async fn a_rate_spreads_starts_evenly_even_after_a_quiet_spell() {
        let pace = paced(10, Duration::from_millis(200), None);
        let started = std::time::Instant::now();
        // One at once, then one every 20 ms: 19 gaps.
        for _ in 0..20 {
            pace.turn().await;
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(370) && took < Duration::from_secs(2),
            "{took:?} for 20 turns at 10 per 200ms"
        );
    }
}
