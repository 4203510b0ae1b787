//! The worker's rules file (`rules.toml`): subjects, rules and actions, with every CEL
//! condition, template, glob and duration compiled at load so nothing is parsed per event,
//! and every problem reported at once with its key (`rules[2].when: undeclared reference`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Method};
use serde::Deserialize;
use wildmatch::WildMatch;

use super::{ConfigError, ConfigKind, Document, glob};
use crate::config::amqp::AmqpConfig;
use crate::config::log::LogConfig;
use crate::worker::condition::{self, Condition, Input};
use crate::worker::subject::SubjectSpec;
use crate::worker::template::{TemplateId, Templates};

/// Names a template may use.
pub const TEMPLATE_NAMES: &[&str] = &[
    "event", "provider", "type", "subject", "score", "previous", "rule", "event_id", "env",
];

/// The whole validated worker config.
pub struct WorkerConfig {
    /// `[amqp]`, shared with the listener.
    pub amqp: AmqpConfig,
    /// `[server]`: admin address, shutdown grace.
    pub server: WorkerServer,
    /// `[state]`: the embedded store.
    pub state: StateConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[[subjects]]`, in file order (the first that matches an event reads it).
    pub subjects: Vec<SubjectSpec>,
    /// `[[rules]]`, in file order.
    pub rules: Vec<Rule>,
    /// `[actions.*]`; rules refer to them by index.
    pub actions: Vec<Action>,
    /// Every action template, compiled.
    pub templates: Templates,
    /// The environment variables templates reference as `env.NAME`, read at load.
    pub template_env: BTreeMap<String, String>,
}

/// `[server]` of the worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerServer {
    /// Admin address for `/healthz`, `/readyz`, `/metrics`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// On SIGTERM, how long in-flight events may take to finish.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9091))
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// SQLite file of per-subject state, done-marks and decisions.
    #[serde(default = "default_state_path")]
    pub path: PathBuf,
    /// How long decision records and done-marks are kept.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
}

fn default_state_path() -> PathBuf {
    PathBuf::from("/var/lib/hookwarden/worker.db")
}
fn default_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

/// Whether a rule acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Evaluate and act.
    Enforce,
    /// Evaluate and record what would have happened; never act.
    Shadow,
}

impl Mode {
    /// `enforce` or `shadow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        }
    }
}

/// A compiled rule.
pub struct Rule {
    /// Unique name (metrics label, idempotency key part).
    pub name: String,
    /// `provider:type` globs, split.
    pub events: Vec<(WildMatch, WildMatch)>,
    /// The `when` condition.
    pub when: Condition,
    /// Indexes into [`WorkerConfig::actions`].
    pub actions: Vec<usize>,
    /// Minimum time between firings for one subject.
    pub cooldown: Option<Duration>,
    /// Enforce or shadow.
    pub mode: Mode,
}

impl Rule {
    /// Whether the rule applies to events of `provider` and `event_type`.
    pub fn applies(&self, provider: &str, event_type: &str) -> bool {
        self.events
            .iter()
            .any(|(p, t)| p.matches(provider) && t.matches(event_type))
    }
}

/// A compiled action.
pub struct Action {
    /// Its name in `[actions.NAME]`.
    pub name: String,
    /// What it does.
    pub kind: ActionKind,
}

/// The four kinds of action.
pub enum ActionKind {
    /// An HTTP request; success is 2xx.
    Http {
        /// Method.
        method: Method,
        /// URL template.
        url: TemplateId,
        /// Header templates.
        headers: Vec<(HeaderName, TemplateId)>,
        /// Body template.
        body: Option<TemplateId>,
        /// Per attempt.
        timeout: Duration,
        /// Attempts after the first.
        retries: u32,
    },
    /// A confirmed, persistent AMQP publish.
    Amqp {
        /// Exchange (`""` = default exchange).
        exchange: String,
        /// Routing key (default: `[amqp] review_queue`).
        routing_key: String,
        /// Body template; default: the event plus the decision.
        body: Option<TemplateId>,
    },
    /// A command, argv templated per argument, never through a shell.
    Exec {
        /// argv templates.
        command: Vec<TemplateId>,
        /// Kill after this long.
        timeout: Duration,
    },
    /// A structured log line.
    Log {
        /// Message template; default `rule matched`.
        message: Option<TemplateId>,
    },
}

impl ActionKind {
    /// `http`, `amqp`, `exec` or `log`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Http { .. } => "http",
            Self::Amqp { .. } => "amqp",
            Self::Exec { .. } => "exec",
            Self::Log { .. } => "log",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubject {
    provider: String,
    types: Vec<String>,
    subject: String,
    version: Option<String>,
    #[serde(default)]
    scores: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    events: Vec<String>,
    when: String,
    actions: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    cooldown: Option<Duration>,
    mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    kind: String,
    method: Option<String>,
    url: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    body: Option<String>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    retries: Option<u32>,
    exchange: Option<String>,
    routing_key: Option<String>,
    command: Option<Vec<String>>,
    message: Option<String>,
}

const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;

impl WorkerConfig {
    /// Parses and compiles a rules file.
    ///
    /// # Errors
    /// Every problem found, each with its key path and reason.
    pub fn parse(
        file: &str,
        text: &str,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut doc = Document::parse(file, text, env, ConfigKind::Worker)?;
        doc.reject_unknown_sections();
        let amqp: Option<AmqpConfig> = doc.section("amqp");
        let server: Option<WorkerServer> = doc.section("server");
        let state: Option<StateConfig> = doc.section("state");
        let log: Option<LogConfig> = doc.section("log");
        let raw_subjects: Vec<Option<RawSubject>> = doc.list("subjects");
        let raw_rules: Vec<Option<RawRule>> = doc.list("rules");
        let raw_actions: Option<BTreeMap<String, RawAction>> = doc.section("actions");
        if let Some(amqp) = &amqp {
            amqp.validate(&mut doc, "amqp");
        }

        let subjects = build_subjects(&mut doc, raw_subjects);
        let score_names: BTreeSet<String> = subjects
            .iter()
            .flat_map(|s| s.scores.iter().map(|(n, _)| n.clone()))
            .collect();

        let mut templates = Templates::new();
        let mut actions = Vec::new();
        for (name, raw) in raw_actions.unwrap_or_default() {
            let key = format!("actions.{name}");
            let review = amqp
                .as_ref()
                .map(|a| a.review_queue.clone())
                .unwrap_or_default();
            if let Some(kind) = build_action(&mut doc, &key, raw, &mut templates, &review) {
                actions.push(Action { name, kind });
            }
        }
        let template_env = check_templates(&mut doc, &templates, env, &score_names);

        let mut rules = Vec::new();
        let mut names = BTreeSet::new();
        for (i, raw) in raw_rules.into_iter().enumerate() {
            let Some(raw) = raw else { continue };
            let key = format!("rules[{i}]");
            if !names.insert(raw.name.clone()) {
                doc.problem(
                    &format!("{key}.name"),
                    format!("rule {:?} is defined twice", raw.name),
                );
            }
            if let Some(rule) = build_rule(&mut doc, &key, raw, &actions, &subjects, &score_names) {
                rules.push(rule);
            }
        }
        doc.finish()?;
        match (amqp, server, state, log) {
            (Some(amqp), Some(server), Some(state), Some(log)) => Ok(WorkerConfig {
                amqp,
                server,
                state,
                log,
                subjects,
                rules,
                actions,
                templates,
                template_env,
            }),
            _ => Err(ConfigError {
                problems: vec![super::Problem {
                    file: file.to_owned(),
                    line: None,
                    key: String::new(),
                    reason: "incomplete config".to_owned(),
                    variable: None,
                }],
            }),
        }
    }

    /// The first subject spec that reads events of `provider` and `event_type`.
    pub fn subject_spec(&self, provider: &str, event_type: &str) -> Option<&SubjectSpec> {
        self.subjects
            .iter()
            .find(|s| s.matches(provider, event_type))
    }

    /// A short human summary for `--check`.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "broker {} queue {:?} prefetch {}; state {} (decisions kept {})\n",
            self.amqp.redacted_url(),
            self.amqp.queue,
            self.amqp.prefetch,
            self.state.path.display(),
            humantime::format_duration(self.state.retention)
        );
        for s in &self.subjects {
            out.push_str(&format!(
                "subjects: provider {:?}, subject {}, {} score(s)\n",
                s.provider,
                s.subject,
                s.scores.len()
            ));
        }
        for r in &self.rules {
            let actions: Vec<&str> = r
                .actions
                .iter()
                .map(|&i| self.actions[i].name.as_str())
                .collect();
            out.push_str(&format!(
                "rule {:?} ({}): when {} → {}{}\n",
                r.name,
                r.mode.as_str(),
                r.when.source(),
                actions.join(", "),
                r.cooldown
                    .map(|c| format!(", cooldown {}", humantime::format_duration(c)))
                    .unwrap_or_default()
            ));
        }
        out
    }
}

fn build_subjects(doc: &mut Document<'_>, raw: Vec<Option<RawSubject>>) -> Vec<SubjectSpec> {
    let mut out = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        let key = format!("subjects[{i}]");
        let mut ok = true;
        for (field, pointer) in std::iter::once(("subject".to_owned(), &raw.subject))
            .chain(raw.version.iter().map(|v| ("version".to_owned(), v)))
            .chain(raw.scores.iter().map(|(n, p)| (format!("scores.{n}"), p)))
        {
            if !pointer.starts_with('/') {
                doc.problem(
                    &format!("{key}.{field}"),
                    format!("{pointer:?} is not a JSON pointer (write \"/data/id\")"),
                );
                ok = false;
            }
        }
        if raw.types.is_empty() {
            doc.problem(
                &format!("{key}.types"),
                "needs at least one event type (globs allowed)".to_owned(),
            );
            ok = false;
        }
        if ok {
            // In file order, as messages list them.
            let mut scores: Vec<(String, String)> = raw.scores.into_iter().collect();
            scores.sort_by_key(|(name, _)| doc.offset_of(&format!("{key}.scores.{name}")));
            out.push(SubjectSpec {
                provider: raw.provider,
                types: raw.types.iter().map(|t| WildMatch::new(t)).collect(),
                subject: raw.subject,
                version: raw.version,
                scores,
            });
        }
    }
    out
}

fn build_rule(
    doc: &mut Document<'_>,
    key: &str,
    raw: RawRule,
    actions: &[Action],
    subjects: &[SubjectSpec],
    score_names: &BTreeSet<String>,
) -> Option<Rule> {
    let mut ok = true;
    let mut events = Vec::new();
    for (j, pattern) in raw.events.iter().enumerate() {
        match pattern.split_once(':') {
            Some((p, t)) if !p.is_empty() && !t.is_empty() => {
                events.push((WildMatch::new(p), WildMatch::new(t)));
            }
            _ => {
                doc.problem(
                    &format!("{key}.events[{j}]"),
                    format!("{pattern:?} is not provider:type (globs allowed, e.g. \"dregs:identity.*\")"),
                );
                ok = false;
            }
        }
    }
    if raw.events.is_empty() {
        doc.problem(
            &format!("{key}.events"),
            "needs at least one provider:type pattern".to_owned(),
        );
        ok = false;
    }
    let names: Vec<&str> = score_names.iter().map(String::as_str).collect();
    let (sample_event, sample_scores) = condition::sample_input_parts(&names);
    let sample = Input {
        event: &sample_event,
        provider: "sample",
        event_type: "sample.type",
        subject: "sample-subject",
        score: &sample_scores,
        previous_score: &sample_scores,
        previous_at: Some("2026-01-01T00:00:00Z"),
    };
    let when = match Condition::compile_checked(&raw.when, &sample) {
        Ok(c) => {
            check_score_names(doc, &format!("{key}.when"), &c, &events, subjects);
            Some(c)
        }
        Err(reason) => {
            doc.problem(&format!("{key}.when"), reason);
            None
        }
    };
    let mut indexes = Vec::new();
    for (j, name) in raw.actions.iter().enumerate() {
        match actions.iter().position(|a| &a.name == name) {
            Some(i) => indexes.push(i),
            None => {
                let known: Vec<&str> = actions.iter().map(|a| a.name.as_str()).collect();
                doc.problem(
                    &format!("{key}.actions[{j}]"),
                    format!("no action named {name:?}; defined: {}", known.join(", ")),
                );
                ok = false;
            }
        }
    }
    let mode = match raw.mode.as_deref().unwrap_or("enforce") {
        "enforce" => Mode::Enforce,
        "shadow" => Mode::Shadow,
        other => {
            doc.problem(
                &format!("{key}.mode"),
                format!("unknown mode {other:?}; expected enforce or shadow"),
            );
            ok = false;
            Mode::Shadow
        }
    };
    match (ok, when) {
        (true, Some(when)) => Some(Rule {
            name: raw.name,
            events,
            when,
            actions: indexes,
            cooldown: raw.cooldown,
            mode,
        }),
        _ => None,
    }
}

/// Reports each score `when` names that no `[[subjects]]` spec reading the rule's events
/// declares: such a score is in no event the rule sees, so the name is a typo (or a missing
/// declaration) and the condition could never use it. A name some of those specs declare is
/// accepted: a rule over several providers may guard one provider's score with `has()`.
/// A rule whose events no spec reads is left alone.
fn check_score_names(
    doc: &mut Document<'_>,
    key: &str,
    when: &Condition,
    events: &[(WildMatch, WildMatch)],
    subjects: &[SubjectSpec],
) {
    let names = when.score_names();
    if names.is_empty() {
        return;
    }
    let reached = reached_event_kinds(events, subjects);
    for name in names {
        // Per spec lacking the name: the event kinds it reads for this rule, and what it declares.
        let missing: Vec<(String, String)> = reached
            .iter()
            .filter(|(spec, _)| !spec.scores.iter().any(|(declared, _)| *declared == name))
            .map(|(spec, kinds)| {
                let declared: Vec<&str> = spec.scores.iter().map(|(n, _)| n.as_str()).collect();
                let declared = if declared.is_empty() {
                    "none".to_owned()
                } else {
                    declared.join(", ")
                };
                (kinds.join(", "), declared)
            })
            .collect();
        if missing.len() < reached.len() {
            continue; // declared by some spec the rule reads
        }
        let reason = match missing.as_slice() {
            [] => continue,
            [(kinds, declared)] => format!("no score {name:?} for {kinds}; declared: {declared}"),
            several => {
                let each: Vec<String> = several
                    .iter()
                    .map(|(kinds, declared)| format!("{kinds} (declared: {declared})"))
                    .collect();
                format!("no score {name:?} for {}", each.join(" or "))
            }
        };
        doc.problem(key, reason);
    }
}

/// The specs that read some event a rule's `events` match, each with its event kinds
/// (`provider:type`) that do. An event is read by the first spec matching it, so a kind an
/// earlier spec of the same provider reads in full is not reached through a later one.
fn reached_event_kinds<'s>(
    events: &[(WildMatch, WildMatch)],
    subjects: &'s [SubjectSpec],
) -> Vec<(&'s SubjectSpec, Vec<String>)> {
    let events: Vec<(&WildMatch, String)> = events
        .iter()
        .map(|(provider, event_type)| (provider, event_type.to_string()))
        .collect();
    let mut out = Vec::new();
    for (k, spec) in subjects.iter().enumerate() {
        let earlier: Vec<String> = subjects[..k]
            .iter()
            .filter(|s| s.provider == spec.provider)
            .flat_map(|s| s.types.iter().map(ToString::to_string))
            .collect();
        let earlier: Vec<&str> = earlier.iter().map(String::as_str).collect();
        let kinds: Vec<String> = spec
            .types
            .iter()
            .map(ToString::to_string)
            .filter(|spec_type| {
                events.iter().any(|(provider, event_type)| {
                    // Globs too intricate to settle are not checked: better a typo missed
                    // than a valid file refused.
                    provider.matches(&spec.provider)
                        && glob::overlap(&[event_type, spec_type], &earlier) == Some(true)
                })
            })
            .map(|spec_type| format!("{}:{spec_type}", spec.provider))
            .collect();
        if !kinds.is_empty() {
            out.push((spec, kinds));
        }
    }
    out
}

fn build_action(
    doc: &mut Document<'_>,
    key: &str,
    raw: RawAction,
    templates: &mut Templates,
    review_queue: &str,
) -> Option<ActionKind> {
    let mut ok = true;
    let mut template = |doc: &mut Document<'_>, field: &str, source: &str| -> Option<TemplateId> {
        let name = format!("{key}.{field}");
        match templates.add(&name, source) {
            Ok(id) => Some(id),
            Err(reason) => {
                doc.problem(&name, reason);
                None
            }
        }
    };
    let allowed: &[&str] = match raw.kind.as_str() {
        "http" => &["method", "url", "headers", "body", "timeout", "retries"],
        "amqp" => &["exchange", "routing_key", "body"],
        "exec" => &["command", "timeout"],
        "log" => &["message"],
        other => {
            doc.problem(
                &format!("{key}.kind"),
                format!("unknown kind {other:?}; expected one of http, amqp, exec, log"),
            );
            return None;
        }
    };
    let set = [
        ("method", raw.method.is_some()),
        ("url", raw.url.is_some()),
        ("headers", raw.headers.is_some()),
        ("body", raw.body.is_some()),
        ("timeout", raw.timeout.is_some()),
        ("retries", raw.retries.is_some()),
        ("exchange", raw.exchange.is_some()),
        ("routing_key", raw.routing_key.is_some()),
        ("command", raw.command.is_some()),
        ("message", raw.message.is_some()),
    ];
    for (field, present) in set {
        if present && !allowed.contains(&field) {
            doc.problem(
                &format!("{key}.{field}"),
                format!(
                    "not a key of kind {:?} (it takes {})",
                    raw.kind,
                    allowed.join(", ")
                ),
            );
            ok = false;
        }
    }
    let kind = match raw.kind.as_str() {
        "http" => {
            let method = match raw.method.as_deref().unwrap_or("POST").parse::<Method>() {
                Ok(m) => Some(m),
                Err(_) => {
                    doc.problem(&format!("{key}.method"), "not an HTTP method".to_owned());
                    None
                }
            };
            let url = match raw.url.as_deref() {
                Some(u) => template(doc, "url", u),
                None => {
                    doc.problem(
                        &format!("{key}.url"),
                        "required for kind \"http\"".to_owned(),
                    );
                    None
                }
            };
            let mut headers = Vec::new();
            for (name, value) in raw.headers.unwrap_or_default() {
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => {
                        if let Some(id) = template(doc, &format!("headers.{name}"), &value) {
                            headers.push((h, id));
                        }
                    }
                    Err(_) => {
                        doc.problem(
                            &format!("{key}.headers.{name}"),
                            "not a valid header name".to_owned(),
                        );
                        ok = false;
                    }
                }
            }
            let body = raw.body.as_deref().and_then(|b| template(doc, "body", b));
            match (method, url) {
                (Some(method), Some(url)) => Some(ActionKind::Http {
                    method,
                    url,
                    headers,
                    body,
                    timeout: raw.timeout.unwrap_or(DEFAULT_HTTP_TIMEOUT),
                    retries: raw.retries.unwrap_or(DEFAULT_RETRIES),
                }),
                _ => None,
            }
        }
        "amqp" => {
            let exchange = raw.exchange.unwrap_or_default();
            // Default: the review queue, through the default exchange.
            let routing_key = raw.routing_key.unwrap_or_else(|| review_queue.to_owned());
            if exchange.len() > 255 || routing_key.len() > 255 {
                doc.problem(
                    key,
                    "exchange and routing_key are at most 255 bytes".to_owned(),
                );
                ok = false;
            }
            let body = raw.body.as_deref().and_then(|b| template(doc, "body", b));
            Some(ActionKind::Amqp {
                exchange,
                routing_key,
                body,
            })
        }
        "exec" => match raw.command {
            Some(argv) if !argv.is_empty() => {
                let mut command = Vec::new();
                for (j, arg) in argv.iter().enumerate() {
                    if let Some(id) = template(doc, &format!("command[{j}]"), arg) {
                        command.push(id);
                    }
                }
                (command.len() == argv.len()).then_some(ActionKind::Exec {
                    command,
                    timeout: raw.timeout.unwrap_or(DEFAULT_EXEC_TIMEOUT),
                })
            }
            _ => {
                doc.problem(
                    &format!("{key}.command"),
                    "required for kind \"exec\": an argv list such as [\"/usr/local/bin/x\", \"{{ subject }}\"]"
                        .to_owned(),
                );
                None
            }
        },
        _ => {
            let message = raw
                .message
                .as_deref()
                .and_then(|m| template(doc, "message", m));
            Some(ActionKind::Log { message })
        }
    };
    if ok { kind } else { None }
}

/// Checks every template against the names templates may use and the environment, and
/// returns the `env.NAME` values they reference.
fn check_templates(
    doc: &mut Document<'_>,
    templates: &Templates,
    env: &HashMap<String, String>,
    score_names: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let mut used = BTreeMap::new();
    for (name, id) in templates.all() {
        for var in templates.undeclared(id) {
            if !TEMPLATE_NAMES.contains(&var.as_str()) {
                doc.problem(
                    &name,
                    format!(
                        "undefined name '{var}'; templates see {}",
                        TEMPLATE_NAMES.join(", ")
                    ),
                );
            }
        }
        for var in templates.env_refs(id) {
            match env.get(&var) {
                Some(value) => {
                    used.insert(var, value.clone());
                }
                None => doc.problem(
                    &name,
                    format!("env.{var}: environment variable {var} is not set"),
                ),
            }
        }
    }
    // Render each once with a sample, so unknown filters and syntax only found at render
    // surface now; undefined *fields* of the sample event are not errors here.
    let names: Vec<&str> = score_names.iter().map(String::as_str).collect();
    let (event, scores) = condition::sample_input_parts(&names);
    let context = crate::worker::template::context(std::sync::Arc::new(serde_json::json!({
        "event": event, "provider": "sample", "type": "sample.type", "subject": "sample-subject",
        "score": scores, "previous": {"score": scores, "at": "2026-01-01T00:00:00Z"},
        "rule": "sample-rule", "event_id": "sample-event", "env": used,
    })));
    for (name, id) in templates.all() {
        if let Err(reason) = templates.render_check(id, &context) {
            doc.problem(&name, reason);
        }
    }
    used
}
