//! The worker's consume loop: one connection at a time to the brokers of `[amqp] url` in
//! turn; on it the shared topology, `basic.qos` of `prefetch` and `basic.consume` with manual
//! acks. What has arrived (up to half of `prefetch`) goes to a [`Handler`] as one batch;
//! the loop goes on taking batches while earlier ones are handled (up to
//! [`Handler::in_flight`] at once), and acks each when the handler is done with it, as
//! [`crate::broker::acks`] says (one multiple-ack for what finished in order). A watchdog
//! beside the loop notices a dead link at once; the next session follows after the shared
//! [`Backoff`]. Anything not acked when a connection dies is redelivered.

use std::error::Error;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Stream, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, Channel, Connection, ConnectionStatus};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::acks::{Ack, Book};
use crate::broker::backoff::{self, Backoff};
use crate::broker::connection::{self, Alive, LinkDown, SetupError};
use crate::broker::topology::{self, Topology};
use crate::config::amqp::{AmqpConfig, redact};

/// The name the broker lists for the worker's connection.
const CONNECTION_NAME: &str = "hookwarden-worker";
/// The consumer tag the broker lists for the worker.
const CONSUMER_TAG: &str = "hookwarden-worker";
/// Longest wait for an ack or a cancel to be written: the connection may be dead.
const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect pacing: a session that lasted 30 s was a good one and the next attempt comes
/// soon; one lost soon after it began (a broker struggling) keeps backing off.
const BACKOFF: backoff::Policy = backoff::Policy {
    min: Duration::from_millis(200),
    max: Duration::from_secs(15),
    jitter: Duration::ZERO,
    stable_after: Duration::from_secs(30),
};

/// What the consumer hands each batch to: the worker.
pub trait Handler: Send + Sync + 'static {
    /// Why a batch could not be handled; the session ends and its deliveries are redelivered.
    type Error: Error + Send + Sync + 'static;

    /// Handles `deliveries` (at least one, in the order they arrived) completely: they are
    /// acked when the future returns `Ok`. `publish` is the session's confirm-mode channel,
    /// for dead letters and whatever else the handler publishes. Called in arrival order;
    /// the futures of several batches may run at once (see [`Handler::in_flight`]), and what
    /// must follow arrival order is the handler's to keep.
    fn handle(
        &self,
        deliveries: Vec<Delivery>,
        publish: &Channel,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// How many batches may be in hand at once. The default: one, each handled and acked
    /// before the next is taken.
    fn in_flight(&self) -> usize {
        1
    }

    /// A session began: `publish` is its confirm-mode channel, for what the handler publishes
    /// outside a batch (the worker's silence watches). The default ignores it.
    fn session_started(&self, publish: &Channel) {
        let _ = publish;
    }

    /// The session that began with [`Handler::session_started`] is over (lost, failed or shut
    /// down): its channel publishes nothing any more. The default does nothing.
    fn session_ended(&self) {}
}

/// Why the worker is not consuming right now; `/readyz` says it after `not consuming: `.
#[derive(Debug, thiserror::Error)]
pub enum NotConsuming {
    /// No session yet.
    #[error("not yet connected to the broker")]
    NotYetConnected,
    /// The last session's link was lost.
    #[error("broker connection lost: {0}")]
    Lost(#[source] LinkLost),
    /// The last attempt could not set up, or its handler failed.
    #[error("cannot consume from the broker: {0}")]
    Failed(#[source] ConsumeError),
    /// Stopped for good.
    #[error("shutting down")]
    ShuttingDown,
}

/// How a consuming session's link was found gone.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkLost {
    /// Reported by lapin or found by the liveness round.
    #[error(transparent)]
    Down(#[from] LinkDown),
    /// lapin's event stream ended.
    #[error("connection closed")]
    Closed,
    /// The watchdog itself failed (a bug), so the link cannot be vouched for.
    #[error("watchdog failed: {0}")]
    Watchdog(#[source] Arc<tokio::task::JoinError>),
    /// The consumer stream failed.
    #[error("{0}")]
    Delivery(#[source] lapin::Error),
    /// The broker cancelled the consumer (e.g. the queue was deleted).
    #[error("consumer cancelled")]
    Cancelled,
    /// The ack was not written within 10 s, the connection not blocked.
    #[error("the ack was not written in time")]
    AckTimeout,
    /// The channel changed under the batch; the broker redelivers it, the rules skip it.
    #[error("ack not delivered")]
    AckNotDelivered,
    /// The ack failed.
    #[error("{0}")]
    Ack(#[source] lapin::Error),
}

/// Why a session could not start, or could not go on for a reason other than its link.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// No connection, or no channel to declare on.
    #[error(transparent)]
    Setup(SetupError),
    /// The broker refused a declaration (406): a queue exists with other arguments.
    #[error("the broker refused the topology (a queue exists with other arguments?): {0}")]
    Topology(#[source] lapin::Error),
    /// A channel, `confirm.select`, `basic.qos` or `basic.consume` failed.
    #[error("{0}")]
    Channel(#[source] lapin::Error),
    /// The channels were not set up within [`connection::SETUP_TIMEOUT`].
    #[error("the broker did not complete the channel set-up in time")]
    Timeout,
    /// The handler could not handle a batch.
    #[error("{0}")]
    Handler(#[source] Box<dyn Error + Send + Sync>),
}

impl From<SetupError> for ConsumeError {
    fn from(err: SetupError) -> Self {
        match err {
            // The worker's own wording of the refusal, as its log and /readyz have said it.
            SetupError::Topology(source) => Self::Topology(source),
            other => Self::Setup(other),
        }
    }
}

/// The gauges the consumer keeps current.
#[derive(Clone)]
pub struct Gauges {
    /// 1 while consuming.
    pub consuming: Gauge,
    /// Messages ready in the queue, as last read.
    pub queue_depth: Gauge,
}

/// Whether the consumer consumes now and, when not, why: read by the worker's `/readyz`,
/// written by the consume loop and its watchdog only. Cheap to clone.
#[derive(Clone)]
pub struct ConsumerStatus {
    consuming: Arc<AtomicBool>,
    why_not: Arc<Mutex<Arc<NotConsuming>>>,
    gauges: Gauges,
}

impl ConsumerStatus {
    /// Not consuming, not yet connected.
    pub fn new(gauges: Gauges) -> Self {
        Self {
            consuming: Arc::new(AtomicBool::new(false)),
            why_not: Arc::new(Mutex::new(Arc::new(NotConsuming::NotYetConnected))),
            gauges,
        }
    }

    /// True while a consumer is registered on a live channel.
    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    /// The flag [`ConsumerStatus::is_consuming`] reads, for whoever polls it (the binary's
    /// systemd readiness, tests).
    pub fn consuming_flag(&self) -> Arc<AtomicBool> {
        self.consuming.clone()
    }

    /// Why the consumer is not consuming (the latest reason; stale while it consumes).
    pub fn why_not(&self) -> Arc<NotConsuming> {
        self.why_not
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn consuming(&self) {
        self.consuming.store(true, Ordering::Relaxed);
        self.gauges.consuming.set(1);
    }

    /// The reason first, so a reader who sees the flag drop never reads an older reason.
    fn not_consuming(&self, why: NotConsuming) {
        *self.why_not.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(why);
        self.consuming.store(false, Ordering::Relaxed);
        self.gauges.consuming.set(0);
    }
}

/// The worker's consumer. Its `[amqp]` settings are the ones it was made with: changing them
/// needs a restart.
pub struct Consumer<H> {
    urls: Vec<String>,
    queue: ShortString,
    prefetch: u16,
    topology: Topology,
    handler: H,
    status: ConsumerStatus,
    shutdown: CancellationToken,
}

/// How a session that was consuming ended.
enum Ended {
    Shutdown,
    Lost(LinkLost),
}

impl<H: Handler> Consumer<H> {
    /// A consumer of `config`'s queue that hands batches to `handler` and reports on
    /// `status`; nothing happens until [`Consumer::run`].
    pub fn new(
        config: &AmqpConfig,
        handler: H,
        status: ConsumerStatus,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            urls: config.url.clone(),
            queue: topology::name(&config.queue),
            prefetch: config.prefetch.get(),
            topology: Topology::for_worker(config),
            handler,
            status,
            shutdown,
        }
    }

    /// Consumes, reconnecting with backoff, until `shutdown`; then stops consuming, finishes
    /// the batches in hand (handled and acked), and closes.
    pub async fn run(self) {
        let mut backoff = Backoff::new(BACKOFF);
        let mut brokers = self.urls.iter().cycle();
        while !self.shutdown.is_cancelled() {
            let Some(url) = brokers.next() else { break };
            if self.attempt(url, &mut backoff).await.is_break()
                || !backoff.wait(&self.shutdown).await
            {
                break;
            }
        }
        self.status.not_consuming(NotConsuming::ShuttingDown);
    }

    /// One connection's life: set up, consume until the link is lost, a batch fails or
    /// shutdown; then say why (log and status) and close. `Break` on shutdown.
    async fn attempt(&self, url: &str, backoff: &mut Backoff) -> ControlFlow<()> {
        backoff.session_began();
        let (ended, connection) =
            match connection::open_declared(url, CONNECTION_NAME, &self.topology).await {
                Ok((connection, channel)) => {
                    (self.consume(&connection, channel).await, Some(connection))
                }
                Err(err) => (Err(err.into()), None),
            };
        self.handler.session_ended();
        let flow = match ended {
            Ok(Ended::Shutdown) => ControlFlow::Break(()),
            Ok(Ended::Lost(lost)) => {
                backoff.session_ended();
                tracing::warn!(broker = %redact(url), reason = %lost, "broker connection lost; reconnecting");
                self.status.not_consuming(NotConsuming::Lost(lost));
                ControlFlow::Continue(())
            }
            Err(err) => {
                tracing::warn!(broker = %redact(url), error = %err, retry_in = ?backoff.delay(), "cannot consume from the broker");
                self.status.not_consuming(NotConsuming::Failed(err));
                ControlFlow::Continue(())
            }
        };
        if let Some(connection) = connection {
            connection::close(&connection, &[]).await;
        }
        flow
    }

    /// Sets up the session's channels on `connection` (`channel` already declared the
    /// topology and becomes the consuming one), then hands over batches.
    async fn consume(
        &self,
        connection: &Connection,
        channel: Channel,
    ) -> Result<Ended, ConsumeError> {
        let setup = async {
            let publish = connection
                .create_channel()
                .await
                .map_err(ConsumeError::Channel)?;
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(ConsumeError::Channel)?;
            let probe = connection
                .create_channel()
                .await
                .map_err(ConsumeError::Channel)?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await
                .map_err(ConsumeError::Channel)?;
            let consumer = channel
                .basic_consume(
                    self.queue.clone(),
                    ShortString::from(CONSUMER_TAG),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(ConsumeError::Channel)?;
            Ok::<_, ConsumeError>((publish, probe, consumer))
        };
        let (publish, probe, mut consumer) = tokio::time::timeout(connection::SETUP_TIMEOUT, setup)
            .await
            .map_err(|_| ConsumeError::Timeout)??;
        // The watchdog runs beside the batch loop, so a connection that dies while batches
        // are in hand (or while nothing arrives) is noticed at once: `consuming` and /readyz
        // turn false, and the loop ends (letting the batches in hand finish, unacked).
        self.status.consuming();
        self.handler.session_started(&publish);
        tracing::info!(queue = %self.queue, prefetch = self.prefetch, "consuming");
        let mut watchdog = AbortOnDrop(tokio::spawn(watch(Watched {
            connection: connection.status().clone(),
            events: Box::pin(connection.events_listener()),
            channels: vec![channel.clone(), publish.clone()],
            probe: probe.clone(),
            queue: self.queue.clone(),
            status: self.status.clone(),
        })));
        let most = self.handler.in_flight().max(1);
        // A batch takes at most half of prefetch, so that under a backlog one that waits (on a
        // paced action) leaves the other half to the batches after it. Smaller batches would
        // cost throughput: each is a commit and an ack (a quarter at an eighth, measured).
        let limit = usize::from(self.prefetch).div_ceil(2).max(1);
        // Batches in hand, each with its deliveries' ackers; which are done, and how to ack.
        let mut in_hand = FuturesUnordered::new();
        let mut book: Book<Acker> = Book::default();
        let ended = loop {
            tokio::select! {
                biased;
                lost = &mut watchdog.0 => {
                    break Ok(Ended::Lost(
                        lost.unwrap_or_else(|e| LinkLost::Watchdog(Arc::new(e))),
                    ));
                }
                Some((handled, taken)) = in_hand.next(), if !in_hand.is_empty() => {
                    let (handled, taken): (Result<(), H::Error>, Taken) = (handled, taken);
                    if let Err(err) = handled {
                        break Err(ConsumeError::Handler(Box::new(err)));
                    }
                    let acks = book.finished(taken.first, taken.ackers, Instant::now());
                    if let Err(lost) = send(connection, acks).await {
                        break Ok(Ended::Lost(lost));
                    }
                }
                () = sleep_until(book.next_due()), if book.next_due().is_some() => {
                    if let Err(lost) = send(connection, book.overdue(Instant::now())).await {
                        break Ok(Ended::Lost(lost));
                    }
                }
                () = self.shutdown.cancelled() => {
                    self.status.not_consuming(NotConsuming::ShuttingDown);
                    let _ = tokio::time::timeout(
                        BROKER_CALL_TIMEOUT,
                        channel.basic_cancel(ShortString::from(CONSUMER_TAG), BasicCancelOptions::default()),
                    )
                    .await;
                    // The batches in hand are finished and acked first.
                    while let Some((handled, taken)) = in_hand.next().await {
                        handled.map_err(|e| ConsumeError::Handler(Box::new(e)))?;
                        let acks = book.finished(taken.first, taken.ackers, Instant::now());
                        if let Err(lost) = send(connection, acks).await {
                            return Ok(Ended::Lost(lost));
                        }
                    }
                    // Closing the channels first returns prefetched, unacked deliveries to
                    // the queue in order and lets the connection close without errors.
                    connection::close(connection, &[&channel, &publish, &probe]).await;
                    return Ok(Ended::Shutdown);
                }
                first = consumer.next(), if in_hand.len() < most => {
                    let deliveries = match take(first, &mut consumer, limit) {
                        Ok(deliveries) => deliveries,
                        Err(lost) => break Ok(Ended::Lost(lost)),
                    };
                    let taken = Taken {
                        first: deliveries[0].delivery_tag,
                        ackers: deliveries.iter().map(|d| d.acker.clone()).collect(),
                    };
                    book.taken(taken.first);
                    let handling = self.handler.handle(deliveries, &publish);
                    in_hand.push(async move { (handling.await, taken) });
                }
            }
        };
        // The session is over and its unacked deliveries go back to the queue; the batches
        // still in hand run to their end all the same, as one would before this loop took
        // several: dropped halfway, an action sent but not yet marked done would be sent again
        // sooner, and their store work (which runs on, in blocking threads) would go on
        // without holding their subjects' place.
        while in_hand.next().await.is_some() {}
        ended
    }
}

/// Sends `acks` in order.
async fn send(connection: &Connection, acks: Vec<Ack<Acker>>) -> Result<(), LinkLost> {
    for a in acks {
        ack(connection.status(), &a.acker, a.multiple).await?;
    }
    Ok(())
}

/// Waits until `due`; never, when there is nothing due.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// A batch: `first` (the delivery the loop waited for) and what else has already arrived, up
/// to `limit` in all.
fn take(
    first: Option<Result<Delivery, lapin::Error>>,
    consumer: &mut lapin::Consumer,
    limit: usize,
) -> Result<Vec<Delivery>, LinkLost> {
    let mut deliveries = match first {
        Some(Ok(d)) => vec![d],
        Some(Err(e)) => return Err(LinkLost::Delivery(e)),
        None => return Err(LinkLost::Cancelled),
    };
    while deliveries.len() < limit {
        match consumer.next().now_or_never() {
            Some(Some(Ok(d))) => deliveries.push(d),
            Some(Some(Err(e))) => return Err(LinkLost::Delivery(e)),
            _ => break,
        }
    }
    Ok(deliveries)
}

/// A batch's deliveries as the loop keeps them while the handler has them.
struct Taken {
    /// The delivery tag of its first delivery.
    first: u64,
    /// Each delivery's acker, in order.
    ackers: Vec<Acker>,
}

/// Acks the delivery of `acker` (`multiple`: and every earlier one not acked yet).
async fn ack(connection: &ConnectionStatus, acker: &Acker, multiple: bool) -> Result<(), LinkLost> {
    let mut ack = std::pin::pin!(acker.ack(BasicAckOptions { multiple }));
    let acked = loop {
        match tokio::time::timeout(BROKER_CALL_TIMEOUT, &mut ack).await {
            Ok(acked) => break acked,
            // Blocked by a resource alarm (this connection also publishes dead letters and
            // amqp actions): the ack goes out when the alarm clears.
            Err(_) if connection.blocked() => {}
            Err(_) => return Err(LinkLost::AckTimeout),
        }
    };
    match acked {
        Ok(true) => Ok(()),
        // After lapin's recovery an acker from before it answers false, not an error.
        Ok(false) => Err(LinkLost::AckNotDelivered),
        Err(e) => Err(LinkLost::Ack(e)),
    }
}

/// What the watchdog of one session looks at.
struct Watched {
    connection: ConnectionStatus,
    events: Pin<Box<dyn Stream<Item = lapin::Event> + Send>>,
    /// The consuming and publishing channels, whose status is checked.
    channels: Vec<Channel>,
    /// A channel of its own for the round trip and the depth, so they never wait behind a
    /// batch's publishes.
    probe: Channel,
    queue: ShortString,
    status: ConsumerStatus,
}

/// Returns, with the reason, as soon as the session's connection is known to be dead, having
/// said so on the status; meanwhile, every [`connection::PROBE_EVERY`], runs the liveness
/// round ([`connection::check`]) and reads the queue depth after each answered probe.
async fn watch(mut w: Watched) -> LinkLost {
    let mut tick = tokio::time::interval(connection::PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lost = loop {
        tokio::select! {
            event = w.events.next() => match event {
                Some(lapin::Event::Error(err)) => break LinkDown::Error(err).into(),
                None => break LinkLost::Closed,
                Some(_) => {}
            },
            _ = tick.tick() => match connection::check(&w.connection, &w.channels, &w.probe).await {
                Ok(Alive::Answered) => read_depth(&w.probe, &w.queue, &w.status.gauges.queue_depth).await,
                Ok(Alive::Blocked) => {}
                Err(down) => break down.into(),
            },
        }
    };
    w.status.not_consuming(NotConsuming::Lost(lost.clone()));
    lost
}

/// Sets the queue-depth gauge from a passive declare. Never a verdict on the link: a quorum
/// queue whose leader does not answer the broker in time is reported as 0 messages and 0
/// consumers, so an answer listing no consumer (there is at least this worker's) is unknown,
/// and the gauge keeps its last reading.
async fn read_depth(channel: &Channel, queue: &ShortString, depth: &Gauge) {
    let passive = QueueDeclareOptions {
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
        depth.set(i64::from(q.message_count()));
    }
}

/// Aborts the task when the session ends however it ends.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> ConsumerStatus {
        ConsumerStatus::new(Gauges {
            consuming: Gauge::default(),
            queue_depth: Gauge::default(),
        })
    }

    /// `/readyz` says `not consuming: ` and these; tests/it/worker.rs and operators read them.
    #[test]
    fn why_not_consuming_reads_as_before() {
        let s = status();
        assert!(!s.is_consuming());
        assert_eq!(s.why_not().to_string(), "not yet connected to the broker");

        s.consuming();
        assert!(s.is_consuming());
        assert_eq!(s.gauges.consuming.get(), 1);

        s.not_consuming(NotConsuming::Lost(LinkLost::Down(
            connection::ProbeError::Timeout.into(),
        )));
        assert!(!s.consuming_flag().load(Ordering::Relaxed));
        assert_eq!(s.gauges.consuming.get(), 0);
        assert_eq!(
            s.why_not().to_string(),
            "broker connection lost: the broker did not answer a probe within 10s"
        );
        // The cause is kept, not only its words.
        let why = s.why_not();
        let lost = why.source().map(ToString::to_string);
        assert_eq!(
            lost.as_deref(),
            Some("the broker did not answer a probe within 10s")
        );

        let refused = lapin::Error::from(std::io::Error::other("PRECONDITION_FAILED"));
        s.not_consuming(NotConsuming::Failed(SetupError::Topology(refused).into()));
        assert_eq!(
            s.why_not().to_string(),
            "cannot consume from the broker: the broker refused the topology \
             (a queue exists with other arguments?): IO error: PRECONDITION_FAILED"
        );
    }
}
