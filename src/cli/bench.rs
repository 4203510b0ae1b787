//! `hookwarden bench`: signed load against a running listener. Each connection keeps its
//! socket open and sends one request at a time, every request a fresh event id signed
//! with the provider's scheme; latencies go into an HDR histogram.

use std::collections::BTreeMap;
use std::sync::Arc;
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
        )
    }
}

/// A body of about 500 bytes shaped like a fraud provider's event; `{id}` is replaced.
const SAMPLE: &str = r#"{"id":"{id}","type":"identity.scored","created_at":"2026-11-21T14:03:27.512Z","data":{"identity_id":"usr_48213","scored_at":"2026-11-21T14:03:27.401Z","scores":{"humanity":22,"uniqueness":61,"authenticity":48},"previous_scores":{"humanity":74,"uniqueness":63,"authenticity":51},"badges":["Suspicious"],"reason":"burst of sign-ups sharing one device fingerprint","device":{"fingerprint":"fp_9a8b7c6d5e4f","ip":"198.51.100.23","country":"NL"},"padding":"................................................"}}"#;

/// Runs `connections` closed-loop clients against `url` for `duration`.
///
/// # Errors
/// The URL is not plain `http://host:port/...`.
pub async fn run(
    signer: Arc<Signer>,
    url: &str,
    connections: usize,
    duration: Duration,
    template: Option<String>,
) -> anyhow::Result<Report> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("invalid URL {url:?}"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "only http:// URLs are supported"
    );
    let authority = uri.authority().context("URL has no host")?.to_string();
    let template = Arc::new(template.unwrap_or_else(|| SAMPLE.to_owned()));
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (signer, uri, authority, template) = (
            signer.clone(),
            uri.clone(),
            authority.clone(),
            template.clone(),
        );
        let prefix = format!("bench-{}-{c}-", &run_id[..8]);
        tasks.push(tokio::spawn(async move {
            client(signer, uri, authority, template, prefix, deadline).await
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
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Report {
        connections,
        seconds,
        requests: histogram.len(),
        requests_per_second: histogram.len() as f64 / seconds,
        latency_ms: Latency {
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        },
        statuses,
        errors,
    })
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs .. 60 s at 3 significant figures.
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

type ClientResult = (Histogram<u64>, BTreeMap<u16, u64>, u64);

async fn client(
    signer: Arc<Signer>,
    uri: http::Uri,
    authority: String,
    template: Arc<String>,
    prefix: String,
    deadline: Instant,
) -> anyhow::Result<ClientResult> {
    let mut histogram = new_histogram()?;
    let mut statuses = BTreeMap::new();
    let mut errors = 0;
    let mut sender = None;
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        if sender.is_none() {
            match connect(&authority).await {
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
        let body = Bytes::from(template.replace("{id}", &format!("{prefix}{n}")));
        let headers = match signer.sign(&body) {
            Ok(h) => h,
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        let mut request = match Request::post(uri.clone())
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
        {
            Ok(r) => r,
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        for (name, value) in headers {
            request.headers_mut().insert(name, value);
        }
        let sent = Instant::now();
        let result = async {
            let response = s.send_request(request).await?;
            let status = response.status().as_u16();
            response.into_body().collect().await?;
            Ok::<u16, hyper::Error>(status)
        }
        .await;
        match result {
            Ok(status) => {
                let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
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

async fn connect(
    authority: &str,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}
