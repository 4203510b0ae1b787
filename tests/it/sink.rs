//! A real local HTTP server standing in for an action target: records every request and
//! answers as the test tells it (200, fail the first N, fail until told otherwise, slow).
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub traceparent: Option<String>,
    pub body: String,
    /// When it arrived (its headers parsed).
    pub at: std::time::Instant,
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    /// Answer 503 to this many requests first.
    fail_first: AtomicU32,
    /// Answer 500 to everything while non-zero.
    fail_always: AtomicU32,
    /// Delay every answer by this many milliseconds.
    delay_ms: AtomicU64,
    /// Requests being answered now, and the most there have been at once.
    open: AtomicU32,
    max_open: AtomicU32,
}

/// The sink; stops when dropped.
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let arrived = std::time::Instant::now();
                            let now_open = s.open.fetch_add(1, Ordering::SeqCst) + 1;
                            s.max_open.fetch_max(now_open, Ordering::SeqCst);
                            let method = req.method().to_string();
                            let path = req.uri().path().to_owned();
                            let idempotency_key = req
                                .headers()
                                .get("idempotency-key")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let traceparent = req
                                .headers()
                                .get("traceparent")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let delay = s.delay_ms.load(Ordering::SeqCst);
                            if delay > 0 {
                                // A slow target is the behaviour asked for, not a wait.
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            let status = if s.fail_always.load(Ordering::SeqCst) > 0 {
                                500
                            } else if s
                                .fail_first
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok()
                            {
                                503
                            } else {
                                s.received.lock().unwrap().push(Received {
                                    method,
                                    traceparent,
                                    path,
                                    idempotency_key,
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                    at: arrived,
                                });
                                200
                            };
                            s.open.fetch_sub(1, Ordering::SeqCst);
                            let mut response = hyper::Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered 200, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until what the sink has received (answered 200) passes `check`; returns it.
    /// On timeout, says how many requests came and the paths of the last few.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        crate::harness::wait_for(what, within, || {
            let got = self.received();
            let verdict = if check(&got) {
                Ok(got)
            } else {
                let last: Vec<&str> = got.iter().rev().take(10).map(|r| r.path.as_str()).collect();
                Err(format!("{} received, the last: {last:?}", got.len()))
            };
            async move { verdict }
        })
        .await
    }

    /// The most requests the sink has had open at once.
    pub fn max_open(&self) -> u32 {
        self.state.max_open.load(Ordering::SeqCst)
    }

    pub fn fail_first(&self, n: u32) {
        self.state.fail_first.store(n, Ordering::SeqCst);
    }

    pub fn fail_always(&self, on: bool) {
        self.state
            .fail_always
            .store(u32::from(on), Ordering::SeqCst);
    }

    pub fn delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
