//! The PostgreSQL schema's versions: each migration a numbered SQL file under
//! `migrations/postgres/`, applied in order at the worker's start and recorded in
//! `hookwarden_schema` with a checksum of its text. A worker refuses a schema newer than it
//! knows (a newer worker migrated it; this one would misread it) and a migration whose text
//! changed since it was applied.

use deadpool_postgres::Object;
use sha2::{Digest, Sha256};

use super::StoreError;

/// One migration: its version, name and SQL.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration this build knows, oldest first; a new one is appended, never edited.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../../../migrations/postgres/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "archive",
        sql: include_str!("../../../migrations/postgres/0002_archive.sql"),
    },
    Migration {
        version: 3,
        name: "breakers",
        sql: include_str!("../../../migrations/postgres/0003_breakers.sql"),
    },
    Migration {
        version: 4,
        name: "watches",
        sql: include_str!("../../../migrations/postgres/0004_watches.sql"),
    },
    Migration {
        version: 5,
        name: "labels",
        sql: include_str!("../../../migrations/postgres/0005_labels.sql"),
    },
    Migration {
        version: 6,
        name: "dead letters",
        sql: include_str!("../../../migrations/postgres/0006_dead_letters.sql"),
    },
];

/// The advisory lock two workers starting at once take before looking at the schema, so one
/// migrates and the other then finds it done. (Any constant no other application uses.)
const MIGRATION_LOCK: i64 = 0x686f_6f6b_7761_7264; // "hookward"

/// The newest schema version this build knows.
pub fn known_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Brings the schema of the connection's `search_path` up to this build's version.
///
/// # Errors
/// The database refused a statement, the schema is newer than this build, or an applied
/// migration's text differs from this build's.
pub async fn run(client: &mut Object) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply(client).await;
    // Unlocked whether or not the migration went through; on an error the caller closes the
    // connection as well, which releases the lock even when this unlock did not go out.
    match client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
    {
        Ok(_) => result,
        Err(err) => result.and(Err(StoreError::Postgres(err))),
    }
}

/// Checks, without changing anything, that the schema is this build's version: for the
/// operator's commands, which must not create or migrate a schema the workers share.
///
/// # Errors
/// No hookwarden schema on the connection's `search_path`, or one of another version.
pub async fn check(client: &Object) -> Result<(), StoreError> {
    let found: Option<i32> = client
        .query_one(
            "SELECT CASE WHEN to_regclass('hookwarden_schema') IS NULL THEN NULL
                    ELSE (SELECT coalesce(max(version), 0) FROM hookwarden_schema) END",
            &[],
        )
        .await
        .map_err(StoreError::Postgres)
        .and_then(|row| row.try_get(0).map_err(StoreError::Postgres))
        .or_else(|err| match err {
            // Postgres cannot plan the subquery on a table that is not there: no schema.
            StoreError::Postgres(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
            {
                Ok(None)
            }
            other => Err(other),
        })?;
    let known = known_version();
    match found {
        None => Err(StoreError::NoSchema),
        Some(found) if found > known => Err(StoreError::SchemaTooNew { found, known }),
        Some(found) if found < known => Err(StoreError::SchemaBehind { found, known }),
        Some(_) => Ok(()),
    }
}

async fn apply(client: &mut Object) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS hookwarden_schema (
                version INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                checksum TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let applied = client
        .query(
            "SELECT version, checksum FROM hookwarden_schema ORDER BY version",
            &[],
        )
        .await?;
    let known = known_version();
    let mut newest = 0;
    for row in &applied {
        let version: i32 = row.try_get(0)?;
        let stored: String = row.try_get(1)?;
        newest = newest.max(version);
        if version > known {
            return Err(StoreError::SchemaTooNew {
                found: version,
                known,
            });
        }
        let ours = MIGRATIONS.iter().find(|m| m.version == version);
        if ours.is_none_or(|m| checksum(m.sql) != stored) {
            return Err(StoreError::SchemaChanged { version });
        }
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > newest) {
        let tx = client.transaction().await?;
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO hookwarden_schema (version, name, checksum) VALUES ($1, $2, $3)",
            &[
                &migration.version,
                &migration.name,
                &checksum(migration.sql),
            ],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "state schema migrated"
        );
    }
    Ok(())
}
