//! The operator's worker commands as run from a shell, against the real broker, a worker
//! running in this process and a real HTTP target: `rules test` (dry run, checked against
//! what the worker sends for the same event), `decisions`,
//! `dead-letters list` (nothing lost, order kept) and `dead-letters replay` (the worker acts
//! on the replayed event, the dead letter goes).

use std::process::Output;

use hookwarden::worker::state::DecisionRecord;

use crate::harness::{BROKER_TIMEOUT, explain, run_cli as run, tempdir, wait_for};
use crate::sink::Sink;
use crate::worker_harness::{TestWorker, WorkerHarness};

const RULES: &str = r#"
[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0"
actions = ["quarantine"]

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine"
body = '{"humanity": {{ score.humanity }}}'
retries = 0
timeout = "2s"
"#;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Message ids of the dead letters, as `list --json` gives them, in queue order.
async fn listed(rules: &str, limit: &str) -> Vec<String> {
    let out = run(&[
        "dead-letters",
        "--rules",
        rules,
        "list",
        "--json",
        "--limit",
        limit,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let letters: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    letters
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn dead_letter(w: &TestWorker, id: &str, subject: &str, minute: u32) {
    let at = format!("2026-11-21T10:{minute:02}:00Z");
    w.publish_dregs(id, subject, &at, 22).await;
    // The worker commits the decision after the broker confirmed the dead letter.
    let d = w.decision("dregs", id).await;
    assert_eq!(d.outcome, "dead_lettered", "{}", d.record);
}

#[tokio::test]
async fn dead_letters_are_listed_without_loss_and_replayed_into_the_worker() {
    let sink = Sink::start().await;
    sink.fail_always(true);
    let w = WorkerHarness::for_dregs(RULES).start(&sink.url()).await;
    let dir = tempdir::Dir::new();
    let file = dir.path.join("rules.toml");
    std::fs::write(&file, &w.text).unwrap();
    let rules = file.to_str().unwrap();

    for (i, (id, subject)) in [("e1", "u1"), ("e2", "u2"), ("e3", "u3")]
        .into_iter()
        .enumerate()
    {
        dead_letter(&w, id, subject, u32::try_from(i).unwrap()).await;
    }

    // The text listing names the reason, the rule, the routing key and the provider.
    let out = run(&["dead-letters", "--rules", rules, "list"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let text = stdout(&out);
    for want in [
        "e1  provider dregs  routing key dregs.identity.scored  age ",
        "rule quarantine  action quarantine  error: HTTP 500",
        "3 of 3 dead letter(s)",
        "all left in the queue",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    // Peeking loses nothing and keeps the order, also when only some are read.
    assert_eq!(listed(rules, "2").await, ["e1", "e2"]);
    assert_eq!(listed(rules, "100").await, ["e1", "e2", "e3"]);
    assert_eq!(listed(rules, "100").await, ["e1", "e2", "e3"]);

    // The decision records show the failure.
    let out = run(&["decisions", "--rules", rules, "--event", "dregs/e1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let text = stdout(&out);
    assert!(text.contains("dregs/e1  dead_lettered"), "{text}");
    assert!(text.contains("subject dregs/u1"), "{text}");
    assert!(
        text.contains("rule quarantine (enforce): matched"),
        "{text}"
    );
    assert!(
        text.contains("action quarantine: failed, 1 attempt(s)") && text.contains(": HTTP 500"),
        "{text}"
    );

    // Unknown ids and dry runs change nothing.
    let out = run(&["dead-letters", "--rules", rules, "replay", "--id", "nope"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(stdout(&out).contains("no dead letter with id \"nope\""));
    let out = run(&[
        "dead-letters",
        "--rules",
        rules,
        "replay",
        "--all",
        "--dry-run",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        stdout(&out).contains("would replay 3 of 3"),
        "{}",
        explain(&out)
    );
    assert_eq!(listed(rules, "100").await, ["e1", "e2", "e3"]);
    assert!(sink.received().is_empty());

    // The target recovers: replaying one event makes the worker act on it, and only it.
    sink.fail_always(false);
    let out = run(&["dead-letters", "--rules", rules, "replay", "--id", "e2"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        stdout(&out).contains("replayed e2  provider dregs"),
        "{}",
        explain(&out)
    );
    let d = eventually_acted(&w, "e2").await;
    assert_eq!(d.subject_key.as_deref(), Some("dregs/u2"));
    assert_eq!(listed(rules, "100").await, ["e1", "e3"]);

    // The rest, then nothing is left.
    let out = run(&["dead-letters", "--rules", rules, "replay", "--all"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        stdout(&out).contains("replayed 2 of 2"),
        "{}",
        explain(&out)
    );
    eventually_acted(&w, "e1").await;
    eventually_acted(&w, "e3").await;
    let mut paths: Vec<String> = sink.received().into_iter().map(|r| r.path).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/accounts/u1/quarantine",
            "/accounts/u2/quarantine",
            "/accounts/u3/quarantine"
        ]
    );
    let out = run(&["dead-letters", "--rules", rules, "list"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        stdout(&out).starts_with("no dead letters in "),
        "{}",
        explain(&out)
    );
    assert!(w.broker.get(&w.names.dead_letter_queue).await.is_none());

    // The records now say what the replay did; by subject, with --provider, and as JSON.
    let out = run(&[
        "decisions",
        "--rules",
        rules,
        "--provider",
        "dregs",
        "--subject",
        "u1",
        "--json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(records[0]["event"], "dregs/e1");
    assert_eq!(records[0]["outcome"], "acted");
    assert_eq!(
        records[0]["record"]["rules"][0]["actions"][0]["outcome"],
        "ok"
    );
    let out = run(&["decisions", "--rules", rules, "--subject", "dregs/nobody"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(stdout(&out), "no decisions\n");
    // No provider part: a usage error.
    let out = run(&["decisions", "--rules", rules, "--event", "e1"]).await;
    assert_eq!(out.status.code(), Some(64), "{}", explain(&out));
}

/// Waits until the worker's record of `dregs/{id}` says it acted (a replay replaces the
/// dead-lettered record).
async fn eventually_acted(w: &TestWorker, id: &str) -> DecisionRecord {
    let key = format!("dregs/{id}");
    wait_for(&format!("{key} acted"), BROKER_TIMEOUT, || {
        let key = key.clone();
        async move {
            match w.decisions(Some(&key), None, 1).await.into_iter().next() {
                Some(d) if d.outcome == "acted" => Ok(d),
                Some(d) => Err(format!("outcome {}", d.outcome)),
                None => Err("no record".to_owned()),
            }
        }
    })
    .await
}

#[tokio::test]
async fn dead_letters_need_a_reachable_broker_and_a_valid_rules_file() {
    let dir = tempdir::Dir::new();
    let file = dir.path.join("rules.toml");
    std::fs::write(&file, "[amqp]\nurl = \"amqp://127.0.0.1:1/%2f\"\n").unwrap();
    let out = run(&["dead-letters", "--rules", file.to_str().unwrap(), "list"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect to amqp://127.0.0.1:1"),
        "{}",
        explain(&out)
    );
    std::fs::write(&file, "[amqp]\nnope = 1\n").unwrap();
    let out = run(&["dead-letters", "list", "--rules", file.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(64), "{}", explain(&out));
}

const DEPLOY_RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rules.toml");
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/dregs-identity-scored.json"
);

#[tokio::test]
async fn rules_test_shows_what_the_shipped_rules_decide_and_would_send() {
    let answer = format!("account={}", example(ACCOUNT_ANSWER));
    let out = rules_test(&["--provider", "dregs", "--enrich", &answer, EXAMPLE]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let text = stdout(&out);
    let key = hookwarden::worker::action::idempotency_key(
        "dregs/evt_01JD8Q6W3M4X9T2R7K5N0P1Q8S",
        "quarantine-low-humanity",
        "quarantine",
    );
    for want in [
        "subject usr_48213",
        "decision: acted (dry run, nothing sent)",
        "rule quarantine-low-humanity (enforce): matched",
        "values: score.humanity = 22, previous.score.humanity = absent",
        "POST http://127.0.0.1:8089/accounts/usr_48213/quarantine",
        &format!("idempotency-key: {key}"),
        r#"{"rule": "quarantine-low-humanity", "humanity": 22, "event_id": "evt_01JD8Q6W3M4X9T2R7K5N0P1Q8S"}"#,
        "rule review-sharp-drop (enforce): not matched",
        "rule throttle-suspicious (shadow): matched",
        r#"argv ["/bin/echo", "throttle", "usr_48213"]"#,
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }

    // Already below 30 before: no crossing, so no quarantine; the drop rule does not fire
    // either (22 is above 20).
    let dir = tempdir::Dir::new();
    let previous = dir.path.join("previous.json");
    std::fs::write(
        &previous,
        r#"{"score": {"humanity": 20}, "at": "2026-11-21T14:00:00Z", "version": 1412}"#,
    )
    .unwrap();
    let out = rules_test(&[
        "--provider",
        "dregs",
        "--previous",
        previous.to_str().unwrap(),
        "--enrich",
        &answer,
        "--json",
        EXAMPLE,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let quarantine = report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "quarantine-low-humanity")
        .unwrap();
    assert_eq!(quarantine["result"], "not_matched", "{report:#}");
    assert_eq!(quarantine["values"]["previous.score.humanity"], 20.0);
    assert_eq!(quarantine["actions"], serde_json::json!([]));
    assert_eq!(report["outcome"], "matched", "only the shadow rule fires");

    // A version newer than the event's: stale, nothing evaluated.
    std::fs::write(&previous, r#"{"version": "2027-01-01T00:00:00Z"}"#).unwrap();
    let out = rules_test(&[
        "--provider",
        "dregs",
        "--previous",
        previous.to_str().unwrap(),
        EXAMPLE,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        stdout(&out).contains("rule quarantine-low-humanity (enforce): stale"),
        "{}",
        explain(&out)
    );
}

#[tokio::test]
async fn rules_test_exit_status_says_errors_and_bad_input_apart() {
    let dir = tempdir::Dir::new();
    let rules = dir.path.join("rules.toml");
    std::fs::write(
        &rules,
        r#"
[[subjects]]
provider = "dregs"
types = ["identity.*"]
subject = "/data/identity_id"
scores = { humanity = "/data/scores/humanity" }

[[rules]]
name = "broken"
events = ["dregs:*"]
when = "event.data.missing.deeper > 1"
actions = ["note"]

[actions.note]
kind = "log"
"#,
    )
    .unwrap();
    let rules = rules.to_str().unwrap();
    let out = run(&[
        "rules",
        "test",
        "--rules",
        rules,
        "--provider",
        "dregs",
        EXAMPLE,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(
        stdout(&out).contains("rule broken (enforce): error: "),
        "{}",
        explain(&out)
    );
    // No type in the event and no --type.
    let event = dir.path.join("e.json");
    std::fs::write(&event, r#"{"data": {"identity_id": "u1"}}"#).unwrap();
    let event = event.to_str().unwrap();
    let out = run(&[
        "rules",
        "test",
        "--rules",
        rules,
        "--provider",
        "dregs",
        event,
    ])
    .await;
    assert_eq!(out.status.code(), Some(64), "{}", explain(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --type"));
    // With --type it runs; an unknown provider is the worker's no_subject, not an error.
    let out = run(&[
        "rules",
        "test",
        "--rules",
        rules,
        "--provider",
        "other",
        "--type",
        "identity.scored",
        event,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(stdout(&out).contains("decision: no_subject"));
    // A --previous with a misspelt key is refused rather than ignored.
    let previous = dir.path.join("p.json");
    std::fs::write(&previous, r#"{"scores": {"humanity": 20}}"#).unwrap();
    let out = run(&[
        "rules",
        "test",
        "--rules",
        rules,
        "--provider",
        "dregs",
        "--previous",
        previous.to_str().unwrap(),
        EXAMPLE,
    ])
    .await;
    assert_eq!(out.status.code(), Some(64), "{}", explain(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `scores`"));
}

const LISTENER_TOML: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/listener.toml");

/// Each example event and the provider that sends it (the first three as `deploy/run-local`
/// sends them; the last is the README's "Tuning rules" borderline score).
const EXAMPLES: &[(&str, &str)] = &[
    ("dregs-identity-scored.json", "dregs"),
    ("reputation-score-updated.json", "reputation"),
    ("reward-tier-changed.json", "rewards"),
    ("dregs-identity-scored-borderline.json", "dregs"),
];

/// `hookwarden rules test --rules deploy/rules.toml ARGS…`.
async fn rules_test(args: &[&str]) -> std::process::Output {
    let mut all = vec!["rules", "test", "--rules", DEPLOY_RULES];
    all.extend_from_slice(args);
    run(&all).await
}

/// What deploy/rules.toml's account lookup answers for the example's subject.
const ACCOUNT_ANSWER: &str = "enrich/account-usr_48213.json";

#[tokio::test]
async fn rules_test_shows_the_lookups_an_event_needs_and_takes_their_answers_from_files() {
    let event = example("dregs-identity-scored.json");
    // Without an answer: the request the worker would send, and the rule reading it errs.
    let out = rules_test(&["--config", LISTENER_TOML, "--provider", "dregs", &event]).await;
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "lookup account: not called (give --enrich account=FILE.json for an answer)\n    \
             GET http://127.0.0.1:8089/accounts/usr_48213\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "rule quarantine-low-humanity (enforce): error: lookup \"account\" was not run"
        ),
        "{text}"
    );
    // With one: the condition reads it and the alert's template renders it.
    let answer = format!("account={}", example(ACCOUNT_ANSWER));
    let args = [
        "--config",
        LISTENER_TOML,
        "--provider",
        "dregs",
        "--enrich",
        &answer,
    ];
    let out = rules_test(&[&args[..], &[event.as_str()]].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let text = stdout(&out);
    assert!(text.contains("decision: acted"), "{text}");
    assert!(text.contains("account 12 days old"), "{text}");
    // An old account: the same event does not quarantine.
    let dir = crate::harness::tempdir::Dir::new();
    let old = dir.path.join("old.json");
    std::fs::write(&old, r#"{"age_days": 400}"#).unwrap();
    let answer = format!("account={}", old.display());
    let args = [
        "--config",
        LISTENER_TOML,
        "--provider",
        "dregs",
        "--enrich",
        &answer,
        "--json",
    ];
    let out = rules_test(&[&args[..], &[event.as_str()]].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rules"][0]["rule"], "quarantine-low-humanity");
    assert_eq!(report["rules"][0]["result"], "not_matched");
    assert_eq!(
        report["lookups"][0]["answer_from"],
        old.display().to_string()
    );
    // A lookup the rules file does not define, and an answer that is not JSON.
    let out = rules_test(&["--provider", "dregs", "--enrich", "acount=x.json", &event]).await;
    assert_eq!(out.status.code(), Some(64), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "--enrich acount=x.json: the rules file has no [enrich.acount]; defined: account"
        ),
        "{}",
        explain(&out)
    );
    std::fs::write(&old, "age: 400").unwrap();
    let out = rules_test(&["--provider", "dregs", "--enrich", &answer, &event]).await;
    assert_eq!(out.status.code(), Some(64), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not JSON"),
        "{}",
        explain(&out)
    );
}

fn example(file: &str) -> String {
    format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn rules_test_runs_every_example_with_the_shipped_files() {
    let mut shipped: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            // examples/enrich holds lookup answers, not events.
            .filter(|name| name.ends_with(".json"))
            .collect();
    shipped.sort();
    let mut known: Vec<&str> = EXAMPLES.iter().map(|(f, _)| *f).collect();
    known.sort();
    assert_eq!(shipped, known, "name the provider of every example here");

    // The listener config says where each provider puts its id and type.
    let mut ids = Vec::new();
    for (file, provider) in EXAMPLES {
        let out = rules_test(&[
            "--config",
            LISTENER_TOML,
            "--provider",
            provider,
            "--enrich",
            &format!("account={}", example(ACCOUNT_ANSWER)),
            "--json",
            &example(file),
        ])
        .await;
        assert_eq!(out.status.code(), Some(0), "{file}: {}", explain(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push((report["event_id"].clone(), report["id_note"].clone()));
    }
    assert_eq!(ids[0].0, "evt_01JD8Q6W3M4X9T2R7K5N0P1Q8S");
    assert_eq!(ids[3].0, "evt_01JD8R2K7V5Y1C9D3F6H8J0M4N");
    assert_eq!(ids[1].0, "9f1c2e7a-5b3d-4c8e-a0f6-2d4b8e1c7a93");
    assert!(ids[1].1.is_null());
    // Standard Webhooks carries the id in a header: made up, and said so.
    assert!(ids[2].0.as_str().unwrap().starts_with("dry-run-"));
    assert!(
        ids[2].1.as_str().unwrap().contains("not the worker's"),
        "{:?}",
        ids[2].1
    );

    // Without the listener config, the reputation event's type comes from its [[subjects]]
    // entry, and the made-up id is named as such.
    let reputation = example("reputation-score-updated.json");
    let out = rules_test(&["--provider", "reputation", &reputation]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let text = stdout(&out);
    assert!(text.contains("(Reputation_Score_Updated)"), "{text}");
    assert!(
        text.contains("rule merchant-caution (enforce): matched"),
        "{text}"
    );
    assert!(
        text.contains("has no top-level \"id\"; give --config LISTENER.toml")
            && text.contains("the idempotency keys below are not the worker's"),
        "{text}"
    );
    // With --type and the listener config: the event's own id, as before only with --id.
    let out = rules_test(&[
        "--config",
        LISTENER_TOML,
        "--provider",
        "reputation",
        "--type",
        "Reputation_Score_Updated",
        &reputation,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        stdout(&out).starts_with(
            "event reputation/9f1c2e7a-5b3d-4c8e-a0f6-2d4b8e1c7a93 (Reputation_Score_Updated)\n"
        ),
        "{}",
        explain(&out)
    );
    // A provider the listener config does not name.
    let out = rules_test(&[
        "--config",
        LISTENER_TOML,
        "--provider",
        "nobody",
        &reputation,
    ])
    .await;
    assert_eq!(out.status.code(), Some(64), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no provider \"nobody\""),
        "{}",
        explain(&out)
    );
}

/// The reputation provider as `listener.toml` configures it (id and type at its own keys).
const REPUTATION_PROVIDER: &str = r#"
name = "reputation"
scheme = "stripe"
secrets = ["whsec_test_reputation"]
event_id = "/event_id"
event_type = "/event"
"#;

/// `deploy/rules.toml`'s reputation rule, with a review body that shows the event id.
const REPUTATION_RULES: &str = r#"
[[subjects]]
provider = "reputation"
types = ["Reputation_Score_Updated"]
subject = "/entity/id"
version = "/version"
scores = { reputation = "/new_score" }

[[rules]]
name = "merchant-caution"
events = ["reputation:*"]
when = "score.reputation < 60.0 && (!has(previous.score.reputation) || previous.score.reputation >= 60.0)"
actions = ["review", "note"]

[actions.review]
kind = "amqp"
body = '{"merchant": {{ subject | tojson }}, "event_id": {{ event_id | tojson }}}'

[actions.note]
kind = "log"
message = "merchant {{ subject }} fell to {{ score.reputation }}"
"#;

#[tokio::test]
async fn rules_test_renders_what_the_worker_sends_for_the_same_event() {
    let l = crate::harness::Harness::new()
        .provider(REPUTATION_PROVIDER)
        .start()
        .await;
    let w = WorkerHarness::new(REPUTATION_RULES)
        .start_with_names("http://127.0.0.1:9", l.names.clone_names())
        .await;
    let dir = tempdir::Dir::new();
    let rules = dir.path.join("rules.toml");
    std::fs::write(&rules, &w.text).unwrap();
    let listener = dir.path.join("listener.toml");
    std::fs::write(&listener, l.config_text_for_signing()).unwrap();
    let file = example("reputation-score-updated.json");

    // Through the real pipeline: listener, broker, worker, the review message it publishes.
    let body = std::fs::read_to_string(&file).unwrap();
    let answer = l.send("reputation", &body).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.body);
    let sent = crate::harness::eventually_get(&w.broker, &w.names.review_queue).await;
    let sent_id = sent
        .delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string());

    // The dry run of the same file with the same two config files.
    let out = run(&[
        "rules",
        "test",
        "--rules",
        rules.to_str().unwrap(),
        "--config",
        listener.to_str().unwrap(),
        "--provider",
        "reputation",
        "--json",
        &file,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let review = &report["rules"][0]["actions"][0];
    assert_eq!(review["action"], "review", "{report:#}");
    assert_eq!(
        review["rendered"]["message_id"].as_str().map(str::to_owned),
        sent_id,
        "{report:#}"
    );
    assert_eq!(
        review["rendered"]["body"].as_str().unwrap().as_bytes(),
        &sent.delivery.data[..],
        "{report:#}"
    );
    assert_eq!(
        review["rendered"]["routing_key"].as_str(),
        Some(w.names.review_queue.as_str())
    );
}

/// `hookwarden rules test … | head -1`: the reader goes away before the report is written.
/// The report is simply not written; no panic, and the exit code still says how the run went.
#[test]
fn a_reader_that_goes_away_is_not_a_panic() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookwarden"))
        .args([
            "rules",
            "test",
            "--rules",
            DEPLOY_RULES,
            "--config",
            LISTENER_TOML,
            "--provider",
            "dregs",
            "--enrich",
            &format!("account={}", example(ACCOUNT_ANSWER)),
            &example("dregs-identity-scored.json"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the command can have written anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
