//! Reading a request body under a size limit and a time limit: a declared length over the
//! limit is refused before reading, and nothing is buffered past the limit while reading
//! (chunked bodies included).

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Declared or actual size over the limit.
    #[error("body larger than {limit} bytes")]
    TooLarge {
        /// The configured `max_body`.
        limit: u64,
    },
    /// The client did not finish sending in time.
    #[error("body not received within {0:?}")]
    Timeout(Duration),
    /// The connection failed mid-body, or the framing was invalid.
    #[error("cannot read body: {0}")]
    Read(String),
}

/// Rejects a `Content-Length` over `limit` without reading anything.
///
/// # Errors
/// `TooLarge` when the declared length exceeds the limit.
pub fn check_declared_length(headers: &HeaderMap, limit: u64) -> Result<(), BodyError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(len) if len > limit => Err(BodyError::TooLarge { limit }),
        _ => Ok(()),
    }
}

/// Collects `body`, at most `limit` bytes, within `timeout`.
///
/// # Errors
/// Over the limit, too slow, or a broken stream.
pub async fn read<B>(body: B, limit: u64, timeout: Duration) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    let collected = tokio::time::timeout(timeout, Limited::new(body, cap).collect()).await;
    match collected {
        Err(_) => Err(BodyError::Timeout(timeout)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) => {
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(BodyError::TooLarge { limit })
            } else {
                Err(BodyError::Read(err.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_while_streaming() {
        let chunks = (0..10).map(|_| {
            Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(vec![b'x'; 100])))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let err = read(body, 950, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 950 }));
        let ok = read(
            Full::new(Bytes::from_static(b"{}")),
            950,
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(ok.unwrap(), Bytes::from_static(b"{}"));
    }

    #[test]
    fn declared_lengths_over_the_limit_are_refused_before_reading() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, "10000000000".parse().unwrap());
        assert!(check_declared_length(&headers, 1024).is_err());
        headers.insert(http::header::CONTENT_LENGTH, "1024".parse().unwrap());
        assert!(check_declared_length(&headers, 1024).is_ok());
    }
}
