//! What rules see of one event: the one list of names `when` conditions and action templates
//! use ([`Name`]), and their values for one event ([`Facts`]). Conditions, templates, the
//! load-time checks and `hookwarden rules test` all take their names from here, so a name
//! is added in one place: a variant of [`Name`], whose value [`Facts::json`] then has to give
//! (the compiler points there, and to the CEL conversion in [`crate::worker::condition`]).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::worker::lists::Lists;

/// A name rules may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// The event payload.
    Event,
    /// The provider's configured name.
    Provider,
    /// The event type (`type`).
    Type,
    /// The subject id, as its `[[subjects]]` entry reads it.
    Subject,
    /// This event's named scores.
    Score,
    /// The subject's last scores and when (`previous.score`, `previous.at`).
    Previous,
    /// The firing rule's name (templates only: a condition belongs to one rule).
    Rule,
    /// The provider's event id (templates only).
    EventId,
    /// Environment variables a template names as `env.NAME`, read at load (templates only).
    Env,
    /// The `[lists.*]` of the rules file (conditions only: `subject in lists.trusted`).
    Lists,
    /// On a breaker's trip, the firings that would have acted in its window (templates only;
    /// null outside an `on_trip` action).
    Count,
    /// On a breaker's trip, its window as written (`10m`); null otherwise.
    Per,
    /// On a breaker's trip, the first subjects it acted on in its window, and the one that
    /// tripped it; null otherwise.
    Subjects,
    /// In a silence watch's actions, the watch (name, provider, state, silent_for,
    /// last_seen, silent_since); null otherwise.
    Watch,
    /// The answers of the `[enrich.*]` lookups the event's rules use, by lookup name
    /// (`enrich.account.age_days`).
    Enrich,
}

impl Name {
    /// Every name, in the order messages list them.
    pub const ALL: [Name; 15] = [
        Name::Event,
        Name::Provider,
        Name::Type,
        Name::Subject,
        Name::Score,
        Name::Previous,
        Name::Rule,
        Name::EventId,
        Name::Env,
        Name::Lists,
        Name::Count,
        Name::Per,
        Name::Subjects,
        Name::Watch,
        Name::Enrich,
    ];

    /// How rules spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Provider => "provider",
            Self::Type => "type",
            Self::Subject => "subject",
            Self::Score => "score",
            Self::Previous => "previous",
            Self::Rule => "rule",
            Self::EventId => "event_id",
            Self::Env => "env",
            Self::Lists => "lists",
            Self::Count => "count",
            Self::Per => "per",
            Self::Subjects => "subjects",
            Self::Watch => "watch",
            Self::Enrich => "enrich",
        }
    }

    /// The name spelled `spelled`, if there is one.
    pub fn parse(spelled: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.as_str() == spelled)
    }

    /// Whether `when` conditions see it (templates see every name).
    pub fn in_conditions(self) -> bool {
        !matches!(
            self,
            Self::Rule
                | Self::EventId
                | Self::Env
                | Self::Count
                | Self::Per
                | Self::Subjects
                | Self::Watch
        )
    }

    /// The names conditions see, as spelled.
    pub fn condition_names() -> impl Iterator<Item = &'static str> {
        Self::ALL
            .into_iter()
            .filter(|n| n.in_conditions())
            .map(Self::as_str)
    }

    /// Whether templates see it (they see every name but the lists, which can hold a
    /// million entries).
    pub fn in_templates(self) -> bool {
        self != Self::Lists
    }

    /// The names templates see, as spelled.
    pub fn template_names() -> impl Iterator<Item = &'static str> {
        Self::ALL
            .into_iter()
            .filter(|n| n.in_templates())
            .map(Self::as_str)
    }

    /// Whether a condition may use `spelled`.
    pub fn is_condition_name(spelled: &str) -> bool {
        Self::condition_names().any(|n| n == spelled)
    }
}

/// The values behind every [`Name`] for one event, borrowed from the event and the
/// subject's state.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The payload.
    pub event: &'a Value,
    /// Configured name of the provider the event came from.
    pub provider: &'a str,
    /// Event type.
    pub event_type: &'a str,
    /// The provider's event id.
    pub event_id: &'a str,
    /// Id of the subject the event is about.
    pub subject: &'a str,
    /// Named scores of this event.
    pub score: &'a BTreeMap<String, f64>,
    /// The subject's scores at its last event; empty on first sighting.
    pub previous_score: &'a BTreeMap<String, f64>,
    /// RFC 3339 time of the subject's last event; `None` the first time (`previous.at` is
    /// then `null`).
    pub previous_at: Option<&'a str>,
    /// The `env.NAME` values templates reference.
    pub env: &'a BTreeMap<String, String>,
    /// The rules file's lists.
    pub lists: &'a Lists,
    /// The answers of the lookups run for this event, by lookup name (only those that
    /// answered).
    pub enrich: &'a BTreeMap<String, Value>,
}

impl Facts<'_> {
    /// The value of `name` as JSON, for the firing of rule `rule`.
    pub fn json(&self, name: Name, rule: &str) -> Value {
        match name {
            Name::Event => self.event.clone(),
            Name::Provider => Value::from(self.provider),
            Name::Type => Value::from(self.event_type),
            Name::Subject => Value::from(self.subject),
            Name::Score => scores_json(self.score),
            Name::Previous => serde_json::json!({
                "score": scores_json(self.previous_score),
                "at": self.previous_at,
            }),
            Name::Rule => Value::from(rule),
            Name::EventId => Value::from(self.event_id),
            Name::Env => Value::from_iter(
                self.env
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.as_str()))),
            ),
            Name::Enrich => Value::from_iter(
                self.enrich
                    .iter()
                    .map(|(name, answer)| (name.clone(), answer.clone())),
            ),
            // A trip's own: [`crate::worker::decide::plan_trip`] sets them.
            Name::Count | Name::Per | Name::Subjects | Name::Watch => Value::Null,
            // Conditions only (templates never see them).
            Name::Lists => Value::Null,
        }
    }

    /// What an action's templates see when rule `rule` fires: every name.
    pub fn template_context(&self, rule: &str) -> Value {
        Value::Object(
            Name::ALL
                .into_iter()
                .filter(|name| name.in_templates())
                .map(|name| (name.as_str().to_owned(), self.json(name, rule)))
                .collect(),
        )
    }
}

/// Owned values for the load-time checks: a plausible event, and 50 for every declared
/// score both now and before, so that `score.x` and `previous.score.x` resolve.
#[derive(Debug)]
pub struct Sample {
    event: Value,
    scores: BTreeMap<String, f64>,
    env: BTreeMap<String, String>,
    lists: Lists,
    enrich: BTreeMap<String, Value>,
}

impl Sample {
    /// A sample event carrying every name of `score_names`, templates seeing `env`.
    pub fn new<'n>(
        score_names: impl IntoIterator<Item = &'n str>,
        env: BTreeMap<String, String>,
    ) -> Self {
        Self {
            event: serde_json::json!({ "id": "evt_sample", "type": "sample", "data": {} }),
            scores: score_names
                .into_iter()
                .map(|name| (name.to_owned(), 50.0))
                .collect(),
            env,
            lists: Lists::default(),
            enrich: BTreeMap::new(),
        }
    }

    /// The sample with an empty answer from each of the lookups `names`, so that
    /// `enrich.NAME` resolves (its fields, like the sample event's, do not).
    pub fn with_lookups<'n>(mut self, names: impl IntoIterator<Item = &'n str>) -> Self {
        self.enrich = names
            .into_iter()
            .map(|name| (name.to_owned(), Value::Object(serde_json::Map::new())))
            .collect();
        self
    }

    /// The sample with the rules file's lists, so that conditions naming them evaluate.
    pub fn with_lists(mut self, lists: Lists) -> Self {
        self.lists = lists;
        self
    }

    /// The environment it was given.
    pub fn into_env(self) -> BTreeMap<String, String> {
        self.env
    }

    /// The sample as [`Facts`].
    pub fn facts(&self) -> Facts<'_> {
        Facts {
            event: &self.event,
            provider: "sample",
            event_type: "sample.type",
            event_id: "sample-event",
            subject: "sample-subject",
            score: &self.scores,
            previous_score: &self.scores,
            previous_at: Some("2026-01-01T00:00:00Z"),
            env: &self.env,
            lists: &self.lists,
            enrich: &self.enrich,
        }
    }
}

/// Scores as JSON, whole numbers as integers so templates print `22`, not `22.0`.
pub fn scores_json(scores: &BTreeMap<String, f64>) -> Value {
    let map = scores
        .iter()
        .map(|(k, v)| {
            // Below 2^53 a whole f64 is an exact integer.
            let n = if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
                Value::from(*v as i64)
            } else {
                Value::from(*v)
            };
            (k.clone(), n)
        })
        .collect::<serde_json::Map<_, _>>();
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_see_every_name_and_conditions_the_event_s_own() {
        let sample = Sample::new(["humanity"], BTreeMap::from([("A".into(), "b".into())]));
        let context = sample.facts().template_context("quarantine");
        let keys: Vec<&str> = context
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut expected: Vec<&str> = Name::template_names().collect();
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(context["rule"], "quarantine");
        assert_eq!(context["score"]["humanity"], 50);
        assert_eq!(context["previous"]["at"], "2026-01-01T00:00:00Z");
        assert_eq!(context["env"]["A"], "b");
        assert!(Name::is_condition_name("previous"));
        assert!(!Name::is_condition_name("rule"));
        assert!(!Name::is_condition_name("env"));
    }

    #[test]
    fn whole_scores_print_as_integers() {
        let scores = BTreeMap::from([("a".to_owned(), 22.0), ("b".to_owned(), 0.5)]);
        assert_eq!(scores_json(&scores).to_string(), r#"{"a":22,"b":0.5}"#);
    }
}
