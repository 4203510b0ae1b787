//! The Standard Webhooks scheme (also what Svix sends): `webhook-id`, `webhook-timestamp` and
//! a space-separated `webhook-signature` list of `v1,<base64>` over `"{id}.{timestamp}.{body}"`.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{
    Defaults, FieldDefault, SecretError, SignError, SigningKey, Verified, VerifyError,
    check_window, decode_base64_tag, encode_base64, expected_tags, header_text, malformed,
    matches_any, parse_unix_seconds, unix_seconds,
};

/// The Standard Webhooks scheme, also accepting Svix's `svix-*` header names.
#[derive(Debug, Clone)]
pub struct StandardScheme {
    /// Accepted distance from `now`, either direction, in whole seconds.
    pub tolerance: Duration,
}

/// What a `standard-webhooks` provider gets for keys its config leaves out: the id is the
/// signed `webhook-id`, and the spec suggests a five-minute window.
pub const DEFAULTS: Defaults = Defaults {
    event_id: FieldDefault::SchemeId,
    event_type: FieldDefault::Pointer("/type"),
    tolerance: Duration::from_secs(300),
};

/// The names one delivery uses; the spec's `webhook-*` and Svix's older `svix-*` are the same
/// protocol under two brands, and a delivery never mixes them.
struct HeaderSet {
    id: &'static str,
    timestamp: &'static str,
    signature: &'static str,
}

const STANDARD: HeaderSet = HeaderSet {
    id: "webhook-id",
    timestamp: "webhook-timestamp",
    signature: "webhook-signature",
};

const SVIX: HeaderSet = HeaderSet {
    id: "svix-id",
    timestamp: "svix-timestamp",
    signature: "svix-signature",
};

/// Strips an optional `whsec_` and base64-decodes the rest (standard alphabet, padded).
pub(super) fn key_from_secret(secret: &str) -> Result<SigningKey, SecretError> {
    use base64::Engine as _;
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    // The decoder's own error names the offending byte and its offset, which would put a
    // piece of the secret into logs: it is not kept, not even as a source.
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| SecretError::NotBase64)?;
    if key.is_empty() {
        return Err(SecretError::EmptyKey);
    }
    Ok(SigningKey::new(&key))
}

impl StandardScheme {
    /// A signature header with no `v1,` entry at all (say, only asymmetric `v1a,` ones) is a
    /// [`VerifyError::Mismatch`]: it is well-formed by the spec, there is just nothing we can
    /// check, which is the same answer the reference libraries give.
    pub fn verify(
        &self,
        keys: &[SigningKey],
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let names = if headers.contains_key(STANDARD.id) {
            &STANDARD
        } else if headers.contains_key(SVIX.id) {
            &SVIX
        } else {
            return Err(VerifyError::MissingHeader(STANDARD.id.to_owned()));
        };
        let id = header_text(headers, names.id)?;
        let raw_ts = header_text(headers, names.timestamp)?;
        let signatures = header_text(headers, names.signature)?;
        let seconds = parse_unix_seconds(raw_ts)
            .ok_or_else(|| malformed(names.timestamp, "not an integer number of seconds"))?;

        let tags = expected_tags(keys, &[id.as_bytes(), b".", raw_ts.as_bytes(), b".", body]);
        let mut matched = subtle::Choice::from(0);
        for entry in signatures.split_ascii_whitespace() {
            // Other versions and undecodable entries are skipped, not fatal, so a sender can
            // add new signature kinds alongside v1 without breaking receivers.
            if let Some(("v1", encoded)) = entry.split_once(',')
                && let Some(candidate) = decode_base64_tag(encoded)
            {
                matched |= matches_any(&tags, &candidate);
            }
        }
        if !bool::from(matched) {
            return Err(VerifyError::Mismatch);
        }
        check_window(seconds, now, self.tolerance)?;
        Ok(Verified {
            scheme_id: Some(id.to_owned()),
            timestamp: Some(seconds),
        })
    }

    /// The three `webhook-*` headers, signature as `v1,<base64>`.
    ///
    /// # Errors
    /// [`SignError::Id`]: `id` cannot be a header value.
    pub fn sign(
        &self,
        key: &SigningKey,
        body: &[u8],
        now: SystemTime,
        id: &str,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, SignError> {
        let id_value = HeaderValue::from_str(id).map_err(SignError::Id)?;
        let seconds = unix_seconds(now);
        let seconds_text = seconds.to_string();
        let tag = key.tag(&[id.as_bytes(), b".", seconds_text.as_bytes(), b".", body]);
        let signature = HeaderValue::try_from(format!("v1,{}", encode_base64(&tag)))
            .map_err(SignError::Signature)?;
        Ok(vec![
            (HeaderName::from_static(STANDARD.id), id_value),
            (
                HeaderName::from_static(STANDARD.timestamp),
                HeaderValue::from(seconds),
            ),
            (HeaderName::from_static(STANDARD.signature), signature),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::super::Scheme;
    use super::super::test_support::{assert_no_leak, at, header_map, into_map};
    use super::*;

    // Standard Webhooks reference libraries' test vector
    // (standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py,
    // test_sign_function; the same values appear in Svix's libraries' tests).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: u64 = 1_614_265_330;
    const BODY: &str = r#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    // From the same test file: one bit off in the last base64 digit.
    const BAD_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
    const OTHER: &str = "Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";

    fn scheme() -> Scheme {
        Scheme::StandardWebhooks(StandardScheme {
            tolerance: Duration::from_secs(300),
        })
    }

    fn keys(secrets: &[&str]) -> Vec<SigningKey> {
        let scheme = scheme();
        secrets
            .iter()
            .map(|s| scheme.key_from_secret(s).unwrap())
            .collect()
    }

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        header_map(&[
            ("webhook-id", id),
            ("webhook-timestamp", ts),
            ("webhook-signature", sig),
        ])
    }

    fn verify_full(
        secrets: &[&str],
        headers: &HeaderMap,
        body: &str,
        now: u64,
    ) -> Result<Verified, VerifyError> {
        scheme().verify(&keys(secrets), headers, body.as_bytes(), at(now))
    }

    fn verify_sig(sig: &str) -> Result<Verified, VerifyError> {
        verify_full(&[SECRET], &headers(ID, "1614265330", sig), BODY, TS)
    }

    fn expected() -> Verified {
        Verified {
            scheme_id: Some(ID.to_owned()),
            timestamp: Some(TS as i64),
        }
    }

    #[test]
    fn published_vector_verifies() {
        assert_eq!(verify_sig(SIG), Ok(expected()));
    }

    #[test]
    fn published_vector_is_what_we_sign() {
        let scheme = scheme();
        let key = scheme.key_from_secret(SECRET).unwrap();
        let map = into_map(scheme.sign(&key, BODY.as_bytes(), at(TS), ID).unwrap());
        assert_eq!(map.len(), 3);
        assert_eq!(map["webhook-id"], ID);
        assert_eq!(map["webhook-timestamp"], "1614265330");
        assert_eq!(map["webhook-signature"], SIG);
    }

    #[test]
    fn svix_headers_are_accepted() {
        let svix = header_map(&[
            ("svix-id", ID),
            ("svix-timestamp", "1614265330"),
            ("svix-signature", SIG),
        ]);
        assert_eq!(verify_full(&[SECRET], &svix, BODY, TS), Ok(expected()));
    }

    #[test]
    fn secret_prefix_is_optional() {
        let bare = SECRET.trim_start_matches("whsec_");
        let h = headers(ID, "1614265330", SIG);
        assert!(verify_full(&[bare], &h, BODY, TS).is_ok());
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_them() {
        let scheme = scheme();
        assert!(scheme.key_from_secret("whsec_").is_err());
        assert!(scheme.key_from_secret("whsec_AAAA").is_ok());
        for bad in [
            "whsec_n0t*v4l1d",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw==",
            "whsec_MfKQ-r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "=",
        ] {
            let err = scheme.key_from_secret(bad).unwrap_err().to_string();
            // Not even a few characters of the secret may show up.
            let secret_part = bad.trim_start_matches("whsec_");
            for window in secret_part.as_bytes().windows(4) {
                let piece = std::str::from_utf8(window).unwrap();
                assert!(!err.contains(piece), "{err:?} contains {piece:?}");
            }
        }
    }

    #[test]
    fn multiple_signatures_one_valid() {
        // Shape taken from the reference tests: other versions and wrong v1s around a good one.
        let list = format!("v1,{OTHER} v2,{OTHER} {SIG} v1,{OTHER}");
        assert_eq!(verify_sig(&list), Ok(expected()));
        let asym_first = format!("v1a,{OTHER}  v1,not-base64 {SIG}");
        assert_eq!(verify_sig(&asym_first), Ok(expected()));
    }

    #[test]
    fn rejections() {
        let sig_b64 = &SIG[3..];
        let cases = [
            (BAD_SIG.to_owned(), VerifyError::Mismatch),
            (format!("v1,{OTHER}"), VerifyError::Mismatch),
            (format!("v1,{}", &sig_b64[..43]), VerifyError::Mismatch),
            (format!("v1,{}", &sig_b64[..20]), VerifyError::Mismatch),
            (
                format!("v1,{}", sig_b64.trim_end_matches('=')),
                VerifyError::Mismatch,
            ),
            ("v1,!!!!".to_owned(), VerifyError::Mismatch),
            // Right bytes under the wrong version label.
            (format!("v1a,{sig_b64}"), VerifyError::Mismatch),
            (format!("v2,{sig_b64}"), VerifyError::Mismatch),
            (format!("V1,{sig_b64}"), VerifyError::Mismatch),
            (sig_b64.to_owned(), VerifyError::Mismatch),
            ("  ".to_owned(), malformed("webhook-signature", "empty")),
        ];
        for (sig, want) in cases {
            let err = verify_sig(&sig).unwrap_err();
            assert_eq!(err, want, "{sig:?}");
            assert_no_leak(&err, &[sig_b64, SECRET, &SECRET[6..]]);
        }
    }

    #[test]
    fn wrong_secret_tampered_body_tampered_metadata() {
        let h = headers(ID, "1614265330", SIG);
        let other_key = "whsec_c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1vbmU=";
        let err = verify_full(&[other_key], &h, BODY, TS).unwrap_err();
        assert_eq!(err, VerifyError::Mismatch);
        assert_no_leak(&err, &[&SIG[3..], SECRET]);
        assert_eq!(
            verify_full(&[SECRET], &h, r#"{"test": 2432232315}"#, TS),
            Err(VerifyError::Mismatch)
        );
        let other_id = headers("msg_other", "1614265330", SIG);
        assert_eq!(
            verify_full(&[SECRET], &other_id, BODY, TS),
            Err(VerifyError::Mismatch)
        );
        let other_ts = headers(ID, "1614265331", SIG);
        assert_eq!(
            verify_full(&[SECRET], &other_ts, BODY, TS),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(verify_full(&[], &h, BODY, TS), Err(VerifyError::Mismatch));
    }

    #[test]
    fn rotation_second_key_valid() {
        let h = headers(ID, "1614265330", SIG);
        let old = "whsec_c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1vbmU=";
        assert_eq!(verify_full(&[old, SECRET], &h, BODY, TS), Ok(expected()));
    }

    #[test]
    fn missing_headers() {
        let cases = [
            (HeaderMap::new(), "webhook-id"),
            (
                header_map(&[("webhook-id", ID), ("webhook-signature", SIG)]),
                "webhook-timestamp",
            ),
            (
                header_map(&[("webhook-id", ID), ("webhook-timestamp", "1614265330")]),
                "webhook-signature",
            ),
            (
                header_map(&[("svix-id", ID), ("svix-timestamp", "1614265330")]),
                "svix-signature",
            ),
            // A delivery does not mix brands: webhook-id selects the webhook-* set.
            (
                header_map(&[
                    ("webhook-id", ID),
                    ("svix-timestamp", "1614265330"),
                    ("svix-signature", SIG),
                ]),
                "webhook-timestamp",
            ),
        ];
        for (h, name) in cases {
            let err = verify_full(&[SECRET], &h, BODY, TS).unwrap_err();
            assert_eq!(err, VerifyError::MissingHeader(name.into()));
            assert_eq!(err.reason(), "missing_signature");
        }
    }

    #[test]
    fn timestamp_must_be_integer_seconds() {
        for bad in [
            "1614265330.0",
            "1614265330000x",
            "-1614265330",
            "hello",
            "1.6e9",
        ] {
            let h = headers(ID, bad, SIG);
            assert_eq!(
                verify_full(&[SECRET], &h, BODY, TS),
                Err(malformed(
                    "webhook-timestamp",
                    "not an integer number of seconds"
                )),
                "{bad}"
            );
        }
    }

    #[test]
    fn window_boundaries() {
        let h = headers(ID, "1614265330", SIG);
        for now in [TS - 300, TS + 300] {
            assert_eq!(verify_full(&[SECRET], &h, BODY, now), Ok(expected()));
        }
        for now in [TS - 301, TS + 301] {
            let err = verify_full(&[SECRET], &h, BODY, now).unwrap_err();
            assert_eq!(err, VerifyError::OutsideWindow);
            assert_no_leak(&err, &[&SIG[3..], SECRET]);
        }
        let forged = headers(ID, "1614265330", BAD_SIG);
        assert_eq!(
            verify_full(&[SECRET], &forged, BODY, TS + 10_000),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn sign_verify_roundtrip() {
        let scheme = scheme();
        let key = scheme
            .key_from_secret("whsec_c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1vbmU=")
            .unwrap();
        let now = at(1_800_000_000);
        let map = into_map(scheme.sign(&key, b"{}", now, "msg_roundtrip").unwrap());
        assert_eq!(
            scheme.verify(&[key], &map, b"{}", now),
            Ok(Verified {
                scheme_id: Some("msg_roundtrip".into()),
                timestamp: Some(1_800_000_000)
            })
        );
    }

    #[test]
    fn sign_refuses_unsendable_id() {
        let scheme = scheme();
        let key = scheme.key_from_secret(SECRET).unwrap();
        assert!(scheme.sign(&key, b"{}", at(TS), "msg\n1").is_err());
    }
}
