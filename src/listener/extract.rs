//! Where an event's id and type come from: a JSON pointer into the body, a request header,
//! or the id the signature scheme itself carries (Standard Webhooks' `webhook-id`).

use std::fmt;

use http::{HeaderMap, HeaderName};
use serde_json::Value;

use crate::scheme::Verified;

/// A configured source of the event id or type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldRef {
    /// An RFC 6901 JSON pointer into the body, e.g. `/data/id`.
    Pointer(String),
    /// A request header (`header:X-GitHub-Delivery`).
    Header(HeaderName),
    /// The id carried by the signature scheme.
    SchemeId,
}

impl FieldRef {
    /// Parses `"/pointer"` or `"header:Name"`.
    ///
    /// # Errors
    /// Anything else, with a reason that shows both forms.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix("header:") {
            return HeaderName::from_bytes(name.trim().as_bytes())
                .map(Self::Header)
                .map_err(|_| format!("{name:?} is not a valid HTTP header name"));
        }
        if text.starts_with('/') {
            return Ok(Self::Pointer(text.to_owned()));
        }
        Err(format!(
            "{text:?} is neither a JSON pointer (\"/id\") nor a header (\"header:X-Event-Id\")"
        ))
    }
}

impl fmt::Display for FieldRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pointer(p) => f.write_str(p),
            Self::Header(h) => write!(f, "header:{h}"),
            Self::SchemeId => f.write_str("the scheme's id header"),
        }
    }
}

/// Why an id or type could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// Nothing at the configured place.
    #[error("no {what} at {at}")]
    Missing {
        /// `event id` or `event type`.
        what: &'static str,
        /// The configured place.
        at: String,
    },
    /// Something there, but not usable as an id or type.
    #[error("{what} at {at} {reason}")]
    Invalid {
        /// `event id` or `event type`.
        what: &'static str,
        /// The configured place.
        at: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Reads one field (`what` names it in errors).
///
/// # Errors
/// Missing, empty, not a string or integer, not UTF-8, or longer than 255 bytes.
pub fn extract(
    field: &FieldRef,
    what: &'static str,
    headers: &HeaderMap,
    body: &Value,
    verified: &Verified,
) -> Result<String, ExtractError> {
    let missing = || ExtractError::Missing {
        what,
        at: field.to_string(),
    };
    let invalid = |reason| ExtractError::Invalid {
        what,
        at: field.to_string(),
        reason,
    };
    let value = match field {
        FieldRef::Pointer(pointer) => match body.pointer(pointer) {
            None | Some(Value::Null) => return Err(missing()),
            Some(Value::String(s)) => s.clone(),
            // Some providers number their events; the decimal text is the id.
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            Some(_) => return Err(invalid("is not a string or an integer")),
        },
        FieldRef::Header(name) => {
            let mut values = headers.get_all(name).iter();
            let first = values.next().ok_or_else(missing)?;
            if values.next().is_some() {
                return Err(invalid("is sent more than once"));
            }
            first
                .to_str()
                .map_err(|_| invalid("is not visible ASCII"))?
                .to_owned()
        }
        FieldRef::SchemeId => verified.scheme_id.clone().ok_or_else(missing)?,
    };
    if value.is_empty() {
        return Err(invalid("is empty"));
    }
    // AMQP short strings (message_id, type) hold at most 255 bytes.
    if value.len() > 255 {
        return Err(invalid("is longer than 255 bytes"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v() -> Verified {
        Verified {
            scheme_id: Some("msg_1".into()),
            timestamp: None,
        }
    }

    #[test]
    fn pointers_headers_and_scheme_ids() {
        let body = json!({"id": "evt_1", "n": 42, "data": {"kind": "a.b"}});
        let mut headers = HeaderMap::new();
        headers.insert("x-id", "hdr_1".parse().unwrap());
        let p = |s: &str| FieldRef::parse(s).unwrap();
        assert_eq!(
            extract(&p("/id"), "event id", &headers, &body, &v()).unwrap(),
            "evt_1"
        );
        assert_eq!(
            extract(&p("/n"), "event id", &headers, &body, &v()).unwrap(),
            "42"
        );
        assert_eq!(
            extract(&p("/data/kind"), "event type", &headers, &body, &v()).unwrap(),
            "a.b"
        );
        assert_eq!(
            extract(&p("header:X-Id"), "event id", &headers, &body, &v()).unwrap(),
            "hdr_1"
        );
        assert_eq!(
            extract(&FieldRef::SchemeId, "event id", &headers, &body, &v()).unwrap(),
            "msg_1"
        );
    }

    #[test]
    fn bad_ids_are_named_errors() {
        let body = json!({"id": "x".repeat(256), "empty": "", "obj": {}});
        let headers = HeaderMap::new();
        let p = |s: &str| FieldRef::parse(s).unwrap();
        let err = extract(&p("/missing"), "event id", &headers, &body, &v()).unwrap_err();
        assert_eq!(err.to_string(), "no event id at /missing");
        let err = extract(&p("/id"), "event id", &headers, &body, &v()).unwrap_err();
        assert_eq!(err.to_string(), "event id at /id is longer than 255 bytes");
        assert!(extract(&p("/empty"), "event id", &headers, &body, &v()).is_err());
        assert!(extract(&p("/obj"), "event id", &headers, &body, &v()).is_err());
        assert!(extract(&p("header:X-Id"), "event id", &headers, &body, &v()).is_err());
        assert!(FieldRef::parse("id").is_err());
    }
}
