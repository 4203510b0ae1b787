//! One trace from the provider's request to the action's target: both daemons run as
//! processes, a real HTTP server in the test takes their OTLP/HTTP exports (protobuf, as the
//! SDK sends them), and the action's target records the `traceparent` it was sent.
//! Prerequisite: RabbitMQ.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hookwarden::cli::http_client;
use hookwarden::listener::config::ListenerConfig;
use hookwarden::listener::extract::parse_body;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message as _;

use crate::daemon::Daemon;
use crate::harness::{Harness, free_addr, sign_with, wait_for};
use crate::sink::Sink;
use crate::worker_harness::{WorkerHarness, dregs};

/// A quarantine call for low scores, and a `log` action on the same rule.
const RULES: &str = r#"
[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0"
actions = ["note", "quarantine"]

[actions.note]
kind = "log"
message = "quarantining {{ subject }}"

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine"
retries = 0
timeout = "2s"
"#;

/// The provider's own trace, as its HTTP client would send it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// One exported span, as the test compares them.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

/// A collector: takes `POST /v1/traces` and keeps every span of every export.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Exported>>>,
    posts: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let posts = Arc::new(Mutex::new(0));
        let (s, p) = (spans.clone(), posts.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, p) = (s.clone(), p.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (s, p) = (s.clone(), p.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            *p.lock().unwrap() += 1;
                            assert_eq!(path, "/v1/traces");
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            s.lock().unwrap().extend(flatten(export));
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            spans,
            posts,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }

    fn posts(&self) -> u32 {
        *self.posts.lock().unwrap()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<Exported> {
    let mut out = Vec::new();
    for resource in export.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                out.push(Exported {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent: hex::encode(span.parent_span_id),
                });
            }
        }
    }
    out
}

/// Both daemons on one topology with `extra` appended to each config file.
struct Pair {
    listener: Daemon,
    worker: Daemon,
    signers: ListenerConfig,
    url: String,
    _dir: crate::harness::tempdir::Dir,
    /// Deletes the topology when dropped.
    _names: crate::harness::Names,
}

impl Pair {
    async fn start(sink: &Sink, extra: &str, env: &[(&str, &str)]) -> Self {
        let public = free_addr();
        let (dir, listener_toml, names) = Harness::new().write_config(public, free_addr());
        append(&listener_toml, extra);
        let rules_toml = dir.path.join("rules.toml");
        std::fs::write(
            &rules_toml,
            WorkerHarness::for_dregs(RULES).text(&names, &dir.path.join("worker.db"), &sink.url()),
        )
        .unwrap();
        append(&rules_toml, extra);
        let text = std::fs::read_to_string(&listener_toml).unwrap();
        let signers = ListenerConfig::parse("listener.toml", &text, &HashMap::new()).unwrap();
        // The worker first: it declares the exchange the listener publishes to.
        let worker = Daemon::spawn_with_env(
            "worker",
            env!("CARGO_BIN_EXE_hookwarden-worker"),
            &rules_toml,
            env,
        );
        worker.wait_for(r#""message":"consuming""#).await;
        let listener = Daemon::spawn_with_env(
            "listener",
            env!("CARGO_BIN_EXE_hookwarden-listener"),
            &listener_toml,
            env,
        );
        listener.wait_for("broker connected").await;
        Self {
            listener,
            worker,
            signers,
            url: format!("http://{public}/hooks/dregs"),
            _dir: dir,
            _names: names,
        }
    }

    /// Posts a low score for `subject`, signed, with the provider's `traceparent`.
    async fn post_traced(&self, id: &str, subject: &str) {
        let body = dregs(id, subject, "2026-12-01T10:00:00Z", 12);
        let mut headers = sign_with(
            &self.signers,
            "dregs",
            body.as_bytes(),
            SystemTime::now(),
            "",
        );
        headers.push((
            HeaderName::from_static("traceparent"),
            HeaderValue::from_str(&format!("00-{TRACE_ID}-{CALLER_SPAN}-01")).unwrap(),
        ));
        let answer = http_client::post(&self.url, &headers, Bytes::from(body))
            .await
            .unwrap();
        assert_eq!(answer.status.as_u16(), 200, "{:?}", answer.body);
    }
}

fn append(path: &Path, extra: &str) {
    let mut text = std::fs::read_to_string(path).unwrap();
    text.push('\n');
    text.push_str(extra);
    std::fs::write(path, text).unwrap();
}

/// The `traceparent` the sink received for `subject`'s quarantine.
async fn traceparent_at(sink: &Sink, subject: &str) -> String {
    let path = format!("/accounts/{subject}/quarantine");
    wait_for("the quarantine call", Duration::from_secs(20), || {
        let got = sink
            .received()
            .into_iter()
            .find(|r| r.path == path)
            .map(|r| r.traceparent.clone().unwrap_or_default());
        async move { got.ok_or_else(|| "not yet".to_owned()) }
    })
    .await
}

/// The `trace_id` of the JSON line whose `message` is `message` (and, given, whose `text`).
fn trace_id_of(lines: &[String], message: &str) -> Option<String> {
    lines
        .iter()
        .filter_map(|l| parse_body(l.as_bytes()).ok())
        .find(|v| v["message"] == message)
        .and_then(|v| v["trace_id"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn one_trace_covers_the_request_the_delivery_the_rule_and_the_action() {
    let collector = Collector::start().await;
    let sink = Sink::start().await;
    let telemetry = format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nexport_interval = \"200ms\"\n",
        collector.url()
    );
    let pair = Pair::start(&sink, &telemetry, &[]).await;
    pair.post_traced("e-traced", "u-traced").await;

    // The target saw the provider's trace, its parent a span of the worker's.
    let sent = traceparent_at(&sink, "u-traced").await;
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[1], TRACE_ID, "{sent}");
    let target_parent = parts[2].to_owned();

    let spans = wait_for("the four spans", Duration::from_secs(20), || {
        let spans: Vec<Exported> = collector
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == TRACE_ID)
            .collect();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        let verdict = if ["request", "delivery", "rule", "action"]
            .iter()
            .all(|n| names.contains(n))
        {
            Ok(spans)
        } else {
            Err(format!("spans so far: {spans:#?}"))
        };
        async move { verdict }
    })
    .await;
    let one = |name: &str| {
        let found: Vec<&Exported> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span: {spans:#?}");
        found[0].clone()
    };
    let (request, delivery, rule) = (one("request"), one("delivery"), one("rule"));
    let actions: Vec<&Exported> = spans.iter().filter(|s| s.name == "action").collect();
    assert_eq!(actions.len(), 2, "note and quarantine: {actions:#?}");
    assert_eq!(request.service, "hookwarden-listener");
    assert_eq!(
        request.parent, CALLER_SPAN,
        "the request continues the caller's span"
    );
    for worker_span in [&delivery, &rule]
        .into_iter()
        .chain(actions.iter().copied())
    {
        assert_eq!(worker_span.service, "hookwarden-worker", "{worker_span:?}");
    }
    assert_eq!(delivery.parent, request.span_id, "delivery under request");
    assert_eq!(rule.parent, delivery.span_id, "rule under delivery");
    for action in &actions {
        assert_eq!(action.parent, rule.span_id, "action under rule");
    }
    // One of the two went out over HTTP; its span is the target's parent.
    assert!(
        actions.iter().any(|a| a.span_id == target_parent),
        "the target's parent {target_parent} is an exported action span: {actions:#?}"
    );

    let listener_lines = pair.listener.stop().await;
    let worker_lines = pair.worker.stop().await;
    assert_eq!(
        trace_id_of(&listener_lines, "request").as_deref(),
        Some(TRACE_ID),
        "the listener's request line: {listener_lines:#?}"
    );
    assert_eq!(
        trace_id_of(&worker_lines, "action").as_deref(),
        Some(TRACE_ID),
        "the log action's line: {worker_lines:#?}"
    );
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_the_trace_still_travels() {
    let collector = Collector::start().await;
    let sink = Sink::start().await;
    // The SDK's own variables name the collector: they must not turn export on.
    let url = collector.url();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.as_str()),
    ];
    let pair = Pair::start(&sink, "", &env).await;
    pair.post_traced("e-quiet", "u-quiet").await;
    let sent = traceparent_at(&sink, "u-quiet").await;
    assert!(
        sent.starts_with(&format!("00-{TRACE_ID}-")) && sent.ends_with("-01"),
        "{sent}"
    );
    assert!(!sent.contains(CALLER_SPAN), "a span of its own: {sent}");

    // Stopping flushes whatever an exporter would hold.
    let listener_lines = pair.listener.stop().await;
    let worker_lines = pair.worker.stop().await;
    assert_eq!(collector.posts(), 0, "{:#?}", collector.spans());
    assert_eq!(
        trace_id_of(&listener_lines, "request").as_deref(),
        Some(TRACE_ID)
    );
    assert_eq!(
        trace_id_of(&worker_lines, "action").as_deref(),
        Some(TRACE_ID)
    );
}
