//! What reaches the queue: the body byte for byte, the properties and headers of the
//! contract, one message per event id however many times it is sent, and no 200 without a
//! confirmed, routed message.

use crate::harness::{Broker, Harness, event, header, json};
use lapin::options::QueueBindOptions;
use lapin::types::{FieldTable, ShortString};

#[tokio::test]
async fn the_queue_holds_the_bytes_sent_with_the_contract_properties() {
    let l = Harness::new().start().await;
    // Odd spacing, unicode and key order must survive untouched.
    let body = "{ \"type\":\"identity.scored\",  \"id\" : \"evt_bytes\", \"note\": \"caf\u{e9} \u{1f600}\" }\n";
    let a = l.send("dregs", body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let broker = Broker::connect().await;
    let msg = broker.get(&l.names.queue).await.expect("message published");
    assert_eq!(msg.delivery.data, body.as_bytes());
    assert_eq!(msg.delivery.routing_key.as_str(), "dregs.identity.scored");
    assert_eq!(msg.delivery.exchange.as_str(), l.names.exchange);
    let p = &msg.delivery.properties;
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str()),
        Some("evt_bytes")
    );
    assert_eq!(
        p.kind().as_ref().map(|s| s.as_str()),
        Some("identity.scored")
    );
    // Nothing the broker would decode for no reader (README "AMQP contract").
    assert_eq!(p.app_id(), &None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ts = p.timestamp().expect("timestamp set");
    assert!(now.abs_diff(ts) < 60, "timestamp {ts} vs now {now}");
    assert_eq!(header(p, "x-provider").as_deref(), Some("dregs"));
    assert_eq!(
        header(p, "x-signature-scheme").as_deref(),
        Some("hmac-sha256")
    );
    assert_eq!(header(p, "x-source-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(header(p, "x-received-at"), None);
    let mut names: Vec<String> = p
        .headers()
        .as_ref()
        .map(|h| h.inner().keys().map(|k| k.to_string()).collect())
        .unwrap_or_default();
    // The quorum queue adds its own count on delivery.
    names.retain(|n| n != "x-delivery-count");
    names.sort();
    assert_eq!(
        names,
        [
            "traceparent",
            "x-provider",
            "x-signature-scheme",
            "x-source-ip"
        ]
    );
    // The request had no traceparent: a trace of its own, sampled, the listener's span the parent.
    let trace = header(p, "traceparent").unwrap();
    let parts: Vec<&str> = trace.split('-').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [2, 32, 16, 2],
        "{trace}"
    );
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{trace}");
    assert!(broker.get(&l.names.queue).await.is_none());
}

#[tokio::test]
async fn fifty_concurrent_requests_with_one_id_publish_once() {
    let l = std::sync::Arc::new(Harness::new().start().await);
    let body = event("evt_concurrent");
    let headers = l.sign("dregs", body.as_bytes());
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (l, headers, body) = (l.clone(), headers.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            l.post("/hooks/dregs", &headers, &body).await
        }));
    }
    let mut statuses = std::collections::HashMap::<String, usize>::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        *statuses
            .entry(json(&a)["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(statuses.get("accepted"), Some(&1), "{statuses:?}");
    assert_eq!(statuses.get("duplicate"), Some(&49), "{statuses:?}");
    let broker = Broker::connect().await;
    assert_eq!(
        broker.drain_ids(&l.names.queue).await,
        vec!["evt_concurrent"]
    );
}

#[tokio::test]
async fn an_unroutable_event_is_503_and_its_retry_goes_through() {
    let l = Harness::new().start().await;
    let broker = Broker::connect().await;
    // With the queue unbound the exchange routes nowhere: the broker returns the message
    // and confirms it with an ack, which must not become a 200.
    broker
        .channel
        .queue_unbind(
            ShortString::from(l.names.queue.as_str()),
            ShortString::from(l.names.exchange.as_str()),
            ShortString::from("#"),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let a = l.send("dregs", &event("evt_returned")).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.headers.contains_key("retry-after"));
    broker
        .channel
        .queue_bind(
            ShortString::from(l.names.queue.as_str()),
            ShortString::from(l.names.exchange.as_str()),
            ShortString::from("#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // The failed id was not remembered, so the provider's retry is accepted.
    let a = l.send("dregs", &event("evt_returned")).await;
    assert_eq!(json(&a)["status"], "accepted");
    assert_eq!(broker.drain_ids(&l.names.queue).await, vec!["evt_returned"]);
}

#[tokio::test]
async fn events_published_while_others_wait_all_arrive() {
    // Many requests in flight at once over few channels: every 200 is a message.
    let l = std::sync::Arc::new(Harness::new().amqp("channels", "2").start().await);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("evt_many_{i}");
            (id.clone(), l.send("dregs", &event(&id)).await.status)
        }));
    }
    let mut sent = Vec::new();
    for t in tasks {
        let (id, status) = t.await.unwrap();
        assert_eq!(status, 200);
        sent.push(id);
    }
    let broker = Broker::connect().await;
    let mut got = broker.drain_ids(&l.names.queue).await;
    sent.sort();
    got.sort();
    assert_eq!(got, sent);
}

/// The events exchange's type as the broker has it.
fn exchange_type(name: &str) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_exchanges", "name", "type"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(n, _)| *n == name)
        .map(|(_, kind)| kind.trim().to_owned())
        .unwrap_or_else(|| format!("no exchange {name}"))
}

#[tokio::test]
async fn a_new_events_exchange_is_fanout_unless_the_config_says_topic() {
    let fanout = Harness::new().start().await;
    assert_eq!(exchange_type(&fanout.names.exchange), "fanout");
    let topic = Harness::new()
        .amqp("exchange_type", "\"topic\"")
        .start()
        .await;
    assert_eq!(exchange_type(&topic.names.exchange), "topic");
    let a = topic.send("dregs", &event("evt_topic")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let broker = Broker::connect().await;
    assert_eq!(
        broker.drain_ids(&topic.names.queue).await,
        vec!["evt_topic"]
    );
}

#[tokio::test]
async fn a_topic_exchange_of_an_earlier_version_is_used_as_it_was_declared() {
    // An upgrade: the exchange exists as `topic`, as every version before fanout declared
    // it, and the config names no type. The listener starts (no 406) and routes through it.
    let names = crate::harness::Names::new();
    let broker = Broker::connect().await;
    broker
        .channel
        .exchange_declare(
            ShortString::from(names.exchange.as_str()),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let l = Harness::new().start_with_names(names).await;
    let a = l.send("dregs", &event("evt_upgraded")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(broker.drain_ids(&l.names.queue).await, vec!["evt_upgraded"]);
    assert_eq!(exchange_type(&l.names.exchange), "topic");
}
