//! `hookwarden rules backtest` on a large archive: fills an embedded store with N Dregs-style
//! events over S subjects (each with a decision record, as a worker leaves them), then runs
//! the release `hookwarden rules backtest` on it, candidate against the recorded decisions,
//! under `/usr/bin/time`, and prints its events/s, wall time and peak RSS, with the archive's
//! bytes per event (bodies alone, and on disk with its table and indexes).
//!
//! `cargo bench --bench backtest -- [--events 1000000] [--subjects 100000] [--keep DIR]`
//! (builds nothing itself: run `cargo build --release --bins` first; `benches/run.sh` does).
//! The rules are `deploy/rules.toml`'s; the candidate moves its humanity threshold 30 → 40.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use hookwarden::worker::state::{
    ArchivedEvent, Batch, DecisionRecord, SqliteStore, Store, SubjectState,
};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The size of a SQLite database once its WAL is folded in.
fn db_bytes(path: &Path) -> anyhow::Result<u64> {
    let c = rusqlite::Connection::open(path)?;
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(std::fs::metadata(path)?.len())
}

fn body(id: &str, subject: u64, minute: u64, humanity: u64) -> String {
    format!(
        r#"{{"id":"{id}","type":"identity.scored","created_at":"2026-11-21T14:03:27.512Z","data":{{"identity_id":"usr_{subject}","scored_at":"2026-11-{day:02}T{hour:02}:{min:02}:00.000Z","scores":{{"humanity":{humanity},"uniqueness":{u},"authenticity":{a}}},"previous_scores":{{"humanity":74,"uniqueness":63,"authenticity":51}},"badges":["Suspicious"],"reason":"burst of sign-ups sharing one device fingerprint"}}}}"#,
        day = 1 + minute / 1440 % 28,
        hour = minute / 60 % 24,
        min = minute % 60,
        u = (humanity * 7 + 13) % 100,
        a = (humanity * 11 + 29) % 100,
    )
}

fn main() -> anyhow::Result<()> {
    let events: u64 = arg("--events").map_or(Ok(1_000_000), |v| v.parse())?;
    let subjects: u64 = arg("--subjects").map_or(Ok(100_000), |v| v.parse())?;
    let dir = match arg("--keep") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("hw-backtest-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("worker.db");
    let rules = std::fs::read_to_string("deploy/rules.toml")?.replace(
        "path = \"/var/lib/hookwarden/worker.db\"",
        &format!("path = {:?}", db.display().to_string()),
    );
    let candidate_text = rules.replace("30.0", "40.0");
    let candidate = dir.join("candidate.toml");
    std::fs::write(&candidate, candidate_text)?;

    let _ = std::fs::remove_file(&db);
    let store = SqliteStore::open(&db)?;
    let started = Instant::now();
    // First the decision records alone, then the archive: the difference in file size is what
    // the archive takes on disk.
    let receive0: i64 = 1_790_000_000_000;
    let mut batch = Batch::default();
    for n in 0..events {
        let id = format!("evt_{n:012}");
        let subject = n % subjects;
        let humanity = (n * 37 + n / subjects * 53) % 100;
        batch.decisions.push(DecisionRecord {
            event_key: format!("dregs/{id}"),
            subject_key: Some(format!("dregs/usr_{subject}")),
            outcome: "no_match".to_owned(),
            record: serde_json::json!({
                "provider": "dregs", "type": "identity.scored", "event_id": id,
                "subject": format!("usr_{subject}"), "score": {"humanity": humanity},
                "rules": [
                    {"rule": "quarantine-low-humanity", "mode": "enforce", "matched": false},
                    {"rule": "review-sharp-drop", "mode": "enforce", "matched": false},
                    {"rule": "throttle-suspicious", "mode": "shadow", "matched": false},
                ],
            }),
            at_ms: receive0 + i64::try_from(n)?,
        });
        if batch.decisions.len() == 10_000 {
            store.commit(&batch)?;
            batch = Batch::default();
        }
    }
    store.commit(&batch)?;
    let without = db_bytes(&db)?;
    let mut batch = Batch::default();
    for n in 0..events {
        let id = format!("evt_{n:012}");
        let subject = n % subjects;
        let humanity = (n * 37 + n / subjects * 53) % 100;
        let minute = n / subjects;
        batch.archive.push(ArchivedEvent {
            event_key: format!("dregs/{id}"),
            provider: "dregs".to_owned(),
            event_type: "identity.scored".to_owned(),
            body: body(&id, subject, minute, humanity),
            event_id: id,
            subject_key: Some(format!("dregs/usr_{subject}")),
            version: None,
            received_ms: receive0 + i64::try_from(n)?,
        });
        if batch.archive.len() == 10_000 {
            store.commit(&batch)?;
            batch = Batch::default();
        }
    }
    batch
        .subjects
        .insert("dregs/usr_0".to_owned(), SubjectState::default());
    store.commit(&batch)?;
    let summary = store.archive_summary()?;
    drop(store);
    let with = db_bytes(&db)?;
    println!(
        "filled {events} events over {subjects} subjects in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "archive: {:.0} bytes of body per event; {:.0} bytes per event on disk (table and indexes)",
        summary.body_bytes as f64 / events as f64,
        with.saturating_sub(without) as f64 / events as f64
    );

    let bin = std::env::var("HOOKWARDEN_BIN").unwrap_or_else(|_| "target/release".to_owned());
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M"])
        .arg(Path::new(&bin).join("hookwarden"))
        .args(["rules", "backtest", "--json", "--rules"])
        .arg(&candidate)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "backtest failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let timing = stderr.lines().last().unwrap_or_default();
    let mut fields = timing.split_whitespace();
    let wall: f64 = fields.next().unwrap_or("0").parse()?;
    let rss_kib: f64 = fields.next().unwrap_or("0").parse()?;
    println!(
        "backtest: {} events replayed in {wall:.1} s wall ({:.0} events/s in the replay, {:.0} \
         over the whole command), peak RSS {:.0} MiB; {} subjects changed",
        report["replayed"],
        report["events_per_second"].as_f64().unwrap_or(0.0),
        report["replayed"].as_f64().unwrap_or(0.0) / wall.max(0.001),
        rss_kib / 1024.0,
        report["changed_subjects"],
    );
    if arg("--keep").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
