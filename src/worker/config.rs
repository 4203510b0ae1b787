//! The worker's config file (the rules file, `rules.toml`): the daemon's own sections
//! (`[server]`, `[state]`, and the shared `[amqp]` and `[log]`) and its compiled [`Rules`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::amqp::{AmqpConfig, redact};
use crate::config::log::LogConfig;
use crate::config::telemetry::TelemetryConfig;
use crate::config::{ConfigError, ConfigKind, Document, Problem};
use crate::ui::config::UiConfig;
use crate::worker::rules::Rules;
use crate::worker::state::PgOptions;

/// The whole validated worker config.
pub struct WorkerConfig {
    /// `[amqp]`, shared with the listener.
    pub amqp: AmqpConfig,
    /// `[server]`: admin address, shutdown grace.
    pub server: WorkerServer,
    /// `[state]`: the embedded store.
    pub state: StateConfig,
    /// `[archive]`: the events kept for backtests.
    pub archive: ArchiveConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[telemetry]`: where traces are exported.
    pub telemetry: TelemetryConfig,
    /// `[[subjects]]`, `[[rules]]` and `[actions.*]`, compiled.
    pub rules: Rules,
    /// `[ui]`: the web view on the admin address.
    pub ui: UiConfig,
    /// The rules file's path made absolute (the web view shows commands that name it).
    pub file: String,
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

/// `[state]`: where the worker keeps its state, parsed into the backend it names.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawState")]
pub struct StateConfig {
    /// The embedded SQLite file, or a PostgreSQL database.
    pub backend: Backend,
    /// How long decision records and done-marks are kept.
    pub retention: Duration,
}

/// Where the state lives.
#[derive(Debug, Clone)]
pub enum Backend {
    /// `path`: the embedded store, one worker.
    Sqlite(PathBuf),
    /// `url`: PostgreSQL, shared by any number of workers.
    Postgres(PgOptions),
}

impl StateConfig {
    /// The file's path, or the URL with its password hidden.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(path) => path.display().to_string(),
            Backend::Postgres(options) => redact_postgres(&options.url),
        }
    }
}

/// `[state]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    path: Option<PathBuf>,
    url: Option<String>,
    pool_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    statement_timeout: Option<Duration>,
    #[serde(default = "default_retention", with = "humantime_serde")]
    retention: Duration,
}

impl TryFrom<RawState> for StateConfig {
    type Error = String;

    fn try_from(raw: RawState) -> Result<Self, String> {
        let backend = match (raw.path, raw.url) {
            (Some(_), Some(_)) => {
                return Err(
                    "give either path (the embedded SQLite file) or url (PostgreSQL), \
                            not both"
                        .to_owned(),
                );
            }
            (path, None) => {
                if raw.pool_size.is_some() || raw.statement_timeout.is_some() {
                    return Err(
                        "pool_size and statement_timeout apply to url (PostgreSQL) only".to_owned(),
                    );
                }
                Backend::Sqlite(path.unwrap_or_else(default_state_path))
            }
            (None, Some(url)) => {
                if let Err(err) = url.parse::<tokio_postgres::Config>() {
                    return Err(format!(
                        "url {} is not a PostgreSQL URL: {err}",
                        redact_postgres(&url)
                    ));
                }
                let pool_size = raw.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
                if pool_size < MIN_POOL_SIZE {
                    return Err(format!(
                        "pool_size must be at least {MIN_POOL_SIZE}: a batch's subject lock, \
                         its reads and the done-mark writer each hold a connection at once"
                    ));
                }
                let statement_timeout = raw.statement_timeout.unwrap_or(DEFAULT_STATEMENT_TIMEOUT);
                if statement_timeout.is_zero() {
                    return Err("statement_timeout must be more than 0s".to_owned());
                }
                Backend::Postgres(PgOptions {
                    url,
                    pool_size,
                    statement_timeout,
                })
            }
        };
        Ok(Self {
            backend,
            retention: raw.retention,
        })
    }
}

/// `[archive]`: every event the worker decides, kept in the state store with its raw body for
/// `hookwarden rules backtest` to replay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Whether events are archived.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long archived events are kept (by receive time).
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// At most this many bytes of bodies; the oldest go first.
    #[serde(default, deserialize_with = "optional_size")]
    pub max_bytes: Option<u64>,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retention: default_retention(),
            max_bytes: None,
        }
    }
}

impl ArchiveConfig {
    /// One line for `--check`: whether events are archived, how long and how much.
    pub fn describe(&self) -> String {
        if !self.enabled {
            return "events not archived".to_owned();
        }
        match self.max_bytes {
            Some(max) => format!(
                "events archived {} up to {}",
                humantime::format_duration(self.retention),
                bytesize::ByteSize(max)
            ),
            None => format!(
                "events archived {}",
                humantime::format_duration(self.retention)
            ),
        }
    }
}

fn default_true() -> bool {
    true
}

fn optional_size<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<u64>, D::Error> {
    crate::config::units::size(de).map(Some)
}

/// A batch holds a connection for its subjects' lock (and commits through it), its reads and
/// the done-mark writer need one each meanwhile: three is the fewest that never waits on
/// itself; the fourth serves the hourly prune.
const DEFAULT_POOL_SIZE: usize = 4;
const MIN_POOL_SIZE: usize = 3;
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The URL with its password hidden, in the userinfo or in a `password=` parameter.
pub fn redact_postgres(url: &str) -> String {
    let userinfo = redact(url);
    let mut out = String::with_capacity(userinfo.len());
    let mut rest = userinfo.as_str();
    while let Some(at) = rest.find("password=") {
        let value = at + "password=".len();
        out.push_str(&rest[..value]);
        out.push_str("***");
        rest = &rest[value..];
        let end = rest.find(['&', ' ']).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
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
        let archive: Option<ArchiveConfig> = doc.section("archive");
        let log: Option<LogConfig> = doc.section("log");
        let ui = UiConfig::parse(&mut doc);
        let mut telemetry: Option<TelemetryConfig> = doc.section("telemetry");
        if let Some(telemetry) = &mut telemetry {
            telemetry.validate(&mut doc);
        }
        if let Some(amqp) = &amqp {
            amqp.validate(&mut doc, "amqp");
        }
        let review_queue = amqp
            .as_ref()
            .map(|a| a.review_queue.clone())
            .unwrap_or_default();
        let rules = Rules::compile(&mut doc, env, &review_queue);
        if let Some(amqp) = &amqp {
            check_pace(&mut doc, &rules, amqp.prefetch.get());
        }
        doc.finish()?;
        match (amqp, server, state, archive, log, telemetry, ui) {
            (
                Some(amqp),
                Some(server),
                Some(state),
                Some(archive),
                Some(log),
                Some(telemetry),
                Some(ui),
            ) => Ok(WorkerConfig {
                amqp,
                server,
                state,
                archive,
                log,
                telemetry,
                rules,
                ui,
                // Absolute (not resolved through links), for the commands the web view shows.
                file: std::path::absolute(file)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| file.to_owned()),
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
            "broker {} queue {:?} prefetch {}; state {} (decisions kept {}; {}); {}\n{}{}",
            self.amqp.redacted_url(),
            self.amqp.queue,
            self.amqp.prefetch,
            self.state.describe(),
            humantime::format_duration(self.state.retention),
            self.archive.describe(),
            self.ui.describe(),
            self.telemetry.summary(),
            self.rules.summary()
        )
    }
}

/// How long RabbitMQ lets a delivery go unacked before it closes the channel (its default
/// `consumer_timeout`).
const CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Refuses a rate so slow that a batch of `prefetch` firings, all paced, would outlast the
/// broker's `consumer_timeout`: the channel would close, the batch be redelivered, and each
/// redelivery count towards the delivery limit until the events are dead-lettered.
fn check_pace(doc: &mut Document<'_>, rules: &Rules, prefetch: u16) {
    for action in &rules.actions {
        let Some(gap) = action.pace.gap() else {
            continue;
        };
        let full = gap.saturating_mul(u32::from(prefetch));
        if full > CONSUMER_TIMEOUT {
            doc.problem(
                &format!("actions.{}.rate", action.name),
                format!(
                    "a batch of {prefetch} firings at this rate takes {}, past RabbitMQ's \
                     consumer_timeout ({}): raise the rate or lower amqp.prefetch",
                    humantime::format_duration(full),
                    humantime::format_duration(CONSUMER_TIMEOUT)
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECTS: &str = r#"
[[subjects]]
provider = "dregs"
types = ["identity.*"]
subject = "/data/id"
scores = { humanity = "/data/humanity" }
"#;

    /// Every problem of `text` (after the subjects above), one per line.
    fn problems(text: &str, env: &[(&str, &str)]) -> String {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match WorkerConfig::parse("rules.toml", &format!("{SUBJECTS}{text}"), &env) {
            Ok(_) => String::new(),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn a_file_of_defaults_loads() {
        let config = WorkerConfig::parse("rules.toml", SUBJECTS, &HashMap::new());
        let config = config.unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(config.server.admin_listen.port(), 9091);
        assert_eq!(config.state.retention, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(config.rules.subjects.len(), 1);
        assert!(config.summary().contains("subjects: provider \"dregs\""));
    }

    #[test]
    fn archive_and_breakers_are_checked_at_load() {
        let config = WorkerConfig::parse(
            "rules.toml",
            &format!("{SUBJECTS}[archive]\nmax_bytes = \"1GiB\"\nretention = \"7d\"\n"),
            &HashMap::new(),
        )
        .unwrap_or_else(|err| panic!("{err}"));
        assert!(config.archive.enabled);
        assert_eq!(config.archive.max_bytes, Some(1 << 30));
        assert!(
            config.summary().contains("events archived 7days up to"),
            "{}",
            config.summary()
        );
        let bad = problems("[archive]\nmax_bytes = \"lots\"\n", &[]);
        assert!(bad.contains("archive.max_bytes: invalid size"), "{bad}");

        let rule = |extra: &str| {
            format!(
                "[[rules]]\nname = \"q\"\nevents = [\"dregs:*\"]\nwhen = \"true\"\nactions = [\"n\"]\n{extra}\n\
                 [actions.n]\nkind = \"log\"\nmessage = \"{{{{ count }}}} in {{{{ per }}}}\"\n"
            )
        };
        assert_eq!(
            problems(
                &rule("limit = { actions = 5, per = \"1m\" }\non_trip = [\"n\"]"),
                &[]
            ),
            ""
        );
        let zero = problems(&rule("limit = { actions = 0, per = \"1m\" }"), &[]);
        assert!(
            zero.contains("rules[0].limit: actions and per must be more than 0"),
            "{zero}"
        );
        let alone = problems(&rule("on_trip = [\"n\"]"), &[]);
        assert!(
            alone.contains("rules[0].on_trip: on_trip runs when"),
            "{alone}"
        );
        let unknown = problems(
            &rule("limit = { actions = 5, per = \"1m\" }\non_trip = [\"page\"]"),
            &[],
        );
        assert!(
            unknown.contains("rules[0].on_trip[0]: no action named \"page\"; defined: n"),
            "{unknown}"
        );
        let typo = problems(&rule("limit = { actions = 5, pr = \"1m\" }"), &[]);
        assert!(typo.contains("rules[0].limit"), "{typo}");
    }

    #[test]
    fn watches_are_checked_at_load() {
        let watch = |extra: &str| {
            format!(
                "[[watch]]\nname = \"quiet\"\nprovider = \"dregs\"\n{extra}\n\
                 [actions.n]\nkind = \"log\"\nmessage = \"{{{{ watch.name }}}} is {{{{ watch.state }}}}\"\n"
            )
        };
        assert_eq!(
            problems(
                &watch("silent_for = \"1h\"\nactions = [\"n\"]\non_recover = [\"n\"]"),
                &[]
            ),
            ""
        );
        let zero = problems(&watch("silent_for = \"0s\"\nactions = [\"n\"]"), &[]);
        assert!(
            zero.contains("watch[0].silent_for: must be more than 0s"),
            "{zero}"
        );
        let none = problems(&watch("silent_for = \"1h\"\nactions = []"), &[]);
        assert!(
            none.contains("watch[0].actions: needs at least one action"),
            "{none}"
        );
        let unknown = problems(
            &watch("silent_for = \"1h\"\nactions = [\"n\"]\non_recover = [\"page\"]"),
            &[],
        );
        assert!(
            unknown.contains("watch[0].on_recover[0]: no action named \"page\"; defined: n"),
            "{unknown}"
        );
        let missing = problems(&watch("actions = [\"n\"]"), &[]);
        assert!(missing.contains("watch[0]"), "{missing}");
    }

    #[test]
    fn daemon_sections_name_key_and_reason() {
        assert_eq!(
            problems("[server]\nlisten = \"x\"\n", &[]),
            "rules.toml:8: server.listen: unknown field `listen`, expected `admin_listen` or \
             `shutdown_grace`"
        );
        let bad = problems("[state]\nretention = \"soon\"\n", &[]);
        assert!(bad.starts_with("rules.toml:8: state.retention: "), "{bad}");
        let env = problems("", &[("HOOKWARDEN__STATE__RETENTION", "soon")]);
        assert!(env.contains("HOOKWARDEN__STATE__RETENTION"), "{env}");
    }

    #[test]
    fn state_is_a_file_or_a_postgresql_url_never_both() {
        let config = |text: &str| {
            WorkerConfig::parse("rules.toml", &format!("{SUBJECTS}{text}"), &HashMap::new())
        };
        let pg = config("[state]\nurl = \"postgres://hw:pw@db/hw?sslmode=require\"\n")
            .unwrap_or_else(|err| panic!("{err}"));
        match &pg.state.backend {
            Backend::Postgres(options) => {
                assert_eq!(
                    (options.pool_size, options.statement_timeout),
                    (4, Duration::from_secs(30))
                );
            }
            Backend::Sqlite(path) => panic!("a url gave the file {}", path.display()),
        }
        // The password never reaches --check's summary.
        assert!(
            pg.summary()
                .contains("state postgres://hw:***@db/hw?sslmode=require"),
            "{}",
            pg.summary()
        );
        assert!(matches!(
            config("[state]\n").map(|c| c.state.backend),
            Ok(Backend::Sqlite(path)) if path == default_state_path()
        ));

        let both = problems(
            "[state]\npath = \"/tmp/w.db\"\nurl = \"postgres://db/hw\"\n",
            &[],
        );
        assert!(
            both.starts_with("rules.toml:7: state: give either path"),
            "{both}"
        );
        let bad = problems("[state]\nurl = \"mysql://root:pw@db\"\n", &[]);
        assert!(
            bad.contains("state: url mysql://root:***@db is not a PostgreSQL URL"),
            "{bad}"
        );
        let stray = problems("[state]\npool_size = 3\n", &[]);
        assert!(
            stray.contains("pool_size and statement_timeout apply to url"),
            "{stray}"
        );
        let small = problems("[state]\nurl = \"postgres://db/hw\"\npool_size = 2\n", &[]);
        assert!(small.contains("pool_size must be at least 3"), "{small}");
    }

    #[test]
    fn postgresql_passwords_are_hidden_wherever_they_are_written() {
        assert_eq!(
            redact_postgres("postgres://hw:pw@db:5432/hw"),
            "postgres://hw:***@db:5432/hw"
        );
        assert_eq!(
            redact_postgres("postgres://db/hw?user=hw&password=pw&sslmode=require"),
            "postgres://db/hw?user=hw&password=***&sslmode=require"
        );
        assert_eq!(
            redact_postgres("host=db password=pw user=hw"),
            "host=db password=*** user=hw"
        );
    }

    #[test]
    fn rules_name_key_and_reason() {
        let text = r#"
[[rules]]
name = "r"
events = ["dregs"]
when = "score.humanty < 30.0"
actions = ["nowhere"]
mode = "loud"

[[rules]]
name = "r"
events = ["dregs:identity.*"]
when = "score.humanty < 30.0"
actions = []
"#;
        let all = problems(text, &[]);
        for expected in [
            "rules[0].events[0]: \"dregs\" is not provider:type",
            "rules[1].name: rule \"r\" is defined twice",
            "rules[1].when: no score \"humanty\" for dregs:identity.*; declared: humanity",
            "rules[0].actions[0]: no action named \"nowhere\"",
            "rules[0].mode: unknown mode \"loud\"; expected enforce or shadow",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let syntax = problems(
            "[[rules]]\nname = \"r\"\nevents = [\"dregs:*\"]\nwhen = \"score.humanity <\"\nactions = []\n",
            &[],
        );
        assert!(
            syntax.contains("rules[0].when: syntax error at line 1"),
            "{syntax}"
        );
    }

    #[test]
    fn actions_are_checked_by_their_kind() {
        let all = problems(
            r#"
[actions.a]
kind = "carrier-pigeon"

[actions.b]
kind = "log"
url = "http://x"

[actions.c]
kind = "http"

[actions.d]
kind = "exec"
command = []

[actions.e]
kind = "log"
message = "{{ subjekt }}"

[actions.f]
kind = "http"
url = "http://x/{{ env.TOKEN }}"

[actions.g]
kind = "log"
message = "paced"
rate = { max = 0, per = "1s" }
concurrency = 0

[actions.h]
kind = "log"
message = "paced"
rate = 50

[actions.i]
kind = "log"
message = "paced"
rate = { max = 5, per = "1m" }
"#,
            &[],
        );
        for expected in [
            "actions.g.rate: max must be at least 1, per longer than 0, and per / max at most 1day",
            "actions.g.concurrency: must be a whole number from 1 to 10000",
            "actions.h.rate: must be { max = N, per = \"1s\" }",
            "actions.i.rate: a batch of 256 firings at this rate takes 51m 12s, past RabbitMQ's \
             consumer_timeout (30m): raise the rate or lower amqp.prefetch",
            "actions.a.kind: unknown kind \"carrier-pigeon\"; expected one of http, amqp, exec, log",
            "actions.b.url: not a key of kind \"log\" (it takes message, and rate, concurrency)",
            "actions.c.url: required for kind \"http\"",
            "actions.d.command: required for kind \"exec\"",
            "actions.e.message: undefined name 'subjekt'; templates see event, provider, type, \
             subject, score, previous, rule, event_id, env",
            "actions.f.url: env.TOKEN: environment variable TOKEN is not set",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let long = "q".repeat(256);
        let amqp = problems(
            &format!("[actions.a]\nkind = \"amqp\"\nrouting_key = \"{long}\"\n"),
            &[],
        );
        assert!(
            amqp.contains("actions.a: exchange and routing_key are at most 255 bytes"),
            "{amqp}"
        );
    }

    #[test]
    fn lookups_are_checked_and_every_reference_to_them_too() {
        let all = problems(
            r#"
[enrich.account]
kind = "http"
url = "http://accounts/{{ subject }}"
cache_ttl = "5m"

[enrich.ledger]
kind = "grpc"
url = "http://ledger/{{ rule }}"
timeout = "5m"
retries = 11
max_cache_entries = 5
on_error = "ignore"

[[rules]]
name = "young"
events = ["dregs:*"]
when = "enrich.acount.age_days < 30"
actions = ["note"]

[actions.note]
kind = "log"
message = "{{ enrich.kyc.level }}"

[[watch]]
name = "quiet"
provider = "dregs"
silent_for = "1h"
actions = ["aged"]

[actions.aged]
kind = "log"
message = "{{ enrich.account.age_days }}"
"#,
            &[],
        );
        for expected in [
            "enrich.ledger.on_error: unknown \"ignore\"; expected skip_rule or retry",
            "rules[0].when: no lookup named \"acount\" (enrich.acount); defined: account",
            "actions.note.message: no lookup named \"kyc\" (enrich.kyc); defined: account",
            "watch[0]: action \"aged\" reads enrich, but a watch's actions have no event to \
             look anything up for",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let ledger = problems(
            r#"
[enrich.ledger]
kind = "grpc"
url = "http://ledger/{{ rule }}"
timeout = "5m"
retries = 11
max_cache_entries = 5
"#,
            &[],
        );
        for expected in [
            "enrich.ledger.kind: unknown kind \"grpc\"; expected http",
            "enrich.ledger.timeout: must be more than 0 and at most 1m (the event waits for it)",
            "enrich.ledger.retries: at most 10",
            "enrich.ledger.max_cache_entries: caches nothing without cache_ttl",
            "enrich.ledger.url: a lookup's templates cannot use 'rule'",
        ] {
            assert!(
                ledger.contains(expected),
                "missing {expected:?} in:\n{ledger}"
            );
        }
    }

    #[test]
    fn a_rule_reads_the_lookups_its_condition_and_its_actions_name() {
        let config = WorkerConfig::parse(
            "rules.toml",
            &format!(
                "{SUBJECTS}{}",
                r#"
[enrich.account]
kind = "http"
url = "http://accounts/{{ subject }}"
[enrich.ledger]
kind = "http"
url = "http://ledger/{{ subject }}"
on_error = "retry"
[enrich.kyc]
kind = "http"
url = "http://kyc/{{ subject }}"

[[rules]]
name = "young"
events = ["dregs:identity.*"]
when = "enrich.account.age_days < 30"
actions = ["note"]

[[rules]]
name = "plain"
events = ["dregs:*"]
when = "score.humanity < 30.0"
actions = ["plain"]

[actions.note]
kind = "log"
message = "{{ enrich.ledger.balance }}"

[actions.plain]
kind = "log"
message = "low"
"#
            ),
            &HashMap::new(),
        )
        .unwrap_or_else(|err| panic!("{err}"));
        let rules = &config.rules;
        assert_eq!(rules.rules[0].enrich, ["account", "ledger"]);
        assert!(rules.rules[1].enrich.is_empty());
        let names = |indexes: Vec<usize>| -> Vec<&str> {
            indexes
                .into_iter()
                .map(|i| rules.lookups[i].name.as_str())
                .collect()
        };
        assert_eq!(
            names(rules.lookups_for("dregs", "identity.scored")),
            ["account", "ledger"]
        );
        // Only "plain" applies: no lookup, and kyc, which no rule reads, never.
        assert!(rules.lookups_for("dregs", "tier.changed").is_empty());
        let summary = config.summary();
        assert!(
            summary.contains(
                "lookup \"account\": http GET, timeout 2s, retries 2, not cached, on_error \
                 skip_rule; read by young"
            ),
            "{summary}"
        );
        assert!(
            summary.contains("lookup \"kyc\": http GET, timeout 2s, retries 2, not cached, on_error skip_rule; read by no rule (never run)"),
            "{summary}"
        );
    }

    #[test]
    fn a_paced_action_is_named_in_the_check_summary() {
        let text = "[actions.q]\nkind = \"log\"\nmessage = \"m\"\n\
                    rate = { max = 50, per = \"1s\" }\nconcurrency = 2\n";
        let config =
            WorkerConfig::parse("rules.toml", &format!("{SUBJECTS}{text}"), &HashMap::new())
                .unwrap_or_else(|err| panic!("{err}"));
        assert!(
            config
                .summary()
                .contains("action \"q\" paced: 50 per 1s, 2 at once"),
            "{}",
            config.summary()
        );
    }

    #[test]
    fn env_values_reach_templates_and_amqp_defaults_to_the_review_queue() {
        let text = "[actions.f]\nkind = \"http\"\nurl = \"http://x/{{ env.TOKEN }}\"\n";
        let env = HashMap::from([("TOKEN".to_owned(), "t0k".to_owned())]);
        let config = WorkerConfig::parse("rules.toml", &format!("{SUBJECTS}{text}"), &env)
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(
            config.rules.template_env.get("TOKEN").map(String::as_str),
            Some("t0k")
        );
    }
}
