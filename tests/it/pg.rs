//! A PostgreSQL schema of its own for one test, on the database at 127.0.0.1:5432 (or
//! `HOOKWARDEN_TEST_POSTGRES`), dropped with everything in it when the test ends.
#![allow(dead_code)]

use tokio_postgres::NoTls;

/// The database the tests use: trust auth, database `test`, no TLS.
pub fn base_url() -> String {
    std::env::var("HOOKWARDEN_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test?sslmode=disable".to_owned())
}

/// Whether `HOOKWARDEN_TEST_STATE=postgres` asks the worker tests to keep their state in
/// PostgreSQL instead of the embedded store (`.ci/run` runs them both ways).
pub fn worker_state_in_postgres() -> bool {
    std::env::var("HOOKWARDEN_TEST_STATE").is_ok_and(|v| v == "postgres")
}

/// A uniquely named schema; dropped (CASCADE) on drop.
pub struct Schema {
    pub name: String,
}

impl Schema {
    pub async fn new() -> Self {
        let name = format!("hwtest_{}", uuid::Uuid::new_v4().simple());
        execute(&format!("CREATE SCHEMA {name}")).await;
        Self { name }
    }

    /// A URL whose connections work in this schema.
    pub fn url(&self) -> String {
        format!("{}&options=-c%20search_path%3D{}", base_url(), self.name)
    }

    /// The same, through `addr` (a [`crate::harness::Proxy`] in front of the database).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        self.url().replacen("127.0.0.1:5432", &addr.to_string(), 1)
    }

    /// Runs `sql` in this schema.
    pub async fn execute(&self, sql: &str) {
        execute(&format!("SET search_path = {}; {sql}", self.name)).await;
    }

    /// The first column of `sql`'s first row, as an integer (counting rows, say).
    pub async fn count(&self, sql: &str) -> i64 {
        connect().await.query_one(sql, &[]).await.unwrap().get(0)
    }

    /// The first column of `sql`'s rows, as text, in this schema.
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        let client = connect().await;
        client
            .batch_execute(&format!("SET search_path = {}", self.name))
            .await
            .unwrap();
        client
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // A worker being stopped may still hold a table lock for a moment; one that never lets
        // go leaves the schema behind rather than hanging the test.
        let sql = format!(
            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.name
        );
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(execute(&sql));
            }
        })
        .join();
    }
}

async fn connect() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&base_url(), NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {}: {e}", base_url()));
    tokio::spawn(connection);
    client
}

async fn execute(sql: &str) {
    connect()
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}
