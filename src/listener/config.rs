//! The listener's config (`listener.toml`): raw serde structs that reject unknown keys, and
//! the validated types the listener runs on, built by [`ListenerConfig::parse`] over the
//! shared loader in [`crate::config`]. What a scheme fixes or defaults (its headers, where its
//! id and type are, its window) is asked of [`crate::scheme`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::config::amqp::AmqpConfig;
use crate::config::log::LogConfig;
use crate::config::telemetry::TelemetryConfig;
use crate::config::{ConfigError, ConfigKind, Document, Problem, secret, units};
use crate::listener::dedupe;
use crate::listener::extract::FieldRef;
use crate::scheme::{FieldDefault, Scheme, SchemeKind, SigningKey, hmac};

/// The whole validated listener config.
#[derive(Debug)]
pub struct ListenerConfig {
    /// `[server]`: addresses, limits, timeouts.
    pub server: ServerConfig,
    /// `[amqp]`: broker and topology.
    pub amqp: AmqpConfig,
    /// `[dedupe]`: the event-id cache.
    pub dedupe: DedupeConfig,
    /// `[log]`: level and format.
    pub log: LogConfig,
    /// `[telemetry]`: where traces are exported.
    pub telemetry: TelemetryConfig,
    /// `[spool]`: where events wait while the broker cannot take them.
    pub spool: SpoolConfig,
    /// `[[providers]]`, in file order; names are unique.
    pub providers: Vec<Provider>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Public address; only `/hooks/*` is served there.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Admin address for `/healthz`, `/readyz`, `/metrics`; keep it private.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Largest accepted body; checked while reading, nothing is buffered past it.
    #[serde(default = "default_max_body", deserialize_with = "units::size")]
    pub max_body: u64,
    /// Longest a request waits for the broker (a connection being made, then the confirm)
    /// before its event goes to the spool, or it is answered 503.
    #[serde(default = "default_handoff_timeout", with = "humantime_serde")]
    pub handoff_timeout: Duration,
    /// Longest a client may take to send the request line and headers; also how long a
    /// connection that sends nothing (new, or idle between requests) stays open. > 0.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest a client may take to send the body once headers are in (408 after). > 0.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Connections served at once; beyond it new ones wait in the kernel's backlog instead
    /// of being accepted, so a flood of idle sockets cannot use up file descriptors. ≥ 1.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-For` is believed (CIDRs or addresses).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(skip)]
    /// `trusted_proxies`, parsed.
    pub trusted_proxy_nets: Vec<IpNet>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_max_body() -> u64 {
    1024 * 1024
}
fn default_handoff_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
/// The unit's `LimitNOFILE=65536`, less room for what else the listener keeps open (the
/// broker's connection, the spool, the admin port, logs).
fn default_max_connections() -> usize {
    60_000
}

/// `[dedupe]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// Event ids remembered; at capacity the oldest are forgotten first.
    #[serde(default = "default_capacity")]
    pub capacity: u64,
    /// How long an id is remembered.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
}

fn default_capacity() -> u64 {
    1_000_000
}
fn default_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// `[spool]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// SQLite file events are written to (fsync'd) when the broker cannot take them; absent:
    /// no spool, and such events are answered 503.
    pub path: Option<std::path::PathBuf>,
    /// Most body bytes waiting; beyond it events are answered 503.
    #[serde(default = "default_spool_bytes", deserialize_with = "units::size")]
    pub max_bytes: u64,
}

fn default_spool_bytes() -> u64 {
    1024 * 1024 * 1024
}

/// One `[[providers]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    scheme: String,
    #[serde(default)]
    secrets: Vec<String>,
    /// standard-webhooks only: the senders' ed25519 public keys (`whpk_…`), for `v1a`.
    #[serde(default)]
    public_keys: Vec<String>,
    signature_header: Option<String>,
    encoding: Option<String>,
    prefix: Option<String>,
    timestamp_header: Option<String>,
    signed_payload: Option<String>,
    event_id: Option<String>,
    event_type: Option<String>,
    #[serde(default, with = "humantime_serde")]
    tolerance: Option<Duration>,
    #[serde(default)]
    allow_ips: Vec<String>,
    rate_limit: Option<crate::listener::limit::RawRateLimit>,
}

/// A validated provider: its route name, how it signs, and where its id and type are.
pub struct Provider {
    /// The route segment (`POST /hooks/{name}`) and the routing key's first word.
    pub name: String,
    /// The verification scheme, with its headers and window.
    pub scheme: Scheme,
    /// One key per configured secret, tried in order (rotation).
    pub keys: Vec<SigningKey>,
    /// Where the event id comes from.
    pub event_id: FieldRef,
    /// Where the event type comes from.
    pub event_type: FieldRef,
    /// Source networks allowed; empty allows all.
    pub allow_ips: Vec<IpNet>,
    /// Requests answered before `429`, when limited.
    pub rate_limit: Option<crate::listener::limit::RateLimit>,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("scheme", &self.scheme.name())
            .field("keys", &self.keys.len())
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("allow_ips", &self.allow_ips)
            .finish()
    }
}

impl ListenerConfig {
    /// Parses and validates a listener config, resolving secrets.
    ///
    /// `file` names the file in messages; `env` is the process environment (overrides,
    /// `env:` secrets, `$CREDENTIALS_DIRECTORY`).
    ///
    /// # Errors
    /// Every problem found, each with its key path and reason.
    pub fn parse(
        file: &str,
        text: &str,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut doc = Document::parse(file, text, env, ConfigKind::Listener)?;
        doc.reject_unknown_sections();
        let server: Option<ServerConfig> = doc.section("server");
        let amqp: Option<AmqpConfig> = doc.section("amqp");
        let dedupe: Option<DedupeConfig> = doc.section("dedupe");
        let log: Option<LogConfig> = doc.section("log");
        let mut telemetry: Option<TelemetryConfig> = doc.section("telemetry");
        if let Some(telemetry) = &mut telemetry {
            telemetry.validate(&mut doc);
        }
        let spool: Option<SpoolConfig> = doc.section("spool");
        let raw_providers: Vec<Option<RawProvider>> = doc.list("providers");

        let server = server.map(|mut s| {
            s.trusted_proxy_nets =
                parse_nets(&mut doc, "server.trusted_proxies", &s.trusted_proxies);
            if s.max_body == 0 {
                doc.problem("server.max_body", "must be greater than 0".to_owned());
            }
            if s.max_connections == 0 {
                doc.problem("server.max_connections", "must be at least 1".to_owned());
            }
            // A zero timeout would cut off every client, not just slow ones.
            for (key, timeout) in [
                ("server.handoff_timeout", s.handoff_timeout),
                ("server.header_timeout", s.header_timeout),
                ("server.body_timeout", s.body_timeout),
            ] {
                if timeout.is_zero() {
                    doc.problem(key, "must be greater than 0".to_owned());
                }
            }
            s
        });
        if let Some(amqp) = &amqp {
            amqp.validate(&mut doc, "amqp");
        }
        if let Some(d) = &dedupe {
            if d.capacity == 0 {
                doc.problem("dedupe.capacity", "must be at least 1".to_owned());
            }
            if d.ttl.is_zero() {
                doc.problem("dedupe.ttl", "must be greater than 0".to_owned());
            }
        }
        if let Some(l) = &log
            && !["auto", "json", "text"].contains(&l.format.as_str())
        {
            doc.problem(
                "log.format",
                format!(
                    "unknown format {:?}; expected one of auto, json, text",
                    l.format
                ),
            );
        }

        if raw_providers.is_empty() {
            doc.problem(
                "providers",
                "no [[providers]] configured; every request would be answered 404".to_owned(),
            );
        }
        let mut names = HashSet::new();
        let mut providers = Vec::new();
        for (i, raw) in raw_providers.into_iter().enumerate() {
            let Some(raw) = raw else { continue };
            let key = format!("providers[{i}]");
            if !names.insert(raw.name.clone()) {
                doc.problem(
                    &format!("{key}.name"),
                    format!("provider {:?} is configured twice", raw.name),
                );
            }
            if let Some(p) = build_provider(&mut doc, &key, raw) {
                providers.push(p);
            }
        }

        doc.finish()?;
        match (server, amqp, dedupe, log, telemetry, spool) {
            (Some(server), Some(amqp), Some(dedupe), Some(log), Some(telemetry), Some(spool)) => {
                Ok(ListenerConfig {
                    server,
                    amqp,
                    dedupe,
                    log,
                    telemetry,
                    spool,
                    providers,
                })
            }
            // Every `None` above recorded a problem, so `finish` returned early.
            _ => unreachable_config(file),
        }
    }

    /// The provider routed at `name`.
    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// A short human summary for `--check`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "listen {} (admin {}), max body {} bytes, handoff timeout {}, at most {} connections\n",
            self.server.listen,
            self.server.admin_listen,
            self.server.max_body,
            humantime::format_duration(self.server.handoff_timeout),
            self.server.max_connections
        ));
        out.push_str(&format!(
            "broker {} exchange {:?} queue {:?}\n",
            self.amqp.redacted_url(),
            self.amqp.exchange,
            self.amqp.queue
        ));
        match &self.spool.path {
            Some(path) => out.push_str(&format!(
                "spool {} (up to {} MiB) while the broker cannot take events\n",
                path.display(),
                self.spool.max_bytes / (1024 * 1024)
            )),
            None => out.push_str("no spool: events the broker cannot take are answered 503\n"),
        }
        out.push_str(&format!(
            "dedupe: {} ids for {} (bounds the cache at about {} MiB)\n",
            self.dedupe.capacity,
            humantime::format_duration(self.dedupe.ttl),
            self.dedupe.capacity * dedupe::BYTES_PER_ENTRY / (1024 * 1024)
        ));
        out.push_str(&self.telemetry.summary());
        for p in &self.providers {
            out.push_str(&format!(
                "provider {:?}: POST /hooks/{}, scheme {}, {} secret(s){}, id {}, type {}{}\n",
                p.name,
                p.name,
                p.scheme.name(),
                p.keys.len(),
                match &p.scheme {
                    Scheme::StandardWebhooks(s) if !s.public_keys.is_empty() => {
                        format!(", {} public key(s)", s.public_keys.len())
                    }
                    _ => String::new(),
                },
                p.event_id,
                p.event_type,
                if p.allow_ips.is_empty() {
                    String::new()
                } else {
                    format!(", {} allowed network(s)", p.allow_ips.len())
                } + &p
                    .rate_limit
                    .map(|l| format!(", at most {}", l.describe()))
                    .unwrap_or_default()
            ));
        }
        out
    }
}

fn unreachable_config(file: &str) -> Result<ListenerConfig, ConfigError> {
    Err(ConfigError {
        problems: vec![Problem {
            file: file.to_owned(),
            line: None,
            key: String::new(),
            reason: "incomplete config".to_owned(),
            variable: None,
        }],
    })
}

fn parse_nets(doc: &mut Document<'_>, key: &str, items: &[String]) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let parsed = item
            .parse::<IpNet>()
            .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => doc.problem(
                &format!("{key}[{i}]"),
                format!("{item:?} is not an address or CIDR network such as \"203.0.113.0/24\""),
            ),
        }
    }
    nets
}

fn hmac_only_keys(raw: &RawProvider) -> Vec<(&'static str, bool)> {
    vec![
        ("signature_header", raw.signature_header.is_some()),
        ("encoding", raw.encoding.is_some()),
        ("prefix", raw.prefix.is_some()),
        ("timestamp_header", raw.timestamp_header.is_some()),
        ("signed_payload", raw.signed_payload.is_some()),
    ]
}

fn build_provider(doc: &mut Document<'_>, key: &str, raw: RawProvider) -> Option<Provider> {
    let mut ok = true;
    if !valid_name(&raw.name) {
        doc.problem(
            &format!("{key}.name"),
            format!(
                "{:?} is not a valid provider name; use 1 to 64 of a-z, A-Z, 0-9, '-', '_'",
                raw.name
            ),
        );
        ok = false;
    }
    let kind = SchemeKind::parse(&raw.scheme);
    let scheme = match kind {
        Some(kind) => {
            let tolerance = raw.tolerance.unwrap_or(kind.defaults().tolerance);
            match kind.preset(tolerance) {
                None => build_hmac(doc, key, &raw, tolerance),
                Some(preset) => {
                    for (field, set) in hmac_only_keys(&raw) {
                        if set {
                            doc.problem(
                                &format!("{key}.{field}"),
                                format!(
                                    "only for scheme \"hmac-sha256\"; scheme {:?} fixes its own",
                                    kind.name()
                                ),
                            );
                            ok = false;
                        }
                    }
                    Some(preset)
                }
            }
        }
        // Which other keys fit depends on the scheme: with none known, judging them would
        // only add problems that go away once the scheme is fixed.
        None => {
            let known: Vec<_> = SchemeKind::ALL.iter().map(|k| k.name()).collect();
            doc.problem(
                &format!("{key}.scheme"),
                format!(
                    "unknown scheme {:?}; expected one of {}",
                    raw.scheme,
                    known.join(", ")
                ),
            );
            None
        }
    };

    let mut scheme = scheme;
    if let Some(Scheme::StandardWebhooks(standard)) = &mut scheme {
        for (j, reference) in raw.public_keys.iter().enumerate() {
            let pkey = format!("{key}.public_keys[{j}]");
            match secret::resolve(reference, doc.env())
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    crate::scheme::standard_webhooks::public_key(text.expose())
                        .map_err(|e| e.to_string())
                }) {
                Ok(public) => standard.public_keys.push(public),
                Err(reason) => {
                    doc.problem(&pkey, format!("provider {:?}: {reason}", raw.name));
                    ok = false;
                }
            }
        }
    } else if scheme.is_some() && !raw.public_keys.is_empty() {
        doc.problem(
            &format!("{key}.public_keys"),
            "only for scheme \"standard-webhooks\" (its `v1a` ed25519 signatures)".to_owned(),
        );
        ok = false;
    }
    if raw.secrets.is_empty() && raw.public_keys.is_empty() {
        doc.problem(
            &format!("{key}.secrets"),
            format!(
                "provider {:?} needs at least one secret{}",
                raw.name,
                if kind == Some(SchemeKind::StandardWebhooks) {
                    " (or, for v1a signatures, a public key in public_keys)"
                } else {
                    ""
                }
            ),
        );
        ok = false;
    }
    let mut keys = Vec::new();
    for (j, reference) in raw.secrets.iter().enumerate() {
        let skey = format!("{key}.secrets[{j}]");
        match secret::resolve(reference, doc.env()) {
            Ok(secret) => {
                if let Some(scheme) = &scheme {
                    match scheme.key_from_secret(secret.expose()) {
                        Ok(k) => keys.push(k),
                        Err(reason) => {
                            doc.problem(&skey, format!("provider {:?}: {reason}", raw.name));
                            ok = false;
                        }
                    }
                }
            }
            Err(reason) => {
                doc.problem(&skey, format!("provider {:?}: {reason}", raw.name));
                ok = false;
            }
        }
    }

    // An unknown scheme has no defaults; it already failed the provider, and the generic
    // ones stand in so that the keys written are still checked.
    let defaults = kind.unwrap_or(SchemeKind::HmacSha256).defaults();
    let event_id = field_ref(
        doc,
        &format!("{key}.event_id"),
        raw.event_id.as_deref(),
        defaults.event_id,
    );
    let event_type = field_ref(
        doc,
        &format!("{key}.event_type"),
        raw.event_type.as_deref(),
        defaults.event_type,
    );
    let allow_ips = parse_nets(doc, &format!("{key}.allow_ips"), &raw.allow_ips);
    if allow_ips.len() != raw.allow_ips.len() {
        ok = false;
    }

    let rate_limit = match raw
        .rate_limit
        .map(crate::listener::limit::RateLimit::try_from)
    {
        None => None,
        Some(Ok(limit)) => Some(limit),
        Some(Err(reason)) => {
            doc.problem(&format!("{key}.rate_limit"), reason);
            ok = false;
            None
        }
    };

    match (ok, scheme, event_id, event_type) {
        (true, Some(scheme), Some(event_id), Some(event_type)) => Some(Provider {
            name: raw.name,
            scheme,
            keys,
            event_id,
            event_type,
            allow_ips,
            rate_limit,
        }),
        _ => None,
    }
}

fn build_hmac(
    doc: &mut Document<'_>,
    key: &str,
    raw: &RawProvider,
    tolerance: Duration,
) -> Option<Scheme> {
    let header = match raw.signature_header.as_deref() {
        None => {
            doc.problem(
                &format!("{key}.signature_header"),
                "required for scheme \"hmac-sha256\" (the header carrying the signature)"
                    .to_owned(),
            );
            None
        }
        Some(h) => header_name(doc, &format!("{key}.signature_header"), h),
    };
    let encoding = match raw.encoding.as_deref() {
        None => Some(hmac::DEFAULT_ENCODING),
        Some(name) => {
            let parsed = hmac::Encoding::parse(name);
            if parsed.is_none() {
                doc.problem(
                    &format!("{key}.encoding"),
                    format!(
                        "unknown encoding {name:?}; expected one of {}",
                        hmac::Encoding::NAMES.join(", ")
                    ),
                );
            }
            parsed
        }
    };
    let timestamp = match (
        raw.timestamp_header.as_deref(),
        raw.signed_payload.as_deref(),
    ) {
        (None, None) => Some(None),
        (None, Some(_)) => {
            doc.problem(
                &format!("{key}.signed_payload"),
                "needs timestamp_header (the header the {timestamp} placeholder reads)".to_owned(),
            );
            None
        }
        (Some(h), template) => {
            let header = header_name(doc, &format!("{key}.timestamp_header"), h);
            let template =
                match hmac::SignedTemplate::parse(template.unwrap_or(hmac::DEFAULT_SIGNED_PAYLOAD))
                {
                    Ok(t) => Some(t),
                    Err(reason) => {
                        doc.problem(&format!("{key}.signed_payload"), reason.to_string());
                        None
                    }
                };
            match (header, template) {
                (Some(header), Some(template)) => Some(Some(hmac::Timestamped {
                    header,
                    template,
                    tolerance,
                })),
                _ => None,
            }
        }
    };
    Some(Scheme::Hmac(hmac::HmacScheme {
        name: SchemeKind::HmacSha256.name(),
        header: header?,
        encoding: encoding?,
        prefix: raw.prefix.clone().filter(|p| !p.is_empty()),
        timestamp: timestamp?,
    }))
}

fn header_name(doc: &mut Document<'_>, key: &str, value: &str) -> Option<http::HeaderName> {
    match http::HeaderName::from_bytes(value.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            doc.problem(key, format!("{value:?} is not a valid HTTP header name"));
            None
        }
    }
}

fn field_ref(
    doc: &mut Document<'_>,
    key: &str,
    value: Option<&str>,
    default: FieldDefault,
) -> Option<FieldRef> {
    let Some(value) = value else {
        return Some(match default {
            FieldDefault::Pointer(pointer) => FieldRef::Pointer(pointer.to_owned()),
            FieldDefault::Header(name) => FieldRef::Header(http::HeaderName::from_static(name)),
            FieldDefault::SchemeId => FieldRef::SchemeId,
        });
    };
    match FieldRef::parse(value) {
        Ok(f) => Some(f),
        Err(reason) => {
            doc.problem(key, reason.to_string());
            None
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    //! One test per kind of config problem, each asserting the whole line an operator reads:
    //! file, line where the key is written, key path, reason.

    use super::*;

    /// A provider that is fine, for configs whose problem is elsewhere.
    const GOOD: &str = "[[providers]]\nname = \"gh\"\nscheme = \"github\"\nsecrets = [\"s\"]\n";

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<ListenerConfig, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ListenerConfig::parse("l.toml", text, &env)
    }

    /// The problems found, each as its operator-facing line.
    fn lines(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        match parse(text, env) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(err) => err.problems.iter().map(ToString::to_string).collect(),
        }
    }

    /// The one problem found.
    fn only(text: &str, env: &[(&str, &str)]) -> Problem {
        let err = parse(text, env)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"));
        assert_eq!(err.problems.len(), 1, "{err}");
        err.problems.into_iter().next().unwrap()
    }

    fn provider(body: &str) -> String {
        format!("[[providers]]\nname = \"p\"\n{body}")
    }

    #[test]
    fn an_unknown_scheme_is_named_with_the_known_ones() {
        let problem = only(
            &provider("scheme = \"hmac-sha512\"\nsecrets = [\"s\"]\n"),
            &[],
        );
        assert_eq!(
            problem.to_string(),
            "l.toml:3: providers[0].scheme: unknown scheme \"hmac-sha512\"; \
             expected one of hmac-sha256, github, stripe, standard-webhooks"
        );
        assert_eq!(
            (problem.file.as_str(), problem.line, problem.key.as_str()),
            ("l.toml", Some(3), "providers[0].scheme")
        );
    }

    #[test]
    fn a_provider_needs_a_secret() {
        let empty = only(&provider("scheme = \"github\"\nsecrets = []\n"), &[]);
        assert_eq!(
            empty.to_string(),
            "l.toml:4: providers[0].secrets: provider \"p\" needs at least one secret"
        );
        // No `secrets` key at all: the same finding, at the provider's table.
        let absent = only(&provider("scheme = \"github\"\n"), &[]);
        assert_eq!(
            absent.to_string(),
            "l.toml:1: providers[0].secrets: provider \"p\" needs at least one secret"
        );
        // Standard Webhooks may verify with public keys alone, and says so.
        let standard = only(&provider("scheme = \"standard-webhooks\"\n"), &[]);
        assert!(
            standard.to_string().ends_with(
                "needs at least one secret (or, for v1a signatures, a public key in public_keys)"
            ),
            "{standard}"
        );
    }

    #[test]
    fn telemetry_is_checked_at_load_and_summarised() {
        let github = provider("scheme = \"github\"\nsecrets = [\"s\"]\n");
        let with = |telemetry: &str| format!("[telemetry]\n{telemetry}\n{github}");
        let problems = lines(
            &with(
                "otlp_endpoint = \"collector:4318\"\nsample_ratio = 1.5\nqueue_size = 0\n\
                 otlp_headers = { \"x-key\" = \"env:NO_SUCH_KEY\" }",
            ),
            &[],
        );
        assert_eq!(
            problems,
            [
                "l.toml:2: telemetry.otlp_endpoint: \"collector:4318\" is not an http:// or https:// address",
                "l.toml:3: telemetry.sample_ratio: 1.5 is not between 0 and 1",
                "l.toml:4: telemetry.queue_size: must be between 1 and 100000",
                "l.toml:5: telemetry.otlp_headers.x-key: environment variable NO_SUCH_KEY is not set",
            ]
        );
        let off = parse(&github, &[]).unwrap();
        assert_eq!(off.telemetry.otlp_endpoint, None);
        assert!(
            off.summary().contains("traces: not exported"),
            "{}",
            off.summary()
        );
        let on = parse(
            &with(
                "otlp_endpoint = \"http://collector:4318\"\n\
                 otlp_headers = { \"x-key\" = \"env:KEY\" }",
            ),
            &[("KEY", "k1")],
        )
        .unwrap();
        assert_eq!(
            on.telemetry.otlp_endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(on.telemetry.otlp_headers[0].1.expose(), "k1");
        assert!(
            on.summary()
                .contains("traces exported to http://collector:4318/v1/traces every 5s"),
            "{}",
            on.summary()
        );
    }

    #[test]
    fn rate_limits_are_checked_at_load_and_summarised() {
        let limited = |limit: &str| {
            provider(&format!(
                "scheme = \"github\"\nsecrets = [\"s\"]\nrate_limit = {limit}\n"
            ))
        };
        let text = format!(
            "{}\n[server]\nlisten = \"127.0.0.1:1\"\n",
            limited("{ requests = 1000, per = \"1s\", burst = 2000 }")
        );
        let config = ListenerConfig::parse("l.toml", &text, &HashMap::new())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            config
                .summary()
                .contains("at most 1000 per 1s (burst 2000)"),
            "{}",
            config.summary()
        );
        let zero = only(&limited("{ requests = 0, per = \"1s\" }"), &[]).to_string();
        assert!(
            zero.contains("providers[0].rate_limit: requests must be at least 1"),
            "{zero}"
        );
        let typo = only(&limited("{ requests = 5, pr = \"1s\" }"), &[]).to_string();
        assert!(typo.contains("providers[0].rate_limit"), "{typo}");
    }

    #[test]
    fn public_keys_are_standard_webhooks_only_and_never_secret_keys() {
        const PUBLIC: &str = "whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
        const SECRET_KEY: &str = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8DoQe/884Qvh1w3RjnS8CZZ+TWMJulDV8d3IZkElUxuA==";
        let text = format!(
            "{}\n[server]\nlisten = \"127.0.0.1:1\"\n",
            provider(&format!(
                "scheme = \"standard-webhooks\"\npublic_keys = [\"{PUBLIC}\", \"env:NEXT_KEY\"]\n"
            ))
        );
        let env = HashMap::from([("NEXT_KEY".to_owned(), PUBLIC.to_owned())]);
        let config = ListenerConfig::parse("l.toml", &text, &env).unwrap_or_else(|e| panic!("{e}"));
        match &config.providers[0].scheme {
            Scheme::StandardWebhooks(s) => assert_eq!(s.public_keys.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(config.providers[0].keys.is_empty());
        assert!(
            config.summary().contains("0 secret(s), 2 public key(s)"),
            "{}",
            config.summary()
        );
        // A secret key pasted where the public one goes: named, never shown.
        let pasted = only(
            &provider(&format!(
                "scheme = \"standard-webhooks\"\npublic_keys = [\"{SECRET_KEY}\"]\n"
            )),
            &[],
        )
        .to_string();
        assert!(pasted.contains("providers[0].public_keys[0]"), "{pasted}");
        assert!(pasted.contains("it stays with the sender"), "{pasted}");
        assert!(!pasted.contains(&SECRET_KEY[5..20]), "{pasted}");
        let github = only(
            &provider(&format!(
                "scheme = \"github\"\nsecrets = [\"s\"]\npublic_keys = [\"{PUBLIC}\"]\n"
            )),
            &[],
        )
        .to_string();
        assert!(
            github.contains("public_keys: only for scheme \"standard-webhooks\""),
            "{github}"
        );
    }

    #[test]
    fn a_secret_that_cannot_be_resolved_or_used_is_named_by_index() {
        let unset = only(
            &provider("scheme = \"github\"\nsecrets = [\"s\", \"env:NOT_SET_HERE\"]\n"),
            &[],
        );
        assert_eq!(
            unset.to_string(),
            "l.toml:4: providers[0].secrets[1]: provider \"p\": \
             environment variable NOT_SET_HERE is not set"
        );
        let empty = only(&provider("scheme = \"github\"\nsecrets = [\"\"]\n"), &[]);
        assert_eq!(
            empty.to_string(),
            "l.toml:4: providers[0].secrets[0]: provider \"p\": secret is empty"
        );
        let not_base64 = only(
            &provider("scheme = \"standard-webhooks\"\nsecrets = [\"whsec_!!\"]\n"),
            &[],
        );
        assert_eq!(
            not_base64.to_string(),
            "l.toml:4: providers[0].secrets[0]: provider \"p\": \
             standard-webhooks secret must be `whsec_` followed by padded standard base64"
        );
        // The reason never repeats the secret.
        assert!(!not_base64.reason.contains("!!"));
    }

    #[test]
    fn a_bad_header_name_is_named_with_its_key() {
        let text = provider(
            "scheme = \"hmac-sha256\"\nsecrets = [\"s\"]\nsignature_header = \"X Sig\"\n\
             timestamp_header = \"X:T\"\nevent_id = \"header:Event Id\"\n",
        );
        assert_eq!(
            lines(&text, &[]),
            [
                "l.toml:5: providers[0].signature_header: \"X Sig\" is not a valid HTTP header name",
                "l.toml:6: providers[0].timestamp_header: \"X:T\" is not a valid HTTP header name",
                "l.toml:7: providers[0].event_id: \"Event Id\" is not a valid HTTP header name",
            ]
        );
    }

    #[test]
    fn a_bad_cidr_is_named_by_index() {
        let text = format!(
            "[server]\ntrusted_proxies = [\"proxy\"]\n{}",
            provider(
                "scheme = \"github\"\nsecrets = [\"s\"]\nallow_ips = [\"10.0.0.1\", \"10.0.0.0/33\"]\n"
            )
        );
        assert_eq!(
            lines(&text, &[]),
            [
                "l.toml:2: server.trusted_proxies[0]: \"proxy\" is not an address or CIDR network \
                 such as \"203.0.113.0/24\"",
                "l.toml:7: providers[0].allow_ips[1]: \"10.0.0.0/33\" is not an address or CIDR \
                 network such as \"203.0.113.0/24\"",
            ]
        );
    }

    #[test]
    fn a_provider_name_used_twice_is_named_at_the_second() {
        let problem = only(&format!("{GOOD}\n{GOOD}"), &[]);
        assert_eq!(
            problem.to_string(),
            "l.toml:7: providers[1].name: provider \"gh\" is configured twice"
        );
    }

    #[test]
    fn a_provider_name_must_be_a_route_segment() {
        let problem = only(
            "[[providers]]\nname = \"a/b\"\nscheme = \"github\"\nsecrets = [\"s\"]\n",
            &[],
        );
        assert_eq!(
            problem.to_string(),
            "l.toml:2: providers[0].name: \"a/b\" is not a valid provider name; \
             use 1 to 64 of a-z, A-Z, 0-9, '-', '_'"
        );
    }

    #[test]
    fn unknown_keys_and_sections_are_refused() {
        let text = format!(
            "[servre]\nlisten = \"0.0.0.0:1\"\n[dedupe]\ncapcity = 1\n{}",
            provider("scheme = \"github\"\nsecrets = [\"s\"]\nsecret = \"s\"\n")
        );
        assert_eq!(
            lines(&text, &[]),
            [
                "l.toml:1: servre: unknown section; \
                 expected one of server, amqp, dedupe, log, telemetry, spool, providers",
                "l.toml:4: dedupe.capcity: unknown field `capcity`, expected `capacity` or `ttl`",
                "l.toml:9: providers[0].secret: unknown field `secret`, expected one of `name`, \
                 `scheme`, `secrets`, `public_keys`, `signature_header`, `encoding`, `prefix`, `timestamp_header`, \
                 `signed_payload`, `event_id`, `event_type`, `tolerance`, `allow_ips`, `rate_limit`",
            ]
        );
    }

    #[test]
    fn an_env_override_that_names_no_key_names_the_variable() {
        let typo = only(GOOD, &[("HOOKWARDEN__SERVER__LISTNE", "0.0.0.0:1")]);
        assert_eq!(
            typo.to_string(),
            "environment variable HOOKWARDEN__SERVER__LISTNE: names no key of the listener \
             config (unknown field `listne`, expected one of `listen`, `admin_listen`, \
             `max_body`, `handoff_timeout`, `header_timeout`, `body_timeout`, `shutdown_grace`, \
             `max_connections`, `trusted_proxies`)"
        );
        assert_eq!(typo.variable.as_deref(), Some("HOOKWARDEN__SERVER__LISTNE"));
        assert_eq!(
            (typo.file.as_str(), typo.key.as_str()),
            ("l.toml", "server.listne")
        );
        let section = only(GOOD, &[("HOOKWARDEN__SERVR__LISTEN", "0.0.0.0:1")]);
        assert_eq!(
            section.to_string(),
            "environment variable HOOKWARDEN__SERVR__LISTEN: names no key of the listener \
             config (unknown section `servr`; \
             expected one of server, amqp, dedupe, log, telemetry, spool, providers)"
        );
    }

    #[test]
    fn a_bad_env_value_is_blamed_on_its_variable() {
        let problem = only(GOOD, &[("HOOKWARDEN__SERVER__MAX_BODY", "lots")]);
        assert_eq!(
            problem.to_string(),
            "environment variable HOOKWARDEN__SERVER__MAX_BODY: invalid size \"lots\"; \
             write bytes or a unit such as \"1MiB\" for key `max_body`"
        );
        assert_eq!(problem.key, "server.max_body");
        // The same value in the file is the file's line.
        let in_file = only(&format!("[server]\nmax_body = \"lots\"\n{GOOD}"), &[]);
        assert!(
            in_file
                .to_string()
                .starts_with("l.toml:2: server.max_body: invalid size \"lots\""),
            "{in_file}"
        );
    }

    #[test]
    fn list_entries_cannot_be_overridden_from_the_environment() {
        let problem = only(GOOD, &[("HOOKWARDEN__PROVIDERS__0__NAME", "other")]);
        assert_eq!(
            problem.to_string(),
            "environment variable HOOKWARDEN__PROVIDERS__0__NAME: entries of a list cannot be \
             overridden from the environment; reference env: or file: secrets in the file instead"
        );
    }

    #[test]
    fn presets_refuse_the_keys_they_fix() {
        let text = provider(
            "scheme = \"stripe\"\nsecrets = [\"s\"]\nprefix = \"v1=\"\nencoding = \"hex\"\n",
        );
        assert_eq!(
            lines(&text, &[]),
            [
                "l.toml:5: providers[0].prefix: only for scheme \"hmac-sha256\"; \
                 scheme \"stripe\" fixes its own",
                "l.toml:6: providers[0].encoding: only for scheme \"hmac-sha256\"; \
                 scheme \"stripe\" fixes its own",
            ]
        );
    }

    #[test]
    fn hmac_sha256_needs_its_header_and_a_known_encoding_and_template() {
        let no_header = only(
            &provider("scheme = \"hmac-sha256\"\nsecrets = [\"s\"]\n"),
            &[],
        );
        assert_eq!(
            no_header.to_string(),
            "l.toml:1: providers[0].signature_header: required for scheme \"hmac-sha256\" \
             (the header carrying the signature)"
        );
        let hmac = "scheme = \"hmac-sha256\"\nsecrets = [\"s\"]\nsignature_header = \"x-sig\"\n";
        let encoding = only(&provider(&format!("{hmac}encoding = \"base32\"\n")), &[]);
        assert_eq!(
            encoding.to_string(),
            "l.toml:6: providers[0].encoding: unknown encoding \"base32\"; \
             expected one of hex, base64"
        );
        let lone_payload = only(
            &provider(&format!("{hmac}signed_payload = \"{{body}}\"\n")),
            &[],
        );
        assert_eq!(
            lone_payload.to_string(),
            "l.toml:6: providers[0].signed_payload: needs timestamp_header \
             (the header the {timestamp} placeholder reads)"
        );
        let template = only(
            &provider(&format!(
                "{hmac}timestamp_header = \"x-ts\"\nsigned_payload = \"{{ts}}.{{body}}\"\n"
            )),
            &[],
        );
        assert_eq!(
            template.to_string(),
            "l.toml:7: providers[0].signed_payload: signed template has unknown placeholder \
             `{ts}`; only {timestamp} and {body} exist"
        );
    }

    #[test]
    fn event_id_and_type_must_be_a_pointer_or_a_header() {
        let problem = only(
            &provider("scheme = \"github\"\nsecrets = [\"s\"]\nevent_type = \"type\"\n"),
            &[],
        );
        assert_eq!(
            problem.to_string(),
            "l.toml:5: providers[0].event_type: \"type\" is neither a JSON pointer (\"/id\") \
             nor a header (\"header:X-Event-Id\")"
        );
    }

    #[test]
    fn a_bad_duration_names_its_key() {
        let problem = only(
            &provider("scheme = \"stripe\"\nsecrets = [\"s\"]\ntolerance = \"soon\"\n"),
            &[],
        );
        assert_eq!(
            problem.to_string(),
            "l.toml:5: providers[0].tolerance: invalid value: string \"soon\", \
             expected a duration for key `tolerance`"
        );
    }

    #[test]
    fn zero_limits_and_unknown_log_formats_are_refused() {
        let text = format!(
            "[server]\nmax_body = 0\n[dedupe]\ncapacity = 0\nttl = \"0s\"\n[log]\nformat = \"xml\"\n{GOOD}"
        );
        assert_eq!(
            lines(&text, &[]),
            [
                "l.toml:2: server.max_body: must be greater than 0",
                "l.toml:4: dedupe.capacity: must be at least 1",
                "l.toml:5: dedupe.ttl: must be greater than 0",
                "l.toml:7: log.format: unknown format \"xml\"; expected one of auto, json, text",
            ]
        );
    }

    #[test]
    fn a_config_without_providers_says_what_that_would_mean() {
        let problem = only("[server]\n", &[]);
        assert_eq!(
            problem.to_string(),
            "l.toml: providers: no [[providers]] configured; every request would be answered 404"
        );
    }

    #[test]
    fn invalid_toml_is_one_problem_at_its_line() {
        let problem = only(&format!("{GOOD}[[providers]\n"), &[]);
        assert_eq!(
            problem.to_string(),
            "l.toml:5: invalid TOML: unclosed array table, expected `]`"
        );
    }

    #[test]
    fn a_rules_file_is_sent_to_the_worker() {
        let problem = only("[[rules]]\nname = \"r\"\n", &[]);
        assert_eq!(
            problem.to_string(),
            "l.toml: this looks like a worker rules file, not a listener config (it has \
             [[rules]]); the worker takes it: hookwarden-worker --config l.toml"
        );
    }

    #[test]
    fn every_problem_of_every_provider_is_reported_at_once() {
        let text = format!(
            "{}\n{}",
            provider("scheme = \"nope\"\nsecrets = [\"s\"]\n"),
            "[[providers]]\nname = \"q\"\nscheme = \"github\"\nsecrets = []\nallow_ips = [\"x\"]\n"
        );
        assert_eq!(lines(&text, &[]).len(), 3, "{:?}", lines(&text, &[]));
    }

    #[test]
    fn schemes_fill_in_their_own_defaults() {
        let text = "[[providers]]\nname = \"gh\"\nscheme = \"github\"\nsecrets = [\"s\"]\n\
                    [[providers]]\nname = \"sw\"\nscheme = \"standard-webhooks\"\n\
                    secrets = [\"whsec_c2VjcmV0\"]\ntolerance = \"1m\"\n\
                    [[providers]]\nname = \"st\"\nscheme = \"stripe\"\nsecrets = [\"whsec_x\"]\n";
        let config = parse(text, &[]).unwrap();
        let gh = config.provider("gh").unwrap();
        assert_eq!(gh.event_id.to_string(), "header:x-github-delivery");
        assert_eq!(gh.event_type.to_string(), "header:x-github-event");
        let sw = config.provider("sw").unwrap();
        assert_eq!(sw.event_id, FieldRef::SchemeId);
        assert_eq!(sw.event_type, FieldRef::Pointer("/type".to_owned()));
        assert!(
            matches!(&sw.scheme, Scheme::StandardWebhooks(s) if s.tolerance == Duration::from_secs(60))
        );
        let st = config.provider("st").unwrap();
        assert_eq!(st.event_id, FieldRef::Pointer("/id".to_owned()));
        assert!(matches!(&st.scheme, Scheme::Stripe(s) if s.tolerance == Duration::from_secs(300)));
    }
}
