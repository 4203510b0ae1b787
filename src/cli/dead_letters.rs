//! `hookwarden dead-letters list|replay`: the dead-letter queue of the worker's rules file.
//!
//! Both take messages with `basic.get` and manual acknowledgement, so every message taken
//! stays the broker's until acked: `list` acks none, and closing the channel at the end
//! hands them all back (as does the connection dropping, should this command die).
//! `basic.get` rather than a consumer, because it answers "empty" when the queue is, where a
//! consumer would need a timeout to decide it has seen everything.
//!
//! Order: a quorum queue puts returned messages at its back (RabbitMQ 3.x), so returning
//! only the first N would move them behind the rest. Both commands therefore take every
//! message in the queue when they start, even past `--limit`, and return the ones they keep
//! together, in delivery order: the queue's contents and order are what they were. (A dead
//! letter arriving while the command runs ends up ahead of them.)
//!
//! Each read counts as a delivery: quorum queues raise `x-delivery-count` (4.3+:
//! `x-acquired-count`), shown as `reads`. RabbitMQ 4.0 to 4.2 drop a quorum-queue message
//! after 20 deliveries unless the queue's delivery limit is raised or disabled (policy
//! `delivery-limit: -1`), so `list` warns when a message has been read often.
//!
//! `replay` publishes each chosen message back to the events exchange (`[amqp] exchange`)
//! with its original routing key (`x-hookwarden-routing-key`, else the one it was
//! dead-lettered with) and properties, minus the headers describing its dead-lettering
//! (`x-hookwarden-*`, `x-death`, `x-first-death-*`, `x-last-death-*`, `x-delivery-count`,
//! `x-acquired-count`), on a confirm channel; only after the broker confirms it is the dead
//! letter acked (removed). What is not replayed, or whose publish is not confirmed, stays.
//! Only the messages in the queue when the command starts are looked at, so one that fails
//! again and is dead-lettered anew during a replay is not picked up a second time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use clap::{ArgGroup, Args, Subcommand};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::Serialize;

use crate::broker::publisher::publish_confirmed;
use crate::cli::out;
use crate::config::amqp::redact;
use crate::envelope::{
    HEADER_DEAD_ACTION, HEADER_DEAD_ERROR, HEADER_DEAD_ROUTING_KEY, HEADER_DEAD_RULE,
    HEADER_PROVIDER, HEADER_RECEIVED_AT,
};
use crate::worker::config::WorkerConfig;

/// Bound on connecting and on each broker round trip.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Reads after which `list` warns: RabbitMQ 4.0 to 4.2 drop a message at 20 by default.
const READS_WARNING: i64 = 10;

/// Arguments of `hookwarden dead-letters`.
#[derive(Args)]
pub struct DeadLettersArgs {
    /// The worker's rules file (its `[amqp]` names the broker and the queues).
    #[arg(long, global = true, default_value = "/etc/hookwarden/rules.toml")]
    pub rules: std::path::PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: DeadLettersCommand,
}

/// `list` or `replay`.
#[derive(Subcommand)]
pub enum DeadLettersCommand {
    /// Show dead letters oldest first, leaving every one in the queue.
    #[command(
        after_help = "Example: hookwarden dead-letters --rules /etc/hookwarden/rules.toml list --limit 20

Messages are read unacknowledged and handed back when the command ends, in their order.
Age is the time since the listener received the event (x-received-at)."
    )]
    List {
        /// Most messages shown.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the messages as JSON (an array).
        #[arg(long)]
        json: bool,
    },
    /// Republish dead letters to the events exchange with their original routing key; each
    /// is removed from the dead-letter queue only once the broker has confirmed it.
    #[command(
        group(ArgGroup::new("which").required(true).args(["id", "all"])),
        after_help = "Example: hookwarden dead-letters --rules /etc/hookwarden/rules.toml replay --id evt_01JD8Q6W3M4X9T2R7K5N0P1Q8S

Exit status: 0 everything chosen was replayed, 1 something was not (it stays in the
queue) or an --id was not found, 64 bad input."
    )]
    Replay {
        /// Replay the dead letters with this message (event) id; repeatable.
        #[arg(long)]
        id: Vec<String>,
        /// Replay every dead letter in the queue.
        #[arg(long)]
        all: bool,
        /// Show what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// One dead letter as listed.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The event id (AMQP message id).
    pub message_id: Option<String>,
    /// `x-provider`.
    pub provider: Option<String>,
    /// The routing key a replay uses.
    pub routing_key: String,
    /// `x-hookwarden-error`, or the broker's reason (`x-death`) when it dead-lettered it.
    pub error: Option<String>,
    /// `x-hookwarden-rule`.
    pub rule: Option<String>,
    /// `x-hookwarden-action`.
    pub action: Option<String>,
    /// `x-received-at`, else the timestamp property (RFC 3339).
    pub received_at: Option<String>,
    /// Seconds since `received_at`.
    pub age_seconds: Option<u64>,
    /// Times the message has been read from the dead-letter queue before
    /// (`x-acquired-count`, else `x-delivery-count`).
    pub reads: Option<i64>,
    /// Body size in bytes.
    pub bytes: usize,
}

fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(name)
}

fn text(value: Option<&AMQPValue>) -> Option<String> {
    match value? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn integer(value: Option<&AMQPValue>) -> Option<i64> {
    match value? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// The broker's own reason from the newest `x-death` entry (`delivery_limit`, `rejected`…),
/// for a message the events queue dead-lettered rather than the worker.
fn death_reason(props: &BasicProperties) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = header(props, "x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let reason = text(first.inner().get("reason"))?;
    let queue = text(first.inner().get("queue")).unwrap_or_default();
    Some(format!(
        "dead-lettered by the broker from {queue}: {reason}"
    ))
}

impl DeadLetter {
    /// Reads the headers of a delivery from the dead-letter queue.
    pub fn from_delivery(d: &Delivery, now: SystemTime) -> Self {
        let p = &d.properties;
        let received = text(header(p, HEADER_RECEIVED_AT))
            .and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
            .or_else(|| p.timestamp().map(|s| UNIX_EPOCH + Duration::from_secs(s)));
        Self {
            message_id: p.message_id().as_ref().map(ToString::to_string),
            provider: text(header(p, HEADER_PROVIDER)),
            routing_key: routing_key(d),
            error: text(header(p, HEADER_DEAD_ERROR)).or_else(|| death_reason(p)),
            rule: text(header(p, HEADER_DEAD_RULE)),
            action: text(header(p, HEADER_DEAD_ACTION)),
            received_at: received.map(|t| humantime::format_rfc3339_millis(t).to_string()),
            age_seconds: received
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| d.as_secs()),
            reads: integer(header(p, "x-acquired-count"))
                .or_else(|| integer(header(p, "x-delivery-count"))),
            bytes: d.data.len(),
        }
    }

    fn line(&self) -> String {
        let mut out = format!(
            "{}  provider {}  routing key {}",
            self.message_id.as_deref().unwrap_or("(no id)"),
            self.provider.as_deref().unwrap_or("?"),
            self.routing_key
        );
        if let Some(age) = self.age_seconds {
            out.push_str(&format!(
                "  age {}",
                humantime::format_duration(Duration::from_secs(age))
            ));
        }
        if let Some(n) = self.reads.filter(|&n| n > 0) {
            out.push_str(&format!("  reads {n}"));
        }
        out
    }
}

/// The routing key the event was published with: the worker's header, else the routing key
/// it reached the dead-letter queue with (the broker keeps it when it dead-letters).
fn routing_key(d: &Delivery) -> String {
    text(header(&d.properties, HEADER_DEAD_ROUTING_KEY))
        .unwrap_or_else(|| d.routing_key.to_string())
}

/// Whether a header describes the message's dead-lettering rather than the event.
fn dead_letter_header(name: &str) -> bool {
    name.starts_with("x-hookwarden-")
        || name == "x-death"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
        || name == "x-delivery-count"
        || name == "x-acquired-count"
}

/// The properties a replay publishes with: the original ones minus dead-letter headers.
pub fn replay_properties(props: &BasicProperties) -> BasicProperties {
    let headers: FieldTable = props
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(k, _)| !dead_letter_header(k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into()
        })
        .unwrap_or_default();
    props.clone().with_headers(headers)
}

/// An open connection with a channel holding what it took.
struct Session {
    connection: Connection,
    channel: Channel,
    queue: ShortString,
}

async fn within<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(BROKER_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow!("{what}: {e}")),
        Err(_) => Err(anyhow!("{what}: no answer within {BROKER_TIMEOUT:?}")),
    }
}

impl Session {
    /// Connects to the first `[amqp] url` and checks the dead-letter queue exists, without
    /// declaring anything: an inspection tool must not create queues.
    async fn open(config: &WorkerConfig) -> anyhow::Result<(Self, u32)> {
        let url = config
            .amqp
            .url
            .first()
            .ok_or_else(|| anyhow!("[amqp] url is empty"))?;
        let props = ConnectionProperties::default().with_connection_name("hookwarden-cli".into());
        let connection = within(
            &format!("cannot connect to {}", redact(url)),
            Connection::connect(url, props),
        )
        .await?;
        let channel = within("cannot open a channel", connection.create_channel()).await?;
        let queue = ShortString::try_new(config.amqp.dead_letter_queue.as_str())
            .map_err(|e| anyhow!("[amqp] dead_letter_queue: {e}"))?;
        let declared = within(
            &format!(
                "no dead-letter queue {:?} on the broker (has the worker or listener run?)",
                config.amqp.dead_letter_queue
            ),
            channel.queue_declare(
                queue.clone(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        Ok((
            Self {
                connection,
                channel,
                queue,
            },
            declared.message_count(),
        ))
    }

    /// Takes up to `max` messages, unacked, oldest first, and hands each to `keep`.
    async fn take(&self, max: u32, mut keep: impl FnMut(Delivery)) -> anyhow::Result<()> {
        for _ in 0..max {
            let got = within(
                "reading the dead-letter queue",
                self.channel
                    .basic_get(self.queue.clone(), BasicGetOptions { no_ack: false }),
            )
            .await?;
            match got {
                Some(m) => keep(m.delivery),
                None => break,
            }
        }
        Ok(())
    }

    /// Closes the channel, which hands every unacked message back to the queue in order.
    async fn close(self) {
        let _ = within(
            "closing the channel",
            self.channel.close(200, "done".into()),
        )
        .await;
        let _ = within(
            "closing the connection",
            self.connection.close(200, "done".into()),
        )
        .await;
    }
}

/// `list`: the first `limit` dead letters, and how many there are; all left in the queue.
///
/// # Errors
/// The broker cannot be reached or the queue read.
pub async fn list(config: &WorkerConfig, limit: usize) -> anyhow::Result<(Vec<DeadLetter>, u32)> {
    let (session, count) = Session::open(config).await?;
    let now = SystemTime::now();
    let mut letters = Vec::new();
    // Every message is taken (see the module doc on order); only the first `limit` are
    // kept as views, and no body is held.
    let result = session
        .take(count, |d| {
            if letters.len() < limit {
                letters.push(DeadLetter::from_delivery(&d, now));
            }
        })
        .await;
    session.close().await;
    result?;
    Ok((letters, count))
}

/// Text of `list`.
pub fn list_text(letters: &[DeadLetter], count: u32, queue: &str) -> String {
    if letters.is_empty() {
        return format!("no dead letters in {queue}\n");
    }
    let mut out = String::new();
    for l in letters {
        out.push_str(&l.line());
        out.push('\n');
        let mut why = Vec::new();
        if let Some(rule) = &l.rule {
            why.push(format!("rule {rule}"));
        }
        if let Some(action) = &l.action {
            why.push(format!("action {action}"));
        }
        if let Some(error) = &l.error {
            why.push(format!("error: {error}"));
        }
        if !why.is_empty() {
            out.push_str(&format!("  {}\n", why.join("  ")));
        }
    }
    out.push_str(&format!(
        "{} of {count} dead letter(s) in {queue} shown; all left in the queue\n",
        letters.len()
    ));
    if let Some(most) = letters.iter().filter_map(|l| l.reads).max()
        && most >= READS_WARNING
    {
        out.push_str(&format!(
            "warning: a dead letter has been read {most} times; RabbitMQ 4.0 to 4.2 drop \
             quorum-queue messages after 20 deliveries unless {queue} has a policy with \
             delivery-limit -1\n"
        ));
    }
    out
}

/// What `replay` did.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Republished (or, with `--dry-run`, would be) and removed.
    pub replayed: Vec<DeadLetter>,
    /// Chosen but left in the queue, with why.
    pub failed: Vec<(DeadLetter, String)>,
    /// `--id`s not found among the dead letters.
    pub missing: Vec<String>,
    /// Dead letters in the queue when the command started.
    pub seen: usize,
}

impl Replayed {
    /// Whether everything asked for was replayed.
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.missing.is_empty()
    }

    /// Text of `replay`.
    pub fn text(&self, dry_run: bool, queue: &str) -> String {
        let verb = if dry_run { "would replay" } else { "replayed" };
        let mut out = String::new();
        for l in &self.replayed {
            out.push_str(&format!("{verb} {}\n", l.line()));
        }
        for (l, why) in &self.failed {
            out.push_str(&format!("not replayed {}: {why}\n", l.line()));
        }
        for id in &self.missing {
            out.push_str(&format!("no dead letter with id {id:?} in {queue}\n"));
        }
        let left = self.seen - if dry_run { 0 } else { self.replayed.len() };
        out.push_str(&format!(
            "{verb} {} of {} dead letter(s); {left} left in {queue}\n",
            self.replayed.len(),
            self.seen
        ));
        out
    }
}

/// `replay`: republishes the chosen dead letters (`ids`, or all when empty) and removes
/// each once confirmed.
///
/// # Errors
/// The broker cannot be reached or the queue read; a publish that fails is reported in
/// [`Replayed::failed`] instead, and its dead letter stays.
pub async fn replay(
    config: &WorkerConfig,
    ids: &[String],
    dry_run: bool,
) -> anyhow::Result<Replayed> {
    let (session, count) = Session::open(config).await?;
    // Replaying the whole queue can take a while: its progress shows on a terminal.
    let progress = crate::cli::progress::bar(
        Some(u64::from(count)),
        "replaying dead letters",
        !ids.is_empty() || dry_run,
    );
    let result = replay_in(config, &session, count, ids, dry_run, progress.as_ref()).await;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    session.close().await;
    result
}

async fn replay_in(
    config: &WorkerConfig,
    session: &Session,
    count: u32,
    ids: &[String],
    dry_run: bool,
    progress: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<Replayed> {
    let publisher = within("cannot open a channel", session.connection.create_channel()).await?;
    within(
        "cannot enable publisher confirms",
        publisher.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    let exchange = ShortString::try_new(config.amqp.exchange.as_str())
        .map_err(|e| anyhow!("[amqp] exchange: {e}"))?;
    // Only what is there now: a replay that fails again is dead-lettered behind these.
    let mut taken = Vec::new();
    session.take(count, |d| taken.push(d)).await?;
    let now = SystemTime::now();
    let mut out = Replayed {
        seen: taken.len(),
        ..Replayed::default()
    };
    let mut found = vec![false; ids.len()];
    for d in &taken {
        if let Some(bar) = progress {
            bar.inc(1);
        }
        let letter = DeadLetter::from_delivery(d, now);
        let id = letter.message_id.as_deref().unwrap_or_default();
        let chosen = ids.is_empty() || {
            let mut hit = false;
            for (i, want) in ids.iter().enumerate() {
                if want == id {
                    found[i] = true;
                    hit = true;
                }
            }
            hit
        };
        if !chosen {
            continue;
        }
        if dry_run {
            out.replayed.push(letter);
            continue;
        }
        let Ok(routing_key) = ShortString::try_new(letter.routing_key.as_str()) else {
            out.failed
                .push((letter, "routing key longer than 255 bytes".to_owned()));
            continue;
        };
        let published = publish_confirmed(
            &publisher,
            exchange.clone(),
            routing_key,
            &d.data,
            replay_properties(&d.properties),
            BROKER_TIMEOUT,
        )
        .await;
        if let Err(e) = published {
            out.failed
                .push((letter, format!("publish not confirmed: {e}")));
            continue;
        }
        match within("ack", d.acker.ack(BasicAckOptions::default())).await {
            Ok(true) => out.replayed.push(letter),
            // Published but still queued: a second replay would publish it again, which
            // the worker skips as a duplicate once it has decided the event.
            Ok(false) => out.failed.push((
                letter,
                "replayed, but the channel closed before the dead letter was removed".to_owned(),
            )),
            Err(e) => out.failed.push((
                letter,
                format!("replayed, but the dead letter was not removed: {e}"),
            )),
        }
    }
    out.missing = ids
        .iter()
        .zip(found)
        .filter(|(_, f)| !f)
        .map(|(id, _)| id.clone())
        .collect();
    let _ = within("closing the channel", publisher.close(200, "done".into())).await;
    Ok(out)
}

/// Runs `dead-letters` on a runtime of its own; returns whether it succeeded.
///
/// # Errors
/// The broker cannot be reached or the queue read.
pub fn run(config: &WorkerConfig, command: &DeadLettersCommand) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let queue = &config.amqp.dead_letter_queue;
    match command {
        DeadLettersCommand::List { limit, json } => {
            let (letters, count) = runtime.block_on(list(config, *limit))?;
            if *json {
                out::println(&serde_json::to_string_pretty(&letters)?);
            } else {
                out::print(&list_text(&letters, count, queue));
            }
            Ok(true)
        }
        DeadLettersCommand::Replay { id, all, dry_run } => {
            // clap makes --id and --all exclusive and one required; an empty list is --all.
            let ids: &[String] = if *all { &[] } else { id };
            let done = runtime.block_on(replay(config, ids, *dry_run))?;
            out::print(&done.text(*dry_run, queue));
            Ok(done.ok())
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

    use super::replay_properties;

    #[test]
    fn replays_keep_the_event_and_drop_the_dead_lettering() {
        let mut headers = FieldTable::default();
        for name in [
            "x-provider",
            "x-received-at",
            "x-hookwarden-error",
            "x-hookwarden-rule",
            "x-hookwarden-routing-key",
            "x-first-death-queue",
            "x-last-death-reason",
            "x-delivery-count",
            "x-acquired-count",
        ] {
            headers.insert(
                ShortString::from(name),
                AMQPValue::LongString(LongString::from("v")),
            );
        }
        headers.insert(
            ShortString::from("x-death"),
            AMQPValue::FieldArray(FieldArray::from(Vec::new())),
        );
        let props = BasicProperties::default()
            .with_message_id(ShortString::from("evt_1"))
            .with_timestamp(7)
            .with_headers(headers);
        let replayed = replay_properties(&props);
        let kept: Vec<&str> = replayed
            .headers()
            .as_ref()
            .map(|h| h.inner().keys().map(|k| k.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(kept, ["x-provider", "x-received-at"]);
        assert_eq!(replayed.message_id(), props.message_id());
        assert_eq!(replayed.timestamp(), &Some(7));
    }
}
