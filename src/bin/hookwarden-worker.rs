//! `hookwarden-worker --config RULES.toml [--check]`: validate the rules file before
//! connecting anything, then consume until SIGTERM/SIGINT; SIGHUP reloads the rules file.
#![deny(clippy::unwrap_used, clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use hookwarden::config::{self, ConfigError};
use hookwarden::daemon::{self, Loader};
use hookwarden::signals::{Signal, Signals};
use hookwarden::worker::config::WorkerConfig;
use tokio_util::sync::CancellationToken;

/// Consumes webhook events, evaluates rules and runs actions.
#[derive(Parser)]
// Named here: clap otherwise takes the package's name ("hookwarden") for --version.
#[command(
    name = "hookwarden-worker",
    version,
    after_help = "Example: hookwarden-worker --config /etc/hookwarden/rules.toml --check"
)]
struct Args {
    /// Rules file.
    #[arg(long, default_value = "/etc/hookwarden/rules.toml")]
    config: PathBuf,
    /// Validate the rules file, print a summary, and exit (0 valid, 1 invalid).
    #[arg(long)]
    check: bool,
}

fn load(path: &Path, env: &HashMap<String, String>) -> Result<WorkerConfig, ConfigError> {
    let text = config::read_file(path)?;
    WorkerConfig::parse(&path.display().to_string(), &text, env)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let env = config::process_env();
    let loader = Loader {
        parse: WorkerConfig::parse,
        summary: WorkerConfig::summary,
        log: |c| &c.log,
        telemetry: |c| &c.telemetry,
        service: "hookwarden-worker",
    };
    let config = match daemon::prepare(&args.config, args.check, &env, &loader) {
        Ok(config) => config,
        Err(code) => return code,
    };
    daemon::run("worker", run(config, &args.config, env))
}

async fn run(
    config: WorkerConfig,
    path: &Path,
    env: HashMap<String, String>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut signals = Signals::install().context("installing signal handlers")?;
    let admin = tokio::net::TcpListener::bind(config.server.admin_listen)
        .await
        .with_context(|| format!("binding server.admin_listen {}", config.server.admin_listen))?;
    let grace = config.server.shutdown_grace;
    let shutdown = CancellationToken::new();
    let running = hookwarden::worker::start(config, admin, shutdown.clone()).await?;
    tracing::info!(rules = %path.display(), "worker started");
    let _watchdog = hookwarden::systemd::spawn_watchdog();
    let consuming = running.consuming.clone();
    tokio::spawn(async move {
        while !consuming.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        hookwarden::systemd::ready("consuming");
    });
    loop {
        match signals.next().await {
            Signal::Shutdown(name) => {
                tracing::info!(signal = name, "shutting down");
                break;
            }
            Signal::Reload => {
                hookwarden::systemd::reloading();
                match load(path, &env) {
                    Ok(next) => {
                        running.reload(next);
                        tracing::info!(signal = "SIGHUP", rules = %path.display(), "rules reloaded");
                    }
                    Err(err) => {
                        for problem in &err.problems {
                            tracing::error!(problem = %problem, "reload refused; the old rules stay");
                        }
                    }
                }
                hookwarden::systemd::ready("consuming");
            }
        }
    }
    hookwarden::systemd::stopping();
    shutdown.cancel();
    match tokio::time::timeout(grace, running.done).await {
        Ok(result) => result.context("worker task")?,
        Err(_) => {
            tracing::warn!(grace = ?grace, "in-flight events did not finish in time; they will be redelivered")
        }
    }
    Ok(())
}
