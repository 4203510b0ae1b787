//! Worker test harness: a worker started in this process against the real broker with
//! unique queue names and its own state file, events published into its exchange exactly
//! as the listener publishes them, and decisions read back from its store.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hookwarden::broker::publisher::publish_confirmed;
use hookwarden::envelope::Envelope;
use hookwarden::telemetry::trace::TraceContext;
use hookwarden::worker::config::{Backend, WorkerConfig};
use std::sync::Arc;

use hookwarden::worker::state::{DecisionRecord, Store};
use lapin::options::ConfirmSelectOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use tokio_util::sync::CancellationToken;

use crate::harness::{BROKER_TIMEOUT, Broker, Names, amqp_url, tempdir, wait_for};
use crate::pg::{Schema, worker_state_in_postgres};

/// A rules file for one test; `{SINK}` in it becomes the sink's base URL.
pub struct WorkerHarness {
    rules: String,
    amqp: Vec<(String, String)>,
    /// `[amqp] url` as a TOML value (a string or a list).
    url: Option<String>,
    postgres: bool,
    /// A PostgreSQL state of the test's own: the worker's URL, and the one the test reads by.
    state_urls: Option<(String, String)>,
    /// `[state] pool_size`, when the state is in PostgreSQL.
    pool_size: Option<u32>,
}

/// The `[[subjects]]` entry for Dregs test events (see [`dregs`]).
pub const DREGS_SUBJECTS: &str = r#"
[[subjects]]
provider = "dregs"
types = ["identity.*"]
subject = "/data/identity_id"
version = "/data/scored_at"
scores = { humanity = "/data/scores/humanity" }
"#;

impl WorkerHarness {
    /// Rules for Dregs test events: [`DREGS_SUBJECTS`], then `rules`.
    pub fn for_dregs(rules: &str) -> Self {
        Self::new(&format!("{DREGS_SUBJECTS}{rules}"))
    }

    pub fn new(rules: &str) -> Self {
        Self {
            rules: rules.to_owned(),
            amqp: Vec::new(),
            url: None,
            postgres: false,
            state_urls: None,
            pool_size: None,
        }
    }

    /// `[state] pool_size` when the state is in PostgreSQL (the embedded store takes none).
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = Some(size);
        self
    }

    /// Connects the worker to `url` (e.g. a [`crate::harness::Proxy`]) instead of the broker.
    pub fn url(mut self, url: &str) -> Self {
        self.url = Some(format!("\"{url}\""));
        self
    }

    /// Keeps the worker's state in a PostgreSQL schema of its own (as every worker started
    /// here does when `HOOKWARDEN_TEST_STATE=postgres`).
    pub fn postgres(mut self) -> Self {
        self.postgres = true;
        self
    }

    /// Connects the worker to these broker nodes, tried in turn (a cluster).
    pub fn urls(mut self, urls: &[String]) -> Self {
        let quoted: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
        self.url = Some(format!("[{}]", quoted.join(", ")));
        self
    }

    /// Keeps the worker's state in PostgreSQL at `worker` (a schema the test owns, shared by
    /// several workers, or reached through a proxy); the test reads decisions through `read`.
    pub fn state_url(mut self, worker: &str, read: &str) -> Self {
        self.state_urls = Some((worker.to_owned(), read.to_owned()));
        self
    }

    pub fn amqp(mut self, key: &str, value: &str) -> Self {
        self.amqp.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The rules file, its state in the SQLite file `state`.
    pub fn text(&self, names: &Names, state: &std::path::Path, sink: &str) -> String {
        self.text_with_state(names, &format!("path = \"{}\"\n", state.display()), sink)
    }

    /// The rules file with `state` as the body of its `[state]` section.
    pub fn text_with_state(&self, names: &Names, state: &str, sink: &str) -> String {
        let mut text = format!(
            "[amqp]\nurl = {}\nexchange = \"{}\"\nqueue = \"{}\"\ndead_letter_exchange = \"{}\"\ndead_letter_queue = \"{}\"\nreview_queue = \"{}\"\n",
            self.url
                .clone()
                .unwrap_or_else(|| format!("\"{}\"", amqp_url())),
            names.exchange,
            names.queue,
            names.dead_letter_exchange,
            names.dead_letter_queue,
            names.review_queue
        );
        for (k, v) in &self.amqp {
            text.push_str(&format!("{k} = {v}\n"));
        }
        text.push_str(&format!(
            "[server]\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"10s\"\n[state]\n{state}"
        ));
        text.push_str(&self.rules.replace("{SINK}", sink));
        text
    }

    pub async fn start(self, sink: &str) -> TestWorker {
        self.start_with_names(sink, Names::new()).await
    }

    /// Starts on the given topology (e.g. a listener's).
    pub async fn start_with_names(self, sink: &str, names: Names) -> TestWorker {
        let dir = tempdir::Dir::new();
        let schema = if self.state_urls.is_none() && (self.postgres || worker_state_in_postgres()) {
            Some(Schema::new().await)
        } else {
            None
        };
        let (state, read_url) = match (&self.state_urls, &schema) {
            (Some((worker, read)), _) => (format!("url = \"{worker}\"\n"), Some(read.clone())),
            (None, Some(schema)) => (
                format!(
                    "url = \"{}\"\n{}",
                    schema.url(),
                    self.pool_size
                        .map(|n| format!("pool_size = {n}\n"))
                        .unwrap_or_default()
                ),
                None,
            ),
            (None, None) => (
                format!("path = \"{}\"\n", dir.path.join("worker.db").display()),
                None,
            ),
        };
        let text = self.text_with_state(&names, &state, sink);
        let config = WorkerConfig::parse("rules.toml", &text, &HashMap::new())
            .unwrap_or_else(|e| panic!("test rules invalid:\n{e}"));
        let mut state = config.state.clone();
        if let (Some(read), Backend::Postgres(options)) = (read_url, &mut state.backend) {
            options.url = read;
        }
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_url = format!("http://{}", admin.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let running = hookwarden::worker::start(config, admin, shutdown.clone())
            .await
            .unwrap();
        wait_for("the worker consuming", BROKER_TIMEOUT, || {
            let consuming = running.consuming.load(std::sync::atomic::Ordering::Relaxed);
            async move {
                if consuming {
                    Ok(())
                } else {
                    Err("not consuming".to_owned())
                }
            }
        })
        .await;
        let broker = Broker::connect().await;
        let publisher = broker.connection.create_channel().await.unwrap();
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let store = hookwarden::worker::state::open(&state).await.unwrap();
        TestWorker {
            admin: admin_url,
            names,
            text,
            dir,
            shutdown,
            running: Some(running),
            broker,
            publisher,
            store,
            schema,
        }
    }
}

pub struct TestWorker {
    /// The admin base URL (`/readyz`, `/metrics`).
    pub admin: String,
    pub names: Names,
    pub text: String,
    pub dir: tempdir::Dir,
    shutdown: CancellationToken,
    pub running: Option<hookwarden::worker::Running>,
    pub broker: Broker,
    publisher: Channel,
    pub store: Arc<dyn Store>,
    /// The PostgreSQL schema of its state, dropped after everything else.
    schema: Option<Schema>,
}

impl TestWorker {
    /// Publishes the Dregs event [`dregs`] builds from these arguments, as the listener would.
    pub async fn publish_dregs(&self, id: &str, subject: &str, at: &str, humanity: u32) {
        self.publish(
            "dregs",
            "identity.scored",
            id,
            &dregs(id, subject, at, humanity),
        )
        .await;
    }

    /// As [`Self::publish_dregs`], the message naming the trace `traceparent`, as the
    /// listener's request span would.
    pub async fn publish_dregs_traced(
        &self,
        id: &str,
        subject: &str,
        at: &str,
        humanity: u32,
        traceparent: &str,
    ) {
        let body = dregs(id, subject, at, humanity);
        let envelope = Envelope::new(
            "dregs",
            id.to_owned(),
            "identity.scored".to_owned(),
            "hmac-sha256",
            std::net::IpAddr::from([127, 0, 0, 1]),
            SystemTime::now(),
            Bytes::from(body.clone()),
        )
        .unwrap()
        .with_trace(TraceContext::from_headers(Some(traceparent), None));
        self.publish_raw(
            &envelope.routing_key.to_string(),
            envelope.properties(),
            body.as_bytes(),
        )
        .await;
    }

    /// Publishes `body` as the listener would for `provider`, `event_type`, `id`.
    pub async fn publish(&self, provider: &str, event_type: &str, id: &str, body: &str) {
        let envelope = Envelope::new(
            provider,
            id.to_owned(),
            event_type.to_owned(),
            "hmac-sha256",
            std::net::IpAddr::from([127, 0, 0, 1]),
            SystemTime::now(),
            Bytes::from(body.to_owned()),
        )
        .unwrap();
        self.publish_raw(
            &envelope.routing_key.to_string(),
            envelope.properties(),
            body.as_bytes(),
        )
        .await;
    }

    /// Publishes arbitrary bytes and properties into the events exchange.
    pub async fn publish_raw(&self, routing_key: &str, props: BasicProperties, body: &[u8]) {
        publish_confirmed(
            &self.publisher,
            ShortString::from(self.names.exchange.as_str()),
            ShortString::from(routing_key),
            body,
            props,
            BROKER_TIMEOUT,
        )
        .await
        .unwrap();
    }

    /// Waits for the decision record of `provider/id`.
    pub async fn decision(&self, provider: &str, id: &str) -> DecisionRecord {
        let key = format!("{provider}/{id}");
        wait_for(
            &format!("the decision for {key}"),
            Duration::from_secs(20),
            || {
                let key = key.clone();
                async move {
                    let found = self.decisions(Some(&key), None, 1).await;
                    match found.into_iter().next() {
                        Some(d) => Ok(d),
                        None => {
                            let latest: Vec<String> = self
                                .decisions(None, None, 5)
                                .await
                                .into_iter()
                                .map(|d| format!("{} {}", d.event_key, d.outcome))
                                .collect();
                            Err(format!("no record for it; the latest: {latest:?}"))
                        }
                    }
                }
            },
        )
        .await
    }

    /// Decision records of an event or a subject, newest first, read as `hookwarden
    /// decisions` reads them (the store's calls block: off the test's runtime).
    pub async fn decisions(
        &self,
        event: Option<&str>,
        subject: Option<&str>,
        limit: usize,
    ) -> Vec<DecisionRecord> {
        let (store, event, subject) = (
            self.store.clone(),
            event.map(str::to_owned),
            subject.map(str::to_owned),
        );
        tokio::task::spawn_blocking(move || {
            store.decisions(event.as_deref(), subject.as_deref(), limit)
        })
        .await
        .unwrap()
        .unwrap()
    }

    /// How many of `keys` have a final decision.
    pub async fn decided(&self, keys: &[String]) -> usize {
        let (store, keys) = (self.store.clone(), keys.to_vec());
        tokio::task::spawn_blocking(move || store.decided(&keys).map(|d| d.len()))
            .await
            .unwrap()
            .unwrap_or(0)
    }

    pub fn metrics(&self) -> String {
        self.running
            .as_ref()
            .map(|r| r.metrics.encode())
            .unwrap_or_default()
    }

    /// Stops the worker and starts it again on the same rules file, queues and state.
    pub async fn restart(&mut self) {
        self.stop().await;
        let config = WorkerConfig::parse("rules.toml", &self.text, &HashMap::new())
            .unwrap_or_else(|e| panic!("test rules invalid:\n{e}"));
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.admin = format!("http://{}", admin.local_addr().unwrap());
        self.shutdown = CancellationToken::new();
        let running = hookwarden::worker::start(config, admin, self.shutdown.clone())
            .await
            .unwrap();
        wait_for("the restarted worker consuming", BROKER_TIMEOUT, || {
            let consuming = running.consuming.load(std::sync::atomic::Ordering::Relaxed);
            async move {
                if consuming {
                    Ok(())
                } else {
                    Err("not consuming".to_owned())
                }
            }
        })
        .await;
        self.running = Some(running);
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(20), running.done)
                .await
                .expect("worker stopped in time")
                .unwrap();
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A Dregs-style event.
pub fn dregs(id: &str, subject: &str, at: &str, humanity: u32) -> String {
    format!(
        r#"{{"id":"{id}","type":"identity.scored","data":{{"identity_id":"{subject}","scored_at":"{at}","scores":{{"humanity":{humanity},"uniqueness":61,"authenticity":48}},"reason":"test"}}}}"#
    )
}
