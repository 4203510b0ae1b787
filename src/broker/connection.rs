//! Opening, setting up, probing and closing a broker connection the same way in both
//! daemons: a name the broker shows, a heartbeat so a silent peer is noticed, the topology
//! declared before anything else, and no wait on the broker that can last for ever. A daemon
//! that believes it is connected while it is not is the worst failure it can have: it
//! answers "ready" and does nothing.

use std::time::Duration;

use lapin::options::BasicQosOptions;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ConnectionStatus};

use crate::broker::topology::{self, Topology};

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

/// Why a connection could not be set up for use.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// No connection.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The first channel could not be opened.
    #[error("{0}")]
    Channel(#[source] lapin::Error),
    /// The broker refused a declaration: a queue or exchange exists with other arguments
    /// (406). Needs an operator, not only a retry.
    #[error(
        "the broker refused the topology (a queue or exchange exists with other arguments? \
         compare [amqp] with the broker's definitions): {0}"
    )]
    Topology(#[source] lapin::Error),
    /// No answer to the declarations within [`SETUP_TIMEOUT`].
    #[error("the broker did not complete the channel set-up in time")]
    Timeout,
}

/// Opens a connection to `url` named `name` ([`open`]) and declares `topology` on a first
/// channel, which is returned for the caller to keep using; both daemons start every
/// connection this way. The declarations get their own [`SETUP_TIMEOUT`]. On any failure the
/// connection is closed before returning.
///
/// # Errors
/// No connection, no channel, a refused declaration, or no answer in time.
pub async fn open_declared(
    url: &str,
    name: &str,
    topology: &Topology,
) -> Result<(Connection, Channel), SetupError> {
    let connection = open(url, name).await?;
    let declared = tokio::time::timeout(SETUP_TIMEOUT, async {
        let channel = connection
            .create_channel()
            .await
            .map_err(SetupError::Channel)?;
        topology::declare(&connection, &channel, topology)
            .await
            .map_err(SetupError::Topology)?;
        Ok(channel)
    })
    .await
    .unwrap_or(Err(SetupError::Timeout));
    match declared {
        Ok(channel) => Ok((connection, channel)),
        Err(err) => {
            close(&connection, &[]).await;
            Err(err)
        }
    }
}

/// Why a probe found no live broker.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeError {
    /// The channel or connection failed.
    #[error("the broker probe failed: {0}")]
    Failed(#[source] lapin::Error),
    /// No answer within [`PROBE_TIMEOUT`].
    #[error("the broker did not answer a probe within {}s", PROBE_TIMEOUT.as_secs())]
    Timeout,
}

/// One round trip on `channel` (a `basic.qos` that changes nothing on a channel that
/// consumes nothing), within [`PROBE_TIMEOUT`]. Status flags and error events say only what
/// lapin has noticed; this asks the broker.
///
/// # Errors
/// No answer in time, or the channel or connection failed.
pub async fn probe(channel: &Channel) -> Result<(), ProbeError> {
    match tokio::time::timeout(
        PROBE_TIMEOUT,
        channel.basic_qos(0, BasicQosOptions::default()),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(ProbeError::Failed(err)),
        Err(_) => Err(ProbeError::Timeout),
    }
}

/// Why a connection is known to be dead (as opposed to busy or blocked).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkDown {
    /// lapin reported an error on the connection.
    #[error("connection error: {0}")]
    Error(#[source] lapin::Error),
    /// lapin's status flags say the connection or one of its channels is gone.
    #[error("connection or channel not connected")]
    NotConnected,
    /// The broker did not answer a round trip.
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

/// What one liveness round found, when the link is not dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alive {
    /// The broker answered a round trip.
    Answered,
    /// The broker blocks the connection for a resource alarm: it reads nothing from it until
    /// the alarm clears. That is flow control, not a dead link, so nothing was asked.
    Blocked,
}

/// One liveness round, run every [`PROBE_EVERY`] by both daemons: lapin's status flags for
/// the connection and `channels`, then (unless the broker blocks the connection) a
/// [`probe`] on `probe_channel`, a channel of its own so the round trip never waits behind
/// the daemon's traffic. lapin has been seen to keep a connection "connected", and a consumer
/// stream open, after the broker went away, so the flags alone are not enough.
///
/// # Errors
/// The link is dead, and why.
pub async fn check(
    connection: &ConnectionStatus,
    channels: &[Channel],
    probe_channel: &Channel,
) -> Result<Alive, LinkDown> {
    // Events can be missed if the connection dies during set-up.
    if !connection.connected() || channels.iter().any(|c| !c.status().connected()) {
        return Err(LinkDown::NotConnected);
    }
    if connection.blocked() {
        return Ok(Alive::Blocked);
    }
    match probe(probe_channel).await {
        Ok(()) => Ok(Alive::Answered),
        // An alarm that began while the probe was on its way is not a dead link either.
        Err(_) if connection.blocked() => Ok(Alive::Blocked),
        Err(err) => Err(err.into()),
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

    /// These reasons reach logs and the worker's `/readyz` (README quotes the probe's).
    #[test]
    fn a_dead_link_is_explained_as_before() {
        assert_eq!(
            LinkDown::from(ProbeError::Timeout).to_string(),
            "the broker did not answer a probe within 10s"
        );
        assert_eq!(
            LinkDown::NotConnected.to_string(),
            "connection or channel not connected"
        );
        assert!(
            SetupError::Topology(lapin::Error::from(std::io::Error::other("406")))
                .to_string()
                .starts_with("the broker refused the topology (a queue or exchange exists")
        );
    }
}
