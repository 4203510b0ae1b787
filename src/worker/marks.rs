//! Done-marks written behind the actions: an action that completed hands its key to one
//! writer thread and goes on; the thread writes whatever has piled up in one transaction.
//! Before a batch commits and acks, [`DoneMarks::flush`] waits until every mark handed in so
//! far is written, so a redelivery after a crash still finds them.
//!
//! Why not a write per action: a transaction and two thread hops per action were most of the
//! worker's time (profile in the performance issue); marks written in groups cost a fraction,
//! and the window in which a crash repeats an action stays a few milliseconds wide.

use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::worker::state::{Store, StoreError};

enum Message {
    Mark(String),
    Flush(oneshot::Sender<Result<(), Arc<StoreError>>>),
}

/// Why a flush cannot vouch for the marks handed in before it.
#[derive(Debug, thiserror::Error)]
pub enum MarksError {
    /// A group of marks could not be written since the last flush. (The store's own message
    /// begins `state store:` too; the line reads as it always has.)
    #[error("state store: {0}")]
    Write(#[source] Arc<StoreError>),
    /// The writer thread is gone.
    #[error("state store: the done-mark writer stopped")]
    Stopped,
}

/// Handle to the writer thread; cheap to clone. The thread ends when every handle is dropped.
#[derive(Clone)]
pub struct DoneMarks {
    tx: mpsc::Sender<Message>,
}

/// Marks written in one transaction at most; a flood is written in several.
const GROUP: usize = 4096;

impl DoneMarks {
    /// Starts the writer over `store`.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("hookwarden-marks".to_owned())
            .spawn(move || write_loop(&*store, &rx))?;
        Ok(Self { tx })
    }

    /// Hands in the key of an action that completed; never blocks.
    pub fn mark(&self, key: String) {
        // The writer lives as long as any handle: a send fails only during teardown, and
        // then the batch's flush reports it.
        let _ = self.tx.send(Message::Mark(key));
    }

    /// Waits until every mark handed in before this call is written.
    ///
    /// # Errors
    /// A mark could not be written since the last flush (the batch must not be acked as if
    /// its actions were recorded), or the writer is gone.
    pub async fn flush(&self) -> Result<(), MarksError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Message::Flush(done))
            .map_err(|_| MarksError::Stopped)?;
        wait.await
            .map_err(|_| MarksError::Stopped)?
            .map_err(MarksError::Write)
    }
}

fn write_loop(store: &dyn Store, rx: &mpsc::Receiver<Message>) {
    // The first error since the last flush, reported to that flush (to each of its waiters).
    let mut failed: Option<Arc<StoreError>> = None;
    while let Ok(first) = rx.recv() {
        let mut keys = Vec::new();
        let mut waiters = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Mark(key) => keys.push(key),
                Message::Flush(waiter) => waiters.push(waiter),
            }
            next = if keys.len() < GROUP {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !keys.is_empty()
            && let Err(err) = store.mark_done(&keys)
        {
            tracing::error!(error = %err, marks = keys.len(), "done-marks could not be written");
            failed.get_or_insert_with(|| Arc::new(err));
        }
        if !waiters.is_empty() {
            let result = failed.take().map_or(Ok(()), Err);
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::state::SqliteStore;

    #[tokio::test]
    async fn marks_handed_in_before_a_flush_are_written_by_then() {
        let path =
            std::env::temp_dir().join(format!("hw-marks-{}.db", uuid::Uuid::new_v4().simple()));
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        let marks = DoneMarks::start(store.clone()).unwrap();
        let keys: Vec<String> = (0..10_000).map(|i| format!("k{i}")).collect();
        for key in &keys {
            marks.mark(key.clone());
        }
        marks.flush().await.unwrap();
        assert_eq!(store.done_among(&keys).unwrap().len(), keys.len());
        assert!(store.done_among(&["other".to_owned()]).unwrap().is_empty());
        drop(marks);
        let _ = std::fs::remove_file(&path);
    }
}
