//! A silence watch against the real broker and an HTTP target: with `silent_for = "2s"` it
//! fires once after two seconds without a Dregs event (counted from the start of a worker
//! with no history; an alert the target refused is tried again), not again while the
//! silence lasts, its `on_recover` once when an event
//! arrives, and a restarted worker goes on from the store's last-seen time. (Named
//! `worker_…` so `.ci/run` runs it again with the state in PostgreSQL.)

use std::time::{Duration, Instant};

use crate::sink::Sink;
use crate::worker_harness::WorkerHarness;

const RULES: &str = r#"
[[watch]]
name = "dregs-quiet"
provider = "dregs"
types = ["identity.*"]
silent_for = "2s"
actions = ["silent"]
on_recover = ["recovered"]

[actions.silent]
kind = "http"
url = "{SINK}/silent"
body = '{"watch": {{ watch.name | tojson }}, "state": {{ watch.state | tojson }}, "silent_for": {{ watch.silent_for | tojson }}, "last_seen": {{ watch.last_seen | tojson }}}'
retries = 0
timeout = "2s"

[actions.recovered]
kind = "http"
url = "{SINK}/recovered"
body = '{"state": {{ watch.state | tojson }}}'
retries = 0
timeout = "2s"
"#;

fn hits(sink: &Sink, path: &str) -> usize {
    sink.received().iter().filter(|r| r.path == path).count()
}

#[tokio::test]
async fn a_watch_fires_once_per_silence_and_recovers_once_when_events_resume() {
    let sink = Sink::start().await;
    // The first alert is refused (503, and the action has no retries of its own): the watch
    // tries again a second later, and the target then hears it once.
    sink.fail_first(1);
    let started = Instant::now();
    let mut w = WorkerHarness::for_dregs(RULES).start(&sink.url()).await;

    sink.wait_until("the silence alert", Duration::from_secs(10), |got| {
        got.iter().any(|r| r.path == "/silent")
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "fired after {:?}, before its 2 s of silence",
        started.elapsed()
    );
    let alert: serde_json::Value = serde_json::from_str(
        &sink
            .received()
            .into_iter()
            .find(|r| r.path == "/silent")
            .map(|r| r.body)
            .unwrap_or_default(),
    )
    .unwrap();
    assert_eq!(alert["watch"], "dregs-quiet");
    assert_eq!(alert["state"], "silent");
    assert_eq!(alert["silent_for"], "2s");
    // Still silent three seconds on: no second alert.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(hits(&sink, "/silent"), 1);
    assert_eq!(hits(&sink, "/recovered"), 0);

    // An event: recovered, once.
    w.publish_dregs("wake", "u1", "2026-11-21T10:00:00Z", 90)
        .await;
    sink.wait_until("the recovery", Duration::from_secs(10), |got| {
        got.iter().any(|r| r.path == "/recovered")
    })
    .await;
    let metrics = w.metrics();
    assert!(
        metrics.contains("hookwarden_last_event_age_seconds{provider=\"dregs\"}"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hits(&sink, "/recovered"), 1);
    assert_eq!(hits(&sink, "/silent"), 1);

    // A restart goes on from the last-seen time in the store: the next silence is alerted
    // two seconds after the event, once.
    w.restart().await;
    sink.wait_until("the second silence alert", Duration::from_secs(10), |got| {
        got.iter().filter(|r| r.path == "/silent").count() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(hits(&sink, "/silent"), 2);
    assert_eq!(hits(&sink, "/recovered"), 1);
}
