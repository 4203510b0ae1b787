//! `hookwarden rules stats` and `hookwarden decisions label`: how each rule has done over the
//! decision records of a period, with what analysts said of its matches. A label is a verdict
//! on one rule's match on one event (`true-positive` or `false-positive`, with a note); the
//! false-positive ratio of a rule is over its labelled matches.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::worker::config::{Backend, WorkerConfig};
use crate::worker::decide::{RecordedRule, rfc3339_ms};
use crate::worker::state::{self, Label, LabelVerdict, Store, StoreError, now_ms};
use crate::worker::stats::{RuleStats, Tally};

/// Arguments of `hookwarden rules stats`.
#[derive(Args)]
pub struct StatsArgs {
    /// The worker's rules file (its `[state]` names the store; its rules come first).
    #[arg(long, default_value = "/etc/hookwarden/rules.toml")]
    pub rules: PathBuf,
    /// Over the decisions of this long ago until now (`30d`, `12h`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "30d")]
    pub since: Duration,
    /// Print them as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A verdict as the command line spells it.
#[derive(Clone, Copy, ValueEnum)]
pub enum Verdict {
    /// The rule was right to match.
    TruePositive,
    /// The rule should not have matched.
    FalsePositive,
}

/// Arguments of `hookwarden decisions label`.
#[derive(Args)]
pub struct LabelArgs {
    /// The event: `PROVIDER/ID`, or `ID` with --provider.
    #[arg(value_name = "EVENT_ID")]
    pub event: String,
    /// Provider, when EVENT_ID does not start with `PROVIDER/`.
    #[arg(long)]
    pub provider: Option<String>,
    /// The rule whose match is labelled.
    #[arg(long)]
    pub rule: String,
    /// The verdict.
    #[arg(long = "as", value_enum, value_name = "VERDICT")]
    pub verdict: Verdict,
    /// Why, in your words.
    #[arg(long)]
    pub note: Option<String>,
    /// The worker's rules file (its `[state]` names the store).
    #[arg(long, default_value = "/etc/hookwarden/rules.toml")]
    pub rules: PathBuf,
}

/// Opens the store `config` names for a command (never creating an embedded file).
fn open(
    config: &WorkerConfig,
) -> anyhow::Result<(tokio::runtime::Runtime, std::sync::Arc<dyn Store>)> {
    if let Backend::Sqlite(path) = &config.state.backend
        && !path.exists()
    {
        bail!(
            "no state file at {} ([state] path): has the worker run with these rules here?",
            path.display()
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let store = runtime
        .block_on(state::open_existing(&config.state))
        .with_context(|| format!("cannot open the state store {}", config.state.describe()))?;
    Ok((runtime, store))
}

/// Why a label was refused: the input (exit 64) or the store (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// The event, the rule or the verdict do not fit what was decided.
    #[error("{0}")]
    Input(String),
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// Records the label `args` gives: the event must have a decision record in which the rule
/// matched.
///
/// # Errors
/// The event was not decided, the rule did not match it, or the store failed.
pub fn label(config: &WorkerConfig, args: &LabelArgs) -> Result<String, LabelError> {
    let event_key = match (&args.provider, args.event.split_once('/')) {
        (Some(p), _) => format!("{p}/{}", args.event),
        (None, Some((p, id))) if !p.is_empty() && !id.is_empty() => args.event.clone(),
        (None, _) => {
            return Err(LabelError::Input(format!(
                "{:?}: write PROVIDER/ID or add --provider",
                args.event
            )));
        }
    };
    let (_runtime, store) = open(config)?;
    let record = store
        .decisions(Some(&event_key), None, 1)
        .map_err(anyhow::Error::from)?
        .into_iter()
        .next()
        .ok_or_else(|| LabelError::Input(format!("no decision record of {event_key}")))?;
    let rules: Vec<RecordedRule> = record
        .record
        .get("rules")
        .and_then(|r| serde::Deserialize::deserialize(r).ok())
        .unwrap_or_default();
    let Some(entry) = rules.iter().find(|r| r.rule == args.rule) else {
        let names: Vec<&str> = rules.iter().map(|r| r.rule.as_str()).collect();
        return Err(LabelError::Input(format!(
            "rule {:?} did not evaluate {event_key}; the rules that did: {}",
            args.rule,
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    };
    if !entry.matched {
        return Err(LabelError::Input(format!(
            "rule {:?} did not match {event_key}: a label says whether a match was right",
            args.rule
        )));
    }
    let verdict = match args.verdict {
        Verdict::TruePositive => LabelVerdict::TruePositive,
        Verdict::FalsePositive => LabelVerdict::FalsePositive,
    };
    store
        .label(&Label {
            event_key: event_key.clone(),
            rule: args.rule.clone(),
            verdict,
            note: args.note.clone(),
            at_ms: now_ms(),
        })
        .map_err(anyhow::Error::from)?;
    Ok(format!(
        "{event_key}: {} labelled {}",
        args.rule,
        verdict.as_str().replace('_', "-")
    ))
}

/// The statistics, with the period they cover.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// The period's start, RFC 3339.
    pub since: Option<String>,
    /// Decision records read.
    pub decisions: u64,
    /// Per rule.
    pub rules: Vec<RuleStats>,
}

/// Reads the period's decision records and labels and counts per rule.
///
/// # Errors
/// The store cannot be opened or read.
pub fn stats(config: &WorkerConfig, args: &StatsArgs) -> anyhow::Result<Stats> {
    let since = now_ms().saturating_sub(i64::try_from(args.since.as_millis()).unwrap_or(i64::MAX));
    let (_runtime, store) = open(config)?;
    let mut tally = Tally::new(&config.rules, store.labels()?);
    store.scan_decisions(since, &mut |record| {
        tally.add(&record);
        Ok::<(), StoreError>(())
    })?;
    let decisions = tally.decisions;
    Ok(Stats {
        since: rfc3339_ms(since),
        decisions,
        rules: tally.finish(),
    })
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} decision records since {}",
            self.decisions,
            self.since.as_deref().unwrap_or("the start")
        )?;
        let header = [
            "rule",
            "mode",
            "evaluated",
            "matched",
            "acted",
            "would act",
            "tripped",
            "subjects",
            "labelled tp/fp",
            "fp ratio",
            "actions failed",
        ];
        let rows: Vec<Vec<String>> = self
            .rules
            .iter()
            .map(|r| {
                vec![
                    r.rule.clone(),
                    r.mode.unwrap_or("(gone)").to_owned(),
                    r.evaluated.to_string(),
                    r.matched.to_string(),
                    r.acted.to_string(),
                    r.would_act.to_string(),
                    r.tripped.to_string(),
                    r.subjects.to_string(),
                    format!("{}/{}", r.true_positives, r.false_positives),
                    r.false_positive_ratio
                        .map_or_else(|| "—".to_owned(), |x| format!("{:.0}%", x * 100.0)),
                    r.actions_failed.to_string(),
                ]
            })
            .collect();
        f.write_str(&crate::cli::out::table(&header, &rows))
    }
}
