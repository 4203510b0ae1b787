//! Where an event's id and type come from: a JSON pointer into the body, a request header,
//! or the id the signature scheme itself carries (Standard Webhooks' `webhook-id`). The body
//! is parsed strictly first: an object that names a key twice is refused, since readers
//! disagree on which value counts (serde_json keeps the last, others the first).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use http::{HeaderMap, HeaderName};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
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

/// A body that parsed as one JSON document with no key repeated within an object. Nothing is
/// built from it: the listener reads one or two values, found by [`Document::at`] where they
/// lie in the text, and passes the bytes on untouched.
#[derive(Debug, Clone, Copy)]
pub struct Checked<'a>(&'a str);

/// Checks `body` the way the listener reads it: one JSON document (serde_json's grammar and
/// nesting limit), UTF-8, no object naming a key twice. Allocates only a key list per object.
///
/// # Errors
/// Not JSON, or a key repeated within one object (named when short, with its position).
pub fn check_body(body: &[u8]) -> Result<Checked<'_>, JsonError> {
    let classify = |err: serde_json::Error| match err.classify() {
        // The visitor accepts every JSON type; its only data error is the duplicate.
        serde_json::error::Category::Data => JsonError::DuplicateKey(err.to_string()),
        _ => JsonError::Invalid(err.to_string()),
    };
    let text = std::str::from_utf8(body).map_err(|err| JsonError::Invalid(err.to_string()))?;
    let mut de = serde_json::Deserializer::from_str(text);
    Unique.deserialize(&mut de).map_err(classify)?;
    de.end().map_err(classify)?;
    Ok(Checked(text))
}

/// Parses `body` into a `Value` after [`check_body`]: as strict as the listener, for callers
/// that need the whole document (`hookwarden rules test`).
///
/// # Errors
/// As [`check_body`].
pub fn parse_body(body: &[u8]) -> Result<Value, JsonError> {
    check_body(body)?;
    serde_json::from_slice(body).map_err(|err| JsonError::Invalid(err.to_string()))
}

/// Walks any JSON value, refusing an object that names a key twice.
#[derive(Clone, Copy)]
struct Unique;

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<(), A::Error> {
        // A key borrows the body unless it holds an escape. Most objects are small: a list
        // scanned in place, a set once it grows.
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        let mut many: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = access.next_key_seed(Key)? {
            access.next_value_seed(self)?;
            let repeated = if many.is_empty() {
                let seen = keys.contains(&key);
                if !seen && keys.len() == 32 {
                    many.extend(keys.drain(..));
                }
                seen
            } else {
                many.contains(&key)
            };
            if repeated {
                // Keys come from the body: name short ones, only measure long ones.
                return Err(de::Error::custom(if key.len() <= 64 {
                    format!("duplicate key {key:?}")
                } else {
                    format!("duplicate key of {} bytes", key.len())
                }));
            }
            if many.is_empty() {
                keys.push(key);
            } else {
                many.insert(key);
            }
        }
        Ok(())
    }
}

/// An object key, borrowed from the text when it has no escape.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

/// What sits at a JSON pointer, as far as an id or a type cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<'a> {
    /// Nothing there, or `null`.
    Nothing,
    /// A string.
    Text(Cow<'a, str>),
    /// An integer, as its decimal text.
    Integer(String),
    /// Anything else: a fraction, a boolean, an array, an object.
    Other,
}

/// A JSON document [`extract`] can look into.
pub trait Document {
    /// The value at an RFC 6901 pointer (`/data/id`).
    fn at(&self, pointer: &str) -> Found<'_>;
}

impl Document for Value {
    fn at(&self, pointer: &str) -> Found<'_> {
        match self.pointer(pointer) {
            None | Some(Value::Null) => Found::Nothing,
            Some(Value::String(s)) => Found::Text(Cow::Borrowed(s)),
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Found::Integer(n.to_string()),
            Some(_) => Found::Other,
        }
    }
}

impl Document for Checked<'_> {
    fn at(&self, pointer: &str) -> Found<'_> {
        let tokens: Vec<Cow<'_, str>> = match pointer.strip_prefix('/') {
            Some(path) => path
                .split('/')
                .map(|token| {
                    if token.contains('~') {
                        Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
                    } else {
                        Cow::Borrowed(token)
                    }
                })
                .collect(),
            None if pointer.is_empty() => Vec::new(),
            None => return Found::Nothing,
        };
        // One pass over the text, down the pointer's path. The text is known to be valid, so
        // it cannot fail to parse.
        let mut de = serde_json::Deserializer::from_str(self.0);
        Path(&tokens).deserialize(&mut de).unwrap_or(Found::Nothing)
    }
}

/// The rest of a pointer's path: the value it ends at, skipping everything beside the path.
struct Path<'p, 't>(&'p [Cow<'t, str>]);

impl<'de> DeserializeSeed<'de> for Path<'_, '_> {
    type Value = Found<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        if self.0.is_empty() {
            deserializer.deserialize_any(Leaf)
        } else {
            deserializer.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Path<'_, '_> {
    type Value = Found<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Found::Nothing)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Found::Nothing)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Found::Nothing)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Found::Nothing)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Found::Nothing)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Found::Nothing)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let (token, rest) = (&self.0[0], &self.0[1..]);
        // RFC 6901 as serde_json reads it: digits only (no sign), no leading zero but `0`.
        let index = if token.bytes().all(|b| b.is_ascii_digit())
            && (token.as_ref() == "0" || !token.starts_with('0'))
        {
            token.parse::<usize>().ok()
        } else {
            None
        };
        let mut found = Found::Nothing;
        if let Some(index) = index {
            let mut skipped = 0;
            while skipped < index && seq.next_element::<IgnoredAny>()?.is_some() {
                skipped += 1;
            }
            if skipped == index {
                found = seq.next_element_seed(Path(rest))?.unwrap_or(Found::Nothing);
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(found)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let (token, rest) = (&self.0[0], &self.0[1..]);
        let mut found = None;
        while let Some(key) = access.next_key_seed(Key)? {
            // Keys are unique (checked), so the first match is the only one.
            if found.is_none() && key == *token {
                found = Some(access.next_value_seed(Path(rest))?);
            } else {
                access.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found.unwrap_or(Found::Nothing))
    }
}

/// A pointer's final value, classified.
struct Leaf;

impl<'de> DeserializeSeed<'de> for Leaf {
    type Value = Found<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Leaf {
    type Value = Found<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Found::Other)
    }

    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Found::Integer(n.to_string()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Found::Integer(n.to_string()))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Found::Other)
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Found::Text(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Found::Text(Cow::Owned(s.to_owned())))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Found::Nothing)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Found::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        while access.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Found::Other)
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
    body: &impl Document,
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
        FieldRef::Pointer(pointer) => match body.at(pointer) {
            Found::Nothing => return Err(missing()),
            Found::Text(s) => s.into_owned(),
            // Some providers number their events; the decimal text is the id.
            Found::Integer(n) => n,
            Found::Other => return Err(invalid("is not a string or an integer")),
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
        // Past 32 keys an object's keys are kept in a set: a repeat is still found.
        let wide: Vec<String> = (0..40).map(|i| format!(r#""k{i}":{i}"#)).collect();
        assert!(parse_body(format!("{{{}}}", wide.join(",")).as_bytes()).is_ok());
        for again in ["k3", "k39"] {
            let text = format!(r#"{{{},"{again}":0}}"#, wide.join(","));
            let err = parse_body(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(&format!("duplicate key \"{again}\"")), "{err}");
        }
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
    fn checked_bodies_find_what_values_find() {
        let text = r#"{"id":"e","n":[1,-2,3.5,"x",{"a/b":{"m~n":"deep"}}],"big":18446744073709551615,"neg":-7,"t":true,"z":null,"esc":"\u00e9\"","o":{}}"#;
        let checked = check_body(text.as_bytes()).unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        for pointer in [
            "",
            "/id",
            "/n",
            "/n/0",
            "/n/1",
            "/n/2",
            "/n/3",
            "/n/4/a~1b/m~0n",
            "/n/5",
            "/n/01",
            "/n/-",
            "/big",
            "/neg",
            "/t",
            "/z",
            "/esc",
            "/o",
            "/o/x",
            "/missing",
            "/id/x",
            "id",
        ] {
            assert_eq!(checked.at(pointer), value.at(pointer), "{pointer}");
        }
        assert_eq!(checked.at("/esc"), Found::Text("é\"".into()));
        assert_eq!(
            checked.at("/big"),
            Found::Integer("18446744073709551615".into())
        );
        assert_eq!(checked.at("/n/4/a~1b/m~0n"), Found::Text("deep".into()));
        // A key serde_json's `raw_value` feature would treat as its own marker is a key like
        // any other (the feature is off, so the worker's parser agrees).
        let marker = r#"{"$serde_json::private::RawValue":"{\"id\":\"x\"}","k":2}"#;
        let checked = check_body(marker.as_bytes()).unwrap();
        let value = parse_body(marker.as_bytes()).unwrap();
        assert_eq!(checked.at("/id"), Found::Nothing);
        assert_eq!(value.at("/k"), Found::Integer("2".into()));
        assert_eq!(checked.at("/k"), value.at("/k"));
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
