//! Action pacing against a real target: `rate` spreads an action's sends, `concurrency` caps
//! how many are open at once; waiting actions are neither dropped nor failed, and nothing is
//! sent twice. Prerequisite: RabbitMQ.

use std::collections::HashSet;
use std::time::Duration;

use crate::harness::metric;
use crate::sink::Sink;
use crate::worker_harness::WorkerHarness;

/// Every low score is quarantined, the quarantine paced by `PACE`; a `log` action on the same
/// rule is not, nor the alert another rule sends for the same events (below 20), nor what a
/// high score sends.
const RULES: &str = r#"
[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0"
actions = ["quarantine", "note"]

[[rules]]
name = "alert"
events = ["dregs:identity.scored"]
when = "score.humanity < 20.0"
actions = ["alert"]

[[rules]]
name = "celebrate"
events = ["dregs:identity.scored"]
when = "score.humanity >= 90.0"
actions = ["celebrate"]

[actions.alert]
kind = "http"
url = "{SINK}/alert/{{ subject }}"
retries = 0

[actions.celebrate]
kind = "http"
url = "{SINK}/celebrate/{{ subject }}"
retries = 0

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
    // Every event in hand at once: a paced firing holds its delivery until it has gone.
    // In PostgreSQL each batch past its subjects' turn holds a connection: pool_size − 2.
    let w = WorkerHarness::for_dregs(&rules("rate = { max = 50, per = \"1s\" }"))
        .amqp("prefetch", "1000")
        .pool_size(12)
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
    let all = sink
        .wait_until("every quarantine and alert", Duration::from_secs(40), |r| {
            r.len() >= 2 * events
        })
        .await;
    let (got, alerts): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|r| r.path.starts_with("/accounts/"));
    // The other rule's action on the same events is not held by the quarantine's pace: all
    // 500 alerts are in while the quarantines have hardly begun.
    assert_eq!(alerts.len(), events);
    let alerted = alerts.last().unwrap().at;
    let quarantined_by_then = got.iter().filter(|r| r.at <= alerted).count();
    assert!(
        quarantined_by_then < events / 4,
        "{quarantined_by_then} of {events} quarantines had gone when the last alert did"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_subjects_go_on_while_a_paced_storm_waits_and_a_subject_keeps_its_order() {
    let sink = Sink::start().await;
    // In PostgreSQL each batch in hand holds a connection: pool_size − 2 of them at once.
    let w = WorkerHarness::for_dregs(&rules("rate = { max = 10, per = \"1s\" }"))
        .pool_size(10)
        .start(&sink.url())
        .await;
    // Thirty quarantines at ten a second: three seconds of waiting.
    for i in 0..30 {
        w.publish_dregs(
            &format!("slow-{i}"),
            &format!("q{i}"),
            "2026-12-01T10:00:00Z",
            10,
        )
        .await;
    }
    sink.wait_until(
        "the storm's first quarantine",
        Duration::from_secs(10),
        |r| r.iter().any(|r| r.path.ends_with("/quarantine")),
    )
    .await;
    // Then a high score for a subject of its own, and one for the storm's last subject.
    w.publish_dregs("happy", "glad", "2026-12-01T10:00:01Z", 95)
        .await;
    w.publish_dregs("q29-later", "q29", "2026-12-01T10:00:01Z", 95)
        .await;
    let got = sink
        .wait_until("both celebrations", Duration::from_secs(20), |r| {
            r.iter()
                .filter(|r| r.path.starts_with("/celebrate/"))
                .count()
                == 2
        })
        .await;
    let at = |path: &str| got.iter().find(|r| r.path == path).map(|r| r.at);
    let glad = at("/celebrate/glad").unwrap();
    let quarantined_before_glad = got
        .iter()
        .filter(|r| r.path.ends_with("/quarantine") && r.at <= glad)
        .count();
    assert!(
        quarantined_before_glad < 25,
        "another subject's event waited for the storm: {quarantined_before_glad} of 30 \
         quarantines had gone before it"
    );
    // q29's later event acts only after its earlier one's quarantine has gone.
    let q29 = at("/accounts/q29/quarantine").expect("q29 quarantined before its next event acted");
    assert!(at("/celebrate/q29").unwrap() > q29);
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
            25,
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
