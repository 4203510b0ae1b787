//! Deciding one event: which rules apply, what their conditions say, which are cooling
//! down. Pure: no I/O, so `hookwarden rules test` and the worker decide alike.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::worker::{Mode, WorkerConfig};
use crate::worker::condition::{Input, PreparedInput};
use crate::worker::state::SubjectState;
use crate::worker::subject::SubjectRead;

/// An event as the worker handles it.
#[derive(Debug, Clone)]
pub struct Event {
    /// `provider/event_id`: the key of its decision record.
    pub key: String,
    /// Provider name.
    pub provider: String,
    /// Provider's event id.
    pub id: String,
    /// Event type.
    pub event_type: String,
    /// The payload.
    pub json: Value,
}

/// What one rule made of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleVerdict {
    /// Index into the config's rules.
    pub rule: usize,
    /// The condition held.
    pub matched: bool,
    /// The condition could not be evaluated (recorded; the event goes on).
    pub error: Option<String>,
    /// Matched, but the rule fired for this subject within its cooldown.
    pub cooling: bool,
}

impl RuleVerdict {
    /// Whether the rule's actions run (enforce mode) or would run (shadow).
    pub fn fires(&self) -> bool {
        self.matched && !self.cooling && self.error.is_none()
    }
}

/// The subject's state as conditions and templates see it.
pub fn previous_json(prior: &SubjectState) -> Value {
    let at = prior.at_ms.and_then(rfc3339_ms);
    serde_json::json!({ "score": scores_json(&prior.scores), "at": at })
}

/// Unix milliseconds as RFC 3339.
pub fn rfc3339_ms(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms).ok()?;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(at).to_string())
}

/// Evaluates every rule that applies to `event`.
pub fn evaluate(
    config: &WorkerConfig,
    event: &Event,
    subject: &SubjectRead,
    prior: &SubjectState,
    now_ms: i64,
) -> Vec<RuleVerdict> {
    let previous_at = prior.at_ms.and_then(rfc3339_ms);
    let input = Input {
        event: &event.json,
        provider: &event.provider,
        event_type: &event.event_type,
        subject: &subject.id,
        score: &subject.scores,
        previous_score: &prior.scores,
        previous_at: previous_at.as_deref(),
    };
    // Converted to CEL once for all the rules that apply, and only if one does.
    let mut prepared: Option<PreparedInput<'_>> = None;
    let mut out = Vec::new();
    for (i, rule) in config.rules.iter().enumerate() {
        if !rule.applies(&event.provider, &event.event_type) {
            continue;
        }
        let prepared = prepared.get_or_insert_with(|| PreparedInput::new(&input));
        let (matched, error) = match rule.when.evaluate_prepared(prepared) {
            Ok(m) => (m, None),
            Err(e) => (false, Some(e)),
        };
        let cooling = matched
            && match (rule.cooldown, prior.fired_ms.get(&rule.name)) {
                (Some(cooldown), Some(&last)) => {
                    let cooldown = i64::try_from(cooldown.as_millis()).unwrap_or(i64::MAX);
                    now_ms.saturating_sub(last) < cooldown
                }
                _ => false,
            };
        out.push(RuleVerdict {
            rule: i,
            matched,
            error,
            cooling,
        });
    }
    out
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

/// The template context for one rule firing on one event.
pub fn template_context(
    config: &WorkerConfig,
    event: &Event,
    subject: &SubjectRead,
    prior: &SubjectState,
    rule: &str,
) -> Value {
    serde_json::json!({
        "event": event.json,
        "provider": event.provider,
        "type": event.event_type,
        "subject": subject.id,
        "score": scores_json(&subject.scores),
        "previous": previous_json(prior),
        "rule": rule,
        "event_id": event.id,
        "env": config.template_env,
    })
}

/// The subject's state after `event`: its version, scores and time, and the rules that fired.
pub fn next_state(
    prior: &SubjectState,
    subject: &SubjectRead,
    fired: &[&str],
    now_ms: i64,
) -> SubjectState {
    let mut next = prior.clone();
    if subject.version.is_some() {
        next.version = subject.version;
    }
    next.scores = subject.scores.clone();
    next.at_ms = Some(now_ms);
    for rule in fired {
        next.fired_ms.insert((*rule).to_owned(), now_ms);
    }
    next
}

/// True when `subject` is older than what the subject's state has seen.
pub fn is_stale(prior: &SubjectState, subject: &SubjectRead) -> bool {
    matches!((prior.version, subject.version), (Some(seen), Some(v)) if v < seen)
}

/// Per-rule summary for the decision record.
pub fn verdict_json(config: &WorkerConfig, v: &RuleVerdict, actions: Vec<Value>) -> Value {
    let rule = &config.rules[v.rule];
    let mut m = BTreeMap::new();
    m.insert("rule", Value::from(rule.name.clone()));
    m.insert("mode", Value::from(rule.mode.as_str()));
    m.insert("matched", Value::from(v.matched));
    if v.cooling {
        m.insert("cooldown", Value::from(true));
    }
    if let Some(e) = &v.error {
        m.insert("error", Value::from(e.clone()));
    }
    if rule.mode == Mode::Shadow && v.fires() {
        m.insert("would_act", Value::from(true));
    }
    if !actions.is_empty() {
        m.insert("actions", Value::from(actions));
    }
    serde_json::to_value(m).unwrap_or(Value::Null)
}
