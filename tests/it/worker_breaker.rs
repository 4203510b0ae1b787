//! A rule's breaker against a real broker and HTTP target: an upstream release sends
//! humanity = 0 for 1,000 accounts within seconds; the quarantine rule with
//! `limit = { actions = 50, per = "10m" }` quarantines 50, pages once, records the other 950 as
//! `tripped`, stays tripped across a restart, and acts again after `hookwarden rules reset`.
//! (Named `worker_…` so `.ci/run` runs it again with the state in PostgreSQL.)

use std::time::Duration;

use crate::harness::{explain, run_cli, tempdir, wait_for};
use crate::sink::Sink;
use crate::worker_harness::{TestWorker, WorkerHarness};

const RULES: &str = r#"
[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0"
actions = ["quarantine"]
limit = { actions = 50, per = "10m" }
on_trip = ["page"]

# Another rule on the same events (for the last account only): a trip never blocks it.
[[rules]]
name = "note"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0 && subject == 'u999'"
actions = ["note"]

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine"
retries = 0
timeout = "2s"

[actions.page]
kind = "http"
url = "{SINK}/page"
body = '{"rule": {{ rule | tojson }}, "count": {{ count }}, "per": {{ per | tojson }}, "subjects": {{ subjects | tojson }}}'
retries = 0
timeout = "2s"

[actions.note]
kind = "log"
message = "{{ subject }} fell to {{ score.humanity }}"
"#;

fn quarantines(sink: &Sink) -> usize {
    sink.received()
        .iter()
        .filter(|r| r.path.ends_with("/quarantine"))
        .count()
}

async fn everything_decided(w: &TestWorker, keys: &[String]) {
    wait_for("every event decided", Duration::from_secs(60), || async {
        match w.decided(keys).await {
            n if n == keys.len() => Ok(()),
            n => Err(format!("{n} of {}", keys.len())),
        }
    })
    .await;
}

#[tokio::test]
async fn a_breaker_stops_a_mass_quarantine_at_its_limit_pages_once_and_holds_until_reset() {
    let sink = Sink::start().await;
    let mut w = WorkerHarness::for_dregs(RULES).start(&sink.url()).await;
    let dir = tempdir::Dir::new();
    let file = dir.path.join("rules.toml");
    std::fs::write(&file, &w.text).unwrap();
    let rules = file.to_str().unwrap();

    let mut keys = Vec::new();
    for i in 0..1000 {
        let id = format!("zero-{i}");
        w.publish_dregs(&id, &format!("u{i}"), "2026-11-21T10:00:00Z", 0)
            .await;
        keys.push(format!("dregs/{id}"));
    }
    everything_decided(&w, &keys).await;

    assert_eq!(quarantines(&sink), 50, "exactly the limit acted");
    let pages: Vec<_> = sink
        .received()
        .into_iter()
        .filter(|r| r.path == "/page")
        .collect();
    assert_eq!(pages.len(), 1, "one page: {pages:?}");
    let page: serde_json::Value = serde_json::from_str(&pages[0].body).unwrap();
    assert_eq!(page["rule"], "quarantine");
    assert_eq!(page["count"], 51);
    assert_eq!(page["per"], "10m");
    let listed = page["subjects"].as_array().unwrap();
    assert_eq!(listed.len(), 10, "{page}");
    let metrics = w.metrics();
    assert!(
        metrics.contains("hookwarden_rule_tripped{rule=\"quarantine\"} 1"),
        "{metrics}"
    );
    // 950 records say the rule matched and tripped: 949 decided `tripped`, and the last
    // account's, where the other rule acted all the same.
    let records = w.decisions(None, None, 2000).await;
    let tripped = records
        .iter()
        .filter(|d| d.record["rules"][0]["tripped"] == true)
        .count();
    assert_eq!(tripped, 950);
    assert_eq!(
        records.iter().filter(|d| d.outcome == "tripped").count(),
        949
    );
    assert!(
        metrics.contains("hookwarden_worker_events_total{outcome=\"tripped\"} 949"),
        "{metrics}"
    );
    let last = w.decision("dregs", "zero-999").await;
    assert_eq!(last.outcome, "acted", "{}", last.record);
    let entries = last.record["rules"].as_array().unwrap();
    assert_eq!(entries[0]["rule"], "quarantine");
    assert_eq!(entries[0]["tripped"], true, "{}", last.record);
    assert_eq!(entries[0]["matched"], true);
    assert!(entries[0].get("actions").is_none(), "{}", last.record);
    assert_eq!(entries[1]["rule"], "note");
    assert_eq!(entries[1]["actions"][0]["outcome"], "ok", "{}", last.record);

    let out = run_cli(&["rules", "trips", "--rules", rules, "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let trips: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(trips[0]["rule"], "quarantine", "{trips}");
    assert_eq!(trips[0]["count"], 51);

    // Still tripped after a restart.
    w.restart().await;
    w.publish_dregs("after-restart", "u1000", "2026-11-21T10:00:00Z", 0)
        .await;
    let d = w.decision("dregs", "after-restart").await;
    assert_eq!(d.outcome, "tripped", "{}", d.record);
    assert_eq!(quarantines(&sink), 50);

    // Reset while the worker runs: the next match acts.
    let out = run_cli(&["rules", "reset", "quarantine", "--rules", rules]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("quarantine: reset"));
    w.publish_dregs("after-reset", "u1001", "2026-11-21T10:00:00Z", 0)
        .await;
    let d = w.decision("dregs", "after-reset").await;
    assert_eq!(d.outcome, "acted", "{}", d.record);
    assert_eq!(quarantines(&sink), 51);
    let metrics = w.metrics();
    assert!(
        metrics.contains("hookwarden_rule_tripped{rule=\"quarantine\"} 0"),
        "{metrics}"
    );
    let out = run_cli(&["rules", "trips", "--rules", rules]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no rule has tripped"),
        "{}",
        explain(&out)
    );
    // A rule the file does not have is bad input, named with the ones it has.
    let out = run_cli(&["rules", "reset", "quarantin", "--rules", rules]).await;
    assert_eq!(out.status.code(), Some(64), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("its rules: quarantine, note"),
        "{}",
        explain(&out)
    );
    assert_eq!(
        sink.received().iter().filter(|r| r.path == "/page").count(),
        1,
        "paged once in all"
    );
}
