//! `hookwarden rules trips` and `hookwarden rules reset`: the rules whose breakers tripped, as
//! the state store holds them for every worker, and untripping one. A running worker sees a
//! reset from its next batch on: the store is where both read it.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::worker::config::{Backend, WorkerConfig};
use crate::worker::decide::rfc3339_ms;
use crate::worker::state::{self, Store, Trip};

/// Arguments of `hookwarden rules trips`.
#[derive(Args)]
pub struct TripsArgs {
    /// The worker's rules file (its `[state]` names the store).
    #[arg(long, default_value = "/etc/hookwarden/rules.toml")]
    pub rules: PathBuf,
    /// Print them as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `hookwarden rules reset`.
#[derive(Args)]
pub struct ResetArgs {
    /// The rule to untrip.
    #[arg(value_name = "RULE")]
    pub rule: String,
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

/// The tripped rules.
///
/// # Errors
/// The store cannot be opened or read.
pub fn trips(config: &WorkerConfig) -> anyhow::Result<Vec<Trip>> {
    let (_runtime, store) = open(config)?;
    Ok(store.trips()?)
}

/// The trips as lines for a terminal.
pub fn describe(trips: &[Trip]) -> String {
    if trips.is_empty() {
        return "no rule has tripped its breaker\n".to_owned();
    }
    let mut out = String::new();
    for t in trips {
        let _ = writeln!(
            out,
            "{} tripped at {}: {} firings would have acted within {}; subjects {}",
            t.rule,
            rfc3339_ms(t.at_ms).unwrap_or_default(),
            t.count,
            t.per(),
            t.subjects.join(", ")
        );
    }
    out
}

/// Untrips `rule` (a rule of the rules file): a line saying what changed.
///
/// # Errors
/// The store cannot be opened or written.
pub fn reset(config: &WorkerConfig, rule: &str) -> anyhow::Result<String> {
    let (_runtime, store) = open(config)?;
    Ok(match store.reset_trip(rule)? {
        true => format!(
            "{rule}: reset; its matches act again from the workers' next batch, its window starts empty"
        ),
        false => format!("{rule}: was not tripped; its window starts empty"),
    })
}
