//! W3C trace context: where a request, a delivery or an action sits in its trace, read from
//! and written to `traceparent`/`tracestate` (HTTP headers and AMQP message headers alike).
//!
//! [`enter`] gives a span its place: it continues a caller's trace or starts one, records the
//! span's `trace_id` field (so every line logged inside carries it) and returns the span's
//! own context, the one to hand on. When traces are exported (`[telemetry] otlp_endpoint`),
//! that context is the exported span's, so the next hop's parent is a span the collector has;
//! when they are not, the ids are made here and no OpenTelemetry span exists at all.
//!
//! Sampling is the same either way: `sample_ratio` decides by the trace id (as the SDK's
//! `TraceIdRatioBased` does, so the listener, the worker and the action's target agree), for
//! new traces and for callers that ask for theirs to be recorded alike, since anyone can send
//! a `traceparent`; a caller that says not to record is followed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header naming the trace and the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// The header of vendors' trace state, passed on as received.
pub const TRACESTATE: &str = "tracestate";

/// Set once the OpenTelemetry layer is installed: spans then get their ids from it.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// `[telemetry] sample_ratio`, as `f64` bits; 1.0 until [`super::init`] sets it.
static SAMPLE_RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);

pub(super) fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether spans are exported: spans that exist only for the trace (a rule's, an action's)
/// are not made otherwise, as they would cost each firing and show nobody anything.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

pub(super) fn set_sample_ratio(ratio: f64) {
    SAMPLE_RATIO.store(ratio.to_bits(), Ordering::Relaxed);
}

/// Whether a trace is recorded at `ratio`: its id's low 63 bits under `ratio` of their range,
/// the rule of the SDK's `TraceIdRatioBased` sampler, so that both modes decide alike.
fn ratio_samples(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let low = u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().unwrap_or([0; 8]));
    (low >> 1) < (ratio.max(0.0) * (1u64 << 63) as f64) as u64
}

/// Most `tracestate` kept, in characters (W3C: at least 512 should be passed on).
const MAX_TRACESTATE: usize = 512;

/// Whether `header` has the W3C `traceparent` form: lowercase hex fields of 2, 32, 16 and 2
/// digits, version `ff` refused, version `00` exactly that long, a later version possibly
/// longer with a `-` after the fourth field. (The SDK's parser takes `+1` for a number and
/// hex of any length, so the form is checked here first.)
fn well_formed(header: &str) -> bool {
    let bytes = header.as_bytes();
    if bytes.len() < 55 {
        return false;
    }
    let hex = |range: std::ops::Range<usize>| {
        bytes[range]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let dashes = [2, 35, 52].iter().all(|&i| bytes[i] == b'-');
    let fields = hex(0..2) && hex(3..35) && hex(36..52) && hex(53..55);
    // Bytes, not `&header[..2]`: a header read from a message may hold any UTF-8, and a
    // slice through a character would panic.
    let version_ok = match &bytes[..2] {
        b"ff" => false,
        b"00" => bytes.len() == 55,
        _ => bytes.len() == 55 || bytes[55] == b'-',
    };
    dashes && fields && version_ok
}

/// A span's place in a trace: trace id, span id, sampled flag and trace state.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceContext(SpanContext);

impl TraceContext {
    /// The context a caller sent, `None` when `traceparent` is missing or malformed. A
    /// `tracestate` that is malformed, longer than 512 characters or not printable ASCII is
    /// dropped alone, as the W3C recommendation allows.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let traceparent = traceparent?.trim_matches([' ', '\t']);
        if !well_formed(traceparent) {
            return None;
        }
        let mut carrier = HashMap::with_capacity(2);
        carrier.insert(TRACEPARENT, traceparent);
        if let Some(state) = tracestate
            .filter(|s| s.len() <= MAX_TRACESTATE && s.bytes().all(|b| (0x20..0x7f).contains(&b)))
        {
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
    let ratio = f64::from_bits(SAMPLE_RATIO.load(Ordering::Relaxed));
    let own = own.unwrap_or_else(|| made_here(parent, ratio));
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
    // A local parent is whichever span is current: the callers create the span inside it.
    let own = span.context().span().span_context().clone();
    if let Parent::Local(local) = parent {
        debug_assert_eq!(
            own.trace_id(),
            local.0.trace_id(),
            "span outside its parent"
        );
    }
    own.is_valid().then_some(TraceContext(own))
}

/// A new span id in the parent's trace, or a new trace; sampled as the SDK would at `ratio`
/// (a local parent's decision is kept).
fn made_here(parent: Parent<'_>, ratio: f64) -> TraceContext {
    let ids = RandomIdGenerator::default();
    let sampled = |trace_id| {
        if ratio_samples(trace_id, ratio) {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::NOT_SAMPLED
        }
    };
    let (trace_id, flags, state) = match parent {
        Parent::Local(p) => (p.0.trace_id(), p.0.trace_flags(), p.0.trace_state().clone()),
        Parent::Remote(Some(p)) => {
            let flags = match p.sampled() {
                true => sampled(p.0.trace_id()),
                false => TraceFlags::NOT_SAMPLED,
            };
            (p.0.trace_id(), flags, p.0.trace_state().clone())
        }
        Parent::Remote(None) => {
            let trace_id = ids.new_trace_id();
            (trace_id, sampled(trace_id), TraceState::NONE)
        }
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

        let child = made_here(Parent::Remote(Some(&cx)), 1.0);
        assert_eq!(child.trace_id(), cx.trace_id());
        assert_ne!(child.span_id(), cx.span_id());
        assert_eq!(child.tracestate(), cx.tracestate());
        let unsampled = TraceContext::from_headers(
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            None,
        )
        .unwrap();
        assert!(!made_here(Parent::Local(&unsampled), 1.0).sampled());
        assert!(!made_here(Parent::Remote(Some(&unsampled)), 1.0).sampled());
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
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "+0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-+1",
            "0A-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            // A character across the version's end, as a message header could carry.
            "0\u{e9}0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(TraceContext::from_headers(Some(bad), None), None, "{bad:?}");
        }
        assert_eq!(TraceContext::from_headers(None, Some("a=b")), None);
        let fresh = made_here(Parent::Remote(None), 1.0);
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
    fn a_tracestate_that_is_too_long_or_not_printable_is_dropped_alone() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let long = format!("a={}", "x".repeat(MAX_TRACESTATE));
        for bad in [long.as_str(), "a=b\u{0}", "a=\u{e9}"] {
            let cx = TraceContext::from_headers(Some(parent), Some(bad)).unwrap();
            assert_eq!(cx.tracestate(), None, "{bad:?}");
        }
    }

    #[test]
    fn the_ratio_decides_by_trace_id_as_the_sdk_does_and_never_revives_an_unsampled_caller() {
        let ids = RandomIdGenerator::default();
        let picked = (0..10_000)
            .filter(|_| ratio_samples(ids.new_trace_id(), 0.25))
            .count();
        assert!(
            (2_200..2_800).contains(&picked),
            "{picked} of 10000 at 0.25"
        );
        // The same trace id, the same answer, wherever it is decided.
        let caller = TraceContext::from_headers(
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            None,
        )
        .unwrap();
        let decisions: Vec<bool> = (0..5)
            .map(|_| made_here(Parent::Remote(Some(&caller)), 0.5).sampled())
            .collect();
        assert!(
            decisions.iter().all(|&d| d == decisions[0]),
            "{decisions:?}"
        );
        assert!(!made_here(Parent::Remote(Some(&caller)), 0.0).sampled());
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
