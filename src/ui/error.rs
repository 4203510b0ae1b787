//! The web view's one error → HTTP status map: every page and JSON endpoint answers its
//! failures through [`UiError`], as a JSON `{"error": …}` or an HTML page saying the same.

use http::StatusCode;

use crate::worker::state::StoreError;

/// Why a page could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// No such page, or nothing under that key.
    #[error("{0}")]
    NotFound(String),
    /// A query parameter that does not read.
    #[error("{0}")]
    BadRequest(String),
    /// A token is configured and the request carried neither it nor the session cookie.
    #[error("this view needs the [ui] token: send it as a bearer token, or log in at /ui/login")]
    Unauthorized,
    /// Without a token, a request whose Host is not this machine's loopback (or a view on an
    /// address beyond it): refused rather than shown to whoever reached it.
    #[error("{0}")]
    Forbidden(String),
    /// The login form's token was not the token.
    #[error("that is not the token")]
    WrongToken,
    /// A login form over its size.
    #[error("the login form is over {0} bytes")]
    TooLarge(usize),
    /// A method other than GET (and POST to the login form): the view changes nothing.
    #[error("the web view is read-only: {0} is not allowed here")]
    MethodNotAllowed(String),
    /// The state store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A page failed to render (a defect of ours, said plainly rather than hidden).
    #[error("rendering the page: {0}")]
    Render(String),
}

impl UiError {
    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::WrongToken => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Store(err) if err.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store(_) | Self::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON answer's body.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_and_says_why() {
        assert_eq!(
            UiError::BadRequest("from: not a time".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(UiError::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            UiError::MethodNotAllowed("DELETE".into()).json(),
            serde_json::json!({"error": "the web view is read-only: DELETE is not allowed here"})
        );
        assert_eq!(
            UiError::Store(StoreError::Pool("timed out".into())).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            UiError::Store(StoreError::Poisoned).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
