//! Running an event's lookups: each request rendered from what templates see of the event,
//! answered from the lookup's cache or fetched (with its timeout and retries, the answer at
//! most [`MAX_ANSWER_BYTES`] of JSON), all of one event's lookups at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;

use super::{Answers, Failure, Lookup, cache_key};
use crate::telemetry::WorkerMetrics;
use crate::telemetry::trace::TraceContext;
use crate::worker::facts::Facts;
use crate::worker::http::{self, HttpRequest, RetryPolicy};
use crate::worker::template::{self, Templates};

/// The largest answer a lookup takes; a longer one is a failure, not a truncation.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Renders the requests of the lookups `needed` (indexes into `lookups`) for the event of
/// `facts`: each lookup's index, and its request or why it could not be rendered.
pub fn requests(
    lookups: &[Lookup],
    templates: &Templates,
    needed: &[usize],
    facts: &Facts<'_>,
) -> Vec<(usize, Result<HttpRequest, String>)> {
    if needed.is_empty() {
        return Vec::new();
    }
    let context = template::context(Arc::new(facts.template_context("")));
    needed
        .iter()
        .map(|&i| (i, lookups[i].render(templates, &context)))
        .collect()
}

/// Answers `requests` ([`requests`]) concurrently, each from its lookup's cache or its
/// service; a request carries the delivery's `traceparent`.
pub async fn answer(
    lookups: &[Lookup],
    requests: Vec<(usize, Result<HttpRequest, String>)>,
    client: &reqwest::Client,
    metrics: &WorkerMetrics,
    trace: &TraceContext,
) -> Answers {
    let answered = join_all(requests.into_iter().map(|(i, request)| async move {
        let lookup = &lookups[i];
        let result = match request {
            Ok(request) => one(lookup, &request, client, metrics, trace).await,
            Err(reason) => {
                metrics.lookup(&lookup.name, "failed", None);
                Err(format!("cannot render: {reason}"))
            }
        };
        (lookup, result)
    }))
    .await;
    let mut answers = Answers::default();
    for (lookup, result) in answered {
        match result {
            Ok((value, cached)) => {
                answers.values.insert(lookup.name.clone(), (*value).clone());
                answers.cached.insert(lookup.name.clone(), cached);
            }
            Err(reason) => {
                tracing::warn!(lookup = %lookup.name, error = %reason, on_error = lookup.on_error.as_str(), "lookup failed");
                answers.failed.insert(
                    lookup.name.clone(),
                    Failure {
                        reason,
                        on_error: lookup.on_error,
                    },
                );
            }
        }
    }
    answers
}

/// One lookup's answer to `request`, and whether it came from the cache.
async fn one(
    lookup: &Lookup,
    request: &HttpRequest,
    client: &reqwest::Client,
    metrics: &WorkerMetrics,
    trace: &TraceContext,
) -> Result<(Arc<Value>, bool), String> {
    // Keyed before the trace headers are added: they differ for every delivery.
    let key = cache_key(request);
    if let Some(value) = lookup.cached(&key) {
        metrics.lookup(&lookup.name, "cached", None);
        return Ok((value, true));
    }
    let started = Instant::now();
    let policy = RetryPolicy {
        retries: lookup.retries,
        base: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
    let request = http::traced(request, trace);
    let (_, body) = http::fetch(client, &request, lookup.timeout, policy, MAX_ANSWER_BYTES).await;
    let answer = body.and_then(|bytes| {
        serde_json::from_slice::<Value>(&bytes).map_err(|err| format!("answer is not JSON: {err}"))
    });
    let elapsed = Some(started.elapsed());
    match answer {
        Ok(value) => {
            metrics.lookup(&lookup.name, "answered", elapsed);
            let value = Arc::new(value);
            lookup.keep(key, value.clone());
            Ok((value, false))
        }
        Err(reason) => {
            metrics.lookup(&lookup.name, "failed", elapsed);
            Err(reason)
        }
    }
}
