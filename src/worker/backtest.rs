//! Backtests: the archived events decided again, in delivery order, by candidate rules, and
//! compared with what was decided before: the decisions the worker recorded, or a baseline
//! set of rules replayed the same way. Each side rebuilds every subject's state from the
//! archive's oldest event, so drops and crossings see the past the worker saw, and its
//! cooldowns run on the events' receive times. Pure: the caller streams the archive in
//! ([`Backtest::feed`]); nothing is sent and nothing stored. Memory grows with subjects (their
//! states, the set of subjects that changed), never with events.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::worker::decide::{
    self, Event, Rendering, Sighting, SubjectDecision, Verdict, rfc3339_ms,
};
use crate::worker::rules::{Mode, Rules};
use crate::worker::state::{Replayed, SubjectState};

/// How many subjects whose actions change the report lists, unless told otherwise.
pub const CHANGES_LISTED: usize = 20;

/// Which receive times are compared (every event is replayed: those before the window build
/// the subjects' states).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// From this time on (Unix milliseconds); `None`: from the oldest event.
    pub from_ms: Option<i64>,
    /// Up to this time (Unix milliseconds, included); `None`: to the newest.
    pub to_ms: Option<i64>,
}

impl Window {
    /// Whether an event received at `at_ms` is compared.
    pub fn contains(&self, at_ms: i64) -> bool {
        self.from_ms.is_none_or(|from| at_ms >= from) && self.to_ms.is_none_or(|to| at_ms <= to)
    }
}

/// The subjects' states as one set of rules rebuilds them, event by event, and the rules'
/// breakers as they would have counted (from untripped at the oldest event; an operator's
/// reset is not in the archive, so a tripped rule stays tripped to the end).
pub struct Replay<'r> {
    rules: &'r Rules,
    states: HashMap<String, SubjectState>,
    breakers: HashMap<usize, Breaker>,
}

/// A rule's breaker in a replay: the receive times of the firings it let act in its window.
#[derive(Default)]
struct Breaker {
    acted: std::collections::VecDeque<i64>,
    tripped: bool,
}

/// What one rule made of one event, on one side.
#[derive(Debug, Clone, PartialEq)]
struct Marked {
    rule: String,
    matched: bool,
    /// Its actions run (enforce) or would (shadow).
    fires: bool,
    /// It would have acted, but its breaker had tripped.
    tripped: bool,
    error: bool,
    /// For a firing rule, its actions and whether they run (enforce) rather than only being
    /// recorded (shadow).
    actions: Vec<String>,
    enforced: bool,
}

/// What one side made of one event.
#[derive(Debug, Default)]
struct Sided {
    /// No `[[subjects]]` entry reads it, or its subject could not be read, or it was stale:
    /// nothing was evaluated.
    evaluated: bool,
    rules: Vec<Marked>,
}

impl Sided {
    fn fires(&self, rule: &str) -> bool {
        self.rules.iter().any(|m| m.rule == rule && m.fires)
    }
}

impl<'r> Replay<'r> {
    /// A replay from no state at all.
    pub fn new(rules: &'r Rules) -> Self {
        Self {
            rules,
            states: HashMap::new(),
            breakers: HashMap::new(),
        }
    }

    /// Subjects seen so far.
    pub fn subjects(&self) -> usize {
        self.states.len()
    }

    /// Decides `event` at `at_ms` against its subject's state as replayed so far, and moves
    /// that state on as the worker would commit it (its actions taken to succeed). Returns
    /// the subject key, its scores before the event, and what the rules made of it.
    fn decide(&mut self, event: &Event, at_ms: i64) -> (Option<Subject>, Sided) {
        let read = match decide::sight(self.rules, event) {
            Sighting::Subject(read) => read,
            Sighting::NoSubject | Sighting::Unreadable(_) => return (None, Sided::default()),
        };
        let key = format!("{}/{}", event.provider, read.id);
        let scores = read.scores.clone();
        let prior = self.states.get(&key);
        let empty = SubjectState::default();
        let decided = decide::decide_rendering(
            self.rules,
            event,
            read,
            prior.unwrap_or(&empty),
            // Lookups are not replayed: a rule that reads one counts as an error.
            &crate::worker::enrich::Answers::default(),
            at_ms,
            Rendering::VerdictsOnly,
        );
        let subject = Subject {
            key: key.clone(),
            scores,
            previous: prior.map(|p| p.scores.clone()).unwrap_or_default(),
        };
        let mut evaluation = match decided {
            SubjectDecision::Stale(_) => return (Some(subject), Sided::default()),
            SubjectDecision::Evaluated(evaluation) => evaluation,
        };
        // The breakers, as the worker's store counts them: a firing past its rule's limit
        // trips it, and a tripped match starts no cooldown.
        for d in evaluation.rules.iter_mut() {
            let rule = &self.rules.rules[d.rule];
            let Some(limit) = rule.limit.filter(|_| d.verdict == Verdict::Acts) else {
                continue;
            };
            let breaker = self.breakers.entry(d.rule).or_default();
            if !breaker.tripped {
                let per = i64::try_from(limit.per.as_millis()).unwrap_or(i64::MAX);
                while breaker
                    .acted
                    .front()
                    .is_some_and(|&t| t <= at_ms.saturating_sub(per))
                {
                    breaker.acted.pop_front();
                }
                if (breaker.acted.len() as u64) < limit.actions {
                    breaker.acted.push_back(at_ms);
                    continue;
                }
                breaker.tripped = true;
                breaker.acted.clear();
            }
            d.verdict = Verdict::Tripped;
            match prior.and_then(|p| p.fired_ms.get(&rule.name)) {
                Some(&fired) => evaluation.next.fired_ms.insert(rule.name.clone(), fired),
                None => evaluation.next.fired_ms.remove(&rule.name),
            };
        }
        let rules = evaluation
            .rules
            .iter()
            .map(|d| {
                let rule = &self.rules.rules[d.rule];
                Marked {
                    rule: rule.name.clone(),
                    matched: d.verdict.matched(),
                    fires: d.verdict.fires(),
                    tripped: d.verdict == Verdict::Tripped,
                    error: matches!(d.verdict, Verdict::Error(_)),
                    actions: match d.verdict.fires() {
                        true => rule
                            .actions
                            .iter()
                            .map(|&a| self.rules.actions[a].name.clone())
                            .collect(),
                        false => Vec::new(),
                    },
                    enforced: d.verdict == Verdict::Acts,
                }
            })
            .collect();
        self.states.insert(key, evaluation.next);
        (
            Some(subject),
            Sided {
                evaluated: true,
                rules,
            },
        )
    }
}

/// Who an event is about, as the candidate reads it.
struct Subject {
    key: String,
    scores: BTreeMap<String, f64>,
    previous: BTreeMap<String, f64>,
}

/// A recorded decision as a side of the comparison. A rule fired when it matched and was
/// neither cooling down nor tripped; the actions named are those that ran.
fn recorded(outcome: &str, record: &str) -> Sided {
    let evaluated = !matches!(outcome, "stale" | "no_subject" | "duplicate");
    Sided {
        evaluated,
        rules: decide::recorded_rules(record)
            .into_iter()
            .map(|r| {
                let fires = r.fired();
                Marked {
                    enforced: fires && r.mode != Mode::Shadow.as_str(),
                    matched: r.matched,
                    fires,
                    tripped: r.tripped,
                    error: r.error.is_some(),
                    actions: r.actions.into_iter().map(|a| a.action).collect(),
                    rule: r.rule,
                }
            })
            .collect(),
    }
}

/// Counts of one rule on one side, over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RuleCounts {
    /// Events its `events` patterns took.
    pub evaluated: u64,
    /// Events its condition held for (cooling down included).
    pub matched: u64,
    /// Events it fired for: its actions ran or would have.
    pub would_act: u64,
    /// Events it would have acted on but for its tripped breaker.
    pub tripped: u64,
    /// Events its condition could not be evaluated for.
    pub errors: u64,
}

/// One rule's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct RuleLine {
    /// Its name.
    pub rule: String,
    /// Its mode in the candidate; `None` when only the baseline has it.
    pub mode: Option<&'static str>,
    /// The baseline's counts.
    pub baseline: RuleCounts,
    /// The candidate's counts.
    pub candidate: RuleCounts,
    /// Events it fires for in the candidate and not in the baseline.
    pub new: u64,
    /// Events it fired for in the baseline and not in the candidate.
    pub gone: u64,
}

/// How often one action runs (enforce) or would (shadow), on each side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ActionCounts {
    /// Baseline: runs by enforcing rules (recorded: the attempts the records list).
    pub baseline_runs: u64,
    /// Candidate: runs by enforcing rules.
    pub candidate_runs: u64,
    /// Candidate: firings of shadow rules that name it.
    pub candidate_shadow: u64,
}

/// A rule whose firing differs on one event.
#[derive(Debug, Clone, Serialize)]
pub struct RuleChange {
    /// The rule.
    pub rule: String,
    /// Whether it fired in the baseline.
    pub baseline: bool,
    /// Whether it fires in the candidate.
    pub candidate: bool,
}

/// A subject whose actions change: its first event where they do, and the values that decided.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// `provider/subject`.
    pub subject: String,
    /// The event.
    pub event_id: String,
    /// When it was received.
    pub received_at: Option<String>,
    /// The rules whose firing differs.
    pub rules: Vec<RuleChange>,
    /// The event's scores.
    pub score: BTreeMap<String, f64>,
    /// The subject's scores before it, as the candidate replayed them.
    pub previous: BTreeMap<String, f64>,
}

/// What a backtest found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Events replayed (the window's and those before it).
    pub replayed: u64,
    /// Events inside the window.
    pub compared: u64,
    /// Events in the window with no decision record to compare with (pruned, or never
    /// recorded); counted for the candidate, left out of `new` and `gone`.
    pub unrecorded: u64,
    /// Events in the window the candidate evaluated no rule for (no subject, stale).
    pub not_evaluated: u64,
    /// Archived bodies that are no longer JSON (skipped).
    pub unreadable: u64,
    /// Subjects the candidate replay saw.
    pub subjects: u64,
    /// Per rule, in the candidate's file order, then the baseline's other rules.
    pub rules: Vec<RuleLine>,
    /// Per action name.
    pub actions: BTreeMap<String, ActionCounts>,
    /// Subjects whose actions change.
    pub changed_subjects: u64,
    /// The first of them ([`CHANGES_LISTED`] unless [`Backtest::list`] says otherwise).
    pub changes: Vec<Change>,
}

/// What the candidate is compared with.
pub enum Baseline<'r> {
    /// The decisions the worker recorded.
    Recorded,
    /// Other rules, replayed the same way.
    Rules(Replay<'r>),
}

/// A backtest in progress.
pub struct Backtest<'r> {
    candidate: Replay<'r>,
    baseline: Baseline<'r>,
    window: Window,
    report: Report,
    line_of: HashMap<String, usize>,
    changed: HashSet<String>,
    listed: usize,
}

impl<'r> Backtest<'r> {
    /// A backtest of `candidate` against `baseline` over `window`.
    pub fn new(candidate: &'r Rules, baseline: Baseline<'r>, window: Window) -> Self {
        let mut test = Self {
            candidate: Replay::new(candidate),
            baseline,
            window,
            report: Report::default(),
            line_of: HashMap::new(),
            changed: HashSet::new(),
            listed: CHANGES_LISTED,
        };
        for rule in &candidate.rules {
            test.line(&rule.name).mode = Some(rule.mode.as_str());
        }
        test
    }

    /// Lists the first `n` subjects whose actions change.
    pub fn list(mut self, n: usize) -> Self {
        self.listed = n;
        self
    }

    /// The report line of `rule`, added on first sight.
    fn line(&mut self, rule: &str) -> &mut RuleLine {
        let index = match self.line_of.get(rule) {
            Some(&i) => i,
            None => {
                self.report.rules.push(RuleLine {
                    rule: rule.to_owned(),
                    mode: None,
                    baseline: RuleCounts::default(),
                    candidate: RuleCounts::default(),
                    new: 0,
                    gone: 0,
                });
                self.line_of
                    .insert(rule.to_owned(), self.report.rules.len() - 1);
                self.report.rules.len() - 1
            }
        };
        &mut self.report.rules[index]
    }

    /// Replays one archived event (they come in delivery order).
    pub fn feed(&mut self, replayed: Replayed) {
        self.report.replayed += 1;
        let archived = replayed.event;
        let json = match serde_json::from_str(&archived.body) {
            Ok(json) => json,
            Err(_) => {
                self.report.unreadable += 1;
                return;
            }
        };
        let event = Event {
            key: archived.event_key,
            provider: archived.provider,
            id: archived.event_id,
            event_type: archived.event_type,
            json,
        };
        let at = archived.received_ms;
        let (subject, candidate) = self.candidate.decide(&event, at);
        let baseline = match &mut self.baseline {
            Baseline::Rules(replay) => Some(replay.decide(&event, at).1),
            Baseline::Recorded => None,
        };
        if !self.window.contains(at) {
            return;
        }
        self.report.compared += 1;
        let baseline = match baseline {
            Some(sided) => Some(sided),
            None => replayed
                .recorded
                .map(|(outcome, record)| recorded(&outcome, &record)),
        };
        if !candidate.evaluated {
            self.report.not_evaluated += 1;
        }
        self.count(&candidate, false);
        let Some(baseline) = baseline else {
            self.report.unrecorded += 1;
            return;
        };
        self.count(&baseline, true);
        let mut changes = Vec::new();
        for m in candidate.rules.iter().filter(|m| m.fires) {
            if !baseline.fires(&m.rule) {
                self.line(&m.rule).new += 1;
                changes.push(RuleChange {
                    rule: m.rule.clone(),
                    baseline: false,
                    candidate: true,
                });
            }
        }
        for m in baseline.rules.iter().filter(|m| m.fires) {
            if !candidate.fires(&m.rule) {
                self.line(&m.rule).gone += 1;
                changes.push(RuleChange {
                    rule: m.rule.clone(),
                    baseline: true,
                    candidate: false,
                });
            }
        }
        if changes.is_empty() {
            return;
        }
        let subject = subject.unwrap_or_else(|| Subject {
            key: archived.subject_key.unwrap_or_default(),
            scores: BTreeMap::new(),
            previous: BTreeMap::new(),
        });
        if self.changed.insert(subject.key.clone()) && self.report.changes.len() < self.listed {
            self.report.changes.push(Change {
                subject: subject.key,
                event_id: event.id,
                received_at: rfc3339_ms(at),
                rules: changes,
                score: subject.scores,
                previous: subject.previous,
            });
        }
    }

    /// Adds one side's verdicts on an event to the counts.
    fn count(&mut self, sided: &Sided, baseline: bool) {
        for m in &sided.rules {
            let line = self.line(&m.rule);
            let counts = match baseline {
                true => &mut line.baseline,
                false => &mut line.candidate,
            };
            counts.evaluated += 1;
            counts.matched += u64::from(m.matched);
            counts.would_act += u64::from(m.fires);
            counts.tripped += u64::from(m.tripped);
            counts.errors += u64::from(m.error);
            for action in &m.actions {
                let counts = self.report.actions.entry(action.clone()).or_default();
                match (baseline, m.enforced) {
                    (true, true) => counts.baseline_runs += 1,
                    (true, false) => {}
                    (false, true) => counts.candidate_runs += 1,
                    (false, false) => counts.candidate_shadow += 1,
                }
            }
        }
    }

    /// The report, once every event was fed.
    pub fn finish(mut self) -> Report {
        self.report.subjects = u64::try_from(self.candidate.subjects()).unwrap_or(u64::MAX);
        self.report.changed_subjects = u64::try_from(self.changed.len()).unwrap_or(u64::MAX);
        self.report
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::worker::config::WorkerConfig;
    use crate::worker::state::ArchivedEvent;

    /// A crossing rule at `threshold`, with a cooldown of an hour.
    fn rules(threshold: u32) -> Rules {
        let text = format!(
            r#"
[[subjects]]
provider = "dregs"
types = ["identity.*"]
subject = "/data/id"
scores = {{ humanity = "/data/humanity" }}

[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < {threshold}.0 && (!has(previous.score.humanity) || previous.score.humanity >= {threshold}.0)"
actions = ["note"]
cooldown = "1h"

[actions.note]
kind = "log"
message = "{{{{ subject }}}}"
"#
        );
        match WorkerConfig::parse("rules.toml", &text, &HashMap::new()) {
            Ok(config) => config.rules,
            Err(err) => panic!("{err}"),
        }
    }

    const MINUTE: i64 = 60_000;

    /// Event `n` about `subject` with `humanity`, received `n` minutes in, with `recorded`.
    fn event(n: i64, subject: &str, humanity: u32, recorded: Option<&str>) -> Replayed {
        Replayed {
            seq: n,
            event: ArchivedEvent {
                event_key: format!("dregs/e{n}"),
                provider: "dregs".into(),
                event_type: "identity.scored".into(),
                event_id: format!("e{n}"),
                subject_key: Some(format!("dregs/{subject}")),
                version: None,
                received_ms: n * MINUTE,
                body: format!(r#"{{"data":{{"id":"{subject}","humanity":{humanity}}}}}"#),
            },
            recorded: recorded.map(|r| ("no_match".to_owned(), r.to_owned())),
        }
    }

    fn run(test: Backtest<'_>, events: Vec<Replayed>) -> Report {
        let mut test = test;
        for e in events {
            test.feed(e);
        }
        test.finish()
    }

    #[test]
    fn state_before_the_window_decides_crossings_inside_it() {
        let (candidate, baseline) = (rules(40), rules(30));
        let window = Window {
            from_ms: Some(2 * MINUTE),
            to_ms: None,
        };
        let test = Backtest::new(&candidate, Baseline::Rules(Replay::new(&baseline)), window);
        let report = run(
            test,
            vec![
                // Before the window: u1 falls to 35 (the candidate fires, out of sight), u2 is
                // seen at 90.
                event(0, "u1", 35, None),
                event(1, "u2", 90, None),
                // Inside: u1 falls on to 25, a crossing for the baseline only; u2 falls to 35,
                // a crossing for the candidate only; u3 is first seen at 20: both fire.
                event(2, "u1", 25, None),
                event(3, "u2", 35, None),
                event(4, "u3", 20, None),
            ],
        );
        assert_eq!((report.replayed, report.compared), (5, 3));
        let line = &report.rules[0];
        assert_eq!(line.rule, "quarantine");
        assert_eq!((line.baseline.would_act, line.candidate.would_act), (2, 2));
        assert_eq!((line.new, line.gone), (1, 1));
        assert_eq!(report.changed_subjects, 2);
        let changes: Vec<(&str, bool, bool)> = report
            .changes
            .iter()
            .map(|c| {
                (
                    c.subject.as_str(),
                    c.rules[0].baseline,
                    c.rules[0].candidate,
                )
            })
            .collect();
        assert_eq!(
            changes,
            [("dregs/u1", true, false), ("dregs/u2", false, true)]
        );
        // The values that decided: the event's score and the one before it.
        assert_eq!(report.changes[0].score["humanity"], 25.0);
        assert_eq!(report.changes[0].previous["humanity"], 35.0);
        assert_eq!(report.actions["note"].candidate_runs, 2);
        assert_eq!(report.subjects, 3);
    }

    #[test]
    fn recorded_decisions_are_the_baseline_where_they_are_kept() {
        let candidate = rules(30);
        let fired = r#"{"rules":[{"rule":"quarantine","mode":"enforce","matched":true,
            "actions":[{"action":"note","outcome":"succeeded"}]}]}"#;
        let tripped =
            r#"{"rules":[{"rule":"quarantine","mode":"enforce","matched":true,"tripped":true}]}"#;
        let test = Backtest::new(&candidate, Baseline::Recorded, Window::default());
        let report = run(
            test,
            vec![
                // Recorded as acting, and the candidate agrees.
                event(0, "u1", 10, Some(fired)),
                // Recorded as tripped (not acting): the candidate, with no breaker, acts.
                event(1, "u2", 10, Some(tripped)),
                // No record kept: counted for the candidate, not compared.
                event(2, "u3", 10, None),
                // Cooling down after 30 minutes: matched, not acting, as recorded.
                event(
                    30,
                    "u1",
                    90,
                    Some(r#"{"rules":[{"rule":"quarantine","matched":false}]}"#),
                ),
                event(
                    31,
                    "u1",
                    10,
                    Some(r#"{"rules":[{"rule":"quarantine","matched":true,"cooldown":true}]}"#),
                ),
            ],
        );
        let line = &report.rules[0];
        assert_eq!(report.unrecorded, 1);
        assert_eq!((line.candidate.matched, line.candidate.would_act), (4, 3));
        assert_eq!((line.baseline.matched, line.baseline.would_act), (3, 1));
        assert_eq!((line.new, line.gone), (1, 0));
        assert_eq!(report.changes.len(), 1);
        assert_eq!(report.changes[0].subject, "dregs/u2");
        assert_eq!(report.actions["note"].baseline_runs, 1);
    }

    #[test]
    fn a_candidate_s_breaker_trips_in_the_replay_as_it_would_in_the_worker() {
        let text = r#"
[[subjects]]
provider = "dregs"
types = ["identity.*"]
subject = "/data/id"
scores = { humanity = "/data/humanity" }

[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0"
actions = ["note"]
cooldown = "1h"
limit = { actions = 2, per = "10m" }

[actions.note]
kind = "log"
message = "{{ subject }}"
"#;
        let candidate = match WorkerConfig::parse("rules.toml", text, &HashMap::new()) {
            Ok(config) => config.rules,
            Err(err) => panic!("{err}"),
        };
        let test = Backtest::new(&candidate, Baseline::Recorded, Window::default());
        // Four subjects fall within minutes: two act, the third trips the rule, the fourth
        // finds it tripped; twenty minutes on, u3 again: still tripped (no reset in a replay),
        // and not cooling down, since its tripped match started no cooldown.
        let report = run(
            test,
            vec![
                event(0, "u1", 10, None),
                event(1, "u2", 10, None),
                event(2, "u3", 10, None),
                event(3, "u4", 10, None),
                event(23, "u3", 10, None),
            ],
        );
        let line = &report.rules[0];
        assert_eq!((line.candidate.would_act, line.candidate.tripped), (2, 3));
        assert_eq!(line.candidate.matched, 5);
        assert_eq!(report.actions["note"].candidate_runs, 2);
    }

    #[test]
    fn a_body_that_is_not_json_is_counted_and_skipped() {
        let candidate = rules(30);
        let mut broken = event(0, "u1", 10, None);
        broken.event.body = "{".into();
        let report = run(
            Backtest::new(&candidate, Baseline::Recorded, Window::default()),
            vec![broken],
        );
        assert_eq!(
            (report.replayed, report.unreadable, report.compared),
            (1, 1, 0)
        );
    }
}
