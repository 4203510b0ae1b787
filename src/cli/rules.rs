//! `hookwarden rules test`: a dry run of the worker's rules on one event file. The event is
//! read, decided and its actions rendered by the functions the worker itself uses
//! ([`crate::worker::decide`], which renders the actions too), so what is printed is what
//! the worker would do; nothing is sent, and no state is read or written: the subject's past
//! comes from `--previous` instead of the worker's store. The event's id and type are read
//! where the listener reads them (`--config`), since they key the worker's idempotency keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cli::sign;
use crate::config;
use crate::listener::config::ListenerConfig;
use crate::listener::extract::{self, ExtractError, FieldRef, parse_body};
use crate::scheme::Verified;
use crate::worker::config::WorkerConfig;
use crate::worker::decide::{self, Decision, Event, EventOutcome};
use crate::worker::enrich::{self, Answers, Failure, OnError};
use crate::worker::http::HttpRequest;
use crate::worker::state::{SubjectState, now_ms};
use crate::worker::subject::{self, SubjectRead};

/// `hookwarden rules …`.
#[derive(Subcommand)]
pub enum RulesCommand {
    /// Dry-run the rules on EVENT: per rule whether it matched and why, and for each action
    /// of a firing rule the exact request it would send. Sends nothing.
    #[command(
        after_help = "Example: hookwarden rules test --rules deploy/rules.toml \
--config listener.toml --provider dregs --previous previous.json \
examples/dregs-identity-scored.json

--previous is a JSON file standing in for what the worker remembers of the subject;
every key is optional:
  {\"score\": {\"humanity\": 74}, \"at\": \"2026-11-21T14:00:00Z\", \"version\": 1412,
   \"fired\": {\"quarantine-low-humanity\": \"2026-11-21T13:00:00Z\"}}

Exit status: 0 it ran (whether or not a rule matched), 1 a condition or an action
template failed, 64 bad input (rules file, --config, event, --previous)."
    )]
    Test(TestArgs),
    /// Replay the archived events through CANDIDATE rules and compare, per rule and per
    /// subject, with the recorded decisions (or with --baseline rules replayed the same way).
    /// Sends nothing; reads the state store the candidate's [state] names.
    #[command(
        after_help = "Example: hookwarden rules backtest --rules candidate.toml --since 7d

Every archived event is replayed in delivery order from the oldest, so drops and crossings
see the past the worker saw; the window (--since, or --from/--to) says which are compared.
Cooldowns run on the events' receive times.

Exit status: 0 it ran, 1 the state store failed, 64 bad input (rules files, arguments)."
    )]
    Backtest(crate::cli::backtest::BacktestArgs),
    /// List the rules whose breakers tripped (`limit` in the rules file): when, how many
    /// firings, the first subjects. They stay tripped until reset.
    #[command(
        after_help = "Example: hookwarden rules trips --rules /etc/hookwarden/rules.toml

Exit status: 0 it ran, 1 the state store failed, 64 bad input."
    )]
    Trips(crate::cli::trips::TripsArgs),
    /// Per rule over a period's decision records: evaluated, matched, acted (enforce) or would
    /// act (shadow), tripped, distinct subjects, labelled true/false positives and the
    /// false-positive ratio among them, actions failed.
    #[command(
        after_help = "Example: hookwarden rules stats --rules /etc/hookwarden/rules.toml --since 7d

Label a match with `hookwarden decisions label EVENT_ID --rule NAME --as false-positive`.

Exit status: 0 it ran, 1 the state store failed, 64 bad input."
    )]
    Stats(crate::cli::stats::StatsArgs),
    /// Untrip RULE's breaker (and empty its window), through the state store: running
    /// workers act on its matches again from their next batch.
    #[command(
        after_help = "Example: hookwarden rules reset quarantine-low-humanity --rules /etc/hookwarden/rules.toml

Exit status: 0 it ran, 1 the state store failed, 64 bad input (rules file, unknown rule)."
    )]
    Reset(crate::cli::trips::ResetArgs),
}

/// Arguments of `hookwarden rules test`.
#[derive(Args)]
pub struct TestArgs {
    /// The worker's rules file.
    #[arg(long, default_value = "/etc/hookwarden/rules.toml")]
    pub rules: PathBuf,
    /// Listener config: the event's id and type are read where it says the provider puts
    /// them, as the listener reads them before handing the event to the worker.
    #[arg(long, value_name = "LISTENER.toml")]
    pub config: Option<PathBuf>,
    /// Provider the event comes from, as named in the rules' `[[subjects]]` and `events`.
    #[arg(long)]
    pub provider: String,
    /// Event type; default: where --config says the provider puts it, else the event's
    /// top-level `type`, else the one type the provider's `[[subjects]]` entry names.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// Event id (it keys the Idempotency-Key); default: where --config says the provider
    /// puts it, else the event's top-level `id`; made up (`dry-run-…`) only when there is
    /// none, and then the keys shown are not the worker's.
    #[arg(long)]
    pub id: Option<String>,
    /// JSON file with the subject's previous score, time, version and rule firings.
    #[arg(long, value_name = "STATE.json")]
    pub previous: Option<PathBuf>,
    /// The answer of lookup NAME (`[enrich.NAME]`), from a JSON file, instead of calling
    /// it (nothing is ever called); repeat for several. A lookup the event needs without one
    /// is shown with its rendered request, and the rules reading it as errors.
    #[arg(long = "enrich", value_name = "NAME=FILE.json")]
    pub enrich: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// JSON event file (`-` for standard input).
    #[arg(value_name = "EVENT.json")]
    pub event: PathBuf,
}

/// Reads and compiles a rules file with the environment, as the worker does.
///
/// # Errors
/// The file cannot be read, or every problem the worker would refuse it for.
pub fn load_rules(path: &Path, env: &HashMap<String, String>) -> anyhow::Result<WorkerConfig> {
    let text = config::read_file(path)?;
    Ok(WorkerConfig::parse(
        &path.display().to_string(),
        &text,
        env,
    )?)
}

/// What the dry run found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Provider name.
    pub provider: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Event id.
    pub event_id: String,
    /// Why the event id was made up (`dry-run-…`) instead of read from the event: the
    /// idempotency keys shown are then not the ones the worker would send.
    pub id_note: Option<String>,
    /// Subject id; `None` when no `[[subjects]]` entry reads the event.
    pub subject: Option<String>,
    /// The event's version as the worker compares it (RFC 3339 as Unix nanoseconds).
    pub version: Option<i64>,
    /// The event's scores.
    pub score: BTreeMap<String, f64>,
    /// The subject's past, from `--previous`.
    pub previous: Previous,
    /// The decision the worker would record: `acted`, `matched` (only shadow rules or rules
    /// without actions fired), `no_match`, `stale`, `no_subject`, or `dead_lettered` (an
    /// action of an enforced rule fails to render).
    pub outcome: &'static str,
    /// Why no rule was evaluated, when none was.
    pub note: Option<String>,
    /// The lookups the event's rules read, in name order.
    pub lookups: Vec<LookupReport>,
    /// Every rule whose `events` patterns take this event, in file order.
    pub rules: Vec<RuleReport>,
}

/// A lookup the event's rules read.
#[derive(Debug, Serialize)]
pub struct LookupReport {
    /// Its name (`enrich.NAME`).
    pub lookup: String,
    /// The request the worker would send (method, url, headers); `null` when it cannot be
    /// rendered.
    pub request: Value,
    /// Why the request cannot be rendered; the rules reading it would record this error.
    pub error: Option<String>,
    /// The file its answer was read from (`--enrich`); `None`: not called, no answer.
    pub answer_from: Option<PathBuf>,
}

impl Report {
    /// Fills in who the event is about, as the worker reads it.
    fn show_subject(&mut self, subject: &SubjectRead) {
        self.subject = Some(subject.id.clone());
        self.version = subject.version;
        self.score = subject.scores.clone();
    }

    /// Whether a condition or an action template failed (exit status 1).
    pub fn errored(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.error.is_some() || r.actions.iter().any(|a| a.error.is_some()))
    }
}

/// The subject's past as given with `--previous`.
#[derive(Debug, Default, Serialize)]
pub struct Previous {
    /// Scores of its last event.
    pub score: BTreeMap<String, f64>,
    /// When its last event was handled, RFC 3339.
    pub at: Option<String>,
    /// Last accepted version.
    pub version: Option<i64>,
    /// Per rule, when it last fired, RFC 3339.
    pub fired: BTreeMap<String, String>,
}

/// How one rule came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The condition held; the rule fires.
    Matched,
    /// The condition did not hold.
    NotMatched,
    /// The condition could not be evaluated.
    Error,
    /// The condition held but the rule fired for this subject within its cooldown.
    Cooldown,
    /// The event is older than the subject's previous version: not evaluated.
    Stale,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Matched => "matched",
            Self::NotMatched => "not matched",
            Self::Error => "error",
            Self::Cooldown => "cooldown",
            Self::Stale => "stale",
        })
    }
}

/// One rule's result.
#[derive(Debug, Serialize)]
pub struct RuleReport {
    /// Rule name.
    pub rule: String,
    /// `enforce` or `shadow`.
    pub mode: &'static str,
    /// The condition's source.
    pub when: String,
    /// What the condition said.
    pub result: Verdict,
    /// Why the condition could not be evaluated.
    pub error: Option<String>,
    /// When in cooldown: since when and until when.
    pub cooldown: Option<Cooldown>,
    /// The inputs the condition names (`score.x`, `previous.score.x`, `previous.at`);
    /// `null` where the value is absent.
    pub values: BTreeMap<String, Value>,
    /// For a firing rule, every action rendered as the worker would send it.
    pub actions: Vec<ActionReport>,
}

/// A rule's cooldown as it stands.
#[derive(Debug, Serialize)]
pub struct Cooldown {
    /// When the rule last fired for the subject.
    pub fired_at: Option<String>,
    /// The rule's cooldown.
    pub cooldown: String,
    /// When it may fire again.
    pub until: Option<String>,
}

/// One action of a firing rule, rendered.
#[derive(Debug, Serialize)]
pub struct ActionReport {
    /// Action name.
    pub action: String,
    /// `http`, `amqp`, `exec` or `log`.
    pub kind: &'static str,
    /// The rendered action (kind-specific fields); `null` when rendering failed.
    pub rendered: Value,
    /// Why rendering failed; the worker would dead-letter the event.
    pub error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviousFile {
    #[serde(default)]
    score: BTreeMap<String, f64>,
    at: Option<String>,
    version: Option<Value>,
    #[serde(default)]
    fired: BTreeMap<String, String>,
}

/// Runs the dry run.
///
/// # Errors
/// Bad input: an invalid rules file or listener config, a provider the listener config does
/// not name, an unreadable event or `--previous`, an event whose type cannot be found (and no
/// `--type`), an event its `[[subjects]]` entry cannot read.
pub fn test(args: &TestArgs, env: &HashMap<String, String>) -> anyhow::Result<Report> {
    let config = load_rules(&args.rules, env)?;
    let fields = match &args.config {
        Some(path) => listener_fields(path, &args.provider, env)?,
        None => Fields::defaults(),
    };
    let bytes = sign::read_event(&args.event)?;
    // As strict as the listener: it refuses a body that names a key twice.
    let json = parse_body(&bytes).map_err(|e| anyhow!("{}: {e}", args.event.display()))?;
    let event_type = match &args.event_type {
        Some(t) => t.clone(),
        None => event_type(&fields, &json, &config, &args.provider, &args.event)?,
    };
    let (id, id_note) = match &args.id {
        Some(id) => (id.clone(), None),
        None => event_id(&fields, &json, &args.provider, &args.event),
    };
    let (prior, previous) = match &args.previous {
        Some(path) => read_previous(path)?,
        None => (SubjectState::default(), Previous::default()),
    };
    let event = Event {
        key: format!("{}/{id}", args.provider),
        provider: args.provider.clone(),
        id,
        event_type,
        json,
    };
    let mut report = Report {
        provider: event.provider.clone(),
        event_type: event.event_type.clone(),
        event_id: event.id.clone(),
        id_note,
        subject: None,
        version: None,
        score: BTreeMap::new(),
        previous,
        outcome: "no_match",
        note: None,
        lookups: Vec::new(),
        rules: Vec::new(),
    };
    let rules = &config.rules;
    let supplied = supplied_answers(&args.enrich, rules)?;
    let answers = match decide::sight(rules, &event) {
        decide::Sighting::Subject(subject) if !decide::is_stale(&prior, &subject) => {
            let (answers, lookups) = lookups(rules, &event, &subject, &prior, supplied);
            report.lookups = lookups;
            answers
        }
        _ => Answers::default(),
    };
    let score_names: BTreeSet<&str> = rules
        .subjects
        .iter()
        .flat_map(|s| s.scores.iter().map(|(n, _)| n.as_str()))
        .collect();
    let evaluation = match decide::decide(rules, &event, &prior, &answers, now_ms()) {
        Decision::NoSubject => {
            report.outcome = EventOutcome::NoSubject.as_str();
            report.note = Some(format!(
                "no [[subjects]] entry reads {}:{} events: the worker records the event as \
                 no_subject and evaluates no rule",
                event.provider, event.event_type
            ));
            return Ok(report);
        }
        Decision::Unreadable(reason) => {
            bail!("the worker would dead-letter this event, its subject is unreadable: {reason}")
        }
        Decision::Stale(subject) => {
            report.show_subject(&subject);
            report.outcome = EventOutcome::Stale.as_str();
            report.note = Some(format!(
                "version {} is older than the previous version {}: the worker skips the event \
                 and evaluates no rule",
                subject.version.unwrap_or_default(),
                prior.version.unwrap_or_default()
            ));
            for rule in rules
                .rules
                .iter()
                .filter(|r| r.applies(&event.provider, &event.event_type))
            {
                report.rules.push(RuleReport {
                    rule: rule.name.clone(),
                    mode: rule.mode.as_str(),
                    when: rule.when.source().to_owned(),
                    result: Verdict::Stale,
                    error: None,
                    cooldown: None,
                    values: values(rule.when.source(), &score_names, &subject, &prior),
                    actions: Vec::new(),
                });
            }
            return Ok(report);
        }
        Decision::Evaluated(evaluation) => evaluation,
    };
    report.show_subject(&evaluation.subject);
    for decided in &evaluation.rules {
        let rule = &rules.rules[decided.rule];
        let (result, error, cooldown_report) = match &decided.verdict {
            decide::Verdict::NotMatched => (Verdict::NotMatched, None, None),
            decide::Verdict::Acts | decide::Verdict::WouldAct | decide::Verdict::Tripped => {
                (Verdict::Matched, None, None)
            }
            decide::Verdict::CoolingDown { fired_ms } => (
                Verdict::Cooldown,
                None,
                Some(cooldown(rule.cooldown, *fired_ms)),
            ),
            decide::Verdict::Error(reason) => (Verdict::Error, Some(reason.clone()), None),
        };
        let actions = decided
            .actions
            .iter()
            .map(|planned| {
                let (rendered, error) = match &planned.request {
                    Ok(request) => (request.describe(), None),
                    Err(e) => (Value::Null, Some(e.clone())),
                };
                ActionReport {
                    action: planned.action.clone(),
                    kind: planned.kind,
                    rendered,
                    error,
                }
            })
            .collect();
        report.rules.push(RuleReport {
            rule: rule.name.clone(),
            mode: rule.mode.as_str(),
            when: rule.when.source().to_owned(),
            result,
            error,
            cooldown: cooldown_report,
            values: values(
                rule.when.source(),
                &score_names,
                &evaluation.subject,
                &prior,
            ),
            actions,
        });
    }
    report.outcome = evaluation.expected_outcome().as_str();
    Ok(report)
}

/// The `--enrich NAME=FILE.json` answers, by lookup name, with their files.
fn supplied_answers(
    args: &[String],
    rules: &crate::worker::rules::Rules,
) -> anyhow::Result<BTreeMap<String, (PathBuf, Value)>> {
    let mut supplied = BTreeMap::new();
    for arg in args {
        let Some((name, file)) = arg.split_once('=') else {
            bail!("--enrich {arg}: expected NAME=FILE.json");
        };
        if !rules.lookups.iter().any(|l| l.name == name) {
            let known: Vec<&str> = rules.lookups.iter().map(|l| l.name.as_str()).collect();
            bail!(
                "--enrich {arg}: the rules file has no [enrich.{name}]; defined: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            );
        }
        let path = PathBuf::from(file);
        let text = std::fs::read(&path)
            .with_context(|| format!("--enrich {arg}: cannot read {}", path.display()))?;
        let value: Value = serde_json::from_slice(&text)
            .with_context(|| format!("--enrich {arg}: {} is not JSON", path.display()))?;
        supplied.insert(name.to_owned(), (path, value));
    }
    Ok(supplied)
}

/// The lookups the event's rules read: each request rendered as the worker would send it,
/// answered from `supplied` or not at all.
fn lookups(
    rules: &crate::worker::rules::Rules,
    event: &Event,
    subject: &SubjectRead,
    prior: &SubjectState,
    mut supplied: BTreeMap<String, (PathBuf, Value)>,
) -> (Answers, Vec<LookupReport>) {
    let needed = rules.lookups_for(&event.provider, &event.event_type);
    let requests = decide::with_facts(rules, event, subject, prior, &BTreeMap::new(), |facts| {
        enrich::requests(&rules.lookups, &rules.templates, &needed, facts)
    });
    let mut answers = Answers::default();
    let mut reports = Vec::new();
    for (i, request) in requests {
        let name = rules.lookups[i].name.clone();
        let (request, error) = match request {
            Ok(request) => (describe_request(&request), None),
            Err(reason) => (Value::Null, Some(format!("cannot render: {reason}"))),
        };
        let answer_from = match (supplied.remove(&name), &error) {
            (Some((path, value)), None) => {
                answers.values.insert(name.clone(), value);
                Some(path)
            }
            (_, Some(reason)) => {
                answers.failed.insert(name.clone(), failure(reason.clone()));
                None
            }
            // Not run: the rules reading it say so.
            (None, None) => None,
        };
        reports.push(LookupReport {
            lookup: name,
            request,
            error,
            answer_from,
        });
    }
    (answers, reports)
}

/// A lookup with no answer here: the rules reading it show its reason. (The worker would
/// dead-letter the event instead for `on_error = "retry"`; a dry run shows the rules.)
fn failure(reason: String) -> Failure {
    Failure {
        reason,
        on_error: OnError::SkipRule,
    }
}

fn describe_request(request: &HttpRequest) -> Value {
    serde_json::json!({
        "method": request.method.as_str(),
        "url": request.url,
        "headers": request
            .headers
            .iter()
            .map(|(n, v)| vec![n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()])
            .collect::<Vec<_>>(),
    })
}

/// Where the listener reads a provider's event id and type, and from which config.
struct Fields {
    id: FieldRef,
    event_type: FieldRef,
    /// The listener config they come from; `None` for the listener's defaults.
    from: Option<PathBuf>,
}

impl Fields {
    /// The listener's default for every scheme but GitHub's and Standard Webhooks': the
    /// body's top-level `id` and `type`.
    fn defaults() -> Self {
        Self {
            id: FieldRef::Pointer("/id".to_owned()),
            event_type: FieldRef::Pointer("/type".to_owned()),
            from: None,
        }
    }

    /// Reads `field` from an event file: a body has no request headers, so a header (or the
    /// scheme's id header) is never there.
    fn read(field: &FieldRef, what: &'static str, json: &Value) -> Result<String, ExtractError> {
        let unsigned = Verified {
            scheme_id: None,
            timestamp: None,
        };
        extract::extract(field, what, &HeaderMap::new(), json, &unsigned)
    }
}

/// The provider's id and type locations in the listener config at `path`.
fn listener_fields(
    path: &Path,
    provider: &str,
    env: &HashMap<String, String>,
) -> anyhow::Result<Fields> {
    let text = config::read_file(path)?;
    let listener = ListenerConfig::parse(&path.display().to_string(), &text, env)?;
    let Some(p) = listener.provider(provider) else {
        let known: Vec<&str> = listener.providers.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "no provider {provider:?} in {}; configured: {}",
            path.display(),
            known.join(", ")
        );
    };
    Ok(Fields {
        id: p.event_id.clone(),
        event_type: p.event_type.clone(),
        from: Some(path.to_owned()),
    })
}

/// The event's type, read where the listener reads it. Without a listener config and without
/// a top-level `type`, the provider's `[[subjects]]` entries decide when they name exactly one
/// type (not a pattern).
fn event_type(
    fields: &Fields,
    json: &Value,
    config: &WorkerConfig,
    provider: &str,
    event: &Path,
) -> anyhow::Result<String> {
    let err = match Fields::read(&fields.event_type, "event type", json) {
        Ok(t) => return Ok(t),
        Err(err) => err,
    };
    if let Some(listener) = &fields.from {
        return Err(match &fields.event_type {
            FieldRef::Pointer(_) => anyhow!(
                "{}: {err} (where {} says {provider}'s events carry it); the listener would \
                 refuse this event; give --type to dry-run it anyway",
                event.display(),
                listener.display()
            ),
            elsewhere => anyhow!(
                "{provider}'s event type is {} ({}), which an event file does not carry; give \
                 --type",
                outside_the_body(elsewhere),
                listener.display()
            ),
        });
    }
    let types: Vec<String> = config
        .rules
        .subjects
        .iter()
        .filter(|s| s.provider == provider)
        .flat_map(|s| s.types.iter().map(|t| t.pattern()))
        .collect();
    match types.as_slice() {
        [only] if !only.contains(['*', '?']) => Ok(only.clone()),
        _ => {
            let named = if types.is_empty() {
                format!("no [[subjects]] entry names {provider}'s types")
            } else {
                format!(
                    "{provider}'s [[subjects]] types are {}",
                    types
                        .iter()
                        .map(|t| format!("{t:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            bail!(
                "{} has no string \"type\" field and {named}; give --type, or --config \
                 LISTENER.toml to read the type where the listener does",
                event.display()
            )
        }
    }
}

/// The event's id, read where the listener reads it; when there is none, a made-up one and
/// a note saying why, since the idempotency keys shown then differ from the worker's.
fn event_id(
    fields: &Fields,
    json: &Value,
    provider: &str,
    event: &Path,
) -> (String, Option<String>) {
    let err = match Fields::read(&fields.id, "event id", json) {
        Ok(id) => return (id, None),
        Err(err) => err,
    };
    let id = format!("dry-run-{}", uuid::Uuid::new_v4().simple());
    let why = match (&fields.from, &fields.id) {
        (Some(listener), FieldRef::Pointer(_)) => format!(
            "{}: {err} (where {} says {provider}'s events carry it): the listener would \
             refuse this event",
            event.display(),
            listener.display()
        ),
        (Some(listener), elsewhere) => format!(
            "{provider}'s event id is {} ({}), which an event file does not carry",
            outside_the_body(elsewhere),
            listener.display()
        ),
        (None, _) => format!(
            "{} has no top-level \"id\"; give --config LISTENER.toml if {provider} puts its \
             id elsewhere",
            event.display()
        ),
    };
    let note = format!(
        "{why}; the id {id} is made up, so the idempotency keys below are not the worker's \
         (give --id)"
    );
    (id, Some(note))
}

/// A location outside the body, in words.
fn outside_the_body(field: &FieldRef) -> String {
    match field {
        FieldRef::Header(name) => format!("the {name} request header"),
        // Only Standard Webhooks carries the id in its signature headers.
        FieldRef::SchemeId => "the webhook-id (or svix-id) request header".to_owned(),
        FieldRef::Pointer(pointer) => pointer.clone(),
    }
}

fn cooldown(cooldown: Option<Duration>, fired_ms: i64) -> Cooldown {
    let span = cooldown.unwrap_or_default();
    let span_ms = i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
    Cooldown {
        fired_at: decide::rfc3339_ms(fired_ms),
        cooldown: humantime::format_duration(span).to_string(),
        until: decide::rfc3339_ms(fired_ms.saturating_add(span_ms)),
    }
}

/// The inputs a condition names. CEL has no public reference walker here, so this scans the
/// source for `score.NAME`, `previous.score.NAME` and `previous.at`; a condition that names
/// no score that way (`score["x"]`, only `event.*`) gets every score, so nothing is hidden.
fn values(
    source: &str,
    names: &BTreeSet<&str>,
    subject: &SubjectRead,
    prior: &SubjectState,
) -> BTreeMap<String, Value> {
    let mut all: BTreeSet<&str> = names.clone();
    all.extend(subject.scores.keys().map(String::as_str));
    all.extend(prior.scores.keys().map(String::as_str));
    let number = |v: Option<&f64>| v.map_or(Value::Null, |&f| Value::from(f));
    let mut out = BTreeMap::new();
    for name in &all {
        if mentions(source, &format!("score.{name}"), true) {
            out.insert(format!("score.{name}"), number(subject.scores.get(*name)));
        }
        if mentions(source, &format!("previous.score.{name}"), false) {
            out.insert(
                format!("previous.score.{name}"),
                number(prior.scores.get(*name)),
            );
        }
    }
    if out.is_empty() {
        for name in &all {
            out.insert(format!("score.{name}"), number(subject.scores.get(*name)));
            out.insert(
                format!("previous.score.{name}"),
                number(prior.scores.get(*name)),
            );
        }
    }
    if mentions(source, "previous.at", false) {
        let at = prior.at_ms.and_then(decide::rfc3339_ms);
        out.insert(
            "previous.at".to_owned(),
            at.map_or(Value::Null, Value::from),
        );
    }
    out
}

/// Whether `path` occurs in `source` as a whole name; `top` requires that it not be the
/// tail of a longer path (so `score.x` inside `previous.score.x` does not count).
fn mentions(source: &str, path: &str, top: bool) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    source.match_indices(path).any(|(at, _)| {
        let before = source[..at].chars().next_back();
        let after = source[at + path.len()..].chars().next();
        let starts = before.is_none_or(|c| !(ident(c) || top && c == '.'));
        starts && after.is_none_or(|c| !ident(c))
    })
}

fn read_previous(path: &Path) -> anyhow::Result<(SubjectState, Previous)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: PreviousFile = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected {{\"score\": {{NAME: number}}, \"at\": RFC 3339, \"version\": \
             integer or RFC 3339, \"fired\": {{RULE: RFC 3339}}}}, every key optional",
            path.display()
        )
    })?;
    let at_ms = file
        .at
        .as_deref()
        .map(|at| rfc3339_ms(at).with_context(|| format!("{}: at", path.display())))
        .transpose()?;
    let version = file
        .version
        .as_ref()
        .map(|v| {
            subject::read_version(Some(v))
                .map_err(|reason| anyhow!("{}: version: {v} {reason}", path.display()))
        })
        .transpose()?;
    let mut fired_ms = BTreeMap::new();
    for (rule, at) in &file.fired {
        let ms = rfc3339_ms(at).with_context(|| format!("{}: fired.{rule}", path.display()))?;
        fired_ms.insert(rule.clone(), ms);
    }
    let state = SubjectState {
        version,
        scores: file.score.clone(),
        at_ms,
        fired_ms,
    };
    let shown = Previous {
        score: file.score,
        at: at_ms.and_then(decide::rfc3339_ms),
        version,
        fired: file.fired,
    };
    Ok((state, shown))
}

fn rfc3339_ms(text: &str) -> anyhow::Result<i64> {
    let at = humantime::parse_rfc3339_weak(text)
        .map_err(|e| anyhow!("{text:?} is not RFC 3339: {e}"))?;
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| anyhow!("{text:?} is before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| anyhow!("{text:?} is too far in the future"))
}

fn scores_text(scores: &BTreeMap<String, f64>) -> String {
    if scores.is_empty() {
        return "none".to_owned();
    }
    scores
        .iter()
        .map(|(n, v)| format!("{n} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "absent".to_owned(),
        Value::String(s) => s.clone(),
        // f64's Display prints 22, not JSON's 22.0, as scores are written in events.
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string()),
        other => other.to_string(),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "event {}/{} ({})",
            self.provider, self.event_id, self.event_type
        )?;
        if let Some(note) = &self.id_note {
            writeln!(f, "note: {note}")?;
        }
        if let Some(subject) = &self.subject {
            write!(f, "subject {subject}")?;
            if let Some(v) = self.version {
                write!(f, ", version {v}")?;
            }
            writeln!(f)?;
            writeln!(f, "score: {}", scores_text(&self.score))?;
            let p = &self.previous;
            if p.score.is_empty() && p.at.is_none() && p.version.is_none() && p.fired.is_empty() {
                writeln!(f, "previous: none (first sighting)")?;
            } else {
                write!(f, "previous: score {}", scores_text(&p.score))?;
                if let Some(at) = &p.at {
                    write!(f, "; at {at}")?;
                }
                if let Some(v) = p.version {
                    write!(f, "; version {v}")?;
                }
                for (rule, at) in &p.fired {
                    write!(f, "; {rule} fired at {at}")?;
                }
                writeln!(f)?;
            }
        }
        writeln!(f, "decision: {} (dry run, nothing sent)", self.outcome)?;
        if let Some(note) = &self.note {
            writeln!(f, "{note}")?;
        }
        for lookup in &self.lookups {
            writeln!(f)?;
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            match (&lookup.error, &lookup.answer_from) {
                (Some(e), _) => writeln!(f, "lookup {}: {e}", lookup.lookup)?,
                (None, Some(path)) => writeln!(
                    f,
                    "lookup {}: answered from {} (not called)",
                    lookup.lookup,
                    path.display()
                )?,
                (None, None) => writeln!(
                    f,
                    "lookup {}: not called (give --enrich {}=FILE.json for an answer)",
                    lookup.lookup, lookup.lookup
                )?,
            }
            if lookup.error.is_none() {
                let r = &lookup.request;
                writeln!(f, "    {} {}", text(&r["method"]), text(&r["url"]))?;
                for pair in r["headers"].as_array().into_iter().flatten() {
                    writeln!(f, "    {}: {}", text(&pair[0]), text(&pair[1]))?;
                }
            }
        }
        for rule in &self.rules {
            writeln!(f)?;
            write!(f, "rule {} ({}): {}", rule.rule, rule.mode, rule.result)?;
            if let Some(e) = &rule.error {
                write!(f, ": {e}")?;
            }
            if let Some(c) = &rule.cooldown {
                write!(
                    f,
                    " (fired at {}, cooldown {}, until {})",
                    c.fired_at.as_deref().unwrap_or("?"),
                    c.cooldown,
                    c.until.as_deref().unwrap_or("?")
                )?;
            }
            if rule.mode == "shadow" && rule.result == Verdict::Matched {
                write!(f, " (shadow: recorded as would_act, never sent)")?;
            }
            writeln!(f)?;
            writeln!(f, "  when: {}", rule.when)?;
            // This event's values first, then the subject's past.
            let mut values: Vec<(&String, &Value)> = rule.values.iter().collect();
            values.sort_by_key(|(k, _)| (k.starts_with("previous."), k.as_str()));
            let values: Vec<String> = values
                .into_iter()
                .map(|(k, v)| format!("{k} = {}", value_text(v)))
                .collect();
            if !values.is_empty() {
                writeln!(f, "  values: {}", values.join(", "))?;
            }
            for action in &rule.actions {
                write_action(f, action)?;
            }
        }
        Ok(())
    }
}

fn write_action(f: &mut fmt::Formatter<'_>, a: &ActionReport) -> fmt::Result {
    let r = &a.rendered;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    if let Some(e) = &a.error {
        return writeln!(
            f,
            "  action {} ({}): cannot render, the worker would dead-letter: {e}",
            a.action, a.kind
        );
    }
    match a.kind {
        "http" => {
            writeln!(
                f,
                "  action {} (http, timeout {}, retries {}):",
                a.action,
                text(&r["timeout"]),
                r["retries"]
            )?;
            writeln!(f, "    {} {}", text(&r["method"]), text(&r["url"]))?;
            for pair in r["headers"].as_array().into_iter().flatten() {
                writeln!(f, "    {}: {}", text(&pair[0]), text(&pair[1]))?;
            }
            if let Some(body) = r["body"].as_str() {
                writeln!(f)?;
                for line in body.lines() {
                    writeln!(f, "    {line}")?;
                }
            }
        }
        "amqp" => {
            writeln!(f, "  action {} (amqp):", a.action)?;
            writeln!(
                f,
                "    publish to exchange {:?} with routing key {:?}, message id {}, persistent, {}",
                text(&r["exchange"]),
                text(&r["routing_key"]),
                text(&r["message_id"]),
                text(&r["content_type"])
            )?;
            writeln!(f)?;
            for line in text(&r["body"]).lines() {
                writeln!(f, "    {line}")?;
            }
        }
        "exec" => {
            let argv: Vec<String> = r["argv"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| format!("{:?}", a.as_str().unwrap_or_default()))
                .collect();
            writeln!(
                f,
                "  action {} (exec, timeout {}):",
                a.action,
                text(&r["timeout"])
            )?;
            writeln!(f, "    argv [{}]", argv.join(", "))?;
        }
        _ => {
            writeln!(f, "  action {} (log):", a.action)?;
            writeln!(f, "    message: {}", text(&r["message"]))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
[[subjects]]
provider = "reputation"
types = ["Reputation_Score_Updated"]
subject = "/entity/id"

[[subjects]]
provider = "dregs"
types = ["identity.*"]
subject = "/data/identity_id"
"#;

    fn rules() -> WorkerConfig {
        WorkerConfig::parse("rules.toml", RULES, &HashMap::new()).unwrap()
    }

    fn listener(provider: &str) -> Fields {
        Fields {
            id: FieldRef::parse(provider).unwrap(),
            event_type: FieldRef::parse("/event").unwrap(),
            from: Some(PathBuf::from("listener.toml")),
        }
    }

    #[test]
    fn the_type_is_read_where_the_listener_reads_it_else_from_the_one_subject_type() {
        let event = serde_json::json!({"event_id": "e1", "event": "Reputation_Score_Updated"});
        let file = Path::new("e.json");
        let (config, defaults) = (rules(), Fields::defaults());
        let t = |fields: &Fields, provider: &str| {
            event_type(fields, &event, &config, provider, file).map_err(|e| e.to_string())
        };
        assert_eq!(
            t(&listener("/event_id"), "reputation").unwrap(),
            "Reputation_Score_Updated"
        );
        // No top-level `type`: the provider's one subject type.
        assert_eq!(
            t(&defaults, "reputation").unwrap(),
            "Reputation_Score_Updated"
        );
        // A pattern is no type; nor is a provider without subjects.
        let err = t(&defaults, "dregs").unwrap_err();
        assert!(
            err.contains("types are \"identity.*\"; give --type"),
            "{err}"
        );
        let err = t(&defaults, "other").unwrap_err();
        assert!(
            err.contains("no [[subjects]] entry names other's types"),
            "{err}"
        );
        // The listener config names a header: the file cannot have it.
        let github = Fields {
            event_type: FieldRef::parse("header:X-GitHub-Event").unwrap(),
            ..listener("/id")
        };
        let err = t(&github, "gh").unwrap_err();
        assert!(err.contains("the x-github-event request header"), "{err}");
    }

    #[test]
    fn the_id_is_the_events_own_and_made_up_only_when_there_is_none() {
        let event = serde_json::json!({"id": "top", "event_id": "own"});
        let file = Path::new("e.json");
        let id = |fields: &Fields| event_id(fields, &event, "p", file);
        assert_eq!(id(&listener("/event_id")), ("own".to_owned(), None));
        assert_eq!(id(&Fields::defaults()), ("top".to_owned(), None));
        for (fields, why) in [
            (listener("/missing"), "no event id at /missing"),
            (listener("header:X-Id"), "the x-id request header"),
        ] {
            let (made_up, note) = id(&fields);
            assert!(made_up.starts_with("dry-run-"), "{made_up}");
            let note = note.unwrap();
            assert!(
                note.contains(why) && note.contains("not the worker's"),
                "{note}"
            );
        }
        let (_, note) = event_id(&Fields::defaults(), &serde_json::json!({}), "p", file);
        assert!(note.unwrap().contains("no top-level \"id\""));
    }

    #[test]
    fn mentions_finds_whole_paths_only() {
        let when = "score.humanity < 30.0 && previous.score.uniqueness >= 30.0";
        assert!(mentions(when, "score.humanity", true));
        assert!(!mentions(when, "score.uniqueness", true));
        assert!(mentions(when, "previous.score.uniqueness", false));
        assert!(!mentions("score.humanity2 > 1", "score.humanity", true));
        assert!(!mentions(when, "previous.at", false));
    }
}
