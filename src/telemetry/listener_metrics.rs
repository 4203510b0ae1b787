//! The listener's Prometheus metrics (`hookwarden_*`) and the events that count and log
//! together: one answered request, a verification failure, a duplicate, a handoff, the spool.
//! The broker gauges are shared with the publisher.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The target of these lines, as it was before this file was split out of `telemetry`:
/// log filters and pipelines match it.
const LOG_TARGET: &str = "hookwarden::telemetry";

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
            "Time from the handoff to the broker confirm or the spool fsync, any wait for the connection included",
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
        tracing::info!(target: LOG_TARGET, provider, reason = %reason, "event spooled");
    }

    /// Spooled events forwarded.
    pub fn spool_drained(&self, n: usize) {
        self.spool_drained.inc_by(n as u64);
        tracing::info!(target: LOG_TARGET, forwarded = n, "spooled events forwarded to the broker");
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
        super::encode(&self.registry)
    }

    /// One answered request: counted by `provider`, and logged as one line inside its
    /// [`request_span`](super::request_span), which gives the line its `provider` and `event_id`.
    pub fn request_done(&self, provider: &str, status: u16, outcome: &str, latency: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                provider: provider.to_owned(),
                status,
            })
            .inc();
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if status >= 500 {
            tracing::warn!(target: LOG_TARGET, status, outcome, latency_us, "request");
        } else {
            tracing::info!(target: LOG_TARGET, status, outcome, latency_us, "request");
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
        tracing::warn!(target: LOG_TARGET, provider, reason, error = %error, "handoff failed");
    }
}
