//! Action pacing against a real target: `rate` spreads an action's sends, `concurrency` caps
//! how many are open at once; waiting actions are neither dropped nor failed, and nothing is
//! sent twice. Prerequisite: RabbitMQ.

use std::collections::HashSet;
use std::time::Duration;

use crate::harness::metric;
use crate::sink::Sink;
use crate::worker_harness::WorkerHarness;

/// Every low score is quarantined, the quarantine paced by `PACE`; a `log` action on the same
/// rule is not.
const RULES: &str = r#"
[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0"
actions = ["quarantine", "note"]

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine"
retries = 0
timeout = "5s"
PACE

[actions.note]
kind = "log"
message = "quarantined {{ subject }}"
"#;

fn rules(pace: &str) -> String {
    RULES.replace("PACE", pace)
}

// Several threads: the worker, the publisher and the sink must not share one, or a stall of
// one would bunch the sink's arrival times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_spreads_a_storm_and_every_action_still_arrives_once() {
    let sink = Sink::start().await;
    let w = WorkerHarness::for_dregs(&rules("rate = { max = 50, per = \"1s\" }"))
        .start(&sink.url())
        .await;
    let events = 500;
    for i in 0..events {
        w.publish_dregs(
            &format!("storm-{i}"),
            &format!("s{i}"),
            "2026-12-01T10:00:00Z",
            10,
        )
        .await;
    }
    let got = sink
        .wait_until("every quarantine", Duration::from_secs(40), |r| {
            r.len() >= events
        })
        .await;
    let subjects: HashSet<&str> = got.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(subjects.len(), events, "none twice, none missing");
    assert_eq!(got.len(), events);
    // No second of arrivals holds more than the rate allows (plus 10 %): one every 20 ms.
    let first = got[0].at;
    let mut per_window = std::collections::BTreeMap::<u64, usize>::new();
    for r in &got {
        *per_window
            .entry(r.at.duration_since(first).as_millis() as u64 / 1000)
            .or_default() += 1;
    }
    let busiest = per_window.values().copied().max().unwrap_or(0);
    assert!(busiest <= 55, "at most ~50 a second: {per_window:?}");
    let spread = got.last().unwrap().at.duration_since(first);
    assert!(
        spread >= Duration::from_secs(8),
        "500 at 50 a second take about 10 s: {spread:?}"
    );
    // The waits are counted, and were not failures.
    let metrics = w.metrics();
    assert!(
        metric(&metrics, "hookwarden_worker_action_wait_seconds_count").unwrap_or(0.0)
            >= events as f64,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"hookwarden_worker_actions_total{action="quarantine",outcome="failed"}"#
        ),
        None
    );
    assert_eq!(
        metric(
            &metrics,
            r#"hookwarden_worker_action_waiting{action="quarantine"}"#
        ),
        Some(0.0)
    );
    let last = w.decision("dregs", &format!("storm-{}", events - 1)).await;
    assert_eq!(last.outcome, "acted", "{}", last.record);
}

#[tokio::test]
async fn concurrency_caps_the_requests_open_at_a_slow_target() {
    let sink = Sink::start().await;
    sink.delay(Duration::from_millis(200));
    let w = WorkerHarness::for_dregs(&rules("concurrency = 2"))
        .start(&sink.url())
        .await;
    let events = 12;
    for i in 0..events {
        w.publish_dregs(
            &format!("slow-{i}"),
            &format!("t{i}"),
            "2026-12-01T10:00:00Z",
            10,
        )
        .await;
    }
    sink.wait_until("every quarantine", Duration::from_secs(30), |r| {
        r.len() >= events
    })
    .await;
    // Twelve subjects at once would open twelve; the cap holds two, and uses both.
    assert_eq!(sink.max_open(), 2);
}
