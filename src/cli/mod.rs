//! The operator's `hookwarden` command: check configs, sign and send test events, dry-run
//! the worker's rules, read its decisions, list and replay its dead letters.

pub mod backtest;
pub mod bench;
pub mod dead_letters;
pub mod decisions;
pub mod http_client;
pub mod out;
pub mod progress;
pub mod rules;
pub mod sign;
pub mod state;
pub mod stats;
pub mod trips;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Operate hookwarden: check configs, sign and send test events, inspect the worker.
#[derive(Parser)]
#[command(version, name = "hookwarden")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Validate a listener config (and a rules file) and print a summary (exit 0 valid, 1 invalid).
    #[command(
        after_help = "Example: hookwarden check --config listener.toml --rules deploy/rules.toml"
    )]
    Check {
        /// Listener config file.
        #[arg(long, default_value = "/etc/hookwarden/listener.toml")]
        config: PathBuf,
        /// Worker rules file, checked too when given (one report for both).
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Example: hookwarden completions bash > /etc/bash_completion.d/hookwarden"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the headers a provider would send with EVENT signed (one `Name: value` per line).
    #[command(
        after_help = "Example: hookwarden sign --config listener.toml --provider dregs event.json"
    )]
    Sign {
        /// How to sign.
        #[command(flatten)]
        signer: SignerArgs,
        /// JSON event file (`-` for standard input).
        event: PathBuf,
    },
    /// Sign EVENT as the provider would and POST it; prints status and body, exits 1 on non-2xx.
    #[command(
        after_help = "Example: hookwarden send --config listener.toml --provider dregs examples/dregs-identity-scored.json"
    )]
    Send {
        /// How to sign.
        #[command(flatten)]
        signer: SignerArgs,
        /// Where to POST; default http://<server.listen>/hooks/<provider> from --config.
        #[arg(long)]
        url: Option<String>,
        /// JSON event file (`-` for standard input).
        event: PathBuf,
    },
    /// Signed load against a running listener: throughput, latency percentiles, statuses;
    /// with --end-to-end also the time from each event to the worker's action.
    #[command(
        after_help = "Examples:\n  hookwarden bench --config listener.toml --provider dregs --concurrency 64 --duration 20s\n  hookwarden bench --config listener.toml --provider dregs --rate 5000 --duration 30s --json\n  hookwarden bench --config listener.toml --provider dregs --rate 2000 --end-to-end 127.0.0.1:18089\n    (with a rule whose http action posts to http://127.0.0.1:18089/{{ event.id }})"
    )]
    Bench {
        /// How to sign.
        #[command(flatten)]
        signer: SignerArgs,
        /// Where to POST; default from --config as for `send`.
        #[arg(long)]
        url: Option<String>,
        /// The load and the report.
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Work with the worker's rules file without running the worker.
    #[command(
        after_help = "Example: hookwarden rules test --rules deploy/rules.toml --provider dregs examples/dregs-identity-scored.json"
    )]
    Rules {
        /// What to do with the rules.
        #[command(subcommand)]
        command: rules::RulesCommand,
    },
    /// Print the worker's decision records for a subject or an event, newest first.
    #[command(
        after_help = "Example: hookwarden decisions --rules /etc/hookwarden/rules.toml --subject dregs/usr_48213 --limit 5"
    )]
    Decisions(decisions::DecisionsArgs),
    /// List or replay the dead-letter queue named in the worker's rules file.
    #[command(
        after_help = "Example: hookwarden dead-letters --rules /etc/hookwarden/rules.toml list --limit 20"
    )]
    DeadLetters(dead_letters::DeadLettersArgs),
    /// Export the worker's state (subjects, done-marks, decisions) as JSON lines, or import
    /// an export into another store: moving from the embedded file to PostgreSQL.
    #[command(
        after_help = "Example: hookwarden state --rules old-rules.toml export --out state.jsonl && hookwarden state --rules pg-rules.toml import --in state.jsonl"
    )]
    State(state::StateArgs),
}

/// A provider from a listener config, or a scheme and secret given directly.
#[derive(Args, Clone)]
pub struct SignerArgs {
    /// Listener config to take the provider's scheme and first secret from.
    #[arg(long, requires = "provider")]
    pub config: Option<PathBuf>,
    /// Provider name in --config.
    #[arg(long)]
    pub provider: Option<String>,
    /// Scheme when signing without --config: hmac-sha256, github, stripe, standard-webhooks.
    #[arg(long, conflicts_with = "config", requires = "secret")]
    pub scheme: Option<String>,
    /// Secret when signing without --config (literal, env:NAME or file:PATH).
    #[arg(long, conflicts_with = "config")]
    pub secret: Option<String>,
    /// Signature header for --scheme hmac-sha256.
    #[arg(long, conflicts_with = "config")]
    pub header: Option<String>,
    /// Signature prefix for --scheme hmac-sha256, e.g. `sha256=`.
    #[arg(long, conflicts_with = "config")]
    pub prefix: Option<String>,
    /// Encoding for --scheme hmac-sha256: hex or base64.
    #[arg(long, conflicts_with = "config")]
    pub encoding: Option<String>,
    /// Extra header to send, `NAME: VALUE` (repeatable), e.g. `X-GitHub-Event: push`.
    /// A provider whose event id is a header gets a fresh id there unless given here.
    #[arg(long = "add-header", value_name = "NAME: VALUE")]
    pub add_headers: Vec<String>,
}

/// Exit codes of `hookwarden`: 0 success, 1 the operation failed (non-2xx answer, no
/// connection, invalid config), 2 usage error (clap), 64 bad input (unreadable file,
/// unknown provider, invalid flags).
pub mod exit {
    /// The operation failed.
    pub const FAILED: u8 = 1;
    /// Bad input.
    pub const USAGE: u8 = 64;
}

/// `hookwarden bench`: the load to send and how to report it.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Connections, each sending one request at a time.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Body template file; `{id}` in it is replaced by a unique id per request
    /// (default: a built-in 500-byte event).
    #[arg(long)]
    pub body: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Open loop: this many requests per second in all, spread over the connections; a
    /// request's latency counts from when it was due (default: closed loop, each connection
    /// sends when its last answer came).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Run an action sink at this address and report event-to-action latency through the
    /// worker; point a rule's http action at it with the event's id in its URL, headers or
    /// body (e.g. url = "http://127.0.0.1:18089/{{ event.id }}").
    #[arg(long, value_name = "ADDR")]
    pub end_to_end: Option<std::net::SocketAddr>,
    /// With --end-to-end: how long to wait for the last actions after sending stops.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub end_to_end_wait: std::time::Duration,
}
