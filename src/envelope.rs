//! The message the listener hands to RabbitMQ and the worker reads back: the provider's raw
//! body, byte for byte, plus properties and headers that say where it came from.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::telemetry::trace::{TRACEPARENT, TRACESTATE, TraceContext};

/// Header: the provider name the event arrived under.
pub const HEADER_PROVIDER: &str = "x-provider";
/// Header: receive time, RFC 3339, on messages of listeners before issue 14 (the `timestamp`
/// property carries it now); `hookwarden dead-letters` still reads it on such messages.
pub const HEADER_RECEIVED_AT: &str = "x-received-at";
/// Header: the signature scheme that verified the event.
pub const HEADER_SCHEME: &str = "x-signature-scheme";
/// Header: the client address the event came from (after trusted proxies).
pub const HEADER_SOURCE_IP: &str = "x-source-ip";
/// Dead-letter header: why the worker dead-lettered the event.
pub const HEADER_DEAD_ERROR: &str = "x-hookwarden-error";
/// Dead-letter header: the rule whose action failed.
pub const HEADER_DEAD_RULE: &str = "x-hookwarden-rule";
/// Dead-letter header: the action that failed.
pub const HEADER_DEAD_ACTION: &str = "x-hookwarden-action";
/// Dead-letter header: the routing key the event had, so a replay can restore it.
pub const HEADER_DEAD_ROUTING_KEY: &str = "x-hookwarden-routing-key";

/// A verified event ready for the broker. Built only from checked parts, so publishing it
/// cannot fail on a name that is too long.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Configured provider name.
    pub provider: ShortString,
    /// The provider's event id (the message id).
    pub event_id: ShortString,
    /// The provider's event type.
    pub event_type: ShortString,
    /// `{provider}.{event_type}`.
    pub routing_key: ShortString,
    /// Scheme name, e.g. `stripe`.
    pub scheme: &'static str,
    /// Client address.
    pub source_ip: IpAddr,
    /// When the listener received the request.
    pub received_at: SystemTime,
    /// The raw request body.
    pub body: Bytes,
    /// The request's place in its trace: the worker's delivery span continues it.
    pub trace: Option<TraceContext>,
}

/// Why an id or type cannot travel as AMQP short strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// AMQP short strings hold at most 255 bytes.
    #[error("{field} is {len} bytes; at most 255 are allowed")]
    TooLong {
        /// `event id`, `event type` or `routing key`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
}

fn short(field: &'static str, value: String) -> Result<ShortString, EnvelopeError> {
    let len = value.len();
    ShortString::try_new(value).map_err(|_| EnvelopeError::TooLong { field, len })
}

impl Envelope {
    /// Builds an envelope, checking every name against AMQP's limits.
    ///
    /// # Errors
    /// An id, type or routing key longer than 255 bytes.
    pub fn new(
        provider: &str,
        event_id: String,
        event_type: String,
        scheme: &'static str,
        source_ip: IpAddr,
        received_at: SystemTime,
        body: Bytes,
    ) -> Result<Self, EnvelopeError> {
        let routing_key = short("routing key", format!("{provider}.{event_type}"))?;
        Ok(Self {
            provider: short("provider", provider.to_owned())?,
            event_id: short("event id", event_id)?,
            event_type: short("event type", event_type)?,
            routing_key,
            scheme,
            source_ip,
            received_at,
            body,
            trace: None,
        })
    }

    /// The envelope with `trace` as the context its message hands on.
    pub fn with_trace(mut self, trace: Option<TraceContext>) -> Self {
        self.trace = trace;
        self
    }

    /// AMQP properties of design.md: persistent JSON with id, type and receive time as
    /// standard properties, the three origin headers nothing standard can carry, and W3C
    /// `traceparent` (with `tracestate` when the caller sent one).
    ///
    /// No more: RabbitMQ decodes every property and header of every message it routes, and
    /// each costs it CPU. `app_id` and `x-received-at` (the `timestamp` says when) are gone;
    /// what they cost the broker is a few µs per message at most, within run-to-run noise
    /// (`benches/broker_cost.rs`, README "AMQP contract").
    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(HEADER_PROVIDER),
            AMQPValue::LongString(LongString::from(self.provider.as_str())),
        );
        headers.insert(
            ShortString::from(HEADER_SCHEME),
            AMQPValue::LongString(LongString::from(self.scheme)),
        );
        headers.insert(
            ShortString::from(HEADER_SOURCE_IP),
            AMQPValue::LongString(LongString::from(self.source_ip.to_string())),
        );
        if let Some(trace) = &self.trace {
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
        }
        let timestamp = self
            .received_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            // 2 = persistent: the broker writes the message to disk before confirming.
            .with_delivery_mode(2)
            .with_message_id(self.event_id.clone())
            .with_type(self.event_type.clone())
            .with_timestamp(timestamp)
            .with_headers(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: String, kind: String) -> Result<Envelope, EnvelopeError> {
        Envelope::new(
            "dregs",
            id,
            kind,
            "hmac-sha256",
            IpAddr::from([127, 0, 0, 1]),
            UNIX_EPOCH,
            Bytes::from_static(b"{}"),
        )
    }

    #[test]
    fn names_over_255_bytes_are_errors_not_panics() {
        assert!(envelope("a".repeat(255), "t".into()).is_ok());
        assert_eq!(
            envelope("a".repeat(256), "t".into()).unwrap_err(),
            EnvelopeError::TooLong {
                field: "event id",
                len: 256
            }
        );
        // The type fits alone but not with the provider prefix in the routing key.
        assert_eq!(
            envelope("id".into(), "t".repeat(250)).unwrap_err(),
            EnvelopeError::TooLong {
                field: "routing key",
                len: 256
            }
        );
    }

    #[test]
    fn properties_follow_the_contract() {
        let props = envelope("evt_1".into(), "identity.scored".into())
            .unwrap()
            .properties();
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(
            props.message_id().as_ref().map(|s| s.as_str()),
            Some("evt_1")
        );
        assert_eq!(
            props.kind().as_ref().map(|s| s.as_str()),
            Some("identity.scored")
        );
        assert_eq!(props.timestamp(), &Some(0));
        assert_eq!(props.app_id(), &None);
        let headers = props.headers().clone().unwrap_or_default();
        let mut names: Vec<&str> = headers.inner().keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, [HEADER_PROVIDER, HEADER_SCHEME, HEADER_SOURCE_IP]);
    }

    #[test]
    fn a_trace_travels_as_w3c_headers() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let trace = TraceContext::from_headers(Some(parent), Some("congo=t61rcWkgMzE"));
        let props = envelope("evt_1".into(), "identity.scored".into())
            .unwrap()
            .with_trace(trace)
            .properties();
        let headers = props.headers().clone().unwrap_or_default();
        let text = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            _ => None,
        };
        assert_eq!(text(TRACEPARENT).as_deref(), Some(parent));
        assert_eq!(text(TRACESTATE).as_deref(), Some("congo=t61rcWkgMzE"));
    }
}
