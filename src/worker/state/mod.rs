//! The worker's state behind one interface: per subject its last version, scores and time;
//! per (subject, rule) when it last fired; per action key a done-mark; per event a decision
//! record; per event decided, when `[archive]` is on, its raw body in delivery order (what
//! `hookwarden rules backtest` replays). Two implementations: [`SqliteStore`] embedded (one worker, one host) and
//! [`PgStore`] in PostgreSQL (several workers); [`open`] picks the one `[state]` names.

mod migrate;
mod postgres;
mod sqlite;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use migrate::known_version as schema_version;
pub use postgres::{PgOptions, PgStore};
pub use sqlite::SqliteStore;

use crate::worker::config::{Backend, StateConfig};
use crate::worker::rules::Limit;

/// A store failure; the worker does not ack what it could not record.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("state store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said no, or could not be reached.
    #[error("state store: {}", postgres_reason(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No pooled PostgreSQL connection (none free in time, or none could be made).
    #[error("state store: {0}")]
    Pool(String),
    /// The database's schema was migrated by a newer hookwarden.
    #[error(
        "state store: the database's schema is version {found}, newer than this build's {known}; \
         run the hookwarden that migrated it, or a newer one"
    )]
    SchemaTooNew {
        /// The version found.
        found: i32,
        /// The newest this build knows.
        known: i32,
    },
    /// No hookwarden tables where the URL points (an operator's command never creates them).
    #[error(
        "state store: no hookwarden schema here (no hookwarden_schema table on the search_path); \
         has a worker run with this url?"
    )]
    NoSchema,
    /// The schema is older than this build: a worker of this version migrates it at start.
    #[error(
        "state store: the database's schema is version {found}, older than this build's {known}; \
         start a worker of this version to migrate it"
    )]
    SchemaBehind {
        /// The version found.
        found: i32,
        /// The newest this build knows.
        known: i32,
    },
    /// A migration applied earlier reads differently in this build.
    #[error(
        "state store: schema migration {version} differs from the one applied to the database \
         (hookwarden_schema checksum); this build does not match the database's history"
    )]
    SchemaChanged {
        /// The migration.
        version: i32,
    },
    /// Stored JSON could not be read back.
    #[error("state store: corrupt record: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// An export could not be written.
    #[error("state store: writing the export: {0}")]
    Export(#[source] std::io::Error),
    /// A replay's consumer stopped it (a backtest that failed to decide, say).
    #[error("{0}")]
    Stopped(String),
    /// The store's lock was poisoned by a panic elsewhere.
    #[error("state store: lock poisoned")]
    Poisoned,
}

impl StoreError {
    /// Whether the store is unreachable or overloaded for now (PostgreSQL down, restarting,
    /// out of connections, a statement or lock wait over its timeout) rather than refusing
    /// what it was given: the worker holds its batch and tries again instead of giving it up.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::Postgres(err) => match err.as_db_error() {
                // No answer from the server: refused, reset, closed, timed out. (Not a value
                // that would not convert, which no retry mends.)
                None => err.is_closed() || no_answer(err),
                Some(db) => {
                    let code = db.code().code();
                    // 08: connection exception; 57P01-03: shutting down or starting up;
                    // 53300: too many connections; 57014: statement timeout; 40001 and
                    // 40P01: serialization failure and deadlock; 55P03: lock not available.
                    code.starts_with("08")
                        || matches!(
                            code,
                            "57P01"
                                | "57P02"
                                | "57P03"
                                | "53300"
                                | "57014"
                                | "40001"
                                | "40P01"
                                | "55P03"
                        )
                }
            },
            Self::Sqlite(_)
            | Self::Export(_)
            | Self::Stopped(_)
            | Self::Corrupt(_)
            | Self::Poisoned
            | Self::SchemaTooNew { .. }
            | Self::SchemaBehind { .. }
            | Self::NoSchema
            | Self::SchemaChanged { .. } => false,
        }
    }
}

/// What the worker knows about one subject before an event.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SubjectState {
    /// Last accepted version (integer, or RFC 3339 as Unix nanoseconds).
    pub version: Option<i64>,
    /// Scores of the last event.
    pub scores: BTreeMap<String, f64>,
    /// When the last event was handled, Unix milliseconds.
    pub at_ms: Option<i64>,
    /// Per rule, when it last fired, Unix milliseconds.
    pub fired_ms: BTreeMap<String, i64>,
}

/// A decision to record for one event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecisionRecord {
    /// `provider/event_id`.
    pub event_key: String,
    /// Subject key (`provider/subject`), when the event had one.
    pub subject_key: Option<String>,
    /// `acted`, `no_match`, `stale`, `duplicate`, `dead_lettered`, `no_subject`, ...
    pub outcome: String,
    /// The whole record as JSON (rules, actions, attempts, errors, latencies).
    pub record: serde_json::Value,
    /// Unix milliseconds.
    pub at_ms: i64,
}

/// One row of a store, as `hookwarden state export` writes it (a JSON line each) and
/// `import` reads it back into another store.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Exported {
    /// A subject's state and its rules' last firings.
    Subject {
        /// `provider/subject`.
        key: String,
        /// See [`SubjectState`].
        #[serde(flatten)]
        state: SubjectState,
    },
    /// An action's done-mark.
    Done {
        /// Its Idempotency-Key.
        key: String,
        /// When it was marked, Unix milliseconds.
        at_ms: i64,
    },
    /// An event's decision record.
    Decision(DecisionRecord),
    /// An archived event, in delivery order.
    Archived(ArchivedEvent),
    /// An analyst's label.
    Label(Label),
}

/// An event as the archive keeps it: enough to decide it again exactly as it was decided.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArchivedEvent {
    /// `provider/event_id`, the key of its decision record.
    pub event_key: String,
    /// Provider name.
    pub provider: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Provider's event id.
    pub event_id: String,
    /// `provider/subject`, as the rules in force read it; `None` when none read it.
    pub subject_key: Option<String>,
    /// Its version as the rules in force read it.
    pub version: Option<i64>,
    /// When the listener received it (the message's `timestamp`), Unix milliseconds.
    pub received_ms: i64,
    /// The raw body, as signed (a JSON document, so always text).
    pub body: String,
}

/// An archived event on its way out of the store, in delivery order, with the decision the
/// worker recorded for it when one was asked for and is still kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    /// Its place in delivery order.
    pub seq: i64,
    /// The event.
    pub event: ArchivedEvent,
    /// Its recorded outcome and record (JSON text).
    pub recorded: Option<(String, String)>,
}

/// What [`Store::replay`] hands out.
#[derive(Debug, Clone, Default)]
pub struct ReplayQuery {
    /// Only events of this subject: its key (`provider/subject`) or its id, as the worker
    /// read it.
    pub subject_key: Option<String>,
    /// Join each event received at or after this time (Unix milliseconds) with its decision
    /// record; `None`: no records.
    pub recorded_from: Option<i64>,
}

/// Which decision records [`Store::browse`] reads, newest first (by time, then event key):
/// only conditions an index serves, so that a page costs what it shows; the web view filters
/// the rest of what it is asked for in the rows it reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Browse {
    /// Only this subject's (`provider/subject`).
    pub subject_key: Option<String>,
    /// Only this event's (`provider/event_id`).
    pub event_key: Option<String>,
    /// Only the events whose decision is `dead_lettered` (not replayed since).
    pub dead_lettered: bool,
    /// Made at or after this time, Unix milliseconds.
    pub from_ms: Option<i64>,
    /// Made at or before this time, Unix milliseconds.
    pub to_ms: Option<i64>,
    /// Older than this row (time, event key): where the previous page stopped.
    pub before: Option<(i64, String)>,
    /// At most this many rows.
    pub limit: usize,
}

/// A value bound to a statement [`Browse::sql`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bound {
    Text(String),
    Int(i64),
}

impl Browse {
    /// The statement, with `placeholder(n)` for the n-th (1-based) value, and its values.
    /// The dead-letter condition is written out so that the partial index on it is used.
    fn sql(&self, placeholder: fn(usize) -> String) -> (String, Vec<Bound>) {
        let mut sql = String::from(
            "SELECT event_key, subject_key, outcome, record, at_ms FROM decisions WHERE TRUE",
        );
        let mut values = Vec::new();
        let mut bind = |sql: &mut String, text: &str, value: Bound| {
            values.push(value);
            *sql += &text.replace('?', &placeholder(values.len()));
        };
        if let Some(subject) = &self.subject_key {
            bind(
                &mut sql,
                " AND subject_key = ?",
                Bound::Text(subject.clone()),
            );
        }
        if let Some(event) = &self.event_key {
            bind(&mut sql, " AND event_key = ?", Bound::Text(event.clone()));
        }
        if self.dead_lettered {
            sql += " AND outcome = 'dead_lettered'";
        }
        if let Some(from) = self.from_ms {
            bind(&mut sql, " AND at_ms >= ?", Bound::Int(from));
        }
        if let Some(to) = self.to_ms {
            bind(&mut sql, " AND at_ms <= ?", Bound::Int(to));
        }
        if let Some((at, key)) = &self.before {
            // A range on the time (which the index serves), less the rows of that same
            // millisecond at or after the key.
            bind(&mut sql, " AND at_ms <= ?", Bound::Int(*at));
            bind(&mut sql, " AND (at_ms < ?", Bound::Int(*at));
            bind(&mut sql, " OR event_key < ?)", Bound::Text(key.clone()));
        }
        bind(
            &mut sql,
            " ORDER BY at_ms DESC, event_key DESC LIMIT ?",
            Bound::Int(i64::try_from(self.limit).unwrap_or(i64::MAX)),
        );
        (sql, values)
    }
}

/// How many events were decided in one minute with one outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Activity {
    /// The minute's start, Unix milliseconds.
    pub minute_ms: i64,
    /// The outcome.
    pub outcome: String,
    /// Events.
    pub count: u64,
}

/// A rule whose breaker tripped: it stays so until an operator resets it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Trip {
    /// The rule.
    pub rule: String,
    /// When it tripped, Unix milliseconds.
    pub at_ms: i64,
    /// The firings that would have acted in its window, the one that tripped it included.
    pub count: u64,
    /// Its window, milliseconds.
    pub per_ms: i64,
    /// The first subjects it acted on in the window, then the one that tripped it.
    pub subjects: Vec<String>,
}

impl Trip {
    /// Its window as a duration (`10m`).
    pub fn per(&self) -> humantime::FormattedDuration {
        humantime::format_duration(Duration::from_millis(
            u64::try_from(self.per_ms).unwrap_or(0),
        ))
    }
}

/// When events were last decided, for a silence watch (`watch/NAME`) or a provider
/// (`provider/NAME`), and since when a watch has been silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRow {
    /// `watch/NAME` or `provider/NAME`.
    pub key: String,
    /// The last decided event's time (for a watch never fed: when it started counting).
    pub at_ms: i64,
    /// When the watch was marked silent (its actions ran); `None` while events flow.
    pub silent_since_ms: Option<i64>,
}

/// An analyst's verdict on one rule's match on one event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Label {
    /// The event (`provider/event_id`).
    pub event_key: String,
    /// The rule.
    pub rule: String,
    /// `true_positive` or `false_positive`.
    pub verdict: LabelVerdict,
    /// Why, in the analyst's words.
    pub note: Option<String>,
    /// When it was labelled, Unix milliseconds.
    pub at_ms: i64,
}

/// Whether a rule was right to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelVerdict {
    /// It was right.
    TruePositive,
    /// It should not have matched.
    FalsePositive,
}

impl LabelVerdict {
    /// As stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TruePositive => "true_positive",
            Self::FalsePositive => "false_positive",
        }
    }

    /// The stored spelling read back.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "true_positive" => Some(Self::TruePositive),
            "false_positive" => Some(Self::FalsePositive),
            _ => None,
        }
    }
}

/// How many subjects a trip lists.
pub const TRIP_SUBJECTS: usize = 10;

/// What a rule's breaker says to one more firing that would act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Within the limit: it acts (and counts).
    Granted,
    /// Over it: the rule is tripped. `Some` when this firing tripped it (its `on_trip` actions
    /// run, once), `None` when it had tripped before.
    Tripped(Option<Trip>),
}

/// How much the archive holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveSummary {
    /// Events archived.
    pub events: u64,
    /// Bytes of their bodies.
    pub body_bytes: u64,
    /// Receive time of the oldest, Unix milliseconds.
    pub oldest_ms: Option<i64>,
    /// Receive time of the newest, Unix milliseconds.
    pub newest_ms: Option<i64>,
}

/// Everything one batch changes, committed in one transaction before its acks.
#[derive(Debug, Default)]
pub struct Batch {
    /// New state per subject key.
    pub subjects: HashMap<String, SubjectState>,
    /// Decision records.
    pub decisions: Vec<DecisionRecord>,
    /// Events to archive, in delivery order (one already archived is kept as it was).
    pub archive: Vec<ArchivedEvent>,
}

/// Held while a batch reads, decides and commits its subjects' events: another worker's
/// batch with one of those subjects waits until it is dropped. Dropping it releases.
#[must_use = "the subjects are unlocked when this is dropped"]
pub struct SubjectLock(Option<Box<dyn std::any::Any + Send>>);

impl SubjectLock {
    /// Nothing held (one worker: nothing to wait for).
    pub fn none() -> Self {
        Self(None)
    }

    /// Holds `guard` until dropped.
    pub fn held(guard: impl Send + 'static) -> Self {
        Self(Some(Box::new(guard)))
    }

    /// The guard a store put here, for its own commit.
    fn guard_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.0.as_mut()?.downcast_mut()
    }
}

impl Default for SubjectLock {
    fn default() -> Self {
        Self::none()
    }
}

impl std::fmt::Debug for SubjectLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "SubjectLock(held)"
        } else {
            "SubjectLock(none)"
        })
    }
}

/// The worker's state. Calls block; async callers use `spawn_blocking`.
pub trait Store: Send + Sync + 'static {
    /// Serialises the handling of these subjects with every other worker on the same store,
    /// until the returned lock is dropped (after the batch's commit).
    ///
    /// # Errors
    /// Store failure.
    fn lock_subjects(&self, keys: &[String]) -> Result<SubjectLock, StoreError>;
    /// State of each of `keys` that has been seen.
    ///
    /// # Errors
    /// Store failure.
    fn load_subjects(&self, keys: &[String]) -> Result<HashMap<String, SubjectState>, StoreError>;
    /// Which of `event_keys` already have a final decision.
    ///
    /// # Errors
    /// Store failure.
    fn decided(&self, event_keys: &[String]) -> Result<HashSet<String>, StoreError>;
    /// Which of these action keys have a done-mark (their action completed before).
    ///
    /// # Errors
    /// Store failure.
    fn done_among(&self, keys: &[String]) -> Result<HashSet<String>, StoreError>;
    /// Records, in one transaction, that the actions with these keys completed.
    ///
    /// # Errors
    /// Store failure.
    fn mark_done(&self, keys: &[String]) -> Result<(), StoreError>;
    /// Commits a batch atomically.
    ///
    /// # Errors
    /// Store failure; nothing of the batch is kept.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Commits a batch handled under `lock` ([`Store::lock_subjects`]): where the lock lives
    /// in a database session, through that session, so a commit whose locks were lost with
    /// their session (killed, timed out) fails instead of overwriting another worker's.
    ///
    /// # Errors
    /// Store failure; nothing of the batch is kept.
    fn commit_locked(&self, batch: &Batch, lock: &mut SubjectLock) -> Result<(), StoreError> {
        let _ = lock;
        self.commit(batch)
    }
    /// Decision records of an event or a subject, newest first.
    ///
    /// # Errors
    /// Store failure.
    fn decisions(
        &self,
        event_key: Option<&str>,
        subject_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DecisionRecord>, StoreError>;
    /// The decision records `query` selects, newest first.
    ///
    /// # Errors
    /// Store failure.
    fn browse(&self, query: &Browse) -> Result<Vec<DecisionRecord>, StoreError>;
    /// Events decided per minute and outcome since `since_ms`.
    ///
    /// # Errors
    /// Store failure.
    fn activity(&self, since_ms: i64) -> Result<Vec<Activity>, StoreError>;
    /// The archived events among `event_keys` (those not archived, or pruned, are left out).
    ///
    /// # Errors
    /// Store failure.
    fn archived(&self, event_keys: &[String]) -> Result<Vec<ArchivedEvent>, StoreError>;
    /// Hands every subject, then every done-mark, then every decision record (oldest first),
    /// then every archived event (in delivery order), then every label to `each`, stopping at
    /// its first error.
    ///
    /// # Errors
    /// Store failure, or the first error of `each`.
    fn export(
        &self,
        each: &mut dyn FnMut(Exported) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Writes done-marks with the times they were first made (an import keeps them).
    ///
    /// # Errors
    /// Store failure.
    fn restore_done(&self, marks: &[(String, i64)]) -> Result<(), StoreError>;
    /// Deletes decision records and done-marks older than `retention`; returns rows removed.
    ///
    /// # Errors
    /// Store failure.
    fn prune(&self, retention: Duration) -> Result<usize, StoreError>;
    /// Deletes archived events received longer than `retention` ago, then the oldest until
    /// their bodies take at most `max_bytes`; returns events removed.
    ///
    /// # Errors
    /// Store failure.
    fn prune_archive(
        &self,
        retention: Duration,
        max_bytes: Option<u64>,
    ) -> Result<usize, StoreError>;
    /// Counts one more firing of `rule` that would act, for `subject`, at `now_ms`, against its
    /// breaker `limit`: granted while fewer than `limit.actions` were granted in the last
    /// `limit.per`; else the rule trips (atomically across every worker on the store) and
    /// stays tripped until [`Store::reset_trip`].
    ///
    /// # Errors
    /// Store failure.
    fn admit(
        &self,
        rule: &str,
        subject: &str,
        now_ms: i64,
        limit: &Limit,
    ) -> Result<Admission, StoreError>;
    /// The tripped rules.
    ///
    /// # Errors
    /// Store failure.
    fn trips(&self) -> Result<Vec<Trip>, StoreError>;
    /// Untrips `rule` and forgets its window's firings; whether it was tripped.
    ///
    /// # Errors
    /// Store failure.
    fn reset_trip(&self, rule: &str) -> Result<bool, StoreError>;
    /// Records (or replaces) an analyst's label of a rule's match on an event.
    ///
    /// # Errors
    /// Store failure.
    fn label(&self, label: &Label) -> Result<(), StoreError>;
    /// Every label.
    ///
    /// # Errors
    /// Store failure.
    fn labels(&self) -> Result<Vec<Label>, StoreError>;
    /// Hands every decision record made at or after `since_ms` to `each`, oldest first, one
    /// at a time, stopping at its first error.
    ///
    /// # Errors
    /// Store failure, or the first error of `each`.
    fn scan_decisions(
        &self,
        since_ms: i64,
        each: &mut dyn FnMut(DecisionRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Starts counting the silence of these keys at `now_ms` where nothing has been counted
    /// for them yet.
    ///
    /// # Errors
    /// Store failure.
    fn start_seen(&self, keys: &[String], now_ms: i64) -> Result<(), StoreError>;
    /// Moves each key's last-seen time forward to the time given (never back).
    ///
    /// # Errors
    /// Store failure.
    fn touch_seen(&self, seen: &[(String, i64)]) -> Result<(), StoreError>;
    /// Every last-seen row.
    ///
    /// # Errors
    /// Store failure.
    fn seen(&self) -> Result<Vec<SeenRow>, StoreError>;
    /// Marks `key` silent since `now_ms` if it is not yet and nothing was seen after
    /// `last_seen`: whether this call did (then, and only then, its actions run).
    ///
    /// # Errors
    /// Store failure.
    fn mark_silent(&self, key: &str, now_ms: i64, last_seen: i64) -> Result<bool, StoreError>;
    /// Sets `key`'s silence mark back to `back_to` if it is still `marked` (a watch whose
    /// actions failed, so that they are tried again): whether this call did.
    ///
    /// # Errors
    /// Store failure.
    fn reset_silence(
        &self,
        key: &str,
        marked: Option<i64>,
        back_to: Option<i64>,
    ) -> Result<bool, StoreError>;
    /// Clears `key`'s silence (marked at `silent_since_ms`) if something was seen since:
    /// whether this call did.
    ///
    /// # Errors
    /// Store failure.
    fn mark_recovered(&self, key: &str, silent_since_ms: i64) -> Result<bool, StoreError>;
    /// How many events the archive holds, their bytes and time span.
    ///
    /// # Errors
    /// Store failure.
    fn archive_summary(&self) -> Result<ArchiveSummary, StoreError>;
    /// Hands the archived events `query` selects to `each` in delivery order, one at a time
    /// (never all in memory), stopping at its first error.
    ///
    /// # Errors
    /// Store failure, or the first error of `each`.
    fn replay(
        &self,
        query: &ReplayQuery,
        each: &mut dyn FnMut(Replayed) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
}

/// The earliest firing time still inside `limit`'s window at `now_ms`.
fn window_start(now_ms: i64, limit: &Limit) -> i64 {
    now_ms.saturating_sub(i64::try_from(limit.per.as_millis()).unwrap_or(i64::MAX))
}

/// The receive time before which archived events are pruned.
fn cutoff(retention: Duration) -> i64 {
    now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX))
}

/// Outcomes after which a redelivered event is not handled again. A dead-lettered event is
/// not final: replaying it from the dead-letter queue must run what did not complete.
const FINAL: &str = "outcome <> 'dead_lettered'";

/// Now as Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Opens the store `[state]` names: the SQLite file (created if missing), or the PostgreSQL
/// database (connected, its schema created or migrated).
///
/// # Errors
/// The store cannot be opened.
pub async fn open(config: &StateConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &config.backend {
        Backend::Sqlite(path) => Arc::new(SqliteStore::open(path)?),
        Backend::Postgres(options) => Arc::new(PgStore::open(options).await?),
    })
}

/// Whether a driver error is the server not answering: an I/O error somewhere in its causes,
/// or the driver's own "error connecting" or "timeout" (which carry no cause to look at).
fn no_answer(err: &tokio_postgres::Error) -> bool {
    let text = err.to_string();
    if text.starts_with("error connecting to server") || text.starts_with("timeout") {
        return true;
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Opens the store `[state]` names for an operator's command: an embedded file as [`open`]
/// does, a PostgreSQL schema only as it is (never created or migrated, which is the workers'
/// to do).
///
/// # Errors
/// The store cannot be opened, or its schema is missing or of another version.
pub async fn open_existing(config: &StateConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &config.backend {
        Backend::Sqlite(path) => Arc::new(SqliteStore::open_for_command(path)?),
        Backend::Postgres(options) => Arc::new(PgStore::open_as_is(options).await?),
    })
}

/// tokio-postgres says "db error" for every error the server sent; the server's own message
/// (and its detail) is what an operator needs.
fn postgres_reason(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.code().code(), db.message()),
            None => format!("{}: {}", db.code().code(), db.message()),
        },
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}
