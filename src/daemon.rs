//! What both daemons' `main`s share: load and validate the config before binding anything,
//! answer `--check`, install logging, run on a multi-threaded runtime, and map failures to
//! exit codes (64 for a config error, 1 for a start-up failure).

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use crate::config::log::LogConfig;
use crate::config::telemetry::TelemetryConfig;
use crate::config::{self, ConfigError};

/// Exit code of a config or usage error (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code of a start-up failure (a port in use, a store that cannot open).
pub const EXIT_START: u8 = 1;

/// Parses and validates config text: (`file` for messages, `text`, `env`).
pub type Parse<T> = fn(&str, &str, &HashMap<String, String>) -> Result<T, ConfigError>;

/// How a daemon's config is read.
pub struct Loader<T> {
    /// Parses and validates the text.
    pub parse: Parse<T>,
    /// The `--check` summary.
    pub summary: fn(&T) -> String,
    /// Where its `[log]` section is.
    pub log: fn(&T) -> &LogConfig,
    /// Where its `[telemetry]` section is.
    pub telemetry: fn(&T) -> &TelemetryConfig,
    /// Its name as traces show it: `hookwarden-listener`, `hookwarden-worker`.
    pub service: &'static str,
}

/// Reads the config at `path`. With `check`, prints the summary or every problem and returns
/// the exit code (0 valid, 1 invalid); otherwise installs logging and returns the config, or
/// the exit code of what failed.
///
/// # Errors
/// The exit code to return from `main`.
pub fn prepare<T>(
    path: &Path,
    check: bool,
    env: &HashMap<String, String>,
    loader: &Loader<T>,
) -> Result<T, ExitCode> {
    let loaded = config::read_file(path)
        .and_then(|text| (loader.parse)(&path.display().to_string(), &text, env));
    let config = match loaded {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return Err(ExitCode::from(if check { 1 } else { EXIT_CONFIG }));
        }
    };
    if check {
        print!("{}", (loader.summary)(&config));
        println!("{}: ok", path.display());
        return Err(ExitCode::SUCCESS);
    }
    if let Err(err) = crate::telemetry::init(
        (loader.log)(&config),
        (loader.telemetry)(&config),
        loader.service,
    ) {
        eprintln!("{err}");
        return Err(ExitCode::from(EXIT_START));
    }
    Ok(config)
}

/// Runs `daemon` on a multi-threaded runtime; an error is logged as `{what} failed to start`.
/// Queued trace spans are sent before it returns.
pub fn run(what: &str, daemon: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            return ExitCode::from(EXIT_START);
        }
    };
    let code = match runtime.block_on(daemon) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "{what} failed to start");
            ExitCode::from(EXIT_START)
        }
    };
    // After the runtime: the exporter's last send blocks.
    crate::telemetry::flush();
    code
}
