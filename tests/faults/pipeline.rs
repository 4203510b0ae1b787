//! Listener, worker and a real HTTP target together under steady signed load while the
//! broker is stopped, alarmed or cut, and while the listener is killed -9 with events in its
//! spool. Each asserts that every event answered 200 produced exactly its action: one
//! distinct idempotency key per event at the target (repeats only under the same key).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookwarden::cli::http_client;
use hookwarden::listener::config::ListenerConfig;

use crate::harness::{
    Harness, Names, Proxy, TestListener, free_addr, metric, sign_with, signal, tempdir, terminate,
    try_admin_get, wait_for, wait_for_port,
};
use crate::sink::Sink;
use crate::worker_harness::{TestWorker, WorkerHarness, dregs};

const RULES: &str = r#"
[[subjects]]
provider = "dregs"
types = ["identity.scored"]
subject = "/data/identity_id"
scores = { humanity = "/data/scores/humanity" }

[[rules]]
name = "quarantine"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0"
actions = ["quarantine"]

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine"
retries = 8
timeout = "5s"
"#;

/// Restores the broker whatever happens to the test.
struct BrokerGuard;

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", "0.4"])
            .output();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl on PATH");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends unique signed events (each about its own subject, so each acts once) from
/// `workers` loops until `until`; returns the ids answered 200 and a count per status.
async fn load(
    url: String,
    signer: Arc<ListenerConfig>,
    workers: usize,
    until: Instant,
) -> (Vec<String>, HashMap<u16, usize>) {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (url, signer) = (url.clone(), signer.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = 0;
            while Instant::now() < until {
                i += 1;
                let id = format!("w{w}n{i}");
                let body = dregs(&id, &id, "2026-11-21T10:00:00Z", 10);
                let headers = sign_with(
                    &signer,
                    "dregs",
                    body.as_bytes(),
                    std::time::SystemTime::now(),
                    &id,
                );
                let status = match http_client::post(&url, &headers, Bytes::from(body)).await {
                    Ok(a) => a.status.as_u16(),
                    Err(_) => 0,
                };
                out.push((id, status));
                // Steady, not flooding: about 100 events/s per loop at most (a pace, not a wait).
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            out
        }));
    }
    let mut accepted = Vec::new();
    let mut statuses = HashMap::new();
    for t in tasks {
        for (id, status) in t.await.unwrap() {
            *statuses.entry(status).or_insert(0) += 1;
            if status == 200 {
                accepted.push(id);
            }
        }
    }
    (accepted, statuses)
}

/// Waits until every accepted id acted at the sink, then checks exactly-once in effect;
/// returns how many actions were repeats under the same Idempotency-Key.
async fn assert_each_acted_once(
    sink: &Sink,
    accepted: &[String],
    what: &str,
    statuses: &HashMap<u16, usize>,
) -> usize {
    let want: HashSet<String> = accepted
        .iter()
        .map(|id| format!("/accounts/{id}/quarantine"))
        .collect();
    sink.wait_until(
        &format!(
            "{what}: each of the {} events answered 200 to act",
            want.len()
        ),
        Duration::from_secs(90),
        |got| {
            let got: HashSet<&str> = got.iter().map(|r| r.path.as_str()).collect();
            want.iter().all(|path| got.contains(path.as_str()))
        },
    )
    .await;
    let mut keys: HashMap<String, HashSet<String>> = HashMap::new();
    let received = sink.received();
    for r in &received {
        keys.entry(r.path.clone())
            .or_default()
            .insert(r.idempotency_key.clone().unwrap_or_default());
    }
    for path in &want {
        assert_eq!(
            keys[path].len(),
            1,
            "{what}: {path} acted under more than one key"
        );
    }
    let repeated = received.len() - keys.len();
    eprintln!(
        "{what}: sent {} (statuses {statuses:?}), answered 200 {}, acted {}, repeated under the same key {repeated}",
        statuses.values().sum::<usize>(),
        accepted.len(),
        want.len()
    );
    repeated
}

struct Pipeline {
    listener: TestListener,
    worker: TestWorker,
    sink: Sink,
    signer: Arc<ListenerConfig>,
    _dir: tempdir::Dir,
}

async fn pipeline(amqp_url: Option<String>) -> Pipeline {
    let sink = Sink::start().await;
    let names = Names::new();
    let dir = tempdir::Dir::new();
    let mut harness = Harness::new()
        .spool(&dir.path.join("spool.db"), "")
        .server("handoff_timeout", "\"1s\"");
    if let Some(url) = &amqp_url {
        harness = harness.amqp("url", &format!("\"{url}\""));
    }
    let listener = harness.start_with_names(names.clone_names()).await;
    let publisher = listener.running.as_ref().unwrap().publisher.clone();
    assert!(publisher.wait_connected(Duration::from_secs(15)).await);
    let worker = WorkerHarness::new(RULES)
        .start_with_names(&sink.url(), names)
        .await;
    let text = listener.config_text_for_signing();
    let signer = Arc::new(ListenerConfig::parse("t.toml", &text, &Default::default()).unwrap());
    Pipeline {
        listener,
        worker,
        sink,
        signer,
        _dir: dir,
    }
}

/// If the events have not all acted 30 s from now, prints what the listener's spool and
/// the worker were doing (shown only when the test fails): a rare stall here once left
/// nothing to go on.
fn explain_if_slow(p: &Pipeline) {
    let admin = p.listener.admin.clone();
    let Some(worker) = p.worker.running.as_ref().map(|r| r.metrics.clone()) else {
        return;
    };
    tokio::spawn(async move {
        // A report due at a time, not a wait for a state.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let (_, listener) = crate::harness::admin_get(&admin, "/metrics").await;
        let keep = |l: &&str| !l.starts_with('#');
        eprintln!(
            "listener metrics at 30 s:\n{}\nworker metrics at 30 s:\n{}",
            listener.lines().filter(keep).collect::<Vec<_>>().join("\n"),
            worker
                .encode()
                .lines()
                .filter(keep)
                .collect::<Vec<_>>()
                .join("\n")
        );
    });
}

/// Other applications on the same broker: `n` clients that keep reconnecting through an
/// outage and, whenever connected, publish about 1,000 1 KB messages a second each into a
/// queue of their own (exclusive, so the broker deletes it with the connection; capped at
/// 1,000 messages, oldest dropped), until `until`. Returns how many each published.
async fn busy_clients(n: usize, until: Instant) -> Vec<tokio::task::JoinHandle<u64>> {
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let mut sent = 0u64;
                while Instant::now() < until {
                    let session = async {
                        let conn = lapin::Connection::connect(
                            &crate::harness::amqp_url(),
                            lapin::ConnectionProperties::default()
                                .with_connection_name("hwtest-busy-client".into()),
                        )
                        .await?;
                        let ch = conn.create_channel().await?;
                        let mut args = FieldTable::default();
                        args.insert("x-max-length".into(), AMQPValue::LongInt(1000));
                        let q = ch
                            .queue_declare(
                                "".into(),
                                QueueDeclareOptions {
                                    exclusive: true,
                                    ..Default::default()
                                },
                                args,
                            )
                            .await?;
                        let body = vec![b'x'; 1024];
                        while Instant::now() < until {
                            for _ in 0..10 {
                                ch.basic_publish(
                                    "".into(),
                                    q.name().clone(),
                                    BasicPublishOptions::default(),
                                    &body,
                                    lapin::BasicProperties::default(),
                                )
                                .await?;
                                sent += 1;
                            }
                            // Their publishing pace, not a wait for a state.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        let _ = conn.close(200, "done".into()).await;
                        Ok::<_, lapin::Error>(())
                    };
                    // Any failure (the broker away, a connection cut): wait a little, retry.
                    let _ = tokio::time::timeout(until - Instant::now(), session).await;
                    // Their retry pace, as another application's, not a wait for a state.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                sent
            })
        })
        .collect()
}

/// Waits until events flow end to end (10 acted on), before a fault is injected.
async fn flowing(p: &Pipeline) {
    p.sink
        .wait_until(
            "10 events acted on before the fault",
            Duration::from_secs(10),
            |got| got.len() >= 10,
        )
        .await;
}

/// The daemons' own account of the broker while it is away: neither may claim a live link.
async fn assert_both_see_the_broker_gone(p: &Pipeline) {
    wait_for(
        "listener and worker both to report the broker gone",
        Duration::from_secs(30),
        || async {
            let listener = try_admin_get(&p.listener.admin, "/metrics").await?.1;
            let (status, metrics) = try_admin_get(&p.worker.admin, "/metrics").await?;
            let worker_ready = try_admin_get(&p.worker.admin, "/readyz").await?.0;
            let connected = metric(&listener, "hookwarden_broker_connected");
            let consuming = metric(&metrics, "hookwarden_worker_consuming");
            if status == 200
                && connected == Some(0.0)
                && consuming == Some(0.0)
                && worker_ready == 503
            {
                Ok(())
            } else {
                Err(format!(
                    "listener broker_connected {connected:?}; worker /metrics {status}, \
                     consuming {consuming:?}, /readyz {worker_ready}"
                ))
            }
        },
    )
    .await;
}

async fn broker_stopped_for(seconds: u64, others_busy: bool) {
    let _serial = crate::SERIAL.lock().await;
    let _guard = BrokerGuard;
    let p = pipeline(None).await;
    let url = format!("{}/hooks/dregs", p.listener.base);
    let until = Instant::now() + Duration::from_secs(seconds + 4);
    let traffic = tokio::spawn(load(url, p.signer.clone(), 4, until));
    // Busy through the outage and for the minute after it, when the daemons reconnect.
    let others = if others_busy {
        busy_clients(6, Instant::now() + Duration::from_secs(seconds + 60)).await
    } else {
        Vec::new()
    };
    flowing(&p).await;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
        .await
        .unwrap();
    if seconds >= 30 {
        assert_both_see_the_broker_gone(&p).await;
    }
    // The outage's length is what the test is about.
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["start_app"]))
        .await
        .unwrap();
    let (accepted, statuses) = traffic.await.unwrap();
    explain_if_slow(&p);
    let repeated = assert_each_acted_once(
        &p.sink,
        &accepted,
        &format!("broker stopped {seconds} s"),
        &statuses,
    )
    .await;
    // The worker lived through it and its target answered every request at once: nothing
    // may run twice, not even under the same key.
    assert_eq!(repeated, 0, "actions repeated with the worker alive");
    assert_eq!(
        statuses.get(&503),
        None,
        "the spool should have taken every event: {statuses:?}"
    );
    let mut other_messages = 0;
    for task in others {
        other_messages += task.await.unwrap();
    }
    if others_busy {
        eprintln!("other clients published {other_messages} messages meanwhile");
        assert!(other_messages > 0, "the other clients never got going");
    }
    let _ = &p.worker;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_2s_under_load() {
    broker_stopped_for(2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_5s_under_load() {
    broker_stopped_for(5, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_60s_under_load() {
    broker_stopped_for(60, false).await;
}

/// As the run that once left the worker saying `consuming 1` with no connection for 90 s:
/// the broker stopped for 60 s while other applications keep it busy, before, during (they
/// retry) and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_60s_with_other_clients_busy() {
    broker_stopped_for(60, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_blocked_by_a_memory_alarm_under_load() {
    let _serial = crate::SERIAL.lock().await;
    let _guard = BrokerGuard;
    let p = pipeline(None).await;
    let url = format!("{}/hooks/dregs", p.listener.base);
    let until = Instant::now() + Duration::from_secs(8);
    let traffic = tokio::spawn(load(url, p.signer.clone(), 4, until));
    flowing(&p).await;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["set_vm_memory_high_watermark", "0"]))
        .await
        .unwrap();
    // How long the alarm holds is what the test is about.
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]))
        .await
        .unwrap();
    let (accepted, statuses) = traffic.await.unwrap();
    assert_each_acted_once(&p.sink, &accepted, "memory alarm", &statuses).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_killed_with_events_in_its_spool_forwards_them_after_restart() {
    let _serial = crate::SERIAL.lock().await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let sink = Sink::start().await;
    let names = Names::new();
    let worker = WorkerHarness::new(RULES)
        .start_with_names(&sink.url(), names.clone_names())
        .await;
    let (public, admin) = (free_addr(), free_addr());
    let dir = tempdir::Dir::new();
    let spool = dir.path.join("spool.db");
    let harness = Harness::new()
        .amqp("url", &format!("\"{}\"", proxy.url()))
        .spool(&spool, "")
        .server("handoff_timeout", "\"1s\"");
    let text = harness.config_text(&names, public, admin);
    let path = dir.path.join("listener.toml");
    std::fs::write(&path, &text).unwrap();
    let signer = Arc::new(ListenerConfig::parse("t.toml", &text, &Default::default()).unwrap());
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hookwarden-listener"))
            .args(["--config", path.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    proxy.down();
    let mut child = spawn();
    let _guard = crate::harness::KillOnDrop(child.id());
    wait_for_port(public, Duration::from_secs(15)).await;
    let url = format!("http://{public}/hooks/dregs");
    let (accepted, statuses) = load(
        url.clone(),
        signer.clone(),
        2,
        Instant::now() + Duration::from_secs(2),
    )
    .await;
    assert!(!accepted.is_empty());
    signal(&child, "-KILL");
    let _ = child.wait();
    proxy.up();
    let child = spawn();
    let _guard = crate::harness::KillOnDrop(child.id());
    assert_each_acted_once(
        &sink,
        &accepted,
        "listener killed -9 with a full spool",
        &statuses,
    )
    .await;
    assert_eq!(terminate(child).await.code(), Some(0));
    drop(worker);
    drop(names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_target_down_for_30s_then_back() {
    let _serial = crate::SERIAL.lock().await;
    let sink = Sink::start().await;
    let names = Names::new();
    let dir = tempdir::Dir::new();
    let listener = Harness::new()
        .spool(&dir.path.join("spool.db"), "")
        .start_with_names(names.clone_names())
        .await;
    // Enough retries to outlast the outage: backoff doubles to 10 s with full jitter.
    let rules = RULES.replace("retries = 8", "retries = 20");
    let _worker = WorkerHarness::new(&rules)
        .start_with_names(&sink.url(), names)
        .await;
    let text = listener.config_text_for_signing();
    let signer = Arc::new(ListenerConfig::parse("t.toml", &text, &Default::default()).unwrap());
    let url = format!("{}/hooks/dregs", listener.base);
    sink.fail_always(true);
    let traffic = tokio::spawn(load(
        url,
        signer,
        2,
        Instant::now() + Duration::from_secs(35),
    ));
    // The target's 30 s outage is what the test is about.
    tokio::time::sleep(Duration::from_secs(30)).await;
    sink.fail_always(false);
    let (accepted, statuses) = traffic.await.unwrap();
    assert_each_acted_once(&sink, &accepted, "action target down 30 s", &statuses).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_worker_under_load_loses_and_repeats_nothing() {
    let _serial = crate::SERIAL.lock().await;
    let sink = Sink::start().await;
    let names = Names::new();
    let dir = tempdir::Dir::new();
    let listener = Harness::new()
        .spool(&dir.path.join("spool.db"), "")
        .start_with_names(names.clone_names())
        .await;
    let text = listener.config_text_for_signing();
    let signer = Arc::new(ListenerConfig::parse("t.toml", &text, &Default::default()).unwrap());
    // The worker as a process, on the listener's topology.
    let rules_text =
        WorkerHarness::new(RULES).text(&names, &dir.path.join("worker.db"), &sink.url());
    let rules = dir.path.join("rules.toml");
    std::fs::write(&rules, rules_text).unwrap();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hookwarden-worker"))
            .args(["--config", rules.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let child = spawn();
    let _guard = crate::harness::KillOnDrop(child.id());
    let url = format!("{}/hooks/dregs", listener.base);
    let until = Instant::now() + Duration::from_secs(6);
    let traffic = tokio::spawn(load(url, signer, 4, until));
    // SIGTERM with the worker busy acting and load still coming.
    sink.wait_until(
        "the worker process acting on 50 events before the load ends",
        until.saturating_duration_since(Instant::now()),
        |got| got.len() >= 50,
    )
    .await;
    let exit = terminate(child).await;
    assert_eq!(exit.code(), Some(0), "the worker exits 0 on SIGTERM");
    let child = spawn();
    let _guard = crate::harness::KillOnDrop(child.id());
    let (accepted, statuses) = traffic.await.unwrap();
    assert_each_acted_once(&sink, &accepted, "worker SIGTERM under load", &statuses).await;
    let received = sink.received().len();
    assert_eq!(received, accepted.len(), "a graceful stop repeats nothing");
    terminate(child).await;
    drop(names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connections_cut_under_load() {
    let _serial = crate::SERIAL.lock().await;
    let p = pipeline(None).await;
    let url = format!("{}/hooks/dregs", p.listener.base);
    let traffic = tokio::spawn(load(
        url,
        p.signer.clone(),
        4,
        Instant::now() + Duration::from_secs(6),
    ));
    flowing(&p).await;
    // Cuts the listener's and the worker's connections alike.
    tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["close_all_connections", "hookwarden fault test"])
    })
    .await
    .unwrap();
    let (accepted, statuses) = traffic.await.unwrap();
    assert_each_acted_once(&p.sink, &accepted, "broker connections cut", &statuses).await;
    let _ = &p.worker;
}
