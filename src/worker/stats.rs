//! Per-rule statistics over decision records: how often each rule was evaluated, matched,
//! acted (enforce) or would have (shadow), was cooling down or tripped, failed to evaluate,
//! on how many subjects, how many of its actions failed, and what analysts' labels say of
//! its matches (the false-positive ratio among those labelled). Pure: the caller feeds the
//! records ([`Tally::add`]); memory grows with rules and subjects, not records.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize as _, Serialize};

use crate::worker::decide::RecordedRule;
use crate::worker::rules::{Mode, Rules};
use crate::worker::state::{DecisionRecord, Label, LabelVerdict};

/// One rule's line.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuleStats {
    /// The rule.
    pub rule: String,
    /// Its mode in the rules file now; `None` when only records have it.
    pub mode: Option<&'static str>,
    /// Events its `events` patterns took.
    pub evaluated: u64,
    /// Events its condition held for.
    pub matched: u64,
    /// Enforced firings: its actions ran.
    pub acted: u64,
    /// Shadow firings: its actions would have run.
    pub would_act: u64,
    /// Matches while it cooled down for the subject.
    pub cooling_down: u64,
    /// Matches while its breaker was tripped.
    pub tripped: u64,
    /// Events its condition could not be evaluated for.
    pub errors: u64,
    /// Distinct subjects it matched.
    pub subjects: u64,
    /// Its matches labelled right.
    pub true_positives: u64,
    /// Its matches labelled wrong.
    pub false_positives: u64,
    /// False positives among the labelled matches; `None` before any label.
    pub false_positive_ratio: Option<f64>,
    /// Its actions that failed (after their retries).
    pub actions_failed: u64,
}

/// Counts in progress.
pub struct Tally<'r> {
    rules: &'r Rules,
    labels: HashMap<(String, String), LabelVerdict>,
    lines: Vec<RuleStats>,
    line_of: HashMap<String, usize>,
    subjects: Vec<HashSet<String>>,
    /// Decision records read.
    pub decisions: u64,
}

impl<'r> Tally<'r> {
    /// Counts for `rules` (their file order first), with these labels.
    pub fn new(rules: &'r Rules, labels: Vec<Label>) -> Self {
        let mut tally = Self {
            rules,
            labels: labels
                .into_iter()
                .map(|l| ((l.event_key, l.rule), l.verdict))
                .collect(),
            lines: Vec::new(),
            line_of: HashMap::new(),
            subjects: Vec::new(),
            decisions: 0,
        };
        for rule in &rules.rules {
            tally.line(&rule.name);
        }
        tally
    }

    fn line(&mut self, rule: &str) -> usize {
        if let Some(&i) = self.line_of.get(rule) {
            return i;
        }
        let mode = self
            .rules
            .rules
            .iter()
            .find(|r| r.name == rule)
            .map(|r| r.mode.as_str());
        self.lines.push(RuleStats {
            rule: rule.to_owned(),
            mode,
            ..RuleStats::default()
        });
        self.subjects.push(HashSet::new());
        self.line_of.insert(rule.to_owned(), self.lines.len() - 1);
        self.lines.len() - 1
    }

    /// Counts one decision record.
    pub fn add(&mut self, record: &DecisionRecord) {
        self.decisions += 1;
        let Some(rules) = record.record.get("rules") else {
            return;
        };
        // A record that does not read as rules (written by some other build) counts as none.
        let rules = Vec::<RecordedRule>::deserialize(rules).unwrap_or_default();
        for r in rules {
            let i = self.line(&r.rule);
            let label = self
                .labels
                .get(&(record.event_key.clone(), r.rule.clone()))
                .copied();
            let line = &mut self.lines[i];
            line.evaluated += 1;
            line.errors += u64::from(r.error.is_some());
            if !r.matched {
                continue;
            }
            line.matched += 1;
            line.cooling_down += u64::from(r.cooldown);
            line.tripped += u64::from(r.tripped);
            if r.fired() {
                if r.would_act || r.mode == Mode::Shadow.as_str() {
                    line.would_act += 1;
                } else {
                    line.acted += 1;
                }
            }
            line.actions_failed +=
                r.actions.iter().filter(|a| a.outcome == "failed").count() as u64;
            match label {
                Some(LabelVerdict::TruePositive) => line.true_positives += 1,
                Some(LabelVerdict::FalsePositive) => line.false_positives += 1,
                None => {}
            }
            if let Some(subject) = &record.subject_key {
                self.subjects[i].insert(subject.clone());
            }
        }
    }

    /// The lines: the rules file's rules in order, then rules only the records name.
    pub fn finish(mut self) -> Vec<RuleStats> {
        for (line, subjects) in self.lines.iter_mut().zip(&self.subjects) {
            line.subjects = subjects.len() as u64;
            let labelled = line.true_positives + line.false_positives;
            line.false_positive_ratio =
                (labelled > 0).then(|| line.false_positives as f64 / labelled as f64);
        }
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::worker::config::WorkerConfig;

    fn rules() -> Rules {
        let text = r#"
[[subjects]]
provider = "dregs"
types = ["*"]
subject = "/id"
[[rules]]
name = "quarantine"
events = ["dregs:*"]
when = "true"
actions = []
[[rules]]
name = "watch"
events = ["dregs:*"]
when = "true"
actions = []
mode = "shadow"
"#;
        match WorkerConfig::parse("rules.toml", text, &HashMap::new()) {
            Ok(c) => c.rules,
            Err(e) => panic!("{e}"),
        }
    }

    fn record(event: &str, subject: &str, rules: serde_json::Value) -> DecisionRecord {
        DecisionRecord {
            event_key: format!("dregs/{event}"),
            subject_key: Some(format!("dregs/{subject}")),
            outcome: "acted".into(),
            record: json!({ "rules": rules }),
            at_ms: 1,
        }
    }

    fn label(event: &str, verdict: LabelVerdict) -> Label {
        Label {
            event_key: format!("dregs/{event}"),
            rule: "quarantine".into(),
            verdict,
            note: None,
            at_ms: 2,
        }
    }

    #[test]
    fn counts_and_false_positive_ratio_per_rule() {
        let rules = rules();
        let labels = vec![
            label("e1", LabelVerdict::FalsePositive),
            label("e2", LabelVerdict::TruePositive),
            label("e3", LabelVerdict::TruePositive),
            // A label on an event outside the records read counts for nothing.
            label("e9", LabelVerdict::FalsePositive),
        ];
        let mut tally = Tally::new(&rules, labels);
        let acted = |ok: &str| {
            json!({"rule": "quarantine", "mode": "enforce", "matched": true,
                   "actions": [{"action": "q", "outcome": ok}]})
        };
        let shadow = json!({"rule": "watch", "mode": "shadow", "matched": true, "would_act": true});
        tally.add(&record("e1", "u1", json!([acted("ok"), shadow])));
        tally.add(&record("e2", "u1", json!([acted("failed")])));
        tally.add(&record("e3", "u2", json!([acted("ok")])));
        tally.add(&record(
            "e4",
            "u3",
            json!([{"rule": "quarantine", "mode": "enforce", "matched": true, "tripped": true}]),
        ));
        tally.add(&record(
            "e5",
            "u3",
            json!([{"rule": "quarantine", "matched": true, "cooldown": true},
                   {"rule": "gone", "matched": false, "error": "no such key"}]),
        ));
        tally.add(&record(
            "e6",
            "u4",
            json!([{"rule": "quarantine", "matched": false}]),
        ));
        assert_eq!(tally.decisions, 6);
        let lines = tally.finish();
        let q = &lines[0];
        assert_eq!(q.rule, "quarantine");
        assert_eq!(
            (q.evaluated, q.matched, q.acted, q.tripped, q.cooling_down),
            (6, 5, 3, 1, 1)
        );
        assert_eq!((q.subjects, q.actions_failed), (3, 1));
        assert_eq!((q.true_positives, q.false_positives), (2, 1));
        assert_eq!(q.false_positive_ratio, Some(1.0 / 3.0));
        let w = &lines[1];
        assert_eq!((w.mode, w.would_act, w.acted), (Some("shadow"), 1, 0));
        assert_eq!(w.false_positive_ratio, None);
        // A rule only the records name comes last, without a mode.
        assert_eq!(
            (lines[2].rule.as_str(), lines[2].mode, lines[2].errors),
            ("gone", None, 1)
        );
    }
}
