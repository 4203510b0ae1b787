//! Enrichment lookups: the `[enrich.NAME]` tables of a rules file. A lookup is an HTTP
//! request (GET by default) whose URL and headers are templates over the event's names; its
//! JSON answer is what conditions read as `enrich.NAME` and templates as `{{ enrich.NAME }}`.
//! Which rules read which lookups is found at load ([`crate::worker::rules`]); the worker
//! runs a lookup for an event only when a rule that applies to the event reads it, and once
//! however many do ([`fetch`]), answers cached per rendered request for `cache_ttl`. A lookup
//! that fails after its retries does what its `on_error` says: the rules that read it record
//! the error and the others go on (`skip_rule`), or the whole event is dead-lettered naming
//! the lookup (`retry`), to be replayed once the lookup's service is back.

mod answers;
mod fetch;

pub use answers::{Answers, Failure};
pub use fetch::{answer, requests};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Document;
use crate::worker::facts::Name;
use crate::worker::http::HttpRequest;
use crate::worker::template::{TemplateId, Templates};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_RETRIES: u32 = 2;
const DEFAULT_CACHE_ENTRIES: u64 = 10_000;
/// A lookup is awaited before its event is decided: longer than this per attempt would
/// hold a batch past what a lookup is for.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_RETRIES: u32 = 10;
const MAX_CACHE_ENTRIES: u64 = 10_000_000;

/// What happens to an event whose lookup failed after its retries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnError {
    /// The rules that read the lookup record an error for the event; the others go on.
    #[default]
    SkipRule,
    /// The event is dead-lettered naming the lookup; nothing of it is acted on.
    Retry,
}

impl OnError {
    /// As written.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SkipRule => "skip_rule",
            Self::Retry => "retry",
        }
    }
}

/// `[enrich.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    kind: String,
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    retries: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    cache_ttl: Option<Duration>,
    max_cache_entries: Option<u64>,
    on_error: Option<String>,
}

/// A compiled lookup.
pub struct Lookup {
    /// Its name in `[enrich.NAME]`.
    pub name: String,
    method: Method,
    url: TemplateId,
    headers: Vec<(HeaderName, TemplateId)>,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// What a failure does to the event.
    pub on_error: OnError,
    /// Answers by rendered request, each kept for `cache_ttl`.
    cache: Option<Cache>,
}

/// A lookup's answers, kept for a while.
struct Cache {
    ttl: Duration,
    entries: moka::sync::Cache<String, Arc<Value>>,
}

impl Lookup {
    /// Renders its request from `context` (what templates see of the event).
    ///
    /// # Errors
    /// A template that fails, or a header that renders to an invalid value.
    pub fn render(
        &self,
        templates: &Templates,
        context: &minijinja::Value,
    ) -> Result<HttpRequest, String> {
        let mut request = HttpRequest {
            method: self.method.clone(),
            url: templates.render(self.url, context)?,
            headers: Vec::new(),
            body: None,
        };
        for (name, id) in &self.headers {
            let value = HeaderValue::from_str(&templates.render(*id, context)?)
                .map_err(|_| format!("header {name} renders to an invalid value"))?;
            request.headers.push((name.clone(), value));
        }
        if !request
            .headers
            .iter()
            .any(|(n, _)| n == http::header::ACCEPT)
        {
            request.headers.push((
                http::header::ACCEPT,
                HeaderValue::from_static("application/json"),
            ));
        }
        Ok(request)
    }

    /// The cached answer to `request`, if there is one still fresh.
    fn cached(&self, key: &str) -> Option<Arc<Value>> {
        self.cache.as_ref()?.entries.get(key)
    }

    /// Keeps `answer` to `request` for `cache_ttl`, when the lookup caches.
    fn keep(&self, key: String, answer: Arc<Value>) {
        if let Some(cache) = &self.cache {
            cache.entries.insert(key, answer);
        }
    }

    /// One line for `--check`.
    pub fn describe(&self) -> String {
        let cache = match &self.cache {
            Some(cache) => format!(
                "cached {} (at most {} answers)",
                humantime::format_duration(cache.ttl),
                cache.entries.policy().max_capacity().unwrap_or_default()
            ),
            None => "not cached".to_owned(),
        };
        format!(
            "http {}, timeout {}, retries {}, {cache}, on_error {}",
            self.method,
            humantime::format_duration(self.timeout),
            self.retries,
            self.on_error.as_str()
        )
    }
}

/// Which rendered requests share an answer: the method, URL and headers.
fn cache_key(request: &HttpRequest) -> String {
    let mut key = format!("{} {}", request.method, request.url);
    for (name, value) in &request.headers {
        key.push('\n');
        key.push_str(name.as_str());
        key.push(':');
        key.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
    key
}

/// Names a lookup's templates cannot use: it runs once per event, before any rule, so there
/// is no firing rule, no other lookup's answer, and no trip or watch.
const NOT_IN_LOOKUPS: [Name; 6] = [
    Name::Rule,
    Name::Enrich,
    Name::Count,
    Name::Per,
    Name::Subjects,
    Name::Watch,
];

/// Compiles every `[enrich.*]` of `doc`, their templates into `templates`, reporting each
/// problem with its key.
pub(crate) fn compile(doc: &mut Document<'_>, templates: &mut Templates) -> Vec<Lookup> {
    let raw: Option<BTreeMap<String, ::config::Value>> = doc.section("enrich");
    let mut lookups = Vec::new();
    for (name, table) in raw.unwrap_or_default() {
        let key = format!("enrich.{name}");
        let Some(table) = doc.deserialize_at::<Table>(&key, table) else {
            continue;
        };
        if let Some(lookup) = compile_one(doc, &key, name, table, templates) {
            lookups.push(lookup);
        }
    }
    lookups
}

fn compile_one(
    doc: &mut Document<'_>,
    key: &str,
    name: String,
    table: Table,
    templates: &mut Templates,
) -> Option<Lookup> {
    let mut ok = true;
    let mut problem = |doc: &mut Document<'_>, field: &str, reason: String| {
        doc.problem(&format!("{key}.{field}"), reason);
        ok = false;
    };
    if table.kind != "http" {
        problem(
            doc,
            "kind",
            format!("unknown kind {:?}; expected http", table.kind),
        );
    }
    let method = match table.method.as_deref().unwrap_or("GET").parse::<Method>() {
        Ok(method) => method,
        Err(_) => {
            problem(doc, "method", "not an HTTP method".to_owned());
            Method::GET
        }
    };
    let timeout = table.timeout.unwrap_or(DEFAULT_TIMEOUT);
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        problem(
            doc,
            "timeout",
            format!(
                "must be more than 0 and at most {} (the event waits for it)",
                humantime::format_duration(MAX_TIMEOUT)
            ),
        );
    }
    let on_error = match table.on_error.as_deref() {
        None | Some("skip_rule") => OnError::SkipRule,
        Some("retry") => OnError::Retry,
        Some(other) => {
            problem(
                doc,
                "on_error",
                format!("unknown {other:?}; expected skip_rule or retry"),
            );
            OnError::SkipRule
        }
    };
    let retries = table.retries.unwrap_or(DEFAULT_RETRIES);
    if retries > MAX_RETRIES {
        problem(doc, "retries", format!("at most {MAX_RETRIES}"));
    }
    let entries = table.max_cache_entries.unwrap_or(DEFAULT_CACHE_ENTRIES);
    if entries == 0 || entries > MAX_CACHE_ENTRIES {
        problem(
            doc,
            "max_cache_entries",
            format!("must be 1 to {MAX_CACHE_ENTRIES}"),
        );
    }
    if table.max_cache_entries.is_some() && table.cache_ttl.is_none() {
        problem(
            doc,
            "max_cache_entries",
            "caches nothing without cache_ttl (cache_ttl = \"5m\")".to_owned(),
        );
    }
    let mut ids = Vec::new();
    let url = add_template(doc, templates, &format!("{key}.url"), &table.url, &mut ids);
    let mut headers = Vec::new();
    for (header, value) in &table.headers {
        let field = format!("{key}.headers.{header}");
        match HeaderName::from_bytes(header.as_bytes()) {
            Ok(h) => {
                if let Some(id) = add_template(doc, templates, &field, value, &mut ids) {
                    headers.push((h, id));
                }
            }
            Err(_) => {
                doc.problem(&field, "not a valid header name".to_owned());
                ok = false;
            }
        }
    }
    if ids.len() != table.headers.len() + 1 {
        ok = false;
    }
    for (field, id) in ids {
        for var in templates.undeclared(id) {
            if NOT_IN_LOOKUPS.iter().any(|n| n.as_str() == var) {
                doc.problem(
                    &field,
                    format!(
                        "a lookup's templates cannot use '{var}': it runs once per event before \
                         any rule, and sees event, provider, type, subject, score, previous, \
                         event_id and env"
                    ),
                );
                ok = false;
            }
        }
    }
    let cache = table
        .cache_ttl
        .filter(|ttl| !ttl.is_zero())
        .map(|ttl| Cache {
            ttl,
            // LRU, not moka's default admission policy, which turns new keys away when full: a
            // lookup cache is for the subjects being scored now.
            entries: moka::sync::Cache::builder()
                .max_capacity(entries)
                .time_to_live(ttl)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
        });
    match (ok, url) {
        (true, Some(url)) => Some(Lookup {
            name,
            method,
            url,
            headers,
            timeout,
            retries,
            on_error,
            cache,
        }),
        _ => None,
    }
}

fn add_template(
    doc: &mut Document<'_>,
    templates: &mut Templates,
    field: &str,
    source: &str,
    ids: &mut Vec<(String, TemplateId)>,
) -> Option<TemplateId> {
    match templates.add(field, source) {
        Ok(id) => {
            ids.push((field.to_owned(), id));
            Some(id)
        }
        Err(reason) => {
            doc.problem(field, reason);
            None
        }
    }
}
