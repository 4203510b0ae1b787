//! One batch of deliveries: read each, skip what was decided before, group by subject, handle
//! each subject's events in delivery order (subjects concurrently: their lookups, decisions
//! and actions), and say for each delivery whether it is acked as handled or dead-lettered,
//! with the state to commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::future::join_all;
use lapin::BasicProperties;
use lapin::types::AMQPValue;
use serde_json::Value;
use tracing::Instrument as _;

use crate::envelope::HEADER_PROVIDER;
use crate::telemetry::WorkerMetrics;
use crate::telemetry::trace::{self, Parent, TRACEPARENT, TRACESTATE, TraceContext};
use crate::worker::action::{self, ActionOutcome, ActionResult, Runner, idempotency_key};
use crate::worker::config::WorkerConfig;
use crate::worker::decide::{self, Event, EventOutcome, Sighting, SubjectDecision, Verdict};
use crate::worker::enrich::{self, Answers};
use crate::worker::rules::{Mode, Rules};
use crate::worker::state::{
    Admission, ArchivedEvent, Batch, DecisionRecord, Store, StoreError, SubjectLock, SubjectState,
    now_ms,
};
use crate::worker::subject::SubjectRead;

/// A delivery as the batch sees it.
#[derive(Debug, Clone)]
pub struct Item {
    /// The raw body.
    pub data: Vec<u8>,
    /// AMQP properties (message id, type, headers).
    pub properties: BasicProperties,
    /// Routing key it arrived with.
    pub routing_key: String,
}

/// What becomes of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Handled (acted, no match, stale, duplicate): ack.
    Handled,
    /// Publish to the dead-letter exchange with these reasons, then ack.
    DeadLetter {
        /// `x-hookwarden-error`.
        error: String,
        /// `x-hookwarden-rule`.
        rule: Option<String>,
        /// `x-hookwarden-action`.
        action: Option<String>,
        /// The subject, when the event was read that far (for the log line).
        subject: Option<String>,
    },
}

impl Fate {
    /// A delivery that cannot be decided at all: dead-lettered with why.
    fn unreadable(reason: &dyn std::fmt::Display) -> Self {
        Self::DeadLetter {
            error: reason.to_string(),
            rule: None,
            action: None,
            subject: None,
        }
    }
}

impl Fate {
    /// Why the event was dead-lettered, for its decision record (the web view's dead-letter
    /// page reads it); `null` when it was not.
    fn record(&self) -> Value {
        match self {
            Self::Handled => Value::Null,
            Self::DeadLetter {
                error,
                rule,
                action,
                subject: _,
            } => serde_json::json!({"reason": error, "rule": rule, "action": action}),
        }
    }
}

/// The result of handling a batch.
#[derive(Debug, Default)]
pub struct Outcome {
    /// One per item, in order.
    pub fates: Vec<Fate>,
    /// State and decisions to commit before acking.
    pub commit: Batch,
    /// The batch's subjects, locked until its commit is done.
    pub lock: SubjectLock,
}

fn text_header(props: &BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

impl Item {
    /// The event id (the message id), if it has one.
    pub fn event_id(&self) -> Option<String> {
        self.properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty())
    }

    /// The trace the listener handed on (`traceparent`, `tracestate`), if any.
    pub fn trace(&self) -> Option<TraceContext> {
        TraceContext::from_headers(
            text_header(&self.properties, TRACEPARENT).as_deref(),
            text_header(&self.properties, TRACESTATE).as_deref(),
        )
    }

    /// The provider (the `x-provider` header, else the routing key's first part).
    pub fn provider(&self) -> Option<String> {
        text_header(&self.properties, HEADER_PROVIDER)
            .or_else(|| self.routing_key.split_once('.').map(|(p, _)| p.to_owned()))
    }
}

/// Why a delivery is not an event; it dead-letters with this reason.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    /// No message id, which is the event id.
    #[error("message has no message_id (event id)")]
    NoEventId,
    /// Neither an `x-provider` header nor a routing key naming one.
    #[error("message has no x-provider header")]
    NoProvider,
    /// The body does not parse.
    #[error("body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The event id or provider contains a NUL character, which no store keeps in a key.
    #[error("message id or provider contains a NUL character")]
    Nul,
}

/// Reads a delivery as an event.
///
/// # Errors
/// Why it is unreadable: no message id, no provider, or a body that is not JSON.
pub fn read_item(item: &Item) -> Result<Event, Unreadable> {
    let id = item.event_id().ok_or(Unreadable::NoEventId)?;
    let provider = item.provider().ok_or(Unreadable::NoProvider)?;
    if id.contains('\0') || provider.contains('\0') {
        return Err(Unreadable::Nul);
    }
    let event_type = item
        .properties
        .kind()
        .as_ref()
        .map(|s| s.to_string())
        .or_else(|| item.routing_key.split_once('.').map(|(_, t)| t.to_owned()))
        .unwrap_or_default();
    let json: Value = serde_json::from_slice(&item.data).map_err(Unreadable::NotJson)?;
    Ok(Event {
        key: format!("{provider}/{id}"),
        provider,
        id,
        event_type,
        json,
    })
}

/// Shared pieces a batch needs.
pub struct Context {
    /// The rules in force for this batch (a reload swaps it between batches).
    pub config: Arc<WorkerConfig>,
    /// Action runner.
    pub runner: Arc<Runner>,
    /// The state store (decisions, done-marks, subjects).
    pub store: Arc<dyn Store>,
    /// Metrics.
    pub metrics: Arc<WorkerMetrics>,
    /// What the silence watches count: the events decided.
    pub seen: Arc<crate::worker::watch::Seen>,
}

struct Pending {
    index: usize,
    event: Event,
    subject: SubjectRead,
}

/// One delivery read: its index, and its event with who it is about, or why it is unreadable.
type Entry = (usize, Result<(Event, Sighting), Unreadable>);

/// A batch read: each delivery as an event with who it is about, or why it is unreadable.
pub struct Read {
    entries: Vec<Entry>,
}

impl Read {
    /// Reads `items` as `rules` say (each body parsed once, here).
    pub fn new(rules: &Rules, items: &[Item]) -> Self {
        let entries = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let read = read_item(item).map(|event| {
                    let sighting = decide::sight(rules, &event);
                    (event, sighting)
                });
                (i, read)
            })
            .collect();
        Self { entries }
    }

    /// What the batch touches that another batch in flight must not touch at the same time,
    /// hashed: its subjects' keys and its events' keys.
    pub fn keys(&self) -> Vec<u64> {
        use std::hash::BuildHasher as _;
        // One fixed hasher for every batch, so equal keys hash alike.
        static HASHER: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        let hasher = HASHER.get_or_init(Default::default);
        let mut keys = Vec::with_capacity(self.entries.len() * 2);
        for (_, read) in &self.entries {
            if let Ok((event, sighting)) = read {
                keys.push(hasher.hash_one(("event", &event.key)));
                if let Sighting::Subject(subject) = sighting {
                    keys.push(hasher.hash_one(("subject", &event.provider, &subject.id)));
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

/// Handles `items`, read as `read` ([`Read::new`] with the same rules as `ctx`'s).
///
/// # Errors
/// The store failed; nothing is acked.
pub async fn handle(ctx: &Context, items: &[Item], read: Read) -> Result<Outcome, StoreError> {
    let mut outcome = Outcome {
        fates: vec![Fate::Handled; items.len()],
        commit: Batch::default(),
        lock: SubjectLock::none(),
    };
    let mut sighted: Vec<(usize, Event, Sighting)> = Vec::new();
    for (i, read) in read.entries {
        match read {
            Ok((event, sighting)) => sighted.push((i, event, sighting)),
            Err(reason) => {
                ctx.metrics.event(EventOutcome::DeadLettered.as_str());
                outcome.fates[i] = Fate::unreadable(&reason);
            }
        }
    }
    let rules = &ctx.config.rules;
    let archiving = ctx.config.archive.enabled;
    let mut archive: Vec<(usize, ArchivedEvent)> = Vec::new();
    // Who each event is about comes first: the batch's subjects are locked before anything is
    // read, so what it reads next (decided events, completed actions, subject state) is what
    // the last batch to hold them committed, in this worker or another one on the same store.
    let mut locked: Vec<String> = sighted
        .iter()
        .filter_map(|(_, event, sighting)| match sighting {
            Sighting::Subject(subject) => Some(subject_key(event, subject)),
            _ => None,
        })
        .collect();
    locked.sort_unstable();
    locked.dedup();
    let keys: Vec<String> = sighted.iter().map(|(_, e, _)| e.key.clone()).collect();
    let candidates = action_keys(rules, sighted.iter().map(|(_, e, _)| e));
    // One trip to the store for the whole batch: which events were decided before, and which
    // of the actions the rules could run have completed before (a replay or redelivery).
    let store = ctx.store.clone();
    let limited = rules.rules.iter().any(|r| r.limit.is_some());
    let (lock, decided, done, trips) = tokio::task::spawn_blocking(move || {
        let lock = store.lock_subjects(&locked)?;
        // Which breakers have tripped, here or in another worker (or been reset since).
        let trips = match limited {
            true => store.trips()?.into_iter().map(|t| t.rule).collect(),
            false => HashSet::new(),
        };
        Ok::<_, StoreError>((
            lock,
            store.decided(&keys)?,
            store.done_among(&candidates)?,
            trips,
        ))
    })
    .await
    .map_err(|_| StoreError::Poisoned)??;
    outcome.lock = lock;
    for rule in rules.rules.iter().filter(|r| r.limit.is_some()) {
        ctx.metrics
            .rule_tripped(&rule.name, trips.contains(&rule.name));
    }
    let breakers = Breakers {
        tripped: std::sync::Mutex::new(trips),
    };
    // The time of the decisions: after the lock, which may have waited for another worker's
    // batch, so that records and cooldowns follow the order in which subjects were decided.
    let now = now_ms();

    // Group by subject, keeping delivery order inside each group.
    let mut groups: Vec<(String, Vec<Pending>)> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for (i, event, sighting) in sighted {
        if decided.contains(&event.key) {
            ctx.metrics.event(EventOutcome::Duplicate.as_str());
            continue;
        }
        if !matches!(sighting, Sighting::Unreadable(_)) {
            ctx.seen
                .note(rules, &event.provider, &event.event_type, now);
        }
        match sighting {
            Sighting::NoSubject => {
                ctx.metrics.event(EventOutcome::NoSubject.as_str());
                outcome.commit.decisions.push(DecisionRecord {
                    event_key: event.key.clone(),
                    subject_key: None,
                    outcome: EventOutcome::NoSubject.as_str().to_owned(),
                    record: serde_json::json!({"provider": event.provider, "type": event.event_type, "event_id": event.id}),
                    at_ms: now,
                });
                if archiving {
                    archive.push((i, archived(&items[i], &event, None, now)));
                }
            }
            Sighting::Subject(subject) => {
                let key = subject_key(&event, &subject);
                let g = *group_of.entry(key.clone()).or_insert_with(|| {
                    groups.push((key, Vec::new()));
                    groups.len() - 1
                });
                groups[g].1.push(Pending {
                    index: i,
                    event,
                    subject,
                });
            }
            Sighting::Unreadable(reason) => {
                ctx.metrics.event(EventOutcome::DeadLettered.as_str());
                outcome.fates[i] = Fate::unreadable(&reason);
            }
        }
    }

    let subject_keys: Vec<String> = groups.iter().map(|(k, _)| k.clone()).collect();
    let store = ctx.store.clone();
    let mut states = tokio::task::spawn_blocking(move || store.load_subjects(&subject_keys))
        .await
        .map_err(|_| StoreError::Poisoned)??;

    let handled = join_all(groups.into_iter().map(|(key, pending)| {
        let prior = states.remove(&key).unwrap_or_default();
        handle_subject(ctx, items, key, pending, prior, now, &done, &breakers)
    }))
    .await;
    for handled in handled {
        let (key, state, results) = handled?;
        if let Some(state) = state {
            outcome.commit.subjects.insert(key.clone(), state);
        }
        for (index, fate, decision, archived) in results {
            if let Some(archived) = archived {
                archive.push((index, archived));
            }
            outcome.fates[index] = fate;
            outcome.commit.decisions.push(decision);
        }
    }
    // In delivery order, whatever order the subjects finished in.
    archive.sort_by_key(|(index, _)| *index);
    outcome.commit.archive = archive.into_iter().map(|(_, a)| a).collect();
    Ok(outcome)
}

/// An event as the archive keeps it. Its receive time is the message's `timestamp` (whole
/// seconds, set by the listener), or the decision's time for a message without one.
fn archived(
    item: &Item,
    event: &Event,
    subject: Option<(&str, Option<i64>)>,
    now: i64,
) -> ArchivedEvent {
    let received_ms = item
        .properties
        .timestamp()
        .filter(|&secs| secs > 0)
        .and_then(|secs| i64::try_from(secs).ok())
        .map_or(now, |secs| secs.saturating_mul(1000));
    ArchivedEvent {
        event_key: event.key.clone(),
        provider: event.provider.clone(),
        event_type: event.event_type.clone(),
        event_id: event.id.clone(),
        subject_key: subject.map(|(key, _)| key.to_owned()),
        version: subject.and_then(|(_, version)| version),
        received_ms,
        // The body parsed as JSON, so it is UTF-8.
        body: String::from_utf8_lossy(&item.data).into_owned(),
    }
}

/// One delivery's index, fate, decision record, and the event to archive.
type Decided = (usize, Fate, DecisionRecord, Option<ArchivedEvent>);

type Handled = (String, Option<SubjectState>, Vec<Decided>);

/// The rules whose breakers have tripped, as this batch knows them: read from the store at
/// its start, added to as its own firings trip them.
struct Breakers {
    tripped: std::sync::Mutex<HashSet<String>>,
}

impl Breakers {
    fn is_tripped(&self, rule: &str) -> bool {
        self.tripped
            .lock()
            .map(|t| t.contains(rule))
            .unwrap_or(true)
    }

    fn trip(&self, rule: &str) {
        if let Ok(mut t) = self.tripped.lock() {
            t.insert(rule.to_owned());
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle_subject(
    ctx: &Context,
    items: &[Item],
    key: String,
    pending: Vec<Pending>,
    mut state: SubjectState,
    now: i64,
    done: &HashSet<String>,
    breakers: &Breakers,
) -> Result<Handled, StoreError> {
    let rules = &ctx.config.rules;
    let mut changed = false;
    let mut seen = HashSet::new();
    let mut results = Vec::new();
    for Pending {
        index,
        event,
        subject,
    } in pending
    {
        if !seen.insert(event.key.clone()) {
            // The same event twice in one batch: the second is a duplicate.
            ctx.metrics.event(EventOutcome::Duplicate.as_str());
            continue;
        }
        let mut record = serde_json::json!({
            "provider": event.provider, "type": event.event_type, "event_id": event.id,
            "subject": subject.id, "score": subject.scores,
            // What the rules read as `previous.score`: the web view shows it beside `score`.
            "previous_score": state.scores,
        });
        let archived = ctx.config.archive.enabled.then(|| {
            archived(
                &items[index],
                &event,
                Some((key.as_str(), subject.version)),
                now,
            )
        });
        let span = delivery_span(&event, &subject.id);
        let trace = trace::enter(&span, Parent::Remote(items[index].trace().as_ref()));
        let answers = lookups(ctx, &event, &subject, &state, &trace)
            .instrument(span.clone())
            .await;
        if !answers.is_empty() {
            record["enrich"] = answers.record();
        }
        if let Some((_, error)) = answers.dead_letter() {
            // Nothing of the event is decided: its replay, once the lookup's service is
            // back, decides it as if for the first time.
            ctx.metrics.event(EventOutcome::DeadLettered.as_str());
            let fate = Fate::DeadLetter {
                error,
                rule: None,
                action: None,
                subject: Some(subject.id.clone()),
            };
            record["dead_letter"] = fate.record();
            let record = decision(&event, &key, EventOutcome::DeadLettered, record, now);
            results.push((index, fate, record, archived));
            continue;
        }
        let decided =
            span.in_scope(|| decide::decide_for(rules, &event, subject, &state, &answers, now));
        let mut evaluation = match decided {
            SubjectDecision::Evaluated(evaluation) => evaluation,
            SubjectDecision::Stale(_) => {
                ctx.metrics.event(EventOutcome::Stale.as_str());
                record["stale"] = Value::from(true);
                results.push((
                    index,
                    Fate::Handled,
                    decision(&event, &key, EventOutcome::Stale, record, now),
                    archived,
                ));
                continue;
            }
        };
        let trips = admit(
            ctx,
            breakers,
            &mut evaluation,
            Admitting {
                event: &event,
                subject_key: &key,
                prior: &state,
                answers: &answers,
            },
            now,
            done,
            &trace,
        )
        .instrument(span.clone())
        .await?;
        let CarriedOut {
            mut rules_json,
            failure,
            acted,
            completed,
        } = carry_out(ctx, &evaluation, done, &trace)
            .instrument(span)
            .await;
        for (position, results) in trips {
            if let Some(Value::Object(entry)) = rules_json.get_mut(position) {
                entry.insert("on_trip".to_owned(), Value::from(results));
            }
        }
        record["rules"] = Value::from(rules_json);
        let outcome = evaluation.outcome(acted, failure.is_some());
        ctx.metrics.event(outcome.as_str());
        match failure {
            Some(fate) => {
                record["dead_letter"] = fate.record();
                // State stays as it was: replaying the dead letter must see the same past. But
                // the rules whose actions all ran (beside the one that failed) fired: their
                // cooldowns start, or the subject's next event would fire them again.
                for rule in completed {
                    if let Some(&at) = evaluation.next.fired_ms.get(&rule) {
                        state.fired_ms.insert(rule, at);
                        changed = true;
                    }
                }
                results.push((
                    index,
                    fate,
                    decision(&event, &key, outcome, record, now),
                    archived,
                ));
            }
            None => {
                state = evaluation.next;
                changed = true;
                results.push((
                    index,
                    Fate::Handled,
                    decision(&event, &key, outcome, record, now),
                    archived,
                ));
            }
        }
    }
    Ok((key, changed.then_some(state), results))
}

/// Puts each enforcing rule with a limit that would act on `evaluation` past its breaker:
/// granted, it acts; over the limit (now, or tripped before), its verdict becomes
/// [`Verdict::Tripped`], and the subject's state keeps the rule's last firing as it was (a
/// match that did not act starts no cooldown). A firing that trips the rule runs its `on_trip`
/// actions; their results come back by the rule's position in `evaluation.rules`, for the
/// decision record. A redelivered firing whose actions all completed before is not counted
/// again.
async fn admit(
    ctx: &Context,
    breakers: &Breakers,
    evaluation: &mut decide::Evaluation,
    admitting: Admitting<'_>,
    now: i64,
    done: &HashSet<String>,
    trace: &TraceContext,
) -> Result<Vec<(usize, Vec<Value>)>, StoreError> {
    let Admitting {
        event,
        subject_key,
        prior,
        answers,
    } = admitting;
    let rules = &ctx.config.rules;
    let mut trips = Vec::new();
    let mut held = Vec::new();
    for (position, decided) in evaluation.rules.iter_mut().enumerate() {
        let rule = &rules.rules[decided.rule];
        let Some(limit) = rule.limit.filter(|_| decided.verdict == Verdict::Acts) else {
            continue;
        };
        if !decided.actions.is_empty() && decided.actions.iter().all(|a| done.contains(&a.key)) {
            // Acted on this event before (a redelivery, a replay): counted then.
            continue;
        }
        if breakers.is_tripped(&rule.name) {
            decided.verdict = Verdict::Tripped;
            held.push(rule.name.clone());
            continue;
        }
        let (store, name, subject) = (ctx.store.clone(), rule.name.clone(), subject_key.to_owned());
        let admission =
            tokio::task::spawn_blocking(move || store.admit(&name, &subject, now, &limit))
                .await
                .map_err(|_| StoreError::Poisoned)??;
        let trip = match admission {
            Admission::Granted => continue,
            Admission::Tripped(trip) => trip,
        };
        decided.verdict = Verdict::Tripped;
        held.push(rule.name.clone());
        breakers.trip(&rule.name);
        ctx.metrics.rule_tripped(&rule.name, true);
        let Some(trip) = trip else { continue };
        tracing::error!(
            rule = %rule.name,
            count = trip.count,
            per = %trip.per(),
            subjects = ?trip.subjects,
            "rule tripped its breaker: more than {} firings would have acted within {}; its \
             matches are recorded and not acted on until `hookwarden rules reset {}`",
            limit.actions,
            trip.per(),
            rule.name
        );
        let planned = decide::plan_trip(
            rules,
            decided.rule,
            event,
            &evaluation.subject,
            prior,
            answers,
            &trip,
        );
        let mut results = Vec::new();
        for action in &planned {
            let result = ctx
                .runner
                .run(
                    action,
                    &HashSet::new(),
                    Parent::Local(trace),
                    &rules.actions[action.index].pace,
                )
                .await;
            ctx.metrics
                .action(&result.action, result.outcome.as_str(), result.latency_ms);
            if result.outcome == ActionOutcome::Failed {
                tracing::error!(
                    rule = %rule.name,
                    action = %result.action,
                    error = result.error.as_deref().unwrap_or("failed"),
                    "on_trip action failed"
                );
            }
            results.push(result.to_json());
        }
        trips.push((position, results));
    }
    for rule in held {
        match prior.fired_ms.get(&rule) {
            Some(&at) => evaluation.next.fired_ms.insert(rule, at),
            None => evaluation.next.fired_ms.remove(&rule),
        };
    }
    Ok(trips)
}

/// The event a firing being admitted past its breaker belongs to.
struct Admitting<'a> {
    event: &'a Event,
    subject_key: &'a str,
    prior: &'a SubjectState,
    answers: &'a Answers,
}

/// Runs the lookups that the rules applying to `event` read, once each, unless the event is
/// stale (no rule is evaluated then).
async fn lookups(
    ctx: &Context,
    event: &Event,
    subject: &SubjectRead,
    prior: &SubjectState,
    trace: &TraceContext,
) -> Answers {
    let rules = &ctx.config.rules;
    let needed = rules.lookups_for(&event.provider, &event.event_type);
    if needed.is_empty() || decide::is_stale(prior, subject) {
        return Answers::default();
    }
    let requests = decide::with_facts(rules, event, subject, prior, &Default::default(), |facts| {
        enrich::requests(&rules.lookups, &rules.templates, &needed, facts)
    });
    let mut answers = enrich::answer(
        &rules.lookups,
        requests,
        &ctx.runner.http,
        &ctx.metrics,
        trace,
    )
    .await;
    // A lookup only shadow rules read never holds the event: shadow rules never act.
    for (name, failure) in &mut answers.failed {
        if !rules.enforced_reads(name, &event.provider, &event.event_type) {
            failure.on_error = enrich::OnError::SkipRule;
        }
    }
    answers
}

/// The key a subject's state and lock are stored under: `provider/subject`.
fn subject_key(event: &Event, subject: &SubjectRead) -> String {
    format!("{}/{}", event.provider, subject.id)
}

/// The span of one delivery's rules and actions: the lines logged inside it (a condition
/// that fails, a `log` action) carry its `provider`, `event_id`, `subject` and `trace_id`.
///
/// WARN, though it marks no warning: a span's level decides whether it exists at all, and
/// it must exist whenever a WARN line inside it can be written (`log.level = "warn"`).
fn delivery_span(event: &Event, subject: &str) -> tracing::Span {
    tracing::warn_span!(
        "delivery",
        provider = %event.provider,
        event_id = %event.id,
        subject = %subject,
        trace_id = tracing::field::Empty
    )
}

/// What carrying out an evaluation came to.
struct CarriedOut {
    /// Each evaluated rule's record entry, in rule order.
    rules_json: Vec<Value>,
    /// The dead-letter fate of the first failure, in rule order.
    failure: Option<Fate>,
    /// Whether an action ran (or had run before).
    acted: bool,
    /// The rules whose actions all ran (or had run before).
    completed: Vec<String>,
}

/// Runs the actions of `evaluation`'s enforcing rules: each rule's actions in order, stopping
/// at its first that fails, and the rules side by side, so that one rule's paced or slow action
/// holds none of the others'. Each acting rule is a `rule` span, a child of the delivery's
/// (`trace`), its actions' spans children of it.
async fn carry_out(
    ctx: &Context,
    evaluation: &decide::Evaluation,
    done: &HashSet<String>,
    trace: &TraceContext,
) -> CarriedOut {
    let rules = &ctx.config.rules;
    for decided in &evaluation.rules {
        let rule = &rules.rules[decided.rule];
        if decided.verdict.matched() {
            ctx.metrics.rule_matched(&rule.name, rule.mode.as_str());
        }
        if let Verdict::Error(error) = &decided.verdict {
            tracing::warn!(
                rule = %rule.name,
                %error,
                "condition failed to evaluate"
            );
        }
    }
    let acting = |d: &decide::RuleDecision| d.verdict == Verdict::Acts && !d.actions.is_empty();
    // Most events act on one rule or none: no futures to join for them.
    let mut ran: Vec<Vec<ActionResult>> =
        match evaluation.rules.iter().filter(|d| acting(d)).count() {
            0 => Vec::new(),
            _ => {
                join_all(evaluation.rules.iter().map(|decided| async move {
                    match acting(decided) {
                        true => run_rule(ctx, decided, done, trace).await,
                        false => Vec::new(),
                    }
                }))
                .await
            }
        };
    ran.resize_with(evaluation.rules.len(), Vec::new);
    let mut rules_json = Vec::new();
    let mut failure = None;
    let mut acted = false;
    let mut completed = Vec::new();
    for (decided, results) in evaluation.rules.iter().zip(ran) {
        let rule = &rules.rules[decided.rule];
        if !results.is_empty() && results.iter().all(|r| r.outcome != ActionOutcome::Failed) {
            completed.push(rule.name.clone());
        }
        let mut actions_json = Vec::new();
        for (result, planned) in results.into_iter().zip(&decided.actions) {
            if result.outcome == ActionOutcome::Failed {
                failure = failure.or_else(|| {
                    Some(Fate::DeadLetter {
                        error: result
                            .error
                            .clone()
                            .unwrap_or_else(|| "action failed".to_owned()),
                        rule: Some(rule.name.clone()),
                        action: Some(result.action.clone()),
                        subject: Some(evaluation.subject.id.clone()),
                    })
                });
            } else {
                acted = true;
            }
            let mut entry = result.to_json();
            if let Ok(request) = &planned.request {
                entry["request"] = action::masked(request.as_ref(), &rules.template_env);
            }
            actions_json.push(entry);
        }
        let mut entry = decided.record(rules, actions_json);
        if decided.verdict == Verdict::WouldAct {
            // What a shadow rule would have sent, for the analyst deciding whether to enforce it.
            let would: Vec<Value> = decided
                .actions
                .iter()
                .map(|planned| match &planned.request {
                    Ok(request) => serde_json::json!({
                        "action": planned.action,
                        "request": action::masked(request.as_ref(), &rules.template_env),
                    }),
                    // Enforced, it would fail (and dead-letter): the analyst should see it.
                    Err(error) => serde_json::json!({"action": planned.action, "error": error}),
                })
                .collect();
            if !would.is_empty() {
                entry["would_send"] = Value::from(would);
            }
        }
        rules_json.push(entry);
    }
    CarriedOut {
        rules_json,
        failure,
        acted,
        completed,
    }
}

/// Runs one acting rule's actions in order, up to and including the first that fails.
async fn run_rule(
    ctx: &Context,
    decided: &decide::RuleDecision,
    done: &HashSet<String>,
    trace: &TraceContext,
) -> Vec<ActionResult> {
    let rules = &ctx.config.rules;
    let rule = &rules.rules[decided.rule];
    let span = match trace::exporting() {
        true => tracing::info_span!(
            "rule",
            rule = %rule.name,
            trace_id = tracing::field::Empty
        ),
        false => tracing::Span::none(),
    };
    let rule_trace = trace::enter(&span, Parent::Local(trace));
    let mut results = Vec::new();
    for planned in &decided.actions {
        let result = ctx
            .runner
            .run(
                planned,
                done,
                Parent::Local(&rule_trace),
                &rules.actions[planned.index].pace,
            )
            .instrument(span.clone())
            .await;
        ctx.metrics
            .action(&result.action, result.outcome.as_str(), result.latency_ms);
        let failed = result.outcome == ActionOutcome::Failed;
        results.push(result);
        if failed {
            break;
        }
    }
    results
}

/// The idempotency keys of every action an enforcing rule could run for these events.
fn action_keys<'a>(rules: &Rules, events: impl Iterator<Item = &'a Event>) -> Vec<String> {
    let mut keys = Vec::new();
    for event in events {
        for rule in &rules.rules {
            if rule.mode != Mode::Enforce || !rule.applies(&event.provider, &event.event_type) {
                continue;
            }
            for &a in &rule.actions {
                keys.push(idempotency_key(
                    &event.key,
                    &rule.name,
                    &rules.actions[a].name,
                ));
            }
        }
    }
    keys
}

fn decision(
    event: &Event,
    subject_key: &str,
    outcome: EventOutcome,
    record: Value,
    at_ms: i64,
) -> DecisionRecord {
    DecisionRecord {
        event_key: event.key.clone(),
        subject_key: Some(subject_key.to_owned()),
        outcome: outcome.as_str().to_owned(),
        record,
        at_ms,
    }
}
