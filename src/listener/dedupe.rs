//! Remembering event ids: a bounded LRU cache keyed by (provider, event id). Concurrent
//! requests with one id are coalesced into one handoff; an id is remembered only after its
//! handoff succeeded, so a provider's retry after a failure goes through.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use moka::policy::EvictionPolicy;
use sha2::{Digest, Sha256};

/// What became of an event at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// This request handed the event off.
    Accepted,
    /// The id was handed off before (or by a concurrent request with the same id).
    Duplicate,
}

/// The id cache. Keys are SHA-256 digests, so memory per id does not grow with id length.
#[derive(Clone)]
pub struct Dedupe {
    cache: Cache<[u8; 32], ()>,
}

impl Dedupe {
    /// A cache of at most `capacity` ids, each forgotten after `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            // The default TinyLFU policy refuses new keys when full; retries come soon
            // after the original, so the newest ids are the ones that must be kept.
            .eviction_policy(EvictionPolicy::lru())
            .build();
        Self { cache }
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
        let entry = self
            .cache
            .entry(key(provider, event_id))
            .or_try_insert_with(handoff)
            .await?;
        Ok(if entry.is_fresh() {
            Admission::Accepted
        } else {
            Admission::Duplicate
        })
    }

    /// Ids currently remembered (approximate until pending maintenance runs).
    pub fn len(&self) -> u64 {
        self.cache.entry_count()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs the cache's pending maintenance (evictions); tests use it to see exact counts.
    pub async fn settle(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// Whether an id is remembered.
    pub fn contains(&self, provider: &str, event_id: &str) -> bool {
        self.cache.contains_key(&key(provider, event_id))
    }
}

fn key(provider: &str, event_id: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(provider.as_bytes());
    // A separator that cannot occur in provider names keeps ("a","bc") apart from ("ab","c").
    hasher.update([0u8]);
    hasher.update(event_id.as_bytes());
    hasher.finalize().into()
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
            if i % 500 == 0 {
                dedupe.settle().await;
            }
        }
        for i in 0..200 {
            dedupe
                .admit("p", &format!("new-{i}"), async { Ok::<(), ()>(()) })
                .await
                .unwrap();
        }
        dedupe.settle().await;
        let kept = (0..200)
            .filter(|i| dedupe.contains("p", &format!("new-{i}")))
            .count();
        assert_eq!(kept, 200, "LRU must keep every one of the newest ids");
        assert!(dedupe.len() <= 1_000);
    }
}
