//! The JSON line [`super::init`] installs when stdout is not a terminal: one object per event,
//! with the fields of the spans it happened in at the top level beside its own.
//!
//! Written here rather than taken from `json-subscriber` (0.3.1 weighed for issue 13): its
//! top-level span fields add the innermost span's name under a `name` key, and a field an
//! event and one of its spans both carry comes out twice (that crate's own tests assert it),
//! whereas every key here appears once and the event's own value wins.

use std::fmt;
use std::io::Write as _;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// JSON lines written to `writer`: [`SpanFields`] keeps each span's fields, [`JsonLine`]
/// writes them at the top level of the lines logged inside the span.
///
/// A layer of its own rather than a `tracing_subscriber::fmt` layer with a custom event format:
/// that layer also formats every span's fields into text when the span is created and each
/// time a field is recorded, for lines this format never writes (4 % of the listener's CPU
/// under load, by `perf`).
pub(super) fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    SpanFields.and_then(JsonLine { writer })
}

/// Field names a [`JsonLine`] writes itself.
const LINE_KEYS: [&str; 3] = ["timestamp", "level", "target"];

/// Fields as JSON values, in the order first recorded; a field recorded again keeps its
/// place and takes the new value. Values are what tracing-subscriber's JSON formatter writes
/// for them: numbers and booleans as such, strings as strings, anything else as its `Debug`
/// text (`%value` fields: their `Display` text).
#[derive(Default)]
struct Values(Vec<(&'static str, Value)>);

impl Values {
    fn set(&mut self, name: &'static str, value: Value) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

impl Visit for Values {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field.name(), Value::from(format!("{value:?}")));
    }
}

/// Keeps each span's recorded fields in its extensions, for [`JsonLine`].
struct SpanFields;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanFields {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut values = Values::default();
            attrs.record(&mut values);
            span.extensions_mut().insert(values);
        }
    }

    fn on_record(&self, id: &Id, record: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(values) = span.extensions_mut().get_mut::<Values>()
        {
            record.record(values);
        }
    }
}

/// One JSON object per line, as tracing-subscriber's flattened JSON format writes it
/// (`timestamp`, `level`, the event's fields, `target`), except that the fields of the
/// spans the event happened in sit at the top level too, right after `message`, instead of
/// under `span`/`spans`: a request's `provider` and `event_id` are fields of its line like
/// any other. An event's own field wins over a span's of the same name, an inner span's
/// over an outer's, so no line names a key twice.
struct JsonLine<W> {
    writer: W,
}

impl<S, W> Layer<S> for JsonLine<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let line = format_line(event, &ctx);
        // A log line that cannot be written has nowhere to be reported.
        let _ = self
            .writer
            .make_writer_for(event.metadata())
            .write_all(&line);
    }
}

/// The line for `event`, newline included.
fn format_line<S>(event: &Event<'_>, ctx: &Context<'_, S>) -> Vec<u8>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let mut fields = Values::default();
    event.record(&mut fields);
    let mut inherited = Values::default();
    for span in ctx
        .event_scope(event)
        .into_iter()
        .flat_map(|scope| scope.from_root())
    {
        if let Some(values) = span.extensions().get::<Values>() {
            for (name, value) in &values.0 {
                inherited.set(name, value.clone());
            }
        }
    }
    inherited
        .0
        .retain(|(name, _)| fields.get(name).is_none() && !LINE_KEYS.contains(name));
    let meta = event.metadata();
    // Records of the `log` crate arrive with target "log" and their own in `log.target`
    // (what tracing-log's normalized metadata reads).
    let target = match fields.get("log.target") {
        Some(Value::String(target)) if meta.target() == "log" => target.as_str(),
        _ => meta.target(),
    };

    let mut line = Vec::with_capacity(320);
    line.extend_from_slice(b"{\"timestamp\":\"");
    // tracing-subscriber's own format: RFC 3339, UTC, microseconds. humantime panics on a
    // time before 1970, which a clock set wrong can read: such lines say 1970.
    let now = std::time::SystemTime::now().max(std::time::UNIX_EPOCH);
    let _ = write!(line, "{}", humantime::format_rfc3339_micros(now));
    line.extend_from_slice(b"\",\"level\":\"");
    line.extend_from_slice(meta.level().as_str().as_bytes());
    line.extend_from_slice(b"\",");
    let message = fields.0.iter().position(|(name, _)| *name == "message");
    let (before, after) = fields.0.split_at(message.map_or(0, |i| i + 1));
    for (name, value) in before.iter().chain(&inherited.0).chain(after) {
        entry(&mut line, name, value);
    }
    entry(&mut line, "target", &target);
    line.pop();
    line.extend_from_slice(b"}\n");
    line
}

/// Appends `"name":value,` to a JSON object being written.
fn entry(line: &mut Vec<u8>, name: &str, value: &(impl serde::Serialize + ?Sized)) {
    // Writing JSON into a Vec fails only for values that refuse to serialize; ours never do.
    let _ = serde_json::to_writer(&mut *line, name);
    line.push(b':');
    let _ = serde_json::to_writer(&mut *line, value);
    line.push(b',');
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::telemetry::{ListenerMetrics, request_span};

    /// A log destination the test reads back.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    impl Lines {
        /// Every line written, its timestamp's value cut out (`{"timestamp":…,"level"…`).
        fn take(&self) -> Vec<String> {
            let text = String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap();
            text.lines()
                .map(|line| {
                    let rest = line.strip_prefix(r#"{"timestamp":""#).expect(line);
                    let end = rest.find('"').unwrap();
                    format!("{{\"timestamp\":…{}", &rest[end + 1..])
                })
                .collect()
        }
    }

    /// Runs `log` with our JSON lines as the subscriber, and returns what it wrote.
    fn ours(log: impl Fn()) -> Vec<String> {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(json_layer(lines.clone()));
        tracing::subscriber::with_default(subscriber, log);
        lines.take()
    }

    #[test]
    fn the_request_line_carries_its_spans_fields_at_the_top_level() {
        let metrics = ListenerMetrics::new();
        let lines = ours(|| {
            let span = request_span();
            span.record("provider", "dregs");
            span.record("event_id", "evt_01JD8Q6W3M4X9T2R7K5N0P1Q8S");
            span.in_scope(|| {
                metrics.request_done("dregs", 200, "accepted", Duration::from_micros(2865))
            });
            // Refused before its id was read, and a 5xx: WARN, no event_id.
            let span = request_span();
            span.record("provider", "unknown");
            span.in_scope(|| {
                metrics.request_done("unknown", 503, "unavailable", Duration::from_micros(7))
            });
        });
        assert_eq!(
            lines,
            [
                // As README.md shows it.
                r#"{"timestamp":…,"level":"INFO","message":"request","provider":"dregs","event_id":"evt_01JD8Q6W3M4X9T2R7K5N0P1Q8S","status":200,"outcome":"accepted","latency_us":2865,"target":"hookwarden::telemetry"}"#,
                r#"{"timestamp":…,"level":"WARN","message":"request","provider":"unknown","status":503,"outcome":"unavailable","latency_us":7,"target":"hookwarden::telemetry"}"#,
            ]
        );
    }

    #[test]
    fn lines_outside_spans_are_what_tracing_subscribers_json_writes() {
        let log = || {
            let error = std::io::Error::other("disk on fire");
            let none: Option<&str> = None;
            tracing::info!(
                provider = "dregs",
                forwarded = 3_u64,
                offset = -2_i64,
                ratio = 0.5,
                nan = f64::NAN,
                ok = true,
                error = %error,
                retry_in = ?Duration::from_millis(100),
                none,
                "spooled events forwarded to the broker"
            );
            tracing::warn!("no fields, {} formatted", "message");
            tracing::error!(text = "quote \" and \n newline", "odd text");
        };
        let stock = Lines::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_writer(stock.clone()),
        );
        tracing::subscriber::with_default(subscriber, log);
        let stock = stock.take();
        assert_eq!(stock.len(), 3);
        assert_eq!(ours(log), stock);
    }

    #[test]
    fn no_key_is_written_twice_and_inner_spans_win() {
        let lines = ours(|| {
            let outer = tracing::info_span!("outer", provider = "outer", level = "span's");
            let _outer = outer.enter();
            let inner = tracing::info_span!("inner", provider = "inner", delivery = 7_u64);
            let _inner = inner.enter();
            tracing::info!(delivery = 8_u64, "handled");
        });
        assert_eq!(
            lines,
            [
                r#"{"timestamp":…,"level":"INFO","message":"handled","provider":"inner","delivery":8,"target":"hookwarden::telemetry::json_line::tests"}"#
            ]
        );
    }
}
