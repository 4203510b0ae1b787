//! The generic hmac-sha256 scheme (prefix, hex and base64, timestamped template) and the
//! GitHub preset on arbitrary header values and bodies.
#![no_main]

mod common;

use std::time::{Duration, UNIX_EPOCH};

use hookwarden::scheme::Scheme;
use hookwarden::scheme::hmac::{Encoding, HmacScheme, SignedTemplate, Timestamped};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    let mut h = HmacScheme::github();
    if mode & 1 == 1 {
        h.encoding = Encoding::Base64;
    }
    if mode & 2 == 2 {
        let Ok(template) = SignedTemplate::parse("v0:{timestamp}:{body}") else { return };
        h.timestamp = Some(Timestamped {
            header: http::HeaderName::from_static("x-timestamp"),
            template,
            tolerance: Duration::from_secs(300),
        });
    }
    let scheme = Scheme::Hmac(h);
    let Ok(key) = scheme.key_from_secret("fuzz-secret") else { return };
    let (headers, body) = common::split(data, &["x-hub-signature-256", "x-timestamp"]);
    let _ = scheme.verify(&[key], &headers, body, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
});
