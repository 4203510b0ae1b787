//! `hookwarden-listener`: verified, deduplicated, broker-confirmed intake of webhooks.
//! [`start`] wires the pieces: the confirmed publisher, the request pipeline, the public server
//! and the admin server, all stopped by one shutdown token.

pub mod body;
pub mod client_ip;
pub mod config;
pub mod dedupe;
pub mod error;
pub mod extract;
pub mod forwarder;
pub mod handler;
pub mod limit;
pub mod server;
pub mod spool;

use crate::admin::{self, NotReady};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::publisher::Publisher;
use crate::broker::topology::Topology;
use crate::telemetry::ListenerMetrics;
use config::ListenerConfig;
use handler::{BrokerHandoff, Handler};

/// A started listener: what tests and the binary hold on to.
pub struct Running {
    /// The publisher (readiness, tests).
    pub publisher: Publisher,
    /// The request pipeline (tests inspect its dedupe cache).
    pub handler: Arc<Handler<BrokerHandoff>>,
    /// Completes when the listener has stopped.
    pub done: tokio::task::JoinHandle<()>,
}

struct AdminStatus {
    publisher: Publisher,
    spool: Option<spool::Spool>,
    metrics: Arc<ListenerMetrics>,
}

impl admin::Status for AdminStatus {
    fn readiness(&self) -> Result<(), NotReady> {
        // Events are accepted durably while either the broker or the spool takes them.
        match &self.spool {
            _ if self.publisher.is_connected() => Ok(()),
            Some(spool) if spool.accepting() => Ok(()),
            Some(_) => Err(NotReady::Because(
                "broker unreachable, and the spool is full or unwritable",
            )),
            None => Err(NotReady::Because("broker unreachable")),
        }
    }
    fn metrics(&self) -> String {
        self.metrics.encode()
    }
}

/// Longest the broker connection gets to close cleanly at shutdown.
const BROKER_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Starts the listener on already bound sockets; it runs until `shutdown` is cancelled,
/// then stops accepting, finishes in-flight requests (bounded), closes the broker
/// connection, and completes `done`.
///
/// # Errors
/// The spool cannot be opened.
pub fn start(
    config: ListenerConfig,
    public: TcpListener,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> Result<Running, spool::SpoolError> {
    let config = Arc::new(config);
    let metrics = Arc::new(ListenerMetrics::new());
    // The broker outlives the HTTP server: in-flight requests still need their confirms.
    let broker_shutdown = CancellationToken::new();
    let (publisher, supervisor) = Publisher::start(
        &config.amqp,
        Topology::from(&config.amqp),
        metrics.broker.clone(),
        broker_shutdown.clone(),
    );
    let spool = match &config.spool.path {
        Some(path) => Some(spool::Spool::open(path, config.spool.max_bytes)?),
        None => None,
    };
    let forwarding = spool.clone().map(|s| {
        tokio::spawn(forwarder::run(
            s,
            publisher.clone(),
            config.server.handoff_timeout,
            metrics.clone(),
            broker_shutdown.clone(),
        ))
    });
    let handoff = BrokerHandoff {
        publisher: publisher.clone(),
        timeout: config.server.handoff_timeout,
        spool: spool.clone(),
        metrics: metrics.clone(),
    };
    let handler = Arc::new(Handler::new(config.clone(), handoff, metrics.clone()));
    let status = Arc::new(AdminStatus {
        publisher: publisher.clone(),
        spool,
        metrics,
    });
    let admin_shutdown = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(admin, status, None, admin_shutdown.clone()));
    let limits = server::ConnectionLimits {
        header_timeout: config.server.header_timeout,
        shutdown_grace: config.server.shutdown_grace,
        max_connections: config.server.max_connections,
    };
    let serving = tokio::spawn(server::serve(public, handler.clone(), limits, shutdown));
    let done = tokio::spawn(async move {
        let _ = serving.await;
        broker_shutdown.cancel();
        if let Some(f) = forwarding {
            // What is left in the spool is forwarded by the next start.
            let _ = f.await;
        }
        if tokio::time::timeout(BROKER_CLOSE_GRACE, supervisor)
            .await
            .is_err()
        {
            tracing::warn!("broker connection did not close in time");
        }
        admin_shutdown.cancel();
        let _ = admin_task.await;
        tracing::info!("listener stopped");
    });
    Ok(Running {
        publisher,
        handler,
        done,
    })
}
