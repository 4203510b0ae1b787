//! Limits at the door: a provider sending three times its `rate_limit` for three seconds gets
//! about its limit accepted, the rest `429 rate_limited` with a `Retry-After`, nothing over the
//! limit in the queue, and another provider is not slowed down; connections beyond
//! `max_connections` wait in the backlog while one already open is still served.

use std::time::{Duration, Instant};

use crate::harness::{Broker, DREGS, Harness, admin_get, event, json};

/// 50 requests a second, bursts of 50.
const STORM: &str = r#"
name = "storm"
scheme = "hmac-sha256"
secrets = ["storm-secret"]
signature_header = "X-Storm-Signature"
prefix = "sha256="
rate_limit = { requests = 50, per = "1s", burst = 50 }
"#;

#[tokio::test]
async fn a_provider_over_its_rate_limit_gets_429_and_another_is_unaffected() {
    let l = Harness::new().provider(STORM).provider(DREGS).start().await;
    let (mut accepted, mut limited, mut calm) = (0u32, 0u32, 0u32);
    let mut retry_after = Vec::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / 150));
    // 150 a second, three times the limit, for three seconds; one in ten to the other provider.
    for n in 0..450 {
        tick.tick().await;
        let a = l.send("storm", &event(&format!("storm-{n}"))).await;
        match a.status.as_u16() {
            200 => accepted += 1,
            429 => {
                limited += 1;
                assert_eq!(json(&a)["code"], "rate_limited", "{}", a.body);
                let after = a
                    .headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("429 without a whole-seconds Retry-After: {a:?}"));
                retry_after.push(after);
            }
            other => panic!("storm request {n}: {other} {}", a.body),
        }
        if n % 10 == 0 {
            let a = l.send("dregs", &event(&format!("calm-{n}"))).await;
            assert_eq!(a.status, 200, "the other provider: {}", a.body);
            calm += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A full bucket, then 50 a second for as long as the storm lasted.
    let expected = 50.0 + 50.0 * elapsed;
    assert!(
        (f64::from(accepted) - expected).abs() <= expected * 0.1,
        "{accepted} accepted in {elapsed:.2} s, expected about {expected:.0}"
    );
    assert_eq!(accepted + limited, 450);
    assert!(retry_after.iter().all(|&s| s >= 1), "{retry_after:?}");
    // Nothing over the limit reached the queue: the accepted storm and the calm provider.
    let broker = Broker::connect().await;
    assert_eq!(
        broker.drain(&l.names.queue).await.len(),
        (accepted + calm) as usize
    );
    let (_, metrics) = admin_get(&l.admin, "/metrics").await;
    let line = format!(r#"hookwarden_requests_total{{provider="storm",status="429"}} {limited}"#);
    assert!(metrics.contains(&line), "missing {line:?} in\n{metrics}");
}

/// One request on an open connection (kept open): the status of the answer.
async fn request_on(
    stream: &mut tokio::net::TcpStream,
    l: &crate::harness::TestListener,
    id: &str,
) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = event(id);
    let mut head = format!(
        "POST /hooks/dregs HTTP/1.1\r\nhost: hookwarden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in l.sign("dregs", body.as_bytes()) {
        head.push_str(&format!("{}: {}\r\n", name, value.to_str().unwrap()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    // The answer's head, then as many body bytes as it says.
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "connection closed mid-answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut rest = vec![0u8; length];
    stream.read_exact(&mut rest).await.unwrap();
    head[9..12].parse().unwrap()
}

#[tokio::test]
async fn idle_connections_beyond_max_connections_wait_in_the_backlog() {
    let l = Harness::new()
        .server("max_connections", "50")
        .server("header_timeout", "\"1s\"")
        .start()
        .await;
    let addr = l.addr;
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(request_on(&mut kept, &l, "kept-1").await, 200);

    // max_connections + 200 sockets that never send a byte.
    // (Connected from tasks of their own: beyond the listen backlog a connect waits for the
    // kernel to retry its SYN, and the kept connection must not sit idle that long.)
    let idle: Vec<_> = (0..250)
        .map(|_| tokio::spawn(tokio::net::TcpStream::connect(addr)))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The connection already open is still served.
    assert_eq!(request_on(&mut kept, &l, "kept-2").await, 200);

    // A new one waits until idle ones time out (header_timeout) and free their places, then
    // is served.
    let started = Instant::now();
    let mut fresh = tokio::net::TcpStream::connect(addr).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), request_on(&mut fresh, &l, "fresh"))
        .await
        .expect("served once idle connections timed out");
    assert_eq!(status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "served after {:?}: the idle connections were all accepted",
        started.elapsed()
    );
    for connect in idle {
        connect.abort();
    }
}
