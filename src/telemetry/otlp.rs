//! Trace export over OTLP/HTTP: the `tracing` layer that turns the daemons' spans into
//! OpenTelemetry spans, and the batch exporter behind it. Built only when
//! `[telemetry] otlp_endpoint` is set; [`flush`] sends what is queued as a daemon exits.
//!
//! The exporter runs on a thread of its own (the SDK's batch processor) with a bounded queue:
//! a span finished while the queue is full is dropped, never waited for, so a collector that
//! is slow or away costs requests nothing but their spans.

use std::collections::HashMap;
use std::sync::OnceLock;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::registry::LookupSpan;

use crate::config::telemetry::TelemetryConfig;

/// The provider of the installed layer, kept to be flushed at exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The layer exporting the spans of `service` (`hookwarden-listener`, …), or `None` when no
/// endpoint is configured.
///
/// This crate's spans at INFO and above are exported, and the WARN and ERROR lines logged
/// inside them as their events, whatever `[log] level` says: the trace of a quarantine should
/// not depend on how much the daemon prints, and a line per request would double what each
/// span costs to send.
///
/// # Errors
/// The exporter cannot be built.
pub(super) fn layer<S>(
    config: &TelemetryConfig,
    service: &'static str,
) -> anyhow::Result<Option<impl Layer<S> + use<S>>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let headers: HashMap<String, String> = config
        .otlp_headers
        .iter()
        .map(|(name, value)| (name.clone(), value.expose().to_owned()))
        .collect();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint.clone())
        .with_headers(headers)
        .build()
        .with_context(|| format!("cannot set up trace export to {endpoint}"))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(config.queue_size)
        .with_scheduled_delay(config.export_interval)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
        )
        // The ratio decides for new traces and for callers asking to be recorded (anyone can
        // send a traceparent); a caller that says not to record is followed, and spans under
        // a span of this process follow it (see `trace`).
        .with_sampler(
            Sampler::parent_based(Sampler::TraceIdRatioBased(config.sample_ratio))
                .with_remote_parent_sampled(Sampler::TraceIdRatioBased(config.sample_ratio)),
        )
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("hookwarden");
    let _ = PROVIDER.set(provider);
    super::trace::set_exporting();
    Ok(Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Enter/exit timing of every span, which nothing here reads.
            .with_tracked_inactivity(false)
            .with_threads(false)
            // Source file and line of every span: bytes per span nobody filters on.
            .with_location(false)
            .with_filter(filter_fn(exported).with_max_level_hint(LevelFilter::INFO)),
    ))
}

/// Whether the layer sees what `meta` describes: see [`layer`].
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    let level = if meta.is_span() {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    };
    meta.target().starts_with("hookwarden") && *meta.level() <= level
}

/// Sends the spans still queued and stops the exporter (blocking: call once the runtime
/// has finished). Nothing when traces are not exported.
pub fn flush() {
    if let Some(provider) = PROVIDER.get()
        && let Err(err) = provider.shutdown()
    {
        tracing::warn!(error = %err, "the last traces could not be exported");
    }
}
