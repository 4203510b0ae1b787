//! Logs and metrics: `tracing` set up once per process (JSON when stdout is not a
//! terminal), and the Prometheus registry each daemon serves on its admin address. Each
//! notable event is one function here that counts and logs together.

use std::fmt;
use std::io::IsTerminal;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::log::LogConfig;

/// Installs the global `tracing` subscriber. `RUST_LOG`, when set, wins over `config.level`.
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
/// # Errors
/// An invalid filter, or a subscriber already installed.
pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(spec)?,
        _ => EnvFilter::try_new(&config.level)?,
    };
    let json = match config.format.as_str() {
        "json" => true,
        "text" => false,
        _ => !std::io::stdout().is_terminal(),
    };
    let result: Result<(), Box<dyn std::error::Error + Send + Sync>> = if json {
        tracing_subscriber::registry()
            .with(filter)
            .with(json_layer(std::io::stdout))
            .try_init()
            .map_err(Into::into)
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).try_init()
    };
    result.map_err(|err| anyhow::anyhow!("cannot install the log subscriber: {err}"))
}

/// JSON lines written to `writer`: [`SpanFields`] keeps each span's fields, [`JsonLine`]
/// writes them at the top level of the lines logged inside the span.
fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    SpanFields.and_then(
        tracing_subscriber::fmt::layer()
            .event_format(JsonLine::default())
            .with_writer(writer),
    )
}

/// One answered webhook request's span; the handler records `provider` and `event_id` as it
/// learns them, and [`ListenerMetrics::request_done`]'s line carries them.
///
/// WARN, though it marks no warning: a span's level only decides whether it exists, and it
/// must exist whenever its `request` line does, which is at WARN for a 5xx (with
/// `log.level = "warn"` only those are written).
pub fn request_span() -> tracing::Span {
    tracing::warn_span!(
        "request",
        provider = tracing::field::Empty,
        event_id = tracing::field::Empty
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
#[derive(Default)]
struct JsonLine {
    timer: SystemTime,
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        self.timer.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Values::default();
        event.record(&mut fields);
        let mut inherited = Values::default();
        for span in ctx
            .event_scope()
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

        let mut line = String::with_capacity(256);
        line.push('{');
        entry(&mut line, "timestamp", &Value::from(timestamp));
        entry(&mut line, "level", &Value::from(meta.level().as_str()));
        let message = fields.0.iter().position(|(name, _)| *name == "message");
        let (before, after) = fields.0.split_at(message.map_or(0, |i| i + 1));
        for (name, value) in before.iter().chain(&inherited.0).chain(after) {
            entry(&mut line, name, value);
        }
        entry(&mut line, "target", &Value::from(target));
        line.pop();
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// Appends `"name":value,` to a JSON object being written.
fn entry(line: &mut String, name: &str, value: &Value) {
    line.push_str(&Value::from(name).to_string());
    line.push(':');
    line.push_str(&value.to_string());
    line.push(',');
}

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Configured provider name, or `unknown`.
    pub provider: String,
    /// HTTP status answered.
    pub status: u16,
}

/// Labels of a reason counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Configured provider name.
    pub provider: String,
    /// Closed set of reasons, e.g. `mismatch`.
    pub reason: &'static str,
}

/// Labels naming a provider.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Configured provider name.
    pub provider: String,
}

/// Broker-side gauges and counters, shared with the publisher.
#[derive(Clone, Default)]
pub struct BrokerMetrics {
    /// 1 while connected.
    pub connected: Gauge,
    /// Publishes awaiting their confirm.
    pub in_flight: Gauge,
    /// Connections lost and re-established.
    pub reconnects: Counter,
}

/// Decrements the in-flight gauge when dropped, whatever way the publish ends.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl BrokerMetrics {
    /// Counts one publish in flight until the guard drops.
    pub fn in_flight_guard(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }
}

/// The listener's metrics.
pub struct ListenerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    verification_failures: Family<ReasonLabels, Counter>,
    duplicates: Family<ProviderLabels, Counter>,
    handoff_failures: Family<ReasonLabels, Counter>,
    handoff_seconds: Histogram,
    spooled: Counter,
    spool_drained: Counter,
    spool_depth: Gauge,
    spool_bytes: Gauge,
    spool_oldest_age: Gauge,
    /// Shared with the publisher.
    pub broker: BrokerMetrics,
}

impl Default for ListenerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ListenerMetrics {
    /// Registers every metric under the `hookwarden` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hookwarden");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Webhook requests by provider and status",
            requests.clone(),
        );
        let verification_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "verification_failures",
            "Requests refused by signature verification, by reason",
            verification_failures.clone(),
        );
        let duplicates = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "duplicates",
            "Events answered as duplicates without publishing",
            duplicates.clone(),
        );
        let handoff_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "handoff_failures",
            "Events not handed off to the broker (answered 503), by reason",
            handoff_failures.clone(),
        );
        // 0.25 ms .. about 8 s: a confirm takes a few ms, a timeout seconds.
        let handoff_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.00025, 2.0, 16),
        );
        registry.register(
            "handoff_seconds",
            "Time from publish to broker confirm",
            handoff_seconds.clone(),
        );
        let spooled = Counter::default();
        registry.register(
            "spooled",
            "Events written to the spool because the broker could not take them",
            spooled.clone(),
        );
        let spool_drained = Counter::default();
        registry.register(
            "spool_drained",
            "Spooled events forwarded to the broker and deleted",
            spool_drained.clone(),
        );
        let spool_depth = Gauge::default();
        registry.register(
            "spool_depth",
            "Events waiting in the spool",
            spool_depth.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register(
            "spool_bytes",
            "Body bytes waiting in the spool",
            spool_bytes.clone(),
        );
        let spool_oldest_age = Gauge::default();
        registry.register(
            "spool_oldest_age_seconds",
            "Age of the oldest event waiting in the spool",
            spool_oldest_age.clone(),
        );
        let broker = BrokerMetrics::default();
        registry.register(
            "broker_connected",
            "1 while the broker connection is up",
            broker.connected.clone(),
        );
        registry.register(
            "publishes_in_flight",
            "Publishes awaiting a broker confirm",
            broker.in_flight.clone(),
        );
        registry.register(
            "broker_reconnects",
            "Broker connections lost and re-established",
            broker.reconnects.clone(),
        );
        Self {
            registry,
            requests,
            verification_failures,
            duplicates,
            handoff_failures,
            handoff_seconds,
            spooled,
            spool_drained,
            spool_depth,
            spool_bytes,
            spool_oldest_age,
            broker,
        }
    }

    /// An event written to the spool instead of the broker.
    pub fn spooled(&self, provider: &str, reason: &dyn std::fmt::Display) {
        self.spooled.inc();
        tracing::info!(provider, reason = %reason, "event spooled");
    }

    /// Spooled events forwarded.
    pub fn spool_drained(&self, n: usize) {
        self.spool_drained.inc_by(n as u64);
        tracing::info!(forwarded = n, "spooled events forwarded to the broker");
    }

    /// The spool's size now.
    pub fn spool_state(&self, depth: u64, bytes: u64, oldest_age_secs: i64) {
        self.spool_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.spool_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.spool_oldest_age.set(oldest_age_secs);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// One answered request: counted by `provider`, and logged as one line inside its
    /// [`request_span`], which gives the line its `provider` and `event_id`.
    pub fn request_done(&self, provider: &str, status: u16, outcome: &str, latency: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                provider: provider.to_owned(),
                status,
            })
            .inc();
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if status >= 500 {
            tracing::warn!(status, outcome, latency_us, "request");
        } else {
            tracing::info!(status, outcome, latency_us, "request");
        }
    }

    /// A request refused by signature verification.
    pub fn verification_failed(&self, provider: &str, reason: &'static str) {
        self.verification_failures
            .get_or_create(&ReasonLabels {
                provider: provider.to_owned(),
                reason,
            })
            .inc();
    }

    /// An event id seen before.
    pub fn duplicate(&self, provider: &str) {
        self.duplicates
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .inc();
    }

    /// A confirmed handoff and how long the broker took.
    pub fn handed_off(&self, took: Duration) {
        self.handoff_seconds.observe(took.as_secs_f64());
    }

    /// A handoff that failed (answered 503).
    pub fn handoff_failed(
        &self,
        provider: &str,
        reason: &'static str,
        error: &dyn std::fmt::Display,
    ) {
        self.handoff_failures
            .get_or_create(&ReasonLabels {
                provider: provider.to_owned(),
                reason,
            })
            .inc();
        tracing::warn!(provider, reason, error = %error, "handoff failed");
    }
}

/// Labels of an event outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `acted`, `matched`, `no_match`, `no_subject`, `stale`, `duplicate`, `dead_lettered`.
    pub outcome: &'static str,
}

/// Labels of a rule match.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// Rule name (from the rules file: a closed set).
    pub rule: String,
    /// `enforce` or `shadow`.
    pub mode: &'static str,
}

/// Labels of an action run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// Action name.
    pub action: String,
    /// `ok`, `failed`, `skipped`.
    pub outcome: &'static str,
}

/// The worker's metrics.
pub struct WorkerMetrics {
    registry: Registry,
    events: Family<OutcomeLabels, Counter>,
    rule_matches: Family<RuleLabels, Counter>,
    actions: Family<ActionLabels, Counter>,
    action_seconds: Histogram,
    /// 1 while consuming.
    pub consuming: Gauge,
    /// Messages ready in the events queue at the last (re)connect, when known.
    pub queue_depth: Gauge,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    /// Registers every metric under the `hookwarden_worker` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hookwarden_worker");
        let events = Family::<OutcomeLabels, Counter>::default();
        registry.register("events", "Events handled, by outcome", events.clone());
        let rule_matches = Family::<RuleLabels, Counter>::default();
        registry.register(
            "rule_matches",
            "Rule conditions that held, by rule and mode",
            rule_matches.clone(),
        );
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "actions",
            "Actions run, by action and outcome",
            actions.clone(),
        );
        let action_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16),
        );
        registry.register(
            "action_seconds",
            "Time an action took, retries included",
            action_seconds.clone(),
        );
        let consuming = Gauge::default();
        registry.register(
            "consuming",
            "1 while consuming from the events queue",
            consuming.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Messages ready in the events queue at the last connect (consumer lag)",
            queue_depth.clone(),
        );
        Self {
            registry,
            events,
            rule_matches,
            actions,
            action_seconds,
            consuming,
            queue_depth,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// One event handled with `outcome`.
    pub fn event(&self, outcome: &'static str) {
        self.events.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// A rule's condition held.
    pub fn rule_matched(&self, rule: &str, mode: &'static str) {
        self.rule_matches
            .get_or_create(&RuleLabels {
                rule: rule.to_owned(),
                mode,
            })
            .inc();
    }

    /// An action ran (or was skipped by its done-mark).
    pub fn action(&self, action: &str, outcome: &'static str, latency_ms: u64) {
        self.actions
            .get_or_create(&ActionLabels {
                action: action.to_owned(),
                outcome,
            })
            .inc();
        if outcome != "skipped" {
            self.action_seconds.observe(latency_ms as f64 / 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

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
                r#"{"timestamp":…,"level":"INFO","message":"handled","provider":"inner","delivery":8,"target":"hookwarden::telemetry::tests"}"#
            ]
        );
    }
}
