//! Stripe-Signature parsing and verification on arbitrary header text and bodies.
#![no_main]

mod common;

use std::time::{Duration, UNIX_EPOCH};

use hookwarden::scheme::{Scheme, stripe::StripeScheme};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scheme = Scheme::Stripe(StripeScheme { tolerance: Duration::from_secs(300) });
    let Ok(key) = scheme.key_from_secret("whsec_fuzz") else { return };
    let (headers, body) = common::split(data, &["stripe-signature"]);
    let _ = scheme.verify(&[key], &headers, body, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
});
