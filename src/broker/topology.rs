//! The exchanges and queues of design.md, declared idempotently by both daemons with this
//! one function, so their arguments can never differ (a mismatch closes the channel, 406).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::config::amqp::{AmqpConfig, ExchangeType};

/// Names and limits of the topology, taken from `[amqp]`.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Exchange events are published to.
    pub exchange: String,
    /// Its type as configured; `None`: as an existing exchange was declared, else fanout.
    pub exchange_type: Option<ExchangeType>,
    /// Quorum queue of events.
    pub queue: String,
    /// Fanout exchange for dead letters.
    pub dead_letter_exchange: String,
    /// Queue of dead letters.
    pub dead_letter_queue: String,
    /// `x-delivery-limit` of the events queue.
    pub delivery_limit: u32,
    /// The review queue, declared by the worker only (the listener never publishes to it).
    pub review_queue: Option<String>,
}

impl From<&AmqpConfig> for Topology {
    fn from(c: &AmqpConfig) -> Self {
        Self {
            exchange: c.exchange.clone(),
            exchange_type: c.exchange_type,
            queue: c.queue.clone(),
            dead_letter_exchange: c.dead_letter_exchange.clone(),
            dead_letter_queue: c.dead_letter_queue.clone(),
            delivery_limit: c.delivery_limit,
            review_queue: None,
        }
    }
}

impl Topology {
    /// The worker's topology: the shared one plus the review queue.
    pub fn for_worker(c: &AmqpConfig) -> Self {
        Self {
            review_queue: Some(c.review_queue.clone()),
            ..Self::from(c)
        }
    }
}

/// A queue or exchange name from `[amqp]` as AMQP wants it. Infallible because lengths were
/// checked when the config was loaded.
pub(crate) fn name(s: &str) -> ShortString {
    ShortString::try_new(s).unwrap_or_else(|_| ShortString::from(""))
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Arguments of the events queue, one line each with its reason.
pub fn events_queue_arguments(t: &Topology) -> FieldTable {
    let mut args = FieldTable::default();
    // Replicated, fsync'd on confirm: a confirmed event survives a broker node's crash.
    args.insert(name("x-queue-type"), text("quorum"));
    // Poison messages and rejected events go somewhere inspectable instead of vanishing.
    args.insert(
        name("x-dead-letter-exchange"),
        text(&t.dead_letter_exchange),
    );
    // RabbitMQ before 4.0 has no default limit, so a poison message would loop forever.
    args.insert(
        name("x-delivery-limit"),
        AMQPValue::LongLongInt(i64::from(t.delivery_limit)),
    );
    // The default (at-most-once) dead-lettering can lose a dead letter; this cannot.
    args.insert(name("x-dead-letter-strategy"), text("at-least-once"));
    // At-least-once dead-lettering requires reject-publish: a full queue nacks publishes
    // (the listener answers 503) rather than dropping the oldest event.
    args.insert(name("x-overflow"), text("reject-publish"));
    args
}

fn durable_quorum_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    // Dead letters are the evidence of what failed: keep them as durably as events.
    args.insert(name("x-queue-type"), text("quorum"));
    args
}

/// Declares exchanges, queues and bindings.
///
/// # Errors
/// Any broker refusal, e.g. a queue that exists with other arguments (406).
pub async fn declare(
    connection: &Connection,
    channel: &Channel,
    t: &Topology,
) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    declare_events_exchange(connection, channel, t, durable).await?;
    channel
        .exchange_declare(
            name(&t.dead_letter_exchange),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    let queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(
            name(&t.dead_letter_queue),
            queue,
            durable_quorum_arguments(),
        )
        .await?;
    channel
        .queue_bind(
            name(&t.dead_letter_queue),
            name(&t.dead_letter_exchange),
            name(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(name(&t.queue), queue, events_queue_arguments(t))
        .await?;
    channel
        .queue_bind(
            name(&t.queue),
            name(&t.exchange),
            name("#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    if let Some(review) = &t.review_queue {
        // Reached through the default exchange by its name, as the amqp action's default.
        channel
            .queue_declare(name(review), queue, durable_quorum_arguments())
            .await?;
    }
    Ok(())
}

/// Declares the events exchange as configured; with no type configured, an exchange of that
/// name that exists is used as it was declared (a deployment from before `fanout` became the
/// default keeps its `topic` exchange and starts without a 406), and a new one is `fanout`.
/// The existence check is a passive declare on a channel of its own: on a missing exchange
/// the broker closes the channel it was asked on.
async fn declare_events_exchange(
    connection: &Connection,
    channel: &Channel,
    t: &Topology,
    durable: ExchangeDeclareOptions,
) -> Result<(), lapin::Error> {
    let kind = match t.exchange_type {
        Some(kind) => kind,
        None => {
            let probe = connection.create_channel().await?;
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            };
            let found = probe
                .exchange_declare(
                    name(&t.exchange),
                    ExchangeKind::Fanout,
                    passive,
                    FieldTable::default(),
                )
                .await;
            if probe.status().connected() {
                let _ = probe.close(200, "OK".into()).await;
            }
            match found {
                Ok(()) => return Ok(()),
                Err(err) if is_not_found(&err) => ExchangeType::Fanout,
                Err(err) => return Err(err),
            }
        }
    };
    let kind = match kind {
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Topic => ExchangeKind::Topic,
    };
    channel
        .exchange_declare(name(&t.exchange), kind, durable, FieldTable::default())
        .await
}

/// Whether the broker answered 404 NOT_FOUND.
fn is_not_found(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND))
    )
}
