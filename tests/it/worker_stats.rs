//! `hookwarden decisions label` and `hookwarden rules stats` on what a real worker decided:
//! per rule, its matches, actions and subjects, and the false-positive ratio among the matches
//! an analyst labelled. (Named `worker_…` so `.ci/run` runs it again with the state in
//! PostgreSQL.)

use std::time::Duration;

use serde_json::Value;

use crate::harness::{explain, run_cli, tempdir, wait_for};
use crate::sink::Sink;
use crate::worker_harness::WorkerHarness;

const RULES: &str = r#"
[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0"
actions = ["quarantine"]

[[rules]]
name = "watch"
events = ["dregs:identity.scored"]
when = "score.humanity < 50.0"
actions = ["quarantine"]
mode = "shadow"

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine"
retries = 0
timeout = "2s"
"#;

fn line<'a>(stats: &'a Value, rule: &str) -> &'a Value {
    stats["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == rule)
        .unwrap_or_else(|| panic!("no {rule} in {stats:#}"))
}

#[tokio::test]
async fn rules_stats_count_matches_and_the_false_positive_ratio_of_labelled_ones() {
    let sink = Sink::start().await;
    let w = WorkerHarness::for_dregs(RULES).start(&sink.url()).await;
    let dir = tempdir::Dir::new();
    let file = dir.path.join("rules.toml");
    std::fs::write(&file, &w.text).unwrap();
    let rules = file.to_str().unwrap();

    // Ten subjects at 10, 20, …, 100: three below 30 (acted on), five below 50 (shadow).
    let keys: Vec<String> = (1..=10).map(|i| format!("dregs/s{i}")).collect();
    for i in 1..=10u32 {
        w.publish_dregs(
            &format!("s{i}"),
            &format!("u{i}"),
            "2026-11-21T10:00:00Z",
            i * 10 - 5,
        )
        .await;
    }
    wait_for("every event decided", Duration::from_secs(30), || async {
        match w.decided(&keys).await {
            10 => Ok(()),
            n => Err(format!("{n} of 10")),
        }
    })
    .await;

    // Two of the quarantines were wrong, one right; one shadow match was right.
    for (event, rule, verdict) in [
        ("dregs/s1", "quarantine", "false-positive"),
        ("dregs/s2", "quarantine", "false-positive"),
        ("dregs/s3", "quarantine", "true-positive"),
        ("dregs/s4", "watch", "true-positive"),
    ] {
        let out = run_cli(&[
            "decisions",
            "label",
            event,
            "--rule",
            rule,
            "--as",
            verdict,
            "--note",
            "checked",
            "--rules",
            rules,
        ])
        .await;
        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    }
    // Relabelling replaces: s2 was right after all.
    let out = run_cli(&[
        "decisions",
        "label",
        "s2",
        "--provider",
        "dregs",
        "--rule",
        "quarantine",
        "--as",
        "true-positive",
        "--rules",
        rules,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("quarantine labelled true-positive"));

    // What cannot be labelled is bad input, said plainly.
    for (args, reason) in [
        (
            vec!["dregs/nope", "--rule", "quarantine"],
            "no decision record of dregs/nope",
        ),
        (
            vec!["dregs/s9", "--rule", "quarantine"],
            "did not match dregs/s9",
        ),
        (
            vec!["dregs/s1", "--rule", "quarantin"],
            "did not evaluate dregs/s1",
        ),
    ] {
        let mut all = vec!["decisions", "label"];
        all.extend(args);
        all.extend(["--as", "false-positive", "--rules", rules]);
        let out = run_cli(&all).await;
        assert_eq!(out.status.code(), Some(64), "{}", explain(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(reason),
            "{}",
            explain(&out)
        );
    }

    let out = run_cli(&["rules", "stats", "--rules", rules, "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["decisions"], 10);
    let q = line(&stats, "quarantine");
    assert_eq!(
        (q["evaluated"].as_u64(), q["matched"].as_u64()),
        (Some(10), Some(3))
    );
    assert_eq!(
        (q["acted"].as_u64(), q["would_act"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(q["subjects"], 3);
    assert_eq!(
        (q["true_positives"].as_u64(), q["false_positives"].as_u64()),
        (Some(2), Some(1))
    );
    let ratio = q["false_positive_ratio"].as_f64().unwrap();
    assert!((ratio - 1.0 / 3.0).abs() < 1e-9, "{ratio}");
    assert_eq!(q["actions_failed"], 0);
    let s = line(&stats, "watch");
    assert_eq!(
        (s["matched"].as_u64(), s["would_act"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(
        (s["acted"].as_u64(), s["subjects"].as_u64()),
        (Some(0), Some(5))
    );
    assert_eq!(s["false_positive_ratio"], 0.0);

    // The table says the same.
    let out = run_cli(&["rules", "stats", "--rules", rules, "--since", "1h"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fp ratio"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("quarantine"))
        .unwrap_or_default();
    assert!(row.contains("2/1") && row.contains("33%"), "{text}");
}
