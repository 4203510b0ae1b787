//! How long a daemon waits before its next broker connection attempt; one implementation for
//! the listener's publisher and the worker's consumer, each with its own [`Policy`]. The wait
//! doubles from `min` to `max` and starts over only after a session that lasted, so a broker
//! that takes connections and drops them at once is not hammered.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The numbers of one daemon's reconnect pacing.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// First wait, and the wait after a stable session.
    pub min: Duration,
    /// Longest wait, however many attempts failed.
    pub max: Duration,
    /// Up to this much is added at random to each wait (zero: none), so that many clients
    /// cut off together do not come back together.
    pub jitter: Duration,
    /// A session that lasted this long was a good one: the next wait is `min` again. Zero
    /// starts over after any session that was established.
    pub stable_after: Duration,
}

/// One daemon's reconnect pacing: [`Backoff::wait`] between attempts, and
/// [`Backoff::session_began`] / [`Backoff::session_ended`] around each session.
#[derive(Debug)]
pub struct Backoff {
    policy: Policy,
    /// The next wait, before jitter.
    delay: Duration,
    /// When the current session began, if one did.
    began: Option<Instant>,
}

impl Backoff {
    /// Pacing by `policy`, starting from its `min`.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            delay: policy.min,
            began: None,
        }
    }

    /// The next wait before jitter (the `retry_in` of a log line).
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// A session begins now.
    pub fn session_began(&mut self) {
        self.began = Some(Instant::now());
    }

    /// The session begun last has ended: if it lasted [`Policy::stable_after`], the next wait
    /// is [`Policy::min`] again; one lost soon after it began (a broker struggling) keeps
    /// backing off instead of churning.
    pub fn session_ended(&mut self) {
        if let Some(began) = self.began.take()
            && began.elapsed() >= self.policy.stable_after
        {
            self.delay = self.policy.min;
        }
    }

    /// Waits the next delay plus jitter, or until `shutdown`, and doubles the delay (up to
    /// [`Policy::max`]) for the wait after. Returns false when shutdown came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let pause = self.delay + self.jitter();
        let waited = tokio::select! {
            () = tokio::time::sleep(pause) => true,
            () = shutdown.cancelled() => false,
        };
        self.delay = (self.delay * 2).min(self.policy.max);
        waited
    }

    fn jitter(&self) -> Duration {
        let range = u64::try_from(self.policy.jitter.as_millis()).unwrap_or(u64::MAX);
        if range == 0 {
            return Duration::ZERO;
        }
        // The first bytes of a v4 UUID are random; no other random source is needed here.
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let random = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        Duration::from_millis(u64::from(random) % range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Policy = Policy {
        min: Duration::from_millis(100),
        max: Duration::from_secs(1),
        jitter: Duration::ZERO,
        stable_after: Duration::from_secs(30),
    };

    /// How long one [`Backoff::wait`] took, on the paused clock.
    async fn timed_wait(backoff: &mut Backoff) -> Duration {
        let started = Instant::now();
        assert!(backoff.wait(&CancellationToken::new()).await);
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn waits_double_from_min_and_stop_at_max() {
        let mut backoff = Backoff::new(PLAIN);
        let mut waits = Vec::new();
        for _ in 0..7 {
            waits.push(timed_wait(&mut backoff).await.as_millis());
        }
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_session_that_lasted_starts_the_waits_over() {
        let mut backoff = Backoff::new(PLAIN);
        for _ in 0..4 {
            timed_wait(&mut backoff).await;
        }
        assert_eq!(backoff.delay(), Duration::from_millis(1000));

        // Lost 29 s in: the broker is struggling, keep backing off.
        backoff.session_began();
        tokio::time::advance(Duration::from_secs(29)).await;
        backoff.session_ended();
        assert_eq!(timed_wait(&mut backoff).await, Duration::from_millis(1000));

        // Lost after 30 s: a good session, the next attempt comes soon.
        backoff.session_began();
        tokio::time::advance(Duration::from_secs(30)).await;
        backoff.session_ended();
        assert_eq!(timed_wait(&mut backoff).await, Duration::from_millis(100));
        assert_eq!(timed_wait(&mut backoff).await, Duration::from_millis(200));

        // An attempt that never became a session changes nothing.
        backoff.session_ended();
        assert_eq!(backoff.delay(), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn with_stable_after_zero_any_session_starts_the_waits_over() {
        let mut backoff = Backoff::new(Policy {
            stable_after: Duration::ZERO,
            ..PLAIN
        });
        for _ in 0..3 {
            timed_wait(&mut backoff).await;
        }
        backoff.session_began();
        backoff.session_ended();
        assert_eq!(timed_wait(&mut backoff).await, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_adds_less_than_its_bound() {
        let mut backoff = Backoff::new(Policy {
            min: Duration::from_millis(100),
            max: Duration::from_millis(100),
            jitter: Duration::from_millis(100),
            stable_after: Duration::ZERO,
        });
        let waits: Vec<Duration> = {
            let mut waits = Vec::new();
            for _ in 0..200 {
                waits.push(timed_wait(&mut backoff).await);
            }
            waits
        };
        assert!(
            waits
                .iter()
                .all(|w| (Duration::from_millis(100)..Duration::from_millis(200)).contains(w)),
            "{waits:?}"
        );
        // Random, not a constant: 200 draws from 100 values are not all alike.
        assert!(waits.iter().any(|w| *w != waits[0]), "{waits:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_wait_at_once() {
        let mut backoff = Backoff::new(Policy {
            min: Duration::from_secs(10),
            ..PLAIN
        });
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let cancel = {
            let shutdown = shutdown.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                shutdown.cancel();
            }
        };
        let (waited, ()) = tokio::join!(backoff.wait(&shutdown), cancel);
        assert!(!waited);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
