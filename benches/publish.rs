//! The ceiling: bare confirmed publishing of 500-byte persistent messages to a quorum queue
//! declared exactly as the listener declares it, with N confirms in flight on one channel.
//! `cargo bench --bench publish -- [--seconds 10] [--in-flight 64] [--channels 1]`
//! Prerequisite: RabbitMQ at `HOOKWARDEN_TEST_AMQP` (default amqp://guest:guest@127.0.0.1:5672/%2f).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hookwarden::broker::topology::{self, Topology};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds = arg("--seconds", 10);
    let in_flight = arg("--in-flight", 64);
    let channels = arg("--channels", 1).max(1);
    let url = std::env::var("HOOKWARDEN_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let t = Topology {
        exchange: format!("hwbench.{tag}"),
        exchange_type: None,
        queue: format!("hwbench.{tag}.events"),
        dead_letter_exchange: format!("hwbench.{tag}.dlx"),
        dead_letter_queue: format!("hwbench.{tag}.dead"),
        delivery_limit: 5,
        review_queue: None,
    };
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let setup = connection.create_channel().await?;
    topology::declare(&connection, &setup, &t).await?;
    let mut chans = Vec::new();
    for _ in 0..channels {
        let c = connection.create_channel().await?;
        c.confirm_select(ConfirmSelectOptions::default()).await?;
        chans.push(c);
    }
    let body = Arc::new(vec![b'x'; 500]);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..in_flight {
        let channel = chans[(i % channels) as usize].clone();
        let (body, done, failed) = (body.clone(), done.clone(), failed.clone());
        let exchange = ShortString::from(t.exchange.as_str());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let confirm = channel
                    .basic_publish(
                        exchange.clone(),
                        ShortString::from("bench.event"),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await;
                let ok = match confirm {
                    Ok(c) => matches!(c.await, Ok(Confirmation::Ack(None))),
                    Err(_) => false,
                };
                if ok { &done } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "bare confirmed publish: {n} messages in {elapsed:.1} s, {:.0} msg/s ({in_flight} in flight, {channels} channel(s), {} failed)",
        n as f64 / elapsed,
        failed.load(Ordering::Relaxed)
    );
    for q in [&t.queue, &t.dead_letter_queue] {
        let _ = setup
            .queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default())
            .await;
    }
    for e in [&t.exchange, &t.dead_letter_exchange] {
        let _ = setup
            .exchange_delete(
                ShortString::from(e.as_str()),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}
