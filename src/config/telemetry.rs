//! The `[telemetry]` section both daemons read: where traces go over OTLP/HTTP, if anywhere.
//! Without `otlp_endpoint` nothing is exported and no exporter exists; every request and
//! delivery still carries a W3C trace context and logs its `trace_id`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::Document;
use super::secret::{self, Secret};

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP address, `http://collector:4318`; `/v1/traces` is added when
    /// it names no path. Unset: no traces are exported.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Headers every export carries (a vendor's API key); values take `env:`/`file:`.
    #[serde(default, rename = "otlp_headers")]
    raw_headers: BTreeMap<String, String>,
    /// Resolved from `otlp_headers` at load.
    #[serde(skip)]
    pub otlp_headers: Vec<(String, Secret)>,
    /// The share of traces recorded, 0 to 1, decided by trace id: new traces and those a
    /// caller asks to be recorded alike; a caller's "do not record" is followed.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// How often finished spans are sent.
    #[serde(default = "default_export_interval", with = "humantime_serde")]
    pub export_interval: Duration,
    /// Finished spans held for export at most; past it new spans are dropped, so a collector
    /// that is slow or away never slows a request.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
}

/// The largest `queue_size`: the SDK allocates every slot at start (a few hundred bytes each),
/// and the units cap the daemons' memory.
const MAX_QUEUE_SIZE: usize = 100_000;

fn default_sample_ratio() -> f64 {
    1.0
}
fn default_export_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_queue_size() -> usize {
    2048
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            raw_headers: BTreeMap::new(),
            otlp_headers: Vec::new(),
            sample_ratio: default_sample_ratio(),
            export_interval: default_export_interval(),
            queue_size: default_queue_size(),
        }
    }
}

impl TelemetryConfig {
    /// Checks the section and resolves its header references, reporting at `telemetry.*`.
    pub(crate) fn validate(&mut self, doc: &mut Document<'_>) {
        if let Some(endpoint) = &self.otlp_endpoint {
            match reqwest::Url::parse(endpoint) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                    self.otlp_endpoint = Some(traces_url(url));
                }
                Ok(_) => doc.problem(
                    "telemetry.otlp_endpoint",
                    format!(
                        "{:?} is not an http:// or https:// address",
                        redacted(endpoint)
                    ),
                ),
                Err(err) => doc.problem(
                    "telemetry.otlp_endpoint",
                    format!("{:?} is not a URL: {err}", redacted(endpoint)),
                ),
            }
        }
        for (name, reference) in &self.raw_headers {
            let key = format!("telemetry.otlp_headers.{name}");
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                doc.problem(&key, "not a valid HTTP header name".to_owned());
                continue;
            }
            match secret::resolve(reference, doc.env()) {
                Ok(value) if http::HeaderValue::from_str(value.expose()).is_ok() => {
                    self.otlp_headers.push((name.clone(), value));
                }
                Ok(_) => doc.problem(&key, "not a valid HTTP header value".to_owned()),
                Err(reason) => doc.problem(&key, reason),
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            doc.problem(
                "telemetry.sample_ratio",
                format!("{} is not between 0 and 1", self.sample_ratio),
            );
        }
        if self.export_interval.is_zero() {
            doc.problem(
                "telemetry.export_interval",
                "must be greater than 0".to_owned(),
            );
        }
        if !(1..=MAX_QUEUE_SIZE).contains(&self.queue_size) {
            doc.problem(
                "telemetry.queue_size",
                format!("must be between 1 and {MAX_QUEUE_SIZE}"),
            );
        }
    }

    /// The `--check` line.
    pub fn summary(&self) -> String {
        match self.otlp_endpoint.as_deref().map(redacted) {
            Some(endpoint) => format!(
                "traces exported to {endpoint} every {} (sampling {} of traces, up to {} spans queued)\n",
                humantime::format_duration(self.export_interval),
                self.sample_ratio,
                self.queue_size
            ),
            None => "traces: not exported (trace ids in logs and headers only)\n".to_owned(),
        }
    }
}

/// `endpoint` with any password in it shown as `***`.
fn redacted(endpoint: &str) -> String {
    match reqwest::Url::parse(endpoint) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => endpoint.to_owned(),
    }
}

/// The address spans are posted to: OTLP/HTTP's `/v1/traces` on a bare collector address,
/// the URL as written when it names a path of its own (a proxy's, say).
fn traces_url(mut url: reqwest::Url) -> String {
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/v1/traces");
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_collector_address_gets_the_traces_path_and_a_full_one_is_kept() {
        let url = |s: &str| traces_url(reqwest::Url::parse(s).unwrap());
        assert_eq!(
            url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            url("https://api.example/otlp/v1/traces"),
            "https://api.example/otlp/v1/traces"
        );
    }
}
