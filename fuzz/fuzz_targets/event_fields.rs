//! Event id and type extraction: arbitrary bodies through the JSON parse and the pointer,
//! header and scheme-id sources, then the AMQP envelope checks.
#![no_main]

mod common;

use hookwarden::envelope::Envelope;
use hookwarden::listener::extract::{FieldRef, extract, parse_body};
use hookwarden::scheme::Verified;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (headers, body) = common::split(data, &["x-event-id"]);
    // The listener's own parse: duplicate keys refused, nesting bounded.
    let Ok(json) = parse_body(body) else { return };
    let verified = Verified { scheme_id: Some("msg".into()), timestamp: None };
    for source in ["/id", "/data/id", "header:X-Event-Id"] {
        let Ok(field) = FieldRef::parse(source) else { continue };
        if let Ok(id) = extract(&field, "event id", &headers, &json, &verified) {
            let _ = Envelope::new(
                "fuzz",
                id.clone(),
                id,
                "github",
                std::net::IpAddr::from([127, 0, 0, 1]),
                std::time::SystemTime::UNIX_EPOCH,
                bytes_of(body),
            );
        }
    }
});

fn bytes_of(body: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(body)
}
