//! A minimal HTTP/1.1 client for the CLI: one POST over a fresh connection, plain `http://`
//! only (put TLS in front of the listener, not inside it).

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// A response as the CLI prints it.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: http::StatusCode,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// Body as text (lossy).
    pub body: String,
}

/// POSTs `body` with `headers` to `url`.
///
/// # Errors
/// Unsupported or invalid URL, connection or protocol failure.
pub async fn post(
    url: &str,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
) -> anyhow::Result<Answer> {
    let uri: Uri = url
        .parse()
        .map_err(|err| anyhow::anyhow!("invalid URL {url:?}: {err}"))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("only http:// URLs are supported, not {url:?}");
    }
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("URL {url:?} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|err| anyhow::anyhow!("cannot connect to {host}:{port}: {err}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let mut request = Request::post(uri)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    for (name, value) in headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let response = sender.send_request(request).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
