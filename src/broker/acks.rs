//! Which deliveries the consumer acks, and how, when the batches it has in hand finish out of
//! order. A batch that finishes with no earlier batch in hand is acked with one multiple-ack
//! (with the finished batches before it). One that finishes while an earlier batch is still
//! in hand waits a moment for it, since one multiple-ack for both costs far less than an ack
//! per delivery; if the earlier batch is still not done after [`ACK_DELAY`] (a paced action,
//! a slow target), the waiting batch is acked delivery by delivery, so that its deliveries no
//! longer count against `prefetch`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

/// How long a finished batch waits for the earlier ones before it is acked on its own.
pub const ACK_DELAY: Duration = Duration::from_millis(100);

/// A batch as the ack book keeps it: its deliveries' ackers (`A`), in delivery-tag order.
struct Finished<A> {
    ackers: Vec<A>,
    at: Instant,
}

/// An ack to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Ack<A> {
    /// The delivery's acker.
    pub acker: A,
    /// Whether it also acks every earlier delivery not acked yet.
    pub multiple: bool,
}

/// The batches in hand and those finished but not acked yet, by their first delivery tag.
pub struct Book<A> {
    in_hand: BTreeSet<u64>,
    waiting: BTreeMap<u64, Finished<A>>,
}

impl<A> Default for Book<A> {
    fn default() -> Self {
        Self {
            in_hand: BTreeSet::new(),
            waiting: BTreeMap::new(),
        }
    }
}

impl<A> Book<A> {
    /// A batch whose first delivery tag is `first` was taken.
    pub fn taken(&mut self, first: u64) {
        self.in_hand.insert(first);
    }

    /// The batch taken at `first` was handled at `now`: the acks that can go out now.
    pub fn finished(&mut self, first: u64, ackers: Vec<A>, now: Instant) -> Vec<Ack<A>> {
        self.in_hand.remove(&first);
        self.waiting.insert(first, Finished { ackers, at: now });
        // Everything finished before the oldest batch still in hand goes in one
        // multiple-ack: batches are consecutive runs of tags, so no tag in hand is below.
        let ready: Vec<u64> = match self.in_hand.first() {
            Some(&oldest) => self.waiting.range(..oldest).map(|(&f, _)| f).collect(),
            None => self.waiting.keys().copied().collect(),
        };
        let mut last = None;
        for f in ready {
            if let Some(finished) = self.waiting.remove(&f) {
                last = finished.ackers.into_iter().last().or(last);
            }
        }
        last.map(|acker| Ack {
            acker,
            multiple: true,
        })
        .into_iter()
        .collect()
    }

    /// The finished batches that have waited [`ACK_DELAY`] by `now` for an earlier one:
    /// acked delivery by delivery.
    pub fn overdue(&mut self, now: Instant) -> Vec<Ack<A>> {
        let due: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, f)| now.duration_since(f.at) >= ACK_DELAY)
            .map(|(&first, _)| first)
            .collect();
        due.into_iter()
            .filter_map(|first| self.waiting.remove(&first))
            .flat_map(|f| f.ackers)
            .map(|acker| Ack {
                acker,
                multiple: false,
            })
            .collect()
    }

    /// When the next finished batch becomes overdue, if one waits.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.values().map(|f| f.at + ACK_DELAY).min()
    }

    /// Whether a batch is in hand or finished and not acked.
    pub fn is_empty(&self) -> bool {
        self.in_hand.is_empty() && self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn multiple(tag: u64) -> Ack<u64> {
        Ack {
            acker: tag,
            multiple: true,
        }
    }

    fn single(tag: u64) -> Ack<u64> {
        Ack {
            acker: tag,
            multiple: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_finishing_in_order_are_acked_with_one_multiple_ack_each() {
        let mut book = Book::default();
        book.taken(1);
        book.taken(4);
        let now = Instant::now();
        assert_eq!(book.finished(1, vec![1, 2, 3], now), [multiple(3)]);
        assert_eq!(book.finished(4, vec![4, 5], now), [multiple(5)]);
        assert!(book.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_batch_waits_for_an_earlier_one_and_both_go_in_one_ack() {
        let mut book = Book::default();
        book.taken(1);
        book.taken(4);
        book.taken(6);
        let now = Instant::now();
        // The middle one first: the first is still in hand, so nothing may be acked.
        assert_eq!(book.finished(4, vec![4, 5], now), []);
        assert_eq!(book.next_due(), Some(now + ACK_DELAY));
        assert_eq!(book.overdue(now + ACK_DELAY / 2), []);
        // The first finishes in time: one multiple-ack through the middle one's last.
        assert_eq!(book.finished(1, vec![1, 2, 3], now), [multiple(5)]);
        assert_eq!(book.next_due(), None);
        assert_eq!(book.finished(6, vec![6], now), [multiple(6)]);
        assert!(book.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_batch_kept_waiting_too_long_is_acked_delivery_by_delivery() {
        let mut book = Book::default();
        book.taken(1);
        book.taken(4);
        let now = Instant::now();
        assert_eq!(book.finished(4, vec![4, 5], now), []);
        assert_eq!(book.overdue(now + ACK_DELAY), [single(4), single(5)]);
        // The slow first batch: its multiple-ack covers only what is left (its own).
        assert_eq!(
            book.finished(1, vec![1, 2, 3], now + ACK_DELAY * 50),
            [multiple(3)]
        );
        assert!(book.is_empty());
    }
}
