//! The worker's Prometheus metrics (`hookwarden_worker_*`): events by outcome, rule matches,
//! lookups and how long they took, actions run, how long they took and how long paced ones
//! waited for their turn, and whether it is consuming; and the rule breakers' state (`hookwarden_rule_tripped`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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

/// Labels naming an action alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    /// Action name.
    pub action: String,
}

/// Labels of a lookup's answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// Lookup name (`[enrich.NAME]`).
    pub lookup: String,
    /// `answered`, `cached`, `failed`.
    pub outcome: &'static str,
}

/// Labels of a rule's breaker.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TripLabels {
    /// Rule name.
    pub rule: String,
}

/// Labels of a provider.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Provider name.
    pub provider: String,
}

/// The worker's metrics.
pub struct WorkerMetrics {
    registry: Registry,
    rule_tripped: Family<TripLabels, Gauge>,
    last_event_age: Family<ProviderLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    events: Family<OutcomeLabels, Counter>,
    rule_matches: Family<RuleLabels, Counter>,
    actions: Family<ActionLabels, Counter>,
    action_seconds: Histogram,
    action_waiting: Family<NameLabels, Gauge>,
    action_wait_seconds: Histogram,
    lookups: Family<LookupLabels, Counter>,
    lookup_seconds: Histogram,
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
        let mut registry = Registry::with_prefix("hookwarden");
        let worker = registry.sub_registry_with_prefix("worker");
        let events = Family::<OutcomeLabels, Counter>::default();
        worker.register("events", "Events handled, by outcome", events.clone());
        let rule_matches = Family::<RuleLabels, Counter>::default();
        worker.register(
            "rule_matches",
            "Rule conditions that held, by rule and mode",
            rule_matches.clone(),
        );
        let actions = Family::<ActionLabels, Counter>::default();
        worker.register(
            "actions",
            "Actions run, by action and outcome",
            actions.clone(),
        );
        let action_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16),
        );
        worker.register(
            "action_seconds",
            "Time an action took, retries included",
            action_seconds.clone(),
        );
        let action_waiting = Family::<NameLabels, Gauge>::default();
        worker.register(
            "action_waiting",
            "Actions waiting for a turn under their rate or concurrency",
            action_waiting.clone(),
        );
        // Up to about 9 minutes: a paced storm can hold a firing that long.
        let action_wait_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 20),
        );
        worker.register(
            "action_wait_seconds",
            "Time a paced action waited for its turn (not in action_seconds)",
            action_wait_seconds.clone(),
        );
        let lookups = Family::<LookupLabels, Counter>::default();
        worker.register(
            "lookups",
            "Enrichment lookups, by lookup and outcome (answered, cached, failed)",
            lookups.clone(),
        );
        let lookup_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16),
        );
        worker.register(
            "lookup_seconds",
            "Time a lookup that was not cached took, retries included",
            lookup_seconds.clone(),
        );
        let consuming = Gauge::default();
        worker.register(
            "consuming",
            "1 while consuming from the events queue",
            consuming.clone(),
        );
        let queue_depth = Gauge::default();
        worker.register(
            "queue_depth",
            "Messages ready in the events queue at the last connect (consumer lag)",
            queue_depth.clone(),
        );
        let rule_tripped = Family::<TripLabels, Gauge>::default();
        registry.register(
            "rule_tripped",
            "1 while the rule's breaker is tripped (its matches recorded, never acted on)",
            rule_tripped.clone(),
        );
        let last_event_age =
            Family::<ProviderLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "last_event_age_seconds",
            "Seconds since an event of the provider was last decided, by any worker on the state store",
            last_event_age.clone(),
        );
        Self {
            registry,
            rule_tripped,
            last_event_age,
            events,
            rule_matches,
            actions,
            action_seconds,
            action_waiting,
            action_wait_seconds,
            lookups,
            lookup_seconds,
            consuming,
            queue_depth,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        super::encode(&self.registry)
    }

    /// Whether `rule`'s breaker is tripped (`hookwarden_rule_tripped`).
    pub fn rule_tripped(&self, rule: &str, tripped: bool) {
        self.rule_tripped
            .get_or_create(&TripLabels {
                rule: rule.to_owned(),
            })
            .set(i64::from(tripped));
    }

    /// Seconds since an event of `provider` was last decided
    /// (`hookwarden_last_event_age_seconds`).
    pub fn last_event_age(&self, provider: &str, seconds: f64) {
        self.last_event_age
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .set(seconds);
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

    /// The gauge of `action`'s firings waiting for their turn.
    pub fn action_waiting(&self, action: &str) -> Gauge {
        self.action_waiting
            .get_or_create(&NameLabels {
                action: action.to_owned(),
            })
            .clone()
    }

    /// A paced action got its turn after `waited`.
    pub fn action_waited(&self, waited: std::time::Duration) {
        self.action_wait_seconds.observe(waited.as_secs_f64());
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

    /// A lookup answered (`answered`, from the cache: `cached`) or not (`failed`), after
    /// `took` when it was not cached.
    pub fn lookup(&self, lookup: &str, outcome: &'static str, took: Option<std::time::Duration>) {
        self.lookups
            .get_or_create(&LookupLabels {
                lookup: lookup.to_owned(),
                outcome,
            })
            .inc();
        if let Some(took) = took {
            self.lookup_seconds.observe(took.as_secs_f64());
        }
    }
}
