//! `[amqp]`: where the broker is and the names of the topology both daemons declare.

use std::fmt;
use std::num::{NonZeroU16, NonZeroUsize};

use serde::{Deserialize, Deserializer};

use super::Document;

/// `[amqp]`, shared by the listener and the worker so both declare the same topology.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// Broker URL, or a list of cluster node URLs tried in turn.
    #[serde(default = "default_url", deserialize_with = "one_or_many")]
    pub url: Vec<String>,
    /// Exchange events are published to (routing key `{provider}.{event_type}`).
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Its type when set; unset, an existing exchange of that name is used as it was
    /// declared and a new one is declared `fanout` (see [`ExchangeType`]).
    #[serde(default)]
    pub exchange_type: Option<ExchangeType>,
    /// Quorum queue the worker consumes, bound to `exchange` with `#`.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Fanout exchange the events queue dead-letters to.
    #[serde(default = "default_dead_letter_exchange")]
    pub dead_letter_exchange: String,
    /// Queue bound to `dead_letter_exchange`, kept for inspection and replay.
    #[serde(default = "default_dead_letter_queue")]
    pub dead_letter_queue: String,
    /// Deliveries of one message before the broker dead-letters it (`x-delivery-limit`).
    #[serde(default = "default_delivery_limit")]
    pub delivery_limit: u32,
    /// Channels the listener publishes on, each with its own confirms in flight.
    #[serde(default = "default_channels")]
    pub channels: NonZeroUsize,
    /// Worker only: deliveries in flight (unacked) at once; also the largest batch.
    #[serde(default = "default_prefetch")]
    pub prefetch: NonZeroU16,
    /// Worker only: queue the `amqp` action publishes to by default (declared by the worker).
    #[serde(default = "default_review_queue")]
    pub review_queue: String,
}

/// How the events exchange routes.
///
/// `fanout` is the default for a new exchange: every bound queue gets every event, and the
/// broker spends about a fifth less CPU per message than on a `topic` exchange with the
/// events queue's `#` binding (RabbitMQ 3.10, `benches/compare.sh`). `topic` is for
/// deployments whose own queues bind by pattern (`dregs.#`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    /// Every bound queue gets every message.
    Fanout,
    /// Queues bind by routing-key pattern.
    Topic,
}

fn default_url() -> Vec<String> {
    vec!["amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()]
}
fn default_exchange() -> String {
    "hookwarden".to_owned()
}
fn default_queue() -> String {
    "hookwarden.events".to_owned()
}
fn default_dead_letter_exchange() -> String {
    "hookwarden.dlx".to_owned()
}
fn default_dead_letter_queue() -> String {
    "hookwarden.dead".to_owned()
}
fn default_delivery_limit() -> u32 {
    5
}
fn default_prefetch() -> NonZeroU16 {
    NonZeroU16::new(256).unwrap_or(NonZeroU16::MIN)
}
fn default_review_queue() -> String {
    "hookwarden.review".to_owned()
}
fn default_channels() -> NonZeroUsize {
    NonZeroUsize::MIN
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: default_url(),
            exchange: default_exchange(),
            exchange_type: None,
            queue: default_queue(),
            dead_letter_exchange: default_dead_letter_exchange(),
            dead_letter_queue: default_dead_letter_queue(),
            delivery_limit: default_delivery_limit(),
            channels: default_channels(),
            prefetch: default_prefetch(),
            review_queue: default_review_queue(),
        }
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(de)? {
        Raw::One(url) => vec![url],
        Raw::Many(urls) => urls,
    })
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.redacted_url())
            .field("exchange", &self.exchange)
            .field("exchange_type", &self.exchange_type)
            .field("queue", &self.queue)
            .field("dead_letter_exchange", &self.dead_letter_exchange)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("delivery_limit", &self.delivery_limit)
            .field("channels", &self.channels)
            .field("prefetch", &self.prefetch)
            .field("review_queue", &self.review_queue)
            .finish()
    }
}

impl AmqpConfig {
    /// The URLs with passwords replaced, for logs and `--check`.
    pub fn redacted_url(&self) -> String {
        self.url
            .iter()
            .map(|u| redact(u))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) fn validate(&self, doc: &mut Document<'_>, key: &str) {
        if self.url.is_empty() {
            doc.problem(
                &format!("{key}.url"),
                "needs at least one broker URL".to_owned(),
            );
        }
        for (i, url) in self.url.iter().enumerate() {
            if let Err(err) = url.parse::<lapin::uri::AMQPUri>() {
                let at = if self.url.len() == 1 {
                    format!("{key}.url")
                } else {
                    format!("{key}.url[{i}]")
                };
                doc.problem(&at, format!("{} is not an AMQP URL: {err}", redact(url)));
            }
        }
        for (field, value) in [
            ("exchange", &self.exchange),
            ("queue", &self.queue),
            ("dead_letter_exchange", &self.dead_letter_exchange),
            ("dead_letter_queue", &self.dead_letter_queue),
            ("review_queue", &self.review_queue),
        ] {
            if value.len() > 255 {
                doc.problem(
                    &format!("{key}.{field}"),
                    "longer than AMQP's 255 bytes".to_owned(),
                );
            }
        }
        for (field, value) in [
            ("queue", &self.queue),
            ("dead_letter_queue", &self.dead_letter_queue),
        ] {
            if value.is_empty() {
                doc.problem(&format!("{key}.{field}"), "must not be empty".to_owned());
            }
        }
        if self.exchange.is_empty() {
            doc.problem(
                &format!("{key}.exchange"),
                "must not be empty: events are published through an exchange".to_owned(),
            );
        }
        if self.delivery_limit == 0 {
            doc.problem(
                &format!("{key}.delivery_limit"),
                "must be at least 1".to_owned(),
            );
        }
    }
}

/// `amqp://user:secret@host` → `amqp://user:***@host`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
