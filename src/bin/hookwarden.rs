//! `hookwarden`: the operator's command. Parses arguments and dispatches; the work is in
//! `hookwarden::cli`.
#![deny(clippy::unwrap_used, clippy::disallowed_methods)]

use std::process::ExitCode;

use clap::Parser;
use hookwarden::cli::{
    Cli, Command, backtest, dead_letters, decisions, exit, http_client, out, rules, sign, state,
    stats, trips,
};
use hookwarden::config;
use hookwarden::listener::config::ListenerConfig;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = config::process_env();
    match cli.command {
        Command::Check {
            config: path,
            rules,
        } => {
            let mut ok = true;
            let listener = config::read_file(&path)
                .and_then(|text| ListenerConfig::parse(&path.display().to_string(), &text, &env));
            match listener {
                Ok(config) => {
                    out::print(&config.summary());
                    out::println(&format!("{}: ok", path.display()));
                }
                Err(err) => {
                    eprintln!("{err}");
                    ok = false;
                }
            }
            if let Some(rules) = rules {
                let worker = config::read_file(&rules).and_then(|text| {
                    hookwarden::worker::config::WorkerConfig::parse(
                        &rules.display().to_string(),
                        &text,
                        &env,
                    )
                });
                match worker {
                    Ok(config) => {
                        out::print(&config.summary());
                        out::println(&format!("{}: ok", rules.display()));
                    }
                    Err(err) => {
                        eprintln!("{err}");
                        ok = false;
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(exit::FAILED)
            }
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "hookwarden", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Sign { signer, event } => {
            let run = || -> anyhow::Result<()> {
                let signer = sign::Signer::from_args(&signer, &env)?;
                let body = sign::read_event(&event)?;
                for (name, value) in signer.sign(&body)? {
                    out::println(&format!("{name}: {}", value.to_str().unwrap_or_default()));
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
                        out::println(&format!(
                            "{} {}",
                            answer.status.as_u16(),
                            answer.body.trim_end()
                        ));
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
        Command::Bench { signer, url, load } => report(bench(&signer, url, &load, &env)),
        Command::Rules {
            command: rules::RulesCommand::Test(args),
        } => rules_test(&args, &env),
        Command::Rules {
            command: rules::RulesCommand::Backtest(args),
        } => backtest(&args, &env),
        Command::Rules {
            command: rules::RulesCommand::Stats(args),
        } => {
            let config = match rules::load_rules(&args.rules, &env) {
                Ok(config) => config,
                Err(err) => return usage(&err),
            };
            match stats::stats(&config, &args) {
                Ok(stats) if args.json => match serde_json::to_string_pretty(&stats) {
                    Ok(text) => {
                        out::println(&text);
                        ExitCode::SUCCESS
                    }
                    Err(err) => usage(&err.into()),
                },
                Ok(stats) => {
                    out::print(&stats.to_string());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(exit::FAILED)
                }
            }
        }
        Command::Rules {
            command: rules::RulesCommand::Trips(args),
        } => {
            let config = match rules::load_rules(&args.rules, &env) {
                Ok(config) => config,
                Err(err) => return usage(&err),
            };
            match trips::trips(&config) {
                Ok(list) if args.json => match serde_json::to_string_pretty(&list) {
                    Ok(text) => {
                        out::println(&text);
                        ExitCode::SUCCESS
                    }
                    Err(err) => usage(&err.into()),
                },
                Ok(list) => {
                    out::print(&trips::describe(&list));
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(exit::FAILED)
                }
            }
        }
        Command::Rules {
            command: rules::RulesCommand::Reset(args),
        } => {
            let config = match rules::load_rules(&args.rules, &env) {
                Ok(config) => config,
                Err(err) => return usage(&err),
            };
            if !config.rules.rules.iter().any(|r| r.name == args.rule) {
                let names: Vec<&str> = config.rules.rules.iter().map(|r| r.name.as_str()).collect();
                return usage(&anyhow::anyhow!(
                    "no rule named {:?} in {}; its rules: {}",
                    args.rule,
                    args.rules.display(),
                    names.join(", ")
                ));
            }
            match trips::reset(&config, &args.rule) {
                Ok(line) => {
                    out::println(&line);
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(exit::FAILED)
                }
            }
        }
        Command::Decisions(args) => decisions(&args, &env),
        Command::State(args) => state(&args, &env),
        Command::DeadLetters(args) => {
            let config = match rules::load_rules(&args.rules, &env) {
                Ok(config) => config,
                Err(err) => return usage(&err),
            };
            // Past the rules file, what fails is the broker or the queue: the operation.
            match dead_letters::run(&config, &args.command) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(exit::FAILED),
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(exit::FAILED)
                }
            }
        }
    }
}

/// `state export|import`: 0 done (the counts on standard error), 1 the store or the file
/// failed, 64 an unreadable rules file.
fn state(args: &state::StateArgs, env: &std::collections::HashMap<String, String>) -> ExitCode {
    let config = match rules::load_rules(&args.rules, env) {
        Ok(config) => config,
        Err(err) => return usage(&err),
    };
    let moved = match &args.command {
        state::StateCommand::Export { out } => match out {
            Some(path) => std::fs::File::create(path)
                .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", path.display()))
                .and_then(|mut file| state::export(&config, &mut file)),
            None => state::export(&config, &mut std::io::stdout().lock()),
        }
        .map(|counts| format!("exported {counts}")),
        state::StateCommand::Import { input } => match input {
            Some(path) => std::fs::File::open(path)
                .map_err(|err| anyhow::anyhow!("cannot open {}: {err}", path.display()))
                .and_then(|mut file| state::import(&config, &mut file)),
            None => state::import(&config, &mut std::io::stdin().lock()),
        }
        .map(|counts| format!("imported {counts} into {}", config.state.describe())),
    };
    match moved {
        Ok(line) => {
            eprintln!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit::FAILED)
        }
    }
}

fn backtest(
    args: &backtest::BacktestArgs,
    env: &std::collections::HashMap<String, String>,
) -> ExitCode {
    let candidate = match rules::load_rules(&args.rules, env) {
        Ok(config) => config,
        Err(err) => return usage(&err),
    };
    let baseline = match args.baseline.as_deref().map(|p| rules::load_rules(p, env)) {
        Some(Err(err)) => return usage(&err),
        Some(Ok(config)) => Some(config),
        None => None,
    };
    match backtest::run(args, &candidate, baseline.as_ref()) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => out::println(&text),
                    Err(err) => return usage(&err.into()),
                }
            } else {
                out::print(&report.to_string());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit::FAILED)
        }
    }
}

fn usage(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    ExitCode::from(exit::USAGE)
}

/// `rules test`: 0 it ran, 1 a condition or template failed, 64 bad input.
fn rules_test(args: &rules::TestArgs, env: &std::collections::HashMap<String, String>) -> ExitCode {
    let report = match rules::test(args, env) {
        Ok(report) => report,
        Err(err) => return usage(&err),
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => out::println(&text),
            Err(err) => return usage(&err.into()),
        }
    } else {
        out::print(&format!("{report}"));
    }
    if report.errored() {
        ExitCode::from(exit::FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// `decisions`: 0 read (also when there are none), 1 the state file cannot be read, 64 bad
/// input.
fn decisions(
    args: &decisions::DecisionsArgs,
    env: &std::collections::HashMap<String, String>,
) -> ExitCode {
    if let Some(decisions::DecisionsCommand::Label(label)) = &args.command {
        let config = match rules::load_rules(&label.rules, env) {
            Ok(config) => config,
            Err(err) => return usage(&err),
        };
        return match stats::label(&config, label) {
            Ok(line) => {
                out::println(&line);
                ExitCode::SUCCESS
            }
            Err(stats::LabelError::Input(reason)) => usage(&anyhow::anyhow!(reason)),
            Err(stats::LabelError::Store(err)) => {
                eprintln!("error: {err:#}");
                ExitCode::from(exit::FAILED)
            }
        };
    }
    let (config, query) =
        match rules::load_rules(&args.rules, env).and_then(|c| Ok((c, args.query()?))) {
            Ok(pair) => pair,
            Err(err) => return usage(&err),
        };
    match decisions::read(&config, &query, args.limit) {
        Ok(records) => {
            if args.json {
                out::println(&format!("{:#}", decisions::to_json(&records)));
            } else {
                out::print(&decisions::to_text(&records));
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit::FAILED)
        }
    }
}

fn bench(
    signer: &hookwarden::cli::SignerArgs,
    url: Option<String>,
    load: &hookwarden::cli::LoadArgs,
    env: &std::collections::HashMap<String, String>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let signer = sign::Signer::from_args(signer, env)?;
    let url = url
        .or(signer.default_url.clone())
        .ok_or_else(|| anyhow::anyhow!("give --url (or --config to load its listener)"))?;
    let template = load
        .body
        .as_ref()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display())))
        .transpose()?;
    anyhow::ensure!(load.concurrency > 0, "--concurrency must be at least 1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let options = hookwarden::cli::bench::Options {
        url,
        connections: load.concurrency,
        duration: load.duration,
        rate: load.rate,
        template,
        end_to_end: load.end_to_end,
        end_to_end_wait: load.end_to_end_wait,
    };
    let report = runtime.block_on(hookwarden::cli::bench::run(
        std::sync::Arc::new(signer),
        options,
    ))?;
    if load.json {
        out::println(&serde_json::to_string_pretty(&report)?);
    } else {
        out::println(&format!("{report}"));
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
