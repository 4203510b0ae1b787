//! Actions: what a firing rule does. Each kind (`http`, `amqp`, `exec`, `log`) is a file of
//! its own that compiles its `[actions.NAME]` table, renders it per firing into a
//! [`Request`] (exactly what it would send, which `hookwarden rules test` prints) and sends
//! it; [`KINDS`] registers them. [`Runner::run`] skips an action whose done-mark says it completed
//! before, sends it, and hands the done-mark to the writer ([`crate::worker::marks`]).

mod amqp;
mod exec;
mod http;
mod log;
mod pace;

pub use pace::Pace;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use lapin::Channel;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::Instrument as _;

use crate::config::Document;
use crate::telemetry::WorkerMetrics;
use crate::telemetry::trace::{self, Parent, TraceContext};
use crate::worker::facts::Facts;
use crate::worker::marks::DoneMarks;
use crate::worker::template::{TemplateId, Templates};

/// Every kind of action, by the name `kind = "…"` gives it. Adding a kind is a file of its
/// own and one line here.
pub const KINDS: &[Registration] = &[http::KIND, amqp::KIND, exec::KIND, log::KIND];

/// How a kind of action is compiled.
pub struct Registration {
    /// Its `kind = "…"`.
    pub name: &'static str,
    /// The keys its table takes besides `kind`.
    pub keys: &'static [&'static str],
    /// Compiles a table whose keys are all among `keys`; `None` after reporting problems.
    pub compile: fn(&mut Compiler<'_, '_>) -> Option<Box<dyn Kind>>,
}

/// A compiled action of some kind.
pub trait Kind: Send + Sync {
    /// Its registered name (`http`, …), for metrics, records and `rules test`.
    fn name(&self) -> &'static str;
    /// Renders it for one firing.
    ///
    /// # Errors
    /// A template that fails to render, or renders to something the kind cannot send.
    fn render(&self, firing: &Firing<'_>) -> Result<Box<dyn Request>, String>;
}

/// An action rendered for one firing: exactly what it sends, and how.
pub trait Request: Send + Sync + fmt::Debug {
    /// What it sends, kind-specific fields as JSON (`hookwarden rules test` prints this).
    fn describe(&self) -> Value;
    /// Sends it, with the kind's own retries, as the span whose context is `trace`: what
    /// reaches a target (`traceparent` of `http` and `amqp`, `TRACEPARENT` of `exec`) names
    /// that span as its parent.
    fn send<'a>(&'a self, with: &'a Runner, trace: &'a TraceContext) -> BoxFuture<'a, Sent>;
}

/// What sending a request came to.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    /// Attempts made.
    pub attempts: u32,
    /// Why it failed; `None` when its target took it.
    pub error: Option<String>,
    /// Kind-specific detail: HTTP status, exit code and output.
    pub detail: Value,
}

/// Runs actions; shared by every subject handled concurrently.
pub struct Runner {
    /// Pooled HTTP client.
    pub http: reqwest::Client,
    /// Confirm-mode channel for `amqp` actions.
    pub channel: Channel,
    /// Done-marks of completed actions.
    pub marks: DoneMarks,
    /// Where waits for an action's pace are counted.
    pub metrics: Arc<WorkerMetrics>,
}

/// One firing of a rule on an event, as an action's templates see it.
pub struct Firing<'a> {
    /// The rules file's templates.
    pub templates: &'a Templates,
    /// What the event shows rules.
    pub facts: &'a Facts<'a>,
    /// The firing rule.
    pub rule: &'a str,
    /// The action's idempotency key.
    pub key: &'a str,
    context: minijinja::Value,
}

impl<'a> Firing<'a> {
    /// What the templates of rule `rule`'s actions see on the event of `facts`: built once
    /// per firing rule and shared by its actions (a clone is a reference count).
    pub fn context(facts: &Facts<'_>, rule: &str) -> minijinja::Value {
        crate::worker::template::context(std::sync::Arc::new(facts.template_context(rule)))
    }

    /// The firing of `rule` on the event of `facts`, for the action keyed `key`, its
    /// templates seeing `context` ([`Firing::context`]).
    pub fn new(
        templates: &'a Templates,
        facts: &'a Facts<'a>,
        rule: &'a str,
        key: &'a str,
        context: minijinja::Value,
    ) -> Self {
        Self {
            templates,
            facts,
            rule,
            key,
            context,
        }
    }

    /// Renders template `id`.
    ///
    /// # Errors
    /// Why it failed, naming the template.
    pub fn render(&self, id: TemplateId) -> Result<String, String> {
        self.templates.render(id, &self.context)
    }
}

/// Compiling one `[actions.NAME]` table.
pub struct Compiler<'d, 'a> {
    doc: &'d mut Document<'a>,
    /// `actions.NAME`.
    key: String,
    table: ::config::Value,
    templates: &'d mut Templates,
    /// `[amqp] review_queue`, the default target of `amqp` actions.
    pub review_queue: &'d str,
}

impl Compiler<'_, '_> {
    /// The table as the kind's own type; `None` after reporting why not.
    pub fn table<T: for<'de> Deserialize<'de>>(&mut self) -> Option<T> {
        self.doc.deserialize_at(&self.key, self.table.clone())
    }

    /// Reports a problem at `field` of the table (`""`: the table itself).
    pub fn problem(&mut self, field: &str, reason: String) {
        let key = match field {
            "" => self.key.clone(),
            field => format!("{}.{field}", self.key),
        };
        self.doc.problem(&key, reason);
    }

    /// Compiles the template at `field`; `None` after reporting why not.
    pub fn template(&mut self, field: &str, source: &str) -> Option<TemplateId> {
        let name = format!("{}.{field}", self.key);
        match self.templates.add(&name, source) {
            Ok(id) => Some(id),
            Err(reason) => {
                self.doc.problem(&name, reason);
                None
            }
        }
    }
}

/// Keys every kind takes: what it is, and its pace.
const COMMON_KEYS: [&str; 3] = ["kind", "rate", "concurrency"];

/// Compiles the table `key` (`actions.NAME`) into its kind and pace; `None` after reporting
/// its problems.
pub(crate) fn compile(
    doc: &mut Document<'_>,
    key: &str,
    table: ::config::Value,
    templates: &mut Templates,
    review_queue: &str,
) -> Option<(Box<dyn Kind>, Pace)> {
    let fields = match table.clone().into_table() {
        Ok(fields) => fields,
        Err(_) => {
            doc.problem(key, "must be a table ([actions.NAME])".to_owned());
            return None;
        }
    };
    let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
    let kind = match fields.get("kind").map(|k| k.clone().into_string()) {
        Some(Ok(kind)) => kind,
        Some(Err(_)) => {
            doc.problem(&format!("{key}.kind"), "must be a string".to_owned());
            return None;
        }
        None => {
            doc.problem(key, "missing field `kind`".to_owned());
            return None;
        }
    };
    let Some(registration) = KINDS.iter().find(|k| k.name == kind) else {
        doc.problem(
            &format!("{key}.kind"),
            format!(
                "unknown kind {kind:?}; expected one of {}",
                names.join(", ")
            ),
        );
        return None;
    };
    let mut foreign: Vec<&String> = fields
        .keys()
        .filter(|f| !COMMON_KEYS.contains(&f.as_str()) && !registration.keys.contains(&f.as_str()))
        .collect();
    foreign.sort_by_key(|f| doc.offset_of(&format!("{key}.{f}")));
    for field in &foreign {
        doc.problem(
            &format!("{key}.{field}"),
            format!(
                "not a key of kind {kind:?} (it takes {}, and rate, concurrency)",
                registration.keys.join(", ")
            ),
        );
    }
    let mut compiler = Compiler {
        doc,
        key: key.to_owned(),
        table,
        templates,
        review_queue,
    };
    let pace = Pace::compile(
        &mut compiler,
        fields.get("rate").cloned(),
        fields.get("concurrency").cloned(),
    );
    let compiled = (registration.compile)(&mut compiler)?;
    let pace = pace?;
    foreign.is_empty().then_some((compiled, pace))
}

/// How running one action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionOutcome {
    /// It ran and its target took it.
    Ok,
    /// Not run: its done-mark exists (a redelivery or replay of an event already acted on).
    Skipped,
    /// It failed after its retries (or could not be rendered): the event dead-letters.
    Failed,
}

impl ActionOutcome {
    /// The label in metrics and decision records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        }
    }
}

/// What running one action came to.
#[derive(Debug, Clone)]
pub struct ActionResult {
    /// Action name.
    pub action: String,
    /// How it ended.
    pub outcome: ActionOutcome,
    /// Attempts made.
    pub attempts: u32,
    /// Why it failed.
    pub error: Option<String>,
    /// Time taken, milliseconds.
    pub latency_ms: u64,
    /// Kind-specific detail: HTTP status, exit code and output.
    pub detail: Value,
}

impl ActionResult {
    /// For the decision record.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "action": self.action, "outcome": self.outcome.as_str(), "attempts": self.attempts,
            "error": self.error, "latency_ms": self.latency_ms, "detail": self.detail,
        })
    }
}

/// What `request` sends, for a decision record that people read (the web view shows it):
/// every value of `secrets` (the `env.NAME` values templates use) written `***` wherever it
/// appears, also as JSON escapes it; every header value hidden but those of headers that
/// never carry credentials; and in the URL the password and the values of query parameters
/// named like credentials (`key`, `token`, `secret`, `sig`, `password`, `auth`).
pub fn masked(
    request: &dyn Request,
    secrets: &std::collections::BTreeMap<String, String>,
) -> Value {
    fn walk(value: &mut Value, secrets: &[String]) {
        match value {
            Value::String(text) => {
                for secret in secrets {
                    if text.contains(secret.as_str()) {
                        *text = text.replace(secret.as_str(), "***");
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| walk(item, secrets)),
            Value::Object(map) => map.values_mut().for_each(|item| walk(item, secrets)),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    let mut forms: Vec<String> = Vec::new();
    for secret in secrets.values().filter(|s| !s.is_empty()) {
        forms.push(secret.clone());
        // As a JSON string's body carries it: `"` and `\` escaped.
        let escaped = serde_json::to_string(secret).unwrap_or_default();
        let escaped = escaped.trim_matches('"');
        if escaped != secret {
            forms.push(escaped.to_owned());
        }
    }
    // Longest first: a secret that contains another is masked whole.
    forms.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut shown = request.describe();
    if !forms.is_empty() {
        walk(&mut shown, &forms);
    }
    if let Some(Value::Array(headers)) = shown.get_mut("headers") {
        for header in headers.iter_mut() {
            // A header is written `[name, value]`.
            if let Some([Value::String(name), value]) = header.as_array_mut().map(Vec::as_mut_slice)
                && !PLAIN_HEADERS.contains(&name.to_ascii_lowercase().as_str())
            {
                *value = Value::from("***");
            }
        }
    }
    if let Some(Value::String(url)) = shown.get_mut("url") {
        *url = masked_url(url);
    }
    shown
}

/// Headers shown as they are: none of them carries a credential.
const PLAIN_HEADERS: &[&str] = &[
    "accept",
    "accept-encoding",
    "content-encoding",
    "content-language",
    "content-type",
    "idempotency-key",
    "traceparent",
    "tracestate",
    "user-agent",
    "x-request-id",
];

/// `url` with its password and credential-like query values as `***`.
fn masked_url(url: &str) -> String {
    // Most URLs carry neither: not parsed again for each firing.
    if !url.contains(['@', '?']) {
        return url.to_owned();
    }
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return url.to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    let credential = |name: &str| {
        let name = name.to_ascii_lowercase();
        ["key", "token", "secret", "sig", "password", "auth"]
            .iter()
            .any(|c| name.contains(c))
    };
    if parsed.query_pairs().any(|(name, _)| credential(&name)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if credential(&name) {
                    "***".into()
                } else {
                    value
                };
                (name.into_owned(), value.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// `Idempotency-Key` of an action: the same for every delivery of one event, rule and action.
pub fn idempotency_key(event_key: &str, rule: &str, action: &str) -> String {
    let mut h = Sha256::new();
    for part in [event_key, rule, action] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

impl Runner {
    /// Runs a planned action: skipped when its key is among `done` (the batch's done-marks, read
    /// once up front), failed when it could not be rendered, else sent in an `action` span
    /// that is a child of `parent`, once `pace` gives it a turn; a success leaves its
    /// done-mark with the writer. The time taken counts from the turn, the wait apart.
    pub async fn run(
        &self,
        planned: &crate::worker::decide::PlannedAction,
        done: &HashSet<String>,
        parent: Parent<'_>,
        pace: &Pace,
    ) -> ActionResult {
        let mut started = Instant::now();
        let mut result = ActionResult {
            action: planned.action.clone(),
            outcome: ActionOutcome::Failed,
            attempts: 0,
            error: None,
            latency_ms: 0,
            detail: Value::Null,
        };
        if done.contains(&planned.key) {
            result.outcome = ActionOutcome::Skipped;
            return result;
        }
        let sent = match &planned.request {
            Ok(request) => {
                let _turn = if pace.is_paced() {
                    let turn = {
                        // Counted down on drop too: a wait cut short must not stay counted.
                        let _waiting = Waiting::new(self.metrics.action_waiting(&planned.action));
                        pace.turn().await
                    };
                    self.metrics.action_waited(turn.waited);
                    started = Instant::now();
                    Some(turn)
                } else {
                    None
                };
                let span = match trace::exporting() {
                    true => tracing::info_span!(
                        "action",
                        action = %planned.action,
                        trace_id = tracing::field::Empty
                    ),
                    false => tracing::Span::none(),
                };
                let trace = trace::enter(&span, parent);
                request.send(self, &trace).instrument(span).await
            }
            Err(error) => Sent {
                error: Some(error.clone()),
                ..Sent::default()
            },
        };
        result.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        result.attempts = sent.attempts;
        result.detail = sent.detail;
        match sent.error {
            None => {
                // Written behind us; the batch flushes the marks before it commits.
                self.marks.mark(planned.key.clone());
                result.outcome = ActionOutcome::Ok;
            }
            Some(error) => result.error = Some(error),
        }
        result
    }
}

/// One firing counted in `hookwarden_worker_action_waiting` while it lives.
struct Waiting(prometheus_client::metrics::gauge::Gauge);

impl Waiting {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that describes itself as given.
    #[derive(Debug)]
    struct Described(Value);

    impl Request for Described {
        fn describe(&self) -> Value {
            self.0.clone()
        }
        fn send<'a>(&'a self, _: &'a Runner, _: &'a TraceContext) -> BoxFuture<'a, Sent> {
            Box::pin(async { Sent::default() })
        }
    }

    #[test]
    fn a_recorded_request_shows_no_credential() {
        let secrets = std::collections::BTreeMap::from([
            ("TOKEN".to_owned(), "s3cr\"et".to_owned()),
            ("EMPTY".to_owned(), String::new()),
        ]);
        let request = Described(serde_json::json!({
            "method": "POST",
            "url": "https://bot:pa55@svc.example/hook?account=usr_1&api_key=k-123&Signature=x",
            "headers": [["Content-Type", "application/json"], ["X-Auth-Token", "t-1"],
                        ["Authorization", "Bearer abc"], ["Idempotency-Key", "d923"]],
            "body": "{\"token\": \"s3cr\\\"et\", \"raw\": \"s3cr\"et\"}",
        }));
        let shown = masked(&request, &secrets);
        assert_eq!(
            shown["url"],
            "https://bot:***@svc.example/hook?account=usr_1&api_key=***&Signature=***"
        );
        assert_eq!(
            shown["headers"],
            serde_json::json!([
                ["Content-Type", "application/json"],
                ["X-Auth-Token", "***"],
                ["Authorization", "***"],
                ["Idempotency-Key", "d923"]
            ])
        );
        assert_eq!(shown["body"], "{\"token\": \"***\", \"raw\": \"***\"}");
        assert_eq!(shown["method"], "POST");
    }

    #[test]
    fn idempotency_keys_are_stable_and_distinct() {
        let a = idempotency_key("dregs/e1", "quarantine", "http");
        assert_eq!(a, idempotency_key("dregs/e1", "quarantine", "http"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, idempotency_key("dregs/e1", "quarantine", "review"));
        assert_ne!(
            idempotency_key("a", "bc", "d"),
            idempotency_key("ab", "c", "d")
        );
    }
}
