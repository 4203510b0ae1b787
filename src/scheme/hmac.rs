//! The generic "hmac-sha256" scheme (configurable header, encoding, prefix and optional signed
//! timestamp) and its GitHub preset (`X-Hub-Signature-256: sha256=<hex>`).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{
    Defaults, FieldDefault, SignError, SigningKey, TAG_LEN, Verified, VerifyError, check_window,
    decode_base64_tag, decode_hex_tag, encode_base64, expected_tags, header_text, malformed,
    matches_any, parse_unix_seconds, unix_seconds,
};

/// What an `hmac-sha256` provider gets for keys its config leaves out.
pub const DEFAULTS: Defaults = Defaults {
    event_id: FieldDefault::Pointer("/id"),
    event_type: FieldDefault::Pointer("/type"),
    tolerance: Duration::from_secs(300),
};

/// What a `github` provider gets: GitHub names the delivery and the event in headers.
pub const GITHUB_DEFAULTS: Defaults = Defaults {
    event_id: FieldDefault::Header("x-github-delivery"),
    event_type: FieldDefault::Header("x-github-event"),
    // GitHub signs no timestamp; kept only so every scheme has one.
    tolerance: Duration::from_secs(300),
};

/// The encoding when the config names none.
pub const DEFAULT_ENCODING: Encoding = Encoding::Hex;

/// The signed content when the config names a `timestamp_header` but no `signed_payload`.
pub const DEFAULT_SIGNED_PAYLOAD: &str = "{timestamp}.{body}";

/// How the tag is written in the signature header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Hex, either case accepted; lower case produced.
    Hex,
    /// Standard alphabet with padding.
    Base64,
}

impl Encoding {
    /// Every encoding, as a config names them.
    pub const NAMES: [&'static str; 2] = ["hex", "base64"];

    /// The encoding a config names, if any.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "hex" => Some(Self::Hex),
            "base64" => Some(Self::Base64),
            _ => None,
        }
    }
}

/// A provider that signs the body alone, or the body together with a timestamp header.
#[derive(Debug, Clone)]
pub struct HmacScheme {
    /// "hmac-sha256" or "github".
    pub name: &'static str,
    /// Header that carries the signature.
    pub header: HeaderName,
    /// How the tag is encoded in `header`.
    pub encoding: Encoding,
    /// Text that must precede the encoded tag, e.g. `sha256=`; compared case-sensitively.
    pub prefix: Option<String>,
    /// Signed timestamp header, if any; `None` means the body alone is signed.
    pub timestamp: Option<Timestamped>,
}

/// A separate timestamp header that is part of the signed content.
#[derive(Debug, Clone)]
pub struct Timestamped {
    /// Header that carries the timestamp in unix seconds.
    pub header: HeaderName,
    /// How the timestamp and body are combined into the signed content.
    pub template: SignedTemplate,
    /// Accepted distance from `now`, either direction, in whole seconds.
    pub tolerance: Duration,
}

/// Parsed "{timestamp}.{body}"-style template: literal text plus the placeholders `{timestamp}`
/// and `{body}`. `{body}` occurs exactly once, `{timestamp}` at most once; any other `{name}`,
/// an unclosed `{` or a stray `}` is an error. Parsed once at config load.
///
/// A template without `{timestamp}` still has the timestamp header's window checked, but the
/// timestamp is then not authenticated; configure that only when the provider really signs
/// that way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTemplate {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Timestamp,
    Body,
}

impl SignedTemplate {
    /// Parse a template such as `v0:{timestamp}:{body}`, enforcing the rules above.
    ///
    /// # Errors
    /// The first rule the template breaks.
    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let (mut bodies, mut timestamps) = (0, 0);
        let mut rest = s;
        while let Some(at) = rest.find(['{', '}']) {
            let (before, from_brace) = rest.split_at(at);
            literal.push_str(before);
            if from_brace.starts_with('}') {
                return Err(TemplateError::StrayClose);
            }
            let close = from_brace.find('}').ok_or(TemplateError::Unclosed)?;
            let piece = match &from_brace[1..close] {
                "body" => {
                    bodies += 1;
                    Piece::Body
                }
                "timestamp" => {
                    timestamps += 1;
                    Piece::Timestamp
                }
                other => return Err(TemplateError::UnknownPlaceholder(other.to_owned())),
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
            rest = &from_brace[close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        if bodies != 1 {
            return Err(TemplateError::BodyCount);
        }
        if timestamps > 1 {
            return Err(TemplateError::TimestampCount);
        }
        Ok(SignedTemplate { pieces })
    }

    /// The signed content as slices to feed the MAC one after another.
    fn fill<'a>(&'a self, timestamp: &'a [u8], body: &'a [u8]) -> Vec<&'a [u8]> {
        self.pieces
            .iter()
            .map(|piece| match piece {
                Piece::Literal(text) => text.as_bytes(),
                Piece::Timestamp => timestamp,
                Piece::Body => body,
            })
            .collect()
    }
}

/// Why a `signed_payload` template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `}` before any `{`.
    #[error("signed template has a `}}` without a matching `{{`")]
    StrayClose,
    /// A `{` never closed.
    #[error("signed template has an unclosed `{{`")]
    Unclosed,
    /// A placeholder other than `{timestamp}` and `{body}`; holds its name.
    #[error(
        "signed template has unknown placeholder `{{{0}}}`; only {{timestamp}} and {{body}} exist"
    )]
    UnknownPlaceholder(String),
    /// `{body}` missing or repeated.
    #[error("signed template must contain {{body}} exactly once")]
    BodyCount,
    /// `{timestamp}` repeated.
    #[error("signed template may contain {{timestamp}} at most once")]
    TimestampCount,
}

impl HmacScheme {
    /// The generic scheme: the body alone signed, the bare encoded tag in `header`.
    pub fn hmac_sha256(header: HeaderName, encoding: Encoding) -> Self {
        HmacScheme {
            name: "hmac-sha256",
            header,
            encoding,
            prefix: None,
            timestamp: None,
        }
    }

    /// GitHub: `X-Hub-Signature-256: sha256=<hex>` over the body.
    pub fn github() -> Self {
        HmacScheme {
            name: "github",
            header: HeaderName::from_static("x-hub-signature-256"),
            encoding: Encoding::Hex,
            prefix: Some("sha256=".to_owned()),
            timestamp: None,
        }
    }

    /// Check the signature against every key, then the timestamp window if one is configured.
    pub fn verify(
        &self,
        keys: &[SigningKey],
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let candidate = self.read_signature(headers)?;
        let (tags, timestamp) = match &self.timestamp {
            None => (expected_tags(keys, &[body]), None),
            Some(ts) => {
                let name = ts.header.as_str();
                let raw = header_text(headers, name)?;
                let seconds = parse_unix_seconds(raw)
                    .ok_or_else(|| malformed(name, "not an integer number of seconds"))?;
                // The header's own text is signed, exactly as the provider wrote it.
                let tags = expected_tags(keys, &ts.template.fill(raw.as_bytes(), body));
                (tags, Some((seconds, ts.tolerance)))
            }
        };
        // Signature before window: OutsideWindow then only ever reports a genuine delivery
        // that arrived too late or was replayed, which is the case worth alerting on.
        if !bool::from(matches_any(&tags, &candidate)) {
            return Err(VerifyError::Mismatch);
        }
        if let Some((seconds, tolerance)) = timestamp {
            check_window(seconds, now, tolerance)?;
        }
        Ok(Verified {
            scheme_id: None,
            timestamp: timestamp.map(|(seconds, _)| seconds),
        })
    }

    fn read_signature(&self, headers: &HeaderMap) -> Result<[u8; TAG_LEN], VerifyError> {
        let name = self.header.as_str();
        let mut text = header_text(headers, name)?;
        if let Some(prefix) = &self.prefix {
            text = text
                .strip_prefix(prefix.as_str())
                .ok_or_else(|| malformed(name, "missing prefix"))?;
        }
        let (expected_len, decoded) = match self.encoding {
            Encoding::Hex => (2 * TAG_LEN, decode_hex_tag(text)),
            Encoding::Base64 => (44, decode_base64_tag(text)),
        };
        match decoded {
            Some(tag) => Ok(tag),
            None if text.len() != expected_len => Err(malformed(name, "wrong length")),
            None => Err(malformed(
                name,
                match self.encoding {
                    Encoding::Hex => "not hex",
                    Encoding::Base64 => "not base64",
                },
            )),
        }
    }

    /// The signature header, plus the timestamp header if configured.
    ///
    /// # Errors
    /// [`SignError::Prefix`]: the configured prefix cannot be part of a header value.
    pub fn sign(
        &self,
        key: &SigningKey,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, SignError> {
        let seconds = unix_seconds(now);
        let seconds_text = seconds.to_string();
        let tag = match &self.timestamp {
            None => key.tag(&[body]),
            Some(ts) => key.tag(&ts.template.fill(seconds_text.as_bytes(), body)),
        };
        let encoded = match self.encoding {
            Encoding::Hex => hex::encode(tag),
            Encoding::Base64 => encode_base64(&tag),
        };
        let value = format!("{}{encoded}", self.prefix.as_deref().unwrap_or(""));
        let value = HeaderValue::try_from(value).map_err(SignError::Prefix)?;
        let mut out = vec![(self.header.clone(), value)];
        if let Some(ts) = &self.timestamp {
            out.push((ts.header.clone(), HeaderValue::from(seconds)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Scheme;
    use super::super::test_support::{assert_no_leak, at, header_map, into_map};
    use super::*;

    // docs.github.com, "Validating webhook deliveries" → "Testing the webhook payload validation".
    const GH_SECRET: &str = "It's a Secret to Everybody";
    const GH_BODY: &[u8] = b"Hello, World!";
    const GH_SIG: &str = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    // Slack, "Verifying requests from Slack" worked example: a timestamped hex scheme,
    // `v0=` prefix, signed content `v0:{timestamp}:{body}`.
    const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const SLACK_TS: u64 = 1_531_420_618;
    const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    // Base64 body-only scheme (Shopify style); value computed with Python's hmac and base64.
    const B64_SECRET: &str = "hush";
    const B64_BODY: &[u8] = br#"{"id":1}"#;
    const B64_SIG: &str = "VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY=";

    const NOW: u64 = 1_700_000_000;

    fn github() -> Scheme {
        Scheme::Hmac(HmacScheme::github())
    }

    fn slack() -> Scheme {
        Scheme::Hmac(HmacScheme {
            name: "hmac-sha256",
            header: HeaderName::from_static("x-slack-signature"),
            encoding: Encoding::Hex,
            prefix: Some("v0=".to_owned()),
            timestamp: Some(Timestamped {
                header: HeaderName::from_static("x-slack-request-timestamp"),
                template: SignedTemplate::parse("v0:{timestamp}:{body}").unwrap(),
                tolerance: Duration::from_secs(300),
            }),
        })
    }

    fn base64_scheme() -> Scheme {
        Scheme::Hmac(HmacScheme::hmac_sha256(
            HeaderName::from_static("x-shopify-hmac-sha256"),
            Encoding::Base64,
        ))
    }

    fn keys(scheme: &Scheme, secrets: &[&str]) -> Vec<SigningKey> {
        secrets
            .iter()
            .map(|s| scheme.key_from_secret(s).unwrap())
            .collect()
    }

    fn gh_headers(value: &str) -> HeaderMap {
        header_map(&[("X-Hub-Signature-256", value)])
    }

    fn gh_verify(secrets: &[&str], value: &str, body: &[u8]) -> Result<Verified, VerifyError> {
        let scheme = github();
        scheme.verify(&keys(&scheme, secrets), &gh_headers(value), body, at(NOW))
    }

    fn slack_verify(value: &str, ts: &str, body: &str, now: u64) -> Result<Verified, VerifyError> {
        let scheme = slack();
        let headers = header_map(&[
            ("X-Slack-Signature", value),
            ("X-Slack-Request-Timestamp", ts),
        ]);
        scheme.verify(
            &keys(&scheme, &[SLACK_SECRET]),
            &headers,
            body.as_bytes(),
            at(now),
        )
    }

    fn gh_sig() -> String {
        format!("sha256={GH_SIG}")
    }

    #[test]
    fn github_published_vector_verifies() {
        let ok = gh_verify(&[GH_SECRET], &gh_sig(), GH_BODY).unwrap();
        assert_eq!(
            ok,
            Verified {
                scheme_id: None,
                timestamp: None
            }
        );
    }

    #[test]
    fn github_published_vector_is_what_we_sign() {
        let scheme = github();
        let key = scheme.key_from_secret(GH_SECRET).unwrap();
        let headers = scheme.sign(&key, GH_BODY, at(NOW), "ignored").unwrap();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].0, "x-hub-signature-256");
        assert_eq!(headers[0].1, gh_sig().as_str());
    }

    #[test]
    fn hex_is_case_insensitive() {
        let upper = format!("sha256={}", GH_SIG.to_ascii_uppercase());
        assert!(gh_verify(&[GH_SECRET], &upper, GH_BODY).is_ok());
    }

    #[test]
    fn github_rejections() {
        let full = gh_sig();
        let truncated = &full[..full.len() - 2];
        let non_hex = format!("sha256={}zz", &GH_SIG[..62]);
        let cases: Vec<(&[&str], String, &[u8], VerifyError)> = vec![
            (&["not it"], gh_sig(), GH_BODY, VerifyError::Mismatch),
            (
                &[GH_SECRET],
                gh_sig(),
                b"Hello, World?",
                VerifyError::Mismatch,
            ),
            (&[], gh_sig(), GH_BODY, VerifyError::Mismatch),
            (
                &[GH_SECRET],
                truncated.to_owned(),
                GH_BODY,
                malformed("x-hub-signature-256", "wrong length"),
            ),
            (
                &[GH_SECRET],
                non_hex,
                GH_BODY,
                malformed("x-hub-signature-256", "not hex"),
            ),
            (
                &[GH_SECRET],
                GH_SIG.to_owned(),
                GH_BODY,
                malformed("x-hub-signature-256", "missing prefix"),
            ),
            (
                &[GH_SECRET],
                format!("sha1={GH_SIG}"),
                GH_BODY,
                malformed("x-hub-signature-256", "missing prefix"),
            ),
            (
                &[GH_SECRET],
                format!("SHA256={GH_SIG}"),
                GH_BODY,
                malformed("x-hub-signature-256", "missing prefix"),
            ),
            (
                &[GH_SECRET],
                "sha256=".to_owned(),
                GH_BODY,
                malformed("x-hub-signature-256", "wrong length"),
            ),
            (
                &[GH_SECRET],
                "   ".to_owned(),
                GH_BODY,
                malformed("x-hub-signature-256", "empty"),
            ),
        ];
        for (secrets, value, body, want) in cases {
            let err = gh_verify(secrets, &value, body).unwrap_err();
            assert_eq!(err, want, "header {value:?}");
            assert_no_leak(&err, &[GH_SIG, GH_SECRET]);
        }
    }

    #[test]
    fn missing_header() {
        let scheme = github();
        let err = scheme
            .verify(
                &keys(&scheme, &[GH_SECRET]),
                &HeaderMap::new(),
                GH_BODY,
                at(NOW),
            )
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::MissingHeader("x-hub-signature-256".into())
        );
        assert_eq!(err.reason(), "missing_signature");
        assert!(!err.is_malformed());
    }

    #[test]
    fn non_ascii_header_is_malformed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-hub-signature-256",
            HeaderValue::from_bytes(b"sha256=\xff").unwrap(),
        );
        let scheme = github();
        let err = scheme
            .verify(&keys(&scheme, &[GH_SECRET]), &headers, GH_BODY, at(NOW))
            .unwrap_err();
        assert!(err.is_malformed());
    }

    #[test]
    fn rotation_second_key_valid() {
        assert!(gh_verify(&["old secret", GH_SECRET], &gh_sig(), GH_BODY).is_ok());
        assert!(gh_verify(&[GH_SECRET, "new secret"], &gh_sig(), GH_BODY).is_ok());
    }

    #[test]
    fn base64_vector_verifies_and_rejects() {
        let scheme = base64_scheme();
        let ks = keys(&scheme, &["rotated-away", B64_SECRET]);
        let check = |value: &str, body: &[u8]| {
            let headers = header_map(&[("X-Shopify-Hmac-Sha256", value)]);
            scheme.verify(&ks, &headers, body, at(NOW))
        };
        assert!(check(B64_SIG, B64_BODY).is_ok());
        assert_eq!(check(B64_SIG, br#"{"id":2}"#), Err(VerifyError::Mismatch));
        let name = "x-shopify-hmac-sha256";
        assert_eq!(
            check(&B64_SIG[..43], B64_BODY),
            Err(malformed(name, "wrong length"))
        );
        let bad_char = format!("{}*=", &B64_SIG[..42]);
        assert_eq!(
            check(&bad_char, B64_BODY),
            Err(malformed(name, "not base64"))
        );
        // URL-safe alphabet is a different encoding, not a variant we guess at.
        let url_safe = B64_SIG.replace('/', "_");
        assert_eq!(
            check(&url_safe, B64_BODY),
            Err(malformed(name, "not base64"))
        );
        let wrong = scheme
            .verify(
                &keys(&scheme, &["nope"]),
                &header_map(&[(name, B64_SIG)]),
                B64_BODY,
                at(NOW),
            )
            .unwrap_err();
        assert_no_leak(&wrong, &[B64_SIG, B64_SECRET]);
    }

    #[test]
    fn slack_published_vector_verifies() {
        let ok = slack_verify(SLACK_SIG, "1531420618", SLACK_BODY, SLACK_TS).unwrap();
        assert_eq!(ok.timestamp, Some(1_531_420_618));
        assert_eq!(ok.scheme_id, None);
    }

    #[test]
    fn slack_published_vector_is_what_we_sign() {
        let scheme = slack();
        let key = scheme.key_from_secret(SLACK_SECRET).unwrap();
        let map = into_map(
            scheme
                .sign(&key, SLACK_BODY.as_bytes(), at(SLACK_TS), "")
                .unwrap(),
        );
        assert_eq!(map["x-slack-signature"], SLACK_SIG);
        assert_eq!(map["x-slack-request-timestamp"], "1531420618");
    }

    #[test]
    fn timestamp_window_boundaries() {
        for now in [SLACK_TS - 300, SLACK_TS + 300] {
            assert!(slack_verify(SLACK_SIG, "1531420618", SLACK_BODY, now).is_ok());
        }
        for now in [SLACK_TS - 301, SLACK_TS + 301] {
            assert_eq!(
                slack_verify(SLACK_SIG, "1531420618", SLACK_BODY, now),
                Err(VerifyError::OutsideWindow)
            );
        }
    }

    #[test]
    fn timestamp_rejections() {
        let name = "x-slack-request-timestamp";
        for bad in ["1531420618.0", "-1531420618", "+1531420618", "soon"] {
            let err = slack_verify(SLACK_SIG, bad, SLACK_BODY, SLACK_TS).unwrap_err();
            assert_eq!(
                err,
                malformed(name, "not an integer number of seconds"),
                "{bad}"
            );
        }
        // A changed timestamp no longer matches the signature, even inside the window.
        assert_eq!(
            slack_verify(SLACK_SIG, "1531420619", SLACK_BODY, SLACK_TS),
            Err(VerifyError::Mismatch)
        );
        // A stale delivery with a wrong signature is reported as the mismatch it is.
        let err = slack_verify(
            &SLACK_SIG.replace('a', "b"),
            "1531420618",
            SLACK_BODY,
            SLACK_TS + 10_000,
        )
        .unwrap_err();
        assert_eq!(err, VerifyError::Mismatch);
        assert_no_leak(&err, &[&SLACK_SIG[3..], SLACK_SECRET]);

        let scheme = slack();
        let only_sig = header_map(&[("X-Slack-Signature", SLACK_SIG)]);
        let err = scheme
            .verify(
                &keys(&scheme, &[SLACK_SECRET]),
                &only_sig,
                SLACK_BODY.as_bytes(),
                at(SLACK_TS),
            )
            .unwrap_err();
        assert_eq!(err, VerifyError::MissingHeader(name.into()));
    }

    #[test]
    fn sign_verify_roundtrip() {
        let now = at(NOW);
        for scheme in [github(), slack(), base64_scheme()] {
            let key = scheme.key_from_secret("round and round").unwrap();
            let body = b"{\"event\":\"ping\"}";
            let headers = into_map(scheme.sign(&key, body, now, "id").unwrap());
            let verified = scheme.verify(&[key], &headers, body, now).unwrap();
            let has_ts = matches!(&scheme, Scheme::Hmac(h) if h.timestamp.is_some());
            assert_eq!(verified.timestamp, has_ts.then_some(NOW as i64));
        }
    }

    #[test]
    fn sign_refuses_unrepresentable_prefix() {
        let mut scheme = HmacScheme::github();
        scheme.prefix = Some("bad\nprefix".to_owned());
        let key = SigningKey::new(b"k");
        assert!(scheme.sign(&key, b"", at(NOW)).is_err());
    }

    #[test]
    fn refusals_say_why_and_keep_their_cause() {
        let mut scheme = HmacScheme::github();
        scheme.prefix = Some("bad\nprefix".to_owned());
        let err = scheme
            .sign(&SigningKey::new(b"k"), b"", at(NOW))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "configured signature prefix is not a valid header value"
        );
        let source = std::error::Error::source(&err).expect("the header error is kept");
        assert!(source.is::<http::header::InvalidHeaderValue>());

        for (template, reason) in [
            ("body}", "signed template has a `}` without a matching `{`"),
            ("{body", "signed template has an unclosed `{`"),
            (
                "{id}.{body}",
                "signed template has unknown placeholder `{id}`; only {timestamp} and {body} exist",
            ),
            (
                "{body}{body}",
                "signed template must contain {body} exactly once",
            ),
            (
                "{timestamp}{timestamp}{body}",
                "signed template may contain {timestamp} at most once",
            ),
        ] {
            let err = SignedTemplate::parse(template).unwrap_err();
            assert_eq!(err.to_string(), reason, "{template:?}");
        }
    }

    #[test]
    fn template_parsing() {
        let t = SignedTemplate::parse("{timestamp}.{body}").unwrap();
        assert_eq!(t.fill(b"12", b"B").concat(), b"12.B");
        let t = SignedTemplate::parse("{body}").unwrap();
        assert_eq!(t.fill(b"12", b"B").concat(), b"B");
        let t = SignedTemplate::parse("v0:{timestamp}:{body}:end").unwrap();
        assert_eq!(t.fill(b"12", b"B").concat(), b"v0:12:B:end");
        for bad in [
            "",
            "{timestamp}",
            "{body}{body}",
            "{timestamp}{timestamp}{body}",
            "{id}.{body}",
            "{Body}",
            "{body",
            "body}",
            "{timestamp}.{body}}",
            "{}{body}",
        ] {
            assert!(SignedTemplate::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
