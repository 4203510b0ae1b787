//! The worker's consumer: connects, declares the shared topology, consumes with manual acks
//! and `prefetch`, hands each batch to [`crate::worker::batch`], dead-letters what must be,
//! commits, then acks the batch with one multiple-ack. Reconnects with backoff; anything not
//! acked when a connection dies is redelivered and handled by the same rules.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::broker::connection;
use crate::broker::publisher::publish_confirmed;
use crate::broker::topology::{self, Topology};
use crate::config::amqp::redact;
use crate::config::worker::WorkerConfig;
use crate::envelope::{
    HEADER_DEAD_ACTION, HEADER_DEAD_ERROR, HEADER_DEAD_ROUTING_KEY, HEADER_DEAD_RULE,
};
use crate::telemetry::WorkerMetrics;
use crate::worker::act::Runner;
use crate::worker::batch::{self, Fate, Item};
use crate::worker::marks::DoneMarks;
use crate::worker::state::{SqliteStore, Store};

/// Longest wait for an ack or a cancel to be written: the connection may be dead.
const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that lasted this long was a good one: the next reconnect starts the backoff over.
const SESSION_STABLE: Duration = Duration::from_secs(30);
/// The consumer tag the broker lists for the worker.
const CONSUMER_TAG: &str = "hookwarden-worker";

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
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
                || slot.state.path != next.state.path
            {
                tracing::warn!("[amqp] and [state] changes take effect at the next restart");
            }
            *slot = Arc::new(next);
        }
    }
}

/// Why the worker is not consuming right now (the last connection failure), for `/readyz`.
type WhyNot = Arc<std::sync::Mutex<String>>;

fn say_why_not(why_not: &WhyNot, reason: &str) {
    if let Ok(mut slot) = why_not.lock() {
        reason.clone_into(&mut slot);
    }
}

struct Status {
    consuming: Arc<AtomicBool>,
    why_not: WhyNot,
    metrics: Arc<WorkerMetrics>,
}

impl admin::Status for Status {
    fn readiness(&self) -> Result<(), admin::NotReady> {
        if self.consuming.load(Ordering::Relaxed) {
            return Ok(());
        }
        let why = self.why_not.lock().map(|w| w.clone()).unwrap_or_default();
        Err(admin::NotReady::Failed {
            what: "not consuming",
            cause: Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(why)),
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
        /// Its path.
        path: String,
        /// Why.
        source: crate::worker::state::StoreError,
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
pub fn start(
    config: WorkerConfig,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&config.state.path).map_err(
        |source| StartError::Store {
            path: config.state.path.display().to_string(),
            source,
        },
    )?);
    // Opening creates the file and its directory when missing: say where, so a worker run by
    // hand without `[state] path` set does not quietly keep its state in the service's place.
    tracing::info!(path = %config.state.path.display(), "state store opened");
    let http = crate::worker::http::client().map_err(StartError::Http)?;
    let marks = DoneMarks::start(store.clone()).map_err(StartError::Thread)?;
    let metrics = Arc::new(WorkerMetrics::new());
    let consuming = Arc::new(AtomicBool::new(false));
    let why_not: WhyNot = Arc::new(std::sync::Mutex::new(
        "not yet connected to the broker".to_owned(),
    ));
    let config = Arc::new(RwLock::new(Arc::new(config)));
    let status = Arc::new(Status {
        consuming: consuming.clone(),
        why_not: why_not.clone(),
        metrics: metrics.clone(),
    });
    let admin_shutdown = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(admin_listener, status, admin_shutdown.clone()));
    let prune = tokio::spawn(prune_loop(store.clone(), config.clone(), shutdown.clone()));
    let consumer = Consumer {
        config: config.clone(),
        store,
        marks,
        http,
        metrics: metrics.clone(),
        consuming: consuming.clone(),
        why_not,
        shutdown,
    };
    let done = tokio::spawn(async move {
        consumer.run().await;
        prune.abort();
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
        let retention = config
            .read()
            .map(|c| c.state.retention)
            .unwrap_or(Duration::MAX);
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.prune(retention)).await {
            Ok(Ok(n)) if n > 0 => {
                tracing::info!(removed = n, "pruned old decisions and done-marks")
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

struct Consumer {
    config: Arc<RwLock<Arc<WorkerConfig>>>,
    store: Arc<dyn Store>,
    marks: DoneMarks,
    http: reqwest::Client,
    metrics: Arc<WorkerMetrics>,
    consuming: Arc<AtomicBool>,
    why_not: WhyNot,
    shutdown: CancellationToken,
}

enum Ended {
    Shutdown,
    Lost(String),
}

impl Consumer {
    fn current(&self) -> Option<Arc<WorkerConfig>> {
        self.config.read().ok().map(|c| c.clone())
    }

    async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        let mut attempt = 0usize;
        while !self.shutdown.is_cancelled() {
            let Some(config) = self.current() else { return };
            let url = config.amqp.url[attempt % config.amqp.url.len()].clone();
            attempt += 1;
            let began = tokio::time::Instant::now();
            match self.session(&config, &url).await {
                Ok(Ended::Shutdown) => break,
                Ok(Ended::Lost(reason)) => {
                    // A session that lasted starts the backoff afresh; one lost soon after it
                    // began (a broker struggling) keeps backing off instead of churning.
                    if began.elapsed() >= SESSION_STABLE {
                        backoff = BACKOFF_MIN;
                    }
                    say_why_not(&self.why_not, &format!("broker connection lost: {reason}"));
                    tracing::warn!(broker = %redact(&url), reason, "broker connection lost; reconnecting");
                }
                Err(err) => {
                    say_why_not(
                        &self.why_not,
                        &format!("cannot consume from the broker: {err}"),
                    );
                    tracing::warn!(broker = %redact(&url), error = %err, retry_in = ?backoff, "cannot consume from the broker")
                }
            }
            self.consuming.store(false, Ordering::Relaxed);
            self.metrics.consuming.set(0);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        say_why_not(&self.why_not, "shutting down");
        self.consuming.store(false, Ordering::Relaxed);
        self.metrics.consuming.set(0);
    }

    /// One connection's life: set up, then batches until it fails or shutdown.
    async fn session(&self, config: &WorkerConfig, url: &str) -> Result<Ended, String> {
        let connection = connection::open(url, "hookwarden-worker")
            .await
            .map_err(|e| e.to_string())?;
        let result = self.consume(config, &connection).await;
        self.consuming.store(false, Ordering::Relaxed);
        self.metrics.consuming.set(0);
        connection::close(&connection, &[]).await;
        result
    }

    async fn consume(
        &self,
        config: &WorkerConfig,
        connection: &Connection,
    ) -> Result<Ended, String> {
        let queue = ShortString::try_new(config.amqp.queue.as_str()).map_err(|e| e.to_string())?;
        let setup = async {
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| e.to_string())?;
            let topology = Topology::for_worker(&config.amqp);
            topology::declare(&channel, &topology).await.map_err(|e| {
                format!(
                    "the broker refused the topology (a queue exists with other arguments?): {e}"
                )
            })?;
            let publish = connection
                .create_channel()
                .await
                .map_err(|e| e.to_string())?;
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            let probe = connection
                .create_channel()
                .await
                .map_err(|e| e.to_string())?;
            channel
                .basic_qos(config.amqp.prefetch.get(), BasicQosOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            let consumer = channel
                .basic_consume(
                    queue.clone(),
                    ShortString::from(CONSUMER_TAG),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((channel, publish, probe, consumer))
        };
        let (channel, publish, probe, mut consumer) =
            tokio::time::timeout(connection::SETUP_TIMEOUT, setup)
                .await
                .map_err(|_| {
                    "the broker did not complete the channel set-up in time".to_owned()
                })??;
        let channels = [&channel, &publish, &probe];
        // The watchdog runs beside the batch loop, so a connection that dies while a batch
        // is in hand (or while nothing arrives) is noticed at once: `consuming` and /readyz
        // turn false, and the loop ends at its next await on the broker.
        self.consuming.store(true, Ordering::Relaxed);
        self.metrics.consuming.set(1);
        tracing::info!(queue = %config.amqp.queue, prefetch = config.amqp.prefetch.get(), "consuming");
        let mut watchdog = AbortOnDrop(tokio::spawn(watch(Watched {
            status: connection.status().clone(),
            events: Box::pin(connection.events_listener()),
            channels: vec![channel.clone(), publish.clone()],
            probe: probe.clone(),
            queue: queue.clone(),
            metrics: self.metrics.clone(),
            consuming: self.consuming.clone(),
            why_not: self.why_not.clone(),
        })));
        let runner = Arc::new(Runner {
            http: self.http.clone(),
            channel: publish.clone(),
            marks: self.marks.clone(),
        });
        let dead_letter_exchange = ShortString::try_new(config.amqp.dead_letter_exchange.as_str())
            .map_err(|e| e.to_string())?;
        let limit = usize::from(config.amqp.prefetch.get());
        loop {
            let first = tokio::select! {
                next = consumer.next() => next,
                lost = &mut watchdog.0 => {
                    return Ok(Ended::Lost(lost.unwrap_or_else(|e| format!("watchdog failed: {e}"))));
                }
                () = self.shutdown.cancelled() => {
                    say_why_not(&self.why_not, "shutting down");
                    self.consuming.store(false, Ordering::Relaxed);
                    self.metrics.consuming.set(0);
                    let _ = tokio::time::timeout(
                        BROKER_CALL_TIMEOUT,
                        channel.basic_cancel(ShortString::from(CONSUMER_TAG), BasicCancelOptions::default()),
                    )
                    .await;
                    // Closing the channels first returns prefetched, unacked deliveries to
                    // the queue in order and lets the connection close without errors.
                    connection::close(connection, &channels).await;
                    return Ok(Ended::Shutdown);
                }
            };
            let mut deliveries = match first {
                Some(Ok(d)) => vec![d],
                Some(Err(e)) => return Ok(Ended::Lost(e.to_string())),
                None => return Ok(Ended::Lost("consumer cancelled".to_owned())),
            };
            // Take what is already here, up to prefetch: one commit and one ack for all.
            while deliveries.len() < limit {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(d))) => deliveries.push(d),
                    Some(Some(Err(e))) => return Ok(Ended::Lost(e.to_string())),
                    _ => break,
                }
            }
            let Some(rules) = self.current() else {
                return Ok(Ended::Shutdown);
            };
            let items: Vec<Item> = deliveries
                .iter()
                .map(|d| Item {
                    data: d.data.clone(),
                    properties: d.properties.clone(),
                    routing_key: d.routing_key.to_string(),
                })
                .collect();
            let ctx = batch::Context {
                config: rules,
                runner: runner.clone(),
                store: self.store.clone(),
                metrics: self.metrics.clone(),
            };
            let outcome = batch::handle(&ctx, &items)
                .await
                .map_err(|e| e.to_string())?;
            for (item, fate) in items.iter().zip(&outcome.fates) {
                if let Fate::DeadLetter {
                    error,
                    rule,
                    action,
                    subject,
                } = fate
                {
                    dead_letter(
                        &publish,
                        &dead_letter_exchange,
                        item,
                        error,
                        rule.as_deref(),
                        action.as_deref(),
                    )
                    .await
                    .map_err(|e| format!("dead-lettering failed: {e}"))?;
                    tracing::warn!(
                        provider = item.provider().as_deref(),
                        event_id = item.event_id().as_deref(),
                        subject = subject.as_deref(),
                        rule = rule.as_deref(),
                        action = action.as_deref(),
                        error = %error,
                        "event dead-lettered"
                    );
                }
            }
            // Done-marks of this batch's actions land before its state and its ack.
            self.marks.flush().await.map_err(|e| e.to_string())?;
            let store = self.store.clone();
            let commit = outcome.commit;
            tokio::task::spawn_blocking(move || store.commit(&commit))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if let Some(last) = deliveries.last() {
                let mut ack = std::pin::pin!(last.acker.ack(BasicAckOptions { multiple: true }));
                let acked = loop {
                    match tokio::time::timeout(BROKER_CALL_TIMEOUT, &mut ack).await {
                        Ok(acked) => break acked,
                        // Blocked by a resource alarm (this connection also publishes dead
                        // letters and amqp actions): the ack goes out when the alarm clears.
                        Err(_) if connection.status().blocked() => {}
                        Err(_) => {
                            return Ok(Ended::Lost("the ack was not written in time".to_owned()));
                        }
                    }
                };
                match acked {
                    Ok(true) => {}
                    // The channel changed under us: the broker redelivers, the rules skip.
                    Ok(false) => return Ok(Ended::Lost("ack not delivered".to_owned())),
                    Err(e) => return Ok(Ended::Lost(e.to_string())),
                }
            }
        }
    }
}

/// What the watchdog of one session looks at.
struct Watched {
    status: lapin::ConnectionStatus,
    events: std::pin::Pin<Box<dyn futures_util::Stream<Item = lapin::Event> + Send>>,
    /// The consuming and publishing channels, whose status is checked.
    channels: Vec<Channel>,
    /// A channel of its own for the round trip and the depth, so they never wait behind a
    /// batch's publishes.
    probe: Channel,
    queue: ShortString,
    metrics: Arc<WorkerMetrics>,
    consuming: Arc<AtomicBool>,
    why_not: WhyNot,
}

/// Returns, with the reason, as soon as the session's connection is known to be dead;
/// meanwhile reads the queue depth. Every [`connection::PROBE_EVERY`] it checks lapin's
/// status flags and makes a round trip to the broker on a channel of its own: lapin has been
/// seen to keep a connection "connected", and its consumer stream open, after the broker went
/// away. A connection the broker blocks for a resource alarm is not probed (the broker reads
/// nothing from it until the alarm clears: flow control, not a dead link).
async fn watch(mut w: Watched) -> String {
    let mut tick = tokio::time::interval(connection::PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            event = w.events.next() => match event {
                Some(lapin::Event::Error(err)) => break format!("connection error: {err}"),
                None => break "connection closed".to_owned(),
                Some(_) => {}
            },
            _ = tick.tick() => {
                if !w.status.connected() || w.channels.iter().any(|c| !c.status().connected()) {
                    break "connection or channel not connected".to_owned();
                }
                if w.status.blocked() {
                    continue;
                }
                if let Err(reason) = connection::probe(&w.probe).await {
                    // An alarm that began while the probe was on its way: not a dead link.
                    if w.status.blocked() {
                        continue;
                    }
                    break reason.to_string();
                }
                read_depth(&w.probe, &w.queue, &w.metrics).await;
            }
        }
    };
    say_why_not(&w.why_not, &format!("broker connection lost: {reason}"));
    w.consuming.store(false, Ordering::Relaxed);
    w.metrics.consuming.set(0);
    reason
}

/// Sets the queue-depth gauge from a passive declare. Never a verdict on the link: a quorum
/// queue whose leader does not answer the broker in time is reported as 0 messages and 0
/// consumers, so an answer listing no consumer (there is at least this worker's) is unknown,
/// and the gauge keeps its last reading.
async fn read_depth(channel: &Channel, queue: &ShortString, metrics: &WorkerMetrics) {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = tokio::time::timeout(
        connection::PROBE_TIMEOUT,
        channel.queue_declare(queue.clone(), passive, FieldTable::default()),
    )
    .await;
    if let Ok(Ok(q)) = declared
        && q.consumer_count() > 0
    {
        metrics.queue_depth.set(i64::from(q.message_count()));
    }
}

/// Aborts the task when the session ends however it ends.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
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
) -> Result<(), crate::broker::publisher::PublishError> {
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
