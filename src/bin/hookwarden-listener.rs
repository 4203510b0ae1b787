//! `hookwarden-listener --config FILE [--check]`: validate the config before binding
//! anything, then serve until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hookwarden::config::{self, listener::ListenerConfig};
use hookwarden::signals::{Signal, Signals};
use tokio_util::sync::CancellationToken;

/// Receives signed webhooks and hands them to RabbitMQ with publisher confirms.
#[derive(Parser)]
#[command(
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

/// Config or usage error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    let env = config::process_env();
    let loaded = config::read_file(&args.config)
        .and_then(|text| ListenerConfig::parse(&args.config.display().to_string(), &text, &env));
    let config = match loaded {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(if args.check { 1 } else { EXIT_CONFIG });
        }
    };
    if args.check {
        print!("{}", config.summary());
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    if let Err(err) = hookwarden::telemetry::init(&config.log) {
        eprintln!("{err}");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "listener failed to start");
            ExitCode::from(1)
        }
    }
}

async fn run(config: ListenerConfig) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut signals = Signals::install().context("installing signal handlers")?;
    let public = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding server.listen {}", config.server.listen))?;
    let admin = tokio::net::TcpListener::bind(config.server.admin_listen)
        .await
        .with_context(|| format!("binding server.admin_listen {}", config.server.admin_listen))?;
    tracing::info!(listen = %public.local_addr()?, admin = %admin.local_addr()?, "listener started");
    let shutdown = CancellationToken::new();
    let running = hookwarden::listener::start(config, public, admin, shutdown.clone());
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
    shutdown.cancel();
    running.done.await.context("listener task")?;
    Ok(())
}
