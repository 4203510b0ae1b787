//! Hostile input against a running listener: slow and idle connections, oversized and
//! contradictory framing, pathological JSON and signature headers, replays and foreign
//! secrets. Each test checks the answer, that good traffic is served meanwhile, that only
//! the good events reach the queue, and that no error body carries a secret or the
//! signature the listener expected.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hookwarden::cli::http_client::{self, Answer};
use hookwarden::listener::config::ListenerConfig;
use hookwarden::listener::error::RequestError;
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Broker, DREGS, Harness, TestListener, event, json, raw};

/// The secret of [`DREGS`].
const DREGS_SECRET: &str = "test-secret";

const STRIPE_SECRET: &str = "whsec_hostile_stripe";
const STRIPE: &str = r#"
name = "stripe"
scheme = "stripe"
secrets = ["whsec_hostile_stripe"]
"#;

const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STANDARD: &str = r#"
name = "rewards"
scheme = "standard-webhooks"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
"#;

/// A second hmac provider with the same header as dregs but its own secret.
const OTHER_SECRET: &str = "other-provider-secret";
const OTHER: &str = r#"
name = "other"
scheme = "hmac-sha256"
secrets = ["other-provider-secret"]
signature_header = "X-Dregs-Signature"
prefix = "sha256="
"#;

const SECRETS: &[&str] = &[DREGS_SECRET, STRIPE_SECRET, STANDARD_SECRET, OTHER_SECRET];

/// A good signed event is accepted now.
async fn serves(l: &TestListener, id: &str) {
    let a = l.send("dregs", &event(id)).await;
    assert_eq!(a.status, 200, "good event {id} refused: {}", a.body);
    assert_eq!(json(&a)["status"], "accepted", "{}", a.body);
}

/// The queue holds exactly `good` (in any order): nothing hostile was published.
async fn published_exactly(l: &TestListener, good: &[&str]) {
    let broker = Broker::connect().await;
    let mut got = broker.drain_ids(&l.names.queue).await;
    got.sort();
    let mut want: Vec<String> = good.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(
        got, want,
        "queue holds something other than the good events"
    );
}

/// No configured secret, no signature in `expected`, and no run of hex or base64 long enough
/// to be a tag appears in `text`.
fn assert_clean(text: &str, expected: &[String]) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "answer leaks a secret: {text}");
    }
    for sig in expected {
        assert!(!text.contains(sig.as_str()), "answer leaks {sig}: {text}");
    }
    let longest_run = |keep: fn(char) -> bool| {
        text.split(|c: char| !keep(c))
            .map(str::len)
            .max()
            .unwrap_or(0)
    };
    assert!(
        longest_run(|c| c.is_ascii_hexdigit()) < 32,
        "answer carries a tag-like hex run: {text}"
    );
    assert!(
        longest_run(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/') < 40,
        "answer carries a tag-like base64 run: {text}"
    );
}

/// The signature values the listener would have accepted for `body` right now, as sent.
fn expected_signatures(l: &TestListener, provider: &str, body: &[u8]) -> Vec<String> {
    l.sign(provider, body)
        .iter()
        .filter(|(n, _)| n.as_str().contains("signature"))
        .flat_map(|(_, v)| {
            let v = v.to_str().unwrap().to_owned();
            // The bare tags as well as the whole header value.
            let tags: Vec<String> = v
                .split([',', ' '])
                .map(|p| p.trim_start_matches("v1=").trim_start_matches("sha256="))
                .filter(|p| p.len() >= 32)
                .map(str::to_owned)
                .collect();
            std::iter::once(v).chain(tags)
        })
        .collect()
}

/// An error answer: `status`, the `code`, and a clean body.
fn refused(a: &Answer, status: u16, code: &str, expected: &[String]) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(json(a)["code"], code, "{}", a.body);
    assert_clean(&a.body, expected);
}

/// POSTs arbitrary bytes to `path`.
async fn post_bytes(
    l: &TestListener,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    body: Vec<u8>,
) -> Answer {
    http_client::post(&format!("{}{path}", l.base), headers, Bytes::from(body))
        .await
        .unwrap()
}

/// `body` signed by `provider` and posted to its route.
async fn send_bytes(l: &TestListener, provider: &str, body: Vec<u8>) -> Answer {
    let headers = l.sign(provider, &body);
    post_bytes(l, &format!("/hooks/{provider}"), &headers, body).await
}

/// A raw HTTP/1.1 POST to `/hooks/{provider}` with `headers`, `extra` header lines and `body`.
fn raw_post(
    provider: &str,
    headers: &[(HeaderName, HeaderValue)],
    extra: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("POST /hooks/{provider} HTTP/1.1\r\nHost: x\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// What a connection got back, and whether the server closed it.
struct Outcome {
    response: String,
    closed: bool,
}

/// Reads until the server closes or `wait` passes.
async fn read_until_closed(stream: &mut tokio::net::tcp::OwnedReadHalf, wait: Duration) -> Outcome {
    let mut buf = Vec::new();
    // EOF or a reset: either way the server has let go of the connection.
    let closed = tokio::time::timeout(wait, stream.read_to_end(&mut buf))
        .await
        .is_ok();
    Outcome {
        response: String::from_utf8_lossy(&buf).into_owned(),
        closed,
    }
}

#[tokio::test]
async fn headers_sent_a_byte_a_second_are_cut_off_while_good_traffic_is_served() {
    let l = Harness::new()
        .server("header_timeout", "\"1s\"")
        .start()
        .await;
    let body = event("evt_slow_head");
    let request = raw_post(
        "dregs",
        &l.sign("dregs", body.as_bytes()),
        &format!("Content-Length: {}\r\n", body.len()),
        body.as_bytes(),
    );
    let stream = TcpStream::connect(l.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let first_byte = started.clone();
    let slowloris = tokio::spawn(async move {
        let mut sent = 0;
        let mut got = Vec::new();
        // Bounded: at most 10 bytes, one a second; the server should close after ~1 s.
        let mut closed = false;
        for byte in request.iter().take(10) {
            if write.write_all(&[*byte]).await.is_err() {
                closed = true;
                break;
            }
            sent += 1;
            first_byte.notify_one();
            // EOF or a reset within the second: closed. Timeout or data: go on.
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_secs(1), read.read_buf(&mut got)).await
            {
                closed = true;
                break;
            }
        }
        first_byte.notify_one();
        (sent, closed, String::from_utf8_lossy(&got).into_owned())
    });
    // Good traffic while the slow head is in progress: once its first byte is out.
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the slow head's first byte written, or its connection closed, within 5 s");
    serves(&l, "evt_during_slow_head").await;
    let (sent, closed, response) = slowloris.await.unwrap();
    assert!(
        closed,
        "connection still open after {sent} bytes at one a second"
    );
    assert!(
        sent <= 4,
        "header_timeout is 1s, yet {sent} bytes a second apart were taken"
    );
    // hyper closes without an answer on a header timeout.
    assert!(!response.contains(" 200 "), "{response}");
    serves(&l, "evt_after_slow_head").await;
    published_exactly(&l, &["evt_during_slow_head", "evt_after_slow_head"]).await;
}

#[tokio::test]
async fn a_body_trickled_slowly_is_408_after_body_timeout() {
    let l = Harness::new()
        .server("body_timeout", "\"1s\"")
        .start()
        .await;
    let body = event("evt_trickled");
    let expected = expected_signatures(&l, "dregs", body.as_bytes());
    let head = raw_post(
        "dregs",
        &l.sign("dregs", body.as_bytes()),
        &format!("Content-Length: {}\r\n", body.len()),
        b"",
    );
    let stream = TcpStream::connect(l.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(&head).await.unwrap();
    let bytes = body.clone().into_bytes();
    let trickle = tokio::spawn(async move {
        // A byte every 200 ms keeps the connection busy without ever finishing in 1 s.
        for byte in bytes.iter().take(25) {
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
            // The trickle's pace is what the test is about, not a wait.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    serves(&l, "evt_during_trickle").await;
    let outcome = read_until_closed(&mut read, Duration::from_secs(10)).await;
    trickle.abort();
    assert!(
        outcome.response.starts_with("HTTP/1.1 408"),
        "{}",
        outcome.response
    );
    assert!(
        outcome.response.contains("\"body_timeout\""),
        "{}",
        outcome.response
    );
    assert_clean(&outcome.response, &expected);
    serves(&l, "evt_after_trickle").await;
    published_exactly(&l, &["evt_during_trickle", "evt_after_trickle"]).await;
}

#[tokio::test]
async fn two_hundred_idle_connections_do_not_starve_good_traffic_and_are_closed() {
    let l = Harness::new()
        .server("header_timeout", "\"4s\"")
        .start()
        .await;
    let mut idle = Vec::new();
    for i in 0..200 {
        let mut stream = TcpStream::connect(l.addr).await.unwrap();
        // Half say nothing at all, half start a request and stall.
        if i % 2 == 1 {
            stream
                .write_all(b"POST /hooks/dregs HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        idle.push(stream);
    }
    let good: Vec<String> = (0..20).map(|i| format!("evt_idle_{i:02}")).collect();
    let bodies: Vec<String> = good.iter().map(|id| event(id)).collect();
    let answers =
        futures_util::future::join_all(bodies.iter().map(|body| l.send("dregs", body))).await;
    for (id, a) in good.iter().zip(&answers) {
        assert_eq!(a.status, 200, "{id}: {}", a.body);
    }
    // They really were held open while the good traffic went through.
    let open = idle
        .iter()
        .filter(|s| {
            let mut byte = [0u8; 1];
            matches!(s.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    assert_eq!(open, 200, "idle connections closed before header_timeout");
    // And none outlives header_timeout: no descriptor leak from clients that never speak.
    let closing = idle.into_iter().map(|stream| async move {
        let (mut read, _write) = stream.into_split();
        read_until_closed(&mut read, Duration::from_secs(15)).await
    });
    for outcome in futures_util::future::join_all(closing).await {
        assert!(outcome.closed, "an idle connection outlived header_timeout");
        assert!(!outcome.response.contains(" 200 "), "{}", outcome.response);
    }
    serves(&l, "evt_after_idle").await;
    let mut all: Vec<&str> = good.iter().map(String::as_str).collect();
    all.push("evt_after_idle");
    published_exactly(&l, &all).await;
}

#[tokio::test]
async fn a_ten_gigabyte_content_length_is_413_and_the_body_is_never_read() {
    // The default max_body (1 MiB): the declared length alone is enough to refuse.
    let l = Harness::new().start().await;
    let head =
        b"POST /hooks/dregs HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n".to_vec();
    let stream = TcpStream::connect(l.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(&head).await.unwrap();
    // Keep pushing body bytes, bounded at 256 MiB: the server must stop taking them.
    let pusher = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        let mut written: u64 = 0;
        for _ in 0..4096 {
            if write.write_all(&chunk).await.is_err() {
                return (written, true);
            }
            written += chunk.len() as u64;
        }
        (written, false)
    });
    serves(&l, "evt_during_10gb").await;
    let outcome = read_until_closed(&mut read, Duration::from_secs(10)).await;
    assert!(
        outcome.response.starts_with("HTTP/1.1 413"),
        "{}",
        outcome.response
    );
    assert!(
        outcome.response.contains("\"body_too_large\""),
        "{}",
        outcome.response
    );
    assert!(outcome.closed, "connection kept open to drain a 10 GB body");
    let (written, refused) = pusher.await.unwrap();
    assert!(
        refused,
        "the listener took {written} body bytes after answering 413"
    );
    serves(&l, "evt_after_10gb").await;
    published_exactly(&l, &["evt_during_10gb", "evt_after_10gb"]).await;
}

/// Sends `request` on a new connection; what came back and whether the server closed.
async fn exchange(addr: std::net::SocketAddr, request: &[u8], wait: Duration) -> Outcome {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let _ = write.write_all(request).await;
    let outcome = read_until_closed(&mut read, wait).await;
    drop(write);
    outcome
}

#[tokio::test]
async fn a_hundred_kilobyte_header_is_431() {
    // Long enough that a connection kept alive after the answer would still be open.
    let l = Harness::new()
        .server("header_timeout", "\"30s\"")
        .start()
        .await;
    let body = event("evt_huge_header");
    let expected = expected_signatures(&l, "dregs", body.as_bytes());
    let length = format!("Content-Length: {}\r\n", body.len());
    let mut one = l.sign("dregs", body.as_bytes());
    one.push((
        HeaderName::from_static("x-padding"),
        HeaderValue::from_str(&"a".repeat(100 * 1024)).unwrap(),
    ));
    // The same 100 KiB as many small headers.
    let mut many = l.sign("dregs", body.as_bytes());
    for i in 0..50 {
        many.push((
            HeaderName::from_bytes(format!("x-pad-{i}").as_bytes()).unwrap(),
            HeaderValue::from_str(&"b".repeat(2 * 1024)).unwrap(),
        ));
    }
    for (i, headers) in [one, many].iter().enumerate() {
        let request = raw_post("dregs", headers, &length, body.as_bytes());
        let good = format!("evt_during_huge_header_{i}");
        let (outcome, ()) = tokio::join!(
            exchange(l.addr, &request, Duration::from_secs(5)),
            serves(&l, &good)
        );
        // Over the 64 KiB head limit: hyper answers an empty 431 itself and closes,
        // without the head ever reaching the handler.
        assert!(
            outcome.response.starts_with("HTTP/1.1 431"),
            "{}",
            outcome.response
        );
        assert!(outcome.closed, "connection left open after a 100 KiB head");
        assert_clean(&outcome.response, &expected);
    }
    serves(&l, "evt_after_huge_header").await;
    published_exactly(
        &l,
        &[
            "evt_during_huge_header_0",
            "evt_during_huge_header_1",
            "evt_after_huge_header",
        ],
    )
    .await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_never_smuggled() {
    let l = Harness::new().start().await;
    // A valid signed event hidden after the first request: a server that framed the first
    // body by Content-Length (or kept the connection open) would serve it.
    let smuggled_body = event("evt_smuggled");
    let smuggled = raw_post(
        "dregs",
        &l.sign("dregs", smuggled_body.as_bytes()),
        &format!("Content-Length: {}\r\n", smuggled_body.len()),
        smuggled_body.as_bytes(),
    );
    let unsigned = event("evt_unsigned_te");
    let chunked = format!("{:x}\r\n{unsigned}\r\n0\r\n\r\n", unsigned.len());
    for extra in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    ] {
        let mut request = raw_post("dregs", &[], extra, chunked.as_bytes());
        request.extend_from_slice(&smuggled);
        let stream = TcpStream::connect(l.addr).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        write.write_all(&request).await.unwrap();
        let outcome = read_until_closed(&mut read, Duration::from_secs(10)).await;
        // hyper 1.x frames by Transfer-Encoding (RFC 9112 §6.3), drops Content-Length, and
        // closes the connection after the answer: the unsigned body is refused for its
        // signature and the request behind it is never read.
        assert!(
            outcome.response.starts_with("HTTP/1.1 401"),
            "{extra:?}: {}",
            outcome.response
        );
        assert_eq!(
            outcome.response.matches("HTTP/1.1 ").count(),
            1,
            "{extra:?}: a second request was served: {}",
            outcome.response
        );
        assert!(outcome.closed, "{extra:?}: connection kept open");
    }
    // A Transfer-Encoding that is not chunked, with a Content-Length: hyper answers 400.
    let body = event("evt_te_identity");
    let request = raw_post(
        "dregs",
        &l.sign("dregs", body.as_bytes()),
        &format!(
            "Content-Length: {}\r\nTransfer-Encoding: identity\r\n",
            body.len()
        ),
        body.as_bytes(),
    );
    let response = raw(l.addr, &request, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    serves(&l, "evt_after_te").await;
    published_exactly(&l, &["evt_after_te"]).await;
}

#[tokio::test]
async fn json_nested_a_hundred_thousand_deep_is_400_and_the_listener_lives() {
    let l = Harness::new().start().await;
    const DEPTH: usize = 100_000;
    let arrays = format!(
        r#"{{"id":"evt_deep_array","type":"t","x":{}{}}}"#,
        "[".repeat(DEPTH),
        "]".repeat(DEPTH)
    );
    let objects = format!(
        r#"{{"id":"evt_deep_object","type":"t","x":{}1{}}}"#,
        r#"{"a":"#.repeat(DEPTH),
        "}".repeat(DEPTH)
    );
    for (i, body) in [arrays, objects].into_iter().enumerate() {
        let expected = expected_signatures(&l, "dregs", body.as_bytes());
        let good = format!("evt_during_deep_{i}");
        let (a, ()) = tokio::join!(l.send("dregs", &body), serves(&l, &good));
        refused(&a, 400, "invalid_json", &expected);
        assert!(
            json(&a)["error"]
                .as_str()
                .unwrap()
                .contains("recursion limit"),
            "{}",
            a.body
        );
    }
    serves(&l, "evt_after_deep").await;
    let (status, _) = crate::harness::admin_get(&l.admin, "/healthz").await;
    assert_eq!(status, 200);
    published_exactly(
        &l,
        &["evt_during_deep_0", "evt_during_deep_1", "evt_after_deep"],
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_bodies_signed_are_400() {
    let l = Harness::new().start().await;
    let bodies: Vec<Vec<u8>> = vec![
        // A lone continuation byte inside the id.
        b"{\"id\":\"evt_\xff\",\"type\":\"t\"}".to_vec(),
        // A surrogate encoded as UTF-8 (CESU-8), in an unrelated field.
        b"{\"id\":\"evt_cesu\",\"type\":\"t\",\"x\":\"\xed\xa0\x80\"}".to_vec(),
        // An overlong encoding of '/'.
        b"{\"id\":\"evt_overlong\",\"type\":\"t\",\"x\":\"\xc0\xaf\"}".to_vec(),
        // Outside any string.
        b"{\"id\":\"evt_bare\",\"type\":\"t\"}\xfe".to_vec(),
        // A lone surrogate written as an escape.
        br#"{"id":"evt_escaped","type":"t","x":"\ud800"}"#.to_vec(),
    ];
    for body in bodies {
        let expected = expected_signatures(&l, "dregs", &body);
        let a = send_bytes(&l, "dregs", body.clone()).await;
        refused(&a, 400, "invalid_json", &expected);
    }
    serves(&l, "evt_after_utf8").await;
    published_exactly(&l, &["evt_after_utf8"]).await;
}

#[tokio::test]
async fn duplicate_keys_are_400_because_the_id_is_ambiguous() {
    let l = Harness::new().start().await;
    let cases = [
        (r#"{"id":"evt_dup_a","id":"evt_dup_b","type":"t"}"#, "id"),
        (r#"{"id":"evt_dup_c","type":"a","type":"b"}"#, "type"),
        // The same key spelt with an escape is the same key.
        (
            r#"{"id":"evt_dup_d","\u0069d":"evt_dup_e","type":"t"}"#,
            "id",
        ),
        // Deeper in the body: the worker's rules read these fields too.
        (
            r#"{"id":"evt_dup_f","type":"t","data":{"scores":{"humanity":1,"humanity":99}}}"#,
            "humanity",
        ),
    ];
    let mut good = Vec::new();
    for (i, (body, key)) in cases.into_iter().enumerate() {
        let expected = expected_signatures(&l, "dregs", body.as_bytes());
        good.push(format!("evt_during_dup_{i}"));
        let (a, ()) = tokio::join!(l.send("dregs", body), serves(&l, &good[i]));
        refused(&a, 400, "duplicate_key", &expected);
        let reason = json(&a)["error"].as_str().unwrap().to_owned();
        assert!(reason.contains(&format!("{key:?}")), "{reason}");
    }
    // The same name in different objects is not a duplicate.
    let nested = r#"{"id":"evt_nested_id","type":"t","data":{"id":"usr_1"}}"#;
    let a = l.send("dregs", nested).await;
    assert_eq!(a.status, 200, "{}", a.body);
    good.push("evt_nested_id".to_owned());
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    published_exactly(&l, &good).await;
}

/// A Stripe-Signature value with `entries` v1 entries besides `t`, `valid` at `at`.
fn stripe_header(t: u64, entries: usize, valid: Option<(usize, &str)>, filler: &str) -> String {
    let mut header = format!("t={t}");
    for i in 0..entries {
        match valid {
            Some((at, tag)) if at == i => header.push_str(&format!(",v1={tag}")),
            _ => header.push_str(&format!(",v1={filler}")),
        }
    }
    header
}

#[tokio::test]
async fn a_stripe_header_with_five_thousand_v1_entries() {
    let l = Harness::new()
        .provider(DREGS)
        .provider(STRIPE)
        .start()
        .await;
    let body = r#"{"id":"evt_stripe_5000","type":"charge.succeeded","object":"event"}"#;
    let signed = l.sign("stripe", body.as_bytes());
    let value = signed[0].1.to_str().unwrap();
    let (t, tag) = value
        .strip_prefix("t=")
        .and_then(|v| v.split_once(",v1="))
        .unwrap();
    let t: u64 = t.parse().unwrap();
    let expected = vec![value.to_owned(), tag.to_owned()];
    let listener = &l;
    let send = |header: String| {
        let headers = vec![(
            HeaderName::from_static("stripe-signature"),
            HeaderValue::from_str(&header).unwrap(),
        )];
        async move { listener.post("/hooks/stripe", &headers, body).await }
    };
    // 5,000 short v1 entries (about 25 KB, under the header limits) and none valid: 401.
    let a = send(stripe_header(t, 5000, None, "0")).await;
    refused(&a, 401, "mismatch", &expected);
    // The same with full-length hex entries, none valid.
    let full = "ab".repeat(32);
    let a = send(stripe_header(t, 400, None, &full)).await;
    refused(&a, 401, "mismatch", &expected);
    // One valid among 5,000: accepted, with good traffic alongside.
    let (a, ()) = tokio::join!(
        send(stripe_header(t, 5000, Some((4321, tag)), "0")),
        serves(&l, "evt_during_stripe")
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(json(&a)["id"], "evt_stripe_5000");
    // 5,000 full-length entries are 340 KB of header: refused by size before any HMAC.
    let header = stripe_header(t, 5000, Some((4321, tag)), &full);
    let request = raw_post(
        "stripe",
        &[(
            HeaderName::from_static("stripe-signature"),
            HeaderValue::from_str(&header).unwrap(),
        )],
        &format!("Content-Length: {}\r\n", body.len()),
        body.as_bytes(),
    );
    let response = raw(l.addr, &request, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    published_exactly(&l, &["evt_stripe_5000", "evt_during_stripe"]).await;
}

/// Asserts the answer is what `error.rs` maps the scheme's own verdict to.
fn as_the_code_decides(
    config: &ListenerConfig,
    provider: &str,
    headers: &[(HeaderName, HeaderValue)],
    body: &str,
    a: &Answer,
) -> StatusCode {
    let p = config.provider(provider).unwrap();
    let mut map = http::HeaderMap::new();
    for (n, v) in headers {
        map.append(n.clone(), v.clone());
    }
    let err = p
        .scheme
        .verify(&p.keys, &map, body.as_bytes(), SystemTime::now())
        .expect_err("a hostile signature verified");
    let err = RequestError::Verify(err);
    assert_eq!(a.status, err.status(), "{}", a.body);
    assert_eq!(json(a)["code"], err.code(), "{}", a.body);
    err.status()
}

#[tokio::test]
async fn non_hex_and_empty_signatures() {
    let l = Harness::new()
        .provider(DREGS)
        .provider(STRIPE)
        .provider(STANDARD)
        .start()
        .await;
    let config = ListenerConfig::parse(
        "test.toml",
        &l.config_text_for_signing(),
        &Default::default(),
    )
    .unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let h = |name: &'static str, value: &str| {
        (
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        )
    };
    let body = event("evt_bad_sig");
    let dregs = |v: &str| vec![h("x-dregs-signature", v)];
    let stripe = |v: &str| vec![h("stripe-signature", v)];
    let standard = |v: &str| {
        vec![
            h("webhook-id", "msg_hostile"),
            h("webhook-timestamp", &now.to_string()),
            h("webhook-signature", v),
        ]
    };
    let non_hex = "g".repeat(64);
    // (provider, headers, status, code): the contract as README's table states it.
    let cases = [
        // hmac: the header must decode to a tag, else the request is malformed.
        (
            "dregs",
            dregs(&format!("sha256={non_hex}")),
            400,
            "malformed_signature",
        ),
        ("dregs", dregs("sha256="), 400, "malformed_signature"),
        ("dregs", dregs(""), 400, "malformed_signature"),
        ("dregs", dregs("   "), 400, "malformed_signature"),
        // Stripe: v1 entries that cannot be tags are skipped, so none matches.
        (
            "stripe",
            stripe(&format!("t={now},v1={non_hex}")),
            401,
            "mismatch",
        ),
        ("stripe", stripe(&format!("t={now},v1=")), 401, "mismatch"),
        ("stripe", stripe(""), 400, "malformed_signature"),
        (
            "stripe",
            stripe(&format!("t={now},v1")),
            400,
            "malformed_signature",
        ),
        // Standard Webhooks: likewise for undecodable v1 entries.
        (
            "rewards",
            standard("v1,!!!!not-base64!!!!"),
            401,
            "mismatch",
        ),
        ("rewards", standard("v1,"), 401, "mismatch"),
        ("rewards", standard(""), 400, "malformed_signature"),
    ];
    for (provider, headers, status, code) in cases {
        let expected = expected_signatures(&l, provider, body.as_bytes());
        let a = l.post(&format!("/hooks/{provider}"), &headers, &body).await;
        refused(&a, status, code, &expected);
        as_the_code_decides(&config, provider, &headers, &body, &a);
    }
    serves(&l, "evt_after_bad_sig").await;
    published_exactly(&l, &["evt_after_bad_sig"]).await;
}

#[tokio::test]
async fn a_replayed_standard_webhooks_request_outside_the_window_is_401() {
    let l = Harness::new()
        .provider(DREGS)
        .provider(STANDARD)
        .start()
        .await;
    let body = r#"{"type":"tier.changed","customer_id":"cust_1"}"#;
    let now = SystemTime::now();
    let mut good = Vec::new();
    for (i, at) in [
        now - Duration::from_secs(600),
        now - Duration::from_secs(302),
        now + Duration::from_secs(600),
    ]
    .into_iter()
    .enumerate()
    {
        let headers = l.sign_at("rewards", body.as_bytes(), at);
        let sigs: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n == "webhook-signature")
            .map(|(_, v)| v.to_str().unwrap().to_owned())
            .collect();
        good.push(format!("evt_during_replay_{i}"));
        let (a, ()) = tokio::join!(
            l.post("/hooks/rewards", &headers, body),
            serves(&l, &good[i])
        );
        refused(&a, 401, "outside_window", &sigs);
    }
    // The same delivery signed now is accepted.
    let a = l.send("rewards", body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let id = json(&a)["id"].as_str().unwrap().to_owned();
    good.push(id);
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    published_exactly(&l, &good).await;
}

#[tokio::test]
async fn a_signature_made_with_another_providers_secret_is_401() {
    let other_stripe = r#"
name = "stripe2"
scheme = "stripe"
secrets = ["whsec_hostile_stripe_two"]
"#;
    let l = Harness::new()
        .provider(DREGS)
        .provider(OTHER)
        .provider(STRIPE)
        .provider(other_stripe)
        .start()
        .await;
    let mut good = Vec::new();
    for (i, (victim, signer)) in [
        ("dregs", "other"),
        ("other", "dregs"),
        ("stripe", "stripe2"),
        ("stripe2", "stripe"),
    ]
    .into_iter()
    .enumerate()
    {
        let body = event(&format!("evt_from_{signer}_to_{victim}"));
        let headers = l.sign(signer, body.as_bytes());
        let mut expected = expected_signatures(&l, victim, body.as_bytes());
        expected.push("whsec_hostile_stripe_two".to_owned());
        good.push(format!("evt_during_foreign_{i}"));
        let path = format!("/hooks/{victim}");
        let (a, ()) = tokio::join!(l.post(&path, &headers, &body), serves(&l, &good[i]));
        refused(&a, 401, "mismatch", &expected);
    }
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    published_exactly(&l, &good).await;
}
