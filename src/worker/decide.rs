//! Deciding one event: who it is about, whether it is older than what the subject's state
//! has seen, which rules apply, what their conditions say, which are cooling down, the
//! actions the firing rules run (rendered, with their idempotency keys) and the subject's
//! next state. Pure: no I/O and no clock, so the worker ([`crate::worker::batch`] carries a
//! [`Decision`] out), `hookwarden rules test` and replays decide alike.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::worker::action::{self, Firing, Request};
use crate::worker::condition::PreparedInput;
use crate::worker::facts::Facts;
use crate::worker::rules::{Mode, Rules};
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
}

impl EventOutcome {
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
        }
    }
}

/// Who an event is about, as its `[[subjects]]` entry reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Sighting {
    /// No entry reads events of its provider and type.
    NoSubject,
    /// The entry cannot read it (no subject, a score that is not a number, …): dead-letter.
    Unreadable(String),
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
    Unreadable(String),
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
}

impl Verdict {
    /// Whether the condition held.
    pub fn matched(&self) -> bool {
        matches!(self, Self::Acts | Self::WouldAct | Self::CoolingDown { .. })
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

/// Decides `event` for a subject whose state is `prior`, at `now_ms` (Unix milliseconds).
pub fn decide(rules: &Rules, event: &Event, prior: &SubjectState, now_ms: i64) -> Decision {
    match sight(rules, event) {
        Sighting::NoSubject => Decision::NoSubject,
        Sighting::Unreadable(reason) => Decision::Unreadable(reason),
        Sighting::Subject(subject) => decide_for(rules, event, subject, prior, now_ms),
    }
}

/// [`decide`] for an event whose subject has been read already (the worker reads it first,
/// to group a batch by subject and load their states).
pub fn decide_for(
    rules: &Rules,
    event: &Event,
    subject: SubjectRead,
    prior: &SubjectState,
    now_ms: i64,
) -> Decision {
    if is_stale(prior, &subject) {
        return Decision::Stale(subject);
    }
    let decided = evaluate(rules, event, &subject, prior, now_ms);
    let fired: Vec<&str> = decided
        .iter()
        .filter(|d| d.verdict.fires())
        .map(|d| rules.rules[d.rule].name.as_str())
        .collect();
    let next = next_state(prior, &subject, &fired, now_ms);
    Decision::Evaluated(Evaluation {
        subject,
        rules: decided,
        next,
    })
}

/// Every rule that applies to `event`, evaluated.
fn evaluate(
    rules: &Rules,
    event: &Event,
    subject: &SubjectRead,
    prior: &SubjectState,
    now_ms: i64,
) -> Vec<RuleDecision> {
    let previous_at = prior.at_ms.and_then(rfc3339_ms);
    let facts = Facts {
        event: &event.json,
        provider: &event.provider,
        event_type: &event.event_type,
        event_id: &event.id,
        subject: &subject.id,
        score: &subject.scores,
        previous_score: &prior.scores,
        previous_at: previous_at.as_deref(),
        env: &rules.template_env,
    };
    // Converted to CEL once for all the rules that apply, and only if one does.
    let mut prepared: Option<PreparedInput<'_>> = None;
    let mut decided = Vec::new();
    for (i, rule) in rules.rules.iter().enumerate() {
        if !rule.applies(&event.provider, &event.event_type) {
            continue;
        }
        let prepared = prepared.get_or_insert_with(|| PreparedInput::new(&facts));
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
        let actions = match verdict.fires() {
            true => rule
                .actions
                .iter()
                .map(|&index| plan(rules, index, &rule.name, event, &facts))
                .collect(),
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
) -> PlannedAction {
    let action = &rules.actions[index];
    let key = action::idempotency_key(&event.key, rule, &action.name);
    let request = action
        .kind
        .render(&Firing::new(&rules.templates, facts, rule, &key));
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
            Verdict::NotMatched | Verdict::Acts => {}
        }
        if !actions.is_empty() {
            m.insert("actions", Value::from(actions));
        }
        Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }
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
fn is_stale(prior: &SubjectState, subject: &SubjectRead) -> bool {
    matches!((prior.version, subject.version), (Some(seen), Some(v)) if v < seen)
}
