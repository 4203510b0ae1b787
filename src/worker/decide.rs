//! Deciding one event: who it is about, whether it is older than what the subject's state
//! has seen, which rules apply, what their conditions say, which are cooling down, the
//! actions the firing rules run (rendered, with their idempotency keys) and the subject's
//! next state. Pure: no I/O and no clock, so the worker ([`crate::worker::batch`] carries a
//! [`Decision`] out), `hookwarden rules test` and replays decide alike. What the event's
//! lookups answered comes in as a value ([`Answers`]), as the event does.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::worker::action::{self, Firing, Request};
use crate::worker::condition::PreparedInput;
use crate::worker::enrich::Answers;
use crate::worker::facts::{Facts, Name};
use crate::worker::rules::{Mode, Rules};
use crate::worker::state::{SubjectState, Trip};
use crate::worker::subject::{SubjectError, SubjectRead};

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

/// What became of one event, as metrics and decision records name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// An enforced rule fired and its actions ran (or had run before).
    Acted,
    /// Rules fired, but none ran an action (shadow rules, rules without actions).
    Matched,
    /// No rule fired.
    NoMatch,
    /// Older than the subject's last version: not evaluated.
    Stale,
    /// No `[[subjects]]` entry reads it: not evaluated.
    NoSubject,
    /// Decided before (a redelivery), or twice in one batch.
    Duplicate,
    /// Unreadable, or an action failed: sent to the dead-letter exchange.
    DeadLettered,
    /// An enforcing rule matched but its breaker has tripped, and no other rule acted.
    Tripped,
}

impl EventOutcome {
    /// Every outcome, in the order people read them.
    pub const ALL: [Self; 8] = [
        Self::Acted,
        Self::Matched,
        Self::NoMatch,
        Self::Tripped,
        Self::DeadLettered,
        Self::Stale,
        Self::NoSubject,
        Self::Duplicate,
    ];

    /// The label in metrics and decision records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acted => "acted",
            Self::Matched => "matched",
            Self::NoMatch => "no_match",
            Self::Stale => "stale",
            Self::NoSubject => "no_subject",
            Self::Duplicate => "duplicate",
            Self::DeadLettered => "dead_lettered",
            Self::Tripped => "tripped",
        }
    }
}

/// Who an event is about, as its `[[subjects]]` entry reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Sighting {
    /// No entry reads events of its provider and type.
    NoSubject,
    /// The entry cannot read it (no subject, a score that is not a number, …): dead-letter.
    Unreadable(SubjectError),
    /// The subject, version and scores it carries.
    Subject(SubjectRead),
}

/// Reads who `event` is about.
pub fn sight(rules: &Rules, event: &Event) -> Sighting {
    match rules.subject_spec(&event.provider, &event.event_type) {
        None => Sighting::NoSubject,
        Some(spec) => match spec.read(&event.json) {
            Ok(subject) => Sighting::Subject(subject),
            Err(reason) => Sighting::Unreadable(reason),
        },
    }
}

/// The decision on one event.
#[derive(Debug)]
pub enum Decision {
    /// No `[[subjects]]` entry reads it: recorded, nothing evaluated.
    NoSubject,
    /// Its subject cannot be read: dead-letter with this reason.
    Unreadable(SubjectError),
    /// Older than the version the subject's state has seen: recorded, nothing evaluated.
    Stale(SubjectRead),
    /// Its rules were evaluated.
    Evaluated(Evaluation),
}

/// The rules' verdicts on an event about a known subject.
#[derive(Debug)]
pub struct Evaluation {
    /// What the event says about its subject.
    pub subject: SubjectRead,
    /// Every rule whose `events` take the event, in file order.
    pub rules: Vec<RuleDecision>,
    /// The subject's state once the decision stands (its actions, if any, all done).
    pub next: SubjectState,
}

/// One rule's verdict and, when it fires, its actions.
#[derive(Debug)]
pub struct RuleDecision {
    /// Index into [`Rules::rules`].
    pub rule: usize,
    /// What its condition and cooldown say.
    pub verdict: Verdict,
    /// For a firing rule, each action rendered for this firing, in the rule's order.
    pub actions: Vec<PlannedAction>,
}

/// What one rule made of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The condition did not hold.
    NotMatched,
    /// The condition held and the rule enforces: its actions run.
    Acts,
    /// The condition held and the rule is in shadow mode: recorded as what would have run.
    WouldAct,
    /// The condition held, but the rule fired for this subject within its cooldown, last
    /// at this time (Unix milliseconds).
    CoolingDown {
        /// When the rule last fired for the subject.
        fired_ms: i64,
    },
    /// The condition could not be evaluated (recorded; the event goes on).
    Error(String),
    /// The condition held and the rule enforces, but its breaker has tripped: recorded like a
    /// shadow rule's firing, its actions never run. (The worker sets it, from the state
    /// store's breakers; [`decide`] never does.)
    Tripped,
}

impl Verdict {
    /// Whether the condition held.
    pub fn matched(&self) -> bool {
        matches!(
            self,
            Self::Acts | Self::WouldAct | Self::CoolingDown { .. } | Self::Tripped
        )
    }

    /// Whether the rule fires: its actions run (enforce) or would run (shadow).
    pub fn fires(&self) -> bool {
        matches!(self, Self::Acts | Self::WouldAct)
    }
}

/// An action of a firing rule, rendered: exactly what it would send.
#[derive(Debug)]
pub struct PlannedAction {
    /// Index into [`Rules::actions`].
    pub index: usize,
    /// Its name in `[actions.NAME]`.
    pub action: String,
    /// Its kind (`http`, …).
    pub kind: &'static str,
    /// Its idempotency key: the same for every delivery of this event, rule and action.
    pub key: String,
    /// The rendered request, or why it could not be rendered (the action then fails).
    pub request: Result<Box<dyn Request>, String>,
}

/// Decides `event` for a subject whose state is `prior`, with the answers of its lookups,
/// at `now_ms` (Unix milliseconds).
pub fn decide(
    rules: &Rules,
    event: &Event,
    prior: &SubjectState,
    answers: &Answers,
    now_ms: i64,
) -> Decision {
    match sight(rules, event) {
        Sighting::NoSubject => Decision::NoSubject,
        Sighting::Unreadable(reason) => Decision::Unreadable(reason),
        Sighting::Subject(subject) => {
            decide_for(rules, event, subject, prior, answers, now_ms).into()
        }
    }
}

/// The decision on an event whose subject is known: the two ends of [`Decision`] that
/// [`decide_for`] can reach.
#[derive(Debug)]
pub enum SubjectDecision {
    /// Older than the version the subject's state has seen: recorded, nothing evaluated.
    Stale(SubjectRead),
    /// Its rules were evaluated.
    Evaluated(Evaluation),
}

impl From<SubjectDecision> for Decision {
    fn from(d: SubjectDecision) -> Self {
        match d {
            SubjectDecision::Stale(subject) => Decision::Stale(subject),
            SubjectDecision::Evaluated(evaluation) => Decision::Evaluated(evaluation),
        }
    }
}

/// [`decide`] for an event whose subject has been read already (the worker reads it first,
/// to group a batch by subject and load their states).
pub fn decide_for(
    rules: &Rules,
    event: &Event,
    subject: SubjectRead,
    prior: &SubjectState,
    answers: &Answers,
    now_ms: i64,
) -> SubjectDecision {
    decide_rendering(
        rules,
        event,
        subject,
        prior,
        answers,
        now_ms,
        Rendering::Actions,
    )
}

/// Whether a decision renders the actions of its firing rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendering {
    /// Each action rendered: what the worker sends, what a dry run shows.
    Actions,
    /// Verdicts only, [`RuleDecision::actions`] left empty: a replay that counts what would
    /// run (the rule's actions are [`crate::worker::rules::Rule::actions`]) without building
    /// requests it never sends; rendering was a third of a backtest's time.
    VerdictsOnly,
}

/// [`decide_for`], rendering actions or not.
pub fn decide_rendering(
    rules: &Rules,
    event: &Event,
    subject: SubjectRead,
    prior: &SubjectState,
    answers: &Answers,
    now_ms: i64,
    rendering: Rendering,
) -> SubjectDecision {
    if is_stale(prior, &subject) {
        return SubjectDecision::Stale(subject);
    }
    let decided = with_facts(rules, event, &subject, prior, &answers.values, |facts| {
        evaluate(rules, event, facts, prior, answers, now_ms, rendering)
    });
    let fired: Vec<&str> = decided
        .iter()
        .filter(|d| d.verdict.fires())
        .map(|d| rules.rules[d.rule].name.as_str())
        .collect();
    let next = next_state(prior, &subject, &fired, now_ms);
    SubjectDecision::Evaluated(Evaluation {
        subject,
        rules: decided,
        next,
    })
}

/// What rules see of `event`, about `subject` whose state is `prior`, with the lookups'
/// `enrich` answers, handed to `f`.
pub fn with_facts<R>(
    rules: &Rules,
    event: &Event,
    subject: &SubjectRead,
    prior: &SubjectState,
    enrich: &BTreeMap<String, Value>,
    f: impl FnOnce(&Facts<'_>) -> R,
) -> R {
    let previous_at = prior.at_ms.and_then(rfc3339_ms);
    f(&Facts {
        event: &event.json,
        provider: &event.provider,
        event_type: &event.event_type,
        event_id: &event.id,
        subject: &subject.id,
        score: &subject.scores,
        previous_score: &prior.scores,
        previous_at: previous_at.as_deref(),
        env: &rules.template_env,
        lists: &rules.lists,
        enrich,
    })
}

/// Every rule that applies to `event`, evaluated. A rule that reads a lookup that gave no
/// answer is not evaluated: its verdict is the lookup's error.
fn evaluate(
    rules: &Rules,
    event: &Event,
    facts: &Facts<'_>,
    prior: &SubjectState,
    answers: &Answers,
    now_ms: i64,
    rendering: Rendering,
) -> Vec<RuleDecision> {
    // Converted to CEL once for all the rules that apply, and only if one does.
    let mut prepared: Option<PreparedInput<'_>> = None;
    let mut decided = Vec::new();
    for (i, rule) in rules.rules.iter().enumerate() {
        if !rule.applies(&event.provider, &event.event_type) {
            continue;
        }
        if let Some(reason) = answers.missing(&rule.enrich) {
            decided.push(RuleDecision {
                rule: i,
                verdict: Verdict::Error(reason),
                actions: Vec::new(),
            });
            continue;
        }
        let prepared = prepared.get_or_insert_with(|| PreparedInput::new(facts));
        let verdict = match rule.when.evaluate_prepared(prepared) {
            Err(reason) => Verdict::Error(reason),
            Ok(false) => Verdict::NotMatched,
            Ok(true) => match cooling(rule.cooldown, prior.fired_ms.get(&rule.name), now_ms) {
                Some(fired_ms) => Verdict::CoolingDown { fired_ms },
                None if rule.mode == Mode::Shadow => Verdict::WouldAct,
                None => Verdict::Acts,
            },
        };
        // Shadow rules are rendered too: the point of shadow mode is to see what enforcing
        // would do before it does it.
        let actions = match verdict.fires() && rendering == Rendering::Actions {
            true => {
                let context = Firing::context(facts, &rule.name);
                rule.actions
                    .iter()
                    .map(|&index| plan(rules, index, &rule.name, event, facts, context.clone()))
                    .collect()
            }
            false => Vec::new(),
        };
        decided.push(RuleDecision {
            rule: i,
            verdict,
            actions,
        });
    }
    decided
}

/// When a rule with `cooldown` that last fired at `last` is still cooling down at `now_ms`:
/// the time it last fired.
fn cooling(cooldown: Option<std::time::Duration>, last: Option<&i64>, now_ms: i64) -> Option<i64> {
    let (cooldown, &last) = (cooldown?, last?);
    let cooldown = i64::try_from(cooldown.as_millis()).unwrap_or(i64::MAX);
    (now_ms.saturating_sub(last) < cooldown).then_some(last)
}

fn plan(
    rules: &Rules,
    index: usize,
    rule: &str,
    event: &Event,
    facts: &Facts<'_>,
    context: minijinja::Value,
) -> PlannedAction {
    let action = &rules.actions[index];
    let key = action::idempotency_key(&event.key, rule, &action.name);
    let request = action
        .kind
        .render(&Firing::new(&rules.templates, facts, rule, &key, context));
    PlannedAction {
        index,
        action: action.name.clone(),
        kind: action.kind.name(),
        key,
        request,
    }
}

impl Evaluation {
    /// Whether some rule fires.
    pub fn fires(&self) -> bool {
        self.rules.iter().any(|r| r.verdict.fires())
    }

    /// The actions that run, in order: those of the enforcing rules that fire.
    pub fn enforced(&self) -> impl Iterator<Item = (&RuleDecision, &PlannedAction)> {
        self.rules
            .iter()
            .filter(|r| r.verdict == Verdict::Acts)
            .flat_map(|r| r.actions.iter().map(move |a| (r, a)))
    }

    /// The event's outcome once its actions ran: `acted` when one ran (or had run before),
    /// `failed` when one failed.
    pub fn outcome(&self, acted: bool, failed: bool) -> EventOutcome {
        if failed {
            EventOutcome::DeadLettered
        } else if acted {
            EventOutcome::Acted
        } else if self.rules.iter().any(|r| r.verdict == Verdict::Tripped) {
            EventOutcome::Tripped
        } else if self.fires() {
            EventOutcome::Matched
        } else {
            EventOutcome::NoMatch
        }
    }

    /// The outcome should every action that rendered succeed: what a dry run predicts.
    pub fn expected_outcome(&self) -> EventOutcome {
        let acted = self.enforced().any(|(_, a)| a.request.is_ok());
        let failed = self.enforced().any(|(_, a)| a.request.is_err());
        self.outcome(acted, failed)
    }
}

impl RuleDecision {
    /// The rule's entry in the decision record, with the results of the actions that ran.
    pub fn record(&self, rules: &Rules, actions: Vec<Value>) -> Value {
        let rule = &rules.rules[self.rule];
        let mut m = BTreeMap::new();
        m.insert("rule", Value::from(rule.name.clone()));
        m.insert("mode", Value::from(rule.mode.as_str()));
        m.insert("matched", Value::from(self.verdict.matched()));
        match &self.verdict {
            Verdict::CoolingDown { .. } => {
                m.insert("cooldown", Value::from(true));
            }
            Verdict::Error(e) => {
                m.insert("error", Value::from(e.clone()));
            }
            Verdict::WouldAct => {
                m.insert("would_act", Value::from(true));
            }
            Verdict::Tripped => {
                m.insert("tripped", Value::from(true));
            }
            Verdict::NotMatched | Verdict::Acts => {}
        }
        if !actions.is_empty() {
            m.insert("actions", Value::from(actions));
        }
        Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }
}

/// The `on_trip` actions of rule `rule` (an index into [`Rules::rules`]), rendered for `trip`:
/// their templates see the event that tripped it, as the rule's own actions would, and
/// `count`, `per` and `subjects`. Keyed by the trip (rule and time), so they run once per trip.
pub fn plan_trip(
    rules: &Rules,
    rule: usize,
    event: &Event,
    subject: &SubjectRead,
    prior: &SubjectState,
    answers: &Answers,
    trip: &Trip,
) -> Vec<PlannedAction> {
    with_facts(rules, event, subject, prior, &answers.values, |facts| {
        plan_trip_with(rules, rule, facts, trip)
    })
}

fn plan_trip_with(
    rules: &Rules,
    rule: usize,
    facts: &Facts<'_>,
    trip: &Trip,
) -> Vec<PlannedAction> {
    let rule = &rules.rules[rule];
    let mut context = facts.template_context(&rule.name);
    if let Value::Object(names) = &mut context {
        names.insert(Name::Count.as_str().to_owned(), Value::from(trip.count));
        names.insert(
            Name::Per.as_str().to_owned(),
            Value::from(trip.per().to_string()),
        );
        names.insert(
            Name::Subjects.as_str().to_owned(),
            Value::from(trip.subjects.clone()),
        );
    }
    let context = crate::worker::template::context(std::sync::Arc::new(context));
    let trip_key = format!("trip/{}/{}", rule.name, trip.at_ms);
    rule.on_trip
        .iter()
        .map(|&index| {
            let action = &rules.actions[index];
            let key = action::idempotency_key(&trip_key, &rule.name, &action.name);
            let request = action.kind.render(&Firing::new(
                &rules.templates,
                facts,
                &rule.name,
                &key,
                context.clone(),
            ));
            PlannedAction {
                index,
                action: action.name.clone(),
                kind: action.kind.name(),
                key,
                request,
            }
        })
        .collect()
}

/// A rule's entry in a decision record, read back: what [`RuleDecision::record`] wrote, for
/// backtests and rule statistics.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct RecordedRule {
    /// The rule's name.
    pub rule: String,
    /// `enforce` or `shadow`.
    #[serde(default)]
    pub mode: String,
    /// Whether its condition held.
    #[serde(default)]
    pub matched: bool,
    /// It held, but the rule was cooling down for the subject.
    #[serde(default)]
    pub cooldown: bool,
    /// It held, but the rule's breaker had tripped.
    #[serde(default)]
    pub tripped: bool,
    /// It held in shadow mode: what would have run.
    #[serde(default)]
    pub would_act: bool,
    /// Why the condition could not be evaluated.
    #[serde(default)]
    pub error: Option<String>,
    /// The actions that ran, with their outcomes.
    #[serde(default)]
    pub actions: Vec<RecordedAction>,
}

/// An action's entry in a rule's record.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct RecordedAction {
    /// The action's name.
    pub action: String,
    /// `ok`, `failed`, `skipped`.
    #[serde(default)]
    pub outcome: String,
}

impl RecordedRule {
    /// Whether the rule fired: its condition held and it was neither cooling down nor
    /// tripped (its actions ran, or would have in shadow mode).
    pub fn fired(&self) -> bool {
        self.matched && !self.cooldown && !self.tripped
    }
}

/// The rules of a decision record (JSON text); none for a record without them (stale, no
/// subject) or one that does not read.
pub fn recorded_rules(record: &str) -> Vec<RecordedRule> {
    #[derive(serde::Deserialize)]
    struct Record {
        #[serde(default)]
        rules: Vec<RecordedRule>,
    }
    serde_json::from_str::<Record>(record)
        .map(|r| r.rules)
        .unwrap_or_default()
}

/// Unix milliseconds as RFC 3339.
pub fn rfc3339_ms(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms).ok()?;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(at).to_string())
}

/// The subject's state after `event`: its version, scores and time, and the rules that fired.
fn next_state(
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::worker::config::WorkerConfig;

    /// A threshold-crossing rule with a cooldown, a drop rule, a shadow rule, a rule whose
    /// condition fails on events without `data.tier`, and an action whose URL cannot render
    /// for subjects named `bad`.
    const RULES: &str = r#"
[[subjects]]
provider = "dregs"
types = ["identity.*"]
subject = "/data/id"
version = "/data/v"
scores = { humanity = "/data/humanity" }

[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0 && (!has(previous.score.humanity) || previous.score.humanity >= 30.0)"
actions = ["quarantine", "note"]
cooldown = "1h"

[[rules]]
name = "drop"
events = ["dregs:identity.scored"]
when = "has(previous.score.humanity) && previous.score.humanity - score.humanity >= 25"
actions = ["note"]

[[rules]]
name = "watch"
events = ["dregs:*"]
when = "score.humanity < 50.0"
actions = ["quarantine"]
mode = "shadow"

[[rules]]
name = "tiered"
events = ["dregs:identity.tiered"]
when = "event.data.tier == 'gold'"
actions = ["note"]

[actions.quarantine]
kind = "http"
url = "http://127.0.0.1:1/accounts/{{ subject }}{% if subject == 'bad' %}{{ event.data.nothing.deeper }}{% endif %}"
body = '{"humanity": {{ score.humanity }}}'

[actions.note]
kind = "log"
message = "{{ rule }} on {{ subject }}"
"#;

    const HOUR_MS: i64 = 3_600_000;
    const NOW: i64 = 1_800_000_000_000;

    fn rules() -> Rules {
        match WorkerConfig::parse("rules.toml", RULES, &HashMap::new()) {
            Ok(config) => config.rules,
            Err(err) => panic!("{err}"),
        }
    }

    fn event(event_type: &str, data: Value) -> Event {
        Event {
            key: "dregs/evt_1".into(),
            provider: "dregs".into(),
            id: "evt_1".into(),
            event_type: event_type.into(),
            json: json!({ "data": data }),
        }
    }

    fn scored(id: &str, humanity: f64) -> Event {
        event(
            "identity.scored",
            json!({"id": id, "v": 10, "humanity": humanity}),
        )
    }

    fn seen(humanity: f64, version: i64) -> SubjectState {
        SubjectState {
            version: Some(version),
            scores: BTreeMap::from([("humanity".to_owned(), humanity)]),
            at_ms: Some(NOW - HOUR_MS),
            fired_ms: BTreeMap::new(),
        }
    }

    /// Each applying rule's name and verdict.
    fn verdicts(decision: &Decision, rules: &Rules) -> Vec<(String, Verdict)> {
        match decision {
            Decision::Evaluated(e) => e
                .rules
                .iter()
                .map(|d| (rules.rules[d.rule].name.clone(), d.verdict.clone()))
                .collect(),
            other => panic!("not evaluated: {other:?}"),
        }
    }

    fn evaluation(decision: Decision) -> Evaluation {
        match decision {
            Decision::Evaluated(e) => e,
            other => panic!("not evaluated: {other:?}"),
        }
    }

    /// What it is, the event, the subject's state, each rule's verdict, the outcome.
    type Case = (
        &'static str,
        Event,
        SubjectState,
        Vec<(String, Verdict)>,
        EventOutcome,
    );

    fn named(pairs: &[(&str, Verdict)]) -> Vec<(String, Verdict)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn rules_decide_as_written() {
        use Verdict::*;
        let rules = rules();
        let cooling = {
            let mut state = seen(40.0, 1);
            state
                .fired_ms
                .insert("quarantine".into(), NOW - HOUR_MS / 2);
            state
        };
        let cooled = {
            let mut state = seen(40.0, 1);
            state
                .fired_ms
                .insert("quarantine".into(), NOW - 2 * HOUR_MS);
            state
        };
        let table: Vec<Case> = vec![
            (
                "first sighting below the threshold",
                scored("u1", 20.0),
                SubjectState::default(),
                named(&[
                    ("quarantine", Acts),
                    ("drop", NotMatched),
                    ("watch", WouldAct),
                ]),
                EventOutcome::Acted,
            ),
            (
                "crossing down, and a sharp drop",
                scored("u1", 20.0),
                seen(60.0, 1),
                named(&[("quarantine", Acts), ("drop", Acts), ("watch", WouldAct)]),
                EventOutcome::Acted,
            ),
            (
                "already below: no crossing",
                scored("u1", 20.0),
                seen(25.0, 1),
                named(&[
                    ("quarantine", NotMatched),
                    ("drop", NotMatched),
                    ("watch", WouldAct),
                ]),
                EventOutcome::Matched,
            ),
            (
                "above every threshold",
                scored("u1", 80.0),
                seen(85.0, 1),
                named(&[
                    ("quarantine", NotMatched),
                    ("drop", NotMatched),
                    ("watch", NotMatched),
                ]),
                EventOutcome::NoMatch,
            ),
            (
                "within the cooldown",
                scored("u1", 20.0),
                cooling,
                named(&[
                    (
                        "quarantine",
                        CoolingDown {
                            fired_ms: NOW - HOUR_MS / 2,
                        },
                    ),
                    ("drop", NotMatched),
                    ("watch", WouldAct),
                ]),
                EventOutcome::Matched,
            ),
            (
                "after the cooldown",
                scored("u1", 20.0),
                cooled,
                named(&[
                    ("quarantine", Acts),
                    ("drop", NotMatched),
                    ("watch", WouldAct),
                ]),
                EventOutcome::Acted,
            ),
            (
                "a condition that fails to evaluate",
                event(
                    "identity.tiered",
                    json!({"id": "u1", "v": 10, "humanity": 90}),
                ),
                SubjectState::default(),
                named(&[
                    ("watch", NotMatched),
                    ("tiered", Error("No such key: tier".into())),
                ]),
                EventOutcome::NoMatch,
            ),
            (
                "an action that cannot render",
                scored("bad", 20.0),
                SubjectState::default(),
                named(&[
                    ("quarantine", Acts),
                    ("drop", NotMatched),
                    ("watch", WouldAct),
                ]),
                EventOutcome::DeadLettered,
            ),
        ];
        for (case, event, prior, expected, outcome) in table {
            let decision = decide(&rules, &event, &prior, &Answers::default(), NOW);
            let mut got = verdicts(&decision, &rules);
            // cel's wording of a missing key is its own; that it is an error is ours.
            for (_, verdict) in &mut got {
                if let Error(reason) = verdict {
                    assert!(reason.contains("tier"), "{case}: {reason}");
                    *reason = "No such key: tier".into();
                }
            }
            assert_eq!(got, expected, "{case}");
            assert_eq!(evaluation(decision).expected_outcome(), outcome, "{case}");
        }
    }

    #[test]
    fn firing_rules_carry_their_rendered_actions_and_keys() {
        let rules = rules();
        let e = evaluation(decide(
            &rules,
            &scored("u1", 20.0),
            &seen(60.0, 1),
            &Answers::default(),
            NOW,
        ));
        let quarantine = &e.rules[0];
        let names: Vec<(&str, &str)> = quarantine
            .actions
            .iter()
            .map(|a| (a.action.as_str(), a.kind))
            .collect();
        assert_eq!(names, [("quarantine", "http"), ("note", "log")]);
        let http = &quarantine.actions[0];
        assert_eq!(
            http.key,
            action::idempotency_key("dregs/evt_1", "quarantine", "quarantine")
        );
        let sent = match &http.request {
            Ok(request) => request.describe(),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(sent["url"], "http://127.0.0.1:1/accounts/u1");
        assert_eq!(sent["body"], r#"{"humanity": 20}"#);
        assert!(
            sent["headers"]
                .as_array()
                .is_some_and(|h| h.contains(&json!(["idempotency-key", http.key])))
        );
        // The shadow rule's actions are rendered (a dry run shows them) but do not run.
        assert_eq!(e.rules[2].actions.len(), 1);
        let running: Vec<&str> = e.enforced().map(|(_, a)| a.action.as_str()).collect();
        assert_eq!(running, ["quarantine", "note", "note"]);
        // A rule that does not fire plans nothing.
        let calm = evaluation(decide(
            &rules,
            &scored("u1", 90.0),
            &seen(95.0, 1),
            &Answers::default(),
            NOW,
        ));
        assert!(calm.rules.iter().all(|r| r.actions.is_empty()));
    }

    #[test]
    fn next_state_remembers_scores_version_time_and_firings() {
        let rules = rules();
        let e = evaluation(decide(
            &rules,
            &scored("u1", 20.0),
            &seen(60.0, 1),
            &Answers::default(),
            NOW,
        ));
        assert_eq!(e.next.version, Some(10));
        assert_eq!(e.next.scores.get("humanity"), Some(&20.0));
        assert_eq!(e.next.at_ms, Some(NOW));
        // Shadow firings count for cooldowns too: enforcing later must not fire at once.
        let fired: Vec<&str> = e.next.fired_ms.keys().map(String::as_str).collect();
        assert_eq!(fired, ["drop", "quarantine", "watch"]);
    }

    #[test]
    fn stale_unknown_and_unreadable_events_are_not_evaluated() {
        let rules = rules();
        assert!(matches!(
            decide(&rules, &scored("u1", 20.0), &seen(60.0, 11), &Answers::default(), NOW),
            Decision::Stale(s) if s.version == Some(10)
        ));
        // The same version again is not stale: a provider may rescore at one version.
        assert!(matches!(
            decide(
                &rules,
                &scored("u1", 20.0),
                &seen(60.0, 10),
                &Answers::default(),
                NOW
            ),
            Decision::Evaluated(_)
        ));
        let mut other = scored("u1", 20.0);
        other.provider = "elsewhere".into();
        assert!(matches!(
            decide(
                &rules,
                &other,
                &SubjectState::default(),
                &Answers::default(),
                NOW
            ),
            Decision::NoSubject
        ));
        let unreadable = event("identity.scored", json!({"v": 1, "humanity": 3}));
        assert!(matches!(
            decide(&rules, &unreadable, &SubjectState::default(), &Answers::default(), NOW),
            Decision::Unreadable(SubjectError::Missing(pointer)) if pointer == "/data/id"
        ));
    }

    #[test]
    fn outcomes_after_running() {
        let rules = rules();
        let e = evaluation(decide(
            &rules,
            &scored("u1", 20.0),
            &seen(60.0, 1),
            &Answers::default(),
            NOW,
        ));
        assert_eq!(e.outcome(true, false), EventOutcome::Acted);
        assert_eq!(e.outcome(true, true), EventOutcome::DeadLettered);
        assert_eq!(e.outcome(false, false), EventOutcome::Matched);
        let labels: Vec<&str> = [
            EventOutcome::Acted,
            EventOutcome::Matched,
            EventOutcome::NoMatch,
            EventOutcome::Stale,
            EventOutcome::NoSubject,
            EventOutcome::Duplicate,
            EventOutcome::DeadLettered,
        ]
        .into_iter()
        .map(EventOutcome::as_str)
        .collect();
        assert_eq!(
            labels,
            [
                "acted",
                "matched",
                "no_match",
                "stale",
                "no_subject",
                "duplicate",
                "dead_lettered"
            ]
        );
    }

    #[test]
    fn the_record_says_what_each_rule_did() {
        let rules = rules();
        let mut state = seen(60.0, 1);
        state.fired_ms.insert("quarantine".into(), NOW - 1);
        let e = evaluation(decide(
            &rules,
            &scored("u1", 20.0),
            &state,
            &Answers::default(),
            NOW,
        ));
        let records: Vec<Value> = e
            .rules
            .iter()
            .map(|r| r.record(&rules, Vec::new()))
            .collect();
        assert_eq!(
            records,
            [
                json!({"rule": "quarantine", "mode": "enforce", "matched": true, "cooldown": true}),
                json!({"rule": "drop", "mode": "enforce", "matched": true}),
                json!({"rule": "watch", "mode": "shadow", "matched": true, "would_act": true}),
            ]
        );
    }
}
