//! `hookwarden bench`: signed load against a running listener. Each connection keeps its
//! socket open and sends one request at a time, every request a fresh event id signed
//! with the provider's scheme; latencies go into an HDR histogram.
//!
//! Closed loop (`--concurrency` alone): each connection sends as soon as its last answer
//! came. Open loop (`--rate`): requests are due on a fixed schedule and a request's latency
//! counts from when it was due, so a stall shows in the percentiles instead of hiding in a
//! lower send rate. End to end (`--end-to-end`): a local sink takes the worker's actions and
//! times each event from its send to its action.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::cli::sign::Signer;

/// What one bench run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Connections used.
    pub connections: usize,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Requests answered.
    pub requests: u64,
    /// Answered requests per second.
    pub requests_per_second: f64,
    /// Latency percentiles in milliseconds.
    pub latency_ms: Latency,
    /// Count per HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer.
    pub errors: u64,
    /// The open-loop schedule, requests per second (absent: closed loop).
    pub target_rate: Option<f64>,
    /// Event-to-action figures, with `--end-to-end`.
    pub end_to_end: Option<EndToEnd>,
}

/// What the sink saw of the worker's actions.
#[derive(Debug, Serialize)]
pub struct EndToEnd {
    /// Events answered 200 (each should become one action).
    pub accepted: u64,
    /// Events whose action reached the sink.
    pub acted: u64,
    /// Accepted events with no action by the end of the wait.
    pub missing: u64,
    /// Action requests for an event already seen (retries, redeliveries).
    pub repeated: u64,
    /// From the request's send to its first action, milliseconds.
    pub latency_ms: Latency,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} requests in {:.1} s over {} connections: {:.0} req/s",
            self.requests, self.seconds, self.connections, self.requests_per_second
        )?;
        writeln!(
            f,
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            self.latency_ms.p50, self.latency_ms.p90, self.latency_ms.p99, self.latency_ms.max
        )?;
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        write!(
            f,
            "statuses: {}; errors: {}",
            statuses.join(", "),
            self.errors
        )?;
        if let Some(rate) = self.target_rate {
            write!(
                f,
                "\nopen loop at {rate:.0} req/s; latency counted from when each request was due"
            )?;
        }
        if let Some(e) = &self.end_to_end {
            write!(
                f,
                "\nend to end: {} of {} accepted events acted on ({} missing, {} repeated)\n\
                 event-to-action ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
                e.acted,
                e.accepted,
                e.missing,
                e.repeated,
                e.latency_ms.p50,
                e.latency_ms.p90,
                e.latency_ms.p99,
                e.latency_ms.max
            )?;
        }
        Ok(())
    }
}

/// A body of about 500 bytes shaped like a fraud provider's event; `{id}` is replaced.
const SAMPLE: &str = r#"{"id":"{id}","type":"identity.scored","created_at":"2026-11-21T14:03:27.512Z","data":{"identity_id":"usr_48213","scored_at":"2026-11-21T14:03:27.401Z","scores":{"humanity":22,"uniqueness":61,"authenticity":48},"previous_scores":{"humanity":74,"uniqueness":63,"authenticity":51},"badges":["Suspicious"],"reason":"burst of sign-ups sharing one device fingerprint","device":{"fingerprint":"fp_9a8b7c6d5e4f","ip":"198.51.100.23","country":"NL"},"padding":"................................................"}}"#;

/// How to run the load.
#[derive(Debug, Clone)]
pub struct Options {
    /// `http://host:port/hooks/NAME`.
    pub url: String,
    /// Connections (the most requests in flight at once).
    pub connections: usize,
    /// How long to send.
    pub duration: Duration,
    /// Open loop at this many requests per second in all; `None` = closed loop.
    pub rate: Option<f64>,
    /// Body with `{id}` for the unique id; `None` = the built-in sample.
    pub template: Option<String>,
    /// Run the action sink here and report event-to-action latency.
    pub end_to_end: Option<SocketAddr>,
    /// After sending stops, how long to wait for the last actions.
    pub end_to_end_wait: Duration,
}

/// Send times by bench id, shared by the clients and read by the sink's report.
type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// Runs the load of `options` against a listener.
///
/// # Errors
/// The URL is not plain `http://host:port/...`, the rate is not positive, the sink's address
/// cannot be bound.
pub async fn run(signer: Arc<Signer>, options: Options) -> anyhow::Result<Report> {
    let uri: http::Uri = options
        .url
        .parse()
        .with_context(|| format!("invalid URL {:?}", options.url))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "only http:// URLs are supported"
    );
    if let Some(rate) = options.rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number"
        );
    }
    let authority = uri.authority().context("URL has no host")?.to_string();
    let template = Arc::new(
        options
            .template
            .clone()
            .unwrap_or_else(|| SAMPLE.to_owned()),
    );
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let marker = format!("bench-{run_id}-");
    let sent: Option<Sent> = options.end_to_end.map(|_| Sent::default());
    let sink = match options.end_to_end {
        Some(addr) => Some(Sink::start(addr, marker.clone()).await?),
        None => None,
    };
    let connections = options.connections.max(1);
    // Each connection keeps its share of the schedule: one request every `interval`.
    let interval = options
        .rate
        .map(|rate| Duration::from_secs_f64(connections as f64 / rate));
    let started = Instant::now();
    let deadline = started + options.duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let client = Client {
            signer: signer.clone(),
            uri: uri.clone(),
            authority: authority.clone(),
            template: template.clone(),
            prefix: format!("{marker}{c}-"),
            sent: sent.clone(),
        };
        // Connections start spread over one interval, not all at once.
        let first = interval.map(|i| started + i.mul_f64(c as f64 / connections as f64));
        tasks.push(tokio::spawn(async move {
            client.run(deadline, first, interval).await
        }));
    }
    let mut histogram = new_histogram()?;
    let mut statuses = BTreeMap::new();
    let mut errors = 0;
    for task in tasks {
        let (h, s, e) = task.await.context("bench client task")??;
        histogram.add(&h).ok();
        for (status, n) in s {
            *statuses.entry(status).or_insert(0) += n;
        }
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    let end_to_end = match (sink, sent) {
        (Some(sink), Some(sent)) => {
            let accepted = statuses.get(&200).copied().unwrap_or(0);
            Some(
                sink.finish(&sent, accepted, options.end_to_end_wait)
                    .await?,
            )
        }
        _ => None,
    };
    Ok(Report {
        connections,
        seconds,
        requests: histogram.len(),
        requests_per_second: histogram.len() as f64 / seconds,
        latency_ms: latency(&histogram),
        statuses,
        errors,
        target_rate: options.rate,
        end_to_end,
    })
}

fn latency(histogram: &Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        p50: ms(histogram.value_at_quantile(0.5)),
        p90: ms(histogram.value_at_quantile(0.9)),
        p99: ms(histogram.value_at_quantile(0.99)),
        max: ms(histogram.max()),
    }
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs .. 60 s at 3 significant figures.
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

type ClientResult = (Histogram<u64>, BTreeMap<u16, u64>, u64);

/// One connection's load.
struct Client {
    signer: Arc<Signer>,
    uri: http::Uri,
    authority: String,
    template: Arc<String>,
    /// Bench id prefix of this connection; request `n` carries `{prefix}{n}`.
    prefix: String,
    sent: Option<Sent>,
}

impl Client {
    /// Sends until `deadline`: back to back, or one request every `interval` from `first`.
    async fn run(
        self,
        deadline: Instant,
        first: Option<Instant>,
        interval: Option<Duration>,
    ) -> anyhow::Result<ClientResult> {
        let mut histogram = new_histogram()?;
        let mut statuses = BTreeMap::new();
        let mut errors = 0;
        let mut sender = None;
        let mut n: u64 = 0;
        let mut due = first;
        loop {
            if let Some(at) = due {
                if at >= deadline {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
            } else if Instant::now() >= deadline {
                break;
            }
            // Open loop: latency counts from when the request was due, not when it went.
            let start = due.unwrap_or_else(Instant::now);
            due = due.zip(interval).map(|(at, i)| at + i);
            if sender.is_none() {
                match connect(&self.authority).await {
                    Ok(s) => sender = Some(s),
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
            }
            let Some(s) = sender.as_mut() else { continue };
            n += 1;
            let id = format!("{}{n}", self.prefix);
            let Some(request) = self.request(&id) else {
                errors += 1;
                continue;
            };
            if let Some(sent) = &self.sent
                && let Ok(mut sent) = sent.lock()
            {
                sent.insert(id, start);
            }
            let result = async {
                let response = s.send_request(request).await?;
                let status = response.status().as_u16();
                response.into_body().collect().await?;
                Ok::<u16, hyper::Error>(status)
            }
            .await;
            match result {
                Ok(status) => {
                    let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                    histogram.saturating_record(us.max(1));
                    *statuses.entry(status).or_insert(0) += 1;
                }
                Err(_) => {
                    errors += 1;
                    sender = None;
                }
            }
        }
        Ok((histogram, statuses, errors))
    }

    /// The signed request for bench id `id`.
    fn request(&self, id: &str) -> Option<Request<Full<Bytes>>> {
        let body = Bytes::from(self.template.replace("{id}", id));
        let headers = self.signer.sign(&body).ok()?;
        let mut request = Request::post(self.uri.clone())
            .header(http::header::HOST, self.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .ok()?;
        for (name, value) in headers {
            request.headers_mut().insert(name, value);
        }
        Some(request)
    }
}

async fn connect(
    authority: &str,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// First arrival per bench id, and how many arrivals repeated one.
#[derive(Default)]
struct Arrivals {
    first: HashMap<String, Instant>,
    repeated: u64,
}

/// The stand-in action target of `--end-to-end`: answers every request 200 and notes when
/// the first request naming each bench id (in its path, headers or body) arrived.
struct Sink {
    arrivals: Arc<Mutex<Arrivals>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Sink {
    async fn start(addr: SocketAddr, marker: String) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind the end-to-end sink to {addr}"))?;
        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (a, s, marker) = (arrivals.clone(), stop.clone(), Arc::new(marker));
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    () = s.cancelled() => return,
                };
                let (arrivals, marker) = (a.clone(), marker.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (arrivals, marker) = (arrivals.clone(), marker.clone());
                        async move {
                            note_arrival(request, &marker, &arrivals).await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"{}"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { arrivals, stop })
    }

    /// Waits (at most `wait`) for an action per accepted event, stops, and reports.
    async fn finish(self, sent: &Sent, accepted: u64, wait: Duration) -> anyhow::Result<EndToEnd> {
        let until = Instant::now() + wait;
        loop {
            let acted = self.arrivals.lock().map_or(0, |a| a.first.len() as u64);
            if acted >= accepted || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.cancel();
        let arrivals = self
            .arrivals
            .lock()
            .map_err(|_| anyhow::anyhow!("sink state poisoned"))?;
        let sent = sent
            .lock()
            .map_err(|_| anyhow::anyhow!("bench state poisoned"))?;
        let mut histogram = new_histogram()?;
        for (id, arrived) in &arrivals.first {
            if let Some(at) = sent.get(id) {
                let us = u64::try_from(arrived.saturating_duration_since(*at).as_micros())
                    .unwrap_or(u64::MAX);
                histogram.saturating_record(us.max(1));
            }
        }
        let acted = histogram.len();
        Ok(EndToEnd {
            accepted,
            acted,
            missing: accepted.saturating_sub(acted),
            repeated: arrivals.repeated,
            latency_ms: latency(&histogram),
        })
    }
}

async fn note_arrival(
    request: Request<hyper::body::Incoming>,
    marker: &str,
    arrivals: &Mutex<Arrivals>,
) {
    let arrived = Instant::now();
    let (parts, body) = request.into_parts();
    let mut id = bench_id(parts.uri.path(), marker);
    for value in parts.headers.values() {
        if id.is_some() {
            break;
        }
        id = value.to_str().ok().and_then(|v| bench_id(v, marker));
    }
    if id.is_none()
        && let Ok(collected) = body.collect().await
    {
        id = bench_id(&String::from_utf8_lossy(&collected.to_bytes()), marker);
    }
    let Some(id) = id else { return };
    if let Ok(mut a) = arrivals.lock() {
        match a.first.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => a.repeated += 1,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(arrived);
            }
        }
    }
}

/// The bench id in `text`: `marker` followed by `<connection>-<n>`.
fn bench_id(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)?;
    let rest = &text[at + marker.len()..];
    let len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    let tail = rest[..len].trim_end_matches('-');
    tail.contains('-').then(|| format!("{marker}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_ids_are_found_in_paths_and_bodies() {
        let m = "bench-1a2b3c4d-";
        assert_eq!(
            bench_id("/e2e/bench-1a2b3c4d-12-345", m).as_deref(),
            Some("bench-1a2b3c4d-12-345")
        );
        assert_eq!(
            bench_id(r#"{"id":"bench-1a2b3c4d-0-7","x":1}"#, m).as_deref(),
            Some("bench-1a2b3c4d-0-7")
        );
        assert_eq!(bench_id("/e2e/bench-ffffffff-1-2", m), None);
        assert_eq!(bench_id("bench-1a2b3c4d-12", m), None);
    }
}
