//! What each page shows, read from the store into a serializable value: the JSON answer as it
//! is, and the HTML page's context. Nothing here writes. Shared by the pages: a decision
//! record read back as a [`Row`], and the [`Mark`]s a rule or action left on it.

pub mod dead_letters;
pub mod decisions;
pub mod overview;
pub mod subject;

use serde::Serialize;
use serde_json::Value;

use crate::worker::decide::rfc3339_ms;
use crate::worker::state::DecisionRecord;

/// Rows a page shows.
pub const PAGE_ROWS: usize = 50;

/// What a rule or an action did on one event, as the pages and the chart mark it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    /// An enforcing rule fired (its actions ran, or had run before).
    Enforce,
    /// A shadow rule matched: its actions would have run.
    Shadow,
    /// An enforcing rule matched, but its breaker had tripped: nothing ran.
    Tripped,
    /// The rule matched but was cooling down for the subject.
    Cooldown,
    /// The condition could not be evaluated.
    Error,
    /// An action ran and its target took it.
    ActionOk,
    /// An action failed (the event was dead-lettered).
    ActionFailed,
}

impl Mark {
    /// As the pages print it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Enforce => "enforced",
            Self::Shadow => "shadow",
            Self::Tripped => "tripped",
            Self::Cooldown => "cooling down",
            Self::Error => "error",
            Self::ActionOk => "action ran",
            Self::ActionFailed => "action failed",
        }
    }
}

/// One rule's part in a decision: only rules that matched (or failed to evaluate) are shown.
#[derive(Debug, Clone, Serialize)]
pub struct RuleMark {
    /// The rule.
    pub rule: String,
    /// What it did.
    pub mark: Mark,
    /// [`Mark::label`], for the page.
    pub label: &'static str,
}

/// One action that ran (or failed) for a rule on one event.
#[derive(Debug, Clone, Serialize)]
pub struct ActionRun {
    /// The rule that ran it.
    pub rule: String,
    /// The action.
    pub action: String,
    /// `ok`, `failed`, `skipped` (done before), or `shadow` (what a shadow rule would have
    /// sent; nothing was).
    pub outcome: String,
    /// Attempts made.
    pub attempts: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// What it sent, secrets masked; `None` for records made before requests were recorded.
    pub request: Option<Value>,
}

/// A decision record as the pages show it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// When it was decided, RFC 3339.
    pub at: String,
    /// When it was decided, Unix milliseconds.
    pub at_ms: i64,
    /// `provider/event_id`.
    pub event_key: String,
    /// The provider.
    pub provider: String,
    /// The provider's event id.
    pub event_id: String,
    /// The event type, when recorded.
    pub event_type: Option<String>,
    /// `provider/subject`, when the event had one.
    pub subject_key: Option<String>,
    /// The subject's id.
    pub subject: Option<String>,
    /// The outcome.
    pub outcome: String,
    /// Its scores as read from the event.
    pub scores: serde_json::Map<String, Value>,
    /// The scores its rules read as `previous` (the subject's state before it), when the
    /// record has them (records made before they were recorded do not).
    pub previous_scores: Option<serde_json::Map<String, Value>>,
    /// The rules that matched (or failed to evaluate).
    pub rules: Vec<RuleMark>,
    /// The actions that ran.
    pub actions: Vec<ActionRun>,
    /// Why it was dead-lettered, when it was.
    pub dead_letter: Option<DeadLetterWhy>,
    /// The record as stored.
    pub record: Value,
    /// Its subject's page, when it had a subject.
    pub subject_href: Option<String>,
    /// The decisions page showing this event alone.
    pub event_href: String,
}

/// Why an event was dead-lettered, from its record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeadLetterWhy {
    /// The reason (the failed action's error, the lookup's failure).
    pub reason: String,
    /// The rule whose action failed.
    pub rule: Option<String>,
    /// The action that failed.
    pub action: Option<String>,
}

impl Row {
    /// Reads a decision record back.
    pub fn from_record(decision: DecisionRecord) -> Self {
        let record = decision.record;
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let (provider, event_id) = match decision.event_key.split_once('/') {
            Some((p, id)) => (p.to_owned(), id.to_owned()),
            None => (String::new(), decision.event_key.clone()),
        };
        let mut rules = Vec::new();
        let mut actions = Vec::new();
        for rule in record
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = text(rule, "rule").unwrap_or_default();
            let flag = |key: &str| rule.get(key).and_then(Value::as_bool).unwrap_or(false);
            let mark = if rule.get("error").is_some_and(|e| !e.is_null()) {
                Some(Mark::Error)
            } else if !flag("matched") {
                None
            } else if flag("tripped") {
                Some(Mark::Tripped)
            } else if flag("cooldown") {
                Some(Mark::Cooldown)
            } else if flag("would_act") || text(rule, "mode").as_deref() == Some("shadow") {
                Some(Mark::Shadow)
            } else {
                Some(Mark::Enforce)
            };
            if let Some(mark) = mark {
                rules.push(RuleMark {
                    rule: name.clone(),
                    mark,
                    label: mark.label(),
                });
            }
            for would in rule
                .get("would_send")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                actions.push(ActionRun {
                    rule: name.clone(),
                    action: text(would, "action").unwrap_or_default(),
                    outcome: "shadow".to_owned(),
                    attempts: 0,
                    error: text(would, "error"),
                    request: would.get("request").filter(|r| !r.is_null()).cloned(),
                });
            }
            let ran = rule.get("actions").and_then(Value::as_array);
            let on_trip = rule.get("on_trip").and_then(Value::as_array);
            for action in ran.into_iter().chain(on_trip).flatten() {
                actions.push(ActionRun {
                    rule: name.clone(),
                    action: text(action, "action").unwrap_or_default(),
                    outcome: text(action, "outcome").unwrap_or_default(),
                    attempts: action.get("attempts").and_then(Value::as_u64).unwrap_or(0),
                    error: text(action, "error"),
                    request: action.get("request").filter(|r| !r.is_null()).cloned(),
                });
            }
        }
        let dead_letter = record
            .get("dead_letter")
            .filter(|d| d.is_object())
            .map(|d| DeadLetterWhy {
                reason: text(d, "reason").unwrap_or_default(),
                rule: text(d, "rule"),
                action: text(d, "action"),
            });
        let mut event_query = form_urlencoded::Serializer::new(String::new());
        event_query.append_pair("event", &decision.event_key);
        Self {
            subject_href: decision.subject_key.as_deref().map(subject_href),
            event_href: format!("/ui/decisions?{}", event_query.finish()),
            at: rfc3339_ms(decision.at_ms).unwrap_or_default(),
            at_ms: decision.at_ms,
            event_type: text(&record, "type"),
            subject: text(&record, "subject"),
            scores: record
                .get("score")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            previous_scores: record
                .get("previous_score")
                .and_then(Value::as_object)
                .cloned(),
            event_key: decision.event_key,
            provider,
            event_id,
            subject_key: decision.subject_key,
            outcome: decision.outcome,
            rules,
            actions,
            dead_letter,
            record,
        }
    }

    /// The marks of this event for the chart: its rules', then one per action that ran.
    pub fn marks(&self) -> Vec<Mark> {
        let mut marks: Vec<Mark> = self.rules.iter().map(|r| r.mark).collect();
        for action in &self.actions {
            match action.outcome.as_str() {
                "ok" => marks.push(Mark::ActionOk),
                "failed" => marks.push(Mark::ActionFailed),
                _ => {}
            }
        }
        marks
    }
}

/// The subject page's address for a subject key.
pub fn subject_href(key: &str) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("key", key);
    format!("/ui/subject?{}", query.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_reads_back_into_rule_and_action_marks() {
        let row = Row::from_record(DecisionRecord {
            event_key: "acme/evt/1".into(),
            subject_key: Some("acme/usr_1".into()),
            outcome: "dead_lettered".into(),
            at_ms: 1_796_106_600_000,
            record: json!({
                "type": "score.updated", "subject": "usr_1", "score": {"trust": 0.2},
                "rules": [
                    {"rule": "drop", "mode": "enforce", "matched": true,
                     "actions": [{"action": "notify", "outcome": "failed", "attempts": 3,
                                  "error": "HTTP 500", "request": {"url": "http://x"}}]},
                    {"rule": "watch", "mode": "shadow", "matched": true, "would_act": true,
                     "would_send": [{"action": "notify", "request": {"url": "http://y"}}]},
                    {"rule": "calm", "mode": "enforce", "matched": false},
                    {"rule": "cap", "mode": "enforce", "matched": true, "tripped": true},
                ],
                "dead_letter": {"reason": "HTTP 500", "rule": "drop", "action": "notify"},
            }),
        });
        assert_eq!(
            (row.provider.as_str(), row.event_id.as_str()),
            ("acme", "evt/1")
        );
        assert_eq!(
            row.marks(),
            [
                Mark::Enforce,
                Mark::Shadow,
                Mark::Tripped,
                Mark::ActionFailed
            ]
        );
        assert_eq!(row.actions[0].request, Some(json!({"url": "http://x"})));
        assert_eq!(
            (
                row.actions[1].outcome.as_str(),
                row.actions[1].request.clone()
            ),
            ("shadow", Some(json!({"url": "http://y"})))
        );
        assert_eq!(row.dead_letter.unwrap().action.as_deref(), Some("notify"));
        assert_eq!(row.at, "2026-12-01T06:30:00.000Z");
        assert_eq!(
            subject_href("acme/<usr> 1&x"),
            "/ui/subject?key=acme%2F%3Cusr%3E+1%26x"
        );
    }
}
