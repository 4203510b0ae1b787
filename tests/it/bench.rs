//! `hookwarden bench` as a user runs it against a listener and a worker on the real broker:
//! open-loop load at a fixed rate, every event answered 200 and, with `--end-to-end`, every
//! event turned into exactly one action at the bench's own sink, with its latency reported.

use std::process::Output;

use crate::harness::{Harness, explain, free_addr, run_cli, tempdir};
use crate::worker_harness::WorkerHarness;

/// One subject per event, so no event is stale behind another and the rule fires for each.
const BODY: &str = r#"{"id":"{id}","type":"identity.scored","data":{"identity_id":"usr_{id}","scored_at":"2026-11-21T14:03:27Z","scores":{"humanity":12}}}"#;

const RULES: &str = r#"
[[rules]]
name = "low"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0"
actions = ["notify"]

[actions.notify]
kind = "http"
url = "{SINK}/e2e/{{ event.id }}"
retries = 0
timeout = "2s"
"#;

/// Runs `hookwarden bench ARGS`.
async fn bench(args: &[&str]) -> Output {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    run_cli(&all).await
}

#[tokio::test]
async fn end_to_end_at_a_fixed_rate_turns_every_event_into_one_action() {
    let listener = Harness::new().start().await;
    let sink = free_addr();
    let worker = WorkerHarness::for_dregs(RULES)
        .start_with_names(&format!("http://{sink}"), listener.names.clone_names())
        .await;
    let dir = tempdir::Dir::new();
    let config = dir.path.join("listener.toml");
    std::fs::write(&config, listener.config_text_for_signing()).unwrap();
    let body = dir.path.join("body.json");
    std::fs::write(&body, BODY).unwrap();

    let out = bench(&[
        "--config",
        config.to_str().unwrap(),
        "--provider",
        "dregs",
        "--concurrency",
        "4",
        "--rate",
        "100",
        "--duration",
        "2s",
        "--body",
        body.to_str().unwrap(),
        "--end-to-end",
        &sink.to_string(),
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{}", explain(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", explain(&out)));

    // Open loop: the schedule, not the answers, sets the number sent (100/s for 2 s).
    let requests = report["requests"].as_u64().unwrap();
    assert!((180..=201).contains(&requests), "{report:#}");
    assert_eq!(
        report["statuses"]["200"].as_u64(),
        Some(requests),
        "{report:#}"
    );
    assert_eq!(report["errors"].as_u64(), Some(0), "{report:#}");
    assert_eq!(report["target_rate"].as_f64(), Some(100.0));

    let e2e = &report["end_to_end"];
    assert_eq!(e2e["accepted"].as_u64(), Some(requests), "{report:#}");
    assert_eq!(e2e["acted"].as_u64(), Some(requests), "{report:#}");
    assert_eq!(e2e["missing"].as_u64(), Some(0), "{report:#}");
    assert_eq!(e2e["repeated"].as_u64(), Some(0), "{report:#}");
    let p50 = e2e["latency_ms"]["p50"].as_f64().unwrap();
    let max = e2e["latency_ms"]["max"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= max, "{report:#}");
    drop(worker);
}

#[tokio::test]
async fn a_rate_that_is_not_positive_is_refused_with_a_reason() {
    let out = bench(&[
        "--url",
        "http://127.0.0.1:9/hooks/x",
        "--scheme",
        "hmac-sha256",
        "--secret",
        "s",
        "--header",
        "X-Sig",
        "--rate",
        "0",
        "--duration",
        "1s",
    ])
    .await;
    assert_eq!(out.status.code(), Some(64), "{}", explain(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--rate must be a positive number"),
        "{stderr}"
    );
}
