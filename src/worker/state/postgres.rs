//! [`PgStore`]: the worker's state in PostgreSQL, for several workers sharing one database.
//! The tables are the embedded store's; the schema is created and migrated at start
//! ([`super::migrate`]). Calls block like the embedded store's (the worker makes them from
//! `spawn_blocking`): each runs its queries on the runtime the store was opened on.
//!
//! Per-subject order across workers: a batch takes a session advisory lock per subject key
//! ([`Store::lock_subjects`]) before it reads what was decided and the subjects' state, and
//! holds it until its decisions are committed; another worker's batch with one of those
//! subjects waits. Locks are taken in key-hash order, so two batches never wait on each other.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tokio_postgres::Row;

use super::{
    Activity, Admission, ArchiveSummary, ArchivedEvent, Batch, Bound, Browse, DecisionRecord,
    Exported, FINAL, Label, LabelVerdict, ReplayQuery, Replayed, SeenRow, Store, StoreError,
    SubjectLock, SubjectState, TRIP_SUBJECTS, Trip, cutoff, migrate, now_ms, window_start,
};
use crate::worker::rules::Limit;

/// How the store reaches PostgreSQL (`[state] url`, `pool_size`, `statement_timeout`).
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// libpq URL or key=value string.
    pub url: String,
    /// Connections kept at most.
    pub pool_size: usize,
    /// Longest a statement may run, and a connection attempt or a wait for a pooled
    /// connection may take.
    pub statement_timeout: Duration,
}

/// Worker state in PostgreSQL.
pub struct PgStore {
    pool: Pool,
    handle: Handle,
    /// `statement_timeout`, restored on a connection after a lock wait.
    statement_timeout_ms: u128,
}

impl PgStore {
    /// Connects, and creates or migrates the schema.
    ///
    /// # Errors
    /// The URL does not parse, the database cannot be reached, or its schema is newer than
    /// this build knows.
    pub async fn open(options: &PgOptions) -> Result<Self, StoreError> {
        let store = Self::connect(options)?;
        let mut client = store.pool.get().await?;
        if let Err(err) = migrate::run(&mut client).await {
            // Never back into the pool mid-transaction or still holding the migration lock:
            // closing the connection rolls back and unlocks.
            drop(Object::take(client));
            return Err(err);
        }
        Ok(store)
    }

    /// Connects to a schema a worker made, leaving it as it is.
    ///
    /// # Errors
    /// The database cannot be reached, or its schema is missing or of another version.
    pub async fn open_as_is(options: &PgOptions) -> Result<Self, StoreError> {
        let store = Self::connect(options)?;
        let client = store.pool.get().await?;
        migrate::check(&client).await?;
        Ok(store)
    }

    fn connect(options: &PgOptions) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config =
            options.url.parse().map_err(StoreError::Postgres)?;
        let timeout = options.statement_timeout;
        let millis = timeout.as_millis();
        // A statement timeout set at connection start holds for every statement on it,
        // added to whatever options the URL already carries (a search_path, say).
        let mut startup = config.get_options().unwrap_or_default().to_owned();
        // Plans are made for each execution: a prepared statement's generic plan is fixed once
        // its first runs are cheap, and on a new deployment that is while the tables are empty:
        // a sequential scan comparing every row with the batch's 256 keys, kept as the tables
        // grow (a single worker decided 2,400 events/s with it, in `benches/worker.sh`).
        startup.push_str(&format!(
            " -c statement_timeout={millis} -c plan_cache_mode=force_custom_plan \
             -c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"
        ));
        config.options(startup.trim());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        // A worker whose host dies holds its subjects' locks until its connections are known
        // dead: keepalives on both ends find that out in about a minute, not TCP's two hours.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        let manager = Manager::from_config(
            config,
            tls()?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|err| StoreError::Pool(err.to_string()))?;
        Ok(Self {
            pool,
            handle: Handle::current(),
            statement_timeout_ms: millis,
        })
    }

    /// Runs `f` with a pooled connection, on the store's runtime.
    fn run<T>(
        &self,
        f: impl AsyncFnOnce(&mut Object) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.handle.block_on(async {
            let mut client = self.pool.get().await?;
            f(&mut client).await
        })
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        match err {
            // The database's own refusal (or an unreachable host) reads as the driver says it.
            deadpool_postgres::PoolError::Backend(err) => Self::Postgres(err),
            other => Self::Pool(format!("no PostgreSQL connection: {other}")),
        }
    }
}

/// TLS for `sslmode=prefer|require`, verified against the system's roots like the worker's
/// HTTP client; `sslmode=disable` never uses it.
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|err| StoreError::Pool(format!("TLS setup: {err}")))?
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The advisory lock key of a subject: 64 bits of its SHA-256, the same in every worker.
fn lock_key(subject: &str) -> i64 {
    let digest = Sha256::digest(subject.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The class of the breakers' advisory locks (two 32-bit keys), apart from the subjects'
/// (one 64-bit key): a rule's lock never collides with a subject's. ("hwbr".)
const BREAKER_LOCKS: i32 = 0x6877_6272;

/// The second key of a rule's breaker lock: 32 bits of its name's SHA-256.
fn breaker_key(rule: &str) -> i32 {
    let digest = Sha256::digest(rule.as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A pooled connection holding advisory locks; dropping it unlocks and returns it to the pool.
struct Held {
    client: Option<Object>,
    handle: Handle,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let mut unlocking = Unlocking(Some(client));
            self.handle.spawn(async move {
                if let Some(client) = &unlocking.0
                    && client
                        .batch_execute("SELECT pg_advisory_unlock_all()")
                        .await
                        .is_ok()
                {
                    // Unlocked: back into the pool.
                    drop(unlocking.0.take());
                }
            });
        }
    }
}

/// A connection on its way to being unlocked. Whatever stops that (the unlock failed, the task
/// never ran because the runtime is shutting down) closes the connection instead of returning
/// it to the pool, and closing it releases its locks.
struct Unlocking(Option<Object>);

impl Drop for Unlocking {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(Object::take(client));
        }
    }
}

/// Longest a batch waits for another worker's batch to let go of a subject: far longer than a
/// batch takes (its actions' timeouts and retries), short enough that a worker stuck holding
/// locks shows as a failing store rather than a silent stall.
const LOCK_WAIT_MS: u64 = 600_000;

fn texts(rows: &[Row]) -> Result<HashSet<String>, StoreError> {
    rows.iter()
        .map(|r| r.try_get::<_, String>(0).map_err(StoreError::Postgres))
        .collect()
}

/// A batch as one column array per field, for one statement per table.
struct Columns {
    keys: Vec<String>,
    versions: Vec<Option<i64>>,
    scores: Vec<String>,
    subject_at: Vec<Option<i64>>,
    fired_subject: Vec<String>,
    fired_rule: Vec<String>,
    fired_at: Vec<i64>,
    event_keys: Vec<String>,
    subject_keys: Vec<Option<String>>,
    outcomes: Vec<String>,
    records: Vec<String>,
    at: Vec<i64>,
    archive: Archive,
}

/// The batch's archived events, one column array per field, in delivery order.
#[derive(Default)]
struct Archive {
    event_keys: Vec<String>,
    providers: Vec<String>,
    types: Vec<String>,
    event_ids: Vec<String>,
    subject_keys: Vec<Option<String>>,
    versions: Vec<Option<i64>>,
    received: Vec<i64>,
    bodies: Vec<String>,
}

impl Columns {
    fn of(batch: &Batch) -> Result<Self, StoreError> {
        // One event twice in a batch (no subject, so no per-subject duplicate check) is
        // recorded once, as the embedded store does: the first record, unless a later one
        // replaces a dead letter. An upsert may not touch a row twice in one statement.
        let mut kept: HashMap<&str, &DecisionRecord> = HashMap::new();
        for d in &batch.decisions {
            kept.entry(d.event_key.as_str())
                .and_modify(|first| {
                    if first.outcome == "dead_lettered" {
                        *first = d;
                    }
                })
                .or_insert(d);
        }
        // Rows in key order: two workers writing overlapping rows take their row locks in
        // the same order and never deadlock.
        let mut decisions: Vec<&DecisionRecord> = kept.into_values().collect();
        decisions.sort_by(|a, b| a.event_key.cmp(&b.event_key));
        let mut subjects: Vec<(&String, &SubjectState)> = batch.subjects.iter().collect();
        subjects.sort_by(|a, b| a.0.cmp(b.0));
        let mut columns = Self {
            keys: Vec::new(),
            versions: Vec::new(),
            scores: Vec::new(),
            subject_at: Vec::new(),
            fired_subject: Vec::new(),
            fired_rule: Vec::new(),
            fired_at: Vec::new(),
            event_keys: Vec::new(),
            subject_keys: Vec::new(),
            outcomes: Vec::new(),
            records: Vec::new(),
            at: Vec::new(),
            archive: Archive::default(),
        };
        for a in &batch.archive {
            let archive = &mut columns.archive;
            archive.event_keys.push(a.event_key.clone());
            archive.providers.push(a.provider.clone());
            archive.types.push(a.event_type.clone());
            archive.event_ids.push(a.event_id.clone());
            archive.subject_keys.push(a.subject_key.clone());
            archive.versions.push(a.version);
            archive.received.push(a.received_ms);
            archive.bodies.push(a.body.clone());
        }
        for (key, state) in subjects {
            columns.keys.push(key.clone());
            columns.versions.push(state.version);
            columns.scores.push(serde_json::to_string(&state.scores)?);
            columns.subject_at.push(state.at_ms);
            for (rule, at) in &state.fired_ms {
                columns.fired_subject.push(key.clone());
                columns.fired_rule.push(rule.clone());
                columns.fired_at.push(*at);
            }
        }
        for d in decisions {
            columns.event_keys.push(d.event_key.clone());
            columns.subject_keys.push(d.subject_key.clone());
            columns.outcomes.push(d.outcome.clone());
            columns.records.push(d.record.to_string());
            columns.at.push(d.at_ms);
        }
        Ok(columns)
    }

    /// Writes the batch in one transaction on `c`.
    async fn commit(&self, c: &mut Object) -> Result<(), StoreError> {
        let tx = c.transaction().await?;
        let subjects = tx
            .prepare_cached(
                "INSERT INTO subjects (key, version, scores, at_ms)
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[])
                 ON CONFLICT (key) DO UPDATE SET version = excluded.version,
                   scores = excluded.scores, at_ms = excluded.at_ms",
            )
            .await?;
        let fired = tx
            .prepare_cached(
                "INSERT INTO fired (subject, rule, at_ms)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
                 ON CONFLICT (subject, rule) DO UPDATE SET at_ms = excluded.at_ms",
            )
            .await?;
        let decided = tx
            .prepare_cached(
                "INSERT INTO decisions (event_key, subject_key, outcome, record, at_ms)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[])
                 ON CONFLICT (event_key) DO UPDATE SET subject_key = excluded.subject_key,
                   outcome = excluded.outcome, record = excluded.record, at_ms = excluded.at_ms
                 WHERE decisions.outcome = 'dead_lettered'",
            )
            .await?;
        if !self.keys.is_empty() {
            tx.execute(
                &subjects,
                &[&self.keys, &self.versions, &self.scores, &self.subject_at],
            )
            .await?;
        }
        if !self.fired_subject.is_empty() {
            tx.execute(
                &fired,
                &[&self.fired_subject, &self.fired_rule, &self.fired_at],
            )
            .await?;
        }
        if !self.event_keys.is_empty() {
            tx.execute(
                &decided,
                &[
                    &self.event_keys,
                    &self.subject_keys,
                    &self.outcomes,
                    &self.records,
                    &self.at,
                ],
            )
            .await?;
        }
        if !self.archive.event_keys.is_empty() {
            // Numbered in the order given (the ordinality), which is delivery order.
            let archive = tx
                .prepare_cached(
                    "INSERT INTO archive (event_key, provider, type, event_id, subject_key,
                       version, received_ms, body)
                     SELECT k, p, t, i, s, v, r, b FROM unnest($1::text[], $2::text[],
                       $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], $8::text[])
                       WITH ORDINALITY AS u(k, p, t, i, s, v, r, b, n)
                     ORDER BY n
                     ON CONFLICT (event_key) DO NOTHING",
                )
                .await?;
            let a = &self.archive;
            tx.execute(
                &archive,
                &[
                    &a.event_keys,
                    &a.providers,
                    &a.types,
                    &a.event_ids,
                    &a.subject_keys,
                    &a.versions,
                    &a.received,
                    &a.bodies,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl Store for PgStore {
    fn lock_subjects(&self, keys: &[String]) -> Result<SubjectLock, StoreError> {
        if keys.is_empty() {
            return Ok(SubjectLock::none());
        }
        let mut hashes: Vec<i64> = keys.iter().map(|k| lock_key(k)).collect();
        hashes.sort_unstable();
        hashes.dedup();
        // The locks are waited for longer than statement_timeout allows a statement (another
        // worker's batch runs its actions while holding them); the simple protocol sends the
        // three statements in one round trip, the keys written out (they are integers).
        let keys = hashes
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let restore = self.statement_timeout_ms;
        let sql = format!(
            "SET statement_timeout = {LOCK_WAIT_MS}; \
             SELECT pg_advisory_lock(k) FROM unnest('{{{keys}}}'::int8[]) AS k; \
             SET statement_timeout = {restore}"
        );
        let client = self.handle.block_on(async {
            let client = self.pool.get().await?;
            // unnest yields the array in order: the locks are taken in ascending order.
            match client.batch_execute(&sql).await {
                Ok(()) => Ok(client),
                Err(err) => {
                    // Some locks may be held: this connection must not be reused.
                    drop(Object::take(client));
                    Err(StoreError::Postgres(err))
                }
            }
        })?;
        Ok(SubjectLock::held(Held {
            client: Some(client),
            handle: self.handle.clone(),
        }))
    }

    fn load_subjects(&self, keys: &[String]) -> Result<HashMap<String, SubjectState>, StoreError> {
        self.run(async |c| {
            let subjects = c
                .prepare_cached(
                    "SELECT key, version, scores, at_ms FROM subjects WHERE key = ANY($1)",
                )
                .await?;
            let fired = c
                .prepare_cached("SELECT subject, rule, at_ms FROM fired WHERE subject = ANY($1)")
                .await?;
            let mut out: HashMap<String, SubjectState> = HashMap::new();
            for row in c.query(&subjects, &[&keys]).await? {
                let scores: String = row.try_get(2)?;
                out.insert(
                    row.try_get(0)?,
                    SubjectState {
                        version: row.try_get(1)?,
                        scores: serde_json::from_str(&scores)?,
                        at_ms: row.try_get(3)?,
                        fired_ms: Default::default(),
                    },
                );
            }
            for row in c.query(&fired, &[&keys]).await? {
                let subject: String = row.try_get(0)?;
                out.entry(subject)
                    .or_default()
                    .fired_ms
                    .insert(row.try_get(1)?, row.try_get(2)?);
            }
            Ok(out)
        })
    }

    fn decided(&self, event_keys: &[String]) -> Result<HashSet<String>, StoreError> {
        self.run(async |c| {
            let statement = c
                .prepare_cached(&format!(
                    "SELECT event_key FROM decisions WHERE event_key = ANY($1) AND {FINAL}"
                ))
                .await?;
            texts(&c.query(&statement, &[&event_keys]).await?)
        })
    }

    fn done_among(&self, keys: &[String]) -> Result<HashSet<String>, StoreError> {
        self.run(async |c| {
            let statement = c
                .prepare_cached("SELECT key FROM done WHERE key = ANY($1)")
                .await?;
            texts(&c.query(&statement, &[&keys]).await?)
        })
    }

    fn mark_done(&self, keys: &[String]) -> Result<(), StoreError> {
        self.run(async |c| {
            let statement = c
                .prepare_cached(
                    "INSERT INTO done (key, at_ms) SELECT k, $2 FROM unnest($1::text[]) AS k
                     ON CONFLICT (key) DO NOTHING",
                )
                .await?;
            c.execute(&statement, &[&keys, &now_ms()]).await?;
            Ok(())
        })
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let columns = Columns::of(batch)?;
        self.run(async |c| columns.commit(c).await)
    }

    fn commit_locked(&self, batch: &Batch, lock: &mut SubjectLock) -> Result<(), StoreError> {
        let columns = Columns::of(batch)?;
        match lock
            .guard_mut::<Held>()
            .and_then(|held| held.client.as_mut())
        {
            Some(client) => self.handle.block_on(columns.commit(client)),
            None => self.run(async |c| columns.commit(c).await),
        }
    }

    fn decisions(
        &self,
        event_key: Option<&str>,
        subject_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DecisionRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(async |c| {
            let statement = c
                .prepare_cached(
                    "SELECT event_key, subject_key, outcome, record, at_ms FROM decisions
                     WHERE ($1::text IS NULL OR event_key = $1)
                       AND ($2::text IS NULL OR subject_key = $2)
                     ORDER BY at_ms DESC LIMIT $3",
                )
                .await?;
            let mut out = Vec::new();
            for row in c
                .query(&statement, &[&event_key, &subject_key, &limit])
                .await?
            {
                let record: String = row.try_get(3)?;
                out.push(DecisionRecord {
                    event_key: row.try_get(0)?,
                    subject_key: row.try_get(1)?,
                    outcome: row.try_get(2)?,
                    record: serde_json::from_str(&record)?,
                    at_ms: row.try_get(4)?,
                });
            }
            Ok(out)
        })
    }

    fn browse(&self, query: &Browse) -> Result<Vec<DecisionRecord>, StoreError> {
        let (sql, values) = query.sql(|n| format!("${n}"));
        self.run(async |c| {
            let statement = c.prepare_cached(&sql).await?;
            let values: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
                .iter()
                .map(|v| match v {
                    Bound::Text(text) => text as &(dyn tokio_postgres::types::ToSql + Sync),
                    Bound::Int(int) => int as &(dyn tokio_postgres::types::ToSql + Sync),
                })
                .collect();
            let mut out = Vec::new();
            for row in c.query(&statement, &values).await? {
                let record: String = row.try_get(3)?;
                out.push(DecisionRecord {
                    event_key: row.try_get(0)?,
                    subject_key: row.try_get(1)?,
                    outcome: row.try_get(2)?,
                    record: serde_json::from_str(&record)?,
                    at_ms: row.try_get(4)?,
                });
            }
            Ok(out)
        })
    }

    fn activity(&self, since_ms: i64) -> Result<Vec<Activity>, StoreError> {
        self.run(async |c| {
            let statement = c
                .prepare_cached(
                    "SELECT at_ms / 60000 * 60000, outcome, count(*) FROM decisions
                     WHERE at_ms >= $1 GROUP BY 1, 2 ORDER BY 1, 2",
                )
                .await?;
            let mut out = Vec::new();
            for row in c.query(&statement, &[&since_ms]).await? {
                out.push(Activity {
                    minute_ms: row.try_get(0)?,
                    outcome: row.try_get(1)?,
                    count: u64::try_from(row.try_get::<_, i64>(2)?).unwrap_or(0),
                });
            }
            Ok(out)
        })
    }

    fn archived(&self, event_keys: &[String]) -> Result<Vec<ArchivedEvent>, StoreError> {
        self.run(async |c| {
            let statement = c
                .prepare_cached(
                    "SELECT event_key, provider, type, event_id, subject_key, version,
                       received_ms, body FROM archive WHERE event_key = ANY($1)",
                )
                .await?;
            let mut out = Vec::new();
            for row in c.query(&statement, &[&event_keys]).await? {
                out.push(archived(&row, 0)?);
            }
            Ok(out)
        })
    }

    fn export(
        &self,
        each: &mut dyn FnMut(Exported) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.run(async |c| {
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            // A whole store is read, for longer than a statement may take otherwise.
            tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
            let mut fired: HashMap<String, std::collections::BTreeMap<String, i64>> =
                HashMap::new();
            for r in tx
                .query("SELECT subject, rule, at_ms FROM fired", &[])
                .await?
            {
                fired
                    .entry(r.try_get(0)?)
                    .or_default()
                    .insert(r.try_get(1)?, r.try_get(2)?);
            }
            for r in tx
                .query("SELECT key, version, scores, at_ms FROM subjects", &[])
                .await?
            {
                let key: String = r.try_get(0)?;
                let scores: String = r.try_get(2)?;
                let state = SubjectState {
                    version: r.try_get(1)?,
                    scores: serde_json::from_str(&scores)?,
                    at_ms: r.try_get(3)?,
                    fired_ms: fired.remove(&key).unwrap_or_default(),
                };
                each(Exported::Subject { key, state })?;
            }
            for r in tx.query("SELECT key, at_ms FROM done", &[]).await? {
                each(Exported::Done {
                    key: r.try_get(0)?,
                    at_ms: r.try_get(1)?,
                })?;
            }
            for r in tx
                .query(
                    "SELECT event_key, subject_key, outcome, record, at_ms FROM decisions
                     ORDER BY at_ms, event_key",
                    &[],
                )
                .await?
            {
                let record: String = r.try_get(3)?;
                each(Exported::Decision(DecisionRecord {
                    event_key: r.try_get(0)?,
                    subject_key: r.try_get(1)?,
                    outcome: r.try_get(2)?,
                    record: serde_json::from_str(&record)?,
                    at_ms: r.try_get(4)?,
                }))?;
            }
            // Streamed: the archive is the one table that may not fit in memory.
            let rows = tx
                .query_raw(
                    "SELECT event_key, provider, type, event_id, subject_key, version,
                       received_ms, body FROM archive ORDER BY seq",
                    std::iter::empty::<i64>(),
                )
                .await?;
            let mut rows = std::pin::pin!(rows);
            while let Some(row) = rows.next().await {
                each(Exported::Archived(archived(&row?, 0)?))?;
            }
            for label in labels(
                &tx.query(
                    "SELECT event_key, rule, verdict, note, at_ms FROM labels
                     ORDER BY at_ms, event_key, rule",
                    &[],
                )
                .await?,
            )? {
                each(Exported::Label(label))?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn restore_done(&self, marks: &[(String, i64)]) -> Result<(), StoreError> {
        let keys: Vec<&str> = marks.iter().map(|(k, _)| k.as_str()).collect();
        let at: Vec<i64> = marks.iter().map(|(_, at)| *at).collect();
        self.run(async |c| {
            let statement = c
                .prepare_cached(
                    "INSERT INTO done (key, at_ms) SELECT * FROM unnest($1::text[], $2::int8[])
                     ON CONFLICT (key) DO NOTHING",
                )
                .await?;
            c.execute(&statement, &[&keys, &at]).await?;
            Ok(())
        })
    }

    fn prune(&self, retention: Duration) -> Result<usize, StoreError> {
        let cutoff =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        self.run(async |c| {
            let decisions = c
                .execute("DELETE FROM decisions WHERE at_ms < $1", &[&cutoff])
                .await?;
            let done = c
                .execute("DELETE FROM done WHERE at_ms < $1", &[&cutoff])
                .await?;
            Ok(usize::try_from(decisions + done).unwrap_or(usize::MAX))
        })
    }

    fn prune_archive(
        &self,
        retention: Duration,
        max_bytes: Option<u64>,
    ) -> Result<usize, StoreError> {
        let cutoff = cutoff(retention);
        let max = max_bytes.map(|m| i64::try_from(m).unwrap_or(i64::MAX));
        self.run(async |c| {
            // As the embedded store: everything before the first event young enough, then the
            // oldest beyond max_bytes; the second sums the archive's sizes, which takes longer
            // than a statement may on a large one (the workers go on meanwhile: nothing here
            // locks what they write).
            let c = c.transaction().await?;
            c.batch_execute("SET LOCAL statement_timeout = 0").await?;
            let mut removed = c
                .execute(
                    "DELETE FROM archive WHERE seq < coalesce(
                       (SELECT seq FROM archive WHERE received_ms >= $1 ORDER BY seq LIMIT 1),
                       (SELECT max(seq) + 1 FROM archive))",
                    &[&cutoff],
                )
                .await?;
            if let Some(max) = max {
                removed += c
                    .execute(
                        "DELETE FROM archive WHERE seq <= (
                           SELECT seq FROM (
                             SELECT seq, sum(octet_length(body)) OVER (ORDER BY seq DESC)
                               AS newer FROM archive) AS sized
                           WHERE newer > $1 ORDER BY seq DESC LIMIT 1)",
                        &[&max],
                    )
                    .await?;
            }
            c.commit().await?;
            Ok(usize::try_from(removed).unwrap_or(usize::MAX))
        })
    }

    fn admit(
        &self,
        rule: &str,
        subject: &str,
        now_ms: i64,
        limit: &Limit,
    ) -> Result<Admission, StoreError> {
        let start = window_start(now_ms, limit);
        let allowed = i64::try_from(limit.actions).unwrap_or(i64::MAX);
        let per_ms = i64::try_from(limit.per.as_millis()).unwrap_or(i64::MAX);
        self.run(async |c| {
            let tx = c.transaction().await?;
            // One admission per rule at a time across every worker: a transaction lock on the
            // rule's key (released at commit), so two workers never both take the last place.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[&BREAKER_LOCKS, &breaker_key(rule)],
            )
            .await?;
            let tripped = tx
                .query_opt("SELECT 1 FROM trips WHERE rule = $1", &[&rule])
                .await?
                .is_some();
            if tripped {
                tx.commit().await?;
                return Ok(Admission::Tripped(None));
            }
            tx.execute(
                "DELETE FROM rule_acts WHERE rule = $1 AND at_ms <= $2",
                &[&rule, &start],
            )
            .await?;
            let count: i64 = tx
                .query_one("SELECT count(*) FROM rule_acts WHERE rule = $1", &[&rule])
                .await?
                .try_get(0)?;
            let admission = if count < allowed {
                tx.execute(
                    "INSERT INTO rule_acts (rule, at_ms, subject) VALUES ($1, $2, $3)",
                    &[&rule, &now_ms, &subject],
                )
                .await?;
                Admission::Granted
            } else {
                let mut subjects: Vec<String> = tx
                    .query(
                        "SELECT subject FROM rule_acts WHERE rule = $1 ORDER BY at_ms LIMIT $2",
                        &[&rule, &(TRIP_SUBJECTS as i64 - 1)],
                    )
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                subjects.push(subject.to_owned());
                let trip = Trip {
                    rule: rule.to_owned(),
                    at_ms: now_ms,
                    count: u64::try_from(count).unwrap_or(0) + 1,
                    per_ms,
                    subjects,
                };
                tx.execute(
                    "INSERT INTO trips (rule, at_ms, count, per_ms, subjects)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &trip.rule,
                        &trip.at_ms,
                        &(count + 1),
                        &trip.per_ms,
                        &serde_json::to_string(&trip.subjects)?,
                    ],
                )
                .await?;
                Admission::Tripped(Some(trip))
            };
            tx.commit().await?;
            Ok(admission)
        })
    }

    fn trips(&self) -> Result<Vec<Trip>, StoreError> {
        self.run(async |c| {
            let mut out = Vec::new();
            for r in c
                .query(
                    "SELECT rule, at_ms, count, per_ms, subjects FROM trips ORDER BY at_ms, rule",
                    &[],
                )
                .await?
            {
                let count: i64 = r.try_get(2)?;
                let subjects: String = r.try_get(4)?;
                out.push(Trip {
                    rule: r.try_get(0)?,
                    at_ms: r.try_get(1)?,
                    count: u64::try_from(count).unwrap_or(0),
                    per_ms: r.try_get(3)?,
                    subjects: serde_json::from_str(&subjects)?,
                });
            }
            Ok(out)
        })
    }

    fn reset_trip(&self, rule: &str) -> Result<bool, StoreError> {
        self.run(async |c| {
            let tx = c.transaction().await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[&BREAKER_LOCKS, &breaker_key(rule)],
            )
            .await?;
            let tripped = tx
                .execute("DELETE FROM trips WHERE rule = $1", &[&rule])
                .await?
                > 0;
            tx.execute("DELETE FROM rule_acts WHERE rule = $1", &[&rule])
                .await?;
            tx.commit().await?;
            Ok(tripped)
        })
    }

    fn label(&self, label: &Label) -> Result<(), StoreError> {
        self.run(async |c| {
            c.execute(
                "INSERT INTO labels (event_key, rule, verdict, note, at_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (event_key, rule) DO UPDATE SET verdict = excluded.verdict,
                   note = excluded.note, at_ms = excluded.at_ms",
                &[
                    &label.event_key,
                    &label.rule,
                    &label.verdict.as_str(),
                    &label.note,
                    &label.at_ms,
                ],
            )
            .await?;
            Ok(())
        })
    }

    fn labels(&self) -> Result<Vec<Label>, StoreError> {
        self.run(async |c| {
            labels(
                &c.query(
                    "SELECT event_key, rule, verdict, note, at_ms FROM labels
                     ORDER BY at_ms, event_key, rule",
                    &[],
                )
                .await?,
            )
        })
    }

    fn scan_decisions(
        &self,
        since_ms: i64,
        each: &mut dyn FnMut(DecisionRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.run(async |c| {
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
            // Streamed, as a month of records may not fit in memory.
            let rows = tx
                .query_raw(
                    "SELECT event_key, subject_key, outcome, record, at_ms FROM decisions
                     WHERE at_ms >= $1 ORDER BY at_ms",
                    [&since_ms],
                )
                .await?;
            let mut rows = std::pin::pin!(rows);
            while let Some(row) = rows.next().await {
                let row = row?;
                let record: String = row.try_get(3)?;
                each(DecisionRecord {
                    event_key: row.try_get(0)?,
                    subject_key: row.try_get(1)?,
                    outcome: row.try_get(2)?,
                    record: serde_json::from_str(&record)?,
                    at_ms: row.try_get(4)?,
                })?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn start_seen(&self, keys: &[String], now_ms: i64) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.run(async |c| {
            c.execute(
                "INSERT INTO last_seen (key, at_ms) SELECT k, $2 FROM unnest($1::text[]) AS k
                 ON CONFLICT (key) DO NOTHING",
                &[&keys, &now_ms],
            )
            .await?;
            Ok(())
        })
    }

    fn touch_seen(&self, seen: &[(String, i64)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
        let at: Vec<i64> = seen.iter().map(|(_, at)| *at).collect();
        self.run(async |c| {
            // Rows in the order given (sorted by key): two workers never wait on each other.
            let statement = c
                .prepare_cached(
                    "INSERT INTO last_seen (key, at_ms)
                     SELECT * FROM unnest($1::text[], $2::int8[])
                     ON CONFLICT (key) DO UPDATE SET at_ms = GREATEST(last_seen.at_ms, excluded.at_ms)",
                )
                .await?;
            c.execute(&statement, &[&keys, &at]).await?;
            Ok(())
        })
    }

    fn seen(&self) -> Result<Vec<SeenRow>, StoreError> {
        self.run(async |c| {
            let statement = c
                .prepare_cached("SELECT key, at_ms, silent_since_ms FROM last_seen ORDER BY key")
                .await?;
            c.query(&statement, &[])
                .await?
                .iter()
                .map(|r| {
                    Ok(SeenRow {
                        key: r.try_get(0)?,
                        at_ms: r.try_get(1)?,
                        silent_since_ms: r.try_get(2)?,
                    })
                })
                .collect()
        })
    }

    fn mark_silent(&self, key: &str, now_ms: i64, last_seen: i64) -> Result<bool, StoreError> {
        self.run(async |c| {
            Ok(c.execute(
                "UPDATE last_seen SET silent_since_ms = $2
                 WHERE key = $1 AND silent_since_ms IS NULL AND at_ms <= $3",
                &[&key, &now_ms, &last_seen],
            )
            .await?
                == 1)
        })
    }

    fn reset_silence(
        &self,
        key: &str,
        marked: Option<i64>,
        back_to: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.run(async |c| {
            Ok(c.execute(
                "UPDATE last_seen SET silent_since_ms = $3
                 WHERE key = $1 AND silent_since_ms IS NOT DISTINCT FROM $2",
                &[&key, &marked, &back_to],
            )
            .await?
                == 1)
        })
    }

    fn mark_recovered(&self, key: &str, silent_since_ms: i64) -> Result<bool, StoreError> {
        self.run(async |c| {
            Ok(c.execute(
                "UPDATE last_seen SET silent_since_ms = NULL
                 WHERE key = $1 AND silent_since_ms = $2 AND at_ms > $2",
                &[&key, &silent_since_ms],
            )
            .await?
                == 1)
        })
    }

    fn archive_summary(&self) -> Result<ArchiveSummary, StoreError> {
        self.run(async |c| {
            let row = c
                .query_one(
                    "SELECT count(*), coalesce(sum(octet_length(body)), 0)::int8,
                       min(received_ms), max(received_ms) FROM archive",
                    &[],
                )
                .await?;
            let events: i64 = row.try_get(0)?;
            let bytes: i64 = row.try_get(1)?;
            Ok(ArchiveSummary {
                events: u64::try_from(events).unwrap_or(0),
                body_bytes: u64::try_from(bytes).unwrap_or(0),
                oldest_ms: row.try_get(2)?,
                newest_ms: row.try_get(3)?,
            })
        })
    }

    fn replay(
        &self,
        query: &ReplayQuery,
        each: &mut dyn FnMut(Replayed) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.run(async |c| {
            // One statement, streamed: rows arrive as they are read, never all at once. The
            // snapshot of a read-only transaction keeps it consistent while workers write.
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            // No statement timeout here: a backtest over a month's events reads for a while.
            tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
            let subject = query.subject_key.as_deref();
            let rows = tx
                .query_raw(
                    "SELECT a.event_key, a.provider, a.type, a.event_id, a.subject_key,
                       a.version, a.received_ms, a.body, d.outcome, d.record, a.seq
                     FROM archive a LEFT JOIN decisions d
                       ON $2::int8 IS NOT NULL AND a.received_ms >= $2 AND d.event_key = a.event_key
                     WHERE $1::text IS NULL OR a.subject_key = $1
                       OR a.subject_key = a.provider || '/' || $1
                     ORDER BY a.seq",
                    [
                        &subject as &(dyn tokio_postgres::types::ToSql + Sync),
                        &query.recorded_from,
                    ],
                )
                .await?;
            let mut rows = std::pin::pin!(rows);
            while let Some(row) = rows.next().await {
                let row = row?;
                let outcome: Option<String> = row.try_get(8)?;
                let record: Option<String> = row.try_get(9)?;
                each(Replayed {
                    seq: row.try_get(10)?,
                    event: archived(&row, 0)?,
                    recorded: outcome.zip(record),
                })?;
            }
            tx.commit().await?;
            Ok(())
        })
    }
}

/// Labels from rows of (event_key, rule, verdict, note, at_ms); an unknown verdict skipped.
fn labels(rows: &[Row]) -> Result<Vec<Label>, StoreError> {
    let mut out = Vec::new();
    for r in rows {
        let verdict: String = r.try_get(2)?;
        if let Some(verdict) = LabelVerdict::parse(&verdict) {
            out.push(Label {
                event_key: r.try_get(0)?,
                rule: r.try_get(1)?,
                verdict,
                note: r.try_get(3)?,
                at_ms: r.try_get(4)?,
            });
        }
    }
    Ok(out)
}

/// The archived event in the eight columns of `row` from `at` on.
fn archived(row: &Row, at: usize) -> Result<ArchivedEvent, StoreError> {
    Ok(ArchivedEvent {
        event_key: row.try_get(at)?,
        provider: row.try_get(at + 1)?,
        event_type: row.try_get(at + 2)?,
        event_id: row.try_get(at + 3)?,
        subject_key: row.try_get(at + 4)?,
        version: row.try_get(at + 5)?,
        received_ms: row.try_get(at + 6)?,
        body: row.try_get(at + 7)?,
    })
}
