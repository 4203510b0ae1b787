//! What the daemons log through: the global subscriber ([`init`], JSON lines or text, and
//! the trace exporter when there is one), the listener's per-request span, and
//! [`ErrorChain`], the one way an error becomes a log value.

use std::fmt;
use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use super::json_line::json_layer;
use crate::config::log::LogConfig;
use crate::config::telemetry::TelemetryConfig;

/// Installs the global `tracing` subscriber for the daemon `service`
/// (`hookwarden-listener`, …). `RUST_LOG`, when set, wins over `log.level`.
///
/// The JSON lines carry `timestamp`, `level`, `message` and `target` of their own, beside the
/// event's fields and the fields of the spans it happened in (see `JsonLine`): no field may take
/// one of those names, or the line names a key twice and log pipelines keep one value or
/// refuse it (`tests/it/logs.rs` parses every line strictly).
///
/// Lines are written to stdout as they come, one `write` each: a writer thread was tried and
/// cost more (waking it for every line is a context switch; about 25 µs of CPU per request
/// against 6 µs for the direct write, measured with `benches/listener.sh`).
///
/// With `[telemetry] otlp_endpoint` set, spans are exported too ([`super::otlp`]), and the
/// log filter moves onto the log layer so that it does not decide which spans are exported.
/// Without it the subscriber is what it was before traces existed.
///
/// # Errors
/// An invalid filter, an exporter that cannot be built, or a subscriber already installed.
pub fn init(
    log: &LogConfig,
    telemetry: &TelemetryConfig,
    service: &'static str,
) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(spec)?,
        _ => EnvFilter::try_new(&log.level)?,
    };
    let json = match log.format.as_str() {
        "json" => true,
        "text" => false,
        _ => !std::io::stdout().is_terminal(),
    };
    super::trace::set_sample_ratio(telemetry.sample_ratio);
    let export = super::otlp::layer(telemetry, service)?;
    let registry = tracing_subscriber::registry();
    let result = match (export, json) {
        (None, true) => registry
            .with(filter)
            .with(json_layer(std::io::stdout))
            .try_init(),
        (None, false) => registry
            .with(filter)
            .with(tracing_subscriber::fmt::layer())
            .try_init(),
        (Some(export), true) => registry
            .with(export)
            .with(json_layer(std::io::stdout).with_filter(filter))
            .try_init(),
        (Some(export), false) => registry
            .with(export)
            .with(tracing_subscriber::fmt::layer().with_filter(filter))
            .try_init(),
    };
    result.map_err(|err| anyhow::anyhow!("cannot install the log subscriber: {err}"))
}

/// One answered webhook request's span; the handler records `provider` and `event_id` as it
/// learns them, and [`ListenerMetrics::request_done`](super::ListenerMetrics::request_done)'s
/// line carries them.
///
/// WARN, though it marks no warning: a span's level only decides whether it exists, and it
/// must exist whenever its `request` line does, which is at WARN for a 5xx (with
/// `log.level = "warn"` only those are written).
pub fn request_span() -> tracing::Span {
    tracing::warn_span!(
        "request",
        provider = tracing::field::Empty,
        event_id = tracing::field::Empty,
        trace_id = tracing::field::Empty
    )
}

/// An error and its causes as one log value, `: ` between them. A cause whose text already
/// ends the value is not repeated: many errors (lapin's, our broker's) show their source in
/// their own message and return it from `source()` as well, others (ours in the listener)
/// leave it to `source()` alone.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut value = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(err) = cause {
            let text = err.to_string();
            if !value.ends_with(&text) {
                value.push_str(": ");
                value.push_str(&text);
            }
            cause = err.source();
        }
        f.write_str(&value)
    }
}
