//! The public HTTP/1.1 server: accepts connections on a bound listener, serves each with the
//! request pipeline under header and buffer limits, and on shutdown stops accepting and lets
//! open connections finish for at most the grace period.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::listener::handler::{Handler, Handoff};

/// Largest request head (request line and headers) a client may send; larger is answered
/// 431 by hyper, which then closes the connection. Provider headers are small; 100 KB
/// headers are an attack.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Limits applied to every connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time allowed for the request head.
    pub header_timeout: Duration,
    /// Time allowed for open connections to finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// Connections served at once; the next waits in the backlog until one closes.
    pub max_connections: usize,
}

/// Serves `listener` until `shutdown` is cancelled, then drains.
pub async fn serve<H: Handoff>(
    listener: TcpListener,
    handler: Arc<Handler<H>>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // `max_buf_size` alone is not a bound on the head: one read may fill the buffer's
        // spare capacity past it, and a head that arrives whole in it is parsed anyway.
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        // A slot first: at the limit nothing is accepted, and new connections wait in the
        // kernel's backlog (which the kernel bounds) instead of taking file descriptors.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Answers are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(request, peer_ip(peer)).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        open_connections = open,
        "stopped accepting; finishing open requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace = ?limits.shutdown_grace, "grace period ran out with connections still open");
        }
    }
}

fn peer_ip(peer: SocketAddr) -> std::net::IpAddr {
    peer.ip()
}
