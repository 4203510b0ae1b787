//! Opening, probing and closing a broker connection the same way in both daemons: a name
//! the broker shows, a heartbeat so a silent peer is noticed, and no wait on the broker that
//! can last for ever. A daemon that believes it is connected while it is not is the worst
//! failure it can have: it answers "ready" and does nothing.

use std::time::Duration;

use lapin::options::BasicQosOptions;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};

/// Longest wait for a connection's handshake, and then for its channels and declarations.
/// A broker still booting can accept the socket and never finish the handshake.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Heartbeat asked for when the URL sets none (`?heartbeat=N` overrides it). RabbitMQ's own
/// default is 60 s, with which lapin notices a peer gone silent only after 120 s; with 10 s
/// it sends a frame every 5 s and gives up after 20 s of silence.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// How often a connected daemon checks that its connection still answers.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Longest wait for a probe's answer before the connection is declared dead. Generous: a
/// broker busy with other clients answers slowly but answers.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a polite close; a dead peer never sends close-ok.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL does not parse (config checks this at load; kept for callers that did not).
    #[error("not an AMQP URL: {0}")]
    Url(String),
    /// The broker refused or the network failed.
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    /// No completed handshake within [`SETUP_TIMEOUT`].
    #[error("the broker did not complete the handshake in time")]
    Timeout,
}

/// The URI to connect with: `url` as written, plus [`DEFAULT_HEARTBEAT_SECS`] unless it
/// names a heartbeat of its own.
///
/// # Errors
/// `url` is not an AMQP URL.
pub fn uri_with_heartbeat(url: &str) -> Result<AMQPUri, OpenError> {
    let mut uri: AMQPUri = url.parse().map_err(OpenError::Url)?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
    }
    Ok(uri)
}

/// Opens a connection to `url` named `name` (shown by `rabbitmqctl list_connections`),
/// waiting at most [`SETUP_TIMEOUT`].
///
/// # Errors
/// A bad URL, a refused or failed connection, or no handshake in time.
pub async fn open(url: &str, name: &str) -> Result<Connection, OpenError> {
    let uri = uri_with_heartbeat(url)?;
    let props = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(SETUP_TIMEOUT, Connection::connect_uri(uri, props))
        .await
        .map_err(|_| OpenError::Timeout)?
        .map_err(OpenError::Broker)
}

/// One round trip on `channel` (a `basic.qos` that changes nothing on a channel that
/// consumes nothing), within [`PROBE_TIMEOUT`]. Status flags and error events say only what
/// lapin has noticed; this asks the broker.
///
/// # Errors
/// No answer in time, or the channel or connection failed.
pub async fn probe(channel: &Channel) -> Result<(), String> {
    match tokio::time::timeout(
        PROBE_TIMEOUT,
        channel.basic_qos(0, BasicQosOptions::default()),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("the broker probe failed: {err}")),
        Err(_) => Err(format!(
            "the broker did not answer a probe within {}s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// Closes `channels` and then `connection` politely if they still look open, never waiting
/// more than a couple of seconds for each: the peer may be gone.
pub async fn close(connection: &Connection, channels: &[&Channel]) {
    for channel in channels {
        if channel.status().connected() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "bye".into())).await;
        }
    }
    if connection.status().connected() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "bye".into())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_asked_for_unless_the_url_names_one() {
        let uri = uri_with_heartbeat("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(uri.query.heartbeat, Some(DEFAULT_HEARTBEAT_SECS));
        let uri = uri_with_heartbeat("amqp://127.0.0.1:5672/%2f?heartbeat=30").unwrap();
        assert_eq!(uri.query.heartbeat, Some(30));
        assert!(matches!(
            uri_with_heartbeat("http://nope"),
            Err(OpenError::Url(_))
        ));
    }
}
