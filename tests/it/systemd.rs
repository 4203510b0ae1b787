//! The daemons under systemd's protocols, without systemd as PID 1: the unit files pass
//! `systemd-analyze verify` with the real binaries, and a listener started by
//! `systemd-socket-activate` with `NOTIFY_SOCKET` set serves on the passed socket and reports
//! READY=1, WATCHDOG=1 and STOPPING=1; the request that starts it, which comes before any
//! broker connection, is published. Prerequisite: systemd's tools on PATH (Debian's systemd).

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{
    Broker, Harness, KillOnDrop, admin_get, event, free_addr, metric, sign_with, tempdir,
    terminate, wait_for_file, wait_for_port,
};

fn units_with_real_paths(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for name in [
        "hookwarden-listener.socket",
        "hookwarden-listener.service",
        "hookwarden-worker.service",
    ] {
        let text =
            std::fs::read_to_string(format!("{}/systemd/{name}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        let text = text
            .replace(
                "/usr/bin/hookwarden-listener",
                env!("CARGO_BIN_EXE_hookwarden-listener"),
            )
            .replace(
                "/usr/bin/hookwarden-worker",
                env!("CARGO_BIN_EXE_hookwarden-worker"),
            );
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        out.push(path);
    }
    out
}

#[test]
fn the_unit_files_verify() {
    let dir = tempdir::Dir::new();
    let units = units_with_real_paths(&dir.path);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(&units)
        .output()
        .expect("systemd-analyze on PATH");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_socket_activated_listener_serves_the_passed_socket_and_notifies() {
    let harness = Harness::new();
    let (public, admin) = (free_addr(), free_addr());
    // The config names another port: the listener must use the socket it is given.
    let (dir, path, names) = harness.write_config(free_addr(), admin);
    let notify_path = dir.path.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let child = socket_activate(
        public,
        &path,
        &[
            &format!("NOTIFY_SOCKET={}", notify_path.display()),
            "WATCHDOG_USEC=400000",
        ],
        &dir.path.join("listener.log"),
    );
    let _guard = KillOnDrop(child.id());

    // systemd-socket-activate binds, then spawns the listener on the first connection.
    wait_for_port(public, Duration::from_secs(10)).await;
    // READY=1 comes once it serves and the broker is connected; then a 200 is due.
    let mut seen = String::new();
    let wait_for = |what: &str, seen: &mut String| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && !seen.contains(what) {
            let mut buf = [0u8; 512];
            if let Ok(n) = notify.recv(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                seen.push('\n');
            }
        }
        assert!(
            seen.contains(what),
            "no {what} among notifications: {seen:?}"
        );
    };
    wait_for("READY=1", &mut seen);
    let text = std::fs::read_to_string(&path).unwrap();
    let signer =
        hookwarden::listener::config::ListenerConfig::parse("t.toml", &text, &Default::default())
            .unwrap();
    let body = event("evt_socket");
    let headers = sign_with(
        &signer,
        "dregs",
        body.as_bytes(),
        std::time::SystemTime::now(),
        "id",
    );
    let url = format!("http://{public}/hooks/dregs");
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        hookwarden::cli::http_client::post(&url, &headers, bytes::Bytes::from(body)),
    )
    .await
    .expect("answered in time")
    .expect("served on the passed socket");
    assert_eq!(answer.status, 200, "{}", answer.body);
    wait_for("WATCHDOG=1", &mut seen);

    let exit = terminate(child).await;
    assert_eq!(exit.code(), Some(0));
    wait_for("STOPPING=1", &mut seen);
    let broker = Broker::connect().await;
    assert_eq!(broker.drain_ids(&names.queue).await, vec!["evt_socket"]);
}

/// Starts `systemd-socket-activate` holding `public` for a listener on `config`, its output in
/// `log`. It passes the daemon no environment but `LISTEN_*` and the `env` given (`NAME=value`).
fn socket_activate(
    public: std::net::SocketAddr,
    config: &std::path::Path,
    env: &[&str],
    log: &std::path::Path,
) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    let mut command = Command::new("systemd-socket-activate");
    command.arg("-l").arg(public.to_string());
    for variable in env {
        command.arg("-E").arg(variable);
    }
    command
        .arg(env!("CARGO_BIN_EXE_hookwarden-listener"))
        .arg("--config")
        .arg(config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("systemd-socket-activate on PATH")
}

/// The request that starts a socket-activated listener reaches it before the broker
/// connection is up: it waits for the connection and is published, not refused (without a
/// spool) nor written to disk (with one). Nothing else connects first: the port is known to be
/// held from systemd-socket-activate's own log line, since any probe would start the daemon.
#[tokio::test]
async fn the_request_that_starts_a_socket_activated_listener_is_published() {
    for spooled in [false, true] {
        let spool_dir = tempdir::Dir::new();
        let mut harness = Harness::new();
        if spooled {
            harness = harness.spool(&spool_dir.path.join("spool.db"), "");
        }
        let (public, admin) = (free_addr(), free_addr());
        let (dir, path, names) = harness.write_config(public, admin);
        let log = dir.path.join("listener.log");
        let child = socket_activate(public, &path, &[], &log);
        let _guard = KillOnDrop(child.id());
        wait_for_file(&log, "the port held", Duration::from_secs(10), |text| {
            text.contains(&format!("Listening on {public}"))
        })
        .await;

        let text = std::fs::read_to_string(&path).unwrap();
        let signer = hookwarden::listener::config::ListenerConfig::parse(
            "t.toml",
            &text,
            &Default::default(),
        )
        .unwrap();
        let body = event("evt_first");
        let headers = sign_with(
            &signer,
            "dregs",
            body.as_bytes(),
            std::time::SystemTime::now(),
            "id",
        );
        let url = format!("http://{public}/hooks/dregs");
        let answer = tokio::time::timeout(
            Duration::from_secs(20),
            hookwarden::cli::http_client::post(&url, &headers, bytes::Bytes::from(body)),
        )
        .await
        .expect("answered in time")
        .expect("served on the passed socket");
        assert_eq!(
            answer.status,
            200,
            "spool {spooled}: {}\n{}",
            answer.body,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let broker = Broker::connect().await;
        assert_eq!(
            broker.drain_ids(&names.queue).await,
            vec!["evt_first"],
            "spool {spooled}"
        );
        if spooled {
            // Counted before the answer: one look is enough.
            let (_, metrics) = admin_get(&format!("http://{admin}"), "/metrics").await;
            assert_eq!(
                metric(&metrics, "hookwarden_spooled_total"),
                Some(0.0),
                "published, not spooled"
            );
        }
        let exit = terminate(child).await;
        assert_eq!(exit.code(), Some(0), "spool {spooled}");
    }
}
