//! Worker benchmark helpers, one binary with three modes:
//! - `fill`: publishes N Dregs-style events (as the listener does) into an exchange, confirmed;
//! - `raw`: the ceiling, consuming N messages from a queue with manual multiple-acks and the
//!   worker's prefetch, doing nothing else, and printing msgs/s;
//! - `sink`: an HTTP server answering 200 and `{"age_days": 12}` to everything, as an `http`
//!   action's target and a lookup's service.
//!
//! `benches/worker.sh` drives them; run by hand with
//! `cargo bench --bench consume -- fill|raw|sink [--count N] [--exchange X] [--queue Q] [--port P]`.
//! Prerequisite: RabbitMQ at `HOOKWARDEN_TEST_AMQP` (default amqp://guest:guest@127.0.0.1:5672/%2f).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use hookwarden::broker::publisher::publish_confirmed;
use hookwarden::envelope::Envelope;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mode = std::env::args()
        .skip(1)
        .find(|a| ["fill", "raw", "sink"].contains(&a.as_str()));
    let count: usize = arg("--count")
        .and_then(|c| c.parse().ok())
        .unwrap_or(20_000);
    match mode.as_deref() {
        Some("fill") => {
            fill(
                &arg("--exchange").unwrap_or_else(|| "hookwarden".into()),
                count,
            )
            .await
        }
        Some("raw") => {
            raw(
                &arg("--queue").unwrap_or_else(|| "hookwarden.events".into()),
                count,
            )
            .await
        }
        Some("sink") => sink(arg("--port").and_then(|p| p.parse().ok()).unwrap_or(8089)).await,
        // `cargo bench` with no mode: nothing to do without a broker set up by worker.sh.
        _ => {
            println!("usage: consume fill|raw|sink (driven by benches/worker.sh)");
            Ok(())
        }
    }
}

async fn fill(exchange: &str, count: usize) -> anyhow::Result<()> {
    let connection = Connection::connect(&url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let exchange = ShortString::try_new(exchange)?;
    let started = Instant::now();
    let mut in_flight = Vec::new();
    for i in 0..count {
        let id = format!("bench-{i}");
        let body = format!(
            r#"{{"id":"{id}","type":"identity.scored","data":{{"identity_id":"usr_{}","scored_at":"2026-11-21T10:00:00Z","scores":{{"humanity":{},"uniqueness":61,"authenticity":48}}}}}}"#,
            i % 5000,
            i % 100
        );
        let envelope = Envelope::new(
            "dregs",
            id,
            "identity.scored".into(),
            "hmac-sha256",
            std::net::IpAddr::from([127, 0, 0, 1]),
            SystemTime::now(),
            Bytes::from(body),
        )?;
        let channel = channel.clone();
        let exchange = exchange.clone();
        in_flight.push(tokio::spawn(async move {
            publish_confirmed(
                &channel,
                exchange,
                envelope.routing_key.clone(),
                &envelope.body,
                envelope.properties(),
                Duration::from_secs(30),
            )
            .await
        }));
        if in_flight.len() >= 256 {
            for t in in_flight.drain(..) {
                t.await??;
            }
        }
    }
    for t in in_flight {
        t.await??;
    }
    println!(
        "filled {count} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

async fn raw(queue: &str, count: usize) -> anyhow::Result<()> {
    let connection = Connection::connect(&url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(256, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            ShortString::try_new(queue)?,
            ShortString::from("bench-raw"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut started = None;
    let mut n = 0;
    while n < count {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        let delivery = delivery?;
        started.get_or_insert_with(Instant::now);
        n += 1;
        // Ack in batches as the worker does: one multiple-ack per 64 deliveries.
        if n % 64 == 0 || n == count {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
    }
    let elapsed = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
    println!(
        "raw consume: {n} messages in {elapsed:.2} s, {:.0} msg/s (prefetch 256, multiple acks)",
        n as f64 / elapsed
    );
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

async fn sink(port: u16) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let served = served.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // JSON, so that it also answers a lookup (`[enrich.*]`); actions ignore it.
                async {
                    Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                        Bytes::from_static(br#"{"age_days": 12}"#),
                    )))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
