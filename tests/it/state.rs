//! The worker's state store, the same contract held by both backends: the embedded SQLite
//! file and PostgreSQL (each test in a schema of its own, at 127.0.0.1:5432 or
//! `HOOKWARDEN_TEST_POSTGRES`). Then what only PostgreSQL has: its schema's versions, and
//! subjects locked across workers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hookwarden::worker::config::{Backend, StateConfig};
use hookwarden::worker::state::{
    self, Batch, DecisionRecord, PgOptions, Store, StoreError, SubjectState,
};

use crate::harness::tempdir;
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

#[tokio::test]
async fn the_embedded_store_keeps_the_contract() {
    let dir = tempdir::Dir::new();
    let config = StateConfig {
        backend: Backend::Sqlite(dir.path.join("worker.db")),
        retention: Duration::from_secs(3600),
    };
    let store = state::open(&config).await.unwrap();
    blocking(move || contract(&*store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_keeps_the_same_contract() {
    let schema = Schema::new().await;
    let store = open_postgres(&schema).await.unwrap();
    blocking(move || contract(&*store)).await;
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
            .texts("SELECT version::text FROM hookwarden_schema")
            .await,
        [known.to_string()]
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
    tokio::time::sleep(Duration::from_millis(500)).await;
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
