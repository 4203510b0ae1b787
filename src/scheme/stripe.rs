//! Stripe's scheme: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]` over `"{t}.{body}"`,
//! keyed with the whole `whsec_…` string.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{
    Defaults, FieldDefault, SigningKey, Verified, VerifyError, check_window, decode_hex_tag,
    expected_tags, header_text, malformed, matches_any, parse_unix_seconds, unix_seconds,
};

const HEADER: &str = "stripe-signature";

/// What a `stripe` provider gets for keys its config leaves out; 300 s is Stripe's own
/// documented tolerance.
pub const DEFAULTS: Defaults = Defaults {
    event_id: FieldDefault::Pointer("/id"),
    event_type: FieldDefault::Pointer("/type"),
    tolerance: Duration::from_secs(300),
};

/// Stripe's scheme; the caller supplies the tolerance ([`DEFAULTS`] has Stripe's own).
#[derive(Debug, Clone)]
pub struct StripeScheme {
    /// Accepted distance from `now`, either direction, in whole seconds. Stripe's own
    /// libraries only reject stale timestamps; we also reject ones too far in the future.
    pub tolerance: Duration,
}

impl StripeScheme {
    /// Check that some `v1` entry matches a key over `"{t}.{body}"`, then the `t` window.
    pub fn verify(
        &self,
        keys: &[SigningKey],
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let header = header_text(headers, HEADER)?;
        let t = timestamp_field(header)?;
        let seconds =
            parse_unix_seconds(t).ok_or_else(|| malformed(HEADER, "t is not an integer"))?;

        let tags = expected_tags(keys, &[t.as_bytes(), b".", body]);
        // A second pass instead of collecting the v1 values: a header may carry thousands
        // of them, and each needs no more than a stack buffer to decode and compare.
        let mut matched = subtle::Choice::from(0);
        for (key, value) in entries(header).flatten() {
            // Entries that cannot be a SHA-256 tag are skipped rather than fatal, so one
            // odd entry cannot hide a valid signature next to it.
            if key == "v1"
                && let Some(candidate) = decode_hex_tag(value)
            {
                matched |= matches_any(&tags, &candidate);
            }
        }
        if !bool::from(matched) {
            return Err(VerifyError::Mismatch);
        }
        check_window(seconds, now, self.tolerance)?;
        Ok(Verified {
            scheme_id: None,
            timestamp: Some(seconds),
        })
    }

    /// What Stripe sends: `t=<now>,v1=<hex>`.
    pub fn sign(
        &self,
        key: &SigningKey,
        body: &[u8],
        now: SystemTime,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let t = unix_seconds(now).to_string();
        let tag = key.tag(&[t.as_bytes(), b".", body]);
        let value = format!("t={t},v1={}", hex::encode(tag));
        // Only digits, letters, `=` and `,` are in `value`, all valid in a header value.
        let value = HeaderValue::try_from(value)
            .unwrap_or_else(|_| unreachable!("digits, hex and punctuation form a header value"));
        vec![(HeaderName::from_static(HEADER), value)]
    }
}

/// The comma-separated `key=value` entries, in order; an entry without `=` is an error.
fn entries(header: &str) -> impl Iterator<Item = Result<(&str, &str), VerifyError>> {
    header.split(',').map(|entry| {
        entry
            .trim()
            .split_once('=')
            .ok_or_else(|| malformed(HEADER, "entry is not key=value"))
    })
}

/// Checks the header's shape and returns the raw text of its single `t` entry.
fn timestamp_field(header: &str) -> Result<&str, VerifyError> {
    let mut t = None;
    let mut v1_count = 0usize;
    for entry in entries(header) {
        match entry? {
            ("t", _) if t.is_some() => return Err(malformed(HEADER, "more than one t")),
            ("t", value) => t = Some(value),
            ("v1", _) => v1_count += 1,
            // v0 (test-mode SHA-256 over a different secret) and future keys are ignored.
            _ => {}
        }
    }
    let t = t.ok_or_else(|| malformed(HEADER, "no t timestamp"))?;
    if v1_count == 0 {
        return Err(malformed(HEADER, "no v1 signature"));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::super::Scheme;
    use super::super::test_support::{assert_no_leak, at, header_map, into_map};
    use super::*;
    use std::fmt::Write as _;

    // Stripe publishes no fixed vector; this one is ours, the HMAC reproduced with Python:
    // hmac.new(SECRET.encode(), f"{T}.{BODY}".encode(), hashlib.sha256).hexdigest()
    const SECRET: &str = "whsec_hookwarden_stripe_test_0123456789";
    const T: u64 = 1_492_774_577;
    const BODY: &str =
        r#"{"id":"evt_1Hookwarden","object":"event","type":"payment_intent.succeeded"}"#;
    const SIG: &str = "4320d1f9ade0618f5a5c6ddf6907da0d4d0534244b063badc62e1a6606c39dfc";
    const OTHER_SIG: &str = "5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd";

    fn scheme() -> Scheme {
        Scheme::Stripe(StripeScheme {
            tolerance: Duration::from_secs(300),
        })
    }

    fn verify_with(
        secrets: &[&str],
        header: &str,
        body: &str,
        now: u64,
    ) -> Result<Verified, VerifyError> {
        let scheme = scheme();
        let keys: Vec<_> = secrets
            .iter()
            .map(|s| scheme.key_from_secret(s).unwrap())
            .collect();
        let headers = header_map(&[("Stripe-Signature", header)]);
        scheme.verify(&keys, &headers, body.as_bytes(), at(now))
    }

    fn verify(header: &str) -> Result<Verified, VerifyError> {
        verify_with(&[SECRET], header, BODY, T)
    }

    fn good() -> String {
        format!("t={T},v1={SIG}")
    }

    #[test]
    fn constructed_vector_verifies() {
        assert_eq!(
            verify(&good()),
            Ok(Verified {
                scheme_id: None,
                timestamp: Some(T as i64)
            })
        );
    }

    #[test]
    fn constructed_vector_is_what_we_sign() {
        let scheme = scheme();
        let key = scheme.key_from_secret(SECRET).unwrap();
        let headers = scheme
            .sign(&key, BODY.as_bytes(), at(T), "ignored")
            .unwrap();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].0, "stripe-signature");
        assert_eq!(headers[0].1, good().as_str());
    }

    #[test]
    fn key_is_the_whole_whsec_string() {
        let without_prefix = SECRET.trim_start_matches("whsec_");
        assert_eq!(
            verify_with(&[without_prefix], &good(), BODY, T),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn extra_entries_and_order_are_tolerated() {
        let header = format!("v0={OTHER_SIG},v1={OTHER_SIG},v1={SIG},t={T},scheme=later");
        assert!(verify(&header).is_ok());
        let spaced = format!("t={T}, v1={SIG}");
        assert!(verify(&spaced).is_ok());
        let upper = format!("t={T},v1={}", SIG.to_ascii_uppercase());
        assert!(verify(&upper).is_ok());
    }

    #[test]
    fn v0_alone_does_not_count() {
        let header = format!("t={T},v0={SIG}");
        assert_eq!(verify(&header), Err(malformed(HEADER, "no v1 signature")));
    }

    #[test]
    fn rejections() {
        let cases = [
            (format!("t={T},v1={OTHER_SIG}"), VerifyError::Mismatch),
            (format!("t={T},v1={}", &SIG[..63]), VerifyError::Mismatch),
            (format!("t={T},v1={}", &SIG[..32]), VerifyError::Mismatch),
            (format!("t={T},v1={}zz", &SIG[..62]), VerifyError::Mismatch),
            (format!("t={T},v1="), VerifyError::Mismatch),
            (format!("t={T}"), malformed(HEADER, "no v1 signature")),
            (format!("v1={SIG}"), malformed(HEADER, "no t timestamp")),
            (
                format!("t={T},t={T},v1={SIG}"),
                malformed(HEADER, "more than one t"),
            ),
            (
                format!("t={T}.5,v1={SIG}"),
                malformed(HEADER, "t is not an integer"),
            ),
            (
                format!("t=,v1={SIG}"),
                malformed(HEADER, "t is not an integer"),
            ),
            (
                format!("t=-{T},v1={SIG}"),
                malformed(HEADER, "t is not an integer"),
            ),
            (
                format!("t={T},{SIG}"),
                malformed(HEADER, "entry is not key=value"),
            ),
            (
                format!("t={T},v1={SIG},"),
                malformed(HEADER, "entry is not key=value"),
            ),
            (" ".to_owned(), malformed(HEADER, "empty")),
        ];
        for (header, want) in cases {
            let err = verify(&header).unwrap_err();
            assert_eq!(err, want, "{header:?}");
            assert_no_leak(&err, &[SIG, SECRET]);
        }
    }

    #[test]
    fn wrong_secret_and_tampered_body() {
        let err = verify_with(&["whsec_wrong"], &good(), BODY, T).unwrap_err();
        assert_eq!(err, VerifyError::Mismatch);
        assert_no_leak(&err, &[SIG, SECRET]);
        let tampered = BODY.replace("succeeded", "failed");
        assert_eq!(
            verify_with(&[SECRET], &good(), &tampered, T),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_with(&[], &good(), BODY, T),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn missing_header() {
        let scheme = scheme();
        let key = scheme.key_from_secret(SECRET).unwrap();
        let err = scheme
            .verify(&[key], &HeaderMap::new(), BODY.as_bytes(), at(T))
            .unwrap_err();
        assert_eq!(err, VerifyError::MissingHeader("stripe-signature".into()));
    }

    #[test]
    fn rotation_second_key_valid() {
        assert!(verify_with(&["whsec_old", SECRET], &good(), BODY, T).is_ok());
    }

    #[test]
    fn window_boundaries() {
        for now in [T - 300, T + 300] {
            assert!(verify_with(&[SECRET], &good(), BODY, now).is_ok());
        }
        for now in [T - 301, T + 301] {
            let err = verify_with(&[SECRET], &good(), BODY, now).unwrap_err();
            assert_eq!(err, VerifyError::OutsideWindow);
            assert_no_leak(&err, &[SIG, SECRET]);
        }
        // Stale and wrongly signed: the signature is what is wrong.
        let bad = format!("t={T},v1={OTHER_SIG}");
        assert_eq!(
            verify_with(&[SECRET], &bad, BODY, T + 10_000),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn five_thousand_v1_entries_one_valid() {
        let mut header = format!("t={T}");
        for i in 0..5000 {
            if i == 4321 {
                write!(header, ",v1={SIG}").unwrap();
            } else {
                write!(header, ",v1={i:064x}").unwrap();
            }
        }
        header.push_str(",v0=deadbeef");
        assert!(verify(&header).is_ok());
        // Also with rotation: two keys, neither entry list position special.
        assert!(verify_with(&["whsec_old", SECRET], &header, BODY, T).is_ok());
        let without = header.replace(SIG, OTHER_SIG);
        assert_eq!(verify(&without), Err(VerifyError::Mismatch));
    }

    #[test]
    fn sign_verify_roundtrip() {
        let scheme = scheme();
        let key = scheme.key_from_secret("whsec_roundtrip").unwrap();
        let now = at(1_800_000_000);
        let headers = into_map(scheme.sign(&key, b"{}", now, "").unwrap());
        assert_eq!(
            scheme.verify(&[key], &headers, b"{}", now),
            Ok(Verified {
                scheme_id: None,
                timestamp: Some(1_800_000_000)
            })
        );
    }
}
