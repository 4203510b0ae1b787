//! The listener's durable spool: when the broker cannot take an event now, it is written
//! here (SQLite, fsync'd with group commit: one fsync per burst, not per request) and
//! answered 200; [`crate::listener::forwarder`] drains it to RabbitMQ in arrival order.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, params};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::envelope::Envelope;
use crate::telemetry::trace::TraceContext;

/// Why the spool could not take an event. Clone: one failed group write answers every
/// request in the group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// `max_bytes` reached.
    #[error("the spool is full")]
    Full,
    /// The disk or database failed; the source says what and why.
    #[error("the spool cannot be written")]
    Io(#[source] Arc<Unwritable>),
}

/// What failed beneath a [`SpoolError::Io`], one level of its chain per cause.
#[derive(Debug, thiserror::Error)]
pub enum Unwritable {
    /// Opening the spool at start.
    #[error("opening spool {}", path.display())]
    Open {
        /// The configured `spool.path`.
        path: PathBuf,
        /// What failed.
        #[source]
        source: Box<Unwritable>,
    },
    /// Its directory could not be created.
    #[error("{}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed. Its message is shown and the error kept, but not as a source:
    /// rusqlite's own source is SQLite's bare result code, which would say it again.
    #[error("{0}")]
    Sqlite(rusqlite::Error),
    /// The writer task is gone (the runtime is shutting down).
    #[error("the spool writer stopped")]
    WriterStopped,
    /// The writer task panicked.
    #[error(transparent)]
    WriterPanicked(tokio::task::JoinError),
    /// A panic elsewhere while the database was locked.
    #[error("lock poisoned")]
    Poisoned,
}

impl From<Unwritable> for SpoolError {
    fn from(cause: Unwritable) -> Self {
        Self::Io(Arc::new(cause))
    }
}

impl From<rusqlite::Error> for SpoolError {
    fn from(err: rusqlite::Error) -> Self {
        Unwritable::Sqlite(err).into()
    }
}

/// One spooled event and its place in line.
#[derive(Debug, Clone)]
pub struct Spooled {
    /// Arrival order.
    pub seq: i64,
    /// The event.
    pub envelope: Envelope,
}

struct Pending {
    envelope: Envelope,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

struct Inner {
    db: Mutex<Connection>,
    writer: mpsc::Sender<Pending>,
    max_bytes: u64,
    depth: AtomicU64,
    bytes: AtomicU64,
    /// Wakes the forwarder when something was spooled.
    added: Notify,
    /// Wakes requests waiting for the forwarder to empty the spool.
    emptied: Notify,
    /// An event was refused for lack of room since the spool last shrank.
    refused: std::sync::atomic::AtomicBool,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

/// Most events written in one transaction (one fsync).
const GROUP: usize = 512;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    provider TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    scheme TEXT NOT NULL,
    source_ip TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    traceparent TEXT,
    tracestate TEXT
);
";

/// Columns added since the first spool file: a spool left by an older listener gains them,
/// its rows reading NULL (no trace).
const ADDED_COLUMNS: [&str; 2] = ["traceparent", "tracestate"];

fn ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Spool {
    /// Opens (creating) the spool at `path` and starts its writer on the current runtime.
    ///
    /// # Errors
    /// The file cannot be opened or created ([`Unwritable::Open`], naming `path`).
    pub fn open(path: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        Self::open_at(path, max_bytes).map_err(|cause| {
            Unwritable::Open {
                path: path.to_owned(),
                source: Box::new(cause),
            }
            .into()
        })
    }

    fn open_at(path: &Path, max_bytes: u64) -> Result<Self, Unwritable> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Unwritable::CreateDir {
                dir: dir.to_owned(),
                source,
            })?;
        }
        Self::open_db(path, max_bytes).map_err(Unwritable::Sqlite)
    }

    fn open_db(path: &Path, max_bytes: u64) -> Result<Self, rusqlite::Error> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: every commit is fsync'd before the listener answers 200.
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        for column in ADDED_COLUMNS {
            let present: bool = db.query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('spool') WHERE name = ?1",
                params![column],
                |r| r.get(0),
            )?;
            if !present {
                db.execute_batch(&format!("ALTER TABLE spool ADD COLUMN {column} TEXT"))?;
            }
        }
        let (depth, bytes): (i64, i64) = db.query_row(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM spool",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (writer, rx) = mpsc::channel(4096);
        let inner = Arc::new(Inner {
            db: Mutex::new(db),
            writer,
            max_bytes,
            depth: AtomicU64::new(u64::try_from(depth).unwrap_or(0)),
            bytes: AtomicU64::new(u64::try_from(bytes).unwrap_or(0)),
            added: Notify::new(),
            emptied: Notify::new(),
            refused: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(write_loop(inner.clone(), rx));
        Ok(Self { inner })
    }

    /// Events waiting.
    pub fn depth(&self) -> u64 {
        self.inner.depth.load(Ordering::Relaxed)
    }

    /// Body bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// Whether events are being taken: not full, and nothing refused since it last shrank.
    pub fn accepting(&self) -> bool {
        self.bytes() < self.inner.max_bytes && !self.inner.refused.load(Ordering::Relaxed)
    }

    /// Waits at most `at_most` for the forwarder to empty the spool; true if it is empty.
    pub async fn wait_drained(&self, at_most: Duration) -> bool {
        let emptied = self.inner.emptied.notified();
        tokio::pin!(emptied);
        // Registered before the check, so an emptying between the two is not missed.
        emptied.as_mut().enable();
        if self.depth() == 0 {
            return true;
        }
        let _ = tokio::time::timeout(at_most, emptied).await;
        self.depth() == 0
    }

    /// Waits until something is spooled (or a short while passes).
    pub async fn wait_added(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.inner.added.notified()).await;
    }

    /// Writes `envelope` durably (returns after the fsync of its group).
    ///
    /// # Errors
    /// Full, or the write failed.
    pub async fn put(&self, envelope: Envelope) -> Result<(), SpoolError> {
        if self.bytes() + envelope.body.len() as u64 > self.inner.max_bytes {
            self.inner.refused.store(true, Ordering::Relaxed);
            return Err(SpoolError::Full);
        }
        let (done, rx) = oneshot::channel();
        self.inner
            .writer
            .send(Pending { envelope, done })
            .await
            .map_err(|_| Unwritable::WriterStopped)?;
        rx.await.map_err(|_| Unwritable::WriterStopped)?
    }

    /// The oldest `limit` events, in arrival order (blocking: call from `spawn_blocking`).
    ///
    /// # Errors
    /// The read failed.
    pub fn oldest(&self, limit: usize) -> Result<Vec<Spooled>, SpoolError> {
        let db = self.inner.db.lock().map_err(|_| Unwritable::Poisoned)?;
        let mut stmt = db.prepare_cached(
            "SELECT seq, provider, event_id, event_type, scheme, source_ip, received_ms, body,
                    traceparent, tracestate
             FROM spool ORDER BY seq LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Vec<u8>>(7)?,
                r.get::<_, Option<String>>(8)?,
                r.get::<_, Option<String>>(9)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, provider, id, kind, scheme, ip, received, body, parent, state) = row?;
            let received_at =
                UNIX_EPOCH + Duration::from_millis(u64::try_from(received).unwrap_or(0));
            let source_ip = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            // Rows were checked when spooled; a row that no longer fits is kept for an operator.
            match Envelope::new(
                &provider,
                id,
                kind,
                static_scheme(&scheme),
                source_ip,
                received_at,
                Bytes::from(body),
            ) {
                Ok(envelope) => {
                    let trace = TraceContext::from_headers(parent.as_deref(), state.as_deref());
                    let envelope = envelope.with_trace(trace);
                    out.push(Spooled { seq, envelope });
                }
                Err(err) => {
                    tracing::error!(seq, error = %err, "unreadable spool entry left in place")
                }
            }
        }
        Ok(out)
    }

    /// The receive time of the oldest waiting event.
    pub fn oldest_received(&self) -> Option<SystemTime> {
        let db = self.inner.db.lock().ok()?;
        let ms: i64 = db
            .query_row(
                "SELECT received_ms FROM spool ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .ok()?;
        Some(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).ok()?))
    }

    /// Deletes events once the broker confirmed them (blocking).
    ///
    /// # Errors
    /// The delete failed; the events stay and are sent again (the worker dedupes).
    pub fn remove(&self, done: &[Spooled]) -> Result<(), SpoolError> {
        let mut db = self.inner.db.lock().map_err(|_| Unwritable::Poisoned)?;
        let tx = db.transaction()?;
        {
            let mut stmt = tx.prepare_cached("DELETE FROM spool WHERE seq = ?1")?;
            for s in done {
                stmt.execute(params![s.seq])?;
            }
        }
        tx.commit()?;
        let bytes: u64 = done.iter().map(|s| s.envelope.body.len() as u64).sum();
        let before = self
            .inner
            .depth
            .fetch_sub(done.len() as u64, Ordering::Relaxed);
        if before == done.len() as u64 {
            self.inner.emptied.notify_waiters();
        }
        self.inner.refused.store(false, Ordering::Relaxed);
        self.inner
            .bytes
            .fetch_sub(bytes.min(self.bytes()), Ordering::Relaxed);
        Ok(())
    }
}

fn static_scheme(name: &str) -> &'static str {
    match name {
        "hmac-sha256" => "hmac-sha256",
        "github" => "github",
        "stripe" => "stripe",
        "standard-webhooks" => "standard-webhooks",
        _ => "unknown",
    }
}

/// Takes whatever is waiting (up to [`GROUP`]), writes it in one transaction, answers all.
async fn write_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let envelopes: Vec<Envelope> = group.iter().map(|p| p.envelope.clone()).collect();
        let db_inner = inner.clone();
        let written = tokio::task::spawn_blocking(move || write_group(&db_inner, &envelopes))
            .await
            .unwrap_or_else(|e| Err(Unwritable::WriterPanicked(e).into()));
        if written.is_ok() {
            let bytes: u64 = group.iter().map(|p| p.envelope.body.len() as u64).sum();
            inner.depth.fetch_add(group.len() as u64, Ordering::Relaxed);
            inner.bytes.fetch_add(bytes, Ordering::Relaxed);
            inner.added.notify_one();
        }
        for p in group {
            let _ = p.done.send(written.clone());
        }
    }
}

fn write_group(inner: &Inner, envelopes: &[Envelope]) -> Result<(), SpoolError> {
    let mut db = inner.db.lock().map_err(|_| Unwritable::Poisoned)?;
    let tx = db.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO spool (provider, event_id, event_type, scheme, source_ip, received_ms, body,
                                traceparent, tracestate)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for e in envelopes {
            stmt.execute(params![
                e.provider.as_str(),
                e.event_id.as_str(),
                e.event_type.as_str(),
                e.scheme,
                e.source_ip.to_string(),
                ms(e.received_at),
                e.body.as_ref(),
                e.trace.as_ref().map(TraceContext::traceparent),
                e.trace.as_ref().and_then(TraceContext::tracestate),
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: &str, body: &'static [u8]) -> Envelope {
        Envelope::new(
            "dregs",
            id.to_owned(),
            "identity.scored".to_owned(),
            "stripe",
            IpAddr::from([192, 0, 2, 1]),
            SystemTime::now(),
            Bytes::from_static(body),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn events_survive_a_reopen_in_order_and_leave_only_when_removed() {
        let path =
            std::env::temp_dir().join(format!("hw-spool-{}.db", uuid::Uuid::new_v4().simple()));
        {
            let spool = Spool::open(&path, 1 << 20).unwrap();
            let mut puts = Vec::new();
            for i in 0..100 {
                let s = spool.clone();
                puts.push(tokio::spawn(async move {
                    s.put(envelope(&format!("e{i:03}"), b"{\"a\":1}")).await
                }));
                // Arrival order is the order puts reach the writer.
                tokio::task::yield_now().await;
            }
            for p in puts {
                p.await.unwrap().unwrap();
            }
            assert_eq!(spool.depth(), 100);
        }
        let spool = Spool::open(&path, 1 << 20).unwrap();
        assert_eq!(spool.depth(), 100);
        assert_eq!(spool.bytes(), 700);
        let first = spool.oldest(10).unwrap();
        assert_eq!(first.len(), 10);
        assert_eq!(first[0].envelope.event_id.as_str(), "e000");
        assert_eq!(first[0].envelope.scheme, "stripe");
        assert_eq!(first[0].envelope.body.as_ref(), b"{\"a\":1}");
        spool.remove(&first).unwrap();
        assert_eq!(spool.depth(), 90);
        assert_eq!(
            spool.oldest(1).unwrap()[0].envelope.event_id.as_str(),
            "e010"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn a_trace_survives_the_spool_and_an_older_spool_file_is_upgraded() {
        let path =
            std::env::temp_dir().join(format!("hw-spool-{}.db", uuid::Uuid::new_v4().simple()));
        // A spool as listeners before trace context wrote it, with one event waiting.
        {
            let db = Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, provider TEXT NOT NULL,
                 event_id TEXT NOT NULL, event_type TEXT NOT NULL, scheme TEXT NOT NULL,
                 source_ip TEXT NOT NULL, received_ms INTEGER NOT NULL, body BLOB NOT NULL);
                 INSERT INTO spool (provider, event_id, event_type, scheme, source_ip,
                 received_ms, body) VALUES ('dregs', 'old', 'identity.scored', 'stripe',
                 '192.0.2.1', 0, X'7B7D');",
            )
            .unwrap();
        }
        let spool = Spool::open(&path, 1 << 20).unwrap();
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let trace = TraceContext::from_headers(Some(parent), Some("congo=t61rcWkgMzE"));
        spool
            .put(envelope("new", b"{}").with_trace(trace.clone()))
            .await
            .unwrap();
        let waiting = spool.oldest(10).unwrap();
        assert_eq!(waiting.len(), 2);
        assert_eq!(waiting[0].envelope.event_id.as_str(), "old");
        assert_eq!(waiting[0].envelope.trace, None);
        assert_eq!(waiting[1].envelope.trace, trace);
        let _ = std::fs::remove_file(&path);
    }

    /// The chain an operator reads (`{:#}` at start-up, [`crate::telemetry::ErrorChain`] in
    /// logs), one cause per level, each said once.
    fn chain(err: &SpoolError) -> String {
        let anyhow = format!("{:#}", anyhow::Error::from(err.clone()));
        assert_eq!(anyhow, crate::telemetry::ErrorChain(err).to_string());
        anyhow
    }

    #[tokio::test]
    async fn a_spool_that_cannot_open_says_where_and_why_and_keeps_the_cause() {
        let file = std::env::temp_dir().join(format!("hw-spool-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&file, b"not a directory").unwrap();
        // Its directory would have to be inside a file.
        let path = file.join("sub").join("spool.db");
        let err = Spool::open(&path, 1 << 20).err().unwrap();
        let io = std::io::Error::from_raw_os_error(20);
        assert_eq!(
            chain(&err),
            format!(
                "the spool cannot be written: opening spool {}: {}: {io}",
                path.display(),
                file.join("sub").display()
            )
        );
        let mut cause: &dyn std::error::Error = &err;
        while let Some(next) = cause.source() {
            cause = next;
        }
        assert_eq!(
            cause
                .downcast_ref::<std::io::Error>()
                .map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotADirectory)
        );

        // A directory where the database file should be: SQLite's own message, once.
        let dir = std::env::temp_dir().join(format!("hw-spool-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap();
        let err = Spool::open(&dir, 1 << 20).err().unwrap();
        let text = chain(&err);
        let prefix = format!(
            "the spool cannot be written: opening spool {}: ",
            dir.display()
        );
        let sqlite = text.strip_prefix(&prefix).expect(&text);
        assert!(
            !sqlite.is_empty() && !sqlite.contains(": Error code"),
            "{text}"
        );
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_dir(&dir);
    }

    #[tokio::test]
    async fn a_full_spool_refuses() {
        let path =
            std::env::temp_dir().join(format!("hw-spool-{}.db", uuid::Uuid::new_v4().simple()));
        let spool = Spool::open(&path, 10).unwrap();
        spool.put(envelope("a", b"12345678")).await.unwrap();
        assert!(matches!(
            spool.put(envelope("b", b"12345678")).await,
            Err(SpoolError::Full)
        ));
        let _ = std::fs::remove_file(&path);
    }
}
