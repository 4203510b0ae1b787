//! One webhook request, start to answer: route → source check → bounded body → signature →
//! id and type → dedupe + handoff. The handoff is a trait, so this pipeline is tested
//! without a broker; only a `Verified` event ever reaches it.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;

use crate::broker::publisher::{PublishError, Publisher};
use crate::envelope::Envelope;
use crate::listener::body;
use crate::listener::client_ip::{client_ip, is_in};
use crate::listener::config::{ListenerConfig, Provider};
use crate::listener::dedupe::{Admission, Dedupe};
use crate::listener::error::{RequestError, json_response};
use crate::listener::extract::{extract, parse_body};
use crate::listener::spool::{Spool, SpoolError};
use crate::telemetry::ListenerMetrics;

/// Takes a verified event somewhere durable; `Ok` only once it is safe there.
pub trait Handoff: Clone + Send + Sync + 'static {
    /// Hands `envelope` off.
    fn handoff(&self, envelope: Envelope) -> impl Future<Output = Result<(), HandoffError>> + Send;
}

/// Why an event could not be handed off (answered 503).
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The broker did not take it (and there is no spool).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Neither the broker nor the spool could take it.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl HandoffError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Publish(err) => err.reason(),
            Self::Spool(SpoolError::Full) => "spool_full",
            Self::Spool(SpoolError::Io(_)) => "spool_unwritable",
        }
    }
}

/// At most this many events left in the spool, a request waits for the forwarder ...
const CATCH_UP_DEPTH: u64 = 2048;
/// ... this long at most, before it joins them in the spool.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The handoff: publish and wait for the confirm (at most `timeout`); when the broker is
/// unreachable or slow, or events are already waiting in the spool (so order is kept), write
/// to the spool instead.
#[derive(Clone)]
pub struct BrokerHandoff {
    /// The shared publisher.
    pub publisher: Publisher,
    /// `server.handoff_timeout`.
    pub timeout: std::time::Duration,
    /// The spool, when configured.
    pub spool: Option<Spool>,
    /// For the spool's counters.
    pub metrics: Arc<ListenerMetrics>,
}

impl Handoff for BrokerHandoff {
    async fn handoff(&self, envelope: Envelope) -> Result<(), HandoffError> {
        let Some(spool) = &self.spool else {
            return Ok(self.publisher.publish(&envelope, self.timeout).await?);
        };
        let started = Instant::now();
        // Older events wait in the spool: queue behind them, not ahead. Once the broker is
        // back and only a few are left, wait for the forwarder to send them instead of adding
        // to them: under steady load the spool would otherwise never run empty, and every
        // event would take the disk detour for good.
        let behind = spool.depth() > 0
            && !(self.publisher.is_connected()
                && spool.depth() <= CATCH_UP_DEPTH
                && spool.wait_drained(CATCH_UP_WAIT.min(self.timeout)).await);
        let reason = if behind {
            "older events are waiting in the spool".to_owned()
        } else if !self.publisher.is_connected() {
            PublishError::NotConnected.to_string()
        } else {
            // A wait for the spool above came out of the same handoff_timeout.
            let left = self.timeout.saturating_sub(started.elapsed());
            match self.publisher.publish(&envelope, left).await {
                Ok(()) => return Ok(()),
                // Unroutable is a topology problem the spool cannot fix: say so now.
                Err(err @ PublishError::Returned { .. }) => return Err(err.into()),
                Err(err) => err.to_string(),
            }
        };
        let provider = envelope.provider.to_string();
        spool.put(envelope).await?;
        self.metrics.spooled(&provider, &reason);
        Ok(())
    }
}

/// The request pipeline, shared by every connection.
pub struct Handler<H> {
    config: Arc<ListenerConfig>,
    routes: HashMap<String, usize>,
    dedupe: Dedupe,
    handoff: H,
    metrics: Arc<ListenerMetrics>,
}

/// Largest total size of request headers (names and values); provider headers are a few
/// hundred bytes, so anything near this is an attack or a misconfigured proxy.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Label used for requests that name no configured provider.
const UNKNOWN: &str = "unknown";

impl<H: Handoff> Handler<H> {
    /// Builds the pipeline over a validated config.
    pub fn new(config: Arc<ListenerConfig>, handoff: H, metrics: Arc<ListenerMetrics>) -> Self {
        let routes = config
            .providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        let dedupe = Dedupe::new(config.dedupe.capacity, config.dedupe.ttl);
        Self {
            config,
            routes,
            dedupe,
            handoff,
            metrics,
        }
    }

    /// The id cache (tests inspect it).
    pub fn dedupe(&self) -> &Dedupe {
        &self.dedupe
    }

    /// Answers one request from `peer`.
    pub async fn handle<B>(&self, request: Request<B>, peer: IpAddr) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let mut label = UNKNOWN;
        let mut event_id = None;
        let result = self.process(request, peer, &mut label, &mut event_id).await;
        let (response, outcome) = match result {
            Ok(admission) => {
                let status = match admission {
                    Admission::Accepted => "accepted",
                    Admission::Duplicate => {
                        self.metrics.duplicate(label);
                        "duplicate"
                    }
                };
                let body = serde_json::json!({ "status": status, "id": event_id.as_deref() });
                (json_response(StatusCode::OK, &body), status)
            }
            Err(err) => {
                let code = err.code();
                (err.into_response(), code)
            }
        };
        self.metrics.request_done(
            label,
            event_id.as_deref(),
            response.status().as_u16(),
            outcome,
            started.elapsed(),
        );
        response
    }

    async fn process<'s, B>(
        &'s self,
        request: Request<B>,
        peer: IpAddr,
        label: &mut &'s str,
        event_id: &mut Option<String>,
    ) -> Result<Admission, RequestError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let provider = self.route(request.uri().path())?;
        *label = &provider.name;
        if request.method() != Method::POST {
            return Err(RequestError::MethodNotAllowed);
        }
        let (parts, body) = request.into_parts();
        // hyper bounds its read buffer, not the headers a burst can fit into it.
        let header_bytes: usize = parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        if header_bytes > MAX_HEADER_BYTES {
            return Err(RequestError::HeadersTooLarge);
        }
        let source = client_ip(peer, &parts.headers, &self.config.server.trusted_proxy_nets);
        if !provider.allow_ips.is_empty() && !is_in(source, &provider.allow_ips) {
            return Err(RequestError::Forbidden);
        }
        let limit = self.config.server.max_body;
        body::check_declared_length(&parts.headers, limit)?;
        let body = body::read(body, limit, self.config.server.body_timeout).await?;

        let received_at = SystemTime::now();
        let verified = provider
            .scheme
            .verify(&provider.keys, &parts.headers, &body, received_at)
            .inspect_err(|err| {
                self.metrics
                    .verification_failed(&provider.name, err.reason())
            })?;

        // Parsed only after the signature holds: forged input never reaches the parser.
        let json = parse_body(&body)?;
        let id = extract(
            &provider.event_id,
            "event id",
            &parts.headers,
            &json,
            &verified,
        )?;
        *event_id = Some(id.clone());
        let kind = extract(
            &provider.event_type,
            "event type",
            &parts.headers,
            &json,
            &verified,
        )?;
        drop(json);
        let envelope = Envelope::new(
            &provider.name,
            id,
            kind,
            provider.scheme.name(),
            source,
            received_at,
            body,
        )?;
        self.admit(envelope).await
    }

    fn route(&self, path: &str) -> Result<&Provider, RequestError> {
        let name = path
            .strip_prefix("/hooks/")
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .ok_or(RequestError::NotFound)?;
        self.routes
            .get(name)
            .map(|&i| &self.config.providers[i])
            .ok_or(RequestError::UnknownProvider)
    }

    async fn admit(&self, envelope: Envelope) -> Result<Admission, RequestError> {
        let dedupe = self.dedupe.clone();
        let handoff = self.handoff.clone();
        let metrics = self.metrics.clone();
        // Its own task: a client that hangs up must not cancel a publish half-way, or the
        // event could be in the queue yet unremembered.
        let task = tokio::spawn(async move {
            let provider = envelope.provider.to_string();
            let id = envelope.event_id.to_string();
            let started = Instant::now();
            let observer = metrics.clone();
            let result = dedupe
                .admit(&provider, &id, async move {
                    let result = handoff.handoff(envelope).await;
                    if result.is_ok() {
                        observer.handed_off(started.elapsed());
                    }
                    result
                })
                .await;
            if let Err(err) = &result {
                metrics.handoff_failed(&provider, err.reason(), err);
            }
            result
        });
        match task.await {
            Ok(Ok(admission)) => Ok(admission),
            Ok(Err(_)) | Err(_) => Err(RequestError::Unavailable),
        }
    }
}
