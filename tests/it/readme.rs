//! The README's commands, run as a reader would run them, from the repository root, with the
//! listener, the worker and the sink of the trial running on their documented ports. The
//! few that change the machine or run for minutes are named below with where they are run.
//! Prerequisite: RabbitMQ, python3, curl; ports 8080, 8089, 9090, 9091 free.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{admin_get, eventually, tempdir};

/// Commands not run here, and why.
const ELSEWHERE: &[(&str, &str)] = &[
    ("bash deploy/run-local", "run at the end of this test"),
    (
        "cargo run --bin hookwarden-listener",
        "long-running; this test starts the same listener",
    ),
    (
        "cargo run --bin hookwarden-worker",
        "long-running; this test starts the same worker",
    ),
    ("bash .ci/run", "it is what runs this test"),
    (
        "bash benches/",
        "minutes of load; run by hand for the figures",
    ),
    (
        "systemctl ",
        "needs systemd as PID 1; the units are verified in tests/it/systemd.rs",
    ),
];

/// Commands the README shows failing on purpose, with their exit code.
const FAILING: &[(&str, i32)] = &[("--secret wrong-secret", 1)];

fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh || line.trim().is_empty() {
            continue;
        }
        pending.push_str(line.trim_end_matches('\\'));
        if !line.ends_with('\\') {
            out.push(std::mem::take(&mut pending));
        }
    }
    out
}

struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn every_readme_command_works_as_written() {
    let root = env!("CARGO_MANIFEST_DIR");
    let state = tempdir::Dir::new();
    let mut daemons = Daemons(Vec::new());
    daemons.0.push(
        Command::new("python3")
            .args(["deploy/sink.py", "8089"])
            .current_dir(root)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    daemons.0.push(
        Command::new(env!("CARGO_BIN_EXE_hookwarden-listener"))
            .args(["--config", "listener.toml"])
            .current_dir(root)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    daemons.0.push(
        Command::new(env!("CARGO_BIN_EXE_hookwarden-worker"))
            .args(["--config", "deploy/rules.toml"])
            .env("HOOKWARDEN__STATE__PATH", state.path.join("worker.db"))
            .current_dir(root)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for admin in ["http://127.0.0.1:9090", "http://127.0.0.1:9091"] {
        eventually("daemons ready", Duration::from_secs(20), || async move {
            tokio::net::TcpStream::connect(&admin[7..]).await.is_ok()
                && admin_get(admin, "/readyz").await.0 == 200
        })
        .await;
    }

    let commands = readme_commands();
    assert!(
        commands.len() >= 10,
        "found only {} commands",
        commands.len()
    );
    for command in &commands {
        if let Some((_, why)) = ELSEWHERE
            .iter()
            .find(|(prefix, _)| command.starts_with(prefix))
        {
            eprintln!("not run here ({why}): {command}");
            continue;
        }
        let expected = FAILING
            .iter()
            .find(|(part, _)| command.contains(part))
            .map_or(0, |(_, code)| *code);
        let cmd = command.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .args(["-c", &cmd])
                .current_dir(root)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(
            out.status.code(),
            Some(expected),
            "README command failed: {command}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(daemons);

    // The README's first command: the trial, told to exit once it has shown the actions.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["deploy/run-local"])
            .env("HOOKWARDEN_TRIAL_EXIT", "1")
            .current_dir(root)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("POST /accounts/usr_48213/quarantine"),
        "{text}"
    );
}
