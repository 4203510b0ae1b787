//! Workers with their state in PostgreSQL, where only PostgreSQL can be tested: the database
//! lost mid-run (through a proxy the test cuts), and two workers on one queue and one database.

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::{Names, Proxy, try_admin_get, wait_for};
use crate::pg::Schema;
use crate::sink::Sink;
use crate::worker_harness::{WorkerHarness, dregs};

const RULES: &str = r#"
[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0"
actions = ["quarantine"]

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine/{{ event.id }}"
retries = 2
timeout = "2s"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_lost_mid_run_holds_the_batch_unacked_and_resumes_by_itself() {
    let sink = Sink::start().await;
    let schema = Schema::new().await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let w = WorkerHarness::for_dregs(RULES)
        .state_url(&schema.url_via(proxy.addr), &schema.url())
        .start(&sink.url())
        .await;
    w.publish_dregs("before", "u1", "2026-11-21T10:00:00Z", 10)
        .await;
    assert_eq!(w.decision("dregs", "before").await.outcome, "acted");

    // The database goes away: the next event is held, not acked, not dead-lettered.
    proxy.down();
    w.publish_dregs("during", "u2", "2026-11-21T10:01:00Z", 10)
        .await;
    let why = wait_for(
        "/readyz to name the store",
        Duration::from_secs(30),
        || async {
            match try_admin_get(&w.admin, "/readyz").await? {
                (503, why) if why.contains("state store unavailable") => Ok(why),
                (status, why) => Err(format!("/readyz {status} {why:?}")),
            }
        },
    )
    .await;
    assert!(why.contains("state store"), "{why}");
    // Held for a few retries: nothing dead-lettered meanwhile, the event still in the queue.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(w.broker.get(&w.names.dead_letter_queue).await.is_none());
    assert_eq!(w.decisions(Some("dregs/during"), None, 1).await.len(), 0);

    // Back: the held batch is handled, acted on once, and the worker is ready again.
    proxy.up();
    assert_eq!(w.decision("dregs", "during").await.outcome, "acted");
    wait_for("/readyz 200", Duration::from_secs(30), || async {
        match try_admin_get(&w.admin, "/readyz").await? {
            (200, _) => Ok(()),
            (status, why) => Err(format!("/readyz {status} {why:?}")),
        }
    })
    .await;
    let during: Vec<String> = sink
        .received()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.ends_with("/during"))
        .collect();
    // Its action may have run before the store went away mid-batch; a repeat carries the
    // same Idempotency-Key. Here the database was gone before the event came, so it ran once.
    assert_eq!(during, ["/accounts/u2/quarantine/during"]);
    assert!(w.broker.get(&w.names.dead_letter_queue).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_database_decide_each_event_once_whoever_gets_its_copies() {
    let sink = Sink::start().await;
    let schema = Schema::new().await;
    let names = Names::new();
    // One delivery at a time each, so both take part.
    let (url, sink_url) = (schema.url(), sink.url());
    let harness = || {
        WorkerHarness::for_dregs(RULES)
            .state_url(&url, &url)
            .amqp("prefetch", "1")
    };
    let first = harness()
        .start_with_names(&sink_url, names.clone_names())
        .await;
    let second = harness().start_with_names(&sink_url, names).await;

    // Every event twice (a provider's retry through two listeners), 30 subjects.
    let ids: Vec<String> = (0..30).map(|i| format!("twice{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let body = dregs(id, &format!("s{i}"), "2026-11-21T10:00:00Z", 10);
        first.publish("dregs", "identity.scored", id, &body).await;
        second.publish("dregs", "identity.scored", id, &body).await;
    }
    for id in &ids {
        assert_eq!(first.decision("dregs", id).await.outcome, "acted");
    }
    // Both copies consumed: the queue is empty once the last duplicate is counted.
    wait_for("every copy consumed", Duration::from_secs(30), || async {
        let duplicates: f64 = [&first, &second]
            .iter()
            .map(|w| {
                crate::harness::metric(
                    &w.metrics(),
                    r#"hookwarden_worker_events_total{outcome="duplicate"}"#,
                )
                .unwrap_or(0.0)
            })
            .sum();
        if duplicates >= 30.0 {
            Ok(())
        } else {
            Err(format!("{duplicates} duplicates counted"))
        }
    })
    .await;
    let mut actions: HashMap<String, usize> = HashMap::new();
    for r in sink.received() {
        *actions.entry(r.path).or_default() += 1;
    }
    assert_eq!(actions.len(), 30, "{actions:?}");
    assert!(
        actions.values().all(|&n| n == 1),
        "an action ran twice: {actions:?}"
    );
    // Both took part: each handled copies, acted on or found decided by the other.
    let handled = [&first, &second].map(|w| {
        let text = w.metrics();
        ["acted", "duplicate"]
            .iter()
            .map(|o| {
                crate::harness::metric(
                    &text,
                    &format!(r#"hookwarden_worker_events_total{{outcome="{o}"}}"#),
                )
                .unwrap_or(0.0)
            })
            .sum::<f64>()
    });
    assert!(
        // (A batch tried again counts its events again: at least, not exactly, 60.)
        handled[0] > 0.0 && handled[1] > 0.0 && handled[0] + handled[1] >= 60.0,
        "copies handled per worker: {handled:?}"
    );
}

/// Events of one subject with no version, shared by two workers: measured, not prevented.
/// Each event's humanity is its number in publish order, and a rule fires whenever a subject's
/// previous event (as the workers decided them) had a higher one, so each firing is one event
/// decided after a later-published one. The figure is in `deploy/scaling.md`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versionless_events_of_one_subject_across_two_workers_are_decided_once_in_lock_order() {
    const UNVERSIONED: &str = r#"
[[subjects]]
provider = "dregs"
types = ["identity.*"]
subject = "/data/identity_id"
scores = { humanity = "/data/scores/humanity" }

[[rules]]
name = "inverted"
events = ["dregs:identity.scored"]
when = "has(previous.score.humanity) && previous.score.humanity > score.humanity"
actions = ["mark"]

[actions.mark]
kind = "http"
url = "{SINK}/inverted/{{ event.id }}"
"#;
    let sink = Sink::start().await;
    let schema = Schema::new().await;
    let names = Names::new();
    let (url, sink_url) = (schema.url(), sink.url());
    let harness = || {
        WorkerHarness::new(UNVERSIONED)
            .state_url(&url, &url)
            .amqp("prefetch", "1")
    };
    let first = harness()
        .start_with_names(&sink_url, names.clone_names())
        .await;
    let second = harness().start_with_names(&sink_url, names).await;
    let n = 200;
    for i in 0..n {
        let body = format!(
            r#"{{"id":"v{i}","type":"identity.scored","data":{{"identity_id":"one","scores":{{"humanity":{i}}}}}}}"#
        );
        first
            .publish("dregs", "identity.scored", &format!("v{i}"), &body)
            .await;
    }
    let ids: Vec<String> = (0..n).map(|i| format!("dregs/v{i}")).collect();
    wait_for("every event decided", Duration::from_secs(60), || async {
        match first.decided(&ids).await {
            d if d == n => Ok(()),
            d => Err(format!("{d} of {n} decided")),
        }
    })
    .await;
    // The detector itself: an event published last with the lowest humanity fires it.
    let body = r#"{"id":"vlast","type":"identity.scored","data":{"identity_id":"one","scores":{"humanity":-1}}}"#;
    first
        .publish("dregs", "identity.scored", "vlast", body)
        .await;
    first.decision("dregs", "vlast").await;
    let paths: Vec<String> = sink.received().into_iter().map(|r| r.path).collect();
    assert!(paths.contains(&"/inverted/vlast".to_owned()), "{paths:?}");
    let inverted = paths.len() - 1;
    eprintln!(
        "versionless, one subject, two workers with prefetch 1: {inverted} of {n} events decided \
         after a later-published one"
    );
    // Each event decided once (no record twice, none lost); order between workers is the
    // locks' order, which this measures rather than asserts.
    assert_eq!(
        first.decisions(None, Some("dregs/one"), 1000).await.len(),
        n + 1
    );
    drop(second);
}

/// A breaker counts across workers: two workers on one schema, 200 subjects scored 0 at once,
/// a limit of 30 — exactly 30 quarantines between them, one page, the rest tripped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_breaker_and_page_once() {
    const LIMITED: &str = r#"
[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0"
actions = ["quarantine"]
limit = { actions = 30, per = "10m" }
on_trip = ["page"]

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine"
retries = 0
timeout = "2s"

[actions.page]
kind = "http"
url = "{SINK}/page"
body = '{"count": {{ count }}}'
retries = 0
timeout = "2s"
"#;
    let sink = Sink::start().await;
    let schema = Schema::new().await;
    let names = Names::new();
    let (url, sink_url) = (schema.url(), sink.url());
    let harness = || {
        WorkerHarness::for_dregs(LIMITED)
            .state_url(&url, &url)
            .amqp("prefetch", "4")
    };
    let first = harness()
        .start_with_names(&sink_url, names.clone_names())
        .await;
    let second = harness().start_with_names(&sink_url, names).await;
    let keys: Vec<String> = (0..200).map(|i| format!("dregs/zero{i}")).collect();
    for i in 0..200 {
        let id = format!("zero{i}");
        let body = dregs(&id, &format!("s{i}"), "2026-11-21T10:00:00Z", 0);
        first.publish("dregs", "identity.scored", &id, &body).await;
    }
    wait_for("every event decided", Duration::from_secs(60), || async {
        match first.decided(&keys).await {
            200 => Ok(()),
            n => Err(format!("{n} of 200")),
        }
    })
    .await;
    let received = sink.received();
    let quarantines = received
        .iter()
        .filter(|r| r.path.ends_with("/quarantine"))
        .count();
    let pages = received.iter().filter(|r| r.path == "/page").count();
    assert_eq!((quarantines, pages), (30, 1), "across both workers");
    let tripped = first
        .decisions(None, None, 400)
        .await
        .iter()
        .filter(|d| d.outcome == "tripped")
        .count();
    assert_eq!(tripped, 170);
    // Both took part.
    for w in [&first, &second] {
        let text = w.metrics();
        let handled: f64 = ["acted", "tripped"]
            .iter()
            .map(|o| {
                crate::harness::metric(
                    &text,
                    &format!(r#"hookwarden_worker_events_total{{outcome="{o}"}}"#),
                )
                .unwrap_or(0.0)
            })
            .sum();
        assert!(handled > 0.0, "a worker decided nothing:\n{text}");
    }
}
