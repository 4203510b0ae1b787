//! The daemons' output as a log pipeline reads it: run as processes with stdout not a
//! terminal, the listener and the worker write one JSON object per line, and no line names a
//! key twice (pipelines keep one of the values or refuse the line). Prerequisite: RabbitMQ.

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;
use hookwarden::cli::http_client;
use hookwarden::listener::config::ListenerConfig;
use hookwarden::listener::extract::parse_body;

use crate::daemon::Daemon;
use crate::harness::{Broker, Harness, eventually_get, free_addr, sign_with};
use crate::sink::Sink;
use crate::worker_harness::{WorkerHarness, dregs};

/// A `log` action for every low score, and an `http` action the test makes fail (a dead letter).
const RULES: &str = r#"
[[rules]]
name = "note-low"
events = ["dregs:identity.scored"]
when = "score.humanity < 50.0"
actions = ["note"]

[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0"
actions = ["quarantine"]

[actions.note]
kind = "log"
message = "identity {{ subject }} fell to {{ score.humanity }}"

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine"
retries = 0
timeout = "2s"
"#;

#[tokio::test]
async fn every_json_log_line_of_both_daemons_has_unique_keys() {
    let sink = Sink::start().await;
    sink.fail_always(true);
    let public = free_addr();
    let (dir, listener_toml, names) = Harness::new().write_config(public, free_addr());
    let rules_toml = dir.path.join("rules.toml");
    std::fs::write(
        &rules_toml,
        WorkerHarness::for_dregs(RULES).text(&names, &dir.path.join("worker.db"), &sink.url()),
    )
    .unwrap();
    let text = std::fs::read_to_string(&listener_toml).unwrap();
    let signers = ListenerConfig::parse("listener.toml", &text, &HashMap::new()).unwrap();

    let listener = Daemon::spawn(
        "listener",
        env!("CARGO_BIN_EXE_hookwarden-listener"),
        &listener_toml,
    );
    let worker = Daemon::spawn(
        "worker",
        env!("CARGO_BIN_EXE_hookwarden-worker"),
        &rules_toml,
    );
    listener.wait_for("broker connected").await;
    worker.wait_for(r#""message":"consuming""#).await;

    let url = format!("http://{public}/hooks/dregs");
    // Signs `signed` and sends `body`: the same text, or another one to be refused.
    let post = |signed: &str, body: String| {
        let headers = sign_with(&signers, "dregs", signed.as_bytes(), SystemTime::now(), "");
        let url = url.clone();
        async move {
            http_client::post(&url, &headers, Bytes::from(body))
                .await
                .unwrap()
                .status
                .as_u16()
        }
    };
    let noted = dregs("e-note", "u1", "2026-11-21T10:00:00Z", 40);
    // Accepted, then a duplicate, a bad signature, and an event whose action fails.
    assert_eq!(post(&noted, noted.clone()).await, 200);
    assert_eq!(post(&noted, noted.clone()).await, 200);
    let forged = dregs("e-bad", "u2", "2026-11-21T10:01:00Z", 40);
    assert_eq!(post(&noted, forged).await, 401);
    let failing = dregs("e-dead", "u3", "2026-11-21T10:02:00Z", 22);
    assert_eq!(post(&failing, failing.clone()).await, 200);
    worker.wait_for("identity u1 fell to 40").await;
    let broker = Broker::connect().await;
    let dead = eventually_get(&broker, &names.dead_letter_queue).await;
    assert_eq!(
        dead.delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "e-dead"
    );

    let listener_lines = listener.stop().await;
    let worker_lines = worker.stop().await;
    // The `log` action's line names the event and subject beside its rule and text, at the
    // top level where log pipelines index them (the worker's `delivery` span gives them).
    let action = worker_lines
        .iter()
        .find(|l| l.contains("identity u1 fell to 40"))
        .and_then(|l| parse_body(l.as_bytes()).ok())
        .unwrap();
    assert_eq!(action["message"], "action", "{action}");
    assert_eq!(action["provider"], "dregs", "{action}");
    assert_eq!(action["event_id"], "e-note", "{action}");
    assert_eq!(action["subject"], "u1", "{action}");
    assert!(action["rule"].is_string(), "{action}");
    for (name, lines) in [("listener", listener_lines), ("worker", worker_lines)] {
        assert!(lines.len() >= 3, "{name} wrote only {lines:?}");
        for line in &lines {
            match parse_body(line.as_bytes()) {
                Ok(value) => assert!(value.is_object(), "{name}: not an object: {line}"),
                Err(err) => panic!("{name}: {err}\n{line}"),
            }
        }
    }
}
