//! Every row of design.md's HTTP table, answered by a running listener, with nothing
//! published for any refusal.

use std::time::{Duration, SystemTime};

use crate::harness::{Broker, DREGS, Harness, event, json, raw};
use http::{HeaderName, HeaderValue};

fn sig(value: &str) -> Vec<(HeaderName, HeaderValue)> {
    vec![(
        HeaderName::from_static("x-dregs-signature"),
        HeaderValue::from_str(value).unwrap(),
    )]
}

#[tokio::test]
async fn accepted_then_duplicate() {
    let l = Harness::new().start().await;
    let a = l.send("dregs", &event("evt_1")).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        json(&a),
        serde_json::json!({"status": "accepted", "id": "evt_1"})
    );
    let b = l.send("dregs", &event("evt_1")).await;
    assert_eq!(b.status, 200);
    assert_eq!(
        json(&b),
        serde_json::json!({"status": "duplicate", "id": "evt_1"})
    );
    let broker = Broker::connect().await;
    assert_eq!(broker.drain_ids(&l.names.queue).await, vec!["evt_1"]);
}

#[tokio::test]
async fn bad_requests_are_400_with_a_reason_and_publish_nothing() {
    let l = Harness::new().start().await;
    // Signed, but not JSON.
    let a = l.send("dregs", "not json").await;
    assert_eq!(a.status, 400);
    assert_eq!(json(&a)["code"], "invalid_json");
    // Signed JSON without an id: the pointer is named.
    let a = l.send("dregs", r#"{"type":"x"}"#).await;
    assert_eq!(a.status, 400);
    assert_eq!(json(&a)["error"], "no event id at /id");
    // An id over 255 bytes cannot be an AMQP message id.
    let long = event(&"x".repeat(256));
    let a = l.send("dregs", &long).await;
    assert_eq!(a.status, 400);
    assert_eq!(json(&a)["code"], "invalid_field");
    // A type that makes the routing key over 255 bytes.
    let body = format!(r#"{{"id":"e","type":"{}"}}"#, "t".repeat(250));
    let a = l.send("dregs", &body).await;
    assert_eq!(a.status, 400);
    // Malformed signature header: no prefix, not hex.
    let a = l
        .post("/hooks/dregs", &sig("deadbeef"), &event("evt_m"))
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(json(&a)["code"], "malformed_signature");
    let a = l
        .post("/hooks/dregs", &sig("sha256=zz"), &event("evt_m"))
        .await;
    assert_eq!(a.status, 400);
    let broker = Broker::connect().await;
    assert!(broker.drain_ids(&l.names.queue).await.is_empty());
}

#[tokio::test]
async fn unsigned_forged_and_stale_requests_are_401() {
    let stripe = r#"
name = "stripe"
scheme = "stripe"
secrets = ["whsec_test_stripe"]
"#;
    let l = Harness::new()
        .provider(DREGS)
        .provider(stripe)
        .start()
        .await;
    let body = event("evt_forged");
    let a = l.post("/hooks/dregs", &[], &body).await;
    assert_eq!(a.status, 401);
    assert_eq!(json(&a)["code"], "missing_signature");
    // Signed with another secret.
    let forged = format!("sha256={}", "0".repeat(64));
    let a = l.post("/hooks/dregs", &sig(&forged), &body).await;
    assert_eq!(a.status, 401);
    assert_eq!(json(&a)["code"], "mismatch");
    // Correctly signed, then the body changed.
    let headers = l.sign("dregs", body.as_bytes());
    let a = l
        .post("/hooks/dregs", &headers, &body.replace("22", "99"))
        .await;
    assert_eq!(a.status, 401);
    // Stripe signature from 10 minutes ago: a replay.
    let old = SystemTime::now() - Duration::from_secs(600);
    let headers = l.sign_at("stripe", body.as_bytes(), old);
    let a = l.post("/hooks/stripe", &headers, &body).await;
    assert_eq!(a.status, 401);
    assert_eq!(json(&a)["code"], "outside_window");
    // No error body carries the signature the listener expected.
    let headers = l.sign("dregs", body.as_bytes());
    let good = headers[0]
        .1
        .to_str()
        .unwrap()
        .trim_start_matches("sha256=")
        .to_owned();
    let a = l.post("/hooks/dregs", &sig(&forged), &body).await;
    assert!(!a.body.contains(&good));
    assert!(!a.body.contains("test-secret"));
    let broker = Broker::connect().await;
    assert!(broker.drain_ids(&l.names.queue).await.is_empty());
}

#[tokio::test]
async fn allowlists_check_the_peer_and_believe_only_trusted_proxies() {
    let allowed = r#"
name = "allowed"
scheme = "hmac-sha256"
secrets = ["s"]
signature_header = "X-Sig"
allow_ips = ["127.0.0.0/8"]
"#;
    let elsewhere = r#"
name = "elsewhere"
scheme = "hmac-sha256"
secrets = ["s"]
signature_header = "X-Sig"
allow_ips = ["203.0.113.0/24"]
"#;
    let l = Harness::new()
        .provider(allowed)
        .provider(elsewhere)
        .start()
        .await;
    assert_eq!(l.send("allowed", &event("evt_a")).await.status, 200);
    let a = l.send("elsewhere", &event("evt_b")).await;
    assert_eq!(a.status, 403);
    assert_eq!(json(&a)["code"], "forbidden");
    // An untrusted peer cannot talk its way in with X-Forwarded-For.
    let mut headers = l.sign("elsewhere", event("evt_c").as_bytes());
    headers.push((
        HeaderName::from_static("x-forwarded-for"),
        HeaderValue::from_static("203.0.113.5"),
    ));
    assert_eq!(
        l.post("/hooks/elsewhere", &headers, &event("evt_c"))
            .await
            .status,
        403
    );

    let trusting = Harness::new()
        .provider(elsewhere)
        .server("trusted_proxies", r#"["127.0.0.1"]"#)
        .start()
        .await;
    let mut headers = trusting.sign("elsewhere", event("evt_d").as_bytes());
    headers.push((
        HeaderName::from_static("x-forwarded-for"),
        HeaderValue::from_static("203.0.113.5"),
    ));
    assert_eq!(
        trusting
            .post("/hooks/elsewhere", &headers, &event("evt_d"))
            .await
            .status,
        200
    );
    let broker = Broker::connect().await;
    let msg = broker.get(&trusting.names.queue).await.expect("published");
    assert_eq!(
        crate::harness::header(&msg.delivery.properties, "x-source-ip").as_deref(),
        Some("203.0.113.5")
    );
}

#[tokio::test]
async fn unknown_routes_404_and_other_methods_405() {
    let l = Harness::new().start().await;
    let a = l.send_to_unknown().await;
    assert_eq!(a.status, 404);
    assert_eq!(json(&a)["code"], "unknown_provider");
    let a = l.post("/elsewhere", &[], "{}").await;
    assert_eq!(a.status, 404);
    let response = raw(
        l.addr,
        b"GET /hooks/dregs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    assert!(
        response.to_lowercase().contains("allow: post"),
        "{response}"
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_declared_or_chunked() {
    let l = Harness::new().server("max_body", "1024").start().await;
    // A huge declared length is refused before any body is sent.
    let response = raw(
        l.addr,
        b"POST /hooks/dregs HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    // A chunked body that grows past the limit.
    let mut request =
        b"POST /hooks/dregs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'x'; 0x200]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let response = raw(l.addr, &request, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    // Exactly at the limit is fine (it is then refused for its signature, not its size).
    let body = "x".repeat(1024);
    assert_eq!(l.post("/hooks/dregs", &[], &body).await.status, 401);
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let l = Harness::new()
        .server("header_timeout", "\"1s\"")
        .server("body_timeout", "\"1s\"")
        .start()
        .await;
    // Headers never finished: the connection is closed after the header timeout.
    let started = std::time::Instant::now();
    let response = raw(
        l.addr,
        b"POST /hooks/dregs HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "connection held {:?}",
        started.elapsed()
    );
    assert!(!response.contains("200"));
    // Body promised but never sent: 408.
    let response = raw(
        l.addr,
        b"POST /hooks/dregs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
        Duration::from_secs(10),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
}

#[tokio::test]
async fn no_broker_means_503_with_retry_after_and_not_ready() {
    // A port nothing listens on.
    let dead = crate::harness::free_addr();
    let l = Harness::new()
        .amqp("url", &format!("\"amqp://guest:guest@{dead}/%2f\""))
        .start()
        .await;
    let a = l.send("dregs", &event("evt_x")).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.headers["retry-after"], "5");
    assert_eq!(json(&a)["code"], "unavailable");
    let (status, _) = crate::harness::admin_get(&l.admin, "/readyz").await;
    assert_eq!(status, 503);
}

impl crate::harness::TestListener {
    async fn send_to_unknown(&self) -> hookwarden::cli::http_client::Answer {
        self.post("/hooks/nobody", &[], "{}").await
    }
}

#[tokio::test]
async fn oversized_headers_are_431_and_publish_nothing() {
    let l = Harness::new().start().await;
    let body = event("evt_big_header");
    let mut headers = l.sign("dregs", body.as_bytes());
    headers.push((
        HeaderName::from_static("x-padding"),
        HeaderValue::from_str(&"a".repeat(40 * 1024)).unwrap(),
    ));
    let a = l.post("/hooks/dregs", &headers, &body).await;
    assert_eq!(a.status, 431);
    assert_eq!(json(&a)["code"], "headers_too_large");
    let broker = Broker::connect().await;
    assert!(broker.drain_ids(&l.names.queue).await.is_empty());
}
