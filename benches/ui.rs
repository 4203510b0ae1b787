//! The web view on a large store: fills an embedded store with N decision records (as a
//! worker leaves them, over the last seven days, across S subjects, one subject with
//! thousands of events and its bodies archived), then serves `/ui/` from it over real HTTP
//! and times each page: the decisions page (first, deep, filtered by a rare rule, dead
//! letters), a subject page (typical, and the busy one), the dead-letter page and the
//! overview. Prints p50, p99 and max of each beside the 100 ms ceiling.
//!
//! `cargo bench --bench ui -- [--records 1000000] [--subjects 20000] [--rounds 30] [--keep DIR]`
//! `--keep DIR` fills DIR/worker.db once and reuses it on later runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hookwarden::worker::config::WorkerConfig;
use hookwarden::worker::state::{
    ArchivedEvent, Batch, DecisionRecord, SqliteStore, Store, SubjectState, now_ms,
};
use serde_json::json;

/// What the issue asks of the decisions and subject pages on a million records.
const CEILING_MS: f64 = 100.0;
/// Events of the busy subject.
const BUSY_EVENTS: u64 = 3_000;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn number(name: &str, default: u64) -> u64 {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Decision `i` of `records`: which subject, when, and what the rules did.
fn record(
    i: u64,
    records: u64,
    subjects: u64,
    now: i64,
) -> (DecisionRecord, Option<ArchivedEvent>) {
    let week_ms = 7 * 86_400_000;
    let at_ms = now - week_ms + i64::try_from(i * (week_ms as u64) / records).unwrap_or(0);
    let busy = i.is_multiple_of((records / BUSY_EVENTS).max(1));
    let subject = if busy {
        "usr_busy".to_owned()
    } else {
        format!("usr_{}", (i * 7_919) % subjects)
    };
    let humanity = (i * 37) % 100;
    let id = format!("evt_{i:09}");
    let event_key = format!("dregs/{id}");
    let fired = humanity < 30;
    let failed = i % 50_000 == 7;
    let rare = i % 20_000 == 3;
    let actions = if fired {
        json!([{"action": "quarantine", "outcome": if failed {"failed"} else {"ok"}, "attempts": 1,
                "error": if failed {json!("HTTP 500 Internal Server Error")} else {json!(null)},
                "latency_ms": 3, "detail": {"status": if failed {500} else {200}},
                "request": {"method": "POST", "url": format!("http://svc/accounts/{subject}/quarantine"),
                            "headers": [["content-type", "application/json"], ["authorization", "***"]],
                            "body": format!("{{\"humanity\": {humanity}}}")}}])
    } else {
        json!([])
    };
    let mut value = json!({
        "provider": "dregs", "type": "identity.scored", "event_id": id, "subject": subject,
        "score": {"humanity": humanity, "uniqueness": (humanity * 7 + 13) % 100},
        "rules": [
            {"rule": "quarantine-low-humanity", "mode": "enforce", "matched": fired, "actions": actions},
            {"rule": "throttle-suspicious", "mode": "shadow", "matched": humanity < 45, "would_act": humanity < 45},
            {"rule": "rare-pattern", "mode": "enforce", "matched": rare},
        ],
    });
    if failed {
        value["dead_letter"] = json!({"reason": "HTTP 500 Internal Server Error", "rule": "quarantine-low-humanity", "action": "quarantine"});
    }
    let outcome = match (failed, fired) {
        (true, _) => "dead_lettered",
        (false, true) => "acted",
        (false, false) if humanity < 45 => "matched",
        _ => "no_match",
    };
    let archived = busy.then(|| ArchivedEvent {
        event_key: event_key.clone(),
        provider: "dregs".into(),
        event_type: "identity.scored".into(),
        event_id: id.clone(),
        subject_key: Some(format!("dregs/{subject}")),
        version: Some(at_ms),
        received_ms: at_ms,
        body: json!({"id": id, "type": "identity.scored",
                     "data": {"identity_id": subject, "scores": {"humanity": humanity}}})
        .to_string(),
    });
    (
        DecisionRecord {
            event_key,
            subject_key: Some(format!("dregs/{subject}")),
            outcome: outcome.to_owned(),
            record: value,
            at_ms,
        },
        archived,
    )
}

fn fill(store: &SqliteStore, records: u64, subjects: u64) -> anyhow::Result<()> {
    let now = now_ms();
    let started = Instant::now();
    let mut batch = Batch::default();
    for i in 0..records {
        let (decision, archived) = record(i, records, subjects, now);
        batch.decisions.push(decision);
        batch.archive.extend(archived);
        if batch.decisions.len() == 10_000 || i + 1 == records {
            // The subjects' state as of their last event in the batch.
            for d in &batch.decisions {
                if let Some(key) = &d.subject_key {
                    let scores = d.record["score"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                                .collect()
                        })
                        .unwrap_or_default();
                    batch.subjects.insert(
                        key.clone(),
                        SubjectState {
                            version: Some(d.at_ms),
                            scores,
                            at_ms: Some(d.at_ms),
                            fired_ms: Default::default(),
                        },
                    );
                }
            }
            store.commit(&batch)?;
            batch = Batch::default();
            eprint!("\rfilled {} of {records}", i + 1);
        }
    }
    eprintln!(" in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let records = number("--records", 1_000_000);
    let subjects = number("--subjects", 20_000);
    let rounds = number("--rounds", 30);
    let temp = std::env::temp_dir().join(format!("hookwarden-ui-bench-{}", std::process::id()));
    let dir = arg("--keep")
        .map(PathBuf::from)
        .unwrap_or_else(|| temp.clone());
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("worker.db");
    let fresh = !path.exists();
    {
        let store = SqliteStore::open(&path)?;
        if fresh {
            fill(&store, records, subjects)?;
        }
    }
    let text = format!(
        "[state]\npath = \"{}\"\n[[subjects]]\nprovider = \"dregs\"\ntypes = [\"*\"]\nsubject = \"/data/identity_id\"\n\
         scores = {{ humanity = \"/data/scores/humanity\" }}\n",
        path.display()
    );
    let config = WorkerConfig::parse("rules.toml", &text, &HashMap::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path)?);
    let view =
        hookwarden::ui::WebView::new(Arc::new(RwLock::new(Arc::new(config))), store.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(hookwarden::admin::serve(
        listener,
        Arc::new(Idle),
        Some(Arc::new(view)),
        shutdown.clone(),
    ));
    let client = reqwest::Client::new();
    // A deep page: where the decisions page stands after going back half the table.
    let middle = store.browse(&hookwarden::worker::state::Browse {
        to_ms: Some(now_ms() - 3 * 86_400_000),
        limit: 1,
        ..Default::default()
    })?;
    let deep = middle
        .first()
        .map(|d| {
            let cursor: String =
                form_urlencoded::byte_serialize(format!("{}.{}", d.at_ms, d.event_key).as_bytes())
                    .collect();
            format!("/ui/decisions?before={cursor}")
        })
        .unwrap_or_else(|| "/ui/decisions".to_owned());
    let pages = [
        ("decisions, first page", "/ui/decisions".to_owned(), true),
        ("decisions, half-way back", deep, true),
        (
            "decisions, a subject",
            "/ui/decisions?subject=dregs%2Fusr_42".to_owned(),
            true,
        ),
        (
            "decisions, a rare rule",
            "/ui/decisions?rule=rare-pattern".to_owned(),
            true,
        ),
        (
            "decisions, dead-lettered",
            "/ui/decisions?outcome=dead_lettered".to_owned(),
            true,
        ),
        (
            "subject, typical",
            "/ui/subject?key=dregs%2Fusr_42".to_owned(),
            true,
        ),
        (
            "subject, busy (3,000 events, archived)",
            "/ui/subject?key=dregs%2Fusr_busy".to_owned(),
            true,
        ),
        ("dead letters", "/ui/dead-letters".to_owned(), false),
        ("overview", "/ui/".to_owned(), false),
    ];
    println!(
        "{records} decision records, {subjects} subjects, {} on disk; {rounds} requests per page, HTML",
        bytesize::ByteSize(std::fs::metadata(&path)?.len())
    );
    println!("| page | p50 ms | p99 ms | max ms | bytes | ceiling |");
    println!("|---|---|---|---|---|---|");
    let mut over = false;
    for (name, path, bounded) in pages {
        let mut times = Vec::new();
        let mut bytes = 0;
        for round in 0..=rounds {
            let started = Instant::now();
            let response = client.get(format!("{base}{path}")).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(status.is_success(), "{path}: {status}");
            bytes = body.len();
            if round > 0 {
                // The first request warms the page cache; the figures are the rest.
                times.push(ms);
            }
        }
        times.sort_by(f64::total_cmp);
        let p99 = percentile(&times, 0.99);
        let ceiling = if bounded {
            over |= p99 > CEILING_MS;
            format!("{CEILING_MS} ms")
        } else {
            "none".to_owned()
        };
        println!(
            "| {name} | {:.1} | {p99:.1} | {:.1} | {bytes} | {ceiling} |",
            percentile(&times, 0.5),
            times.last().copied().unwrap_or(0.0),
        );
    }
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    if arg("--keep").is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    anyhow::ensure!(!over, "a page's p99 is over its {CEILING_MS} ms ceiling");
    Ok(())
}

/// The admin status the bench's server reports (it only serves the view).
struct Idle;

impl hookwarden::admin::Status for Idle {
    fn readiness(&self) -> Result<(), hookwarden::admin::NotReady> {
        Ok(())
    }
    fn metrics(&self) -> String {
        String::new()
    }
}
