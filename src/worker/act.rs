//! Running one action for one rule firing: render its templates, skip it when its done-mark
//! says it completed before, run it (HTTP with retries, confirmed AMQP publish, command, log
//! line), and hand its done-mark to the writer ([`crate::worker::marks`]) when it succeeds.

use std::collections::HashSet;
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
use crate::worker::marks::DoneMarks;
use crate::worker::{exec, http as http_action};

/// Largest captured stdout/stderr of an `exec` action, per stream.
const EXEC_OUTPUT: usize = 4096;
/// Longest wait for the broker's confirm of an `amqp` action.
const AMQP_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Done-marks of completed actions.
    pub marks: DoneMarks,
}

impl Runner {
    /// Runs action `index` of `config` for rule `rule` on `event`, with template `context`;
    /// skipped when its key is among `done` (the batch's done-marks, read once up front).
    pub async fn run(
        &self,
        config: &WorkerConfig,
        index: usize,
        rule: &str,
        event: &Event,
        context: &Value,
        done: &HashSet<String>,
    ) -> ActionResult {
        let action = &config.actions[index];
        let key = idempotency_key(&event.key, rule, &action.name);
        let started = Instant::now();
        let mut result = ActionResult {
            action: action.name.clone(),
            outcome: ActionOutcome::Failed,
            attempts: 0,
            error: None,
            latency_ms: 0,
            detail: Value::Null,
        };
        if done.contains(&key) {
            result.outcome = ActionOutcome::Skipped;
            return result;
        }
        let outcome = match render(config, &action.kind, &key, event, context) {
            Ok(rendered) => self.execute(rendered, event, context).await,
            Err(error) => Err((0, error, Value::Null)),
        };
        result.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match outcome {
            Ok((attempts, detail)) => {
                result.attempts = attempts;
                result.detail = detail;
                // Written behind us; the batch flushes the marks before it commits.
                self.marks.mark(key);
                result.outcome = ActionOutcome::Ok;
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
        rendered: Rendered,
        event: &Event,
        context: &Value,
    ) -> Result<(u32, Value), (u32, String, Value)> {
        match rendered {
            Rendered::Http {
                request,
                timeout,
                retries,
            } => {
                let policy = http_action::RetryPolicy {
                    retries,
                    base: Duration::from_millis(200),
                    max: Duration::from_secs(10),
                };
                let outcome = http_action::send(&self.http, &request, timeout, policy).await;
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
            Rendered::Amqp {
                exchange,
                routing_key,
                body,
                properties,
            } => {
                let mut last = String::new();
                for attempt in 1..=3u32 {
                    match publish_confirmed(
                        &self.channel,
                        exchange.clone(),
                        routing_key.clone(),
                        &body,
                        (*properties).clone(),
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
            Rendered::Exec { argv, timeout } => {
                let outcome = exec::run(&argv, &[], timeout, EXEC_OUTPUT).await;
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
            Rendered::Log { message } => {
                // The rendered text goes under `text`: `message` is the formatter's own key
                // (here "action"), and a JSON line naming it twice is ambiguous to log readers.
                tracing::info!(
                    rule = %context["rule"].as_str().unwrap_or_default(),
                    provider = %event.provider,
                    event_id = %event.id,
                    subject = %context["subject"].as_str().unwrap_or_default(),
                    text = %message,
                    "action"
                );
                Ok((1, Value::Null))
            }
        }
    }
}

/// An action with its templates rendered: exactly what it sends, and how.
#[derive(Debug, Clone)]
pub enum Rendered {
    /// The request, with `Content-Type` (when there is a body) and `Idempotency-Key` added.
    Http {
        /// Method, URL, headers, body.
        request: http_action::HttpRequest,
        /// Per attempt.
        timeout: Duration,
        /// Attempts after the first.
        retries: u32,
    },
    /// A persistent JSON message whose message id is the idempotency key.
    Amqp {
        /// Exchange (`""` = default exchange).
        exchange: ShortString,
        /// Routing key.
        routing_key: ShortString,
        /// The rendered body, or the event plus the decision by default.
        body: Vec<u8>,
        /// Content type, persistence, message id, app id (boxed: they dwarf the other variants).
        properties: Box<BasicProperties>,
    },
    /// argv, run without a shell.
    Exec {
        /// Rendered arguments.
        argv: Vec<String>,
        /// Kill after this long.
        timeout: Duration,
    },
    /// The message of the log line.
    Log {
        /// Rendered message, or `rule matched`.
        message: String,
    },
}

/// Renders action `kind` for one firing, with idempotency key `key` and template `context`
/// (see [`crate::worker::decide::template_context`]). The worker and `hookwarden rules test`
/// both call this, so a dry run shows byte for byte what the worker would send.
///
/// # Errors
/// A template that fails to render, a header value or AMQP name it cannot be.
pub fn render(
    config: &WorkerConfig,
    kind: &ActionKind,
    key: &str,
    event: &Event,
    context: &Value,
) -> Result<Rendered, String> {
    let ctx = crate::worker::template::context(Arc::new(context.clone()));
    let render = |id| config.templates.render(id, &ctx);
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
                let value = HeaderValue::from_str(&value)
                    .map_err(|_| format!("header {name} renders to an invalid value"))?;
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
                HeaderValue::from_str(key).map_err(|e| e.to_string())?,
            ));
            Ok(Rendered::Http {
                request,
                timeout: *timeout,
                retries: *retries,
            })
        }
        ActionKind::Amqp {
            exchange,
            routing_key,
            body,
        } => {
            let body = match body {
                Some(id) => render(*id)?.into_bytes(),
                None => serde_json::to_vec(&default_amqp_body(event, context))
                    .map_err(|e| e.to_string())?,
            };
            let properties = BasicProperties::default()
                .with_content_type(ShortString::from("application/json"))
                .with_delivery_mode(2)
                .with_message_id(ShortString::try_new(key).map_err(|e| e.to_string())?)
                .with_app_id(ShortString::from("hookwarden-worker"));
            Ok(Rendered::Amqp {
                exchange: ShortString::try_new(exchange.as_str()).map_err(|e| e.to_string())?,
                routing_key: ShortString::try_new(routing_key.as_str())
                    .map_err(|e| e.to_string())?,
                body,
                properties: Box::new(properties),
            })
        }
        ActionKind::Exec { command, timeout } => {
            let mut argv = Vec::with_capacity(command.len());
            for id in command {
                argv.push(render(*id)?);
            }
            Ok(Rendered::Exec {
                argv,
                timeout: *timeout,
            })
        }
        ActionKind::Log { message } => Ok(Rendered::Log {
            message: match message {
                Some(id) => render(*id)?,
                None => "rule matched".to_owned(),
            },
        }),
    }
}

/// The body of an `amqp` action without a `body` template: the event plus the decision.
pub fn default_amqp_body(event: &Event, context: &Value) -> Value {
    serde_json::json!({
        "event": event.json,
        "decision": {
            "provider": context["provider"], "type": context["type"],
            "event_id": context["event_id"], "subject": context["subject"],
            "rule": context["rule"], "score": context["score"], "previous": context["previous"],
        }
    })
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
