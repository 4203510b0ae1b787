//! The worker against the real broker and real local HTTP targets: thresholds, drops,
//! crossings, cooldown, shadow mode, stale versions, duplicates through the queue, failing
//! targets, dead letters with reasons, unreadable messages.

use std::time::Duration;

use crate::harness::{
    Proxy, admin_get, header, metric, spawn_logged, try_admin_get, wait_for, wait_for_file,
};
use crate::sink::Sink;
use crate::worker_harness::{WorkerHarness, dregs};

const RULES: &str = r#"
[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0 && (!has(previous.score.humanity) || previous.score.humanity >= 30.0)"
actions = ["quarantine"]
cooldown = "1h"

[[rules]]
name = "drop"
events = ["dregs:*"]
when = "has(previous.score.humanity) && previous.score.humanity - score.humanity >= 25"
actions = ["review"]

[[rules]]
name = "watch"
events = ["dregs:*"]
when = "score.humanity < 50"
actions = ["quarantine"]
mode = "shadow"

[[rules]]
name = "broken"
events = ["dregs:*"]
when = "event.data.missing.deeper > 1"
actions = ["note"]

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine"
body = '{"humanity": {{ score.humanity }}, "rule": {{ rule | tojson }}}'
retries = 2
timeout = "2s"

[actions.review]
kind = "amqp"

[actions.note]
kind = "log"
"#;

fn paths(sink: &Sink) -> Vec<String> {
    sink.received().into_iter().map(|r| r.path).collect()
}

#[tokio::test]
async fn thresholds_drops_crossings_cooldown_shadow_and_stale_events() {
    let sink = Sink::start().await;
    let w = WorkerHarness::for_dregs(RULES).start(&sink.url()).await;
    // u1, first sighting below 30: quarantined once (the shadow rule only records).
    w.publish_dregs("e1", "u1", "2026-11-21T10:00:00Z", 22)
        .await;
    let d = w.decision("dregs", "e1").await;
    assert_eq!(d.outcome, "acted", "{}", d.record);
    assert_eq!(paths(&sink), ["/accounts/u1/quarantine"]);
    let rules = d.record["rules"].as_array().unwrap();
    let watch = rules.iter().find(|r| r["rule"] == "watch").unwrap();
    assert_eq!(watch["would_act"], true);
    assert!(
        watch.get("actions").is_none(),
        "shadow rules never act: {watch}"
    );
    // A condition that cannot be evaluated is recorded; the event went on.
    let broken = rules.iter().find(|r| r["rule"] == "broken").unwrap();
    assert!(broken["error"].as_str().is_some(), "{broken}");

    // u1 again, still below 30: no crossing, no action.
    w.publish_dregs("e2", "u1", "2026-11-21T10:01:00Z", 20)
        .await;
    assert_eq!(w.decision("dregs", "e2").await.outcome, "matched");
    // u1, an older version arriving late: stale, skipped.
    w.publish_dregs("e0", "u1", "2026-11-21T09:00:00Z", 90)
        .await;
    assert_eq!(w.decision("dregs", "e0").await.outcome, "stale");

    // u2: 80, then a sharp drop to 50 (review), then a crossing to 25 (quarantine).
    w.publish_dregs("f1", "u2", "2026-11-21T10:00:00Z", 80)
        .await;
    assert_eq!(w.decision("dregs", "f1").await.outcome, "no_match");
    // The listener's span for f2, whose trace the review message carries on.
    let (trace, listener_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    w.publish_dregs_traced(
        "f2",
        "u2",
        "2026-11-21T10:01:00Z",
        50,
        &format!("00-{trace}-{listener_span}-01"),
    )
    .await;
    let d = w.decision("dregs", "f2").await;
    assert_eq!(d.outcome, "acted", "{}", d.record);
    let review = w
        .broker
        .get(&w.names.review_queue)
        .await
        .unwrap_or_else(|| panic!("review message; {}", d.record));
    let sent = header(&review.delivery.properties, "traceparent").unwrap();
    assert!(sent.starts_with(&format!("00-{trace}-")), "{sent}");
    assert!(
        !sent.contains(listener_span),
        "the action's own span: {sent}"
    );
    let body: serde_json::Value = serde_json::from_slice(&review.delivery.data).unwrap();
    assert_eq!(body["decision"]["rule"], "drop");
    assert_eq!(body["decision"]["subject"], "u2");
    assert_eq!(body["event"]["id"], "f2");
    assert_eq!(
        review
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().len()),
        Some(32)
    );
    w.publish_dregs("f3", "u2", "2026-11-21T10:02:00Z", 25)
        .await;
    assert_eq!(w.decision("dregs", "f3").await.outcome, "acted");
    // Back up, then down through 30 again within the hour: the cooldown holds it.
    w.publish_dregs("f4", "u2", "2026-11-21T10:03:00Z", 90)
        .await;
    w.publish_dregs("f5", "u2", "2026-11-21T10:04:00Z", 20)
        .await;
    let d = w.decision("dregs", "f5").await;
    let q = d.record["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "quarantine")
        .unwrap()
        .clone();
    assert_eq!(q["cooldown"], true, "{d:?}");
    assert_eq!(
        paths(&sink),
        ["/accounts/u1/quarantine", "/accounts/u2/quarantine"]
    );
    let metrics = w.metrics();
    assert!(
        metrics.contains(r#"hookwarden_worker_events_total{outcome="stale"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"hookwarden_worker_rule_matches_total{rule="watch",mode="shadow"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_same_event_twice_through_the_queue_acts_once() {
    let sink = Sink::start().await;
    let w = WorkerHarness::for_dregs(RULES).start(&sink.url()).await;
    let body = dregs("dup", "u9", "2026-11-21T10:00:00Z", 10);
    w.publish("dregs", "identity.scored", "dup", &body).await;
    assert_eq!(w.decision("dregs", "dup").await.outcome, "acted");
    w.publish("dregs", "identity.scored", "dup", &body).await;
    // A later event proves the duplicate was consumed before it.
    w.publish_dregs("next", "u9", "2026-11-21T10:01:00Z", 95)
        .await;
    w.decision("dregs", "next").await;
    assert_eq!(paths(&sink), ["/accounts/u9/quarantine"]);
    assert!(
        w.metrics()
            .contains(r#"hookwarden_worker_events_total{outcome="duplicate"} 1"#)
    );
}

#[tokio::test]
async fn a_failing_target_is_retried_and_one_that_never_recovers_dead_letters() {
    let sink = Sink::start().await;
    let w = WorkerHarness::for_dregs(RULES).start(&sink.url()).await;
    sink.fail_first(2);
    w.publish_dregs("r1", "u1", "2026-11-21T10:00:00Z", 10)
        .await;
    let d = w.decision("dregs", "r1").await;
    assert_eq!(d.outcome, "acted", "{}", d.record);
    let q = d.record["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "quarantine")
        .unwrap()
        .clone();
    assert_eq!(q["actions"][0]["attempts"], 3, "{q}");
    let key = sink.received()[0]
        .idempotency_key
        .clone()
        .expect("Idempotency-Key sent");

    sink.fail_always(true);
    w.publish_dregs("r2", "u2", "2026-11-21T10:00:00Z", 10)
        .await;
    let d = w.decision("dregs", "r2").await;
    assert_eq!(d.outcome, "dead_lettered");
    let dead = crate::harness::eventually_get(&w.broker, &w.names.dead_letter_queue).await;
    let p = &dead.delivery.properties;
    assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("r2"));
    assert_eq!(
        header(p, "x-hookwarden-rule").as_deref(),
        Some("quarantine")
    );
    assert_eq!(
        header(p, "x-hookwarden-action").as_deref(),
        Some("quarantine")
    );
    assert!(
        header(p, "x-hookwarden-error").unwrap().contains("500"),
        "{:?}",
        header(p, "x-hookwarden-error")
    );
    assert_eq!(
        header(p, "x-hookwarden-routing-key").as_deref(),
        Some("dregs.identity.scored")
    );
    assert_eq!(
        dead.delivery.data,
        dregs("r2", "u2", "2026-11-21T10:00:00Z", 10).as_bytes()
    );
    assert_ne!(key, "");
}

/// Two rules on one event act side by side: one whose target is down fails and dead-letters
/// the event, the other's action goes through, and its cooldown starts all the same.
#[tokio::test]
async fn a_failing_rule_neither_stops_nor_uncools_the_rule_beside_it() {
    let sink = Sink::start().await;
    let down = format!("http://{}", crate::harness::free_addr());
    let rules = r#"
[[rules]]
name = "doomed"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0"
actions = ["down"]

[[rules]]
name = "notify"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0"
actions = ["notify"]
cooldown = "1h"

[actions.down]
kind = "http"
url = "DOWN/x"
retries = 0

[actions.notify]
kind = "http"
url = "{SINK}/notify/{{ subject }}"
retries = 0
"#
    .replace("DOWN", &down);
    let w = WorkerHarness::for_dregs(&rules).start(&sink.url()).await;
    w.publish_dregs("f1", "u1", "2026-12-01T10:00:00Z", 10)
        .await;
    let d = w.decision("dregs", "f1").await;
    assert_eq!(d.outcome, "dead_lettered", "{}", d.record);
    let dead = crate::harness::eventually_get(&w.broker, &w.names.dead_letter_queue).await;
    assert_eq!(
        header(&dead.delivery.properties, "x-hookwarden-rule").as_deref(),
        Some("doomed")
    );
    sink.wait_until("the other rule's action", Duration::from_secs(10), |r| {
        r.iter().any(|r| r.path == "/notify/u1")
    })
    .await;
    // The next event of the subject: "notify" fired an hour ago at most, so it cools down.
    w.publish_dregs("f2", "u1", "2026-12-01T10:01:00Z", 10)
        .await;
    let d = w.decision("dregs", "f2").await;
    let notify = d.record["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "notify")
        .cloned()
        .unwrap();
    assert_eq!(notify["cooldown"], true, "{}", d.record);
    assert_eq!(paths(&sink), ["/notify/u1"]);
}

#[tokio::test]
async fn unreadable_messages_dead_letter_at_once_and_unknown_subjects_are_recorded() {
    let sink = Sink::start().await;
    let w = WorkerHarness::for_dregs(RULES).start(&sink.url()).await;
    let props = lapin::BasicProperties::default().with_message_id("junk".into());
    w.publish_raw("dregs.identity.scored", props, b"not json {")
        .await;
    let dead = crate::harness::eventually_get(&w.broker, &w.names.dead_letter_queue).await;
    assert!(
        header(&dead.delivery.properties, "x-hookwarden-error")
            .unwrap()
            .starts_with("body is not JSON")
    );
    // JSON, but without the subject its spec requires.
    w.publish(
        "dregs",
        "identity.scored",
        "nosub",
        r#"{"id":"nosub","data":{}}"#,
    )
    .await;
    let dead = crate::harness::eventually_get(&w.broker, &w.names.dead_letter_queue).await;
    assert_eq!(
        header(&dead.delivery.properties, "x-hookwarden-error").as_deref(),
        Some("no subject at /data/identity_id")
    );
    // A provider no [[subjects]] entry reads: recorded and acked, not an error.
    w.publish("rewards", "tier.changed", "t1", r#"{"id":"t1"}"#)
        .await;
    assert_eq!(w.decision("rewards", "t1").await.outcome, "no_subject");
    // No wait needed: the worker commits a batch's records only after the broker confirmed
    // its dead letters, so were t1 (or anything before it) dead-lettered, it would be here.
    assert!(w.broker.get(&w.names.dead_letter_queue).await.is_none());
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn exec_actions_run_argv_without_a_shell() {
    let sink = Sink::start().await;
    let dir = crate::harness::tempdir::Dir::new();
    let rules = format!(
        r#"
[[subjects]]
provider = "dregs"
types = ["*"]
subject = "/data/identity_id"
scores = {{ humanity = "/data/scores/humanity" }}

[[rules]]
name = "touch"
events = ["dregs:*"]
when = "score.humanity < 30.0"
actions = ["touch"]

[actions.touch]
kind = "exec"
command = ["/usr/bin/touch", "{}/{{{{ subject }}}}"]
"#,
        dir.path.display()
    );
    let w = WorkerHarness::new(&rules).start(&sink.url()).await;
    w.publish_dregs("x1", "a; rm -rf x", "2026-11-21T10:00:00Z", 10)
        .await;
    assert_eq!(w.decision("dregs", "x1").await.outcome, "acted");
    assert!(
        dir.path.join("a; rm -rf x").exists(),
        "the argument arrived as one literal argv entry"
    );
}

#[tokio::test]
async fn exec_actions_get_the_events_trace_in_their_environment() {
    let sink = Sink::start().await;
    let dir = crate::harness::tempdir::Dir::new();
    let rules = format!(
        r#"
[[subjects]]
provider = "dregs"
types = ["*"]
subject = "/data/identity_id"
scores = {{ humanity = "/data/scores/humanity" }}

[[rules]]
name = "trace"
events = ["dregs:*"]
when = "score.humanity < 30.0"
actions = ["trace"]

[actions.trace]
kind = "exec"
command = ["/bin/sh", "-c", "printf %s \"$TRACEPARENT\" > \"$0\"", "{}/{{{{ subject }}}}"]
"#,
        dir.path.display()
    );
    let w = WorkerHarness::new(&rules).start(&sink.url()).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    w.publish_dregs_traced(
        "t1",
        "traced",
        "2026-11-21T10:00:00Z",
        10,
        &format!("00-{trace}-00f067aa0ba902b7-01"),
    )
    .await;
    assert_eq!(w.decision("dregs", "t1").await.outcome, "acted");
    let seen = std::fs::read_to_string(dir.path.join("traced")).unwrap();
    assert!(seen.starts_with(&format!("00-{trace}-")), "{seen:?}");
    assert_eq!(seen.len(), 55, "{seen:?}");
}

/// The broker link goes silent without a word (frozen proxy: sockets open, nothing
/// forwarded), as when the broker was found gone while the worker's metrics still said
/// `hookwarden_worker_consuming 1`. lapin alone, on the broker's 60 s heartbeat, noticed
/// after two minutes; the worker must notice by itself, stop saying it consumes, reconnect,
/// and act on what arrives meanwhile.
#[tokio::test]
async fn a_worker_whose_broker_link_goes_silent_says_so_and_comes_back() {
    let sink = Sink::start().await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let w = WorkerHarness::for_dregs(RULES)
        .url(&proxy.url())
        .start(&sink.url())
        .await;
    w.publish_dregs("before", "s1", "2026-11-21T10:00:00Z", 10)
        .await;
    assert_eq!(w.decision("dregs", "before").await.outcome, "acted");
    assert_eq!(admin_get(&w.admin, "/readyz").await.0, 200);

    proxy.freeze();
    // Held off until the daemon has said so: a quick reconnect would make that a blink.
    proxy.refuse_new();
    wait_for(
        "the worker to stop saying it consumes",
        Duration::from_secs(30),
        || async {
            let (ready, why) = try_admin_get(&w.admin, "/readyz").await?;
            let metrics = try_admin_get(&w.admin, "/metrics").await?.1;
            let consuming = metric(&metrics, "hookwarden_worker_consuming");
            // Not ready, and saying why.
            if ready == 503
                && why.starts_with("not ready: not consuming: broker connection lost")
                && consuming == Some(0.0)
            {
                Ok(())
            } else {
                Err(format!(
                    "/readyz {ready} {why:?}, hookwarden_worker_consuming {consuming:?}"
                ))
            }
        },
    )
    .await;
    // Published while the old, silent connection may still hold a consumer at the broker:
    // it reaches the worker once the broker drops that one (its heartbeat) or at once.
    w.publish_dregs("after", "s2", "2026-11-21T10:00:00Z", 10)
        .await;
    proxy.up();
    wait_for(
        "the worker ready again",
        Duration::from_secs(30),
        || async {
            match try_admin_get(&w.admin, "/readyz").await? {
                (200, _) => Ok(()),
                (status, why) => Err(format!("/readyz {status} {why:?}")),
            }
        },
    )
    .await;
    sink.wait_until(
        "the event published during the silence to act",
        Duration::from_secs(60),
        |got| got.iter().any(|r| r.path == "/accounts/s2/quarantine"),
    )
    .await;
}

/// A worker process's `event dead-lettered` log lines (and its other per-event warnings)
/// name the event: an operator reading the log must be able to find it, replay it, or
/// ask the provider about it.
#[tokio::test]
async fn per_event_warnings_in_the_log_name_the_event_its_provider_and_subject() {
    let sink = Sink::start().await;
    sink.fail_always(true);
    let rules = RULES.replace("retries = 2", "retries = 0");
    let mut w = WorkerHarness::for_dregs(&rules).start(&sink.url()).await;
    // Only the declarations and the publisher are wanted; the process does the work.
    w.stop().await;
    let dir = crate::harness::tempdir::Dir::new();
    let config = dir.path.join("rules.toml");
    std::fs::write(&config, &w.text).unwrap();
    let log_path = dir.path.join("worker.log");
    let mut child = spawn_logged(env!("CARGO_BIN_EXE_hookwarden-worker"), &config, &log_path);
    let _kill = crate::harness::KillOnDrop(child.id());

    // Its action fails (the target answers 500): dead-lettered by the rule's action. Its
    // "broken" rule's condition also fails to evaluate: a per-event warning of its own.
    w.publish_dregs("dl-1", "u-dl", "2026-11-21T10:00:00Z", 10)
        .await;
    // Unreadable: dead-lettered before any subject is known.
    let props = lapin::BasicProperties::default()
        .with_message_id("dl-2".into())
        .with_headers({
            let mut h = lapin::types::FieldTable::default();
            h.insert(
                "x-provider".into(),
                lapin::types::AMQPValue::LongString("dregs".into()),
            );
            h
        });
    w.publish_raw("dregs.identity.scored", props, b"not json {")
        .await;

    let lines = |text: &str, what: &str| -> Vec<serde_json::Value> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == what)
            .collect()
    };
    wait_for_file(
        &log_path,
        "two dead-letter lines",
        Duration::from_secs(30),
        |text| lines(text, "event dead-lettered").len() == 2,
    )
    .await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    let dead = lines(&log, "event dead-lettered");
    let by_id = |id: &str| {
        dead.iter()
            .find(|v| v["event_id"] == id)
            .unwrap_or_else(|| panic!("no dead-letter line names {id}: {dead:?}"))
    };
    let first = by_id("dl-1");
    assert_eq!(first["provider"], "dregs", "{first}");
    assert_eq!(first["subject"], "u-dl", "{first}");
    assert_eq!(first["rule"], "quarantine", "{first}");
    assert_eq!(first["action"], "quarantine", "{first}");
    let second = by_id("dl-2");
    assert_eq!(second["provider"], "dregs", "{second}");
    assert!(
        second["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("body is not JSON")),
        "{second}"
    );
    let condition = lines(&log, "condition failed to evaluate");
    let broken = condition
        .iter()
        .find(|v| v["event_id"] == "dl-1")
        .unwrap_or_else(|| panic!("no condition warning for dl-1: {condition:?}"));
    assert_eq!(broken["provider"], "dregs", "{broken}");
    assert_eq!(broken["subject"], "u-dl", "{broken}");
    let _ = child.kill();
    let _ = child.wait();
}
