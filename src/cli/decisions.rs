//! `hookwarden decisions`: the worker's decision records of one subject or one event, newest
//! first, read from the store its rules file names (`[state] path` or `url`).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{ArgGroup, Args};
use serde_json::Value;

use crate::worker::config::{Backend, WorkerConfig};
use crate::worker::decide;
use crate::worker::state::{self, DecisionRecord};

/// Arguments of `hookwarden decisions`.
#[derive(Args)]
#[command(
    group(ArgGroup::new("which").required(true).args(["subject", "event"])),
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct DecisionsArgs {
    /// Label a rule's match instead of printing records.
    #[command(subcommand)]
    pub command: Option<DecisionsCommand>,
    /// The worker's rules file (the store its `[state]` names is read).
    #[arg(long, default_value = "/etc/hookwarden/rules.toml")]
    pub rules: PathBuf,
    /// Records about one subject: `PROVIDER/SUBJECT`, or `SUBJECT` with --provider.
    #[arg(long)]
    pub subject: Option<String>,
    /// The record of one event: `PROVIDER/ID`, or `ID` with --provider.
    #[arg(long)]
    pub event: Option<String>,
    /// Provider, when --subject or --event does not start with `PROVIDER/`.
    #[arg(long)]
    pub provider: Option<String>,
    /// Most records printed.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print the records as JSON (an array, `[]` when there are none).
    #[arg(long)]
    pub json: bool,
}

/// `hookwarden decisions …` beyond printing records.
#[derive(clap::Subcommand)]
pub enum DecisionsCommand {
    /// Record an analyst's verdict on RULE's match on EVENT_ID: true-positive or
    /// false-positive (relabelling replaces it). `hookwarden rules stats` counts them.
    #[command(
        after_help = "Example: hookwarden decisions label dregs/evt_01JD8Q6W3M4X9T2R7K5N0P1Q8S \
--rule quarantine-low-humanity --as false-positive --note \"known test account\" --rules /etc/hookwarden/rules.toml

Exit status: 0 labelled, 1 the state store failed, 64 bad input (no such decision, the rule did
not match the event)."
    )]
    Label(crate::cli::stats::LabelArgs),
}

/// What to look up: (event key, subject key), one of them set.
pub type Query = (Option<String>, Option<String>);

impl DecisionsArgs {
    /// The store keys to look up, as the worker writes them (`provider/id`).
    ///
    /// # Errors
    /// A value without a provider part and no `--provider`.
    pub fn query(&self) -> anyhow::Result<Query> {
        let key = |value: &str, flag: &str| -> anyhow::Result<String> {
            match &self.provider {
                Some(p) => Ok(format!("{p}/{value}")),
                // Subject and event ids may contain `/` themselves: the provider is the
                // part before the first one, and the whole string is the key either way.
                None if value
                    .split_once('/')
                    .is_some_and(|(p, rest)| !p.is_empty() && !rest.is_empty()) =>
                {
                    Ok(value.to_owned())
                }
                None => bail!(
                    "--{flag} {value:?}: write PROVIDER/{} or add --provider",
                    flag.to_uppercase()
                ),
            }
        };
        match (&self.event, &self.subject) {
            (Some(e), _) => Ok((Some(key(e, "event")?), None)),
            (None, Some(s)) => Ok((None, Some(key(s, "subject")?))),
            (None, None) => bail!("give --subject or --event"),
        }
    }
}

/// Reads the records from the store `[state]` names; an embedded store's file must exist
/// (opening creates a missing one, which would only hide a wrong `[state] path`).
///
/// # Errors
/// No state file at `[state] path`, or the store cannot be opened or read.
pub fn read(
    config: &WorkerConfig,
    query: &Query,
    limit: usize,
) -> anyhow::Result<Vec<DecisionRecord>> {
    if let Backend::Sqlite(path) = &config.state.backend
        && !path.exists()
    {
        bail!(
            "no state file at {} ([state] path): has the worker run with these rules here?",
            path.display()
        );
    }
    // The PostgreSQL store runs its queries on the runtime it was opened on.
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let store = runtime
        .block_on(state::open_existing(&config.state))
        .with_context(|| format!("cannot open the state store {}", config.state.describe()))?;
    Ok(store.decisions(query.0.as_deref(), query.1.as_deref(), limit)?)
}

/// Records as `--json` prints them.
pub fn to_json(records: &[DecisionRecord]) -> Value {
    Value::from(
        records
            .iter()
            .map(|d| {
                serde_json::json!({
                    "event": d.event_key,
                    "subject": d.subject_key,
                    "outcome": d.outcome,
                    "at": decide::rfc3339_ms(d.at_ms),
                    "record": d.record,
                })
            })
            .collect::<Vec<_>>(),
    )
}

/// Records as text: a line per event, then per rule what it said and per action how it went.
pub fn to_text(records: &[DecisionRecord]) -> String {
    if records.is_empty() {
        return "no decisions\n".to_owned();
    }
    let mut out = String::new();
    for d in records {
        let at = decide::rfc3339_ms(d.at_ms).unwrap_or_else(|| d.at_ms.to_string());
        let r = &d.record;
        let _ = write!(out, "{at}  {}  {}", d.event_key, d.outcome);
        if let Some(t) = r["type"].as_str() {
            let _ = write!(out, "  type {t}");
        }
        if let Some(s) = &d.subject_key {
            let _ = write!(out, "  subject {s}");
        }
        out.push('\n');
        if let Some(scores) = r["score"].as_object().filter(|s| !s.is_empty()) {
            // f64's Display prints 22 where JSON would print 22.0.
            let scores: Vec<String> = scores
                .iter()
                .map(|(k, v)| match v.as_f64() {
                    Some(f) => format!("{k} {f}"),
                    None => format!("{k} {v}"),
                })
                .collect();
            let _ = writeln!(out, "  score: {}", scores.join(", "));
        }
        if r["stale"] == Value::Bool(true) {
            let _ = writeln!(
                out,
                "  stale: older than the subject's last version, no rule evaluated"
            );
        }
        for rule in r["rules"].as_array().into_iter().flatten() {
            let said = if rule["error"].is_string() {
                format!("error: {}", rule["error"].as_str().unwrap_or_default())
            } else if rule["cooldown"] == Value::Bool(true) {
                "matched, in cooldown".to_owned()
            } else if rule["matched"] == Value::Bool(true) {
                "matched".to_owned()
            } else {
                "not matched".to_owned()
            };
            let _ = write!(
                out,
                "  rule {} ({}): {said}",
                rule["rule"].as_str().unwrap_or("?"),
                rule["mode"].as_str().unwrap_or("?")
            );
            if rule["would_act"] == Value::Bool(true) {
                out.push_str(", would act");
            }
            out.push('\n');
            for a in rule["actions"].as_array().into_iter().flatten() {
                let _ = write!(
                    out,
                    "    action {}: {}",
                    a["action"].as_str().unwrap_or("?"),
                    a["outcome"].as_str().unwrap_or("?")
                );
                if let Some(n) = a["attempts"].as_u64().filter(|&n| n > 0) {
                    let _ = write!(out, ", {n} attempt(s)");
                }
                if let Some(ms) = a["latency_ms"].as_u64() {
                    let _ = write!(out, ", {ms} ms");
                }
                if let Some(e) = a["error"].as_str() {
                    let _ = write!(out, ": {e}");
                }
                out.push('\n');
            }
        }
    }
    out
}
