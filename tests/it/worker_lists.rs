//! `[lists.*]` in a worker process against the real broker: a trusted list keeps its subjects
//! out of a quarantine, SIGHUP after editing the file changes the outcome of the next event,
//! a CIDR list matches IPv4 and IPv6 addresses (a bad address is that rule's recorded error),
//! and a malformed entry refuses the reload, naming the file and line, while the old lists
//! stay. (Named `worker_…` so `.ci/run` runs it again with the state in PostgreSQL.)

use std::time::Duration;

use crate::harness::{KillOnDrop, spawn_logged, tempdir, wait_for_file};
use crate::sink::Sink;
use crate::worker_harness::{TestWorker, WorkerHarness};

/// Rules reading `{DIR}/trusted.txt` and `{DIR}/vpn.txt`.
const RULES: &str = r#"
[lists.trusted]
file = "{DIR}/trusted.txt"

[lists.vpn]
file = "{DIR}/vpn.txt"
kind = "cidr"

[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0 && !(subject in lists.trusted)"
actions = ["quarantine"]

[[rules]]
name = "vpn"
events = ["dregs:identity.scored"]
when = "has(event.data.ip) && cidr_contains(lists.vpn, event.data.ip)"
actions = []

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine"
retries = 0
timeout = "2s"
"#;

async fn publish(w: &TestWorker, id: &str, subject: &str, minute: u32, ip: &str) {
    let body = format!(
        r#"{{"id":"{id}","data":{{"identity_id":"{subject}","scored_at":"2026-11-21T10:{minute:02}:00Z","scores":{{"humanity":10}},"ip":"{ip}"}}}}"#
    );
    w.publish("dregs", "identity.scored", id, &body).await;
}

/// The rule entry `rule` of the decision on `id`.
async fn entry(w: &TestWorker, id: &str, rule: &str) -> serde_json::Value {
    let d = w.decision("dregs", id).await;
    d.record["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["rule"] == rule).cloned())
        .unwrap_or_else(|| panic!("no {rule} in {}", d.record))
}

fn sighup(child: &std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

fn count(log: &str, message: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(&format!("\"message\":\"{message}\"")))
        .count()
}

#[tokio::test]
async fn lists_decide_conditions_and_reload_on_sighup_only_when_they_read() {
    let sink = Sink::start().await;
    let lists = tempdir::Dir::new();
    let dir = lists.path.display().to_string();
    std::fs::write(lists.path.join("trusted.txt"), "# staff\nu1\n").unwrap();
    std::fs::write(lists.path.join("vpn.txt"), "10.0.0.0/8\n2001:db8::/32\n").unwrap();
    let mut w = WorkerHarness::for_dregs(&RULES.replace("{DIR}", &dir))
        .start(&sink.url())
        .await;
    // The harness declared the topology; a process does the work, to take a real SIGHUP.
    w.stop().await;
    let config = lists.path.join("rules.toml");
    std::fs::write(&config, &w.text).unwrap();
    let log = lists.path.join("worker.log");
    let mut child = spawn_logged(env!("CARGO_BIN_EXE_hookwarden-worker"), &config, &log);
    let _kill = KillOnDrop(child.id());

    // The trusted subject is left alone, the other quarantined.
    publish(&w, "e1", "u1", 1, "10.1.2.3").await;
    publish(&w, "e2", "u2", 1, "2001:db8::7").await;
    assert_eq!(entry(&w, "e1", "quarantine").await["matched"], false);
    assert_eq!(entry(&w, "e2", "quarantine").await["matched"], true);
    // Both addresses are in the VPN list; one outside it and one that is no address are not.
    assert_eq!(entry(&w, "e1", "vpn").await["matched"], true);
    assert_eq!(entry(&w, "e2", "vpn").await["matched"], true);
    publish(&w, "e3", "u3", 1, "192.0.2.1").await;
    publish(&w, "e4", "u4", 1, "ten.one").await;
    assert_eq!(entry(&w, "e3", "vpn").await["matched"], false);
    let bad = entry(&w, "e4", "vpn").await;
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("\"ten.one\" is not an IP address")),
        "{bad}"
    );

    // u2 becomes trusted, u1 no longer: the next events decide the other way round.
    std::fs::write(lists.path.join("trusted.txt"), "u2\n").unwrap();
    sighup(&child);
    wait_for_file(&log, "the reload", Duration::from_secs(20), |text| {
        count(text, "rules reloaded") == 1
    })
    .await;
    publish(&w, "e5", "u1", 2, "192.0.2.1").await;
    publish(&w, "e6", "u2", 2, "192.0.2.1").await;
    assert_eq!(entry(&w, "e5", "quarantine").await["matched"], true);
    assert_eq!(entry(&w, "e6", "quarantine").await["matched"], false);

    // A malformed entry: the reload is refused with file and line, and the old lists stay.
    std::fs::write(lists.path.join("vpn.txt"), "10.0.0.0/8\n10.0.0.0/33\n").unwrap();
    std::fs::write(lists.path.join("trusted.txt"), "u1\n").unwrap();
    sighup(&child);
    let text = wait_for_file(&log, "the refusal", Duration::from_secs(20), |text| {
        count(text, "reload refused; the old rules stay") >= 1
    })
    .await;
    let refusal = text
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap_or_default();
    assert!(
        refusal.contains("vpn.txt:2: \\\"10.0.0.0/33\\\" is not an IP network or address"),
        "{refusal}"
    );
    publish(&w, "e7", "u2", 3, "10.9.9.9").await;
    assert_eq!(
        entry(&w, "e7", "quarantine").await["matched"],
        false,
        "u2 is still trusted: the old lists stay"
    );
    assert_eq!(entry(&w, "e7", "vpn").await["matched"], true);
    let _ = child.kill();
    let _ = child.wait();
}
