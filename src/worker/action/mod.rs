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
/// appears, also as a JSON string or a URL carries it; every header value hidden but those
/// of headers that never carry credentials; in URLs the user information, the fragment and
/// the values of query parameters named like credentials; in a command's arguments the
/// URLs, `--option=value`s named like credentials, and header lines.
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
        // As templates may have written it: itself, inside a JSON string (`tojson` also
        // escapes `&'<>`), or URL-encoded (`urlencode`, or a form).
        let json = serde_json::to_string(secret).unwrap_or_default();
        let json = json.trim_matches('"').to_owned();
        let html_json = json
            .replace('&', "\\u0026")
            .replace('\'', "\\u0027")
            .replace('<', "\\u003c")
            .replace('>', "\\u003e");
        let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let percent = form.replace('+', "%20");
        for candidate in [secret.clone(), json, html_json, form, percent] {
            if !forms.contains(&candidate) {
                forms.push(candidate);
            }
        }
    }
    // Longest first: a secret that contains another is masked whole.
    forms.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut shown = request.describe();
    // URLs first, while they still parse.
    if let Some(Value::String(url)) = shown.get_mut("url") {
        *url = masked_url(url);
    }
    if let Some(Value::Array(argv)) = shown.get_mut("argv") {
        for arg in argv.iter_mut() {
            if let Value::String(text) = arg {
                *text = masked_arg(text);
            }
        }
    }
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

/// Whether a parameter's or option's name says it holds a credential: one of its words
/// (split at `_`, `-`, `.`) is `key`, `token`, `secret`, `password`, … (`api_key` and
/// `access-token` are; `monkey` and `author` are not).
fn names_credential(name: &str) -> bool {
    const WORDS: &[&str] = &[
        "key",
        "apikey",
        "token",
        "secret",
        "sig",
        "signature",
        "password",
        "passwd",
        "pwd",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "accesstoken",
    ];
    name.to_ascii_lowercase()
        .split(['_', '-', '.'])
        .any(|word| WORDS.contains(&word))
}

/// `url` with its user information, fragment and credential-named query values as `***`;
/// the rest as written.
fn masked_url(url: &str) -> String {
    // Most URLs carry none of them: not parsed again for each firing.
    if !url.contains(['@', '?', '#']) {
        return url.to_owned();
    }
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return url.to_owned();
    };
    if !parsed.username().is_empty() {
        let _ = parsed.set_username("***");
    }
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.fragment().is_some_and(|f| !f.is_empty()) {
        parsed.set_fragment(Some("***"));
    }
    if let Some(query) = parsed.query().map(str::to_owned) {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if names_credential(&decoded(name)) => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        parsed.set_query(Some(&masked.join("&")));
    }
    parsed.to_string()
}

/// A query parameter's name decoded.
fn decoded(name: &str) -> String {
    form_urlencoded::parse(name.as_bytes())
        .next()
        .map(|(name, _)| name.into_owned())
        .unwrap_or_default()
}

/// A command's argument with what it says of credentials as `***`: a URL's (as
/// [`masked_url`]), an `--option=value` whose option names one, a `Name: value` header that
/// is not a plain one.
fn masked_arg(arg: &str) -> String {
    if arg.contains("://") {
        return masked_url(arg);
    }
    if let Some((option, _)) = arg.split_once('=')
        && option.starts_with('-')
        && names_credential(option.trim_start_matches('-'))
    {
        return format!("{option}=***");
    }
    if let Some((name, _)) = arg.split_once(": ")
        && !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !PLAIN_HEADERS.contains(&name.to_ascii_lowercase().as_str())
    {
        return format!("{name}: ***");
    }
    arg.to_owned()
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
            "https://***:***@svc.example/hook?account=usr_1&api_key=***&Signature=***"
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
    fn encoded_secrets_urls_and_command_arguments_are_masked_too() {
        let secrets = std::collections::BTreeMap::from([("T".to_owned(), "a+b/c=<&'>".to_owned())]);
        let request = Described(serde_json::json!({
            "url": "https://TOKEN@svc.example/x?monkey=1&author=me&path=a/b~c#access_token=z",
            "body": "t=a%2Bb%2Fc%3D%3C%26%27%3E&u=a%2Bb%2Fc%3D%3C%26%27%3E&j=\\u003c&raw=a+b/c=<&'>",
            "argv": ["notify", "--api-key=k1", "--verbose", "Authorization: Bearer x",
                     "Content-Type: text/plain", "https://u:p@h.example/"],
        }));
        let shown = masked(&request, &secrets);
        assert_eq!(
            shown["url"],
            "https://***@svc.example/x?monkey=1&author=me&path=a/b~c#***"
        );
        assert_eq!(shown["body"], "t=***&u=***&j=\\u003c&raw=***");
        assert_eq!(
            shown["argv"],
            serde_json::json!([
                "notify",
                "--api-key=***",
                "--verbose",
                "Authorization: ***",
                "Content-Type: text/plain",
                "https://***:***@h.example/"
            ])
        );
        let json_form = Described(serde_json::json!({
            "body": "{\"t\": \"a+b/c=\\u003c\\u0026\\u0027\\u003e\"}",
        }));
        assert_eq!(masked(&json_form, &secrets)["body"], "{\"t\": \"***\"}");
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
