//! `hookwarden rules backtest`: what candidate rules would have done over the archived events,
//! beside what was decided (the recorded decisions, or `--baseline` rules replayed the same
//! way). Reads the state store the candidate's `[state]` names, never writes it, sends
//! nothing. The replay itself is [`crate::worker::backtest`]; this is its command line, its
//! progress bar and its printed report.

use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Serialize;

use crate::cli::out::table;
use crate::worker::backtest::{Backtest, Baseline, Replay, Report, Window};
use crate::worker::config::{Backend, WorkerConfig};
use crate::worker::decide::rfc3339_ms;
use crate::worker::state::{self, ArchiveSummary, ReplayQuery, StoreError, now_ms};

/// Arguments of `hookwarden rules backtest`.
#[derive(Args)]
pub struct BacktestArgs {
    /// The candidate rules file; the archive is read from the state store its `[state]` names.
    #[arg(long, value_name = "CANDIDATE.toml")]
    pub rules: PathBuf,
    /// Compare with these rules replayed the same way, instead of with the recorded decisions.
    #[arg(long, value_name = "BASELINE.toml")]
    pub baseline: Option<PathBuf>,
    /// Compare the events received this long ago until now (`7d`, `12h`); default: every
    /// archived event.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          conflicts_with_all = ["from", "to"])]
    pub since: Option<Duration>,
    /// Compare the events received from this time on (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub from: Option<i64>,
    /// Compare the events received up to this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to: Option<i64>,
    /// Only this subject's events (`provider/subject` or the subject id).
    #[arg(long, value_name = "SUBJECT")]
    pub subject: Option<String>,
    /// List the first N subjects whose actions change.
    #[arg(long, value_name = "N", default_value_t = crate::worker::backtest::CHANGES_LISTED)]
    pub changes: usize,
    /// Print the report as JSON (no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// An RFC 3339 time as Unix milliseconds.
fn parse_time(text: &str) -> Result<i64, String> {
    let at = humantime::parse_rfc3339_weak(text)
        .map_err(|err| format!("{text:?} is not an RFC 3339 time: {err}"))?;
    let since = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?;
    i64::try_from(since.as_millis()).map_err(|_| format!("{text:?} is too far ahead"))
}

/// The backtest's report with what it compared.
#[derive(Debug, Serialize)]
pub struct Backtested {
    /// The candidate rules file.
    pub candidate: String,
    /// The baseline rules file, or `recorded decisions`.
    pub baseline: String,
    /// The window compared, RFC 3339; `None` ends are open.
    pub from: Option<String>,
    /// See `from`.
    pub to: Option<String>,
    /// Only this subject.
    pub subject: Option<String>,
    /// The archive as a whole.
    pub archive: ArchiveSummary,
    /// What the replay found.
    #[serde(flatten)]
    pub report: Report,
    /// Events replayed per second.
    pub events_per_second: f64,
}

/// Runs the backtest `args` asks for with the `candidate` (and `baseline`) rules.
///
/// # Errors
/// The store cannot be opened or read.
pub fn run(
    args: &BacktestArgs,
    candidate: &WorkerConfig,
    baseline: Option<&WorkerConfig>,
) -> anyhow::Result<Backtested> {
    if let Backend::Sqlite(path) = &candidate.state.backend
        && !path.exists()
    {
        bail!(
            "no state file at {} ([state] path of {}): has the worker run with these rules here?",
            path.display(),
            args.rules.display()
        );
    }
    let window = match args.since {
        Some(since) => Window {
            from_ms: Some(
                now_ms().saturating_sub(i64::try_from(since.as_millis()).unwrap_or(i64::MAX)),
            ),
            to_ms: None,
        },
        None => Window {
            from_ms: args.from,
            to_ms: args.to,
        },
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let store = runtime
        .block_on(state::open_existing(&candidate.state))
        .with_context(|| format!("cannot open the state store {}", candidate.state.describe()))?;
    let summary = store.archive_summary()?;
    // One subject's events are a part of the archive of unknown size.
    let total = args.subject.is_none().then_some(summary.events);
    let progress = crate::cli::progress::bar(total, "replaying events", args.json);
    let mut test = Backtest::new(
        &candidate.rules,
        match baseline {
            Some(b) => Baseline::Rules(Replay::new(&b.rules)),
            None => Baseline::Recorded,
        },
        window,
    )
    .list(args.changes);
    let query = ReplayQuery {
        subject_key: args.subject.clone(),
        // Records are read only inside the window, and only when they are the baseline.
        recorded_from: baseline
            .is_none()
            .then(|| window.from_ms.unwrap_or(i64::MIN)),
    };
    let started = std::time::Instant::now();
    let mut fed = 0u64;
    store.replay(&query, &mut |replayed| {
        test.feed(replayed);
        fed += 1;
        if fed.is_multiple_of(4096)
            && let Some(bar) = &progress
        {
            bar.set_position(fed);
        }
        Ok::<(), StoreError>(())
    })?;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let report = test.finish();
    Ok(Backtested {
        candidate: args.rules.display().to_string(),
        baseline: match &args.baseline {
            Some(path) => path.display().to_string(),
            None => "recorded decisions".to_owned(),
        },
        from: window.from_ms.and_then(rfc3339_ms),
        to: window.to_ms.and_then(rfc3339_ms),
        subject: args.subject.clone(),
        archive: summary,
        events_per_second: if elapsed > 0.0 {
            report.replayed as f64 / elapsed
        } else {
            0.0
        },
        report,
    })
}

impl fmt::Display for Backtested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        writeln!(
            f,
            "backtest of {} against {}",
            self.candidate, self.baseline
        )?;
        let span = match (
            self.archive.oldest_ms.and_then(rfc3339_ms),
            self.archive.newest_ms.and_then(rfc3339_ms),
        ) {
            (Some(oldest), Some(newest)) => format!(" received {oldest} to {newest}"),
            _ => String::new(),
        };
        writeln!(
            f,
            "archive: {} events{span}; replayed {} over {} subjects ({:.0} events/s)",
            self.archive.events, r.replayed, r.subjects, self.events_per_second
        )?;
        let window = match (&self.from, &self.to) {
            (None, None) => "every event".to_owned(),
            (Some(from), None) => format!("from {from}"),
            (None, Some(to)) => format!("up to {to}"),
            (Some(from), Some(to)) => format!("from {from} to {to}"),
        };
        let subject = match &self.subject {
            Some(s) => format!(" of subject {s}"),
            None => String::new(),
        };
        writeln!(
            f,
            "compared: {} events{subject} ({window}); {} not evaluated (no subject, stale), {} without a record",
            r.compared, r.not_evaluated, r.unrecorded
        )?;
        if r.unreadable > 0 {
            writeln!(
                f,
                "skipped: {} archived bodies that are not JSON",
                r.unreadable
            )?;
        }
        writeln!(f)?;
        let rows: Vec<Vec<String>> = r
            .rules
            .iter()
            .map(|l| {
                vec![
                    l.rule.clone(),
                    l.mode.unwrap_or("(gone)").to_owned(),
                    l.candidate.evaluated.to_string(),
                    l.candidate.matched.to_string(),
                    format!("{} → {}", l.baseline.would_act, l.candidate.would_act),
                    format!("+{} -{}", l.new, l.gone),
                    l.candidate.tripped.to_string(),
                    l.candidate.errors.to_string(),
                ]
            })
            .collect();
        f.write_str(&table(
            &[
                "rule",
                "mode",
                "evaluated",
                "matched",
                "would act (baseline → candidate)",
                "new/gone",
                "tripped",
                "errors",
            ],
            &rows,
        ))?;
        if !r.actions.is_empty() {
            writeln!(f)?;
            let rows: Vec<Vec<String>> = r
                .actions
                .iter()
                .map(|(name, c)| {
                    vec![
                        name.clone(),
                        format!("{} → {}", c.baseline_runs, c.candidate_runs),
                        c.candidate_shadow.to_string(),
                    ]
                })
                .collect();
            f.write_str(&table(
                &[
                    "action",
                    "runs (baseline → candidate)",
                    "shadow (candidate)",
                ],
                &rows,
            ))?;
        }
        writeln!(f)?;
        if r.changed_subjects == 0 {
            return writeln!(f, "no subject's actions change");
        }
        writeln!(
            f,
            "subjects whose actions change: {}{}",
            r.changed_subjects,
            if r.changed_subjects > r.changes.len() as u64 {
                format!(" (the first {})", r.changes.len())
            } else {
                String::new()
            }
        )?;
        for c in &r.changes {
            let mut line = format!("  {} event {}", c.subject, c.event_id);
            if let Some(at) = &c.received_at {
                let _ = write!(line, " at {at}");
            }
            for rule in &c.rules {
                let _ = write!(
                    line,
                    "  {}: {} → {}",
                    rule.rule,
                    acts(rule.baseline),
                    acts(rule.candidate)
                );
            }
            for (name, value) in &c.score {
                let _ = write!(line, "  {name} {value}");
                if let Some(before) = c.previous.get(name) {
                    let _ = write!(line, " (was {before})");
                }
            }
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

fn acts(fires: bool) -> &'static str {
    if fires { "acts" } else { "—" }
}
