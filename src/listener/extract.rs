//! Where an event's id and type come from: a JSON pointer into the body, a request header,
//! or the id the signature scheme itself carries (Standard Webhooks' `webhook-id`). The body
//! is parsed strictly first: an object that names a key twice is refused, since readers
//! disagree on which value counts (serde_json keeps the last, others the first).

use std::fmt;

use http::{HeaderMap, HeaderName};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

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
    pub fn parse(text: &str) -> Result<Self, FieldRefError> {
        if let Some(name) = text.strip_prefix("header:") {
            return HeaderName::from_bytes(name.trim().as_bytes())
                .map(Self::Header)
                .map_err(|source| FieldRefError::HeaderName {
                    name: name.to_owned(),
                    source,
                });
        }
        if text.starts_with('/') {
            return Ok(Self::Pointer(text.to_owned()));
        }
        Err(FieldRefError::Neither(text.to_owned()))
    }
}

/// Why a configured `event_id` or `event_type` names no place to read from.
#[derive(Debug, thiserror::Error)]
pub enum FieldRefError {
    /// `header:` followed by something that cannot be a header name.
    #[error("{name:?} is not a valid HTTP header name")]
    HeaderName {
        /// What followed `header:`.
        name: String,
        /// Why `http` refused it.
        #[source]
        source: http::header::InvalidHeaderName,
    },
    /// Neither `/pointer` nor `header:Name`.
    #[error("{0:?} is neither a JSON pointer (\"/id\") nor a header (\"header:X-Event-Id\")")]
    Neither(String),
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

/// Why a (verified) body cannot be read as one JSON document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not JSON: syntax, encoding (not UTF-8), trailing bytes, or nested over 128 deep.
    #[error("body is not valid JSON: {0}")]
    Invalid(String),
    /// Some object names the same key twice.
    #[error("body is ambiguous: {0}")]
    DuplicateKey(String),
}

/// Parses `body` as one JSON value, refusing duplicate keys in any object. One pass, the
/// same work as `serde_json::from_slice::<Value>` (serde_json's nesting limit still holds).
///
/// # Errors
/// Not JSON, or a key repeated within one object (named when short, with its position).
pub fn parse_body(body: &[u8]) -> Result<Value, JsonError> {
    serde_json::from_slice::<Strict>(body)
        .map(|Strict(value)| value)
        .map_err(|err| match err.classify() {
            // The visitor accepts every JSON type; its only data error is the duplicate.
            serde_json::error::Category::Data => JsonError::DuplicateKey(err.to_string()),
            _ => JsonError::Invalid(err.to_string()),
        })
}

/// A `Value` whose objects have unique keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity, so this is always Some.
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let Strict(value) = access.next_value()?;
            match map.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(slot) => {
                    let key = slot.key();
                    // Keys come from the body: name short ones, only measure long ones.
                    return Err(de::Error::custom(if key.len() <= 64 {
                        format!("duplicate key {key:?}")
                    } else {
                        format!("duplicate key of {} bytes", key.len())
                    }));
                }
            }
        }
        Ok(Value::Object(map))
    }
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
    fn bodies_parse_as_serde_json_does_but_refuse_duplicate_keys() {
        let text = br#"{"id":"e","n":[1,-2,3.5,18446744073709551615,1e300,true,null,"\u00e9"],"o":{"id":"inner"}}"#;
        assert_eq!(
            parse_body(text).unwrap(),
            serde_json::from_slice::<Value>(text).unwrap()
        );
        let err = parse_body(br#"{"id":"a","id":"b"}"#).unwrap_err();
        assert_eq!(
            err,
            JsonError::DuplicateKey("duplicate key \"id\" at line 1 column 19".to_owned())
        );
        // Escapes are decoded before comparing; nesting does not hide a repeat.
        assert!(matches!(
            parse_body(br#"{"id":"a","\u0069d":"b"}"#),
            Err(JsonError::DuplicateKey(_))
        ));
        assert!(matches!(
            parse_body(br#"[{"x":{"k":1,"k":1}}]"#),
            Err(JsonError::DuplicateKey(_))
        ));
        let long = format!(r#"{{"{k}":1,"{k}":2}}"#, k = "k".repeat(100));
        let err = parse_body(long.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("duplicate key of 100 bytes"), "{err}");
        assert!(!err.contains("kkkk"), "{err}");
        for bad in [&b"{"[..], b"not json", b"{} {}", b"\"\xff\""] {
            assert!(
                matches!(parse_body(bad), Err(JsonError::Invalid(_))),
                "{bad:?}"
            );
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = parse_body(deep.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }

    #[test]
    fn field_refs_that_name_no_place_say_why() {
        let err = FieldRef::parse("header:Event Id").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"Event Id\" is not a valid HTTP header name"
        );
        let source = std::error::Error::source(&err).expect("the header error is kept");
        assert!(source.is::<http::header::InvalidHeaderName>());
        let err = FieldRef::parse("id").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"id\" is neither a JSON pointer (\"/id\") nor a header (\"header:X-Event-Id\")"
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
