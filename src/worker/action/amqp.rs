//! `kind = "amqp"`: a persistent JSON message published with confirms, its message id the
//! idempotency key; by default to the `[amqp] review_queue` through the default exchange,
//! its body the event plus the decision.

use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, LongString, ShortString};
use serde::Deserialize;
use serde_json::Value;

use super::{Compiler, Firing, Kind, Registration, Request, Runner, Sent};
use crate::broker::publisher::publish_confirmed;
use crate::telemetry::trace::{TRACEPARENT, TRACESTATE, TraceContext};
use crate::worker::facts::Name;
use crate::worker::template::TemplateId;

pub(super) const KIND: Registration = Registration {
    name: "amqp",
    keys: &["exchange", "routing_key", "body"],
    compile,
};

/// Longest wait for the broker's confirm of one attempt.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: u32 = 3;

#[derive(Deserialize)]
struct Table {
    #[serde(default)]
    exchange: String,
    routing_key: Option<String>,
    body: Option<String>,
}

struct Amqp {
    /// `""` = the default exchange.
    exchange: String,
    routing_key: String,
    body: Option<TemplateId>,
}

fn compile(c: &mut Compiler<'_, '_>) -> Option<Box<dyn Kind>> {
    let table: Table = c.table()?;
    let routing_key = table
        .routing_key
        .unwrap_or_else(|| c.review_queue.to_owned());
    // AMQP short strings: `ShortString::from` would panic past this at publish time.
    let ok = table.exchange.len() <= 255 && routing_key.len() <= 255;
    if !ok {
        c.problem(
            "",
            "exchange and routing_key are at most 255 bytes".to_owned(),
        );
    }
    let body = table.body.as_deref().and_then(|b| c.template("body", b));
    ok.then(|| {
        Box::new(Amqp {
            exchange: table.exchange,
            routing_key,
            body,
        }) as Box<dyn Kind>
    })
}

impl Kind for Amqp {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn render(&self, firing: &Firing<'_>) -> Result<Box<dyn Request>, String> {
        let body = match self.body {
            Some(id) => firing.render(id)?.into_bytes(),
            None => serde_json::to_vec(&default_body(firing)).map_err(|e| e.to_string())?,
        };
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_message_id(ShortString::try_new(firing.key).map_err(|e| e.to_string())?)
            .with_app_id(ShortString::from("hookwarden-worker"));
        Ok(Box::new(Rendered {
            exchange: ShortString::try_new(self.exchange.as_str()).map_err(|e| e.to_string())?,
            routing_key: ShortString::try_new(self.routing_key.as_str())
                .map_err(|e| e.to_string())?,
            body,
            properties,
        }))
    }
}

/// The body without a `body` template: the event plus the decision.
fn default_body(firing: &Firing<'_>) -> Value {
    let facts = firing.facts;
    let fact = |name| facts.json(name, firing.rule);
    serde_json::json!({
        "event": facts.event,
        "decision": {
            "provider": fact(Name::Provider), "type": fact(Name::Type),
            "event_id": fact(Name::EventId), "subject": fact(Name::Subject),
            "rule": fact(Name::Rule), "score": fact(Name::Score), "previous": fact(Name::Previous),
        }
    })
}

/// A persistent JSON message.
#[derive(Debug)]
struct Rendered {
    exchange: ShortString,
    routing_key: ShortString,
    body: Vec<u8>,
    properties: BasicProperties,
}

impl Request for Rendered {
    fn describe(&self) -> Value {
        serde_json::json!({
            "exchange": self.exchange.as_str(),
            "routing_key": self.routing_key.as_str(),
            "message_id": self.properties.message_id().as_ref().map(|m| m.as_str()),
            "content_type": self.properties.content_type().as_ref().map(|m| m.as_str()),
            "persistent": *self.properties.delivery_mode() == Some(2),
            "body": String::from_utf8_lossy(&self.body),
        })
    }

    fn send<'a>(&'a self, with: &'a Runner, trace: &'a TraceContext) -> BoxFuture<'a, Sent> {
        async move {
            let properties = traced(&self.properties, trace);
            let mut last = String::new();
            for attempt in 1..=ATTEMPTS {
                match publish_confirmed(
                    &with.channel,
                    self.exchange.clone(),
                    self.routing_key.clone(),
                    &self.body,
                    properties.clone(),
                    CONFIRM_TIMEOUT,
                )
                .await
                {
                    Ok(()) => {
                        return Sent {
                            attempts: attempt,
                            ..Sent::default()
                        };
                    }
                    Err(err) => last = err.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Sent {
                attempts: ATTEMPTS,
                error: Some(last),
                detail: Value::Null,
            }
        }
        .boxed()
    }
}

/// `properties` with the action span's `traceparent` (and `tracestate`) among the headers,
/// as the listener hands them to the worker, so that a consumer of the review queue can
/// continue the trace.
fn traced(properties: &BasicProperties, trace: &TraceContext) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(TRACEPARENT),
        AMQPValue::LongString(LongString::from(trace.traceparent())),
    );
    if let Some(state) = trace.tracestate() {
        headers.insert(
            ShortString::from(TRACESTATE),
            AMQPValue::LongString(LongString::from(state)),
        );
    }
    properties.clone().with_headers(headers)
}
