//! Order between batches in flight. The consumer keeps taking batches while earlier ones wait
//! (on a paced action, a slow target), so one subject's events could be in two batches at
//! once; a batch enters the gate as it arrives, with the keys it touches (its subjects and
//! events), and is let through once every earlier batch holding one of those keys is over.
//! Batches that share nothing go side by side; the order of one subject's events is the
//! order their batches arrived in.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

/// The keys of the batches in flight, each with the last batch to enter holding it. A key is
/// a hash: two keys that collide only make a batch wait when it need not.
#[derive(Default)]
pub struct Gate {
    holders: Mutex<HashMap<u64, CancellationToken>>,
}

/// A batch's place at the gate: [`Ticket::ready`] waits for its turn; dropped, it lets the
/// batches behind it through.
pub struct Ticket<'g> {
    gate: &'g Gate,
    keys: Vec<u64>,
    /// The batches before it that hold one of its keys.
    before: Vec<CancellationToken>,
    /// Cancelled when this batch is over.
    over: CancellationToken,
}

impl Gate {
    /// Enters a batch touching `keys`, behind every batch that entered before it holding one
    /// of them. Call in the order the batches arrived.
    pub fn enter(&self, keys: Vec<u64>) -> Ticket<'_> {
        let over = CancellationToken::new();
        let mut before = Vec::new();
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        for key in &keys {
            if let Some(previous) = holders.insert(*key, over.clone())
                && !previous.is_cancelled()
            {
                before.push(previous);
            }
        }
        Ticket {
            gate: self,
            keys,
            before,
            over,
        }
    }

    /// How many keys batches in flight hold (for tests: none once all are over).
    pub fn held(&self) -> usize {
        self.holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Ticket<'_> {
    /// Waits until every earlier batch sharing a key with this one is over.
    pub async fn ready(&mut self) {
        join_all(self.before.iter().map(CancellationToken::cancelled)).await;
        self.before.clear();
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.over.cancel();
        let mut holders = self
            .gate
            .holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for key in &self.keys {
            // Still this batch's (no later batch took the key): free it.
            if holders
                .get(key)
                .is_some_and(CancellationToken::is_cancelled)
            {
                holders.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keys(k: &[&str]) -> Vec<u64> {
        k.iter().map(|s| s.bytes().map(u64::from).sum()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_only_for_earlier_batches_sharing_a_key() {
        let gate = Gate::default();
        let first = gate.enter(keys(&["a", "b"]));
        let mut shares = gate.enter(keys(&["b", "c"]));
        let mut apart = gate.enter(keys(&["d"]));
        // Nothing in common with the first: through at once.
        tokio::time::timeout(Duration::from_secs(1), apart.ready())
            .await
            .expect("a batch sharing nothing goes side by side");
        // Shares "b": held while the first is in flight.
        assert!(
            tokio::time::timeout(Duration::from_secs(1), shares.ready())
                .await
                .is_err()
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), shares.ready())
            .await
            .expect("through once the first is over");
        drop(shares);
        drop(apart);
        assert_eq!(gate.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_third_batch_waits_for_the_second_not_only_the_first() {
        let gate = Gate::default();
        let first = gate.enter(keys(&["s"]));
        let second = gate.enter(keys(&["s"]));
        let mut third = gate.enter(keys(&["s"]));
        drop(first);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), third.ready())
                .await
                .is_err(),
            "the second is still in flight"
        );
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), third.ready())
            .await
            .expect("through");
        // The third still holds "s" until it is over.
        assert_eq!(gate.held(), 1);
        drop(third);
        assert_eq!(gate.held(), 0);
    }
}
