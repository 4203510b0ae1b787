//! Webhook signature schemes: verifying (and, for the CLI and tests, producing) HMAC-SHA256
//! signatures over the raw request body, with constant-time comparison and secret rotation.

pub mod hmac;
pub mod standard_webhooks;
pub mod stripe;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// `::` because this module has a child named `hmac` too; a bare `hmac::` would be ambiguous here.
use ::hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

type HmacSha256 = Hmac<Sha256>;

/// Length in bytes of an HMAC-SHA256 tag; anything else on the wire cannot match.
const TAG_LEN: usize = 32;

/// A prepared HMAC-SHA256 key. Debug prints `SigningKey(<redacted>)`.
#[derive(Clone)]
pub struct SigningKey {
    // The key schedule (inner/outer pad digests) is done once at config load, so a request
    // costs one clone plus the updates over its own bytes.
    mac: HmacSha256,
}

impl SigningKey {
    /// Prepare a key from raw key bytes; HMAC accepts any length.
    pub fn new(key_bytes: &[u8]) -> Self {
        let mac = match HmacSha256::new_from_slice(key_bytes) {
            Ok(mac) => mac,
            // HMAC hashes long keys and pads short ones, so hmac 0.13 never returns this.
            Err(_) => unreachable!("HMAC-SHA256 accepts keys of any length"),
        };
        SigningKey { mac }
    }

    /// The tag over the concatenation of `parts`, fed piecewise so the body is never copied.
    fn tag(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// One configured verification scheme.
#[derive(Debug, Clone)]
pub enum Scheme {
    /// The generic `hmac-sha256` scheme or its GitHub preset.
    Hmac(hmac::HmacScheme),
    /// Stripe's `Stripe-Signature: t=…,v1=…` scheme.
    Stripe(stripe::StripeScheme),
    /// Standard Webhooks (`webhook-*` headers) or Svix (`svix-*` headers).
    StandardWebhooks(standard_webhooks::StandardScheme),
}

impl Scheme {
    /// Stable name for logs/headers: "hmac-sha256" | "github" | "stripe" | "standard-webhooks".
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Hmac(s) => s.name,
            Scheme::Stripe(_) => "stripe",
            Scheme::StandardWebhooks(_) => "standard-webhooks",
        }
    }

    /// Turn one configured secret string into the key this scheme signs with.
    ///
    /// hmac-sha256/github: the string's bytes. stripe: the whole `whsec_…` string's bytes
    /// (Stripe keys the HMAC with the string itself). standard-webhooks: an optional `whsec_`
    /// prefix stripped, the rest base64-decoded (standard alphabet, padded). An empty secret
    /// is refused for every scheme.
    ///
    /// # Errors
    /// What is wrong with the secret, never any part of it.
    pub fn key_from_secret(&self, secret: &str) -> Result<SigningKey, SecretError> {
        if secret.is_empty() {
            return Err(SecretError::Empty);
        }
        match self {
            Scheme::Hmac(_) | Scheme::Stripe(_) => Ok(SigningKey::new(secret.as_bytes())),
            Scheme::StandardWebhooks(_) => standard_webhooks::key_from_secret(secret),
        }
    }

    /// Check the request's signature against every key (any match accepts, so secrets can be
    /// rotated). With no keys the result is [`VerifyError::Mismatch`] once the headers parse.
    pub fn verify(
        &self,
        keys: &[SigningKey],
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        match self {
            Scheme::Hmac(s) => s.verify(keys, headers, body, now),
            Scheme::Stripe(s) => s.verify(keys, headers, body, now),
            Scheme::StandardWebhooks(s) => s.verify(keys, headers, body, now),
        }
    }

    /// Produce the headers a provider would send. `id` is used where the scheme carries one
    /// (standard-webhooks `webhook-id`), `now` for timestamps.
    ///
    /// # Errors
    /// Only when a value cannot be an HTTP header value: an `id` with control or non-ASCII
    /// characters, or a configured prefix with them.
    pub fn sign(
        &self,
        key: &SigningKey,
        body: &[u8],
        now: SystemTime,
        id: &str,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, SignError> {
        match self {
            Scheme::Hmac(s) => s.sign(key, body, now),
            Scheme::Stripe(s) => Ok(s.sign(key, body, now)),
            Scheme::StandardWebhooks(s) => s.sign(key, body, now, id),
        }
    }
}

/// The schemes a provider may name in `listener.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemeKind {
    /// `hmac-sha256`: header, encoding, prefix and signed content from the config.
    HmacSha256,
    /// `github`: the hmac-sha256 preset GitHub sends.
    Github,
    /// `stripe`.
    Stripe,
    /// `standard-webhooks` (and Svix).
    StandardWebhooks,
}

impl SchemeKind {
    /// Every scheme, in the order messages list them.
    pub const ALL: [SchemeKind; 4] = [
        Self::HmacSha256,
        Self::Github,
        Self::Stripe,
        Self::StandardWebhooks,
    ];

    /// The scheme a config names, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The name a config uses, the same as [`Scheme::name`].
    pub fn name(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::Github => "github",
            Self::Stripe => "stripe",
            Self::StandardWebhooks => "standard-webhooks",
        }
    }

    /// What a provider of this scheme gets for the keys its config leaves out; each scheme's
    /// module owns its own.
    pub fn defaults(self) -> &'static Defaults {
        match self {
            Self::HmacSha256 => &hmac::DEFAULTS,
            Self::Github => &hmac::GITHUB_DEFAULTS,
            Self::Stripe => &stripe::DEFAULTS,
            Self::StandardWebhooks => &standard_webhooks::DEFAULTS,
        }
    }

    /// The scheme ready to verify, for the schemes that fix their own headers and signed
    /// content; `None` for `hmac-sha256`, whose header and encoding only the config knows.
    pub fn preset(self, tolerance: Duration) -> Option<Scheme> {
        match self {
            Self::HmacSha256 => None,
            Self::Github => Some(Scheme::Hmac(hmac::HmacScheme::github())),
            Self::Stripe => Some(Scheme::Stripe(stripe::StripeScheme { tolerance })),
            Self::StandardWebhooks => Some(Scheme::StandardWebhooks(
                standard_webhooks::StandardScheme {
                    tolerance,
                    public_keys: Vec::new(),
                },
            )),
        }
    }
}

/// What a provider of one scheme gets for the keys its config leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// Where the event id is, unless `event_id` says.
    pub event_id: FieldDefault,
    /// Where the event type is, unless `event_type` says.
    pub event_type: FieldDefault,
    /// The timestamp window, unless `tolerance` says; unused by schemes without a timestamp.
    pub tolerance: Duration,
}

/// Where a scheme's deliveries carry the event id or type by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldDefault {
    /// An RFC 6901 JSON pointer into the body.
    Pointer(&'static str),
    /// A request header, named in lower case.
    Header(&'static str),
    /// The id the scheme's own signed headers carry ([`Verified::scheme_id`]).
    SchemeId,
}

/// Why a configured secret cannot key its scheme. Holds no part of the secret, and no cause
/// that would (the base64 decoder's error names the offending byte).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The secret is the empty string.
    #[error("secret is empty")]
    Empty,
    /// A standard-webhooks secret that is not (`whsec_` and) base64.
    #[error("standard-webhooks secret must be `whsec_` followed by padded standard base64")]
    NotBase64,
    /// A standard-webhooks secret that decodes to nothing.
    #[error("standard-webhooks secret decodes to an empty key")]
    EmptyKey,
    /// A `whsk_` ed25519 secret key where a public key (or an HMAC secret) belongs.
    #[error(
        "this is an ed25519 secret key (whsk_): it stays with the sender; give its public key \
         (whpk_) in public_keys"
    )]
    SecretKeyGiven,
    /// A `whpk_` public key given as a shared secret.
    #[error("this is an ed25519 public key (whpk_): it goes in public_keys, not in secrets")]
    PublicKeyAsSecret,
    /// A public key that is not `whpk_` followed by 32 bytes in padded standard base64.
    #[error(
        "a standard-webhooks public key must be `whpk_` followed by 32 bytes in padded standard base64"
    )]
    NotPublicKey,
    /// A `whsk_` secret key that is not 64 (seed and public key) or 32 (seed) bytes of padded
    /// standard base64, or whose public half does not belong to its seed.
    #[error(
        "a standard-webhooks secret key must be `whsk_` followed by 64 bytes (seed, then public \
         key) or a 32-byte seed, in padded standard base64"
    )]
    NotSecretKey,
}

/// Why headers could not be produced for a delivery.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The configured prefix cannot be part of a header value.
    #[error("configured signature prefix is not a valid header value")]
    Prefix(#[source] http::header::InvalidHeaderValue),
    /// The id (standard-webhooks `webhook-id`) cannot be a header value.
    #[error("webhook id must be visible ASCII to be sent as a header")]
    Id(#[source] http::header::InvalidHeaderValue),
    /// The encoded signature cannot be a header value (base64 always can).
    #[error("signature is not a valid header value")]
    Signature(#[source] http::header::InvalidHeaderValue),
}

/// What a successful verification learned from the signed headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Event id carried by the scheme itself (standard-webhooks: the `webhook-id` / `svix-id`
    /// header value), else None.
    pub scheme_id: Option<String>,
    /// Signed timestamp (unix seconds) where the scheme has one.
    pub timestamp: Option<i64>,
}

/// Why a request was rejected. Carries header names and fixed reasons only, never a
/// signature, a secret or other request bytes, so it is safe to log and to answer with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The client did not send a required header; holds the header's name.
    #[error("missing {0} header")]
    MissingHeader(String),
    /// The client sent a required header whose value cannot be parsed.
    #[error("malformed {header} header: {reason}")]
    Malformed {
        /// Name of the offending header.
        header: String,
        /// Fixed description of what is wrong with the value.
        reason: &'static str,
    },
    /// None of the client's signatures matches any key (wrong secret, altered body, bad tag).
    #[error("no signature matches")]
    Mismatch,
    /// The client's signature matches but its signed timestamp is too old or too far ahead.
    #[error("timestamp outside the allowed window")]
    OutsideWindow,
}

impl VerifyError {
    /// Metric label: "missing_signature" | "malformed_signature" | "mismatch" | "outside_window".
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) => "missing_signature",
            VerifyError::Malformed { .. } => "malformed_signature",
            VerifyError::Mismatch => "mismatch",
            VerifyError::OutsideWindow => "outside_window",
        }
    }

    /// True for Malformed (answered 400), false for the others (answered 401).
    pub fn is_malformed(&self) -> bool {
        matches!(self, VerifyError::Malformed { .. })
    }
}

fn malformed(header: &str, reason: &'static str) -> VerifyError {
    VerifyError::Malformed {
        header: header.to_owned(),
        reason,
    }
}

/// The trimmed text of a required header. Only the first value counts: a second copy cannot
/// help an attacker, who would still need a valid signature in the first.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, VerifyError> {
    let value = headers
        .get(name)
        .ok_or_else(|| VerifyError::MissingHeader(name.to_owned()))?;
    let text = value
        .to_str()
        .map_err(|_| malformed(name, "not visible ASCII"))?
        .trim();
    if text.is_empty() {
        return Err(malformed(name, "empty"));
    }
    Ok(text)
}

/// Unix seconds written as plain ASCII digits. Signs, spaces, fractions and exponents are
/// refused: providers send bare integers, and the raw text is what gets signed.
fn parse_unix_seconds(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whole unix seconds, negative before 1970 so a skewed clock still compares sensibly.
fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// Symmetric replay window: a difference of exactly `tolerance` (whole seconds) is accepted.
fn check_window(timestamp: i64, now: SystemTime, tolerance: Duration) -> Result<(), VerifyError> {
    if unix_seconds(now).abs_diff(timestamp) > tolerance.as_secs() {
        return Err(VerifyError::OutsideWindow);
    }
    Ok(())
}

/// Each key's tag over the same signed content, computed once per request so that many
/// candidate signatures cost a comparison each, not an HMAC each.
fn expected_tags(keys: &[SigningKey], parts: &[&[u8]]) -> Vec<[u8; TAG_LEN]> {
    keys.iter().map(|key| key.tag(parts)).collect()
}

/// Constant-time membership test; all keys are compared so timing says nothing about which.
fn matches_any(tags: &[[u8; TAG_LEN]], candidate: &[u8; TAG_LEN]) -> Choice {
    tags.iter().fold(Choice::from(0), |acc, tag| {
        acc | tag[..].ct_eq(&candidate[..])
    })
}

/// Hex of exactly 32 bytes, either case, into a stack buffer.
fn decode_hex_tag(text: &str) -> Option<[u8; TAG_LEN]> {
    let mut out = [0u8; TAG_LEN];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Padded standard base64 of exactly 32 bytes into a stack buffer.
fn decode_base64_tag(text: &str) -> Option<[u8; TAG_LEN]> {
    use base64::Engine as _;
    // 32 bytes are always 44 padded characters; checking first keeps oversized input cheap.
    if text.len() != 44 {
        return None;
    }
    // A little slack so the decoder's length estimate never trips before the real check.
    let mut buf = [0u8; TAG_LEN + 3];
    let n = base64::engine::general_purpose::STANDARD
        .decode_slice(text, &mut buf)
        .ok()?;
    if n != TAG_LEN {
        return None;
    }
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&buf[..TAG_LEN]);
    Some(out)
}

/// Padded standard base64, as every scheme here writes signatures and keys.
pub fn encode_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Helpers shared by the test modules of the scheme files.
#[cfg(test)]
mod test_support {
    use super::VerifyError;
    use http::{HeaderMap, HeaderName, HeaderValue};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    pub fn into_map(pairs: Vec<(HeaderName, HeaderValue)>) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name, value);
        }
        map
    }

    /// Fails if the error's Display or Debug text contains any of `secrets`.
    pub fn assert_no_leak(err: &VerifyError, secrets: &[&str]) {
        let shown = format!("{err} {err:?}");
        for secret in secrets {
            assert!(
                !shown.contains(secret),
                "error text {shown:?} leaks {secret:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::at;

    #[test]
    fn signing_key_debug_is_redacted() {
        let key = SigningKey::new(b"super secret");
        assert_eq!(format!("{key:?}"), "SigningKey(<redacted>)");
    }

    #[test]
    fn signing_key_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let tag = SigningKey::new(b"Jefe").tag(&[b"what do ya ", b"want for nothing?"]);
        assert_eq!(
            hex::encode(tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn long_keys_are_accepted() {
        // RFC 4231 test case 6: a 131-byte key, longer than the block, is hashed first.
        let key = [0xaa_u8; 131];
        let tag =
            SigningKey::new(&key).tag(&[b"Test Using Larger Than Block-Size Key - Hash Key First"]);
        assert_eq!(
            hex::encode(tag),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn reasons_and_statuses() {
        let cases = [
            (
                VerifyError::MissingHeader("x".into()),
                "missing_signature",
                false,
            ),
            (malformed("x", "empty"), "malformed_signature", true),
            (VerifyError::Mismatch, "mismatch", false),
            (VerifyError::OutsideWindow, "outside_window", false),
        ];
        for (err, reason, is_malformed) in cases {
            assert_eq!(err.reason(), reason);
            assert_eq!(err.is_malformed(), is_malformed);
        }
        assert_eq!(
            malformed("stripe-signature", "missing t").to_string(),
            "malformed stripe-signature header: missing t"
        );
    }

    #[test]
    fn timestamps_are_plain_digits() {
        assert_eq!(parse_unix_seconds("1614265330"), Some(1_614_265_330));
        assert_eq!(parse_unix_seconds("0"), Some(0));
        for bad in [
            "",
            "+1",
            "-1",
            " 1",
            "1.5",
            "1e9",
            "0x10",
            "99999999999999999999",
        ] {
            assert_eq!(parse_unix_seconds(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn window_is_symmetric_and_inclusive() {
        let tol = Duration::from_secs(300);
        let now = at(1_000_000);
        assert_eq!(check_window(1_000_000 - 300, now, tol), Ok(()));
        assert_eq!(check_window(1_000_000 + 300, now, tol), Ok(()));
        assert_eq!(
            check_window(1_000_000 - 301, now, tol),
            Err(VerifyError::OutsideWindow)
        );
        assert_eq!(
            check_window(1_000_000 + 301, now, tol),
            Err(VerifyError::OutsideWindow)
        );
        assert_eq!(
            check_window(i64::MIN, now, tol),
            Err(VerifyError::OutsideWindow)
        );
        assert_eq!(
            check_window(i64::MAX, now, tol),
            Err(VerifyError::OutsideWindow)
        );
    }

    #[test]
    fn clock_before_epoch_is_negative() {
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), -5);
    }

    #[test]
    fn empty_secret_is_refused_by_every_scheme() {
        let schemes = [
            Scheme::Hmac(hmac::HmacScheme::github()),
            Scheme::Stripe(stripe::StripeScheme {
                tolerance: Duration::from_secs(300),
            }),
            Scheme::StandardWebhooks(standard_webhooks::StandardScheme {
                tolerance: Duration::from_secs(300),
                public_keys: Vec::new(),
            }),
        ];
        for scheme in &schemes {
            assert!(scheme.key_from_secret("").is_err(), "{}", scheme.name());
        }
    }

    #[test]
    fn names() {
        assert_eq!(Scheme::Hmac(hmac::HmacScheme::github()).name(), "github");
        let generic = hmac::HmacScheme::hmac_sha256(
            HeaderName::from_static("x-signature"),
            hmac::Encoding::Hex,
        );
        assert_eq!(Scheme::Hmac(generic).name(), "hmac-sha256");
        let tolerance = Duration::from_secs(300);
        assert_eq!(
            Scheme::Stripe(stripe::StripeScheme { tolerance }).name(),
            "stripe"
        );
        assert_eq!(
            Scheme::StandardWebhooks(standard_webhooks::StandardScheme {
                tolerance,
                public_keys: Vec::new()
            })
            .name(),
            "standard-webhooks"
        );
    }

    #[test]
    fn every_scheme_kind_parses_from_its_name_and_names_its_scheme() {
        let tolerance = Duration::from_secs(300);
        for kind in SchemeKind::ALL {
            assert_eq!(SchemeKind::parse(kind.name()), Some(kind));
            // A preset verifies under the name the config gave it.
            if let Some(scheme) = kind.preset(tolerance) {
                assert_eq!(scheme.name(), kind.name());
            }
        }
        assert_eq!(SchemeKind::parse("hmac-sha512"), None);
        assert!(SchemeKind::HmacSha256.preset(tolerance).is_none());
        assert_eq!(
            SchemeKind::Github.defaults().event_id,
            FieldDefault::Header("x-github-delivery")
        );
        assert_eq!(
            SchemeKind::StandardWebhooks.defaults().event_id,
            FieldDefault::SchemeId
        );
    }

    #[test]
    fn base64_tags_need_exactly_32_bytes() {
        let tag = [7u8; 32];
        let text = encode_base64(&tag);
        assert_eq!(decode_base64_tag(&text), Some(tag));
        assert_eq!(decode_base64_tag(&encode_base64(&[7u8; 31])), None);
        assert_eq!(decode_base64_tag(&encode_base64(&[7u8; 33])), None);
        assert_eq!(decode_base64_tag(text.trim_end_matches('=')), None);
        assert_eq!(decode_base64_tag(&text.replace('B', "-")), None);
    }
}
