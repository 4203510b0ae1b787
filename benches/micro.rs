//! Micro-benchmarks of the per-event work, no broker needed: signature verification per
//! scheme, event id and type extraction, the dedupe cache, one typical CEL rule, one action
//! template. `cargo bench --bench micro` (a filter narrows it: `cargo bench --bench micro -- cel`).

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hookwarden::listener::config::ListenerConfig;
use hookwarden::listener::dedupe::Dedupe;
use hookwarden::listener::extract::{extract, parse_body};
use hookwarden::scheme::standard_webhooks;
use hookwarden::worker::condition::{Condition, PreparedInput};
use hookwarden::worker::facts::Facts;
use hookwarden::worker::template::{self, Templates};
use http::HeaderMap;

/// The built-in 500-byte sample `hookwarden bench` sends.
const BODY: &str = r#"{"id":"evt_0001","event_id":"evt_0001","type":"identity.scored","event":"identity.scored","created_at":"2026-11-21T14:03:27.512Z","data":{"identity_id":"usr_48213","scored_at":"2026-11-21T14:03:27.401Z","scores":{"humanity":22,"uniqueness":61,"authenticity":48},"previous_scores":{"humanity":74,"uniqueness":63,"authenticity":51},"badges":["Suspicious"],"reason":"burst of sign-ups sharing one device fingerprint","device":{"fingerprint":"fp_9a8b7c6d5e4f","ip":"198.51.100.23","country":"NL"}}}"#;

fn config() -> ListenerConfig {
    let text = include_str!("../listener.toml");
    match ListenerConfig::parse("listener.toml", text, &HashMap::new()) {
        Ok(config) => config,
        Err(err) => panic!("listener.toml does not parse: {err}"),
    }
}

fn verification(c: &mut Criterion) {
    let config = config();
    let now = SystemTime::now();
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Bytes(BODY.len() as u64));
    for name in ["dregs", "reputation", "rewards", "github"] {
        let Some(provider) = config.provider(name) else {
            panic!("listener.toml has no provider {name}");
        };
        let mut headers = HeaderMap::new();
        let signed = provider
            .scheme
            .sign(&provider.keys[0], BODY.as_bytes(), now, "msg_2f1a")
            .unwrap_or_default();
        for (header, value) in signed {
            headers.insert(header, value);
        }
        let id = format!("{} v1 ({name})", provider.scheme.name());
        group.bench_function(id, |b| {
            b.iter(|| {
                provider
                    .scheme
                    .verify(
                        &provider.keys,
                        black_box(&headers),
                        black_box(BODY.as_bytes()),
                        now,
                    )
                    .is_ok()
            });
        });
    }
    // The same body signed `v1a` (ed25519), checked with the sender's public key.
    let secret = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8DoQe/884Qvh1w3RjnS8CZZ+TWMJulDV8d3IZkElUxuA==";
    let public = "whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
    let (Ok(key), Ok(public)) = (
        standard_webhooks::secret_key(secret),
        standard_webhooks::public_key(public),
    ) else {
        panic!("the v1a test keys do not read");
    };
    let scheme = standard_webhooks::StandardScheme {
        tolerance: Duration::from_secs(300),
        public_keys: vec![public],
    };
    let mut headers = HeaderMap::new();
    for (header, value) in scheme
        .sign_v1a(&key, BODY.as_bytes(), now, "msg_2f1a")
        .unwrap_or_default()
    {
        headers.insert(header, value);
    }
    assert!(
        scheme.verify(&[], &headers, BODY.as_bytes(), now).is_ok(),
        "the v1a signature verifies"
    );
    group.bench_function("standard-webhooks v1a (ed25519)", |b| {
        b.iter(|| {
            scheme
                .verify(&[], black_box(&headers), black_box(BODY.as_bytes()), now)
                .is_ok()
        });
    });
    group.finish();
}

fn extraction(c: &mut Criterion) {
    let config = config();
    let Some(provider) = config.provider("dregs") else {
        panic!("listener.toml has no provider dregs");
    };
    let headers = HeaderMap::new();
    let verified = hookwarden::scheme::Verified {
        scheme_id: None,
        timestamp: None,
    };
    c.bench_function("extract id and type (parse + 2 pointers)", |b| {
        b.iter(|| {
            let json = parse_body(black_box(BODY.as_bytes())).ok()?;
            let id = extract(&provider.event_id, "event id", &headers, &json, &verified).ok()?;
            let kind = extract(
                &provider.event_type,
                "event type",
                &headers,
                &json,
                &verified,
            )
            .ok()?;
            Some((id, kind))
        });
    });
}

fn dedupe(c: &mut Criterion) {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => panic!("no runtime: {err}"),
    };
    let cache = Dedupe::new(1_000_000, Duration::from_secs(86_400));
    let next = AtomicU64::new(0);
    c.bench_function("dedupe admit (new id)", |b| {
        b.to_async(&runtime).iter(|| {
            let id = format!("evt_{}", next.fetch_add(1, Ordering::Relaxed));
            let cache = cache.clone();
            async move {
                cache
                    .admit("dregs", &id, async { Ok::<(), ()>(()) })
                    .await
                    .is_ok()
            }
        });
    });
    c.bench_function("dedupe admit (known id)", |b| {
        b.to_async(&runtime).iter(|| {
            let cache = cache.clone();
            async move {
                cache
                    .admit("dregs", "evt_1", async { Ok::<(), ()>(()) })
                    .await
                    .is_ok()
            }
        });
    });
}

fn cel(c: &mut Criterion) {
    let event: serde_json::Value = serde_json::from_str(BODY).unwrap_or_default();
    let score = BTreeMap::from([("humanity".to_owned(), 22.0)]);
    let previous = BTreeMap::from([("humanity".to_owned(), 74.0)]);
    let env = BTreeMap::new();
    let lists = hookwarden::worker::lists::Lists::default();
    let enrich = BTreeMap::new();
    let input = Facts {
        event: &event,
        provider: "dregs",
        event_type: "identity.scored",
        event_id: "evt_1",
        subject: "usr_48213",
        score: &score,
        previous_score: &previous,
        previous_at: Some("2026-11-21T14:00:00Z"),
        env: &env,
        lists: &lists,
        enrich: &enrich,
    };
    // The crossing rule of deploy/rules.toml: below 30 now, at or above it before.
    let rule =
        "score.humanity < 30.0 && has(previous.score.humanity) && previous.score.humanity >= 30.0";
    let condition = match Condition::compile(rule) {
        Ok(condition) => condition,
        Err(err) => panic!("{err}"),
    };
    c.bench_function("cel crossing rule (convert + evaluate)", |b| {
        b.iter(|| condition.evaluate(black_box(&input)));
    });
    let prepared = PreparedInput::new(&input);
    c.bench_function("cel crossing rule (evaluate prepared)", |b| {
        b.iter(|| condition.evaluate_prepared(black_box(&prepared)));
    });
}

fn templates(c: &mut Criterion) {
    let mut templates = Templates::new();
    let body = r#"{"account": "{{ subject }}", "humanity": {{ score.humanity }}, "was": {{ previous.score.humanity }}, "rule": "{{ rule }}", "event": "{{ event_id }}"}"#;
    let id = match templates.add("body", body) {
        Ok(id) => id,
        Err(err) => panic!("{err}"),
    };
    let event: serde_json::Value = serde_json::from_str(BODY).unwrap_or_default();
    let base = serde_json::json!({
        "event": event, "provider": "dregs", "type": "identity.scored", "subject": "usr_48213",
        "score": {"humanity": 22.0}, "previous": {"score": {"humanity": 74.0}, "at": null},
        "rule": "quarantine", "event_id": "evt_0001", "env": {},
    });
    let context = template::context(Arc::new(base));
    c.bench_function("template http body (5 fields)", |b| {
        b.iter(|| templates.render(id, black_box(&context)));
    });
}

criterion_group!(benches, verification, extraction, dedupe, cel, templates);
criterion_main!(benches);
