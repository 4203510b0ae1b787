//! The listener's confirmed publisher: one connection, several confirm-mode channels, many
//! publishes in flight at once, and a supervisor that reconnects with the shared
//! [`Backoff`]. A publish is good only on a broker ack that was not a return. Requests that
//! find no connection ask [`Publisher::ready_by`] whether one is worth waiting for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{Channel, Confirmation, Connection};
use tokio::sync::{Notify, watch};
// tokio's clock, so that paused-time tests drive a request's wait for the connection.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::backoff::{self, Backoff};
use crate::broker::connection::{self, LinkDown, SETUP_TIMEOUT, SetupError};
use crate::broker::topology::Topology;
use crate::config::amqp::{AmqpConfig, redact};
use crate::envelope::Envelope;
use crate::telemetry::BrokerMetrics;

/// Why an event was not handed off; every variant is answered 503 by the listener.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No connection to the broker right now.
    #[error("not connected to the broker")]
    NotConnected,
    /// The broker refused the message (e.g. queue full under `reject-publish`).
    #[error("the broker nacked the message")]
    Nack,
    /// The message was unroutable and came back (`mandatory`).
    #[error("the broker returned the message: {code} {text}")]
    Returned {
        /// AMQP reply code, e.g. 312 NO_ROUTE.
        code: u16,
        /// Broker's explanation.
        text: String,
    },
    /// No confirm within `handoff_timeout` (e.g. a memory alarm blocks publishers).
    #[error("no confirm from the broker in time")]
    ConfirmTimeout,
    /// The channel or connection failed while the message was in flight.
    #[error("channel failed: {0}")]
    ChannelClosed(#[source] lapin::Error),
    /// The channel was not in confirm mode; never expected, never treated as success.
    #[error("the channel did not confirm")]
    NotConfirmed,
}

impl PublishError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotConnected => "not_connected",
            Self::Nack => "nack",
            Self::Returned { .. } => "returned",
            Self::ConfirmTimeout => "confirm_timeout",
            Self::ChannelClosed(_) => "channel_closed",
            Self::NotConfirmed => "not_confirmed",
        }
    }
}

/// Where the broker connection stands, as a request deciding whether to wait for it sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// No connection, and none has failed since the listener started or since the last
    /// connection was lost: one may come any moment.
    Connecting,
    /// A connection with open channels is in place.
    Connected,
    /// No connection, and the broker is known to be away: an attempt failed since the last
    /// connection, a request already waited its whole `handoff_timeout` for one in vain, or
    /// the publisher stopped.
    Unreachable,
}

struct Link {
    connection: Connection,
    channels: Vec<Channel>,
    /// Publishes nothing; carries the liveness probe so a probe never waits behind publishes.
    probe: Channel,
}

struct Inner {
    link: RwLock<Option<Arc<Link>>>,
    /// Wakes the supervisor when a publish finds its channel dead.
    broken: Notify,
    state: watch::Sender<LinkState>,
    next: AtomicUsize,
    exchange: ShortString,
    metrics: BrokerMetrics,
}

/// Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

/// Reconnect pacing: the listener retries quickly (the spool or 503s cover the gap), and
/// starts over after any session, however short.
const BACKOFF: backoff::Policy = backoff::Policy {
    min: Duration::from_millis(100),
    max: Duration::from_secs(10),
    jitter: Duration::from_millis(100),
    stable_after: Duration::ZERO,
};

impl Publisher {
    /// Starts the supervisor, which connects, declares `topology`, opens
    /// `config.channels` confirm channels, and reconnects until `shutdown`.
    pub fn start(
        config: &AmqpConfig,
        topology: Topology,
        metrics: BrokerMetrics,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let publisher = Self::unconnected(&config.exchange, metrics);
        let supervisor = Supervisor {
            inner: publisher.inner.clone(),
            urls: config.url.clone(),
            channels: config.channels.get(),
            topology,
            shutdown,
        };
        let handle = tokio::spawn(supervisor.run());
        (publisher, handle)
    }

    /// A publisher with no supervisor: [`LinkState::Connecting`] until someone sets its state.
    fn unconnected(exchange: &str, metrics: BrokerMetrics) -> Self {
        let (state, _) = watch::channel(LinkState::Connecting);
        let inner = Arc::new(Inner {
            link: RwLock::new(None),
            broken: Notify::new(),
            state,
            next: AtomicUsize::new(0),
            exchange: ShortString::try_new(exchange.to_owned())
                .unwrap_or_else(|_| ShortString::from("")),
            metrics,
        });
        Self { inner }
    }

    /// True while a connection with open channels is in place.
    pub fn is_connected(&self) -> bool {
        *self.inner.state.borrow() == LinkState::Connected
    }

    /// Waits until connected or `timeout` passes; returns whether it is connected.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.state.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s == LinkState::Connected))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether a request should publish now: true at once while connected. With no
    /// connection, waits for one until `deadline` only while it may come any moment
    /// ([`LinkState::Connecting`]: the first attempt since start, or the reconnect after a
    /// lost connection, not yet failed), and answers false as soon as the broker is known to
    /// be away ([`LinkState::Unreachable`]).
    ///
    /// Why not always wait: through a long outage every request would sit out its whole
    /// `handoff_timeout` before the spool (or a 503) took it, adding seconds of latency and
    /// held connections while the broker is known to be down. Why wait at all: a listener
    /// starting (socket activation hands it its first request before any connection exists)
    /// or reconnecting after a blip is a few hundred milliseconds from the broker, and a
    /// request that waits for it is published instead of spooled or refused. A request that
    /// waits until `deadline` in vain marks the broker away, so those behind it do not sit
    /// out the same slow attempt (a broker that takes the socket and never answers holds an
    /// attempt for [`SETUP_TIMEOUT`]); the next connection clears the mark.
    pub async fn ready_by(&self, deadline: Instant) -> bool {
        let now = *self.inner.state.borrow();
        match now {
            LinkState::Connected => return true,
            LinkState::Unreachable => return false,
            LinkState::Connecting => {}
        }
        // A change between the look above and this is not missed: `wait_for` looks first.
        let mut rx = self.inner.state.subscribe();
        let settled =
            tokio::time::timeout_at(deadline, rx.wait_for(|s| *s != LinkState::Connecting)).await;
        match settled {
            Ok(Ok(state)) => *state == LinkState::Connected,
            // The sender lives in `self.inner`: not while `self` does.
            Ok(Err(_)) => false,
            Err(_) => {
                self.inner.state.send_if_modified(|s| {
                    let waited_in_vain = *s == LinkState::Connecting;
                    if waited_in_vain {
                        *s = LinkState::Unreachable;
                    }
                    waited_in_vain
                });
                false
            }
        }
    }

    /// Publishes `envelope` persistent and `mandatory`, and waits for its confirm.
    ///
    /// # Errors
    /// Any outcome other than a plain broker ack within `timeout`.
    pub async fn publish(
        &self,
        envelope: &Envelope,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let link = self
            .inner
            .link
            .read()
            .map_err(|_| PublishError::NotConnected)?
            .clone()
            .ok_or(PublishError::NotConnected)?;
        let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % link.channels.len();
        let channel = &link.channels[index];
        let _in_flight = self.inner.metrics.in_flight_guard();
        let result = publish_confirmed(
            channel,
            self.inner.exchange.clone(),
            envelope.routing_key.clone(),
            &envelope.body,
            envelope.properties(),
            timeout,
        )
        .await;
        if matches!(result, Err(PublishError::ChannelClosed(_))) || !channel.status().connected() {
            // A dead channel stays dead (e.g. after NOT_FOUND): rebuild the link.
            self.link_broken(&link);
        }
        result
    }
}

/// Why a connection attempt failed; a refused topology needs an operator, not a retry.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// No connection, or the topology not declared.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A publishing channel could not be opened or put in confirm mode.
    #[error("{0}")]
    Channel(#[source] lapin::Error),
    /// The whole set-up took longer than [`SETUP_TIMEOUT`].
    #[error("the broker did not complete the connection set-up in time")]
    Timeout,
}

/// Why the supervisor gave up on a link.
#[derive(Debug, thiserror::Error)]
enum Lost {
    /// Seen by the liveness round or reported by lapin.
    #[error(transparent)]
    Down(#[from] LinkDown),
    /// lapin's event stream ended.
    #[error("connection error")]
    EventsEnded,
    /// A publish found its channel dead.
    #[error("a channel closed")]
    ChannelBroken,
}

/// Publishes `body` persistent-or-not as `properties` say, `mandatory`, on a confirm-mode
/// `channel`, and waits at most `timeout` for the confirm. Shared by the listener's handoff
/// and the worker's dead-lettering and `amqp` action.
///
/// # Errors
/// Anything but a plain broker ack: nack, return, timeout, channel failure.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: ShortString,
    routing_key: ShortString,
    body: &[u8],
    properties: lapin::BasicProperties,
    timeout: Duration,
) -> Result<(), PublishError> {
    let outcome = tokio::time::timeout(timeout, async {
        let confirm = channel
            .basic_publish(
                exchange,
                routing_key,
                // mandatory: an unroutable message comes back instead of vanishing.
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                properties,
            )
            .await
            .map_err(PublishError::ChannelClosed)?;
        confirm.await.map_err(PublishError::ChannelClosed)
    })
    .await;
    judge(outcome.unwrap_or(Err(PublishError::ConfirmTimeout)))
}

/// The verdict on one confirm: only a plain ack is success.
fn judge(confirmation: Result<Confirmation, PublishError>) -> Result<(), PublishError> {
    match confirmation {
        Err(err) => Err(err),
        // lapin reports a returned message as an ack carrying it: that is a failure.
        Ok(Confirmation::Ack(Some(returned))) => Err(PublishError::Returned {
            code: returned.reply_code,
            text: returned.reply_text.to_string(),
        }),
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Nack(_)) => Err(PublishError::Nack),
        Ok(Confirmation::NotRequested) => Err(PublishError::NotConfirmed),
    }
}

impl Publisher {
    /// Publishes `envelopes` in this order on one channel (so the broker keeps their order),
    /// all in flight at once, and waits for every confirm within `timeout`.
    pub async fn publish_in_order(
        &self,
        envelopes: &[&Envelope],
        timeout: Duration,
    ) -> Vec<Result<(), PublishError>> {
        let link = match self.inner.link.read().ok().and_then(|l| l.clone()) {
            Some(link) => link,
            None => {
                return envelopes
                    .iter()
                    .map(|_| Err(PublishError::NotConnected))
                    .collect();
            }
        };
        let channel = &link.channels[0];
        let _in_flight = self.inner.metrics.in_flight_guard();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut confirms = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            // Bounded like the confirms: a write that never completes (a connection dying
            // under us) must not hold the spool's forwarder, and every event behind it, forever.
            let send = channel.basic_publish(
                self.inner.exchange.clone(),
                envelope.routing_key.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &envelope.body,
                envelope.properties(),
            );
            let sent = match tokio::time::timeout_at(deadline, send).await {
                Ok(sent) => sent.map_err(PublishError::ChannelClosed),
                Err(_) => Err(PublishError::ConfirmTimeout),
            };
            confirms.push(sent);
        }
        let results = futures_util::future::join_all(confirms.into_iter().map(|sent| async move {
            let confirm = sent?;
            match tokio::time::timeout_at(deadline, confirm).await {
                Err(_) => Err(PublishError::ConfirmTimeout),
                Ok(c) => judge(c.map_err(PublishError::ChannelClosed)),
            }
        }))
        .await;
        if results
            .iter()
            .any(|r| matches!(r, Err(PublishError::ChannelClosed(_))))
            || !channel.status().connected()
        {
            self.link_broken(&link);
        }
        results
    }

    /// Asks the supervisor to rebuild `link`, if it is still the one in use: closing a link
    /// fails its pending confirms, and a stale report would end the next link at once.
    fn link_broken(&self, link: &Arc<Link>) {
        let current = self.inner.link.read().ok().and_then(|l| l.clone());
        if current.is_some_and(|c| Arc::ptr_eq(&c, link)) {
            self.inner.broken.notify_one();
        }
    }
}

struct Supervisor {
    inner: Arc<Inner>,
    urls: Vec<String>,
    channels: usize,
    topology: Topology,
    shutdown: CancellationToken,
}

impl Supervisor {
    async fn run(self) {
        let mut backoff = Backoff::new(BACKOFF);
        let mut brokers = self.urls.iter().cycle();
        while !self.shutdown.is_cancelled() {
            let Some(url) = brokers.next() else { break };
            // Bounded: a broker still booting can accept the socket and never finish the
            // handshake; waiting on it would keep the listener away from the broker for good.
            let connected = tokio::time::timeout(SETUP_TIMEOUT, self.connect(url))
                .await
                .unwrap_or(Err(ConnectError::Timeout));
            match connected {
                Ok(link) => {
                    backoff.session_began();
                    tracing::info!(broker = %redact(url), channels = self.channels, "broker connected");
                    let link = Arc::new(link);
                    self.set_link(Some(link.clone()));
                    let lost = self.watch(&link).await;
                    self.set_link(None);
                    let Some(reason) = lost.filter(|_| !self.shutdown.is_cancelled()) else {
                        close(&link).await;
                        break;
                    };
                    backoff.session_ended();
                    tracing::warn!(broker = %redact(url), reason = %reason, "broker connection lost; reconnecting");
                    self.inner.metrics.reconnects.inc();
                    // Closing makes lapin fail every confirm still pending on this link.
                    close(&link).await;
                }
                Err(err) => {
                    self.inner.state.send_replace(LinkState::Unreachable);
                    tracing::warn!(broker = %redact(url), error = %err, retry_in = ?backoff.delay(), "cannot connect to the broker");
                }
            }
            if !backoff.wait(&self.shutdown).await {
                break;
            }
        }
        self.set_link(None);
        // Stopped: nothing is coming for a request to wait for.
        self.inner.state.send_replace(LinkState::Unreachable);
    }

    async fn connect(&self, url: &str) -> Result<Link, ConnectError> {
        let (connection, setup) =
            connection::open_declared(url, "hookwarden-listener", &self.topology).await?;
        let mut channels = Vec::with_capacity(self.channels);
        for _ in 0..self.channels {
            let channel = connection
                .create_channel()
                .await
                .map_err(ConnectError::Channel)?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(ConnectError::Channel)?;
            channels.push(channel);
        }
        Ok(Link {
            connection,
            channels,
            probe: setup,
        })
    }

    /// Puts `link` in place, or takes the lost one away: a reconnect follows, and until an
    /// attempt fails the state is [`LinkState::Connecting`].
    fn set_link(&self, link: Option<Arc<Link>>) {
        let up = link.is_some();
        if let Ok(mut slot) = self.inner.link.write() {
            *slot = link;
        }
        self.inner.state.send_replace(if up {
            LinkState::Connected
        } else {
            LinkState::Connecting
        });
        self.inner.metrics.connected.set(i64::from(up));
    }

    /// Returns why the link failed, or `None` when shutdown begins. A connection the broker
    /// blocks for a resource alarm is flow control, not a dead link: the spool takes the
    /// events meanwhile.
    async fn watch(&self, link: &Link) -> Option<Lost> {
        let mut events = link.connection.events_listener();
        let mut tick = tokio::time::interval(connection::PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(lapin::Event::Error(err)) => return Some(LinkDown::Error(err).into()),
                    None => return Some(Lost::EventsEnded),
                    Some(_) => {}
                },
                () = self.inner.broken.notified() => return Some(Lost::ChannelBroken),
                _ = tick.tick() => {
                    let round = connection::check(link.connection.status(), &link.channels, &link.probe);
                    tokio::select! {
                        checked = round => if let Err(down) = checked {
                            return Some(down.into());
                        },
                        () = self.shutdown.cancelled() => return None,
                    }
                }
                () = self.shutdown.cancelled() => return None,
            }
        }
    }
}

async fn close(link: &Link) {
    let mut channels: Vec<&Channel> = link.channels.iter().collect();
    channels.push(&link.probe);
    connection::close(&link.connection, &channels).await;
}

#[cfg(test)]
impl Publisher {
    /// A publisher with no broker behind it, whose state a test sets: `Connecting` at first.
    pub(crate) fn detached() -> Self {
        Self::unconnected("hookwarden", BrokerMetrics::default())
    }

    /// Plays the supervisor: the link is now in `state` (there is never a link to publish on).
    pub(crate) fn set_state(&self, state: LinkState) {
        self.inner.state.send_replace(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// Plays the supervisor: `state` comes `after` from now.
    fn after(publisher: &Publisher, after: Duration, state: LinkState) {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            publisher.set_state(state);
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_before_the_first_connection_waits_for_it() {
        let publisher = Publisher::detached();
        after(&publisher, Duration::from_secs(2), LinkState::Connected);
        let started = Instant::now();
        assert!(publisher.ready_by(started + TIMEOUT).await);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_does_not_come_in_time_sends_this_request_and_the_next_elsewhere() {
        let publisher = Publisher::detached();
        let started = Instant::now();
        assert!(!publisher.ready_by(started + TIMEOUT).await);
        assert_eq!(started.elapsed(), TIMEOUT);
        // The same slow attempt is not waited out twice.
        assert!(!publisher.ready_by(Instant::now() + TIMEOUT).await);
        assert_eq!(started.elapsed(), TIMEOUT);
        // A connection lost later is waited for again.
        publisher.set_state(LinkState::Connected);
        assert!(publisher.ready_by(Instant::now()).await);
        publisher.set_state(LinkState::Connecting);
        after(&publisher, Duration::from_millis(300), LinkState::Connected);
        let lost = Instant::now();
        assert!(publisher.ready_by(lost + TIMEOUT).await);
        assert_eq!(lost.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn once_an_attempt_failed_requests_wait_no_more() {
        let publisher = Publisher::detached();
        // Waiting when the attempt fails: on at once, not at the deadline.
        after(
            &publisher,
            Duration::from_millis(40),
            LinkState::Unreachable,
        );
        let started = Instant::now();
        assert!(!publisher.ready_by(started + TIMEOUT).await);
        assert_eq!(started.elapsed(), Duration::from_millis(40));
        // Arriving after it: no wait at all, though the broker comes back within the timeout.
        after(&publisher, Duration::from_secs(1), LinkState::Connected);
        let later = Instant::now();
        assert!(!publisher.ready_by(later + TIMEOUT).await);
        assert_eq!(later.elapsed(), Duration::ZERO);
    }

    /// Only a plain broker ack hands an event off; every other confirm is a failure the
    /// listener answers 503 (or spools). A returned message (`Ack(Some(..))`) cannot be built
    /// outside lapin; tests/it/handoff.rs covers it against the broker.
    #[test]
    fn only_a_plain_ack_is_a_handoff() {
        assert!(judge(Ok(Confirmation::Ack(None))).is_ok());
        assert!(matches!(
            judge(Ok(Confirmation::Nack(None))),
            Err(PublishError::Nack)
        ));
        assert!(matches!(
            judge(Ok(Confirmation::NotRequested)),
            Err(PublishError::NotConfirmed)
        ));
        assert!(matches!(
            judge(Err(PublishError::ConfirmTimeout)),
            Err(PublishError::ConfirmTimeout)
        ));
    }
}
