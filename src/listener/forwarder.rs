//! Drains the spool to RabbitMQ: oldest first, published in order on one channel with
//! confirms, each entry deleted only after its confirm. Runs from start-up, so a listener
//! restarted with a non-empty spool forwards what is left as soon as the broker answers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::broker::publisher::Publisher;
use crate::listener::spool::Spool;
use crate::telemetry::{ErrorChain, ListenerMetrics};

/// Entries forwarded per round.
const BATCH: usize = 256;

/// Runs until `shutdown`.
pub async fn run(
    spool: Spool,
    publisher: Publisher,
    timeout: Duration,
    metrics: Arc<ListenerMetrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        report(&spool, &metrics).await;
        if spool.depth() == 0 {
            tokio::select! {
                () = spool.wait_added(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => return,
            }
            continue;
        }
        if !publisher.is_connected() {
            tokio::select! {
                _ = publisher.wait_connected(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => return,
            }
            continue;
        }
        let s = spool.clone();
        let batch = match tokio::task::spawn_blocking(move || s.oldest(BATCH)).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(err)) => {
                tracing::error!(error = %ErrorChain(&err), "cannot read the spool");
                tokio::time::sleep(backoff).await;
                continue;
            }
            Err(_) => return,
        };
        let envelopes: Vec<_> = batch.iter().map(|s| &s.envelope).collect();
        let results = publisher.publish_in_order(&envelopes, timeout).await;
        let mut failed = None;
        let done: Vec<_> = batch
            .into_iter()
            .zip(results)
            .filter_map(|(s, r)| match r {
                Ok(()) => Some(s),
                Err(err) => {
                    failed.get_or_insert(err);
                    None
                }
            })
            .collect();
        let forwarded = done.len();
        if forwarded > 0 {
            let s = spool.clone();
            match tokio::task::spawn_blocking(move || s.remove(&done)).await {
                Ok(Ok(())) => metrics.spool_drained(forwarded),
                Ok(Err(err)) => {
                    tracing::error!(error = %ErrorChain(&err), "forwarded events could not be deleted from the spool; they will be sent again")
                }
                Err(_) => return,
            }
        }
        match failed {
            None => backoff = Duration::from_millis(100),
            Some(err) => {
                tracing::warn!(error = %err, forwarded, retry_in = ?backoff, "forwarding the spool paused");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn report(spool: &Spool, metrics: &ListenerMetrics) {
    let s = spool.clone();
    let oldest = if spool.depth() > 0 {
        tokio::task::spawn_blocking(move || s.oldest_received())
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let age = oldest
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    metrics.spool_state(spool.depth(), spool.bytes(), age);
}
