//! [`SqliteStore`]: the embedded store, SQLite in WAL mode, for one worker on one host.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Activity, Admission, ArchiveSummary, ArchivedEvent, Batch, Bound, Browse, DecisionRecord,
    Exported, FINAL, Label, LabelVerdict, ReplayQuery, Replayed, SeenRow, Store, StoreError,
    SubjectLock, SubjectState, TRIP_SUBJECTS, Trip, cutoff, now_ms, window_start,
};
use crate::worker::rules::Limit;

/// SQLite in WAL mode with `synchronous=NORMAL`: a commit survives a killed process (the
/// WAL is in the OS page cache); a power loss can lose the last commits, which redelivery
/// then replays (done-marks and Idempotency-Keys keep that from repeating actions).
pub struct SqliteStore {
    connection: Mutex<Connection>,
    /// The file, for the web view's own read-only connection.
    path: std::path::PathBuf,
    /// Opened at the web view's first read: a connection of its own, so that a page never
    /// waits for a batch's commit nor holds one up (WAL lets readers and the writer run
    /// together), and read-only, so that it cannot change what it shows.
    viewer: Mutex<Option<Connection>>,
}

/// Small-row tables are `WITHOUT ROWID`: one B-tree per table keyed by the primary key, so a
/// done-mark or a subject upsert writes one tree instead of a table and its index (about half
/// of the done-marks' cost in the profile). Decision records are large and keep a rowid.
/// Files made before this keep their tables; the statements below work on both.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subjects (
    key TEXT PRIMARY KEY,
    version INTEGER,
    scores TEXT NOT NULL,
    at_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fired (
    subject TEXT NOT NULL,
    rule TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (subject, rule)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS done (
    key TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decisions (
    event_key TEXT PRIMARY KEY,
    subject_key TEXT,
    outcome TEXT NOT NULL,
    record TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_subject ON decisions (subject_key, at_ms);
CREATE INDEX IF NOT EXISTS decisions_at ON decisions (at_ms);
CREATE INDEX IF NOT EXISTS decisions_dead ON decisions (at_ms) WHERE outcome = 'dead_lettered';
CREATE TABLE IF NOT EXISTS archive (
    seq INTEGER PRIMARY KEY,
    event_key TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL,
    type TEXT NOT NULL,
    event_id TEXT NOT NULL,
    subject_key TEXT,
    version INTEGER,
    received_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS archive_size (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rule_acts (
    rule TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    subject TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rule_acts_rule ON rule_acts (rule, at_ms);
CREATE TABLE IF NOT EXISTS last_seen (
    key TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    silent_since_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS labels (
    event_key TEXT NOT NULL,
    rule TEXT NOT NULL,
    verdict TEXT NOT NULL,
    note TEXT,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (event_key, rule)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trips (
    rule TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    per_ms INTEGER NOT NULL,
    subjects TEXT NOT NULL
);
";

impl SqliteStore {
    /// Opens (creating) the store at `path`.
    ///
    /// # Errors
    /// The file cannot be opened or is not a hookwarden store.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_sized(path, true)
    }

    /// Opens the store for an operator's command: as [`SqliteStore::open`], but reading
    /// through a small page cache and no memory map. A command reads a table once from end
    /// to end (a backtest, an export), where the worker's map would only have grown the
    /// command's resident memory by as much of the file as it read.
    ///
    /// # Errors
    /// The file cannot be opened or is not a hookwarden store.
    pub fn open_for_command(path: &Path) -> Result<Self, StoreError> {
        Self::open_sized(path, false)
    }

    fn open_sized(path: &Path, worker: bool) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        // Pages kept in memory (32 MiB) and read through a map (up to 256 MiB) rather than a
        // `pread` per page: with many subjects the tables outgrow SQLite's default 2 MiB cache,
        // and every lookup and upsert went back to the kernel (about 8 % of the worker's CPU
        // per event in `benches/worker.sh`).
        if worker {
            connection.pragma_update(None, "cache_size", -32768)?;
            connection.pragma_update(None, "mmap_size", 268_435_456)?;
        } else {
            connection.pragma_update(None, "cache_size", -4096)?;
        }
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.execute_batch(SCHEMA)?;
        // The archive's body bytes are counted as events come and go, so that keeping it under
        // `max_bytes` never reads the whole table; counted once here for a file without it.
        let counted = connection
            .prepare("SELECT 1 FROM archive_size WHERE id = 1")?
            .exists([])?;
        if !counted {
            connection.execute(
                "INSERT INTO archive_size (id, bytes)
                 SELECT 1, coalesce(sum(length(CAST(body AS BLOB))), 0) FROM archive",
                [],
            )?;
        }
        Ok(Self {
            connection: Mutex::new(connection),
            path: path.to_owned(),
            viewer: Mutex::new(None),
        })
    }

    /// Runs `f` on the web view's read-only connection, opening it first if need be.
    fn view<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.viewer.lock().map_err(|_| StoreError::Poisoned)?;
        if guard.is_none() {
            let connection = Connection::open_with_flags(
                &self.path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            connection.busy_timeout(Duration::from_secs(5))?;
            connection.pragma_update(None, "cache_size", -8192)?;
            *guard = Some(connection);
        }
        match guard.as_ref() {
            Some(connection) => f(connection),
            None => Err(StoreError::Poisoned),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.connection.lock().map_err(|_| StoreError::Poisoned)?;
        f(&mut guard)
    }

    /// Runs the lookups of `f` in one read transaction: one lock taken for all of them, where
    /// each statement on its own would take and release the database's locks again (the
    /// `fcntl` calls were a visible slice of the worker's profile).
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }
}

impl Store for SqliteStore {
    fn lock_subjects(&self, _keys: &[String]) -> Result<SubjectLock, StoreError> {
        // One worker per file, whose batches in flight keep subject order among themselves
        // ([`crate::worker::gate`]): nothing to wait for here.
        Ok(SubjectLock::none())
    }

    fn load_subjects(&self, keys: &[String]) -> Result<HashMap<String, SubjectState>, StoreError> {
        self.read(|c| {
            let mut out = HashMap::new();
            let mut subject =
                c.prepare_cached("SELECT version, scores, at_ms FROM subjects WHERE key = ?1")?;
            let mut fired = c.prepare_cached("SELECT rule, at_ms FROM fired WHERE subject = ?1")?;
            for key in keys {
                let row = subject
                    .query_row(params![key], |r| {
                        Ok((
                            r.get::<_, Option<i64>>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<i64>>(2)?,
                        ))
                    })
                    .optional()?;
                let mut state = match row {
                    Some((version, scores, at_ms)) => SubjectState {
                        version,
                        scores: serde_json::from_str(&scores)?,
                        at_ms,
                        fired_ms: BTreeMap::new(),
                    },
                    None => SubjectState::default(),
                };
                let rows = fired.query_map(params![key], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })?;
                for row in rows {
                    let (rule, at) = row?;
                    state.fired_ms.insert(rule, at);
                }
                if state != SubjectState::default() {
                    out.insert(key.clone(), state);
                }
            }
            Ok(out)
        })
    }

    fn decided(&self, event_keys: &[String]) -> Result<HashSet<String>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT 1 FROM decisions WHERE event_key = ?1 AND {FINAL}"
            ))?;
            let mut out = HashSet::new();
            for key in event_keys {
                if stmt.exists(params![key])? {
                    out.insert(key.clone());
                }
            }
            Ok(out)
        })
    }

    fn done_among(&self, keys: &[String]) -> Result<HashSet<String>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM done WHERE key = ?1")?;
            let mut out = HashSet::new();
            for key in keys {
                if stmt.exists(params![key])? {
                    out.insert(key.clone());
                }
            }
            Ok(out)
        })
    }

    fn mark_done(&self, keys: &[String]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt =
                    tx.prepare_cached("INSERT OR IGNORE INTO done (key, at_ms) VALUES (?1, ?2)")?;
                let now = now_ms();
                for key in keys {
                    stmt.execute(params![key, now])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut subject = tx.prepare_cached(
                    "INSERT INTO subjects (key, version, scores, at_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (key) DO UPDATE SET version = excluded.version,
                       scores = excluded.scores, at_ms = excluded.at_ms",
                )?;
                let mut fired = tx.prepare_cached(
                    "INSERT INTO fired (subject, rule, at_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (subject, rule) DO UPDATE SET at_ms = excluded.at_ms",
                )?;
                for (key, state) in &batch.subjects {
                    subject.execute(params![
                        key,
                        state.version,
                        serde_json::to_string(&state.scores)?,
                        state.at_ms
                    ])?;
                    for (rule, at) in &state.fired_ms {
                        fired.execute(params![key, rule, at])?;
                    }
                }
                let mut decision = tx.prepare_cached(
                    "INSERT INTO decisions (event_key, subject_key, outcome, record, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (event_key) DO UPDATE SET subject_key = excluded.subject_key,
                       outcome = excluded.outcome, record = excluded.record, at_ms = excluded.at_ms
                     WHERE decisions.outcome = 'dead_lettered'",
                )?;
                for d in &batch.decisions {
                    decision.execute(params![
                        d.event_key,
                        d.subject_key,
                        d.outcome,
                        d.record.to_string(),
                        d.at_ms
                    ])?;
                }
                if !batch.archive.is_empty() {
                    let mut archive = tx.prepare_cached(
                        "INSERT OR IGNORE INTO archive (event_key, provider, type, event_id,
                           subject_key, version, received_ms, body)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )?;
                    let mut added = 0i64;
                    for a in &batch.archive {
                        let inserted = archive.execute(params![
                            a.event_key,
                            a.provider,
                            a.event_type,
                            a.event_id,
                            a.subject_key,
                            a.version,
                            a.received_ms,
                            a.body
                        ])?;
                        if inserted == 1 {
                            added += i64::try_from(a.body.len()).unwrap_or(i64::MAX);
                        }
                    }
                    tx.prepare_cached("UPDATE archive_size SET bytes = bytes + ?1 WHERE id = 1")?
                        .execute(params![added])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn decisions(
        &self,
        event_key: Option<&str>,
        subject_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DecisionRecord>, StoreError> {
        self.with(|c| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut stmt = c.prepare_cached(
                "SELECT event_key, subject_key, outcome, record, at_ms FROM decisions
                 WHERE (?1 IS NULL OR event_key = ?1) AND (?2 IS NULL OR subject_key = ?2)
                 ORDER BY at_ms DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![event_key, subject_key, limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (event_key, subject_key, outcome, record, at_ms) = row?;
                out.push(DecisionRecord {
                    event_key,
                    subject_key,
                    outcome,
                    record: serde_json::from_str(&record)?,
                    at_ms,
                });
            }
            Ok(out)
        })
    }

    fn browse(&self, query: &Browse) -> Result<Vec<DecisionRecord>, StoreError> {
        let (sql, values) = query.sql(|n| format!("?{n}"));
        self.view(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let values = values.iter().map(|v| match v {
                Bound::Text(text) => rusqlite::types::Value::Text(text.clone()),
                Bound::Int(int) => rusqlite::types::Value::Integer(*int),
            });
            let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let record: String = r.get(3)?;
                out.push(DecisionRecord {
                    event_key: r.get(0)?,
                    subject_key: r.get(1)?,
                    outcome: r.get(2)?,
                    record: serde_json::from_str(&record)?,
                    at_ms: r.get(4)?,
                });
            }
            Ok(out)
        })
    }

    fn activity(&self, since_ms: i64) -> Result<Vec<Activity>, StoreError> {
        self.view(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT at_ms / 60000 * 60000, outcome, count(*) FROM decisions
                 WHERE at_ms >= ?1 GROUP BY 1, 2 ORDER BY 1, 2",
            )?;
            let mut rows = stmt.query(params![since_ms])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(Activity {
                    minute_ms: r.get(0)?,
                    outcome: r.get(1)?,
                    count: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                });
            }
            Ok(out)
        })
    }

    fn archived(&self, event_keys: &[String]) -> Result<Vec<ArchivedEvent>, StoreError> {
        self.view(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT event_key, provider, type, event_id, subject_key, version, received_ms,
                   body FROM archive WHERE event_key = ?1",
            )?;
            let mut out = Vec::new();
            for key in event_keys {
                let mut rows = stmt.query(params![key])?;
                if let Some(r) = rows.next()? {
                    out.push(ArchivedEvent {
                        event_key: r.get(0)?,
                        provider: r.get(1)?,
                        event_type: r.get(2)?,
                        event_id: r.get(3)?,
                        subject_key: r.get(4)?,
                        version: r.get(5)?,
                        received_ms: r.get(6)?,
                        body: r.get(7)?,
                    });
                }
            }
            Ok(out)
        })
    }

    fn export(
        &self,
        each: &mut dyn FnMut(Exported) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.read(|c| {
            // A subject's firings are few: gathered first, then handed out with the subject.
            let mut fired: HashMap<String, BTreeMap<String, i64>> = HashMap::new();
            let mut stmt = c.prepare("SELECT subject, rule, at_ms FROM fired")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                fired
                    .entry(r.get(0)?)
                    .or_default()
                    .insert(r.get(1)?, r.get(2)?);
            }
            let mut stmt = c.prepare("SELECT key, version, scores, at_ms FROM subjects")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let key: String = r.get(0)?;
                let scores: String = r.get(2)?;
                let state = SubjectState {
                    version: r.get(1)?,
                    scores: serde_json::from_str(&scores)?,
                    at_ms: r.get(3)?,
                    fired_ms: fired.remove(&key).unwrap_or_default(),
                };
                each(Exported::Subject { key, state })?;
            }
            let mut stmt = c.prepare("SELECT key, at_ms FROM done")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                each(Exported::Done {
                    key: r.get(0)?,
                    at_ms: r.get(1)?,
                })?;
            }
            let mut stmt = c.prepare(
                "SELECT event_key, subject_key, outcome, record, at_ms FROM decisions
                 ORDER BY at_ms, event_key",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let record: String = r.get(3)?;
                each(Exported::Decision(DecisionRecord {
                    event_key: r.get(0)?,
                    subject_key: r.get(1)?,
                    outcome: r.get(2)?,
                    record: serde_json::from_str(&record)?,
                    at_ms: r.get(4)?,
                }))?;
            }
            let mut stmt = c.prepare(&format!("{ARCHIVE_ROW} ORDER BY seq"))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                each(Exported::Archived(archived(r)?))?;
            }
            for label in labels(c)? {
                each(Exported::Label(label))?;
            }
            Ok(())
        })
    }

    fn restore_done(&self, marks: &[(String, i64)]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt =
                    tx.prepare_cached("INSERT OR IGNORE INTO done (key, at_ms) VALUES (?1, ?2)")?;
                for (key, at) in marks {
                    stmt.execute(params![key, at])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn prune(&self, retention: Duration) -> Result<usize, StoreError> {
        let cutoff =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        self.with(|c| {
            let mut removed =
                c.execute("DELETE FROM decisions WHERE at_ms < ?1", params![cutoff])?;
            removed += c.execute("DELETE FROM done WHERE at_ms < ?1", params![cutoff])?;
            Ok(removed)
        })
    }

    fn prune_archive(
        &self,
        retention: Duration,
        max_bytes: Option<u64>,
    ) -> Result<usize, StoreError> {
        let cutoff = cutoff(retention);
        // In chunks, each its own transaction: the worker's batches take the connection in
        // between, rather than waiting for a day's worth of events to go at once.
        let mut removed = 0;
        loop {
            let n = self.delete_oldest(cutoff)?;
            removed += n;
            if n < PRUNE_CHUNK {
                break;
            }
        }
        if let Some(max) = max_bytes {
            let max = i64::try_from(max).unwrap_or(i64::MAX);
            loop {
                let n = self.delete_over(max)?;
                removed += n;
                if n < PRUNE_CHUNK {
                    break;
                }
            }
        }
        Ok(removed)
    }

    fn admit(
        &self,
        rule: &str,
        subject: &str,
        now_ms: i64,
        limit: &Limit,
    ) -> Result<Admission, StoreError> {
        self.with(|c| {
            // Written after it reads: take the write lock first, so another process's write
            // in between (a reset) makes this wait instead of fail.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let tripped = tx
                .prepare_cached("SELECT 1 FROM trips WHERE rule = ?1")?
                .exists(params![rule])?;
            if tripped {
                return Ok(Admission::Tripped(None));
            }
            let start = window_start(now_ms, limit);
            tx.prepare_cached("DELETE FROM rule_acts WHERE rule = ?1 AND at_ms <= ?2")?
                .execute(params![rule, start])?;
            let count: i64 = tx
                .prepare_cached("SELECT count(*) FROM rule_acts WHERE rule = ?1")?
                .query_row(params![rule], |r| r.get(0))?;
            let count = u64::try_from(count).unwrap_or(0);
            let admission = if count < limit.actions {
                tx.prepare_cached(
                    "INSERT INTO rule_acts (rule, at_ms, subject) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![rule, now_ms, subject])?;
                Admission::Granted
            } else {
                let mut subjects: Vec<String> = tx
                    .prepare_cached(
                        "SELECT subject FROM rule_acts WHERE rule = ?1 ORDER BY at_ms LIMIT ?2",
                    )?
                    .query_map(params![rule, TRIP_SUBJECTS as i64 - 1], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                subjects.push(subject.to_owned());
                let trip = Trip {
                    rule: rule.to_owned(),
                    at_ms: now_ms,
                    count: count + 1,
                    per_ms: i64::try_from(limit.per.as_millis()).unwrap_or(i64::MAX),
                    subjects,
                };
                tx.execute(
                    "INSERT INTO trips (rule, at_ms, count, per_ms, subjects)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        trip.rule,
                        trip.at_ms,
                        i64::try_from(trip.count).unwrap_or(i64::MAX),
                        trip.per_ms,
                        serde_json::to_string(&trip.subjects)?
                    ],
                )?;
                Admission::Tripped(Some(trip))
            };
            tx.commit()?;
            Ok(admission)
        })
    }

    fn trips(&self) -> Result<Vec<Trip>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT rule, at_ms, count, per_ms, subjects FROM trips ORDER BY at_ms, rule",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (rule, at_ms, count, per_ms, subjects) = row?;
                out.push(Trip {
                    rule,
                    at_ms,
                    count: u64::try_from(count).unwrap_or(0),
                    per_ms,
                    subjects: serde_json::from_str(&subjects)?,
                });
            }
            Ok(out)
        })
    }

    fn reset_trip(&self, rule: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let tripped = tx.execute("DELETE FROM trips WHERE rule = ?1", params![rule])? > 0;
            tx.execute("DELETE FROM rule_acts WHERE rule = ?1", params![rule])?;
            tx.commit()?;
            Ok(tripped)
        })
    }

    fn label(&self, label: &Label) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO labels (event_key, rule, verdict, note, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (event_key, rule) DO UPDATE SET verdict = excluded.verdict,
                   note = excluded.note, at_ms = excluded.at_ms",
                params![
                    label.event_key,
                    label.rule,
                    label.verdict.as_str(),
                    label.note,
                    label.at_ms
                ],
            )?;
            Ok(())
        })
    }

    fn labels(&self) -> Result<Vec<Label>, StoreError> {
        self.read(labels)
    }

    fn scan_decisions(
        &self,
        since_ms: i64,
        each: &mut dyn FnMut(DecisionRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT event_key, subject_key, outcome, record, at_ms FROM decisions
                 WHERE at_ms >= ?1 ORDER BY at_ms",
            )?;
            let mut rows = stmt.query(params![since_ms])?;
            while let Some(r) = rows.next()? {
                let record: String = r.get(3)?;
                each(DecisionRecord {
                    event_key: r.get(0)?,
                    subject_key: r.get(1)?,
                    outcome: r.get(2)?,
                    record: serde_json::from_str(&record)?,
                    at_ms: r.get(4)?,
                })?;
            }
            Ok(())
        })
    }

    fn start_seen(&self, keys: &[String], now_ms: i64) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO last_seen (key, at_ms) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                )?;
                for key in keys {
                    stmt.execute(params![key, now_ms])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn touch_seen(&self, seen: &[(String, i64)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO last_seen (key, at_ms) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET at_ms = max(at_ms, excluded.at_ms)",
                )?;
                for (key, at) in seen {
                    stmt.execute(params![key, at])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn seen(&self) -> Result<Vec<SeenRow>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT key, at_ms, silent_since_ms FROM last_seen ORDER BY key")?;
            let rows = stmt.query_map([], |r| {
                Ok(SeenRow {
                    key: r.get(0)?,
                    at_ms: r.get(1)?,
                    silent_since_ms: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn mark_silent(&self, key: &str, now_ms: i64, last_seen: i64) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE last_seen SET silent_since_ms = ?2
                 WHERE key = ?1 AND silent_since_ms IS NULL AND at_ms <= ?3",
                params![key, now_ms, last_seen],
            )? == 1)
        })
    }

    fn reset_silence(
        &self,
        key: &str,
        marked: Option<i64>,
        back_to: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE last_seen SET silent_since_ms = ?3 WHERE key = ?1 AND silent_since_ms IS ?2",
                params![key, marked, back_to],
            )? == 1)
        })
    }

    fn mark_recovered(&self, key: &str, silent_since_ms: i64) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE last_seen SET silent_since_ms = NULL
                 WHERE key = ?1 AND silent_since_ms = ?2 AND at_ms > ?2",
                params![key, silent_since_ms],
            )? == 1)
        })
    }

    fn archive_summary(&self) -> Result<ArchiveSummary, StoreError> {
        self.read(|c| {
            let (events, bytes, oldest, newest) = c.query_row(
                "SELECT count(*), (SELECT bytes FROM archive_size WHERE id = 1), min(received_ms),
                   max(received_ms) FROM archive",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                    ))
                },
            )?;
            Ok(ArchiveSummary {
                events: u64::try_from(events).unwrap_or(0),
                body_bytes: u64::try_from(bytes).unwrap_or(0),
                oldest_ms: oldest,
                newest_ms: newest,
            })
        })
    }

    fn replay(
        &self,
        query: &ReplayQuery,
        each: &mut dyn FnMut(Replayed) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.read(|c| {
            // Records only where asked for: outside the window only the events matter.
            let mut stmt = c.prepare(
                "SELECT a.seq, a.event_key, a.provider, a.type, a.event_id, a.subject_key,
                   a.version, a.received_ms, a.body, d.outcome, d.record
                 FROM archive a LEFT JOIN decisions d
                   ON ?2 IS NOT NULL AND a.received_ms >= ?2 AND d.event_key = a.event_key
                 WHERE ?1 IS NULL OR a.subject_key = ?1 OR a.subject_key = a.provider || '/' || ?1
                 ORDER BY a.seq",
            )?;
            let mut rows = stmt.query(params![query.subject_key, query.recorded_from])?;
            while let Some(r) = rows.next()? {
                let outcome: Option<String> = r.get(9)?;
                let record: Option<String> = r.get(10)?;
                each(Replayed {
                    seq: r.get(0)?,
                    event: ArchivedEvent {
                        event_key: r.get(1)?,
                        provider: r.get(2)?,
                        event_type: r.get(3)?,
                        event_id: r.get(4)?,
                        subject_key: r.get(5)?,
                        version: r.get(6)?,
                        received_ms: r.get(7)?,
                        body: r.get(8)?,
                    },
                    recorded: outcome.zip(record),
                })?;
            }
            Ok(())
        })
    }
}

fn labels(c: &Connection) -> Result<Vec<Label>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT event_key, rule, verdict, note, at_ms FROM labels ORDER BY at_ms, event_key, rule",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (event_key, rule, verdict, note, at_ms) = row?;
        // A verdict this build does not know is skipped, not fatal: labels are advisory.
        if let Some(verdict) = LabelVerdict::parse(&verdict) {
            out.push(Label {
                event_key,
                rule,
                verdict,
                note,
                at_ms,
            });
        }
    }
    Ok(out)
}

/// Archived events deleted per transaction when pruning.
const PRUNE_CHUNK: usize = 2000;

impl SqliteStore {
    /// Deletes up to [`PRUNE_CHUNK`] of the oldest archived events received before the first
    /// event received at or after `received_before` (receive times follow delivery order
    /// closely but not exactly: several listeners, clocks in seconds), and counts their bytes
    /// off. Returns how many went.
    fn delete_oldest(&self, received_before: i64) -> Result<usize, StoreError> {
        self.delete_where(
            &format!(
                "seq IN (SELECT seq FROM archive WHERE seq < coalesce(
                   (SELECT seq FROM archive WHERE received_ms >= ?1 ORDER BY seq LIMIT 1),
                   (SELECT max(seq) + 1 FROM archive))
                 ORDER BY seq LIMIT {PRUNE_CHUNK})"
            ),
            received_before,
        )
    }

    /// Deletes the oldest archived events, up to [`PRUNE_CHUNK`] of them, whose bodies take
    /// the archive over `max` bytes: the newest that fit stay. Returns how many went.
    fn delete_over(&self, max: i64) -> Result<usize, StoreError> {
        let last = self.with(|c| {
            let bytes: i64 =
                c.query_row("SELECT bytes FROM archive_size WHERE id = 1", [], |r| r.get(0))?;
            let excess = bytes.saturating_sub(max);
            if excess <= 0 {
                return Ok(None);
            }
            let mut stmt = c.prepare_cached(&format!(
                "SELECT seq, length(CAST(body AS BLOB)) FROM archive ORDER BY seq LIMIT {PRUNE_CHUNK}"
            ))?;
            let mut rows = stmt.query([])?;
            let (mut freed, mut last) = (0i64, None);
            while let Some(r) = rows.next()? {
                last = Some(r.get::<_, i64>(0)?);
                freed += r.get::<_, i64>(1)?;
                if freed >= excess {
                    break;
                }
            }
            Ok(last)
        })?;
        match last {
            Some(last) => self.delete_where("seq <= ?1", last),
            None => Ok(0),
        }
    }

    /// Deletes the archived events `condition` (with `?1` bound to `value`) selects, in one
    /// transaction that counts their bytes off. Returns how many went.
    fn delete_where(&self, condition: &str, value: i64) -> Result<usize, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let (removed, bytes) = {
                let mut stmt = tx.prepare_cached(&format!(
                    "DELETE FROM archive WHERE {condition} RETURNING length(CAST(body AS BLOB))"
                ))?;
                let mut rows = stmt.query(params![value])?;
                let (mut removed, mut bytes) = (0usize, 0i64);
                while let Some(r) = rows.next()? {
                    removed += 1;
                    bytes += r.get::<_, i64>(0)?;
                }
                (removed, bytes)
            };
            tx.execute(
                "UPDATE archive_size SET bytes = max(bytes - ?1, 0) WHERE id = 1",
                params![bytes],
            )?;
            tx.commit()?;
            Ok(removed)
        })
    }
}

/// The columns of an archived event, for [`archived`].
const ARCHIVE_ROW: &str = "SELECT event_key, provider, type, event_id, subject_key, version,
    received_ms, body FROM archive";

fn archived(r: &rusqlite::Row<'_>) -> Result<ArchivedEvent, StoreError> {
    Ok(ArchivedEvent {
        event_key: r.get(0)?,
        provider: r.get(1)?,
        event_type: r.get(2)?,
        event_id: r.get(3)?,
        subject_key: r.get(4)?,
        version: r.get(5)?,
        received_ms: r.get(6)?,
        body: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (SqliteStore, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("hw-state-{}.db", uuid::Uuid::new_v4().simple()));
        (SqliteStore::open(&path).unwrap(), path)
    }

    #[test]
    fn subjects_decisions_and_done_marks_round_trip() {
        let (s, path) = store();
        assert!(s.load_subjects(&["dregs/u1".into()]).unwrap().is_empty());
        let mut batch = Batch::default();
        let mut state = SubjectState {
            version: Some(7),
            at_ms: Some(1),
            ..SubjectState::default()
        };
        state.scores.insert("humanity".into(), 22.0);
        state.fired_ms.insert("quarantine".into(), 5);
        batch.subjects.insert("dregs/u1".into(), state.clone());
        batch.decisions.push(DecisionRecord {
            event_key: "dregs/e1".into(),
            subject_key: Some("dregs/u1".into()),
            outcome: "acted".into(),
            record: serde_json::json!({"rules": []}),
            at_ms: 10,
        });
        batch.decisions.push(DecisionRecord {
            event_key: "dregs/e2".into(),
            subject_key: Some("dregs/u1".into()),
            outcome: "dead_lettered".into(),
            record: serde_json::json!({}),
            at_ms: 11,
        });
        s.commit(&batch).unwrap();
        let loaded = s.load_subjects(&["dregs/u1".into()]).unwrap();
        assert_eq!(loaded["dregs/u1"], state);
        // A dead-lettered event is not final: its replay must be handled.
        let decided = s.decided(&["dregs/e1".into(), "dregs/e2".into()]).unwrap();
        assert_eq!(decided, HashSet::from(["dregs/e1".to_owned()]));
        let keys = ["k".to_owned(), "j".to_owned()];
        assert!(s.done_among(&keys).unwrap().is_empty());
        s.mark_done(&keys[..1]).unwrap();
        s.mark_done(&keys[..1]).unwrap();
        assert_eq!(
            s.done_among(&keys).unwrap(),
            HashSet::from(["k".to_owned()])
        );
        assert_eq!(s.decisions(None, Some("dregs/u1"), 10).unwrap().len(), 2);
        assert_eq!(
            s.decisions(Some("dregs/e1"), None, 10).unwrap()[0].outcome,
            "acted"
        );
        // Old records go; done-marks too.
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.prune(Duration::ZERO).unwrap(), 3);
        drop(s);
        let _ = std::fs::remove_file(&path);
    }
}
