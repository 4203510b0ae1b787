//! Remembering event ids: a bounded set of 128-bit digests of (provider, event id), kept in
//! arrival order and forgotten oldest first, at capacity or after the ttl. Concurrent
//! requests with one id are coalesced into one handoff by a map of the ids being handed off
//! right now, where the others wait for its outcome; an id is remembered only after its
//! handoff succeeded, so a provider's retry after a failure goes through.
//!
//! Why not a cache crate: moka's bookkeeping costs about 330 bytes per entry (1 000 000 ids:
//! 333 MiB); a digest in a hash set plus its place in the arrival queue costs 45 to 90
//! ([`BYTES_PER_ENTRY`]), and the newest ids, the ones a provider's retry needs, are the ones
//! oldest-first keeps. moka also held the in-flight ids until issue 14: its insert-once
//! machinery (waiter map, write log, housekeeping) was 8 % of the listener's CPU under load
//! for a map that holds a few dozen entries at a time.

use std::any::Any;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
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
    /// Ids whose handoff is running, each with the outcome its waiters watch for; an entry
    /// is removed once its id is in `seen` (or its handoff failed).
    in_flight: Mutex<HashMap<u128, watch::Receiver<Option<Outcome>>>>,
}

/// How a handoff ended, as its waiters see it: the error is the caller's own type, erased
/// so that one map serves any (each `admit` caller of one listener uses the same).
type Outcome = Result<(), Arc<dyn Any + Send + Sync>>;

/// What a request does about an id that is not remembered.
enum Next {
    /// Wait for the running handoff of the id.
    Wait(watch::Receiver<Option<Outcome>>),
    /// Run the handoff and tell the waiters.
    Lead(watch::Sender<Option<Outcome>>),
    /// Remembered after all.
    Known,
}

/// Takes an in-flight id out of the map when its handoff ends, however it ends: dropped
/// half-way (the runtime shutting down), its waiters see the sender go and try again.
struct Flight<'a> {
    inner: &'a Inner,
    key: u128,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        lock(&self.inner.in_flight).remove(&self.key);
    }
}

/// A lock whose data stays usable after a panic elsewhere (a set is still a set).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
        Self {
            inner: Arc::new(Inner {
                seen: Mutex::new(seen),
                in_flight: Mutex::new(HashMap::new()),
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
        let inner = &*self.inner;
        let mut handoff = Some(handoff);
        loop {
            if inner.remembers(key) {
                return Ok(Admission::Duplicate);
            }
            // Decided under the lock, acted on after it: a guard must not live across an await.
            let next = {
                let mut flights = lock(&inner.in_flight);
                if let Some(running) = flights.get(&key) {
                    Next::Wait(running.clone())
                } else if inner.remembers(key) {
                    // A handoff of this id that ended since the check above remembered it
                    // before leaving the map: no second copy.
                    Next::Known
                } else {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(key, rx);
                    Next::Lead(tx)
                }
            };
            match next {
                Next::Known => return Ok(Admission::Duplicate),
                Next::Lead(tx) => {
                    // From here the entry leaves the map however this ends.
                    let flight = Flight { inner, key };
                    return match handoff.take() {
                        Some(handoff) => lead(flight, tx, handoff).await,
                        // Only this arm takes it, and it returns: never reached.
                        None => Ok(Admission::Duplicate),
                    };
                }
                Next::Wait(mut running) => {
                    match running.wait_for(Option::is_some).await.as_deref() {
                        Ok(Some(Ok(()))) => return Ok(Admission::Duplicate),
                        Ok(Some(Err(err))) => {
                            if let Ok(err) = Arc::clone(err).downcast::<E>() {
                                return Err(err);
                            }
                        }
                        // The handoff was dropped before it ended: try again.
                        Ok(None) | Err(_) => {}
                    }
                }
            }
        }
    }

    /// Ids currently remembered.
    pub fn len(&self) -> u64 {
        lock(&self.inner.seen).ids.len() as u64
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

/// Runs the one handoff of `key` and tells its waiters how it ended.
async fn lead<F, E>(
    flight: Flight<'_>,
    tx: watch::Sender<Option<Outcome>>,
    handoff: F,
) -> Result<Admission, Arc<E>>
where
    F: Future<Output = Result<(), E>>,
    E: Send + Sync + 'static,
{
    let result = handoff.await.map_err(Arc::new);
    if result.is_ok() {
        // Remembered before the id leaves the map, so no request finds it in neither.
        flight.inner.remember(flight.key);
    }
    drop(flight);
    let outcome: Outcome = match &result {
        Ok(()) => Ok(()),
        Err(err) => Err(Arc::clone(err) as Arc<dyn Any + Send + Sync>),
    };
    // No receiver left is fine: nobody was waiting.
    let _ = tx.send(Some(outcome));
    result.map(|()| Admission::Accepted)
}

impl Inner {
    fn remembers(&self, key: u128) -> bool {
        let mut seen = lock(&self.seen);
        seen.expire();
        seen.ids.contains(&key)
    }

    fn remember(&self, key: u128) {
        let mut seen = lock(&self.seen);
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

    #[tokio::test(start_paused = true)]
    async fn a_handoff_dropped_half_way_hands_its_waiters_the_turn() {
        let dedupe = Dedupe::new(100, Duration::from_secs(60));
        let leader = tokio::spawn({
            let dedupe = dedupe.clone();
            async move {
                dedupe
                    .admit("p", "evt", std::future::pending::<Result<(), ()>>())
                    .await
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let waiter = tokio::spawn({
            let dedupe = dedupe.clone();
            async move { dedupe.admit("p", "evt", async { Ok::<(), ()>(()) }).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "it waits for the running handoff");
        // The runtime drops the leader's task (as at shutdown) before its handoff ends.
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        assert_eq!(waiter.await.unwrap(), Ok(Admission::Accepted));
        assert!(dedupe.contains("p", "evt"));
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
