//! `hookwarden state export|import`: the worker's whole state (subjects, done-marks, decision
//! records) as JSON lines, out of the store one rules file names and into the store another
//! names: how a deployment moves from the embedded file to PostgreSQL without losing what was
//! decided or done.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::worker::config::{Backend, WorkerConfig};
use crate::worker::state::{self, Batch, Exported, Store, StoreError};

/// Arguments of `hookwarden state`.
#[derive(Args)]
pub struct StateArgs {
    /// The worker's rules file (its `[state]` names the store).
    #[arg(long, default_value = "/etc/hookwarden/rules.toml")]
    pub rules: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: StateCommand,
}

/// `state` subcommands.
#[derive(Subcommand)]
pub enum StateCommand {
    /// Write every subject, done-mark and decision record as JSON lines (stop the worker
    /// first, so nothing changes meanwhile).
    Export {
        /// File to write (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Read an export into the store, which must hold no decisions yet.
    Import {
        /// File to read (default: standard input).
        #[arg(long = "in")]
        input: Option<PathBuf>,
    },
}

/// What an export or an import moved.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Subjects.
    pub subjects: usize,
    /// Done-marks.
    pub done: usize,
    /// Decision records.
    pub decisions: usize,
    /// Archived events.
    pub archived: usize,
    /// Analysts' labels.
    pub labels: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} subjects, {} done-marks, {} decision records, {} archived events, {} labels",
            self.subjects, self.done, self.decisions, self.archived, self.labels
        )
    }
}

impl Counts {
    fn add(&mut self, row: &Exported) {
        match row {
            Exported::Subject { .. } => self.subjects += 1,
            Exported::Done { .. } => self.done += 1,
            Exported::Decision(_) => self.decisions += 1,
            Exported::Archived(_) => self.archived += 1,
            Exported::Label(_) => self.labels += 1,
        }
    }
}

/// Rows written to the store at once on import.
const IMPORT_BATCH: usize = 1000;

/// Opens the store `config` names, with a runtime of its own (the PostgreSQL store runs its
/// queries on the runtime it was opened on). An embedded store's file must exist already for
/// an export: opening creates a missing one, which would only hide a wrong `[state] path`.
fn open(
    config: &WorkerConfig,
    must_exist: bool,
) -> anyhow::Result<(tokio::runtime::Runtime, std::sync::Arc<dyn Store>)> {
    if let Backend::Sqlite(path) = &config.state.backend
        && must_exist
        && !path.exists()
    {
        bail!(
            "no state file at {} ([state] path): has the worker run with these rules here?",
            path.display()
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    // An export reads a schema as it is; an import makes the new store's schema.
    let opened = if must_exist {
        runtime.block_on(state::open_existing(&config.state))
    } else {
        runtime.block_on(state::open(&config.state))
    };
    let store = opened
        .with_context(|| format!("cannot open the state store {}", config.state.describe()))?;
    Ok((runtime, store))
}

/// Writes the store's rows to `out`, a JSON line each.
///
/// # Errors
/// The store cannot be opened or read, or `out` cannot be written.
pub fn export(config: &WorkerConfig, out: &mut dyn Write) -> anyhow::Result<Counts> {
    let (_runtime, store) = open(config, true)?;
    let mut out = BufWriter::new(out);
    let mut counts = Counts::default();
    store.export(&mut |row| {
        counts.add(&row);
        serde_json::to_writer(&mut out, &row)
            .map_err(|err| StoreError::Export(std::io::Error::other(err)))?;
        out.write_all(b"\n").map_err(StoreError::Export)
    })?;
    out.flush().context("writing the export")?;
    Ok(counts)
}

/// Reads an export from `input` into the store, which must hold no decision yet.
///
/// # Errors
/// The store cannot be opened or already holds decisions, a line is not an exported row
/// (named by its number; nothing after it is written), or the store refuses a write.
pub fn import(config: &WorkerConfig, input: &mut dyn std::io::Read) -> anyhow::Result<Counts> {
    let (_runtime, store) = open(config, false)?;
    if !store.decisions(None, None, 1)?.is_empty() {
        bail!(
            "the state store {} already holds decision records: import only into a new store",
            config.state.describe()
        );
    }
    let mut counts = Counts::default();
    let mut batch = Batch::default();
    let mut done = Vec::new();
    let flush = |batch: &mut Batch, done: &mut Vec<(String, i64)>| -> anyhow::Result<()> {
        store.commit(batch)?;
        store.restore_done(done)?;
        *batch = Batch::default();
        done.clear();
        Ok(())
    };
    for (n, line) in BufReader::new(input).lines().enumerate() {
        let line = line.context("reading the export")?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Exported = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not a row of a hookwarden state export", n + 1))?;
        counts.add(&row);
        match row {
            Exported::Subject { key, state } => {
                batch.subjects.insert(key, state);
            }
            Exported::Done { key, at_ms } => done.push((key, at_ms)),
            Exported::Decision(record) => batch.decisions.push(record),
            Exported::Archived(event) => batch.archive.push(event),
            Exported::Label(label) => store.label(&label)?,
        }
        if batch.subjects.len() + batch.decisions.len() + batch.archive.len() + done.len()
            >= IMPORT_BATCH
        {
            flush(&mut batch, &mut done)?;
        }
    }
    flush(&mut batch, &mut done)?;
    Ok(counts)
}
