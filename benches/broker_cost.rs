//! What each part of a message costs RabbitMQ, measured: the same 500-byte events published,
//! confirmed, 64 in flight, by routes and property sets that differ in one thing at a time,
//! in interleaved rounds of one run, with the broker's CPU per message read from `/proc`.
//! The figures behind the message shape in the README's "AMQP contract".
//!
//!     cargo bench --bench broker_cost -- run [--rounds 3] [--secs 6]
//!
//! Prerequisite: RabbitMQ on this host (its CPU is read from its `beam.smp` process) at
//! `HOOKWARDEN_TEST_AMQP` (default amqp://guest:guest@127.0.0.1:5672/%2f). Declares its own
//! uniquely named exchanges and queues and deletes them afterwards.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hookwarden::broker::topology::{self, Topology};
use hookwarden::config::amqp::ExchangeType;
use hookwarden::envelope::Envelope;
use hookwarden::telemetry::trace::TraceContext;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn url() -> String {
    std::env::var("HOOKWARDEN_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// CPU ticks (user + system) of the broker's Erlang VM.
fn broker_ticks() -> anyhow::Result<u64> {
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        if !String::from_utf8_lossy(&cmdline).contains("beam.smp") {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat"))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit(')').next().unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        return Ok(ticks(11) + ticks(12));
    }
    anyhow::bail!("no beam.smp process on this host")
}

/// Where a variant publishes.
#[derive(Clone, Copy)]
enum Route {
    /// The default exchange, straight into a plain quorum queue.
    Plain,
    /// The default exchange, into a queue with the events queue's arguments.
    EventsQueue,
    /// The events exchange (fanout) bound to that queue.
    Fanout,
    /// A topic exchange with the `#` binding, bound to that queue.
    Topic,
}

/// The trace the published events name, as a provider's request would have given it.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Which properties a variant sets.
#[derive(Clone, Copy)]
enum Fields {
    /// `delivery_mode` only.
    Bare,
    /// What the listener publishes (`Envelope::properties`).
    Listener,
    /// What listeners published before issue 14: the same plus `app_id` and `x-received-at`.
    Before,
}

const VARIANTS: [(&str, Route, Fields); 6] = [
    (
        "bare, default exchange, plain quorum queue",
        Route::Plain,
        Fields::Bare,
    ),
    (
        "bare, default exchange, events queue arguments",
        Route::EventsQueue,
        Fields::Bare,
    ),
    ("bare, fanout exchange", Route::Fanout, Fields::Bare),
    (
        "listener's fields, fanout exchange",
        Route::Fanout,
        Fields::Listener,
    ),
    (
        "earlier fields, fanout exchange",
        Route::Fanout,
        Fields::Before,
    ),
    (
        "listener's fields, topic exchange",
        Route::Topic,
        Fields::Listener,
    ),
];

fn properties(fields: Fields, envelope: &Envelope) -> BasicProperties {
    match fields {
        Fields::Bare => BasicProperties::default().with_delivery_mode(2),
        Fields::Listener => envelope.properties(),
        Fields::Before => {
            let now = envelope.received_at;
            let mut headers = envelope.properties().headers().clone().unwrap_or_default();
            headers.insert(
                ShortString::from("x-received-at"),
                AMQPValue::LongString(LongString::from(
                    humantime::format_rfc3339_millis(now).to_string(),
                )),
            );
            envelope
                .properties()
                .with_app_id(ShortString::from("hookwarden-listener"))
                .with_headers(headers)
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "run") {
        // `cargo bench` with no mode: it needs a quiet host and a minute or two.
        println!("usage: broker_cost run [--rounds N] [--secs S]");
        return Ok(());
    }
    let rounds: usize = arg("--rounds").and_then(|r| r.parse().ok()).unwrap_or(3);
    let secs: u64 = arg("--secs").and_then(|s| s.parse().ok()).unwrap_or(6);
    let connection = Connection::connect(&url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let tag = format!(
        "hwcost{}",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis()
    );
    let topologies = [ExchangeType::Fanout, ExchangeType::Topic].map(|kind| Topology {
        exchange: format!("{tag}.{kind:?}").to_lowercase(),
        exchange_type: Some(kind),
        queue: format!("{tag}.events"),
        dead_letter_exchange: format!("{tag}.dlx"),
        dead_letter_queue: format!("{tag}.dead"),
        delivery_limit: 5,
        review_queue: None,
    });
    for t in &topologies {
        topology::declare(&connection, &channel, t).await?;
    }
    let plain = format!("{tag}.plain");
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(plain.as_str().into(), durable, quorum)
        .await?;

    let result = measure(&channel, &topologies, &plain, rounds, secs).await;
    for queue in [
        &plain,
        &topologies[0].queue,
        &topologies[0].dead_letter_queue,
    ] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [
        &topologies[0].exchange,
        &topologies[1].exchange,
        &topologies[0].dead_letter_exchange,
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
    result
}

async fn measure(
    channel: &Channel,
    topologies: &[Topology; 2],
    plain: &str,
    rounds: usize,
    secs: u64,
) -> anyhow::Result<()> {
    let hz = 100.0; // USER_HZ on Linux
    let mut figures: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    for round in 1..=rounds {
        for (i, &(name, route, fields)) in VARIANTS.iter().enumerate() {
            let (exchange, routing_key, queue) = match route {
                Route::Plain => (String::new(), plain.to_owned(), plain.to_owned()),
                Route::EventsQueue => (
                    String::new(),
                    topologies[0].queue.clone(),
                    topologies[0].queue.clone(),
                ),
                Route::Fanout => (
                    topologies[0].exchange.clone(),
                    "dregs.identity.scored".to_owned(),
                    topologies[0].queue.clone(),
                ),
                Route::Topic => (
                    topologies[1].exchange.clone(),
                    "dregs.identity.scored".to_owned(),
                    topologies[0].queue.clone(),
                ),
            };
            let before = broker_ticks()?;
            let started = Instant::now();
            let sent = publish_for(channel, &exchange, &routing_key, fields, secs).await?;
            let elapsed = started.elapsed().as_secs_f64();
            let ticks = broker_ticks()? - before;
            let rate = sent as f64 / elapsed;
            let cpu = ticks as f64 / hz * 1e6 / sent as f64;
            println!("round {round}: {name}: {rate:.0} msg/s, broker {cpu:.1} µs/msg");
            figures.entry(i).or_default().push((rate, cpu));
            channel
                .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                .await?;
        }
    }
    println!();
    println!("| route and fields | msg/s | broker CPU µs/msg |");
    println!("|---|---|---|");
    for (i, runs) in figures {
        let median = |pick: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(pick).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "| {} | {:.0} | {:.1} |",
            VARIANTS[i].0,
            median(|r| r.0),
            median(|r| r.1)
        );
    }
    Ok(())
}

/// Only a plain ack: lapin reports a returned (unroutable) message as an ack too.
fn taken(confirmation: Confirmation) -> anyhow::Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        other => anyhow::bail!("the broker did not take a message: {other:?}"),
    }
}

/// Publishes unique events for `secs` with 64 unconfirmed in flight; returns how many.
async fn publish_for(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    fields: Fields,
    secs: u64,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0usize;
    let filler = "x".repeat(400);
    while Instant::now() < deadline {
        while in_flight.len() < 64 {
            let id = format!("cost-{sent}");
            let body = format!(r#"{{"id":"{id}","type":"identity.scored","pad":"{filler}"}}"#);
            let envelope = Envelope::new(
                "dregs",
                id,
                "identity.scored".into(),
                "hmac-sha256",
                IpAddr::from([127, 0, 0, 1]),
                SystemTime::now(),
                Bytes::from(body),
            )?
            // Every message the listener publishes names its trace.
            .with_trace(TraceContext::from_headers(Some(TRACEPARENT), None));
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &envelope.body,
                    properties(fields, &envelope),
                )
                .await?;
            in_flight.push(confirm);
            sent += 1;
        }
        if let Some(confirmation) = in_flight.next().await {
            taken(confirmation?)?;
        }
    }
    while let Some(confirmation) = in_flight.next().await {
        taken(confirmation?)?;
    }
    Ok(sent)
}
