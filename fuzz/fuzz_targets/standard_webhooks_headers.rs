//! Standard Webhooks / svix header parsing and verification on arbitrary input.
#![no_main]

mod common;

use std::time::{Duration, UNIX_EPOCH};

use hookwarden::scheme::{Scheme, standard_webhooks::StandardScheme};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scheme = Scheme::StandardWebhooks(StandardScheme { tolerance: Duration::from_secs(300) });
    let Ok(key) = scheme.key_from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") else { return };
    let names = if data.first() == Some(&b's') {
        ["svix-id", "svix-timestamp", "svix-signature"]
    } else {
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
    };
    let (headers, body) = common::split(data.get(1..).unwrap_or(&[]), &names);
    let _ = scheme.verify(&[key], &headers, body, UNIX_EPOCH + Duration::from_secs(1_614_265_330));
});
