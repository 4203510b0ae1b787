//! W3C trace context: where a request, a delivery or an action sits in its trace, read from
//! and written to `traceparent`/`tracestate` (HTTP headers and AMQP message headers alike).
//!
//! [`enter`] gives a span its place: it continues a caller's trace or starts one, records the
//! span's `trace_id` field (so every line logged inside carries it) and returns the span's
//! own context, the one to hand on. When traces are exported ([`super::otlp`]), that context
//! is the exported span's, so the next hop's parent is a span the collector has; when they
//! are not, the ids are made here and no OpenTelemetry span exists at all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceFlags, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header naming the trace and the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// The header of vendors' trace state, passed on as received.
pub const TRACESTATE: &str = "tracestate";

/// Set once the OpenTelemetry layer is installed: spans then get their ids from it.
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub(super) fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// A span's place in a trace: trace id, span id, sampled flag and trace state.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceContext(SpanContext);

impl TraceContext {
    /// The context a caller sent, `None` when `traceparent` is missing or malformed (a bad
    /// `tracestate` alone is dropped, as the W3C recommendation says).
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let traceparent = traceparent?.trim();
        // The propagator parses hex of any length; the format fixes each field's.
        let lengths: Vec<usize> = traceparent.split('-').map(str::len).collect();
        if lengths.len() < 4 || lengths[..4] != [2, 32, 16, 2] {
            return None;
        }
        let mut carrier = HashMap::with_capacity(2);
        carrier.insert(TRACEPARENT, traceparent);
        if let Some(state) = tracestate {
            carrier.insert(TRACESTATE, state);
        }
        let cx = TraceContextPropagator::new().extract(&Carrier(carrier));
        let span = cx.span().span_context().clone();
        span.is_valid().then_some(Self(span))
    }

    /// The `traceparent` header naming this span as the parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.0.trace_id(),
            self.0.span_id(),
            self.0.trace_flags().to_u8()
        )
    }

    /// The `tracestate` header, when there is one to pass on.
    pub fn tracestate(&self) -> Option<String> {
        let header = self.0.trace_state().header();
        (!header.is_empty()).then_some(header)
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        self.0.trace_id().to_string()
    }

    /// The span id, 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        self.0.span_id().to_string()
    }

    /// Whether the trace is being recorded.
    pub fn sampled(&self) -> bool {
        self.0.is_sampled()
    }
}

struct Carrier<'a>(HashMap<&'static str, &'a str>);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).copied()
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().copied().collect()
    }
}

/// Where a span's trace comes from.
#[derive(Debug, Clone, Copy)]
pub enum Parent<'a> {
    /// Another process: the caller's `traceparent`, or none (a new trace starts).
    Remote(Option<&'a TraceContext>),
    /// The span it is created inside, whose context is this.
    Local(&'a TraceContext),
}

/// Places `span` in its trace (before it is first entered), records its `trace_id` field and
/// returns its own context.
pub fn enter(span: &tracing::Span, parent: Parent<'_>) -> TraceContext {
    let own = if EXPORTING.load(Ordering::Relaxed) {
        exported(span, parent)
    } else {
        None
    };
    let own = own.unwrap_or_else(|| made_here(parent));
    span.record("trace_id", tracing::field::display(own.0.trace_id()));
    own
}

/// The span's context as the OpenTelemetry layer made it; `None` when the layer has no
/// record of it (a span filtered out).
fn exported(span: &tracing::Span, parent: Parent<'_>) -> Option<TraceContext> {
    if let Parent::Remote(remote) = parent {
        // An explicit parent, even an empty one: the span must not be the child of whatever
        // span happens to be current (a consumer session, a batch).
        let cx = match remote {
            Some(remote) => {
                opentelemetry::Context::new().with_remote_span_context(remote.0.clone())
            }
            None => opentelemetry::Context::new(),
        };
        span.set_parent(cx).ok()?;
    }
    let own = span.context().span().span_context().clone();
    own.is_valid().then_some(TraceContext(own))
}

/// A new span id in the parent's trace, or a new trace; sampled unless the caller said not.
fn made_here(parent: Parent<'_>) -> TraceContext {
    let ids = RandomIdGenerator::default();
    let parent = match parent {
        Parent::Remote(remote) => remote,
        Parent::Local(local) => Some(local),
    };
    let (trace_id, flags, state) = match parent {
        Some(p) => (p.0.trace_id(), p.0.trace_flags(), p.0.trace_state().clone()),
        None => (ids.new_trace_id(), TraceFlags::SAMPLED, TraceState::NONE),
    };
    TraceContext(SpanContext::new(
        trace_id,
        ids.new_span_id(),
        flags,
        false,
        state,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_its_state() {
        let cx = TraceContext::from_headers(Some(PARENT), Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(cx.trace_id(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(cx.span_id(), "b7ad6b7169203331");
        assert!(cx.sampled());
        assert_eq!(cx.traceparent(), PARENT);
        assert_eq!(cx.tracestate().as_deref(), Some("congo=t61rcWkgMzE"));

        let child = made_here(Parent::Remote(Some(&cx)));
        assert_eq!(child.trace_id(), cx.trace_id());
        assert_ne!(child.span_id(), cx.span_id());
        assert_eq!(child.tracestate(), cx.tracestate());
        let unsampled = TraceContext::from_headers(
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            None,
        )
        .unwrap();
        assert!(!made_here(Parent::Local(&unsampled)).sampled());
    }

    #[test]
    fn malformed_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-abc-def-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(TraceContext::from_headers(Some(bad), None), None, "{bad:?}");
        }
        assert_eq!(TraceContext::from_headers(None, Some("a=b")), None);
        let fresh = made_here(Parent::Remote(None));
        assert_eq!(fresh.trace_id().len(), 32);
        assert!(fresh.sampled());
        assert_eq!(
            TraceContext::from_headers(Some(&fresh.traceparent()), None),
            Some(TraceContext(SpanContext::new(
                fresh.0.trace_id(),
                fresh.0.span_id(),
                TraceFlags::SAMPLED,
                true,
                TraceState::NONE
            )))
        );
    }

    #[test]
    fn a_future_version_is_read_by_its_first_four_fields() {
        let cx = TraceContext::from_headers(
            Some("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later"),
            None,
        )
        .unwrap();
        assert_eq!(cx.span_id(), "b7ad6b7169203331");
        // What goes on is always version 00.
        assert!(cx.traceparent().starts_with("00-"));
    }
}
