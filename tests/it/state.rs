//! The worker's state store, the same contract held by both backends: the embedded SQLite
//! file and PostgreSQL (each test in a schema of its own, at 127.0.0.1:5432 or
//! `HOOKWARDEN_TEST_POSTGRES`). Then what only PostgreSQL has: its schema's versions, and
//! subjects locked across workers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hookwarden::worker::config::{Backend, StateConfig};
use hookwarden::worker::state::{
    self, ArchivedEvent, Batch, DecisionRecord, PgOptions, ReplayQuery, Store, StoreError,
    SubjectState,
};

use crate::harness::{tempdir, wait_for};
use crate::pg::Schema;

fn postgres_config(schema: &Schema) -> StateConfig {
    StateConfig {
        backend: Backend::Postgres(PgOptions {
            url: schema.url(),
            pool_size: 4,
            statement_timeout: Duration::from_secs(10),
        }),
        retention: Duration::from_secs(3600),
    }
}

async fn open_postgres(schema: &Schema) -> Result<Arc<dyn Store>, StoreError> {
    state::open(&postgres_config(schema)).await
}

/// Runs `f` off the test's runtime: the store's calls block.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn record(event: &str, subject: Option<&str>, outcome: &str, at_ms: i64) -> DecisionRecord {
    DecisionRecord {
        event_key: event.to_owned(),
        subject_key: subject.map(str::to_owned),
        outcome: outcome.to_owned(),
        record: serde_json::json!({"event": event, "outcome": outcome}),
        at_ms,
    }
}

fn set(keys: &[&str]) -> HashSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

/// What the worker relies on, whichever store it has.
fn contract(s: &dyn Store) {
    let u1 = "dregs/u1".to_owned();
    assert!(
        s.load_subjects(std::slice::from_ref(&u1))
            .unwrap()
            .is_empty()
    );

    let mut state = SubjectState {
        version: Some(7),
        at_ms: Some(1),
        ..SubjectState::default()
    };
    state.scores.insert("humanity".into(), 22.5);
    state.fired_ms.insert("quarantine".into(), 5);
    state.fired_ms.insert("review".into(), 6);
    let mut batch = Batch::default();
    batch.subjects.insert(u1.clone(), state.clone());
    batch
        .decisions
        .push(record("dregs/e1", Some("dregs/u1"), "acted", 10));
    batch
        .decisions
        .push(record("dregs/e2", Some("dregs/u1"), "dead_lettered", 11));
    // One event twice in a batch (it had no subject, so nothing caught the second): one record.
    batch
        .decisions
        .push(record("dregs/e3", None, "no_subject", 12));
    batch
        .decisions
        .push(record("dregs/e3", None, "no_subject", 12));
    s.commit(&batch).unwrap();

    let loaded = s
        .load_subjects(&[u1.clone(), "dregs/nobody".to_owned()])
        .unwrap();
    assert_eq!(loaded.len(), 1, "only subjects seen are returned");
    assert_eq!(loaded[&u1], state);

    // A dead-lettered event is not final: its replay must be handled.
    let keys = ["dregs/e1", "dregs/e2", "dregs/e3", "dregs/e4"].map(str::to_owned);
    assert_eq!(s.decided(&keys).unwrap(), set(&["dregs/e1", "dregs/e3"]));

    // The replay's record replaces the dead letter's; a final record is never replaced.
    let mut replay = Batch::default();
    replay
        .decisions
        .push(record("dregs/e2", Some("dregs/u1"), "acted", 20));
    replay
        .decisions
        .push(record("dregs/e1", Some("dregs/u1"), "no_match", 21));
    state.version = Some(8);
    state.fired_ms.insert("quarantine".into(), 20);
    replay.subjects.insert(u1.clone(), state.clone());
    s.commit(&replay).unwrap();
    assert_eq!(
        s.load_subjects(std::slice::from_ref(&u1)).unwrap()[&u1],
        state
    );
    assert_eq!(
        s.decisions(Some("dregs/e1"), None, 10).unwrap()[0].outcome,
        "acted"
    );
    let e2 = &s.decisions(Some("dregs/e2"), None, 10).unwrap()[0];
    assert_eq!((e2.outcome.as_str(), e2.at_ms), ("acted", 20));
    assert_eq!(e2.record["outcome"], "acted");

    // A subject's records, newest first, at most `limit`.
    let by_subject: Vec<String> = s
        .decisions(None, Some("dregs/u1"), 10)
        .unwrap()
        .into_iter()
        .map(|d| d.event_key)
        .collect();
    assert_eq!(by_subject, ["dregs/e2", "dregs/e1"]);
    assert_eq!(s.decisions(None, None, 1).unwrap().len(), 1);

    // Done-marks: written once however often, found among others.
    let marks = ["k1".to_owned(), "k2".to_owned()];
    assert!(s.done_among(&marks).unwrap().is_empty());
    s.mark_done(&marks[..1]).unwrap();
    s.mark_done(&marks[..1]).unwrap();
    assert_eq!(s.done_among(&marks).unwrap(), set(&["k1"]));

    // Locks: the embedded store has one worker and nothing to wait for; either way a lock
    // on no subjects and a lock on some are both granted to a lone worker.
    drop(s.lock_subjects(&[]).unwrap());
    drop(s.lock_subjects(std::slice::from_ref(&u1)).unwrap());

    // Everything older than the retention goes: 3 decisions and 1 done-mark.
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(s.prune(Duration::ZERO).unwrap(), 4);
    assert!(s.decisions(None, None, 10).unwrap().is_empty());
}

fn archived(n: i64, received_ms: i64) -> ArchivedEvent {
    // 100 bytes each.
    let body = format!("{{\"n\":{n:03},\"pad\":\"{}\"}}", "x".repeat(82));
    assert_eq!(body.len(), 100);
    ArchivedEvent {
        event_key: format!("dregs/a{n}"),
        provider: "dregs".into(),
        event_type: "identity.scored".into(),
        event_id: format!("a{n}"),
        subject_key: Some(format!("dregs/u{}", n % 2)),
        version: Some(n),
        received_ms,
        body,
    }
}

fn replayed(s: &dyn Store, query: &ReplayQuery) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    s.replay(query, &mut |r| {
        out.push((r.event.event_key, r.recorded.map(|(outcome, _)| outcome)));
        Ok(())
    })
    .unwrap();
    out
}

/// What the archive, breakers, watches and labels rely on, whichever store.
fn tuning_contract(s: &dyn Store) {
    use hookwarden::worker::rules::Limit;
    use hookwarden::worker::state::{Admission, Label, LabelVerdict};
    let now = state::now_ms();
    let hour = 3_600_000;

    // Six events, three received ten hours ago, in delivery order; one decided.
    let mut batch = Batch {
        archive: (0..6)
            .map(|n| archived(n, if n < 3 { now - 10 * hour } else { now }))
            .collect(),
        ..Batch::default()
    };
    batch
        .decisions
        .push(record("dregs/a4", Some("dregs/u0"), "acted", now));
    s.commit(&batch).unwrap();
    // Archived again (a dead letter replayed): kept as it was, counted once.
    let mut again = Batch::default();
    again.archive.push(archived(1, now));
    s.commit(&again).unwrap();
    let summary = s.archive_summary().unwrap();
    assert_eq!((summary.events, summary.body_bytes), (6, 600));
    assert_eq!(summary.oldest_ms, Some(now - 10 * hour));
    let all = ReplayQuery {
        subject_key: None,
        recorded_from: Some(now - hour),
    };
    let keys: Vec<String> = replayed(s, &all).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        (0..6).map(|n| format!("dregs/a{n}")).collect::<Vec<_>>()
    );
    // One subject (by key or by id), records joined only inside the window.
    let u0 = ReplayQuery {
        subject_key: Some("u0".into()),
        recorded_from: Some(now - hour),
    };
    assert_eq!(
        replayed(s, &u0),
        [
            ("dregs/a0".to_owned(), None),
            ("dregs/a2".to_owned(), None),
            ("dregs/a4".to_owned(), Some("acted".to_owned()))
        ]
    );
    // By age, then by size: the newest that fit in 250 bytes stay.
    assert_eq!(s.prune_archive(Duration::from_secs(3600), None).unwrap(), 3);
    assert_eq!(
        s.prune_archive(Duration::from_secs(3600), Some(250))
            .unwrap(),
        1
    );
    let summary = s.archive_summary().unwrap();
    assert_eq!((summary.events, summary.body_bytes), (2, 200));
    let keys: Vec<String> = replayed(s, &ReplayQuery::default())
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["dregs/a4", "dregs/a5"]);

    // A breaker: two firings in the window act, the third trips the rule, once.
    let limit = Limit {
        actions: 2,
        per: Duration::from_secs(60),
    };
    assert_eq!(
        s.admit("q", "dregs/u1", now, &limit).unwrap(),
        Admission::Granted
    );
    assert_eq!(
        s.admit("q", "dregs/u2", now + 1, &limit).unwrap(),
        Admission::Granted
    );
    let Admission::Tripped(Some(trip)) = s.admit("q", "dregs/u3", now + 2, &limit).unwrap() else {
        panic!("the third firing trips the rule");
    };
    assert_eq!((trip.count, trip.per_ms), (3, 60_000));
    assert_eq!(trip.subjects, ["dregs/u1", "dregs/u2", "dregs/u3"]);
    assert_eq!(
        s.admit("q", "dregs/u4", now + 3, &limit).unwrap(),
        Admission::Tripped(None)
    );
    // Another rule is not held back.
    assert_eq!(
        s.admit("r", "dregs/u4", now + 3, &limit).unwrap(),
        Admission::Granted
    );
    assert_eq!(s.trips().unwrap(), [trip]);
    assert!(s.reset_trip("q").unwrap());
    assert!(!s.reset_trip("q").unwrap());
    assert!(s.trips().unwrap().is_empty());
    assert_eq!(
        s.admit("q", "dregs/u5", now + 4, &limit).unwrap(),
        Admission::Granted
    );
    // The window slides: firings older than `per` no longer count.
    assert_eq!(
        s.admit("r", "dregs/u6", now + 4, &limit).unwrap(),
        Admission::Granted
    );
    assert_eq!(
        s.admit("r", "dregs/u7", now + 61_000, &limit).unwrap(),
        Admission::Granted
    );

    // A watch: counted from its start, moved forward only, silent once, recovered once.
    let key = "watch/quiet".to_owned();
    s.start_seen(std::slice::from_ref(&key), 100).unwrap();
    s.start_seen(std::slice::from_ref(&key), 999).unwrap();
    s.touch_seen(&[(key.clone(), 50)]).unwrap();
    let row = |s: &dyn Store| {
        s.seen()
            .unwrap()
            .into_iter()
            .find(|r| r.key == key)
            .unwrap()
    };
    assert_eq!((row(s).at_ms, row(s).silent_since_ms), (100, None));
    assert!(
        !s.mark_silent(&key, 500, 99).unwrap(),
        "seen after the silence began"
    );
    assert!(s.mark_silent(&key, 500, 100).unwrap());
    assert!(!s.mark_silent(&key, 600, 100).unwrap(), "already silent");
    assert!(!s.mark_recovered(&key, 500).unwrap(), "nothing seen since");
    s.touch_seen(&[(key.clone(), 700)]).unwrap();
    assert!(s.mark_recovered(&key, 500).unwrap());
    assert!(!s.mark_recovered(&key, 500).unwrap(), "recovered once");
    // An action that failed puts the mark back, for another try.
    assert!(s.reset_silence(&key, None, Some(500)).unwrap());
    assert_eq!(row(s).silent_since_ms, Some(500));

    // Labels: replaced, not added.
    let label = |verdict| Label {
        event_key: "dregs/a4".into(),
        rule: "quarantine".into(),
        verdict,
        note: Some("checked".into()),
        at_ms: now,
    };
    s.label(&label(LabelVerdict::FalsePositive)).unwrap();
    s.label(&label(LabelVerdict::TruePositive)).unwrap();
    assert_eq!(s.labels().unwrap(), [label(LabelVerdict::TruePositive)]);
    let mut scanned = Vec::new();
    s.scan_decisions(now - hour, &mut |d| {
        scanned.push(d.event_key);
        Ok(())
    })
    .unwrap();
    assert_eq!(scanned, ["dregs/a4"]);
}

#[tokio::test]
async fn the_embedded_store_keeps_the_contract() {
    let dir = tempdir::Dir::new();
    let config = StateConfig {
        backend: Backend::Sqlite(dir.path.join("worker.db")),
        retention: Duration::from_secs(3600),
    };
    let store = state::open(&config).await.unwrap();
    blocking(move || {
        contract(&*store);
        tuning_contract(&*store);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_keeps_the_same_contract() {
    let schema = Schema::new().await;
    let store = open_postgres(&schema).await.unwrap();
    blocking(move || {
        contract(&*store);
        tuning_contract(&*store);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_schema_is_created_once_and_a_newer_one_is_refused() {
    let schema = Schema::new().await;
    // Two workers starting at once: one migrates, the other finds it done.
    let (a, b) = tokio::join!(open_postgres(&schema), open_postgres(&schema));
    a.unwrap();
    b.unwrap();
    let known = state::schema_version();
    assert_eq!(
        schema
            .texts("SELECT version::text FROM hookwarden_schema ORDER BY version")
            .await,
        (1..=known).map(|v| v.to_string()).collect::<Vec<_>>(),
        "every migration applied once"
    );

    // A newer hookwarden migrated it: this one would misread it, and says which is which.
    schema
        .execute(
            "INSERT INTO hookwarden_schema (version, name, checksum) VALUES (99, 'future', 'x')",
        )
        .await;
    let err = open_postgres(&schema).await.err().unwrap().to_string();
    assert!(
        err.contains("schema is version 99") && err.contains(&format!("this build's {known}")),
        "{err}"
    );

    // A migration that reads differently from the one applied: refused, not re-run.
    schema
        .execute("DELETE FROM hookwarden_schema WHERE version = 99")
        .await;
    schema
        .execute("UPDATE hookwarden_schema SET checksum = 'edited' WHERE version = 1")
        .await;
    let err = open_postgres(&schema).await.err().unwrap().to_string();
    assert!(err.contains("schema migration 1 differs"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_locked_by_one_worker_waits_for_its_commit_in_another() {
    let schema = Schema::new().await;
    let first = open_postgres(&schema).await.unwrap();
    let second = open_postgres(&schema).await.unwrap();
    let u1 = vec!["dregs/u1".to_owned()];
    let held = {
        let (first, u1) = (first.clone(), u1.clone());
        blocking(move || first.lock_subjects(&u1).unwrap()).await
    };

    // Another subject is not held up.
    let other = second.clone();
    blocking(move || drop(other.lock_subjects(&["dregs/u2".to_owned()]).unwrap())).await;

    // The same subject (in a batch with others) waits until the first lets go.
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let waiter = std::thread::spawn({
        let second = second.clone();
        move || {
            let lock = second
                .lock_subjects(&["dregs/u0".to_owned(), "dregs/u1".to_owned()])
                .unwrap();
            let _ = tx.send(());
            drop(lock);
        }
    });
    // Seen waiting by the database itself: an advisory lock on u1's key not granted.
    let key = {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(b"dregs/u1");
        i64::from_be_bytes(digest[..8].try_into().unwrap())
    };
    let (high, low) = ((key as u64 >> 32) as i64, (key as u64 & 0xffff_ffff) as i64);
    let waiting = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
           AND classid::int8 = {high} AND objid::int8 = {low}"
    );
    wait_for(
        "the second worker waiting",
        Duration::from_secs(10),
        || async {
            match schema.count(&waiting).await {
                0 => Err("not waiting yet".to_owned()),
                _ => Ok(()),
            }
        },
    )
    .await;
    assert!(
        rx.try_recv().is_err(),
        "granted while another worker held it"
    );
    drop(held);
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("granted once released")
        .unwrap();
    waiter.join().unwrap();
}

#[tokio::test]
async fn an_unreachable_database_is_named_without_its_password() {
    let config = StateConfig {
        backend: Backend::Postgres(PgOptions {
            // Nothing listens on port 1.
            url: "postgres://hw:s3cret@127.0.0.1:1/test?sslmode=disable".to_owned(),
            pool_size: 1,
            statement_timeout: Duration::from_secs(2),
        }),
        retention: Duration::from_secs(3600),
    };
    let err = state::open(&config).await.err().unwrap().to_string();
    assert!(err.starts_with("state store: "), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    assert_eq!(
        config.describe(),
        "postgres://hw:***@127.0.0.1:1/test?sslmode=disable"
    );
}

/// A rules file whose `[state]` is `state` (the rest does not matter to the store).
fn rules_with_state(state: &str) -> hookwarden::worker::config::WorkerConfig {
    let text = format!("[state]\n{state}\n");
    hookwarden::worker::config::WorkerConfig::parse("rules.toml", &text, &Default::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Every row of a store, in a stable order.
fn rows(store: &dyn Store) -> Vec<String> {
    let mut out = Vec::new();
    store
        .export(&mut |row| {
            out.push(serde_json::to_string(&row).unwrap());
            Ok(())
        })
        .unwrap();
    out.sort();
    out
}

#[test]
fn state_export_then_import_moves_the_embedded_store_into_postgresql_whole() {
    use hookwarden::cli::state::{Counts, export, import};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir::Dir::new();
    let file = rules_with_state(&format!(
        "path = \"{}\"",
        dir.path.join("worker.db").display()
    ));
    let schema = runtime.block_on(Schema::new());
    let pg = rules_with_state(&format!("url = \"{}\"", schema.url()));

    // A worker's history in the file: two subjects (one with firings), a dead letter
    // replayed, a done-mark.
    let sqlite = runtime.block_on(state::open(&file.state)).unwrap();
    let mut batch = Batch::default();
    let mut u1 = SubjectState {
        version: Some(1_763_719_200_000_000_000),
        at_ms: Some(100),
        ..SubjectState::default()
    };
    u1.scores.insert("humanity".into(), 12.5);
    u1.fired_ms.insert("quarantine".into(), 100);
    batch.subjects.insert("dregs/u1".into(), u1);
    batch
        .subjects
        .insert("dregs/u2".into(), SubjectState::default());
    batch
        .decisions
        .push(record("dregs/e1", Some("dregs/u1"), "acted", 100));
    batch
        .decisions
        .push(record("dregs/e2", None, "no_subject", 101));
    batch
        .decisions
        .push(record("dregs/e3", Some("dregs/u2"), "dead_lettered", 102));
    // Archived in delivery order: e3 before e1.
    for (key, subject) in [("dregs/e3", "dregs/u2"), ("dregs/e1", "dregs/u1")] {
        batch.archive.push(ArchivedEvent {
            event_key: key.into(),
            provider: "dregs".into(),
            event_type: "identity.scored".into(),
            event_id: key.trim_start_matches("dregs/").into(),
            subject_key: Some(subject.into()),
            version: Some(7),
            received_ms: 99,
            body: format!("{{\"id\":\"{key}\"}}"),
        });
    }
    sqlite.commit(&batch).unwrap();
    sqlite
        .restore_done(&[("dregs/e1/quarantine/quarantine".to_owned(), 100)])
        .unwrap();
    let before = rows(&*sqlite);
    drop(sqlite);

    let mut exported = Vec::new();
    let counts = export(&file, &mut exported).unwrap();
    let expected = Counts {
        subjects: 2,
        done: 1,
        decisions: 3,
        archived: 2,
        labels: 0,
    };
    assert_eq!(counts, expected);
    assert_eq!(String::from_utf8_lossy(&exported).lines().count(), 8);
    assert_eq!(import(&pg, &mut exported.as_slice()).unwrap(), expected);

    // Row for row the same, and what the worker asks of the store answers the same.
    let postgres = runtime.block_on(state::open(&pg.state)).unwrap();
    assert_eq!(rows(&*postgres), before);
    // The archive in its delivery order, each event with its record when asked.
    let mut replayed = Vec::new();
    let query = ReplayQuery {
        subject_key: None,
        recorded_from: Some(0),
    };
    postgres
        .replay(&query, &mut |r| {
            replayed.push((r.event.event_key, r.recorded.map(|(outcome, _)| outcome)));
            Ok(())
        })
        .unwrap();
    assert_eq!(
        replayed,
        [
            ("dregs/e3".to_owned(), Some("dead_lettered".to_owned())),
            ("dregs/e1".to_owned(), Some("acted".to_owned()))
        ]
    );
    let keys = ["dregs/e1", "dregs/e2", "dregs/e3"].map(str::to_owned);
    assert_eq!(
        postgres.decided(&keys).unwrap(),
        set(&["dregs/e1", "dregs/e2"])
    );
    assert_eq!(
        postgres
            .done_among(&["dregs/e1/quarantine/quarantine".to_owned()])
            .unwrap()
            .len(),
        1
    );

    // Into a store that already decided something: refused, nothing written.
    let again = import(&pg, &mut exported.as_slice())
        .unwrap_err()
        .to_string();
    assert!(again.contains("already holds decision records"), "{again}");
    assert_eq!(rows(&*postgres), before);
    // A line that is not a row is named, and nothing after it is written.
    let other = runtime.block_on(Schema::new());
    let fresh = rules_with_state(&format!("url = \"{}\"", other.url()));
    let bad = import(
        &fresh,
        &mut "{\"kind\":\"done\",\"key\":\"k\",\"at_ms\":1}\nnot json\n".as_bytes(),
    )
    .unwrap_err();
    assert!(
        format!("{bad:#}").contains("line 2: not a row of a hookwarden state export"),
        "{bad:#}"
    );
    let fresh_store = runtime.block_on(state::open(&fresh.state)).unwrap();
    assert!(
        rows(&*fresh_store).is_empty(),
        "nothing of a broken export is written"
    );
    drop(fresh_store);
    drop(postgres);
    drop(runtime);
}
