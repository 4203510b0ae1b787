//! The worker as a process: killed -9 mid-batch and restarted (no completed action lost or
//! repeated under a new key), SIGHUP with a broken then a good rules file, SIGTERM → exit 0.

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::{signal, spawn_logged, tempdir, terminate, wait_for, wait_for_file};
use crate::sink::Sink;
use crate::worker_harness::{WorkerHarness, dregs};

const RULES: &str = r#"
[[subjects]]
provider = "dregs"
types = ["identity.*"]
subject = "/data/identity_id"
version = "/data/scored_at"
scores = { humanity = "/data/scores/humanity" }

[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < THRESHOLD"
actions = ["quarantine"]

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine"
retries = 5
timeout = "5s"
"#;

fn spawn(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    spawn_logged(env!("CARGO_BIN_EXE_hookwarden-worker"), config, log)
}

/// A publisher for a worker running as a process: the harness's worker, stopped, lends
/// its names, its rules text and its broker connection.
async fn harness(
    threshold: &str,
    sink: &Sink,
) -> (
    crate::worker_harness::TestWorker,
    tempdir::Dir,
    std::path::PathBuf,
) {
    let rules = RULES.replace("THRESHOLD", threshold);
    let mut w = WorkerHarness::new(&rules).start(&sink.url()).await;
    // Only the declarations and the publisher are wanted; the process does the work.
    w.stop().await;
    let dir = tempdir::Dir::new();
    let path = dir.path.join("rules.toml");
    std::fs::write(&path, &w.text).unwrap();
    (w, dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing_and_repeats_only_under_the_same_key() {
    let _serial = crate::SERIAL.lock().await;
    let sink = Sink::start().await;
    sink.delay(Duration::from_millis(20));
    let (w, dir, path) = harness("30.0", &sink).await;
    let ids: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let body = dregs(
            id,
            &format!("s{}", i % 60),
            &format!("2026-11-21T10:{:02}:{:02}Z", i / 60, i % 60),
            10,
        );
        w.publish("dregs", "identity.scored", id, &body).await;
    }
    let log = dir.path.join("worker.log");
    let mut child = spawn(&path, &log);
    let _guard = crate::harness::KillOnDrop(child.id());
    sink.wait_until("20 actions done", Duration::from_secs(30), |got| {
        got.len() >= 20
    })
    .await;
    signal(&child, "-KILL");
    let _ = child.wait();
    let before = sink.received().len();
    let child = spawn(&path, &dir.path.join("worker2.log"));
    let _guard = crate::harness::KillOnDrop(child.id());
    // The rule is a plain threshold, so every one of the 300 events acts once.
    let keys: Vec<String> = ids.iter().map(|i| format!("dregs/{i}")).collect();
    wait_for(
        "every event decided after the restart",
        Duration::from_secs(60),
        || async {
            let decided = w.decided(&keys).await;
            if decided == keys.len() {
                Ok(())
            } else {
                Err(format!("{decided} of {} decided", keys.len()))
            }
        },
    )
    .await;
    let exit = terminate(child).await;
    assert_eq!(
        exit.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(dir.path.join("worker2.log")).unwrap_or_default()
    );

    let received = sink.received();
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for r in &received {
        *per_key
            .entry(r.idempotency_key.clone().unwrap_or_default())
            .or_default() += 1;
    }
    // One action per event: 300 distinct keys, none lost.
    assert_eq!(per_key.len(), ids.len(), "distinct actions");
    let repeated: usize = per_key.values().map(|n| n - 1).sum();
    // A repeat can only be an action that was in flight when the process died (its HTTP call
    // completed, its done-mark not yet written); it carries the same Idempotency-Key.
    assert!(repeated <= before, "{repeated} repeats");
    eprintln!(
        "kill -9 test: {} events, {} actions received ({} before the kill), {} distinct, {} repeated with the same key",
        ids.len(),
        received.len(),
        before,
        per_key.len(),
        repeated
    );
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_a_broken_file_and_applies_a_good_one() {
    let _serial = crate::SERIAL.lock().await;
    let sink = Sink::start().await;
    let (w, dir, path) = harness("30.0", &sink).await;
    let good = std::fs::read_to_string(&path).unwrap();
    let log = dir.path.join("worker.log");
    let child = spawn(&path, &log);
    let _guard = crate::harness::KillOnDrop(child.id());
    wait_for_file(
        &log,
        "the worker consuming",
        Duration::from_secs(15),
        |text| text.contains("consuming"),
    )
    .await;
    // A broken file: refused with its problem logged; the old rules stay.
    std::fs::write(
        &path,
        good.replace("score.humanity < 30.0", "scor.humanity < 30.0"),
    )
    .unwrap();
    signal(&child, "-HUP");
    wait_for_file(
        &log,
        "the reload refused",
        Duration::from_secs(10),
        |text| text.contains("reload refused") && text.contains("undeclared reference 'scor'"),
    )
    .await;
    w.publish_dregs("h1", "a", "2026-11-21T10:00:00Z", 20).await;
    sink.wait_until("the old rule to act", Duration::from_secs(10), |got| {
        got.len() == 1
    })
    .await;
    // A good file with a lower threshold: applied from the next batch on.
    std::fs::write(
        &path,
        good.replace("score.humanity < 30.0", "score.humanity < 10.0"),
    )
    .unwrap();
    signal(&child, "-HUP");
    wait_for_file(
        &log,
        "the rules reloaded",
        Duration::from_secs(10),
        |text| text.contains("rules reloaded"),
    )
    .await;
    w.publish_dregs("h2", "b", "2026-11-21T10:00:00Z", 20).await;
    w.publish_dregs("h3", "c", "2026-11-21T10:00:00Z", 5).await;
    sink.wait_until("the new rule to act", Duration::from_secs(10), |got| {
        got.iter().any(|r| r.path == "/accounts/c/quarantine")
    })
    .await;
    assert!(
        !sink
            .received()
            .iter()
            .any(|r| r.path == "/accounts/b/quarantine")
    );
    let exit = terminate(child).await;
    assert_eq!(exit.code(), Some(0));
}
