//! One webhook request, start to answer: route → source check → bounded body → signature →
//! id and type → dedupe + handoff. The handoff is a trait, so this pipeline is tested
//! without a broker; only a `Verified` event ever reaches it.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
// tokio's clock, so that paused-time tests drive the handoff's deadline and latencies.
use tokio::time::Instant;
use tracing::{Instrument as _, Span};

use crate::broker::publisher::{PublishError, Publisher};
use crate::envelope::Envelope;
use crate::listener::body;
use crate::listener::client_ip::{client_ip, is_in};
use crate::listener::config::{ListenerConfig, Provider};
use crate::listener::dedupe::{Admission, Dedupe};
use crate::listener::error::{RequestError, json_response};
use crate::listener::extract::{check_body, extract};
use crate::listener::limit::Limiter;
use crate::listener::spool::{Spool, SpoolError};
use crate::telemetry::trace::{self, Parent, TRACEPARENT, TRACESTATE, TraceContext};
use crate::telemetry::{self, ErrorChain, ListenerMetrics};

/// Takes a verified event somewhere durable; `Ok` only once it is safe there.
pub trait Handoff: Clone + Send + Sync + 'static {
    /// Hands `envelope` off.
    fn handoff(&self, envelope: Envelope) -> impl Future<Output = Result<(), HandoffError>> + Send;
}

/// Why an event could not be handed off (answered 503).
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The broker did not take it (and there is no spool).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Neither the broker nor the spool could take it.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl HandoffError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Publish(err) => err.reason(),
            Self::Spool(SpoolError::Full) => "spool_full",
            Self::Spool(SpoolError::Io(_)) => "spool_unwritable",
        }
    }
}

/// At most this many events left in the spool, a request waits for the forwarder ...
const CATCH_UP_DEPTH: u64 = 2048;
/// ... this long at most, before it joins them in the spool.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The handoff: publish and wait for the confirm, all within `timeout` of its start; when the
/// broker is unreachable or slow, or events are already waiting in the spool (so order is
/// kept), write to the spool instead. A request that finds no connection waits for one only
/// while it may come any moment ([`Publisher::ready_by`] says when, and why not always).
#[derive(Clone)]
pub struct BrokerHandoff {
    /// The shared publisher.
    pub publisher: Publisher,
    /// `server.handoff_timeout`.
    pub timeout: std::time::Duration,
    /// The spool, when configured.
    pub spool: Option<Spool>,
    /// For the spool's counters.
    pub metrics: Arc<ListenerMetrics>,
}

impl Handoff for BrokerHandoff {
    async fn handoff(&self, envelope: Envelope) -> Result<(), HandoffError> {
        // Every wait below (for the connection, for the spool, for the confirm) comes out of
        // the one handoff_timeout.
        let deadline = Instant::now() + self.timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let Some(spool) = &self.spool else {
            if !self.publisher.ready_by(deadline).await {
                return Err(PublishError::NotConnected.into());
            }
            return Ok(self.publisher.publish(&envelope, left()).await?);
        };
        // Too many older events to catch up on: this one joins them whatever the broker does,
        // so it does not wait for a connection either.
        let connected = spool.depth() <= CATCH_UP_DEPTH && self.publisher.ready_by(deadline).await;
        // Older events wait in the spool: queue behind them, not ahead. Once the broker is
        // back and only a few are left, wait for the forwarder to send them instead of adding
        // to them: under steady load the spool would otherwise never run empty, and every
        // event would take the disk detour for good.
        let behind = spool.depth() > 0
            && !(connected
                && spool.depth() <= CATCH_UP_DEPTH
                && spool.wait_drained(CATCH_UP_WAIT.min(left())).await);
        let reason = if behind {
            "older events are waiting in the spool".to_owned()
        } else if !connected {
            PublishError::NotConnected.to_string()
        } else {
            match self.publisher.publish(&envelope, left()).await {
                Ok(()) => return Ok(()),
                // Unroutable is a topology problem the spool cannot fix: say so now.
                Err(err @ PublishError::Returned { .. }) => return Err(err.into()),
                Err(err) => err.to_string(),
            }
        };
        let provider = envelope.provider.to_string();
        spool.put(envelope).await?;
        self.metrics.spooled(&provider, &reason);
        Ok(())
    }
}

/// The request pipeline, shared by every connection.
pub struct Handler<H> {
    config: Arc<ListenerConfig>,
    routes: HashMap<String, usize>,
    /// Per provider (by index), its `rate_limit` bucket.
    limiters: Vec<Option<Limiter>>,
    dedupe: Dedupe,
    handoff: H,
    metrics: Arc<ListenerMetrics>,
}

/// Largest total size of request headers (names and values); provider headers are a few
/// hundred bytes, so anything near this is an attack or a misconfigured proxy.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Label used for requests that name no configured provider.
const UNKNOWN: &str = "unknown";

impl<H: Handoff> Handler<H> {
    /// Builds the pipeline over a validated config.
    pub fn new(config: Arc<ListenerConfig>, handoff: H, metrics: Arc<ListenerMetrics>) -> Self {
        let routes = config
            .providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        let dedupe = Dedupe::new(config.dedupe.capacity, config.dedupe.ttl);
        let limiters = config
            .providers
            .iter()
            .map(|p| p.rate_limit.as_ref().and_then(Limiter::new))
            .collect();
        Self {
            config,
            routes,
            limiters,
            dedupe,
            handoff,
            metrics,
        }
    }

    /// The id cache (tests inspect it).
    pub fn dedupe(&self) -> &Dedupe {
        &self.dedupe
    }

    /// Answers one request from `peer`, inside its own [`telemetry::request_span`], which
    /// continues the caller's trace when it sent a valid `traceparent` and starts one if not.
    pub async fn handle<B>(&self, request: Request<B>, peer: IpAddr) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let span = telemetry::request_span();
        let caller = caller_trace(request.headers());
        let trace = trace::enter(&span, Parent::Remote(caller.as_ref()));
        self.answer(request, peer, trace).instrument(span).await
    }

    async fn answer<B>(
        &self,
        request: Request<B>,
        peer: IpAddr,
        trace: TraceContext,
    ) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let route = self.route(request.uri().path());
        let label = route.as_ref().map_or(UNKNOWN, |p| p.name.as_str());
        Span::current().record("provider", label);
        let result = match route {
            Ok(provider) => self.process(provider, request, peer, trace).await,
            Err(err) => Err(err),
        };
        let (response, outcome) = match result {
            Ok((admission, id)) => {
                let status = match admission {
                    Admission::Accepted => "accepted",
                    Admission::Duplicate => {
                        self.metrics.duplicate(label);
                        "duplicate"
                    }
                };
                let body = serde_json::json!({ "status": status, "id": id });
                (json_response(StatusCode::OK, &body), status)
            }
            Err(err) => {
                let code = err.code();
                (err.into_response(), code)
            }
        };
        self.metrics.request_done(
            label,
            response.status().as_u16(),
            outcome,
            started.elapsed(),
        );
        response
    }

    /// What became of the request's event, and its id.
    async fn process<B>(
        &self,
        provider: &Provider,
        request: Request<B>,
        peer: IpAddr,
        trace: TraceContext,
    ) -> Result<(Admission, String), RequestError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if request.method() != Method::POST {
            return Err(RequestError::MethodNotAllowed);
        }
        let (parts, body) = request.into_parts();
        // hyper bounds its read buffer, not the headers a burst can fit into it.
        let header_bytes: usize = parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        if header_bytes > MAX_HEADER_BYTES {
            return Err(RequestError::HeadersTooLarge);
        }
        let source = client_ip(peer, &parts.headers, &self.config.server.trusted_proxy_nets);
        if !provider.allow_ips.is_empty() && !is_in(source, &provider.allow_ips) {
            return Err(RequestError::Forbidden);
        }
        // Before the body is read: a storm costs its sender the wait, not us the bytes.
        // (After allow_ips, so that strangers cannot spend a provider's allowance.)
        if let Some(Some(limiter)) = self.routes.get(&provider.name).map(|&i| &self.limiters[i]) {
            limiter
                .check()
                .map_err(|retry_after| RequestError::RateLimited { retry_after })?;
        }
        let limit = self.config.server.max_body;
        body::check_declared_length(&parts.headers, limit)?;
        let body = body::read(body, limit, self.config.server.body_timeout).await?;

        let received_at = SystemTime::now();
        let verified = provider
            .scheme
            .verify(&provider.keys, &parts.headers, &body, received_at)
            .inspect_err(|err| {
                self.metrics
                    .verification_failed(&provider.name, err.reason())
            })?;

        // Parsed only after the signature holds: forged input never reaches the parser.
        let json = check_body(&body)?;
        let id = extract(
            &provider.event_id,
            "event id",
            &parts.headers,
            &json,
            &verified,
        )?;
        Span::current().record("event_id", id.as_str());
        let kind = extract(
            &provider.event_type,
            "event type",
            &parts.headers,
            &json,
            &verified,
        )?;
        let envelope = Envelope::new(
            &provider.name,
            id.clone(),
            kind,
            provider.scheme.name(),
            source,
            received_at,
            body,
        )?
        .with_trace(Some(trace));
        Ok((self.admit(envelope).await?, id))
    }

    fn route(&self, path: &str) -> Result<&Provider, RequestError> {
        let name = path
            .strip_prefix("/hooks/")
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .ok_or(RequestError::NotFound)?;
        self.routes
            .get(name)
            .map(|&i| &self.config.providers[i])
            .ok_or(RequestError::UnknownProvider)
    }

    async fn admit(&self, envelope: Envelope) -> Result<Admission, RequestError> {
        let dedupe = self.dedupe.clone();
        let handoff = self.handoff.clone();
        let metrics = self.metrics.clone();
        // Its own task: a client that hangs up must not cancel a publish half-way, or the
        // event could be in the queue yet unremembered. Boxed: the future (dedupe, publish,
        // confirm) is kilobytes, and tokio copies a task's future into its cell and its stage
        // on every transition; behind a box each copy is a pointer (memmove was 8 % of the
        // listener's CPU under load, `perf record --call-graph dwarf`).
        let task = tokio::spawn(Box::pin(
            async move {
                let provider = envelope.provider.to_string();
                let id = envelope.event_id.to_string();
                let started = Instant::now();
                let observer = metrics.clone();
                let result = dedupe
                    .admit(&provider, &id, async move {
                        let result = handoff.handoff(envelope).await;
                        if result.is_ok() {
                            observer.handed_off(started.elapsed());
                        }
                        result
                    })
                    .await;
                if let Err(err) = &result {
                    metrics.handoff_failed(&provider, err.reason(), &ErrorChain(&**err));
                }
                result
            }
            .instrument(Span::current()),
        ));
        match task.await {
            Ok(Ok(admission)) => Ok(admission),
            Ok(Err(_)) | Err(_) => Err(RequestError::Unavailable),
        }
    }
}

/// The trace a request names: its one `traceparent` (two or more: none, as W3C says), and
/// its `tracestate` headers joined as one list.
fn caller_trace(headers: &http::HeaderMap) -> Option<TraceContext> {
    let mut parents = headers.get_all(TRACEPARENT).iter();
    let parent = parents.next()?.to_str().ok()?;
    if parents.next().is_some() {
        return None;
    }
    let states: Vec<&str> = headers
        .get_all(TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let state = states.join(",");
    TraceContext::from_headers(Some(parent), Some(state.as_str()).filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    //! The pipeline driven request by request, with no socket and no broker: a fake handoff
    //! sends what it is given down a channel and answers as the test says. The broker handoff's
    //! own choices are tested over a publisher with no broker behind it, on a paused clock.

    use std::collections::HashMap;
    use std::time::Duration;

    use http::{HeaderName, HeaderValue, header};
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;

    use super::*;
    use crate::broker::publisher::LinkState;
    use crate::listener::error::RETRY_AFTER_SECS;

    /// Makes the error a refused handoff answers with (a `HandoffError` is not `Clone`).
    type Failure = fn() -> HandoffError;

    /// How the fake answers a handoff.
    #[derive(Clone, Copy)]
    enum Answer {
        /// Takes the event: a confirmed publish.
        Take,
        /// Refuses it with this error.
        Refuse(Failure),
    }

    /// A handoff that sends every envelope it is given down a channel, then answers.
    #[derive(Clone)]
    struct FakeHandoff {
        sent: mpsc::UnboundedSender<Envelope>,
        answer: Answer,
    }

    impl Handoff for FakeHandoff {
        async fn handoff(&self, envelope: Envelope) -> Result<(), HandoffError> {
            // The receiver outlives every request of a test.
            let _ = self.sent.send(envelope);
            match self.answer {
                Answer::Take => Ok(()),
                Answer::Refuse(error) => Err(error()),
            }
        }
    }

    const CONFIG: &str = r#"
[server]
max_body = 1024
body_timeout = "1s"

[[providers]]
name = "dregs"
scheme = "hmac-sha256"
secrets = ["test-secret"]
signature_header = "X-Dregs-Signature"
prefix = "sha256="

[[providers]]
name = "stripe"
scheme = "stripe"
secrets = ["whsec_test"]

[[providers]]
name = "fenced"
scheme = "hmac-sha256"
secrets = ["fence-secret"]
signature_header = "X-Sig"
allow_ips = ["203.0.113.0/24"]
"#;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 7));
    const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));

    /// A handler over [`CONFIG`] and the channel its handoffs go down.
    fn handler(answer: Answer) -> (Handler<FakeHandoff>, mpsc::UnboundedReceiver<Envelope>) {
        let config = ListenerConfig::parse("test.toml", CONFIG, &HashMap::new()).unwrap();
        let (sent, handed) = mpsc::unbounded_channel();
        let handoff = FakeHandoff { sent, answer };
        let handler = Handler::new(Arc::new(config), handoff, Arc::new(ListenerMetrics::new()));
        (handler, handed)
    }

    /// The headers `provider` would send with `body`, signed at `at`.
    fn signed_at(
        handler: &Handler<FakeHandoff>,
        provider: &str,
        body: &str,
        at: SystemTime,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let p = handler.config.provider(provider).unwrap();
        p.scheme.sign(&p.keys[0], body.as_bytes(), at, "").unwrap()
    }

    fn signed(
        handler: &Handler<FakeHandoff>,
        provider: &str,
        body: &str,
    ) -> Vec<(HeaderName, HeaderValue)> {
        signed_at(handler, provider, body, SystemTime::now())
    }

    fn request(
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: &str,
    ) -> Request<Full<Bytes>> {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    }

    fn post(path: &str, headers: &[(HeaderName, HeaderValue)], body: &str) -> Request<Full<Bytes>> {
        request(Method::POST, path, headers, body)
    }

    fn header(name: &'static str, value: &str) -> (HeaderName, HeaderValue) {
        (
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        )
    }

    /// Status and JSON body of an answer.
    async fn answer(response: Response<Full<Bytes>>) -> (u16, serde_json::Value) {
        let status = response.status().as_u16();
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn event(id: &str) -> String {
        format!(r#"{{"id":"{id}","type":"identity.scored","data":{{"humanity":22}}}}"#)
    }

    /// A POST to `/hooks/{provider}` of `body`, signed by `provider` now.
    fn signed_post(h: &Handler<FakeHandoff>, provider: &str, body: &str) -> Request<Full<Bytes>> {
        post(
            &format!("/hooks/{provider}"),
            &signed(h, provider, body),
            body,
        )
    }

    /// Every refusal of design.md's HTTP table that needs no broker: its status and `code`,
    /// and nothing handed off or remembered.
    #[test]
    fn a_callers_trace_is_one_traceparent_and_every_tracestate() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut headers = http::HeaderMap::new();
        headers.append(TRACEPARENT, HeaderValue::from_static(parent));
        headers.append(TRACESTATE, HeaderValue::from_static("a=1"));
        headers.append(TRACESTATE, HeaderValue::from_static("b=2"));
        let trace = caller_trace(&headers).unwrap();
        assert_eq!(trace.traceparent(), parent);
        assert_eq!(trace.tracestate().as_deref(), Some("a=1,b=2"));
        // Two parents: which one? Neither; the request starts a trace of its own.
        headers.append(TRACEPARENT, HeaderValue::from_static(parent));
        assert_eq!(caller_trace(&headers), None);
        assert_eq!(caller_trace(&http::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn refusals_answer_their_status_and_code_and_hand_nothing_off() {
        type Build = fn(&Handler<FakeHandoff>) -> Request<Full<Bytes>>;
        let e = || event("e");
        let cases: &[(&str, IpAddr, Build, u16, &str)] = &[
            (
                "unknown provider",
                PEER,
                |_| post("/hooks/nobody", &[], "{}"),
                404,
                "unknown_provider",
            ),
            (
                "not a hook path",
                PEER,
                |_| post("/elsewhere", &[], "{}"),
                404,
                "not_found",
            ),
            (
                "nested hook path",
                PEER,
                |_| post("/hooks/dregs/x", &[], "{}"),
                404,
                "not_found",
            ),
            (
                "method other than POST",
                PEER,
                |h| request(Method::PUT, "/hooks/dregs", &signed(h, "dregs", "{}"), "{}"),
                405,
                "method_not_allowed",
            ),
            (
                "source not in allow_ips",
                ELSEWHERE,
                |h| signed_post(h, "fenced", "{}"),
                403,
                "forbidden",
            ),
            (
                "headers over the limit",
                PEER,
                |h| {
                    let mut headers = signed(h, "dregs", "{}");
                    headers.push(header("x-padding", &"a".repeat(MAX_HEADER_BYTES)));
                    post("/hooks/dregs", &headers, "{}")
                },
                431,
                "headers_too_large",
            ),
            (
                "declared length over max_body",
                PEER,
                |_| {
                    post(
                        "/hooks/dregs",
                        &[header("content-length", "10000000000")],
                        "{}",
                    )
                },
                413,
                "body_too_large",
            ),
            (
                "body over max_body",
                PEER,
                |h| signed_post(h, "dregs", &"x".repeat(1025)),
                413,
                "body_too_large",
            ),
            (
                "signature missing",
                PEER,
                |_| post("/hooks/dregs", &[], "{}"),
                401,
                "missing_signature",
            ),
            (
                "signature wrong",
                PEER,
                |_| {
                    let forged = format!("sha256={}", "0".repeat(64));
                    post(
                        "/hooks/dregs",
                        &[header("x-dregs-signature", &forged)],
                        "{}",
                    )
                },
                401,
                "mismatch",
            ),
            (
                "body changed after signing",
                PEER,
                |h| {
                    post(
                        "/hooks/dregs",
                        &signed(h, "dregs", &event("e")),
                        &event("f"),
                    )
                },
                401,
                "mismatch",
            ),
            (
                "timestamp outside the window",
                PEER,
                |h| {
                    let stale = SystemTime::now() - Duration::from_secs(600);
                    post("/hooks/stripe", &signed_at(h, "stripe", "{}", stale), "{}")
                },
                401,
                "outside_window",
            ),
            (
                "signature header malformed",
                PEER,
                |_| {
                    post(
                        "/hooks/dregs",
                        &[header("x-dregs-signature", "deadbeef")],
                        "{}",
                    )
                },
                400,
                "malformed_signature",
            ),
            (
                "body not JSON",
                PEER,
                |h| signed_post(h, "dregs", "not json"),
                400,
                "invalid_json",
            ),
            (
                "a key named twice",
                PEER,
                |h| signed_post(h, "dregs", r#"{"id":"a","id":"b","type":"t"}"#),
                400,
                "duplicate_key",
            ),
            (
                "no event id",
                PEER,
                |h| signed_post(h, "dregs", r#"{"type":"t"}"#),
                400,
                "missing_field",
            ),
            (
                "id too long for AMQP",
                PEER,
                |h| signed_post(h, "dregs", &event(&"x".repeat(256))),
                400,
                "invalid_field",
            ),
        ];
        // The one row the rows above cannot show: the same request, from an allowed source, passes.
        let (h, _handed) = handler(Answer::Take);
        assert_eq!(
            h.handle(signed_post(&h, "fenced", &e()), PEER)
                .await
                .status(),
            200
        );

        for (name, peer, build, status, code) in cases {
            let (handler, mut handed) = handler(Answer::Take);
            let response = handler.handle(build(&handler), *peer).await;
            if *status == 405 {
                assert_eq!(response.headers()[header::ALLOW], "POST", "{name}");
            }
            let (got, body) = answer(response).await;
            assert_eq!(
                (got, body["code"].as_str()),
                (*status, Some(*code)),
                "{name}: {body}"
            );
            assert!(body["error"].is_string(), "{name}: {body}");
            assert!(handed.try_recv().is_err(), "{name}: handed off");
            assert!(handler.dedupe().is_empty(), "{name}: remembered");
        }
    }

    #[tokio::test]
    async fn an_accepted_event_is_handed_off_byte_for_byte_and_its_retry_is_a_duplicate() {
        let (handler, mut handed) = handler(Answer::Take);
        // Whitespace and key order as the provider sent them, which a re-serialization would lose.
        let body = "{ \"type\": \"identity.scored\",\n  \"id\": \"evt_1\" }\n";
        let headers = signed(&handler, "dregs", body);
        let response = handler
            .handle(post("/hooks/dregs", &headers, body), PEER)
            .await;
        assert_eq!(
            answer(response).await,
            (
                200,
                serde_json::json!({"status": "accepted", "id": "evt_1"})
            )
        );
        let envelope = handed.try_recv().unwrap();
        assert_eq!(envelope.body.as_ref(), body.as_bytes());
        assert_eq!(envelope.provider.as_str(), "dregs");
        assert_eq!(envelope.event_id.as_str(), "evt_1");
        assert_eq!(envelope.event_type.as_str(), "identity.scored");
        assert_eq!(envelope.scheme, "hmac-sha256");
        assert_eq!(envelope.source_ip, PEER);

        let response = handler
            .handle(post("/hooks/dregs", &headers, body), PEER)
            .await;
        assert_eq!(
            answer(response).await,
            (
                200,
                serde_json::json!({"status": "duplicate", "id": "evt_1"})
            )
        );
        assert!(handed.try_recv().is_err(), "a duplicate is not handed off");
    }

    #[tokio::test]
    async fn a_failed_handoff_is_503_with_retry_after_and_forgotten() {
        let failures: &[(&str, Failure)] = &[
            ("broker unreachable", || PublishError::NotConnected.into()),
            ("no confirm within handoff_timeout", || {
                PublishError::ConfirmTimeout.into()
            }),
            ("broker nack", || PublishError::Nack.into()),
            ("spool full", || SpoolError::Full.into()),
        ];
        for (name, error) in failures {
            let (handler, mut handed) = handler(Answer::Refuse(*error));
            let body = event("evt_503");
            let headers = signed(&handler, "dregs", &body);
            let response = handler
                .handle(post("/hooks/dregs", &headers, &body), PEER)
                .await;
            assert_eq!(
                response.headers()[header::RETRY_AFTER],
                RETRY_AFTER_SECS.to_string(),
                "{name}"
            );
            let (status, json) = answer(response).await;
            assert_eq!(
                (status, json["code"].as_str()),
                (503, Some("unavailable")),
                "{name}"
            );
            // 5xx bodies carry no internals.
            assert_eq!(
                json["error"], "temporarily unable to accept events; retry later",
                "{name}"
            );
            assert!(handed.try_recv().is_ok(), "{name}: the handoff was tried");
            // Not remembered: the provider's retry is handed off again.
            assert!(!handler.dedupe().contains("dregs", "evt_503"), "{name}");
        }
    }

    /// The `error` of a `handoff failed` line: each cause once, whether an error shows its
    /// source in its own message (lapin, the publisher) or leaves it to `source()` (the spool).
    #[test]
    fn handoff_failures_log_each_cause_once() {
        let lapin = lapin::Error::from(std::io::Error::other("connection reset"));
        let closed = HandoffError::from(PublishError::ChannelClosed(lapin));
        assert_eq!(
            ErrorChain(&closed).to_string(),
            "channel failed: IO error: connection reset"
        );
        let stopped = HandoffError::from(SpoolError::from(
            crate::listener::spool::Unwritable::WriterStopped,
        ));
        assert_eq!(stopped.reason(), "spool_unwritable");
        assert_eq!(
            ErrorChain(&stopped).to_string(),
            "the spool cannot be written: the spool writer stopped"
        );
    }

    #[tokio::test]
    async fn concurrent_deliveries_of_one_id_are_handed_off_once() {
        let (handler, mut handed) = handler(Answer::Take);
        let handler = Arc::new(handler);
        let body = event("evt_burst");
        let headers = signed(&handler, "dregs", &body);
        let answers = futures_util::future::join_all((0..8).map(|_| {
            let handler = handler.clone();
            let request = post("/hooks/dregs", &headers, &body);
            async move { answer(handler.handle(request, PEER).await).await }
        }))
        .await;
        let accepted = answers
            .iter()
            .filter(|(status, json)| *status == 200 && json["status"] == "accepted")
            .count();
        let duplicates = answers
            .iter()
            .filter(|(status, json)| *status == 200 && json["status"] == "duplicate")
            .count();
        assert_eq!((accepted, duplicates), (1, 7), "{answers:?}");
        assert!(handed.try_recv().is_ok());
        assert!(handed.try_recv().is_err(), "handed off twice");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_is_408_after_body_timeout() {
        let (handler, mut handed) = handler(Answer::Take);
        // One chunk, then nothing: a client that went quiet mid-body.
        let first = futures_util::stream::iter([Ok::<_, std::io::Error>(
            hyper::body::Frame::data(Bytes::from_static(b"{")),
        )]);
        let body = StreamBody::new(futures_util::StreamExt::chain(
            first,
            futures_util::stream::pending(),
        ));
        let request = Request::post("/hooks/dregs").body(body).unwrap();
        let started = Instant::now();
        let response = handler.handle(request, PEER).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        let (status, json) = answer(response).await;
        assert_eq!((status, json["code"].as_str()), (408, Some("body_timeout")));
        assert!(handed.try_recv().is_err());
    }

    /// A broker handoff whose publisher never gets a link (its state is the test's to set),
    /// with a spool in a fresh file when `spooled`; the file's path, to remove.
    fn broker_handoff(spooled: bool) -> (BrokerHandoff, Option<std::path::PathBuf>) {
        let path = spooled.then(|| {
            std::env::temp_dir().join(format!("hw-handoff-{}.db", uuid::Uuid::new_v4().simple()))
        });
        let handoff = BrokerHandoff {
            publisher: Publisher::detached(),
            timeout: Duration::from_secs(5),
            spool: path.as_ref().map(|p| Spool::open(p, 1 << 20).unwrap()),
            metrics: Arc::new(ListenerMetrics::new()),
        };
        (handoff, path)
    }

    fn envelope(id: &str) -> Envelope {
        Envelope::new(
            "dregs",
            id.to_owned(),
            "identity.scored".to_owned(),
            "hmac-sha256",
            PEER,
            SystemTime::now(),
            Bytes::from(event(id)),
        )
        .unwrap()
    }

    /// The handoff of a request that came before any connection, and when its answer came.
    async fn timed(handoff: &BrokerHandoff, id: &str) -> (Result<(), HandoffError>, Duration) {
        let started = Instant::now();
        let result = handoff.handoff(envelope(id)).await;
        (result, started.elapsed())
    }

    /// Without a spool: a request that finds no connection waits out handoff_timeout for one
    /// (a publisher that connects in time is publisher.rs's test), then is refused as before;
    /// once the broker is known away, the next is refused at once.
    #[tokio::test(start_paused = true)]
    async fn without_a_spool_a_request_waits_for_the_connection_then_is_refused() {
        let (handoff, _) = broker_handoff(false);
        let (result, waited) = timed(&handoff, "evt_first").await;
        assert!(matches!(
            result,
            Err(HandoffError::Publish(PublishError::NotConnected))
        ));
        assert_eq!(waited, handoff.timeout);
        let (result, waited) = timed(&handoff, "evt_second").await;
        assert!(matches!(
            result,
            Err(HandoffError::Publish(PublishError::NotConnected))
        ));
        assert_eq!(waited, Duration::ZERO);
    }

    /// With a spool: the request waits for the connection while one may come, and is spooled
    /// when the attempt fails (then, not at the deadline) or the deadline passes; once the
    /// broker is known away, at once.
    #[tokio::test(start_paused = true)]
    async fn with_a_spool_a_request_waits_while_a_connection_may_come_then_is_spooled() {
        let (handoff, path) = broker_handoff(true);
        let spool = handoff.spool.clone().unwrap();
        let (result, waited) = timed(&handoff, "evt_deadline").await;
        result.unwrap();
        assert_eq!((waited, spool.depth()), (handoff.timeout, 1));

        let (result, waited) = timed(&handoff, "evt_known_away").await;
        result.unwrap();
        assert_eq!((waited, spool.depth()), (Duration::ZERO, 2));

        // A connection lost: the reconnect is waited for, and its failure ends the wait.
        handoff.publisher.set_state(LinkState::Connecting);
        let publisher = handoff.publisher.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(40)).await;
            publisher.set_state(LinkState::Unreachable);
        });
        let (result, waited) = timed(&handoff, "evt_attempt_failed").await;
        result.unwrap();
        assert_eq!((waited, spool.depth()), (Duration::from_millis(40), 3));
        drop((handoff, spool));
        let _ = std::fs::remove_file(path.unwrap());
    }
}
