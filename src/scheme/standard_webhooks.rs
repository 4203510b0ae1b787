//! The Standard Webhooks scheme (also what Svix sends): `webhook-id`, `webhook-timestamp` and
//! a space-separated `webhook-signature` list of `v1,<base64>` (HMAC-SHA256 with a shared
//! `whsec_` secret) and `v1a,<base64>` (ed25519 with the sender's key pair, checked here with
//! its `whpk_` public key) over `"{id}.{timestamp}.{body}"`. A public key in a receiver's
//! config cannot forge events, which is why the spec prefers it.

use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signature, Signer as _, VerifyingKey};
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
    /// The senders' ed25519 public keys (`public_keys`), for `v1a` signatures; several while a
    /// key is rotated.
    pub public_keys: Vec<VerifyingKey>,
}

/// Length of an ed25519 signature.
const ED25519_SIGNATURE_LEN: usize = 64;

/// Reads a `whpk_` public key (the prefix optional): 32 bytes in padded standard base64.
///
/// # Errors
/// [`SecretError::SecretKeyGiven`] for a `whsk_` secret key, [`SecretError::NotPublicKey`]
/// otherwise; neither carries any part of the text.
pub fn public_key(text: &str) -> Result<VerifyingKey, SecretError> {
    use base64::Engine as _;
    if text.starts_with("whsk_") {
        return Err(SecretError::SecretKeyGiven);
    }
    let encoded = text.strip_prefix("whpk_").unwrap_or(text);
    let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(SecretError::NotPublicKey)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| SecretError::NotPublicKey)
}

/// Reads a `whsk_` secret key: the seed and public key (64 bytes, as Svix writes it) or the
/// seed alone (32 bytes), in padded standard base64.
///
/// # Errors
/// [`SecretError::NotSecretKey`], carrying no part of the text.
pub fn secret_key(text: &str) -> Result<ed25519_dalek::SigningKey, SecretError> {
    use base64::Engine as _;
    let encoded = text
        .strip_prefix("whsk_")
        .ok_or(SecretError::NotSecretKey)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| SecretError::NotSecretKey)?;
    if let Ok(pair) = <[u8; 64]>::try_from(bytes.as_slice()) {
        return ed25519_dalek::SigningKey::from_keypair_bytes(&pair)
            .map_err(|_| SecretError::NotSecretKey);
    }
    let seed: [u8; 32] = bytes.try_into().map_err(|_| SecretError::NotSecretKey)?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
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
    if secret.starts_with("whsk_") {
        return Err(SecretError::SecretKeyGiven);
    }
    if secret.starts_with("whpk_") {
        return Err(SecretError::PublicKeyAsSecret);
    }
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

/// An ed25519 signature in padded standard base64; anything else (not base64, not 64 bytes)
/// is no signature.
fn decode_signature(encoded: &str) -> Option<Signature> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let bytes: [u8; ED25519_SIGNATURE_LEN] = bytes.try_into().ok()?;
    Some(Signature::from_bytes(&bytes))
}

impl StandardScheme {
    /// Passes when a `v1,` entry matches one of `keys` (the HMAC secrets) or a `v1a,` entry is
    /// a valid ed25519 signature under one of the scheme's public keys (checked strictly: no
    /// malleable signatures, no weak keys). A header with no entry this receiver can check
    /// (say, only `v1a,` ones and no public key configured) is a [`VerifyError::Mismatch`]:
    /// well-formed by the spec, just nothing to check, as the reference libraries answer.
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
        // The public keys are public: checking them needs no constant time, and the signed
        // content is put together only when there is something to check it with. A sender
        // that signs both kinds is through on its `v1` entry: an ed25519 check costs fifty
        // times an HMAC (`cargo bench --bench micro -- verify`), and the answer is the same.
        let mut asymmetric = false;
        if !bool::from(matched) && !self.public_keys.is_empty() {
            let mut content: Option<Vec<u8>> = None;
            for entry in signatures.split_ascii_whitespace() {
                let Some(("v1a", encoded)) = entry.split_once(',') else {
                    continue;
                };
                let Some(signature) = decode_signature(encoded) else {
                    continue;
                };
                let content = content.get_or_insert_with(|| {
                    [id.as_bytes(), b".", raw_ts.as_bytes(), b".", body].concat()
                });
                if self
                    .public_keys
                    .iter()
                    .any(|key| key.verify_strict(content, &signature).is_ok())
                {
                    asymmetric = true;
                    break;
                }
            }
        }
        if !bool::from(matched) && !asymmetric {
            return Err(VerifyError::Mismatch);
        }
        check_window(seconds, now, self.tolerance)?;
        Ok(Verified {
            scheme_id: Some(id.to_owned()),
            timestamp: Some(seconds),
        })
    }

    /// The three `webhook-*` headers, signed with an ed25519 secret key: `v1a,<base64>`.
    ///
    /// # Errors
    /// [`SignError::Id`]: `id` cannot be a header value.
    pub fn sign_v1a(
        &self,
        key: &ed25519_dalek::SigningKey,
        body: &[u8],
        now: SystemTime,
        id: &str,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, SignError> {
        let id_value = HeaderValue::from_str(id).map_err(SignError::Id)?;
        let seconds = unix_seconds(now);
        let content = [
            id.as_bytes(),
            b".",
            seconds.to_string().as_bytes(),
            b".",
            body,
        ]
        .concat();
        let signature = key.sign(&content);
        let signature =
            HeaderValue::try_from(format!("v1a,{}", encode_base64(&signature.to_bytes())))
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
            public_keys: Vec::new(),
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

    /// Svix's server signs `v1a` (svix-server, worker.rs, test_asymmetric_key_signing): its key
    /// pair, and its signature of the spec's test message.
    const SVIX_SECRET_KEY: &str = "whsk_6Xb/dCcHpPea21PS1N9VY/NZW723CEc77N4rJCubMbfVKIDij2HKpMKkioLlX0dRqSKJp4AJ6p9lMicMFs6Kvg==";
    const SVIX_PUBLIC_KEY: &str = "whpk_1SiA4o9hyqTCpIqC5V9HUakiiaeACeqfZTInDBbOir4=";
    const SVIX_V1A: &str = "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg==";

    /// Made with Python's `cryptography` 48 (an independent ed25519): the key from the seed
    /// bytes 0, 1, …, 31, `Ed25519PrivateKey.from_private_bytes(seed).sign(message)` over
    /// `msg_2KWPBgLlAfxdpx2AI54pPJ85f4W.1674087231.{"test": 2432232314}`, everything in padded
    /// standard base64 (the secret key as seed followed by public key, as Svix writes it).
    const PY_SECRET_KEY: &str = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8DoQe/884Qvh1w3RjnS8CZZ+TWMJulDV8d3IZkElUxuA==";
    const PY_SEED: &str = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const PY_PUBLIC_KEY: &str = "whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
    const PY_ID: &str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
    const PY_TS: u64 = 1_674_087_231;
    const PY_V1A: &str = "v1a,WGezPSQBN+ncUQHlaJCb1mM9EqbbV3QGhNXd7fi36AohyzGqpJZqe4p0IBgO1Jv4Rj4GsxPl1i5ebiTbe31mDA==";

    fn asymmetric(public_keys: &[&str]) -> StandardScheme {
        StandardScheme {
            tolerance: Duration::from_secs(300),
            public_keys: public_keys.iter().map(|k| public_key(k).unwrap()).collect(),
        }
    }

    fn verify_v1a(
        public_keys: &[&str],
        id: &str,
        ts: u64,
        sig: &str,
        body: &str,
    ) -> Result<Verified, VerifyError> {
        asymmetric(public_keys).verify(
            &[],
            &headers(id, &ts.to_string(), sig),
            body.as_bytes(),
            at(ts),
        )
    }

    #[test]
    fn v1a_signatures_of_independent_signers_verify() {
        assert!(verify_v1a(&[SVIX_PUBLIC_KEY], ID, TS, SVIX_V1A, BODY).is_ok());
        assert!(verify_v1a(&[PY_PUBLIC_KEY], PY_ID, PY_TS, PY_V1A, BODY).is_ok());
        // Among other entries, and with a second key being rotated in.
        let mixed = format!("v1,{OTHER} {PY_V1A} v2,whatever");
        assert!(
            verify_v1a(
                &[SVIX_PUBLIC_KEY, PY_PUBLIC_KEY],
                PY_ID,
                PY_TS,
                &mixed,
                BODY
            )
            .is_ok()
        );
    }

    #[test]
    fn v1a_refuses_what_it_should() {
        let refused =
            |keys: &[&str], sig: &str, body: &str| verify_v1a(keys, PY_ID, PY_TS, sig, body);
        // The other sender's key.
        assert_eq!(
            refused(&[SVIX_PUBLIC_KEY], PY_V1A, BODY),
            Err(VerifyError::Mismatch)
        );
        // A tampered body.
        assert_eq!(
            refused(&[PY_PUBLIC_KEY], PY_V1A, r#"{"test": 2432232315}"#),
            Err(VerifyError::Mismatch)
        );
        // An ed25519 signature labelled v1 is not checked as one.
        let as_v1 = PY_V1A.replacen("v1a,", "v1,", 1);
        assert_eq!(
            refused(&[PY_PUBLIC_KEY], &as_v1, BODY),
            Err(VerifyError::Mismatch)
        );
        // Truncated, not base64, 63 bytes.
        let truncated = &PY_V1A[..PY_V1A.len() - 4];
        assert_eq!(
            refused(&[PY_PUBLIC_KEY], truncated, BODY),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            refused(&[PY_PUBLIC_KEY], "v1a,n0t*base64!", BODY),
            Err(VerifyError::Mismatch)
        );
        let short = format!("v1a,{}", encode_base64(&[7u8; 63]));
        assert_eq!(
            refused(&[PY_PUBLIC_KEY], &short, BODY),
            Err(VerifyError::Mismatch)
        );
        // No public key configured: a v1a entry is nothing this receiver can check.
        assert_eq!(refused(&[], PY_V1A, BODY), Err(VerifyError::Mismatch));
        // Outside the window, like v1.
        assert_eq!(
            asymmetric(&[PY_PUBLIC_KEY]).verify(
                &[],
                &headers(PY_ID, &PY_TS.to_string(), PY_V1A),
                BODY.as_bytes(),
                at(PY_TS + 301),
            ),
            Err(VerifyError::OutsideWindow)
        );
    }

    #[test]
    fn a_secret_or_a_public_key_each_accept_their_own_signature() {
        let both = StandardScheme {
            tolerance: Duration::from_secs(300),
            public_keys: vec![public_key(SVIX_PUBLIC_KEY).unwrap()],
        };
        let h = |sig: &str| headers(ID, "1614265330", sig);
        assert!(
            both.verify(&keys(&[SECRET]), &h(SIG), BODY.as_bytes(), at(TS))
                .is_ok()
        );
        assert!(
            both.verify(&keys(&[SECRET]), &h(SVIX_V1A), BODY.as_bytes(), at(TS))
                .is_ok()
        );
        assert_eq!(
            both.verify(&keys(&[SECRET]), &h(BAD_SIG), BODY.as_bytes(), at(TS)),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn we_sign_v1a_as_the_independent_signers_do() {
        // ed25519 signatures are deterministic: the same key and content, the same bytes.
        for secret in [PY_SECRET_KEY, PY_SEED] {
            let key = secret_key(secret).unwrap();
            let map = into_map(
                asymmetric(&[])
                    .sign_v1a(&key, BODY.as_bytes(), at(PY_TS), PY_ID)
                    .unwrap(),
            );
            assert_eq!(map["webhook-signature"], PY_V1A);
        }
        let svix = secret_key(SVIX_SECRET_KEY).unwrap();
        let map = into_map(
            asymmetric(&[])
                .sign_v1a(&svix, BODY.as_bytes(), at(TS), ID)
                .unwrap(),
        );
        assert_eq!(map["webhook-signature"], SVIX_V1A);
    }

    #[test]
    fn keys_in_the_wrong_place_are_named_without_echoing_them() {
        let err = public_key(PY_SECRET_KEY).unwrap_err();
        assert_eq!(err, SecretError::SecretKeyGiven);
        assert!(err.to_string().contains("give its public key (whpk_)"));
        assert_eq!(
            scheme().key_from_secret(PY_SECRET_KEY).unwrap_err(),
            SecretError::SecretKeyGiven
        );
        assert_eq!(
            scheme().key_from_secret(PY_PUBLIC_KEY).unwrap_err(),
            SecretError::PublicKeyAsSecret
        );
        for bad in ["whpk_AAAA", "whpk_n0t*v4l1d", "whpk_"] {
            assert_eq!(
                public_key(bad).unwrap_err(),
                SecretError::NotPublicKey,
                "{bad}"
            );
        }
        for bad in [PY_PUBLIC_KEY, "whsk_AAAA", "whsk_n0t*v4l1d"] {
            let err = secret_key(bad).unwrap_err();
            assert_eq!(err, SecretError::NotSecretKey, "{bad}");
            assert!(!err.to_string().contains(&bad[5..]), "{err}");
        }
        // A pair whose public half belongs to another seed.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut pair = b64.decode(&PY_SECRET_KEY[5..]).unwrap();
        pair.truncate(32);
        pair.extend(b64.decode(&SVIX_PUBLIC_KEY[5..]).unwrap());
        let mismatched = format!("whsk_{}", b64.encode(&pair));
        assert_eq!(
            secret_key(&mismatched).unwrap_err(),
            SecretError::NotSecretKey
        );
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
