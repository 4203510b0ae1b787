//! The worker's config file (the rules file, `rules.toml`): the daemon's own sections
//! (`[server]`, `[state]`, and the shared `[amqp]` and `[log]`) and its compiled [`Rules`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::amqp::AmqpConfig;
use crate::config::log::LogConfig;
use crate::config::{ConfigError, ConfigKind, Document, Problem};
use crate::worker::rules::Rules;

/// The whole validated worker config.
pub struct WorkerConfig {
    /// `[amqp]`, shared with the listener.
    pub amqp: AmqpConfig,
    /// `[server]`: admin address, shutdown grace.
    pub server: WorkerServer,
    /// `[state]`: the embedded store.
    pub state: StateConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[[subjects]]`, `[[rules]]` and `[actions.*]`, compiled.
    pub rules: Rules,
}

/// `[server]` of the worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerServer {
    /// Admin address for `/healthz`, `/readyz`, `/metrics`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// On SIGTERM, how long in-flight events may take to finish.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9091))
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// SQLite file of per-subject state, done-marks and decisions.
    #[serde(default = "default_state_path")]
    pub path: PathBuf,
    /// How long decision records and done-marks are kept.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
}

fn default_state_path() -> PathBuf {
    PathBuf::from("/var/lib/hookwarden/worker.db")
}
fn default_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

impl WorkerConfig {
    /// Parses and compiles a rules file.
    ///
    /// # Errors
    /// Every problem found, each with its key path and reason.
    pub fn parse(
        file: &str,
        text: &str,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut doc = Document::parse(file, text, env, ConfigKind::Worker)?;
        doc.reject_unknown_sections();
        let amqp: Option<AmqpConfig> = doc.section("amqp");
        let server: Option<WorkerServer> = doc.section("server");
        let state: Option<StateConfig> = doc.section("state");
        let log: Option<LogConfig> = doc.section("log");
        if let Some(amqp) = &amqp {
            amqp.validate(&mut doc, "amqp");
        }
        let review_queue = amqp
            .as_ref()
            .map(|a| a.review_queue.clone())
            .unwrap_or_default();
        let rules = Rules::compile(&mut doc, env, &review_queue);
        doc.finish()?;
        match (amqp, server, state, log) {
            (Some(amqp), Some(server), Some(state), Some(log)) => Ok(WorkerConfig {
                amqp,
                server,
                state,
                log,
                rules,
            }),
            _ => Err(ConfigError {
                problems: vec![Problem {
                    file: file.to_owned(),
                    line: None,
                    key: String::new(),
                    reason: "incomplete config".to_owned(),
                    variable: None,
                }],
            }),
        }
    }

    /// A short human summary for `--check`.
    pub fn summary(&self) -> String {
        format!(
            "broker {} queue {:?} prefetch {}; state {} (decisions kept {})\n{}",
            self.amqp.redacted_url(),
            self.amqp.queue,
            self.amqp.prefetch,
            self.state.path.display(),
            humantime::format_duration(self.state.retention),
            self.rules.summary()
        )
    }
}
