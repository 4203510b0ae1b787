//! `hookwarden`: the operator's command. Parses arguments and dispatches; the work is in
//! `hookwarden::cli`.

use std::process::ExitCode;

use clap::Parser;
use hookwarden::cli::{Cli, Command, exit, http_client, sign};
use hookwarden::config::{self, listener::ListenerConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = config::process_env();
    match cli.command {
        Command::Check { config: path } => {
            let result = config::read_file(&path)
                .and_then(|text| ListenerConfig::parse(&path.display().to_string(), &text, &env));
            match result {
                Ok(config) => {
                    print!("{}", config.summary());
                    println!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("{err}");
                    ExitCode::from(exit::FAILED)
                }
            }
        }
        Command::Sign { signer, event } => {
            let run = || -> anyhow::Result<()> {
                let signer = sign::Signer::from_args(&signer, &env)?;
                let body = sign::read_event(&event)?;
                for (name, value) in signer.sign(&body)? {
                    println!("{name}: {}", value.to_str().unwrap_or_default());
                }
                Ok(())
            };
            report(run())
        }
        Command::Send { signer, url, event } => {
            let run = || -> anyhow::Result<bool> {
                let signer = sign::Signer::from_args(&signer, &env)?;
                let body = sign::read_event(&event)?;
                let url = url.or(signer.default_url.clone()).ok_or_else(|| {
                    anyhow::anyhow!("give --url (or --config to post to its listener)")
                })?;
                let headers = signer.sign(&body)?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                match runtime.block_on(http_client::post(&url, &headers, body)) {
                    Ok(answer) => {
                        println!("{} {}", answer.status.as_u16(), answer.body.trim_end());
                        Ok(answer.status.is_success())
                    }
                    // Reaching the listener failed: the operation failed, the input was fine.
                    Err(err) => {
                        eprintln!("error: {err:#}");
                        Ok(false)
                    }
                }
            };
            match run() {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(exit::FAILED),
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(exit::USAGE)
                }
            }
        }
        Command::Bench {
            signer,
            url,
            concurrency,
            duration,
            body,
            json,
        } => report(bench(&signer, url, concurrency, duration, body, json, &env)),
    }
}

fn bench(
    signer: &hookwarden::cli::SignerArgs,
    url: Option<String>,
    concurrency: usize,
    duration: std::time::Duration,
    body: Option<std::path::PathBuf>,
    json: bool,
    env: &std::collections::HashMap<String, String>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let signer = sign::Signer::from_args(signer, env)?;
    let url = url
        .or(signer.default_url.clone())
        .ok_or_else(|| anyhow::anyhow!("give --url (or --config to load its listener)"))?;
    let template = body
        .map(|p| {
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
        })
        .transpose()?;
    anyhow::ensure!(concurrency > 0, "--concurrency must be at least 1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(hookwarden::cli::bench::run(
        std::sync::Arc::new(signer),
        &url,
        concurrency,
        duration,
        template,
    ))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit::USAGE)
        }
    }
}
