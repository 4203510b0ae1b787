//! `hookwarden rules backtest` on what a real worker archived: 2,000 Dregs-style events over
//! 200 subjects decided by a threshold-crossing rule that quarantines through a real HTTP
//! target, then replayed by candidates with a lower and a higher threshold. The counts and
//! the subjects whose actions change are computed by hand here; the target hears nothing
//! from a backtest. (Named `worker_…` so `.ci/run` runs it again with the state in
//! PostgreSQL.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{explain, run_cli, tempdir, wait_for};
use crate::sink::Sink;
use crate::worker_harness::WorkerHarness;

const SUBJECTS: u32 = 200;
const EVENTS_EACH: u32 = 10;

/// Quarantine when humanity falls through 30 (or is first seen below it).
const RULES: &str = r#"
[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0 && (!has(previous.score.humanity) || previous.score.humanity >= 30.0)"
actions = ["quarantine"]

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine"
body = '{"humanity": {{ score.humanity }}}'
retries = 0
timeout = "2s"
"#;

/// Subject `i`'s `j`th humanity score: spread over 0..100, rising and falling.
fn humanity(i: u32, j: u32) -> u32 {
    (i * 37 + j * 53 + (i * j) % 7) % 100
}

/// Per subject, for each of its events in order, whether the crossing rule with threshold
/// `t` fires.
fn fires(t: u32) -> BTreeMap<String, Vec<bool>> {
    (0..SUBJECTS)
        .map(|i| {
            let mut previous: Option<u32> = None;
            let fired = (0..EVENTS_EACH)
                .map(|j| {
                    let h = humanity(i, j);
                    let fires = h < t && previous.is_none_or(|p| p >= t);
                    previous = Some(h);
                    fires
                })
                .collect();
            (format!("dregs/s{i}"), fired)
        })
        .collect()
}

fn count(fired: &BTreeMap<String, Vec<bool>>) -> u64 {
    fired.values().flatten().filter(|&&f| f).count() as u64
}

/// Events that fire in `a` and not in `b`, and the subjects where the two differ at all.
fn diff(
    a: &BTreeMap<String, Vec<bool>>,
    b: &BTreeMap<String, Vec<bool>>,
) -> (u64, BTreeSet<String>) {
    let mut only_a = 0;
    let mut subjects = BTreeSet::new();
    for (subject, fa) in a {
        let fb = &b[subject];
        for (x, y) in fa.iter().zip(fb) {
            if *x && !*y {
                only_a += 1;
            }
            if x != y {
                subjects.insert(subject.clone());
            }
        }
    }
    (only_a, subjects)
}

async fn backtest(args: &[&str]) -> Value {
    let mut all = vec!["rules", "backtest", "--json", "--changes", "1000"];
    all.extend_from_slice(args);
    let out = run_cli(&all).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| panic!("{err}: {}", explain(&out)))
}

fn rule<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == name)
        .unwrap_or_else(|| panic!("no rule {name} in {report:#}"))
}

fn changed(report: &Value) -> BTreeSet<String> {
    report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subject"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn backtests_replay_the_archive_and_match_a_hand_computed_expectation() {
    let sink = Sink::start().await;
    let w = WorkerHarness::for_dregs(RULES).start(&sink.url()).await;
    let mut keys = Vec::new();
    for j in 0..EVENTS_EACH {
        for i in 0..SUBJECTS {
            let id = format!("e{i}-{j}");
            let at = format!("2026-11-21T10:{j:02}:00Z");
            w.publish_dregs(&id, &format!("s{i}"), &at, humanity(i, j))
                .await;
            keys.push(format!("dregs/{id}"));
        }
    }
    let total = keys.len();
    wait_for("every event decided", Duration::from_secs(60), || async {
        match w.decided(&keys).await {
            n if n == total => Ok(()),
            n => Err(format!("{n} of {total}")),
        }
    })
    .await;
    let running = fires(30);
    let quarantined = count(&running);
    assert!(quarantined > 100, "the test's scores cross 30 often");
    assert_eq!(sink.received().len() as u64, quarantined);

    let dir = tempdir::Dir::new();
    let write = |name: &str, text: String| {
        let path = dir.path.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let current = write("rules.toml", w.text.clone());
    let lower = write("lower.toml", w.text.replace("30.0", "20.0"));
    let higher = write("higher.toml", w.text.replace("30.0", "45.0"));

    // Against the recorded decisions.
    for (file, threshold) in [(&lower, 20), (&higher, 45)] {
        let candidate = fires(threshold);
        let report = backtest(&["--rules", file]).await;
        let line = rule(&report, "quarantine");
        let (new, _) = diff(&candidate, &running);
        let (gone, subjects) = diff(&running, &candidate);
        assert_eq!(report["compared"], total, "{report:#}");
        assert_eq!(report["unrecorded"], 0, "{report:#}");
        assert_eq!(line["baseline"]["would_act"], quarantined, "{report:#}");
        assert_eq!(
            line["candidate"]["would_act"],
            count(&candidate),
            "{report:#}"
        );
        assert_eq!(line["candidate"]["evaluated"], total, "{report:#}");
        assert_eq!(
            (line["new"].as_u64(), line["gone"].as_u64()),
            (Some(new), Some(gone))
        );
        assert!(!subjects.is_empty());
        assert_eq!(
            report["changed_subjects"],
            subjects.len(),
            "threshold {threshold}"
        );
        assert_eq!(changed(&report), subjects, "threshold {threshold}");
        let actions = &report["actions"]["quarantine"];
        assert_eq!(actions["baseline_runs"], quarantined);
        assert_eq!(actions["candidate_runs"], count(&candidate));
    }

    // The running rules replayed: the same decisions as recorded, and as a replayed baseline.
    for args in [
        vec!["--rules", current.as_str()],
        vec!["--rules", current.as_str(), "--baseline", current.as_str()],
    ] {
        let report = backtest(&args).await;
        let line = rule(&report, "quarantine");
        assert_eq!(report["changed_subjects"], 0, "{args:?}: {report:#}");
        assert_eq!(
            (line["new"].as_u64(), line["gone"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(line["candidate"]["would_act"], quarantined);
        assert_eq!(line["baseline"]["would_act"], quarantined);
    }

    // A replayed baseline against a candidate: the same difference as against the records.
    let report = backtest(&["--rules", &higher, "--baseline", &current]).await;
    assert_eq!(changed(&report), diff(&running, &fires(45)).1);

    // One subject: its ten events only, its state rebuilt from its first.
    let report = backtest(&["--rules", &higher, "--subject", "s7"]).await;
    assert_eq!(report["replayed"], EVENTS_EACH, "{report:#}");
    let one = fires(45)["dregs/s7"].iter().filter(|&&f| f).count();
    assert_eq!(rule(&report, "quarantine")["candidate"]["would_act"], one);

    // A window that ends before the events: every one replayed, none compared.
    let report = backtest(&["--rules", &higher, "--to", "2020-01-01T00:00:00Z"]).await;
    assert_eq!(report["replayed"], total);
    assert_eq!(report["compared"], 0);
    let report = backtest(&["--rules", &higher, "--since", "1h"]).await;
    assert_eq!(report["compared"], total);

    // The text report names what changed.
    let out = run_cli(&["rules", "backtest", "--rules", &higher]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(text.contains("would act (baseline → candidate)"), "{text}");
    assert!(
        text.contains(&format!("{quarantined} → {}", count(&fires(45)))),
        "{text}"
    );

    // Nothing was sent by any backtest.
    assert_eq!(sink.received().len() as u64, quarantined);
}
