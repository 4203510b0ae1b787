//! Remembering event ids: a bounded set of 128-bit digests of (provider, event id), kept in
//! arrival order and forgotten oldest first, at capacity or after the ttl. Concurrent
//! requests with one id are coalesced into one handoff by a moka cache of the ids being
//! handed off right now; an id is remembered only after its handoff succeeded, so a
//! provider's retry after a failure goes through.
//!
//! Why not every id in moka: its bookkeeping costs about 330 bytes per entry (1 000 000 ids:
//! 333 MiB); a digest in a hash set plus its place in the arrival queue costs 45 to 90
//! ([`BYTES_PER_ENTRY`]), and the newest ids, the ones a
//! provider's retry needs, are the ones oldest-first keeps.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::future::Cache;
use sha2::{Digest, Sha256};
// tokio's clock, not std's: under `tokio::time::pause()` tests move it, and the ttl with it.
use tokio::time::Instant;

/// Bytes of memory one remembered id costs, at most: a 16-byte digest in a hash set between
/// 7/16 and 7/8 full (19 to 39 bytes) plus a 24-byte entry in an arrival queue between half
/// and wholly full (24 to 48). `--check` prints what `dedupe.capacity` bounds with it.
pub const BYTES_PER_ENTRY: u64 = 90;

/// What became of an event at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// This request handed the event off.
    Accepted,
    /// The id was handed off before (or by a concurrent request with the same id).
    Duplicate,
}

/// The id cache; clones share it.
#[derive(Clone)]
pub struct Dedupe {
    inner: Arc<Inner>,
}

struct Inner {
    seen: Mutex<Seen>,
    /// Ids whose handoff is running, so that concurrent requests wait for it; each entry is
    /// removed as soon as its id is in `seen`.
    in_flight: Cache<u128, Handed>,
}

/// How the handoff of an in-flight id ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handed {
    /// It ran and succeeded.
    Now,
    /// It was not needed: the id was remembered by then.
    Before,
}

/// Remembered digests, in arrival order, with when each arrived (ms since `epoch`).
struct Seen {
    ids: HashSet<u128>,
    /// (digest's high half, low half, arrival): 24 bytes, where a `u128` would pad to 32.
    order: VecDeque<(u64, u64, u64)>,
    capacity: usize,
    ttl_ms: u64,
    epoch: Instant,
}

impl Dedupe {
    /// A cache of at most `capacity` ids, each forgotten after `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        let seen = Seen {
            ids: HashSet::new(),
            order: VecDeque::new(),
            capacity,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
        };
        // No capacity bound: it holds only the handoffs running right now (each entry leaves
        // as its handoff ends), and a bound would bring moka's admission policy, which may
        // refuse to keep an entry, and with it the coalescing of its concurrent requests.
        let in_flight = Cache::builder()
            // A safety net only. moka keeps its own clock, which paused tokio time does not
            // move: this ttl cannot be driven by tests, and nothing here depends on it.
            .time_to_live(ttl.min(Duration::from_secs(3600)))
            .build();
        Self {
            inner: Arc::new(Inner {
                seen: Mutex::new(seen),
                in_flight,
            }),
        }
    }

    /// Runs `handoff` unless the id is known or already being handed off; concurrent
    /// callers with the same id wait for the one running handoff and share its outcome.
    ///
    /// # Errors
    /// The handoff's error (shared by every caller that waited on it); nothing is remembered.
    pub async fn admit<F, E>(
        &self,
        provider: &str,
        event_id: &str,
        handoff: F,
    ) -> Result<Admission, Arc<E>>
    where
        F: Future<Output = Result<(), E>>,
        E: Send + Sync + 'static,
    {
        let key = key(provider, event_id);
        if self.inner.remembers(key) {
            return Ok(Admission::Duplicate);
        }
        let inner = &self.inner;
        let entry = inner
            .in_flight
            .entry(key)
            .or_try_insert_with(async move {
                // A handoff of this id that ended after the check above has remembered it
                // before leaving `in_flight`: look again before publishing a second copy.
                if inner.remembers(key) {
                    return Ok(Handed::Before);
                }
                handoff.await?;
                inner.remember(key);
                Ok(Handed::Now)
            })
            .await?;
        if entry.is_fresh() {
            // The id is in `seen` now, which answers every later request.
            inner.in_flight.invalidate(&key).await;
        }
        Ok(if entry.is_fresh() && *entry.value() == Handed::Now {
            Admission::Accepted
        } else {
            Admission::Duplicate
        })
    }

    /// Ids currently remembered.
    pub fn len(&self) -> u64 {
        self.inner
            .seen
            .lock()
            .map_or(0, |seen| seen.ids.len() as u64)
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an id is remembered.
    pub fn contains(&self, provider: &str, event_id: &str) -> bool {
        self.inner.remembers(key(provider, event_id))
    }
}

impl Inner {
    fn remembers(&self, key: u128) -> bool {
        // A poisoned lock only means a panic elsewhere mid-update; the set is still a set.
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.expire();
        seen.ids.contains(&key)
    }

    fn remember(&self, key: u128) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.expire();
        if seen.ids.insert(key) {
            let now = seen.now_ms();
            seen.order.push_back(((key >> 64) as u64, key as u64, now));
            while seen.order.len() > seen.capacity {
                seen.forget_oldest();
            }
        }
    }
}

impl Seen {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Forgets the ids older than the ttl; they are at the front.
    fn expire(&mut self) {
        let now = self.now_ms();
        while self
            .order
            .front()
            .is_some_and(|&(_, _, at)| now.saturating_sub(at) >= self.ttl_ms)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((high, low, _)) = self.order.pop_front() {
            self.ids
                .remove(&((u128::from(high) << 64) | u128::from(low)));
        }
    }
}

/// The first 128 bits of SHA-256(provider, 0, event id): collisions are out of reach
/// (a birthday bound near 2^64 ids), and the size is fixed whatever the id's length.
fn key(provider: &str, event_id: &str) -> u128 {
    let mut hasher = Sha256::new();
    hasher.update(provider.as_bytes());
    // A separator that cannot occur in provider names keeps ("a","bc") apart from ("ab","c").
    hasher.update([0u8]);
    hasher.update(event_id.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_requests_share_one_handoff() {
        let dedupe = Dedupe::new(100, Duration::from_secs(60));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (dedupe, runs) = (dedupe.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                dedupe
                    .admit("p", "evt", async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<(), String>(())
                    })
                    .await
            }));
        }
        let mut accepted = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() == Admission::Accepted {
                accepted += 1;
            }
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(accepted, 1);
    }

    #[tokio::test]
    async fn a_failed_handoff_is_forgotten_so_the_retry_goes_through() {
        let dedupe = Dedupe::new(100, Duration::from_secs(60));
        let failed = dedupe
            .admit("p", "evt", async { Err::<(), _>("broker down") })
            .await;
        assert_eq!(*failed.unwrap_err(), "broker down");
        assert!(!dedupe.contains("p", "evt"));
        let retried = dedupe.admit("p", "evt", async { Ok::<(), &str>(()) }).await;
        assert_eq!(retried.unwrap(), Admission::Accepted);
        let again = dedupe.admit("p", "evt", async { Ok::<(), &str>(()) }).await;
        assert_eq!(again.unwrap(), Admission::Duplicate);
        // The same id under another provider is another event.
        let other = dedupe.admit("q", "evt", async { Ok::<(), &str>(()) }).await;
        assert_eq!(other.unwrap(), Admission::Accepted);
    }

    #[tokio::test]
    async fn at_capacity_the_newest_ids_are_kept() {
        let dedupe = Dedupe::new(1_000, Duration::from_secs(3600));
        for i in 0..5_000 {
            dedupe
                .admit("p", &format!("old-{i}"), async { Ok::<(), ()>(()) })
                .await
                .unwrap();
        }
        for i in 0..200 {
            dedupe
                .admit("p", &format!("new-{i}"), async { Ok::<(), ()>(()) })
                .await
                .unwrap();
        }
        let kept = (0..200)
            .filter(|i| dedupe.contains("p", &format!("new-{i}")))
            .count();
        assert_eq!(kept, 200, "every one of the newest ids must be kept");
        assert_eq!(dedupe.len(), 1_000);
        assert!(!dedupe.contains("p", "old-3999"), "the oldest go first");
        assert!(dedupe.contains("p", "old-4999"));
    }

    #[tokio::test(start_paused = true)]
    async fn ids_are_forgotten_after_the_ttl() {
        let dedupe = Dedupe::new(100, Duration::from_millis(50));
        let ok = || async { Ok::<(), ()>(()) };
        assert_eq!(
            dedupe.admit("p", "a", ok()).await.unwrap(),
            Admission::Accepted
        );
        assert_eq!(
            dedupe.admit("p", "a", ok()).await.unwrap(),
            Admission::Duplicate
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(!dedupe.contains("p", "a"));
        assert_eq!(
            dedupe.admit("p", "a", ok()).await.unwrap(),
            Admission::Accepted
        );
        assert_eq!(dedupe.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_id_is_remembered_for_exactly_its_ttl() {
        let ttl = Duration::from_secs(24 * 3600);
        let dedupe = Dedupe::new(100, ttl);
        let ok = || async { Ok::<(), ()>(()) };
        assert_eq!(dedupe.admit("p", "a", ok()).await, Ok(Admission::Accepted));
        tokio::time::advance(ttl / 2).await;
        assert_eq!(dedupe.admit("p", "b", ok()).await, Ok(Admission::Accepted));
        // A retry just inside the window is still a duplicate.
        tokio::time::advance(ttl / 2 - Duration::from_millis(1)).await;
        assert_eq!(dedupe.admit("p", "a", ok()).await, Ok(Admission::Duplicate));
        // At the ttl it is forgotten; `b`, half a ttl younger, is not.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!dedupe.contains("p", "a"));
        assert!(dedupe.contains("p", "b"));
        assert_eq!(dedupe.len(), 1);
        // Admitted again, it is remembered afresh from now.
        assert_eq!(dedupe.admit("p", "a", ok()).await, Ok(Admission::Accepted));
        tokio::time::advance(ttl / 2).await;
        assert!(!dedupe.contains("p", "b"));
        assert!(dedupe.contains("p", "a"));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_during_a_slow_handoff_wait_for_it_and_share_its_outcome() {
        let dedupe = Dedupe::new(100, Duration::from_secs(60));
        let runs = Arc::new(AtomicUsize::new(0));
        let slow = |outcome: Result<(), &'static str>| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                // A broker that takes 30 s to confirm.
                tokio::time::sleep(Duration::from_secs(30)).await;
                outcome
            }
        };
        let started = Instant::now();
        let first = tokio::spawn({
            let (dedupe, handoff) = (dedupe.clone(), slow(Ok(())));
            async move { dedupe.admit("p", "evt", handoff).await }
        });
        // A provider retry 10 s into the handoff, while it is still running.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let retry = dedupe.admit("p", "evt", slow(Ok(()))).await;
        assert_eq!(retry, Ok(Admission::Duplicate));
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(30),
            "waited for the first"
        );
        assert_eq!(first.await.unwrap(), Ok(Admission::Accepted));
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        // A failing handoff: whoever waited on it shares the failure, and nothing is
        // remembered, so the next retry runs a handoff of its own.
        let failing = tokio::spawn({
            let (dedupe, handoff) = (dedupe.clone(), slow(Err("broker down")));
            async move { dedupe.admit("p", "evt-2", handoff).await }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        let waited = dedupe.admit("p", "evt-2", slow(Ok(()))).await;
        assert_eq!(waited.map_err(|e| *e), Err("broker down"));
        assert_eq!(failing.await.unwrap().map_err(|e| *e), Err("broker down"));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(
            dedupe.admit("p", "evt-2", slow(Ok(()))).await,
            Ok(Admission::Accepted)
        );
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn many_tasks_with_overlapping_ids_hand_each_id_off_once() {
        let dedupe = Dedupe::new(10_000, Duration::from_secs(60));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for t in 0..8 {
            let (dedupe, runs) = (dedupe.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                let mut accepted = 0;
                for i in 0..500 {
                    // Every task walks the same ids, from different starting points.
                    let id = format!("evt-{}", (i + t * 61) % 500);
                    let runs = runs.clone();
                    let admitted = dedupe
                        .admit("p", &id, async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            Ok::<(), ()>(())
                        })
                        .await
                        .unwrap();
                    accepted += usize::from(admitted == Admission::Accepted);
                }
                accepted
            }));
        }
        let mut accepted = 0;
        for t in tasks {
            accepted += t.await.unwrap();
        }
        assert_eq!(runs.load(Ordering::SeqCst), 500);
        assert_eq!(accepted, 500);
    }
}
