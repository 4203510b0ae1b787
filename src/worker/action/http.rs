//! `kind = "http"`: a request whose method, URL, headers and body are templates; success is
//! a 2xx, retried with backoff ([`crate::worker::http`]). The target dedupes repeats of one
//! firing by the `Idempotency-Key` header.

use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;
use serde_json::Value;

use super::{Compiler, Firing, Kind, Registration, Request, Runner, Sent};
use crate::telemetry::trace::TraceContext;
use crate::worker::http::{self as send, HttpRequest, RetryPolicy};
use crate::worker::template::TemplateId;

pub(super) const KIND: Registration = Registration {
    name: "http",
    keys: &["method", "url", "headers", "body", "timeout", "retries"],
    compile,
};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: u32 = 3;

#[derive(Deserialize)]
struct Table {
    method: Option<String>,
    url: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    body: Option<String>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    retries: Option<u32>,
}

struct Http {
    method: Method,
    url: TemplateId,
    headers: Vec<(HeaderName, TemplateId)>,
    body: Option<TemplateId>,
    /// Per attempt.
    timeout: Duration,
    /// Attempts after the first.
    retries: u32,
}

fn compile(c: &mut Compiler<'_, '_>) -> Option<Box<dyn Kind>> {
    let table: Table = c.table()?;
    let method = match table.method.as_deref().unwrap_or("POST").parse::<Method>() {
        Ok(m) => Some(m),
        Err(_) => {
            c.problem("method", "not an HTTP method".to_owned());
            None
        }
    };
    let url = match table.url.as_deref() {
        Some(u) => c.template("url", u),
        None => {
            c.problem("url", "required for kind \"http\"".to_owned());
            None
        }
    };
    let mut ok = true;
    let mut headers = Vec::new();
    for (name, value) in &table.headers {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => {
                if let Some(id) = c.template(&format!("headers.{name}"), value) {
                    headers.push((h, id));
                }
            }
            Err(_) => {
                c.problem(
                    &format!("headers.{name}"),
                    "not a valid header name".to_owned(),
                );
                ok = false;
            }
        }
    }
    let body = table.body.as_deref().and_then(|b| c.template("body", b));
    match (ok, method, url) {
        (true, Some(method), Some(url)) => Some(Box::new(Http {
            method,
            url,
            headers,
            body,
            timeout: table.timeout.unwrap_or(DEFAULT_TIMEOUT),
            retries: table.retries.unwrap_or(DEFAULT_RETRIES),
        })),
        _ => None,
    }
}

impl Kind for Http {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn render(&self, firing: &Firing<'_>) -> Result<Box<dyn Request>, String> {
        let mut request = HttpRequest {
            method: self.method.clone(),
            url: firing.render(self.url)?,
            headers: Vec::new(),
            body: self
                .body
                .map(|b| firing.render(b))
                .transpose()?
                .map(Bytes::from),
        };
        for (name, id) in &self.headers {
            let value = HeaderValue::from_str(&firing.render(*id)?)
                .map_err(|_| format!("header {name} renders to an invalid value"))?;
            request.headers.push((name.clone(), value));
        }
        if request.body.is_some()
            && !self
                .headers
                .iter()
                .any(|(n, _)| n == http::header::CONTENT_TYPE)
        {
            request.headers.push((
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ));
        }
        // The target dedupes repeats of one event, rule and action with this.
        request.headers.push((
            HeaderName::from_static("idempotency-key"),
            HeaderValue::from_str(firing.key).map_err(|e| e.to_string())?,
        ));
        Ok(Box::new(Rendered {
            request,
            timeout: self.timeout,
            retries: self.retries,
        }))
    }
}

/// The request, with `Content-Type` (when there is a body) and `Idempotency-Key` added.
#[derive(Debug)]
struct Rendered {
    request: HttpRequest,
    timeout: Duration,
    retries: u32,
}

impl Request for Rendered {
    fn describe(&self) -> Value {
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        serde_json::json!({
            "method": self.request.method.as_str(),
            "url": self.request.url,
            "headers": self
                .request
                .headers
                .iter()
                .map(|(n, v)| vec![n.as_str().to_owned(), lossy(v.as_bytes())])
                .collect::<Vec<_>>(),
            "body": self.request.body.as_deref().map(lossy),
            "timeout": humantime::format_duration(self.timeout).to_string(),
            "retries": self.retries,
        })
    }

    fn send<'a>(&'a self, with: &'a Runner, trace: &'a TraceContext) -> BoxFuture<'a, Sent> {
        async move {
            let request = send::traced(&self.request, trace);
            let policy = RetryPolicy {
                retries: self.retries,
                base: Duration::from_millis(200),
                max: Duration::from_secs(10),
            };
            let outcome = send::send(&with.http, &request, self.timeout, policy).await;
            let error = (!outcome.ok).then(|| {
                outcome.error.clone().unwrap_or_else(|| {
                    format!(
                        "HTTP {}",
                        outcome.status.map(|s| s.to_string()).unwrap_or_default()
                    )
                })
            });
            Sent {
                attempts: outcome.attempts,
                error,
                detail: serde_json::json!({ "status": outcome.status, "response": outcome.response_snippet }),
            }
        }
        .boxed()
    }
}
