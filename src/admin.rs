//! The admin address both daemons serve: `/healthz` (the process answers), `/readyz` (the
//! daemon does its job now, or says why not) and `/metrics` (Prometheus text), and the pages
//! a daemon adds under a prefix of its own (the worker's web view, `/ui/`). Kept off the
//! public port.

use std::convert::Infallible;
use std::error::Error;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why a daemon is not ready: what it cannot do, in words an operator can act on, and the
/// failure behind it when there is one. `/readyz` answers `not ready: ` and this.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotReady {
    /// A condition that needs no cause to explain it.
    #[error("{0}")]
    Because(&'static str),
    /// What the daemon cannot do, because of `cause`.
    #[error("{what}: {cause}")]
    Failed {
        /// What it cannot do, e.g. "not consuming".
        what: &'static str,
        /// Why.
        #[source]
        cause: Arc<dyn Error + Send + Sync>,
    },
}

/// What the admin endpoints report on.
pub trait Status: Send + Sync + 'static {
    /// `Ok` when the daemon does its job now (the listener takes events durably, the worker
    /// consumes); otherwise why not.
    ///
    /// # Errors
    /// The daemon is not ready.
    fn readiness(&self) -> Result<(), NotReady>;
    /// Prometheus text exposition.
    fn metrics(&self) -> String;
}

/// Pages a daemon serves on its admin address besides the endpoints above, under a path
/// prefix of their own.
pub trait Pages: Send + Sync + 'static {
    /// Whether `path` is one of theirs.
    fn serves(&self, path: &str) -> bool;
    /// The answer to `request`, whose path they serve.
    fn answer(
        &self,
        request: Request<hyper::body::Incoming>,
    ) -> futures_util::future::BoxFuture<'static, Response<Full<Bytes>>>;
}

/// Serves the admin endpoints, and `pages` when given, on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    status: Arc<dyn Status>,
    pages: Option<Arc<dyn Pages>>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let (status, pages) = (status.clone(), pages.clone());
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let status = status.clone();
            let page = pages
                .as_ref()
                .filter(|p| p.serves(request.uri().path()))
                .cloned();
            async move {
                Ok::<_, Infallible>(match page {
                    Some(pages) => pages.answer(request).await,
                    None => answer(request.uri().path(), status.as_ref()),
                })
            }
        });
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

fn answer(path: &str, status: &dyn Status) -> Response<Full<Bytes>> {
    let (code, content_type, body) = match path {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => match status.readiness() {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            status.metrics(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    struct Fixed(Result<(), NotReady>);

    impl Status for Fixed {
        fn readiness(&self) -> Result<(), NotReady> {
            self.0.clone()
        }
        fn metrics(&self) -> String {
            "# EOF\n".to_owned()
        }
    }

    async fn get(path: &str, status: &Fixed) -> (StatusCode, String) {
        let response = answer(path, status);
        let code = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_says_why_a_daemon_is_not_ready() {
        let down = Fixed(Err(NotReady::Failed {
            what: "not consuming",
            cause: Arc::new(std::io::Error::other("connection closed")),
        }));
        assert_eq!(
            get("/readyz", &down).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: not consuming: connection closed\n".to_owned()
            )
        );
        let up = Fixed(Ok(()));
        assert_eq!(
            get("/readyz", &up).await,
            (StatusCode::OK, "ready\n".to_owned())
        );
        assert_eq!(get("/healthz", &down).await.0, StatusCode::OK);
        assert_eq!(get("/metrics", &down).await.1, "# EOF\n");
        assert_eq!(get("/other", &up).await.0, StatusCode::NOT_FOUND);
    }
}
