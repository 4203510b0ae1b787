//! Running one action for one rule firing: render its templates, skip it when its done-mark
//! says it completed before, run it (HTTP with retries, confirmed AMQP publish, command, log
//! line), and mark it done at once when it succeeds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::broker::publisher::publish_confirmed;
use crate::config::worker::{ActionKind, WorkerConfig};
use crate::worker::decide::Event;
use crate::worker::state::Store;
use crate::worker::{exec, http as http_action};

/// Largest captured stdout/stderr of an `exec` action, per stream.
const EXEC_OUTPUT: usize = 4096;
/// Longest wait for the broker's confirm of an `amqp` action.
const AMQP_TIMEOUT: Duration = Duration::from_secs(5);

/// What running one action came to.
#[derive(Debug, Clone)]
pub struct ActionResult {
    /// Action name.
    pub action: String,
    /// `ok`, `failed`, or `skipped` (its done-mark exists).
    pub outcome: &'static str,
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
            "action": self.action, "outcome": self.outcome, "attempts": self.attempts,
            "error": self.error, "latency_ms": self.latency_ms, "detail": self.detail,
        })
    }
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

/// Runs actions; shared by every subject handled concurrently.
pub struct Runner {
    /// Pooled HTTP client.
    pub http: reqwest::Client,
    /// Confirm-mode channel for `amqp` actions.
    pub channel: Channel,
    /// Done-marks.
    pub store: Arc<dyn Store>,
}

impl Runner {
    /// Runs action `index` of `config` for rule `rule` on `event`, with template `context`.
    pub async fn run(
        &self,
        config: &WorkerConfig,
        index: usize,
        rule: &str,
        event: &Event,
        context: &Value,
    ) -> ActionResult {
        let action = &config.actions[index];
        let key = idempotency_key(&event.key, rule, &action.name);
        let started = Instant::now();
        let mut result = ActionResult {
            action: action.name.clone(),
            outcome: "failed",
            attempts: 0,
            error: None,
            latency_ms: 0,
            detail: Value::Null,
        };
        let store = self.store.clone();
        let k = key.clone();
        match tokio::task::spawn_blocking(move || store.is_done(&k)).await {
            Ok(Ok(true)) => {
                result.outcome = "skipped";
                return result;
            }
            Ok(Ok(false)) => {}
            Ok(Err(err)) => {
                result.error = Some(err.to_string());
                return result;
            }
            Err(err) => {
                result.error = Some(err.to_string());
                return result;
            }
        }
        let ctx = crate::worker::template::context(Arc::new(context.clone()));
        let outcome = self
            .execute(config, &action.kind, &key, event, &ctx, context)
            .await;
        result.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match outcome {
            Ok((attempts, detail)) => {
                result.attempts = attempts;
                result.detail = detail;
                let store = self.store.clone();
                match tokio::task::spawn_blocking(move || store.mark_done(&key)).await {
                    Ok(Ok(())) => result.outcome = "ok",
                    Ok(Err(err)) => result.error = Some(format!("completed, but {err}")),
                    Err(err) => result.error = Some(format!("completed, but {err}")),
                }
            }
            Err((attempts, error, detail)) => {
                result.attempts = attempts;
                result.error = Some(error);
                result.detail = detail;
            }
        }
        result
    }

    async fn execute(
        &self,
        config: &WorkerConfig,
        kind: &ActionKind,
        key: &str,
        event: &Event,
        ctx: &minijinja::Value,
        context: &Value,
    ) -> Result<(u32, Value), (u32, String, Value)> {
        let render = |id| {
            config
                .templates
                .render(id, ctx)
                .map_err(|e| (0, e, Value::Null))
        };
        match kind {
            ActionKind::Http {
                method,
                url,
                headers,
                body,
                timeout,
                retries,
            } => {
                let mut request = http_action::HttpRequest {
                    method: method.clone(),
                    url: render(*url)?,
                    headers: Vec::new(),
                    body: body.map(render).transpose()?.map(Bytes::from),
                };
                for (name, id) in headers {
                    let value = render(*id)?;
                    let value = HeaderValue::from_str(&value).map_err(|_| {
                        (
                            0,
                            format!("header {name} renders to an invalid value"),
                            Value::Null,
                        )
                    })?;
                    request.headers.push((name.clone(), value));
                }
                if request.body.is_some()
                    && !headers.iter().any(|(n, _)| n == http::header::CONTENT_TYPE)
                {
                    request.headers.push((
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ));
                }
                // The target dedupes repeats of one event, rule and action with this.
                request.headers.push((
                    HeaderName::from_static("idempotency-key"),
                    HeaderValue::from_str(key).map_err(|e| (0, e.to_string(), Value::Null))?,
                ));
                let policy = http_action::RetryPolicy {
                    retries: *retries,
                    base: Duration::from_millis(200),
                    max: Duration::from_secs(10),
                };
                let outcome = http_action::send(&self.http, &request, *timeout, policy).await;
                let detail = serde_json::json!({ "status": outcome.status, "response": outcome.response_snippet });
                if outcome.ok {
                    Ok((outcome.attempts, detail))
                } else {
                    let error = outcome.error.clone().unwrap_or_else(|| {
                        format!(
                            "HTTP {}",
                            outcome.status.map(|s| s.to_string()).unwrap_or_default()
                        )
                    });
                    Err((outcome.attempts, error, detail))
                }
            }
            ActionKind::Amqp {
                exchange,
                routing_key,
                body,
            } => {
                let payload = match body {
                    Some(id) => render(*id)?.into_bytes(),
                    None => serde_json::to_vec(&serde_json::json!({
                        "event": event.json,
                        "decision": {
                            "provider": context["provider"], "type": context["type"],
                            "event_id": context["event_id"], "subject": context["subject"],
                            "rule": context["rule"], "score": context["score"], "previous": context["previous"],
                        }
                    }))
                    .map_err(|e| (0, e.to_string(), Value::Null))?,
                };
                let props = BasicProperties::default()
                    .with_content_type(ShortString::from("application/json"))
                    .with_delivery_mode(2)
                    .with_message_id(
                        ShortString::try_new(key).map_err(|e| (0, e.to_string(), Value::Null))?,
                    )
                    .with_app_id(ShortString::from("hookwarden-worker"));
                let exchange = ShortString::try_new(exchange.as_str())
                    .map_err(|e| (0, e.to_string(), Value::Null))?;
                let rk = ShortString::try_new(routing_key.as_str())
                    .map_err(|e| (0, e.to_string(), Value::Null))?;
                let mut last = String::new();
                for attempt in 1..=3u32 {
                    match publish_confirmed(
                        &self.channel,
                        exchange.clone(),
                        rk.clone(),
                        &payload,
                        props.clone(),
                        AMQP_TIMEOUT,
                    )
                    .await
                    {
                        Ok(()) => return Ok((attempt, Value::Null)),
                        Err(err) => last = err.to_string(),
                    }
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err((3, last, Value::Null))
            }
            ActionKind::Exec { command, timeout } => {
                let mut argv = Vec::with_capacity(command.len());
                for id in command {
                    argv.push(render(*id)?);
                }
                let outcome = exec::run(&argv, &[], *timeout, EXEC_OUTPUT).await;
                let detail = serde_json::json!({
                    "exit_code": outcome.exit_code, "timed_out": outcome.timed_out,
                    "stdout": outcome.stdout, "stderr": outcome.stderr,
                });
                if outcome.ok {
                    Ok((1, detail))
                } else {
                    let error = outcome.error.clone().unwrap_or_else(|| {
                        match (outcome.timed_out, outcome.exit_code) {
                            (true, _) => "timed out".to_owned(),
                            (_, Some(code)) => format!("exited with {code}"),
                            _ => "killed by a signal".to_owned(),
                        }
                    });
                    Err((1, error, detail))
                }
            }
            ActionKind::Log { message } => {
                let message = match message {
                    Some(id) => render(*id)?,
                    None => "rule matched".to_owned(),
                };
                tracing::info!(
                    rule = %context["rule"].as_str().unwrap_or_default(),
                    provider = %event.provider,
                    event_id = %event.id,
                    subject = %context["subject"].as_str().unwrap_or_default(),
                    message = %message,
                    "action"
                );
                Ok((1, Value::Null))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::idempotency_key;

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
