//! Config loading on arbitrary text: TOML parse, merge, section deserialization, validation
//! and line lookup, for both the listener config and the rules file. Never a panic.
#![no_main]

use std::collections::HashMap;

use hookwarden::config::listener::ListenerConfig;
use hookwarden::config::worker::WorkerConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env = HashMap::from([("HOOKWARDEN__SERVER__MAX_BODY".to_owned(), "2048".to_owned())]);
    let _ = ListenerConfig::parse("fuzz.toml", text, &env);
    let _ = WorkerConfig::parse("fuzz.toml", text, &env);
});
