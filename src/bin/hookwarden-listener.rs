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
    // Before the runtime starts: taking the socket edits the environment.
    let activated = match hookwarden::systemd::activated_listener() {
        Ok(l) => l,
        Err(err) => {
            eprintln!("the socket passed by systemd is unusable: {err}");
            return ExitCode::from(1);
        }
    };
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
    match runtime.block_on(run(config, activated)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "listener failed to start");
            ExitCode::from(1)
        }
    }
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
