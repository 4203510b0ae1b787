//! hookwarden past one host, on a three-node RabbitMQ cluster the test starts on this machine:
//! two listeners and two worker processes sharing one PostgreSQL schema, under steady signed
//! load over many subjects with version-ordered events, while the node the listeners use is
//! stopped, then one worker is killed -9, then both come back. Every event answered 200 is
//! decided exactly once, every action runs once (a repeat only under the same key), and no
//! subject's accepted versions go backwards.
//!
//! Starts and stops broker nodes of its own (beside the shared broker, which it leaves alone),
//! so it is a test binary of its own: cargo runs binaries one after another. Alone:
//! `cargo test --test cluster -- --nocapture` (needs root, `rabbitmq-server` and PostgreSQL).

#[path = "../it/harness.rs"]
mod harness;
mod nodes;
#[path = "../it/pg.rs"]
mod pg;
#[path = "../it/sink.rs"]
mod sink;
#[path = "../it/worker_harness.rs"]
mod worker_harness;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookwarden::worker::config::{Backend, StateConfig};
use hookwarden::worker::state::{self, PgOptions};

use harness::{Harness, KillOnDrop, Names, TestListener, signal, spawn_logged, tempdir, wait_for};
use nodes::{Cluster, ctl};
use pg::Schema;
use sink::Sink;
use worker_harness::{DREGS_SUBJECTS, WorkerHarness};

const RULES: &str = r#"
[[rules]]
name = "low"
events = ["dregs:identity.scored"]
when = "score.humanity < 50.0"
actions = ["quarantine"]

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/{{ event.id }}"
retries = 5
timeout = "5s"
"#;

const SUBJECTS: usize = 40;

/// An event of subject `s{n % SUBJECTS}`, its version the event's number in seconds.
fn event(n: usize) -> String {
    let at = 1_764_000_000 + n as u64;
    let humanity = (n * 37) % 100;
    format!(
        r#"{{"id":"c{n}","type":"identity.scored","data":{{"identity_id":"s{}","scored_at":{at},"scores":{{"humanity":{humanity}}}}}}}"#,
        n % SUBJECTS
    )
}

/// Sends events `0..` alternately to the two listeners, `rate` a second, until `until`; every
/// tenth is sent to the other listener too (a provider's retry reaching both). Returns the
/// numbers answered 200 by either.
async fn load(listeners: Arc<[TestListener; 2]>, rate: u64, until: Instant) -> Vec<usize> {
    let mut accepted = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / rate));
    let mut n = 0;
    while Instant::now() < until {
        tick.tick().await;
        let body = event(n);
        let first = &listeners[n % 2];
        let mut ok = first.send("dregs", &body).await.status == 200;
        if n % 10 == 0 {
            ok |= listeners[(n + 1) % 2].send("dregs", &body).await.status == 200;
        }
        if ok {
            accepted.push(n);
        }
        n += 1;
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_and_a_worker_lost_under_load_lose_nothing_and_repeat_only_under_one_key() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let urls = cluster.urls();
    let url_list = format!(
        "[{}]",
        urls.iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let schema = Schema::new().await;
    let sink = Sink::start().await;
    let dir = tempdir::Dir::new();

    // Two listeners on the cluster, each with its spool for the moments without a node.
    let names = Names::new();
    let listener = |i: usize, names: Names| {
        Harness::new()
            .amqp("url", &url_list)
            .spool(&dir.path.join(format!("spool{i}.db")), "")
            .start_with_names(names)
    };
    let first = listener(0, names.clone_names()).await;
    let second = listener(1, names.clone_names()).await;
    for l in [&first, &second] {
        assert!(
            l.running
                .as_ref()
                .unwrap()
                .publisher
                .wait_connected(Duration::from_secs(30))
                .await,
            "a listener never connected to the cluster"
        );
    }

    // Two worker processes on one PostgreSQL schema.
    let rules = WorkerHarness::new(&format!("{DREGS_SUBJECTS}{RULES}"))
        .urls(&urls)
        .text_with_state(
            &names,
            &format!("url = \"{}\"\n", schema.url()),
            &sink.url(),
        );
    let rules_path = dir.path.join("rules.toml");
    std::fs::write(&rules_path, &rules).unwrap();
    let worker = |i: usize| {
        let child = spawn_logged(
            env!("CARGO_BIN_EXE_hookwarden-worker"),
            &rules_path,
            &dir.path.join(format!("worker{i}.log")),
        );
        let guard = KillOnDrop(child.id());
        (child, guard)
    };
    let (w0, _g0) = worker(0);
    let (_w1, _g1) = worker(1);

    // The quorum queue has a member on every node.
    let members = std::process::Command::new("rabbitmqctl")
        .args([
            "-n",
            &cluster.nodes[0].name,
            "list_queues",
            "name",
            "members",
        ])
        .output()
        .unwrap();
    let members = String::from_utf8_lossy(&members.stdout).to_string();
    let events_line = members
        .lines()
        .find(|l| l.starts_with(&names.queue))
        .unwrap_or_default()
        .to_owned();
    assert!(
        cluster.nodes.iter().all(|n| events_line.contains(&n.name)),
        "the events queue is not on every node: {members}"
    );

    let listeners = Arc::new([first, second]);
    let until = Instant::now() + Duration::from_secs(16);
    let traffic = tokio::spawn(load(listeners.clone(), 60, until));

    // The node everyone connected to first goes away, then a worker is killed mid-batch.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = cluster.nodes[0].name.clone();
    tokio::task::spawn_blocking(move || ctl(&stopped, &["stop_app"]))
        .await
        .unwrap();
    // Both listeners and both workers carry on through the other nodes.
    let survivors: Vec<String> = cluster.nodes[1..].iter().map(|n| n.name.clone()).collect();
    wait_for(
        "every client on the remaining nodes",
        Duration::from_secs(30),
        || {
            let survivors = survivors.clone();
            async move {
                let on = tokio::task::spawn_blocking(move || {
                    survivors
                        .iter()
                        .map(|node| {
                            // Connections held by this node itself (cluster-wide listings wait on
                            // the stopped node).
                            std::process::Command::new("rabbitmqctl")
                                .args(["-n", node, "-q", "eval"])
                                .arg("length(rabbit_networking:connections_local()).")
                                .output()
                                .ok()
                                .and_then(|o| {
                                    String::from_utf8_lossy(&o.stdout)
                                        .trim()
                                        .parse::<usize>()
                                        .ok()
                                })
                                .unwrap_or(0)
                        })
                        .sum::<usize>()
                })
                .await
                .unwrap();
                if on >= 4 {
                    Ok(())
                } else {
                    Err(format!("{on} connections on the remaining nodes"))
                }
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&w0, "-KILL");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Both come back.
    let restarted = cluster.nodes[0].name.clone();
    tokio::task::spawn_blocking(move || ctl(&restarted, &["start_app"]))
        .await
        .unwrap();
    let (_w0b, _g0b) = worker(2);
    let accepted = traffic.await.unwrap();
    assert!(
        accepted.len() > 500,
        "only {} events were accepted",
        accepted.len()
    );

    // Every accepted event is decided, exactly once.
    let store = state::open(&StateConfig {
        backend: Backend::Postgres(PgOptions {
            url: schema.url(),
            pool_size: 3,
            statement_timeout: Duration::from_secs(10),
        }),
        retention: Duration::from_secs(3600),
    })
    .await
    .unwrap();
    let keys: Vec<String> = accepted.iter().map(|n| format!("dregs/c{n}")).collect();
    wait_for(
        "every accepted event decided",
        Duration::from_secs(120),
        || {
            let (store, keys) = (store.clone(), keys.clone());
            let want = keys.len();
            async move {
                let decided =
                    tokio::task::spawn_blocking(move || store.decided(&keys).map(|d| d.len()))
                        .await
                        .unwrap()
                        .map_err(|e| e.to_string())?;
                if decided == want {
                    Ok(())
                } else {
                    Err(format!("{decided} of {want} decided"))
                }
            }
        },
    )
    .await;
    let records = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.decisions(None, None, usize::MAX))
            .await
            .unwrap()
            .unwrap()
    };
    // Every action once: a repeat only under the same key (from the killed worker).
    let mut keys_per_path: HashMap<String, HashSet<String>> = HashMap::new();
    let received = sink.received();
    for r in &received {
        keys_per_path
            .entry(r.path.clone())
            .or_default()
            .insert(r.idempotency_key.clone().unwrap_or_default());
    }
    assert!(
        keys_per_path.values().all(|keys| keys.len() == 1),
        "an action ran under two keys"
    );
    let acted: HashSet<String> = records
        .iter()
        .filter(|r| r.outcome == "acted")
        .map(|r| r.event_key.clone())
        .collect();
    for key in &acted {
        let id = key.trim_start_matches("dregs/");
        assert!(
            keys_per_path.keys().any(|p| p.ends_with(&format!("/{id}"))),
            "{key} decided acted but never reached the target"
        );
    }

    // No subject's accepted versions go backwards: in commit order, each accepted event of a
    // subject is newer than the one accepted before it (older ones are recorded stale).
    let mut by_subject: HashMap<String, Vec<(i64, u64)>> = HashMap::new();
    for r in &records {
        if r.outcome == "stale" {
            continue;
        }
        if let (Some(subject), Some(n)) = (
            &r.subject_key,
            r.event_key
                .strip_prefix("dregs/c")
                .and_then(|n| n.parse::<u64>().ok()),
        ) {
            by_subject
                .entry(subject.clone())
                .or_default()
                .push((r.at_ms, n));
        }
    }
    for (subject, mut seen) in by_subject {
        seen.sort();
        let versions: Vec<u64> = seen.iter().map(|(_, n)| *n).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        assert_eq!(
            versions, sorted,
            "{subject} accepted an older event after a newer one"
        );
    }
    let stale = records.iter().filter(|r| r.outcome == "stale").count();
    let repeats = received.len() - keys_per_path.len();
    eprintln!(
        "cluster: {} accepted, {} decided ({} acted, {stale} stale), {} actions, {repeats} repeated under the same key",
        accepted.len(),
        records.len(),
        acted.len(),
        received.len()
    );
    drop(listeners);
    drop(cluster);
}
