//! The binaries as an operator runs them: `--check`, `hookwarden sign`, `hookwarden send`
//! with its exit codes, and `--version`/`--help` of each binary.

use std::process::Command;

use crate::harness::{Broker, Harness, event};

fn listener_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hookwarden-listener"))
}
fn cli_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hookwarden"))
}

#[test]
fn check_passes_on_the_shipped_config_and_lists_every_problem_otherwise() {
    let out = listener_bin()
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/listener.toml"),
            "--check",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let dir = crate::harness::tempdir::Dir::new();
    let bad = dir.path.join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"nowhere\"\n[[providers]]\nname = \"x\"\nscheme = \"rot13\"\nsecrets = [\"s\"]\n",
    )
    .unwrap();
    let out = listener_bin()
        .args(["--config", bad.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2: server.listen"), "{err}");
    assert!(
        err.contains("bad.toml:5: providers[0].scheme: unknown scheme \"rot13\""),
        "{err}"
    );
    // Without --check a bad config is a usage error (64), before anything is bound.
    let out = listener_bin()
        .args(["--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn sign_prints_the_headers_a_provider_would_send() {
    let dir = crate::harness::tempdir::Dir::new();
    let file = dir.path.join("e.json");
    std::fs::write(&file, "Hello, World!").unwrap();
    // Not JSON: refused.
    let out = cli_bin()
        .args([
            "sign",
            "--scheme",
            "github",
            "--secret",
            "It's a Secret to Everybody",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    std::fs::write(&file, r#"{"id":"e1"}"#).unwrap();
    let out = cli_bin()
        .args([
            "sign",
            "--scheme",
            "stripe",
            "--secret",
            "whsec_x",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("stripe-signature: t="), "{text}");
    assert!(text.contains(",v1="), "{text}");
}

#[tokio::test]
async fn send_posts_signed_events_and_fails_on_refusal() {
    let l = Harness::new().start().await;
    let dir = crate::harness::tempdir::Dir::new();
    let file = dir.path.join("e.json");
    std::fs::write(&file, event("evt_cli")).unwrap();
    let url = format!("{}/hooks/dregs", l.base);
    let run = |secret: &'static str| {
        let (url, file) = (url.clone(), file.clone());
        tokio::task::spawn_blocking(move || {
            cli_bin()
                .args([
                    "send",
                    "--scheme",
                    "hmac-sha256",
                    "--secret",
                    secret,
                    "--header",
                    "X-Dregs-Signature",
                    "--prefix",
                    "sha256=",
                    "--url",
                    &url,
                    file.to_str().unwrap(),
                ])
                .output()
                .unwrap()
        })
    };
    let out = run("test-secret").await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("200 "));
    let out = run("wrong-secret").await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("401 "));
    let broker = Broker::connect().await;
    assert_eq!(broker.drain_ids(&l.names.queue).await, vec!["evt_cli"]);
}

#[tokio::test]
async fn send_fills_header_ids_and_takes_extra_headers_for_github() {
    let gh = "name = \"gh\"\nscheme = \"github\"\nsecrets = [\"gh-secret\"]\n";
    let l = Harness::new().provider(gh).start().await;
    let dir = crate::harness::tempdir::Dir::new();
    let file = dir.path.join("e.json");
    std::fs::write(&file, r#"{"zen":"Design for failure."}"#).unwrap();
    let url = format!("{}/hooks/gh", l.base);
    let run = move |extra: Vec<&'static str>| {
        let (url, file) = (url.clone(), file.clone());
        tokio::task::spawn_blocking(move || {
            let mut args = vec![
                "send",
                "--scheme",
                "github",
                "--secret",
                "gh-secret",
                "--provider",
                "gh",
                "--url",
                &url,
            ];
            for e in &extra {
                args.push("--add-header");
                args.push(e);
            }
            let file = file.to_str().unwrap().to_owned();
            cli_bin().args(&args).arg(file).output().unwrap()
        })
    };
    // The event type is a header GitHub sets; without it the CLI says which one to add.
    let out = run(vec![]).await.unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("x-github-event"));
    let out = run(vec!["X-GitHub-Event: push"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let broker = Broker::connect().await;
    let msg = broker.get(&l.names.queue).await.expect("published");
    assert_eq!(msg.delivery.routing_key.as_str(), "gh.push");
}

#[test]
fn send_to_a_closed_port_fails_with_1() {
    let dir = crate::harness::tempdir::Dir::new();
    let file = dir.path.join("e.json");
    std::fs::write(&file, event("evt_nowhere")).unwrap();
    let url = format!("http://{}/hooks/dregs", crate::harness::free_addr());
    let out = cli_bin()
        .args([
            "send",
            "--scheme",
            "stripe",
            "--secret",
            "whsec_x",
            "--url",
            &url,
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn the_worker_checks_the_shipped_rules_and_check_reports_both_files_at_once() {
    let out = Command::new(env!("CARGO_BIN_EXE_hookwarden-worker"))
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rules.toml"),
            "--check",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = crate::harness::tempdir::Dir::new();
    let bad_listener = dir.path.join("l.toml");
    std::fs::write(&bad_listener, "[server]\nmax_body = \"lots\"\n[[providers]]\nname = \"g\"\nscheme = \"github\"\nsecrets = [\"s\"]\n").unwrap();
    let bad_rules = dir.path.join("r.toml");
    std::fs::write(
        &bad_rules,
        "[[rules]]\nname = \"x\"\nevents = [\"p:t\"]\nwhen = \"scor > 1\"\nactions = []\n",
    )
    .unwrap();
    let out = cli_bin()
        .args([
            "check",
            "--config",
            bad_listener.to_str().unwrap(),
            "--rules",
            bad_rules.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("l.toml:2: server.max_body"), "{err}");
    assert!(
        err.contains("r.toml:4: rules[0].when: undeclared reference 'scor'"),
        "{err}"
    );
}

/// The new user's mix-ups, as the binaries report them: each daemon given the other's file,
/// `hookwarden check` with the two swapped, and a misspelt score that only evaluation found.
#[test]
fn swapped_files_and_misspelt_scores_are_named_by_every_checker() {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rules.toml");
    let listener = concat!(env!("CARGO_MANIFEST_DIR"), "/listener.toml");
    let worker_file = format!(
        "{rules}: this looks like a worker rules file, not a listener config (it has [state], \
         [archive], [ui], [[subjects]], [[rules]], [enrich], [actions]); the worker takes it: hookwarden-worker --config {rules}\n"
    );
    let listener_file = format!(
        "{listener}: this looks like a listener config, not a worker rules file (it has \
         [dedupe], [spool], [[providers]]); the listener takes it: hookwarden-listener \
         --config {listener}\n"
    );
    let out = listener_bin()
        .args(["--config", rules, "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), worker_file);
    let out = Command::new(env!("CARGO_BIN_EXE_hookwarden-worker"))
        .args(["--config", listener, "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), listener_file);
    let out = cli_bin()
        .args(["check", "--config", rules, "--rules", listener])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("{worker_file}{listener_file}")
    );

    let dir = crate::harness::tempdir::Dir::new();
    let typo = dir.path.join("rules.toml");
    let text = std::fs::read_to_string(rules)
        .unwrap()
        .replace("score.uniqueness < 70.0", "score.uniquness < 70.0");
    std::fs::write(&typo, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hookwarden-worker"))
        .args(["--config", typo.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "rules[2].when: no score \"uniquness\" for dregs:identity.scored; declared: \
             humanity, uniqueness, authenticity"
        ),
        "{err}"
    );
}

#[test]
fn completions_are_generated() {
    let out = cli_bin().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("_hookwarden()"), "{script}");
    assert!(script.contains("dead-letters"));
}

#[test]
fn each_binary_names_itself_in_version_and_help() {
    let version = env!("CARGO_PKG_VERSION");
    for (name, bin) in [
        ("hookwarden", env!("CARGO_BIN_EXE_hookwarden")),
        (
            "hookwarden-listener",
            env!("CARGO_BIN_EXE_hookwarden-listener"),
        ),
        ("hookwarden-worker", env!("CARGO_BIN_EXE_hookwarden-worker")),
    ] {
        let out = Command::new(bin).arg("--version").output().unwrap();
        assert!(out.status.success(), "{name} --version failed");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{name} {version}\n")
        );
        let out = Command::new(bin).arg("--help").output().unwrap();
        assert!(out.status.success(), "{name} --help failed");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains(&format!("Usage: {name} ")),
            "{name} --help:\n{help}"
        );
    }
}
