//! HTTP actions and lookups: one shared pooled rustls client, a `send` that retries transient
//! failures with capped, fully jittered exponential backoff and reports what happened instead
//! of failing, and a `fetch` that does the same and keeps the whole answer (within a limit).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::time::Instant;

use crate::telemetry::trace::{TRACEPARENT, TRACESTATE, TraceContext};

/// Bytes of the last response body kept in [`HttpOutcome::response_snippet`].
const SNIPPET_BYTES: usize = 512;
/// After the snippet, keep reading (and discarding) up to this much so the connection can be
/// reused; a longer body is abandoned, which closes that connection instead.
const DRAIN_BYTES: usize = 64 * 1024;

/// A fully rendered request.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// HTTP method.
    pub method: Method,
    /// Absolute target URL; kept out of error messages, as it may carry secrets.
    pub url: String,
    /// Headers in order (a repeated name sends each value); they override client defaults.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Request body, if any; resent unchanged on each retry.
    pub body: Option<Bytes>,
}

/// Retry schedule: before retry `n` (0-based) wait a uniformly random time in
/// `[0, min(max, base * 2^n)]` ("full jitter"), or a numeric `Retry-After` capped at `max`.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt, so at most `1 + retries` attempts.
    pub retries: u32,
    /// Upper bound of the random wait before the first retry; doubles for each later retry.
    pub base: Duration,
    /// Cap on any wait between attempts, including a server's `Retry-After`.
    pub max: Duration,
}

/// What happened to a request. `status`, `error` and `response_snippet` describe the *last*
/// attempt; `error` is set whenever `ok` is false (transport failure or non-2xx status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOutcome {
    /// The last attempt got a 2xx response.
    pub ok: bool,
    /// Attempts made, including the first (at least 1).
    pub attempts: u32,
    /// HTTP status code of the last response; `None` if the last attempt got none.
    pub status: Option<u16>,
    /// Why the last attempt failed (transport error or `HTTP <status>`); `None` if `ok`.
    pub error: Option<String>,
    /// First ≤512 bytes of the last response body, lossy UTF-8.
    pub response_snippet: Option<String>,
}

/// Builds the client every HTTP action shares (clone it freely; clones share the pool).
///
/// - TLS: rustls with the platform verifier (system trust store); HTTP/1.1 only.
/// - Proxies: none. `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` in the daemon's environment are
///   ignored, so where a webhook goes depends only on the rules file.
/// - Redirects: not followed. A 3xx is reported as a non-2xx failure; following it would turn
///   POST into GET on 301/302/303 and could carry credentials to another host.
/// - Connection pooling: reqwest's default idle pool (90 s idle timeout).
/// - `User-Agent: hookwarden-worker/<crate version>`; a request's own header overrides it.
/// - No client-wide timeout: [`send`] applies one per attempt.
pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .user_agent(concat!("hookwarden-worker/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| format!("cannot build HTTP client: {}", error_chain(&err)))
}

/// Sends `request`, retrying transient failures; success = 2xx. Never panics.
///
/// `timeout` bounds each attempt from connecting until the response headers and the body
/// read (the body read only shortens the snippet; it never turns a received status into a
/// failure). Retried: connect errors, timeouts, other transport errors (e.g. a reset pooled
/// connection; callers send an `Idempotency-Key`), 5xx, 408 and 429. Not retried: other
/// statuses and invalid requests (bad URL). Total attempts = 1 + `policy.retries`.
pub async fn send(
    client: &reqwest::Client,
    request: &HttpRequest,
    timeout: Duration,
    policy: RetryPolicy,
) -> HttpOutcome {
    exchange(client, request, timeout, policy, SNIPPET_BYTES)
        .await
        .0
}

/// [`send`], keeping the whole body of a 2xx answer up to `limit` bytes: the body, or why
/// there is none (not a 2xx after the retries, or longer than `limit`, which is not retried).
pub async fn fetch(
    client: &reqwest::Client,
    request: &HttpRequest,
    timeout: Duration,
    policy: RetryPolicy,
    limit: usize,
) -> (HttpOutcome, Result<Vec<u8>, String>) {
    let (outcome, body) = exchange(client, request, timeout, policy, limit).await;
    let body = match (&outcome.error, body) {
        (Some(error), _) => Err(error.clone()),
        (None, Body::Whole(bytes)) => Ok(bytes),
        (None, Body::Cut) => Err(format!(
            "answer cut short: longer than {limit} bytes, or broken off"
        )),
    };
    (outcome, body)
}

/// A 2xx answer's body as read.
enum Body {
    /// All of it.
    Whole(Vec<u8>),
    /// Longer than asked for, or broken off.
    Cut,
}

async fn exchange(
    client: &reqwest::Client,
    request: &HttpRequest,
    timeout: Duration,
    policy: RetryPolicy,
    keep: usize,
) -> (HttpOutcome, Body) {
    let max_attempts = policy.retries.saturating_add(1);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let result = attempt(client, request, timeout, keep).await;
        let mut body = Body::Cut;
        let (outcome, retryable, retry_after) = match result {
            Attempt::Response {
                status,
                retry_after,
                prefix,
                whole,
            } => {
                let ok = status.is_success();
                let outcome = HttpOutcome {
                    ok,
                    attempts,
                    status: Some(status.as_u16()),
                    error: (!ok).then(|| format!("HTTP {status}")),
                    response_snippet: Some(lossy_prefix(
                        &prefix[..prefix.len().min(SNIPPET_BYTES)],
                    )),
                };
                if whole {
                    body = Body::Whole(prefix);
                }
                (outcome, retryable_status(status), retry_after)
            }
            Attempt::Failed { error, retryable } => {
                let outcome = HttpOutcome {
                    ok: false,
                    attempts,
                    status: None,
                    error: Some(error),
                    response_snippet: None,
                };
                (outcome, retryable, None)
            }
        };
        if outcome.ok || !retryable || attempts >= max_attempts {
            return (outcome, body);
        }
        let delay = match retry_after {
            Some(wait) => wait.min(policy.max),
            None => backoff(policy, attempts - 1),
        };
        tokio::time::sleep(delay).await;
    }
}

/// `request` with the span's `traceparent` and `tracestate` (`trace`), unless its own headers
/// set either (a target that wants another trace's, say).
pub fn traced(request: &HttpRequest, trace: &TraceContext) -> HttpRequest {
    let mut request = request.clone();
    if request
        .headers
        .iter()
        .any(|(n, _)| n == TRACEPARENT || n == TRACESTATE)
    {
        return request;
    }
    let mut add = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            request.headers.push((HeaderName::from_static(name), value));
        }
    };
    add(TRACEPARENT, trace.traceparent());
    if let Some(state) = trace.tracestate() {
        add(TRACESTATE, state);
    }
    request
}

enum Attempt {
    Response {
        status: StatusCode,
        retry_after: Option<Duration>,
        /// The body's first bytes, as many as asked for.
        prefix: Vec<u8>,
        /// Whether `prefix` is the whole body.
        whole: bool,
    },
    Failed {
        error: String,
        retryable: bool,
    },
}

async fn attempt(
    client: &reqwest::Client,
    request: &HttpRequest,
    timeout: Duration,
    keep: usize,
) -> Attempt {
    // One deadline for the whole attempt, so a slow body cannot extend it.
    let deadline = Instant::now() + timeout;
    let mut builder = client.request(request.method.clone(), request.url.as_str());
    for (name, value) in &request.headers {
        builder = builder.header(name.clone(), value.clone());
    }
    if let Some(body) = &request.body {
        // `Bytes` clones share the buffer, so each attempt resends without copying.
        builder = builder.body(body.clone());
    }
    let mut response = match tokio::time::timeout_at(deadline, builder.send()).await {
        Err(_) => {
            return Attempt::Failed {
                error: format!("timed out after {timeout:?}"),
                retryable: true,
            };
        }
        Ok(Err(err)) => {
            // The URL may carry templated secrets (tokens in query strings); keep it out of
            // messages that end up in logs.
            let err = err.without_url();
            let retryable = !(err.is_builder() || err.is_redirect());
            let kind = if err.is_timeout() {
                "timed out"
            } else if err.is_connect() {
                "connect error"
            } else if err.is_builder() {
                "invalid request"
            } else {
                "request failed"
            };
            return Attempt::Failed {
                error: format!("{kind}: {}", error_chain(&err)),
                retryable,
            };
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let mut prefix = Vec::new();
    // The status is already final; a body that is slow or breaks only truncates the snippet.
    let whole = tokio::time::timeout_at(deadline, read_prefix(&mut response, &mut prefix, keep))
        .await
        .unwrap_or(false);
    Attempt::Response {
        status,
        retry_after,
        prefix,
        whole,
    }
}

/// Appends up to `keep` bytes of the body to `prefix` and drains up to `DRAIN_BYTES` (or
/// just past `keep`): whether `prefix` then holds the whole body. Writes into the caller's
/// buffer so the bytes survive a timeout cancelling this future.
async fn read_prefix(response: &mut reqwest::Response, prefix: &mut Vec<u8>, keep: usize) -> bool {
    let mut seen = 0usize;
    while seen < DRAIN_BYTES.max(keep.saturating_add(1)) {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = keep.saturating_sub(prefix.len());
                prefix.extend_from_slice(&chunk[..chunk.len().min(room)]);
                seen = seen.saturating_add(chunk.len());
            }
            Ok(None) => return seen <= keep,
            Err(_) => return false,
        }
    }
    false
}

fn retryable_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// Numeric `Retry-After` only; the HTTP-date form is ignored (backoff applies instead).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Full jitter: uniform in `[0, min(max, base * 2^retry)]`.
fn backoff(policy: RetryPolicy, retry: u32) -> Duration {
    let factor = 2u32.saturating_pow(retry);
    let cap = policy.base.saturating_mul(factor).min(policy.max);
    let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    if cap_nanos == 0 {
        return Duration::ZERO;
    }
    // v4 UUIDs carry 122 random bits from the OS generator; 64 of them are plenty here.
    let random = uuid::Uuid::new_v4().as_u64_pair().0;
    Duration::from_nanos(random % cap_nanos.saturating_add(1))
}

/// Lossy UTF-8, without a replacement character for a sequence cut by the byte limit.
fn lossy_prefix(bytes: &[u8]) -> String {
    String::from_utf8_lossy(trim_cut_char(bytes)).into_owned()
}

/// Drops a trailing multi-byte sequence that is incomplete (at most 3 bytes).
fn trim_cut_char(bytes: &[u8]) -> &[u8] {
    for back in 1..=bytes.len().min(3) {
        let i = bytes.len() - back;
        let byte = bytes[i];
        if byte & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let needed = match byte {
            0xF0..=0xF4 => 4,
            0xE0..=0xEF => 3,
            0xC2..=0xDF => 2,
            _ => 1, // ASCII or never valid as a lead byte: not a cut sequence
        };
        return if needed > back { &bytes[..i] } else { bytes };
    }
    bytes
}

/// `err` and its causes on one line; reqwest's top-level message alone rarely says why.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, Full};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    /// What the test server saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        method: Method,
        path: String,
        headers: HeaderMap,
        body: Bytes,
    }

    /// A scripted reply for the n-th request (0-based).
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        delay: Duration,
        body: Vec<u8>,
    }

    fn reply(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: format!("status {status}").into_bytes(),
        }
    }

    /// Starts a real HTTP/1.1 server on 127.0.0.1:0 answering with `script(n)`.
    async fn serve<F>(script: F) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>)
    where
        F: Fn(usize) -> Reply + Send + Sync + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let counter = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, counter, script) = (seen2.clone(), counter.clone(), script.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, counter, script) =
                            (seen.clone(), counter.clone(), script.clone());
                        async move {
                            let n = counter.fetch_add(1, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            seen.lock().unwrap().push(Seen {
                                method: parts.method,
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body,
                            });
                            let r = script(n);
                            tokio::time::sleep(r.delay).await;
                            let mut resp = hyper::Response::builder().status(r.status);
                            for (k, v) in r.headers {
                                resp = resp.header(k, v);
                            }
                            Ok::<_, std::convert::Infallible>(
                                resp.body(Full::new(Bytes::from(r.body))).unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    fn get(addr: SocketAddr) -> HttpRequest {
        HttpRequest {
            method: Method::GET,
            url: format!("http://{addr}/hook"),
            headers: Vec::new(),
            body: None,
        }
    }

    fn policy(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        }
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn ok_first_try() {
        let (addr, seen) = serve(|_| reply(200)).await;
        let out = send(&client().unwrap(), &get(addr), T, policy(3)).await;
        assert_eq!(
            out,
            HttpOutcome {
                ok: true,
                attempts: 1,
                status: Some(200),
                error: None,
                response_snippet: Some("status 200".into()),
            }
        );
        let seen = seen.lock().unwrap();
        let ua = seen[0].headers["user-agent"].to_str().unwrap();
        assert_eq!(ua, concat!("hookwarden-worker/", env!("CARGO_PKG_VERSION")));
    }

    #[tokio::test]
    async fn retries_503_then_succeeds() {
        let (addr, seen) = serve(|n| reply(if n < 2 { 503 } else { 200 })).await;
        let out = send(&client().unwrap(), &get(addr), T, policy(5)).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.attempts, 3);
        assert_eq!(out.status, Some(200));
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn retries_exhausted_reports_last_status() {
        let (addr, _) = serve(|_| reply(502)).await;
        let out = send(&client().unwrap(), &get(addr), T, policy(2)).await;
        assert!(!out.ok);
        assert_eq!(out.attempts, 3);
        assert_eq!(out.status, Some(502));
        assert_eq!(out.error.as_deref(), Some("HTTP 502 Bad Gateway"));
    }

    #[tokio::test]
    async fn client_error_is_permanent() {
        let (addr, seen) = serve(|_| reply(400)).await;
        let out = send(&client().unwrap(), &get(addr), T, policy(5)).await;
        assert!(!out.ok);
        assert_eq!(out.attempts, 1);
        assert_eq!(out.status, Some(400));
        assert_eq!(out.response_snippet.as_deref(), Some("status 400"));
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn redirect_is_not_followed() {
        let (addr, seen) = serve(|_| Reply {
            headers: vec![("location", "/elsewhere")],
            ..reply(302)
        })
        .await;
        let out = send(&client().unwrap(), &get(addr), T, policy(5)).await;
        assert_eq!((out.ok, out.attempts, out.status), (false, 1, Some(302)));
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn retry_after_is_capped_at_max() {
        let (addr, _) = serve(|n| {
            if n == 0 {
                Reply {
                    headers: vec![("retry-after", "30")],
                    ..reply(429)
                }
            } else {
                reply(200)
            }
        })
        .await;
        let started = std::time::Instant::now();
        let out = send(&client().unwrap(), &get(addr), T, policy(1)).await;
        assert_eq!((out.ok, out.attempts), (true, 2));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        let (addr, _) = serve(|n| {
            if n == 0 {
                Reply {
                    headers: vec![("retry-after", "1")],
                    ..reply(503)
                }
            } else {
                reply(200)
            }
        })
        .await;
        let started = std::time::Instant::now();
        let p = RetryPolicy {
            retries: 1,
            base: Duration::from_millis(1),
            max: Duration::from_secs(10),
        };
        let out = send(&client().unwrap(), &get(addr), T, p).await;
        assert_eq!((out.ok, out.attempts), (true, 2));
        assert!(started.elapsed() >= Duration::from_millis(950));
    }

    #[tokio::test]
    async fn connection_refused_retries_then_fails() {
        // Bind then drop: nothing listens on this port any more.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let out = send(&client().unwrap(), &get(addr), T, policy(2)).await;
        assert!(!out.ok);
        assert_eq!(out.attempts, 3);
        assert_eq!(out.status, None);
        let err = out.error.unwrap();
        assert!(err.starts_with("connect error"), "{err}");
        assert!(
            !err.contains("/hook"),
            "URL must not leak into errors: {err}"
        );
    }

    #[tokio::test]
    async fn slow_server_times_out() {
        let (addr, _) = serve(|_| Reply {
            delay: Duration::from_secs(3),
            ..reply(200)
        })
        .await;
        let started = std::time::Instant::now();
        let out = send(
            &client().unwrap(),
            &get(addr),
            Duration::from_millis(200),
            policy(0),
        )
        .await;
        assert!(!out.ok);
        assert_eq!(out.attempts, 1);
        assert!(
            out.error.as_deref().unwrap().contains("timed out"),
            "{out:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn invalid_url_is_permanent() {
        let req = HttpRequest {
            url: "not a url".into(),
            ..get("127.0.0.1:1".parse().unwrap())
        };
        let out = send(&client().unwrap(), &req, T, policy(3)).await;
        assert!(!out.ok);
        assert_eq!(out.attempts, 1);
        assert!(out.error.unwrap().starts_with("invalid request"));
    }

    #[tokio::test]
    async fn headers_and_body_arrive_as_sent() {
        let (addr, seen) = serve(|_| reply(201)).await;
        let body = Bytes::from_static(br#"{"rule":"r \"1\""}"#);
        let req = HttpRequest {
            method: Method::POST,
            url: format!("http://{addr}/quarantine?x=1"),
            headers: vec![
                (
                    HeaderName::from_static("idempotency-key"),
                    HeaderValue::from_static("evt-123/quarantine"),
                ),
                (
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (
                    HeaderName::from_static("x-multi"),
                    HeaderValue::from_static("a"),
                ),
                (
                    HeaderName::from_static("x-multi"),
                    HeaderValue::from_static("b"),
                ),
            ],
            body: Some(body.clone()),
        };
        let out = send(&client().unwrap(), &req, T, policy(0)).await;
        assert!(out.ok, "{out:?}");
        let seen = seen.lock().unwrap();
        let s = &seen[0];
        assert_eq!(s.method, Method::POST);
        assert_eq!(s.path, "/quarantine");
        assert_eq!(s.headers["idempotency-key"], "evt-123/quarantine");
        assert_eq!(s.headers["content-type"], "application/json");
        let multi: Vec<_> = s.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        assert_eq!(s.body, body);
    }

    #[tokio::test]
    async fn snippet_is_capped_and_utf8_safe() {
        // 511 ASCII bytes then a 3-byte char straddling the 512-byte limit.
        let mut long = vec![b'a'; 511];
        long.extend_from_slice("€€€".as_bytes());
        long.extend(std::iter::repeat_n(b'z', 200_000));
        let (addr, _) = serve(move |_| Reply {
            body: long.clone(),
            ..reply(500)
        })
        .await;
        let out = send(&client().unwrap(), &get(addr), T, policy(0)).await;
        let snippet = out.response_snippet.unwrap();
        assert_eq!(snippet, "a".repeat(511));
    }

    #[test]
    fn backoff_is_bounded() {
        let p = RetryPolicy {
            retries: 100,
            base: Duration::from_millis(10),
            max: Duration::from_millis(300),
        };
        for n in [0, 1, 2, 5, 31, 32, 64, u32::MAX] {
            let cap = Duration::from_millis(10)
                .saturating_mul(2u32.saturating_pow(n))
                .min(p.max);
            for _ in 0..50 {
                assert!(backoff(p, n) <= cap);
            }
        }
        let zero = RetryPolicy {
            base: Duration::ZERO,
            ..p
        };
        assert_eq!(backoff(zero, 3), Duration::ZERO);
    }

    #[test]
    fn cut_char_trimmed() {
        assert_eq!(lossy_prefix("a€".as_bytes()), "a€");
        assert_eq!(lossy_prefix(&"a€".as_bytes()[..3]), "a");
        assert_eq!(lossy_prefix(&"😀".as_bytes()[..3]), "");
        assert_eq!(lossy_prefix(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(lossy_prefix(b""), "");
        assert_eq!(lossy_prefix(b"a\xff"), "a\u{fffd}");
    }
}
