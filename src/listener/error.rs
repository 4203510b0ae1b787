//! The one map from what went wrong with a request to its HTTP answer. An exhaustive match:
//! a new variant cannot reach a client without a status. 4xx bodies carry a stable `code`
//! and a reason; 5xx bodies carry no internals; no body ever carries a secret or signature.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::envelope::EnvelopeError;
use crate::listener::body::BodyError;
use crate::listener::extract::{ExtractError, JsonError};
use crate::scheme::VerifyError;

/// Seconds a provider is asked to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Every way a webhook request can be refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Path is not `/hooks/{provider}`.
    #[error("not found")]
    NotFound,
    /// `/hooks/{name}` with no such provider configured.
    #[error("unknown provider")]
    UnknownProvider,
    /// Anything but POST.
    #[error("method not allowed; use POST")]
    MethodNotAllowed,
    /// Request headers larger in total than the listener accepts.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// Client address outside the provider's `allow_ips`.
    #[error("source address not allowed")]
    Forbidden,
    /// Body could not be read within limits.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// Signature missing, wrong, stale, or malformed.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// Body is not JSON, or not unambiguous JSON.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// Id or type missing or unusable.
    #[error(transparent)]
    Extract(#[from] ExtractError),
    /// Id or type too long for AMQP.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// Could not hand off durably now.
    #[error("temporarily unable to accept events; retry later")]
    Unavailable,
    /// The provider sent more than its `rate_limit` allows.
    #[error("too many requests for this provider; retry in {retry_after} s")]
    RateLimited {
        /// Whole seconds until a request would be taken.
        retry_after: u64,
    },
}

impl RequestError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound | Self::UnknownProvider => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Body(BodyError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Body(BodyError::Timeout(_)) => StatusCode::REQUEST_TIMEOUT,
            Self::Body(BodyError::Read(_)) => StatusCode::BAD_REQUEST,
            Self::Verify(err) if err.is_malformed() => StatusCode::BAD_REQUEST,
            Self::Verify(_) => StatusCode::UNAUTHORIZED,
            Self::Json(_) | Self::Extract(_) | Self::Envelope(_) => StatusCode::BAD_REQUEST,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Stable snake_case code for clients and tests.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::UnknownProvider => "unknown_provider",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Forbidden => "forbidden",
            Self::HeadersTooLarge => "headers_too_large",
            Self::Body(BodyError::TooLarge { .. }) => "body_too_large",
            Self::Body(BodyError::Timeout(_)) => "body_timeout",
            Self::Body(BodyError::Read(_)) => "body_unreadable",
            Self::Verify(err) => err.reason(),
            Self::Json(JsonError::Invalid(_)) => "invalid_json",
            Self::Json(JsonError::DuplicateKey(_)) => "duplicate_key",
            Self::Extract(ExtractError::Missing { .. }) => "missing_field",
            Self::Extract(ExtractError::Invalid { .. }) | Self::Envelope(_) => "invalid_field",
            Self::Unavailable => "unavailable",
            Self::RateLimited { .. } => "rate_limited",
        }
    }

    /// The JSON answer.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let body = serde_json::json!({ "error": self.to_string(), "code": self.code() });
        let mut response = json_response(status, &body);
        match self {
            Self::MethodNotAllowed => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            Self::Unavailable => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            Self::RateLimited { retry_after } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            _ => {}
        }
        response
    }
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(RequestError::Unavailable.status(), 503);
        let r = RequestError::Unavailable.into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        let r = RequestError::MethodNotAllowed.into_response();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[header::ALLOW], "POST");
        assert_eq!(RequestError::Verify(VerifyError::Mismatch).status(), 401);
        assert_eq!(
            RequestError::Body(BodyError::TooLarge { limit: 1 }).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let duplicate = RequestError::Json(JsonError::DuplicateKey("duplicate key \"id\"".into()));
        assert_eq!(duplicate.status(), 400);
        assert_eq!(duplicate.code(), "duplicate_key");
        assert_eq!(
            RequestError::Json(JsonError::Invalid("eof".into())).code(),
            "invalid_json"
        );
    }
}
