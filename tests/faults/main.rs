//! Broker and process faults under signed load: connections cut by the broker, SIGTERM of
//! the listener. These disturb every client of the broker, so this binary runs its tests
//! one at a time (a shared lock) and cargo runs test binaries one after another.
//! Prerequisite: RabbitMQ running locally with `rabbitmqctl` on PATH (`.ci/run` starts it).

#[path = "../it/harness.rs"]
mod harness;
#[path = "../it/pg.rs"]
mod pg;
mod pipeline;
#[path = "../it/sink.rs"]
mod sink;
mod worker;
#[path = "../it/worker_harness.rs"]
mod worker_harness;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::{
    Broker, Harness, Want, event, free_addr, sign_with, spawn_logged, terminate, try_admin_get,
    wait_for, wait_for_metric,
};
use hookwarden::cli::http_client;
use hookwarden::listener::config::ListenerConfig;

pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One request's result: id, status (0 = no answer), when it was answered.
type Sent = (String, u16, Instant);

/// Posts unique signed events from `workers` tasks until `until` passes or the server stops
/// answering connections.
async fn load(
    url: String,
    signer: Arc<ListenerConfig>,
    workers: usize,
    until: Instant,
) -> Vec<Sent> {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (url, signer) = (url.clone(), signer.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut refused = 0;
            for i in 0.. {
                if Instant::now() >= until || refused > 20 {
                    break;
                }
                let id = format!("evt_{w}_{i}");
                let body = event(&id);
                let headers = sign_with(
                    &signer,
                    "dregs",
                    body.as_bytes(),
                    std::time::SystemTime::now(),
                    &id,
                );
                match http_client::post(&url, &headers, Bytes::from(body)).await {
                    Ok(a) => out.push((id, a.status.as_u16(), Instant::now())),
                    Err(_) => {
                        refused += 1;
                        out.push((id, 0, Instant::now()));
                        // The pace of retries against a refusing port, not a wait for a state.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
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

/// Waits until the listener whose admin server is at `admin` has answered 50 events 200,
/// which must happen well before the load ends at `until`.
async fn accepting_load(admin: &str, until: Instant) {
    wait_for_metric(
        admin,
        r#"hookwarden_requests_total{provider="dregs",status="200"}"#,
        Want::AtLeast(50.0),
        until.saturating_duration_since(Instant::now()) / 2,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_by_the_broker_never_yield_a_200_without_a_message() {
    let _serial = SERIAL.lock().await;
    let l = Harness::new().start().await;
    let text = l.config_text_for_signing();
    let signer = Arc::new(ListenerConfig::parse("t.toml", &text, &Default::default()).unwrap());
    let url = format!("{}/hooks/dregs", l.base);
    let started = Instant::now();
    let until = started + Duration::from_secs(6);
    let traffic = tokio::spawn(load(url, signer, 8, until));
    // The cut comes once events are flowing, with most of the load still ahead.
    accepting_load(&l.admin, until).await;
    tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["close_all_connections", "hookwarden fault test"])
    })
    .await
    .unwrap();
    let cut_done = Instant::now();
    let sent = traffic.await.unwrap();

    let accepted: HashSet<&str> = sent
        .iter()
        .filter(|s| s.1 == 200)
        .map(|s| s.0.as_str())
        .collect();
    let unavailable = sent.iter().filter(|s| s.1 == 503).count();
    let other: Vec<_> = sent.iter().filter(|s| s.1 != 200 && s.1 != 503).collect();
    assert!(
        other.is_empty(),
        "unexpected answers: {:?}",
        &other[..other.len().min(5)]
    );
    assert!(
        sent.iter().any(|s| s.1 == 200 && s.2 > cut_done),
        "service did not resume after the cut ({} sent, {unavailable} 503)",
        sent.len()
    );
    let broker = Broker::connect().await;
    let queued: HashSet<String> = broker.drain_ids(&l.names.queue).await.into_iter().collect();
    let lost: Vec<_> = accepted
        .iter()
        .filter(|id| !queued.contains(**id))
        .collect();
    assert!(
        lost.is_empty(),
        "answered 200 but not in the queue: {lost:?}"
    );
    eprintln!(
        "cut test: {} sent, {} accepted, {unavailable} answered 503, {} queued",
        sent.len(),
        accepted.len(),
        queued.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_with_every_accepted_event_queued() {
    let _serial = SERIAL.lock().await;
    let (public, admin) = (free_addr(), free_addr());
    let harness = Harness::new();
    let (dir, path, names) = harness.write_config(public, admin);
    let text = std::fs::read_to_string(&path).unwrap();
    let signer = Arc::new(ListenerConfig::parse("t.toml", &text, &Default::default()).unwrap());
    let child = spawn_logged(
        env!("CARGO_BIN_EXE_hookwarden-listener"),
        &path,
        &dir.path.join("listener.log"),
    );
    let _guard = crate::harness::KillOnDrop(child.id());
    let admin_base = format!("http://{admin}");
    wait_for("the listener ready", Duration::from_secs(15), || async {
        match try_admin_get(&admin_base, "/readyz").await? {
            (200, _) => Ok(()),
            (status, why) => Err(format!("/readyz {status} {why:?}")),
        }
    })
    .await;

    let url = format!("http://{public}/hooks/dregs");
    let until = Instant::now() + Duration::from_secs(10);
    let traffic = tokio::spawn(load(url, signer, 8, until));
    // SIGTERM once events are flowing, with most of the load still ahead.
    accepting_load(&admin_base, until).await;
    let exit = terminate(child).await;
    let sent = traffic.await.unwrap();
    let logged = std::fs::read_to_string(dir.path.join("listener.log")).unwrap_or_default();
    assert_eq!(exit.code(), Some(0), "listener log:\n{logged}");

    let accepted: HashSet<&str> = sent
        .iter()
        .filter(|s| s.1 == 200)
        .map(|s| s.0.as_str())
        .collect();
    assert!(
        accepted.len() > 10,
        "too little load reached the listener: {}",
        accepted.len()
    );
    let broker = Broker::connect().await;
    let queued: HashSet<String> = broker.drain_ids(&names.queue).await.into_iter().collect();
    let lost: Vec<_> = accepted
        .iter()
        .filter(|id| !queued.contains(**id))
        .collect();
    assert!(
        lost.is_empty(),
        "answered 200 but not in the queue: {lost:?}"
    );
    eprintln!(
        "sigterm test: {} sent, {} accepted, {} queued",
        sent.len(),
        accepted.len(),
        queued.len()
    );
}
