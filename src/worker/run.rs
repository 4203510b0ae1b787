//! The worker's wiring: opens the state store and starts the admin server, the pruning and
//! the broker consumer ([`crate::broker::consumer`]); each batch the consumer hands over goes
//! to [`crate::worker::batch`] once the batches before it that share a subject are over
//! ([`crate::worker::gate`]), its dead letters are published, its done-marks and state
//! committed, and only then does the consumer ack it. Runs until shutdown, then finishes the
//! batches in hand.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use lapin::message::Delivery;
use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, NotReady};
use crate::broker::consumer::{self, Consumer, ConsumerStatus, Gauges};
use crate::broker::publisher::{PublishError, publish_confirmed};
use crate::broker::topology;
use crate::envelope::{
    HEADER_DEAD_ACTION, HEADER_DEAD_ERROR, HEADER_DEAD_ROUTING_KEY, HEADER_DEAD_RULE,
};
use crate::telemetry::{ErrorChain, WorkerMetrics};
use crate::worker::action::Runner;
use crate::worker::batch::{self, Fate, Item};
use crate::worker::config::{Backend, WorkerConfig};
use crate::worker::gate::Gate;
use crate::worker::marks::{DoneMarks, MarksError};
use crate::worker::state::{self, Store, StoreError};

const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(10);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A started worker.
pub struct Running {
    /// The rules in force; [`Running::reload`] swaps them between batches.
    pub config: Arc<RwLock<Arc<WorkerConfig>>>,
    /// Metrics (tests read them).
    pub metrics: Arc<WorkerMetrics>,
    /// True while consuming.
    pub consuming: Arc<AtomicBool>,
    /// Completes when the worker has stopped.
    pub done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Puts `next` in force from the next batch on. Broker and state settings keep their
    /// start-up values (they need a restart), which is logged when they differ.
    pub fn reload(&self, next: WorkerConfig) {
        if let Ok(mut slot) = self.config.write() {
            if slot.amqp.url != next.amqp.url
                || slot.amqp.queue != next.amqp.queue
                || slot.state.describe() != next.state.describe()
                || slot.telemetry.summary() != next.telemetry.summary()
            {
                tracing::warn!(
                    "[amqp], [state] and [telemetry] changes take effect at the next restart"
                );
            }
            *slot = Arc::new(next);
        }
    }
}

/// `/readyz` and `/metrics` of the worker.
struct Readiness {
    consumer: ConsumerStatus,
    store: StoreHealth,
    metrics: Arc<WorkerMetrics>,
}

impl admin::Status for Readiness {
    fn readiness(&self) -> Result<(), NotReady> {
        if let Some(cause) = self.store.down() {
            return Err(NotReady::Failed {
                what: "state store unavailable",
                cause,
            });
        }
        if self.consumer.is_consuming() {
            return Ok(());
        }
        Err(NotReady::Failed {
            what: "not consuming",
            cause: self.consumer.why_not(),
        })
    }
    fn metrics(&self) -> String {
        self.metrics.encode()
    }
}

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state store cannot be opened.
    #[error("opening the state store {path}: {source}")]
    Store {
        /// Its path, or its URL without the password.
        path: String,
        /// Why.
        source: StoreError,
    },
    /// No HTTP client (TLS roots and the like).
    #[error("building the HTTP client: {0}")]
    Http(String),
    /// The done-mark writer thread could not start.
    #[error("starting the done-mark writer: {0}")]
    Thread(#[source] std::io::Error),
}

/// Opens the store and starts consuming; runs until `shutdown`, then finishes the batch in
/// hand, commits, acks, and closes.
///
/// # Errors
/// The store or HTTP client cannot be set up.
pub async fn start(
    config: WorkerConfig,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    let described = config.state.describe();
    let store = state::open(&config.state)
        .await
        .map_err(|source| StartError::Store {
            path: described.clone(),
            source,
        })?;
    // Opening creates the file and its directory when missing: say where, so a worker run by
    // hand without `[state] path` set does not quietly keep its state in the service's place.
    match &config.state.backend {
        Backend::Sqlite(path) => tracing::info!(path = %path.display(), "state store opened"),
        Backend::Postgres(_) => tracing::info!(
            url = %described,
            schema_version = state::schema_version(),
            "state store opened"
        ),
    }
    let http = crate::worker::http::client().map_err(StartError::Http)?;
    let marks = DoneMarks::start(store.clone()).map_err(StartError::Thread)?;
    let metrics = Arc::new(WorkerMetrics::new());
    let status = ConsumerStatus::new(Gauges {
        consuming: metrics.consuming.clone(),
        queue_depth: metrics.queue_depth.clone(),
    });
    let consuming = status.consuming_flag();
    let initial = Arc::new(config);
    let config = Arc::new(RwLock::new(initial.clone()));
    let store_health = StoreHealth::default();
    let readiness = Arc::new(Readiness {
        consumer: status.clone(),
        store: store_health.clone(),
        metrics: metrics.clone(),
    });
    let admin_shutdown = CancellationToken::new();
    let view = crate::ui::WebView::new(config.clone(), store.clone())
        .map_err(|err| StartError::Http(format!("the web view's templates: {err}")))?;
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        readiness,
        Some(Arc::new(view)),
        admin_shutdown.clone(),
    ));
    let prune = tokio::spawn(prune_loop(store.clone(), config.clone(), shutdown.clone()));
    let seen = Arc::new(crate::worker::watch::Seen::default());
    let session: Arc<Mutex<Option<Channel>>> = Arc::default();
    let runner = {
        let (session, http, marks, metrics) = (
            session.clone(),
            http.clone(),
            marks.clone(),
            metrics.clone(),
        );
        Arc::new(move || {
            let channel = session
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()?;
            Some(Runner {
                http: http.clone(),
                channel,
                marks: marks.clone(),
                metrics: metrics.clone(),
            })
        })
    };
    let watches = tokio::spawn(crate::worker::watch::run(
        crate::worker::watch::Watching {
            config: config.clone(),
            store: store.clone(),
            seen: seen.clone(),
            runner,
            metrics: metrics.clone(),
        },
        shutdown.clone(),
    ));
    let batches = Batches {
        config: config.clone(),
        store,
        marks,
        http,
        metrics: metrics.clone(),
        dead_letter_exchange: topology::name(&initial.amqp.dead_letter_exchange),
        store_health,
        shutdown: shutdown.clone(),
        seen,
        session,
        gate: Gate::default(),
        past_gate: Arc::new(tokio::sync::Semaphore::new(batches_past_gate(
            &initial.state.backend,
        ))),
    };
    let consumer = Consumer::new(&initial.amqp, batches, status, shutdown);
    let done = tokio::spawn(async move {
        consumer.run().await;
        prune.abort();
        watches.abort();
        admin_shutdown.cancel();
        let _ = admin_task.await;
        tracing::info!("worker stopped");
    });
    Ok(Running {
        config,
        metrics,
        consuming,
        done,
    })
}

async fn prune_loop(
    store: Arc<dyn Store>,
    config: Arc<RwLock<Arc<WorkerConfig>>>,
    shutdown: CancellationToken,
) {
    loop {
        let current = config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let s = store.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            let removed = s.prune(current.state.retention)?;
            // Kept by its own limits even when archiving is off: what was archived before
            // still ages out.
            let archive = &current.archive;
            let archived = s.prune_archive(archive.retention, archive.max_bytes)?;
            Ok::<_, StoreError>((removed, archived))
        })
        .await;
        match pruned {
            Ok(Ok((removed, archived))) if removed + archived > 0 => {
                tracing::info!(
                    removed,
                    archived,
                    "pruned old decisions, done-marks and archived events"
                )
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "pruning failed"),
            _ => {}
        }
        tokio::select! {
            () = tokio::time::sleep(PRUNE_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Why a batch was not handled completely: nothing of it is acked, the session ends, and the
/// broker redelivers it.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    /// Reading state or deciding failed.
    #[error("{0}")]
    Decide(#[source] StoreError),
    /// A dead letter was not confirmed.
    #[error("dead-lettering failed: {0}")]
    DeadLetter(#[source] PublishError),
    /// The done-marks of the batch's actions were not all written.
    #[error("{0}")]
    Marks(#[source] MarksError),
    /// The batch's state and decisions were not committed.
    #[error("{0}")]
    Commit(#[source] StoreError),
    /// The commit's thread failed.
    #[error("{0}")]
    CommitTask(#[source] tokio::task::JoinError),
}

/// What the consumer hands batches to.
struct Batches {
    /// The rules in force: read once per batch, so a reload applies from the next one.
    config: Arc<RwLock<Arc<WorkerConfig>>>,
    store: Arc<dyn Store>,
    marks: DoneMarks,
    http: reqwest::Client,
    metrics: Arc<WorkerMetrics>,
    dead_letter_exchange: ShortString,
    store_health: StoreHealth,
    shutdown: CancellationToken,
    /// What the silence watches count.
    seen: Arc<crate::worker::watch::Seen>,
    /// The current broker session's publishing channel, for the watches' actions.
    session: Arc<Mutex<Option<Channel>>>,
    /// Keeps batches in flight that share a subject in arrival order.
    gate: Gate,
    /// Turns to go past the gate: in PostgreSQL each batch past it holds a connection.
    past_gate: Arc<tokio::sync::Semaphore>,
}

/// The state store's last failure while it is unavailable; `/readyz` reports it.
#[derive(Clone, Default)]
struct StoreHealth(Arc<Mutex<Option<Arc<dyn std::error::Error + Send + Sync>>>>);

impl StoreHealth {
    fn down(&self) -> Option<Arc<dyn std::error::Error + Send + Sync>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, cause: Option<Arc<dyn std::error::Error + Send + Sync>>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = cause;
    }
}

/// How long a batch waits before trying again while the store is unavailable: doubling from
/// the first to the last.
const STORE_RETRY_FIRST: Duration = Duration::from_millis(250);
const STORE_RETRY_LAST: Duration = Duration::from_secs(10);

impl BatchError {
    /// The store is unreachable or overloaded for now: nothing is wrong with the batch.
    fn store_unavailable(&self) -> bool {
        match self {
            Self::Decide(err) | Self::Commit(err) => err.is_unavailable(),
            Self::Marks(MarksError::Write(err)) => err.is_unavailable(),
            Self::Marks(MarksError::Stopped) | Self::DeadLetter(_) | Self::CommitTask(_) => false,
        }
    }
}

/// Batches a worker has in hand at once: while some wait (on a paced action, a slow target,
/// an earlier batch with the same subject), the next go on.
const BATCHES_IN_HAND: usize = 8;

/// Batches in hand that may be past the gate at once. In PostgreSQL each holds a connection
/// for its subjects' locks until its commit, and the reads and the done-mark writer need one
/// each besides.
fn batches_past_gate(backend: &Backend) -> usize {
    match backend {
        Backend::Sqlite(_) => BATCHES_IN_HAND,
        Backend::Postgres(options) => options
            .pool_size
            .saturating_sub(2)
            .clamp(1, BATCHES_IN_HAND),
    }
}

impl consumer::Handler for Batches {
    type Error = BatchError;

    fn in_flight(&self) -> usize {
        BATCHES_IN_HAND
    }

    fn session_started(&self, publish: &Channel) {
        *self.session.lock().unwrap_or_else(PoisonError::into_inner) = Some(publish.clone());
    }

    fn session_ended(&self) {
        *self.session.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// While the store is unavailable the batch is held, unacked, and tried again with a
    /// growing pause: ending the session instead would have the broker redeliver it, and a
    /// quorum queue's delivery limit would dead-letter events for an outage of the store.
    /// Handling a batch again is safe: what was decided or done is skipped, as on a
    /// redelivery. Shutdown ends the wait; the batch then goes back to the queue.
    ///
    /// The batch is read and enters the [`Gate`] now, in arrival order, under the rules in
    /// force now; it is handled once the batches before it that share a subject are over.
    fn handle(
        &self,
        deliveries: Vec<Delivery>,
        publish: &Channel,
    ) -> impl Future<Output = Result<(), BatchError>> + Send {
        let items: Vec<Item> = deliveries
            .into_iter()
            .map(|d| Item {
                data: d.data,
                properties: d.properties,
                routing_key: d.routing_key.to_string(),
            })
            .collect();
        // A poisoned lock still holds a whole config: a reload swaps the Arc and nothing else.
        let config = self
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let read = batch::Read::new(&config.rules, &items);
        let mut ticket = self.gate.enter(read.keys());
        let mut read = Some(read);
        async move {
            ticket.ready().await;
            // An error only if the semaphore were closed, which it never is.
            let _turn = self.past_gate.acquire().await;
            let mut pause = STORE_RETRY_FIRST;
            loop {
                // Read again for a second attempt: the first one's read went into it.
                let this = read
                    .take()
                    .unwrap_or_else(|| batch::Read::new(&config.rules, &items));
                match self.attempt(&config, &items, this, publish).await {
                    // A session the broker closed meanwhile (its consumer_timeout, a lost
                    // link) has given the batch back to the queue: nothing here to hold.
                    Err(err)
                        if err.store_unavailable()
                            && !self.shutdown.is_cancelled()
                            && publish.status().connected() =>
                    {
                        tracing::warn!(
                            error = %ErrorChain(&err),
                            retry_in = ?pause,
                            events = items.len(),
                            "state store unavailable; holding the batch"
                        );
                        self.store_health
                            .set(Some(Arc::new(StoreDown(err.to_string()))));
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            () = self.shutdown.cancelled() => return Err(err),
                        }
                        pause = (pause * 2).min(STORE_RETRY_LAST);
                    }
                    result => {
                        let still_down = result.as_ref().is_err_and(BatchError::store_unavailable);
                        if !still_down && self.store_health.down().is_some() {
                            tracing::info!("state store available again");
                            self.store_health.set(None);
                        }
                        // The batches behind it may go once its commit is done.
                        drop(ticket);
                        return result;
                    }
                }
            }
        }
    }
}

/// The store's failure as `/readyz` words it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StoreDown(String);

impl Batches {
    async fn attempt(
        &self,
        config: &Arc<WorkerConfig>,
        items: &[Item],
        read: batch::Read,
        publish: &Channel,
    ) -> Result<(), BatchError> {
        let ctx = batch::Context {
            config: config.clone(),
            runner: Arc::new(Runner {
                http: self.http.clone(),
                channel: publish.clone(),
                marks: self.marks.clone(),
                metrics: self.metrics.clone(),
            }),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            seen: self.seen.clone(),
        };
        let outcome = batch::handle(&ctx, items, read)
            .await
            .map_err(BatchError::Decide)?;
        for (item, fate) in items.iter().zip(&outcome.fates) {
            if let Fate::DeadLetter {
                error,
                rule,
                action,
                subject,
            } = fate
            {
                dead_letter(
                    publish,
                    &self.dead_letter_exchange,
                    item,
                    error,
                    rule.as_deref(),
                    action.as_deref(),
                )
                .await
                .map_err(BatchError::DeadLetter)?;
                tracing::warn!(
                    provider = item.provider().as_deref(),
                    event_id = item.event_id().as_deref(),
                    // The trace the listener started; a message without one has none here.
                    trace_id = item.trace().map(|t| t.trace_id()),
                    subject = subject.as_deref(),
                    rule = rule.as_deref(),
                    action = action.as_deref(),
                    error = %error,
                    "event dead-lettered"
                );
            }
        }
        // Done-marks of this batch's actions land before its state and its ack.
        self.marks.flush().await.map_err(BatchError::Marks)?;
        let store = self.store.clone();
        let commit = outcome.commit;
        let mut lock = outcome.lock;
        tokio::task::spawn_blocking(move || {
            let committed = store.commit_locked(&commit, &mut lock);
            // Only now may another worker's batch read these subjects.
            drop(lock);
            committed
        })
        .await
        .map_err(BatchError::CommitTask)?
        .map_err(BatchError::Commit)
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Publishes `item` to the dead-letter exchange with the reasons as headers, confirmed.
async fn dead_letter(
    channel: &Channel,
    exchange: &ShortString,
    item: &Item,
    error: &str,
    rule: Option<&str>,
    action: Option<&str>,
) -> Result<(), PublishError> {
    let mut headers = item.properties.headers().clone().unwrap_or_default();
    // Long errors (captured output, parser messages) are cut: headers are not a log.
    let error: String = error.chars().take(1000).collect();
    headers.insert(ShortString::from(HEADER_DEAD_ERROR), text(&error));
    if let Some(rule) = rule {
        headers.insert(ShortString::from(HEADER_DEAD_RULE), text(rule));
    }
    if let Some(action) = action {
        headers.insert(ShortString::from(HEADER_DEAD_ACTION), text(action));
    }
    headers.insert(
        ShortString::from(HEADER_DEAD_ROUTING_KEY),
        text(&item.routing_key),
    );
    let props: BasicProperties = item.properties.clone().with_headers(headers);
    let routing_key =
        ShortString::try_new(item.routing_key.as_str()).unwrap_or_else(|_| ShortString::from(""));
    publish_confirmed(
        channel,
        exchange.clone(),
        routing_key,
        &item.data,
        props,
        DEAD_LETTER_TIMEOUT,
    )
    .await
}
