//! Logs, traces and metrics: `tracing` set up once per process (JSON when stdout is not a
//! terminal, spans exported when a collector is configured), and the Prometheus registry each
//! daemon serves on its admin address. Each notable event is one function that counts and
//! logs together.
//!
//! A file per concern: [`init`], [`request_span`] and [`ErrorChain`] in `logs.rs`, the JSON
//! line they write in `json_line.rs`, W3C trace context in [`trace`], its export over OTLP in
//! `otlp.rs`, then each daemon's metrics (`listener_metrics.rs`, `worker_metrics.rs`).
//! Everything is used from here, as `crate::telemetry::…`.

mod json_line;
mod listener_metrics;
mod logs;
mod otlp;
pub mod trace;
mod worker_metrics;

use prometheus_client::registry::Registry;

pub use listener_metrics::{
    BrokerMetrics, InFlight, ListenerMetrics, ProviderLabels, ReasonLabels, RequestLabels,
};
pub use logs::{ErrorChain, init, request_span};
pub use otlp::flush;
pub use worker_metrics::{ActionLabels, OutcomeLabels, RuleLabels, WorkerMetrics};

/// The Prometheus text exposition of `registry`; empty if it cannot be encoded.
fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}
