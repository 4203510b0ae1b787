//! `hookwarden-listener --config FILE [--check]`: validate the config before binding
//! anything, then serve until SIGTERM/SIGINT.
#![deny(clippy::unwrap_used, clippy::disallowed_methods)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hookwarden::config;
use hookwarden::daemon::{self, Loader};
use hookwarden::listener::config::ListenerConfig;
use hookwarden::signals::{Signal, Signals};
use tokio_util::sync::CancellationToken;

/// Receives signed webhooks and hands them to RabbitMQ with publisher confirms.
#[derive(Parser)]
// Named here: clap otherwise takes the package's name ("hookwarden") for --version.
#[command(
    name = "hookwarden-listener",
    version,
    after_help = "Example: hookwarden-listener --config /etc/hookwarden/listener.toml --check"
)]
struct Args {
    /// Listener config file.
    #[arg(long, default_value = "/etc/hookwarden/listener.toml")]
    config: PathBuf,
    /// Validate the config, print a summary, and exit (0 valid, 1 invalid).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let env = config::process_env();
    let loader = Loader {
        parse: ListenerConfig::parse,
        summary: ListenerConfig::summary,
        log: |c| &c.log,
        telemetry: |c| &c.telemetry,
        service: "hookwarden-listener",
    };
    // Before any thread starts (the runtime's, the trace exporter's): taking the socket edits
    // the environment.
    let activated = match hookwarden::systemd::activated_listener() {
        Ok(l) => l,
        Err(err) => {
            eprintln!("the socket passed by systemd is unusable: {err}");
            return ExitCode::from(daemon::EXIT_START);
        }
    };
    let config = match daemon::prepare(&args.config, args.check, &env, &loader) {
        Ok(config) => config,
        Err(code) => return code,
    };
    daemon::run("listener", run(config, activated))
}

async fn run(
    config: ListenerConfig,
    activated: Option<std::net::TcpListener>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut signals = Signals::install().context("installing signal handlers")?;
    let public = match activated {
        // systemd holds the port across restarts: no connection is refused meanwhile.
        Some(socket) => tokio::net::TcpListener::from_std(socket)
            .context("using the socket passed by systemd")?,
        None => tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding server.listen {}", config.server.listen))?,
    };
    let admin = tokio::net::TcpListener::bind(config.server.admin_listen)
        .await
        .with_context(|| format!("binding server.admin_listen {}", config.server.admin_listen))?;
    tracing::info!(listen = %public.local_addr()?, admin = %admin.local_addr()?, "listener started");
    let shutdown = CancellationToken::new();
    let running = hookwarden::listener::start(config, public, admin, shutdown.clone())?;
    let _watchdog = hookwarden::systemd::spawn_watchdog();
    let publisher = running.publisher.clone();
    tokio::spawn(async move {
        // Ready means serving and able to hand off: once the broker is connected.
        while !publisher
            .wait_connected(std::time::Duration::from_secs(3600))
            .await
        {}
        hookwarden::systemd::ready("serving; broker connected");
    });
    loop {
        match signals.next().await {
            Signal::Shutdown(name) => {
                tracing::info!(signal = name, "shutting down");
                break;
            }
            Signal::Reload => tracing::info!(
                signal = "SIGHUP",
                "the listener has nothing to reload; restart it to apply a new config"
            ),
        }
    }
    hookwarden::systemd::stopping();
    shutdown.cancel();
    running.done.await.context("listener task")?;
    Ok(())
}
