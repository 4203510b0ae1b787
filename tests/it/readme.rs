//! The README's commands, run as a reader would run them, from the repository root: the
//! by-hand section's sink, listener and worker (the commands marked `# terminal N`) started as
//! written and left running while every other command runs; then the trial `deploy/run-local`,
//! kept up while the commands it prints are run, and stopped as Ctrl-C stops it. The few
//! commands that change the machine or run for minutes are named below with where they run.
//! Prerequisite: RabbitMQ, python3, curl; ports 8080, 8089, 9090, 9091 free.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{tail, tempdir, try_admin_get, try_wait_for, wait_for};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The by-hand daemons and the trial bind the same fixed ports and keep their state in the
/// same place (`target/local`), so the tests that start them take turns.
static FIXED_PORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Commands not run by `every_readme_command_works_as_written`, and why.
const ELSEWHERE: &[(&str, &str)] = &[
    (
        "bash deploy/run-local",
        "run and kept up by run_local_prints_commands_that_work_while_it_runs",
    ),
    ("cargo build", "the build of this test made target/debug"),
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

/// How the README marks a command to leave running in a terminal of its own.
const OWN_TERMINAL: &str = "# terminal ";

/// Commands the README shows failing on purpose, with their exit code.
const FAILING: &[(&str, i32)] = &[("--secret wrong-secret", 1)];

/// The example event whose quarantine both the by-hand run and the trial show.
const DREGS_ACTION: &str = "POST /accounts/usr_48213/quarantine";

fn readme() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap()
}

fn readme_commands() -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme().lines() {
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

/// `rust-version` from Cargo.toml.
fn rust_version() -> String {
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("Cargo.toml has a rust-version")
        .to_owned()
}

/// A shell command running from the repository root in a process group of its own, as in a
/// terminal, with stdout and stderr together in one file. Dropping it sends the group
/// SIGTERM, as closing the terminal would end it, and waits for it.
struct Background {
    child: Child,
    log: PathBuf,
}

impl Background {
    fn start(command: &str, log: PathBuf, path_env: Option<&Path>) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("bash");
        cmd.args(["-c", command])
            .current_dir(ROOT)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0);
        if let Some(dir) = path_env {
            cmd.env("PATH", dir);
        }
        Self {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([
                &format!("-{signal}"),
                "--",
                &format!("-{}", self.child.id()),
            ])
            .status();
    }

    /// Waits for the shell to exit; on `deadline`, kills the group and panics with its output.
    async fn exit_within(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        let exited = try_wait_for(deadline, || {
            let verdict = child
                .try_wait()
                .unwrap()
                .ok_or_else(|| "still running".to_owned());
            async move { verdict }
        })
        .await;
        match exited {
            Ok(status) => status,
            Err(_) => {
                self.signal_group("KILL");
                let _ = self.child.wait();
                panic!(
                    "still running after {deadline:?}; its output:\n{}",
                    self.output()
                );
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal_group("TERM");
            let _ = self.child.wait();
        }
    }
}

/// Runs one command as written, in bash from the repository root.
async fn run(command: &str) -> std::process::Output {
    let cmd = command.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-c", &cmd])
            .current_dir(ROOT)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Fails clearly when something else (another checkout's run of these tests, say) holds a
/// fixed port, where the daemons would fail to bind and the other's answer in their place.
fn assert_fixed_ports_free() {
    for port in [8080, 8089, 9090, 9091] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is taken by another process; this test needs 8080, 8089, 9090, 9091"
        );
    }
}

/// Waits for the by-hand listener, worker and sink to serve; on timeout, shows their output.
async fn wait_for_daemons(daemons: &[Background]) {
    let ready = || async {
        for admin in ["http://127.0.0.1:9090", "http://127.0.0.1:9091"] {
            match try_admin_get(admin, "/readyz").await? {
                (200, _) => {}
                (status, why) => return Err(format!("{admin}/readyz {status} {why:?}")),
            }
        }
        tokio::net::TcpStream::connect("127.0.0.1:8089")
            .await
            .map(drop)
            .map_err(|e| format!("the sink at 127.0.0.1:8089: {e}"))
    };
    if let Err(seen) = try_wait_for(Duration::from_secs(30), ready).await {
        let outputs: Vec<String> = daemons.iter().map(Background::output).collect();
        panic!("the by-hand daemons did not get ready ({seen}); their output:\n{outputs:#?}");
    }
}

#[tokio::test]
async fn every_readme_command_works_as_written() {
    let _turn = FIXED_PORTS.lock().await;
    assert_fixed_ports_free();
    // As on a fresh clone: no state from an earlier run, which would make the worker skip
    // the example event as already done.
    let _ = std::fs::remove_dir_all(Path::new(ROOT).join("target/local"));
    let logs = tempdir::Dir::new();
    let commands = readme_commands();
    assert!(
        commands.len() >= 10,
        "found only {} commands",
        commands.len()
    );

    let by_hand: Vec<&String> = commands
        .iter()
        .filter(|c| c.contains(OWN_TERMINAL))
        .collect();
    let sink = by_hand
        .iter()
        .position(|c| c.starts_with("python3 deploy/sink.py"));
    assert!(
        sink.is_some(),
        "the README's by-hand commands do not start the sink (deploy/sink.py): {by_hand:#?}"
    );
    let worker = by_hand
        .iter()
        .position(|c| c.contains("hookwarden-worker"))
        .expect("the README's by-hand commands start the worker");
    assert!(
        by_hand[worker].starts_with("HOOKWARDEN__STATE__PATH=target/local/worker.db "),
        "the by-hand worker keeps its state in target/local: {}",
        by_hand[worker]
    );
    let daemons: Vec<Background> = by_hand
        .iter()
        .enumerate()
        .map(|(i, c)| Background::start(c, logs.path.join(format!("terminal-{i}.log")), None))
        .collect();
    wait_for_daemons(&daemons).await;

    for command in commands.iter().filter(|c| !c.contains(OWN_TERMINAL)) {
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
        let out = run(command).await;
        assert_eq!(
            out.status.code(),
            Some(expected),
            "README command failed: {command}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The first event sent by hand acted: the sink received its quarantine request.
    let sink = &daemons[sink.unwrap()];
    wait_for(
        &format!("the sink receiving {DREGS_ACTION}"),
        Duration::from_secs(15),
        || async {
            let output = sink.output();
            if output.contains(DREGS_ACTION) {
                Ok(())
            } else {
                Err(format!("the sink's output ending:\n{}", tail(&output)))
            }
        },
    )
    .await;
    let worker_log = daemons[worker].output();
    let opened = worker_log
        .lines()
        .find(|l| l.contains("\"message\":\"state store opened\""));
    assert!(
        opened.is_some_and(|l| l.contains("\"path\":\"target/local/worker.db\"")),
        "the worker logs the state file it opened:\n{worker_log}"
    );
}

#[test]
fn readme_prerequisites_name_the_rust_version_curl_and_python3() {
    let text = readme();
    let start = text.find("You need").expect("README lists prerequisites");
    let end = text[start..].find("\n\n").map_or(text.len(), |e| start + e);
    let prerequisites = &text[start..end];
    for needed in [
        format!("Rust {}", rust_version()),
        "`curl`".to_owned(),
        "`python3`".to_owned(),
    ] {
        assert!(
            prerequisites.contains(&needed),
            "the README's prerequisites do not name {needed}:\n{prerequisites}"
        );
    }
}

/// A directory standing in for `PATH`: a link to every program on the real `PATH` that
/// `keep` accepts (the first of each name, as the shell would find it).
fn shadow_path(dir: &Path, keep: impl Fn(&str) -> bool) {
    for entry in std::env::split_paths(&std::env::var_os("PATH").unwrap()) {
        let Ok(programs) = std::fs::read_dir(&entry) else {
            continue;
        };
        for program in programs.flatten() {
            let name = program.file_name();
            let link = dir.join(&name);
            if keep(&name.to_string_lossy()) && !link.exists() {
                let _ = std::os::unix::fs::symlink(program.path(), link);
            }
        }
    }
}

/// Runs `deploy/run-local` with `bin` first on PATH; it must stop with an error within 20 s.
/// Returns what it printed.
async fn run_local_refused(bin: &std::path::Path) -> String {
    let mut trial = Background::start(
        "bash deploy/run-local",
        bin.join("run-local.log"),
        Some(bin),
    );
    let status = trial.exit_within(Duration::from_secs(20)).await;
    let output = trial.output();
    assert!(!status.success(), "{output}");
    output
}

#[tokio::test]
async fn run_local_names_a_missing_prerequisite_before_building() {
    // Were the check missing, the script would go on to start the daemons.
    let _turn = FIXED_PORTS.lock().await;
    for missing in ["python3", "curl"] {
        let bin = tempdir::Dir::new();
        shadow_path(&bin.path, |name| name != missing);
        let output = run_local_refused(&bin.path).await;
        assert!(
            !output.contains("== building"),
            "built before saying {missing} is missing:\n{output}"
        );
        assert!(
            output.contains(&format!("needs {missing}")) && output.contains("apt-get install"),
            "does not say {missing} is missing and how to get it:\n{output}"
        );
    }
}

#[tokio::test]
async fn run_local_refuses_a_rust_older_than_cargo_toml_asks() {
    let _turn = FIXED_PORTS.lock().await;
    let bin = tempdir::Dir::new();
    shadow_path(&bin.path, |name| name != "rustc");
    let fake = bin.path.join("rustc");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'rustc 1.80.1 (3f5fd8dd4 2024-08-06)'\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let output = run_local_refused(&bin.path).await;
    let need = format!("Rust {} or newer", rust_version());
    assert!(
        output.contains(&need) && output.contains("1.80.1") && output.contains("rustup update"),
        "does not say {need} is needed, what it found, and how to update:\n{output}"
    );
    assert!(!output.contains("== building"), "{output}");
}

/// The trial, as the README's first command, left running: the commands it prints for
/// looking at its state work while it runs and are the ones the README shows; cargo's
/// progress reaches the terminal while it builds; Ctrl-C stops it.
#[tokio::test]
async fn run_local_prints_commands_that_work_while_it_runs() {
    let _turn = FIXED_PORTS.lock().await;
    assert_fixed_ports_free();
    let logs = tempdir::Dir::new();
    let mut trial = Background::start(
        "bash deploy/run-local",
        logs.path.join("run-local.log"),
        None,
    );
    // Up to a first build's worth of time, on a busy machine.
    wait_for(
        "run-local to get to running",
        Duration::from_secs(900),
        || {
            let output = trial.output();
            let verdict = if output.contains("== running") {
                Ok(())
            } else if let Some(status) = trial.child.try_wait().unwrap() {
                // Gone without getting there: no use waiting on.
                panic!("run-local exited ({status}) before running:\n{output}")
            } else {
                Err(format!("its output:\n{output}"))
            };
            async move { verdict }
        },
    )
    .await;
    let output = trial.output();
    assert!(output.contains(DREGS_ACTION), "{output}");
    // The sink was listening before the first event: its action went through at once.
    assert!(
        output.contains("quarantine: ok, 1 attempt(s)"),
        "the trial's first action needed retries:\n{output}"
    );
    // Even a build with nothing to do says so; a first build shows each crate it compiles.
    assert!(
        output.contains("Finished `dev` profile"),
        "cargo's progress does not reach the output:\n{output}"
    );

    let printed: Vec<&str> = output
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .filter(|l| l.contains("hookwarden decisions") || l.contains("hookwarden dead-letters"))
        .collect();
    assert!(
        printed.iter().any(|c| c.contains("hookwarden decisions"))
            && printed
                .iter()
                .any(|c| c.contains("hookwarden dead-letters")),
        "run-local does not print the decisions and dead-letters commands:\n{output}"
    );
    let readme = readme();
    for command in printed {
        assert!(
            readme.contains(command),
            "the README does not show the command run-local prints: {command}"
        );
        // The decision record is committed with the worker's batch, a moment after the
        // action's request; a reader quicker than that sees "no decisions" and runs it again.
        wait_for(
            &format!("the printed command to work while run-local runs: {command}"),
            Duration::from_secs(15),
            || async {
                let out = run(command).await;
                let stdout = String::from_utf8_lossy(&out.stdout);
                if out.status.success()
                    && (!command.contains("decisions")
                        || stdout.contains("quarantine-low-humanity"))
                {
                    Ok(())
                } else {
                    Err(format!(
                        "stdout: {stdout}\nstderr: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ))
                }
            },
        )
        .await;
    }
    // The web view's address it prints shows the quarantined subject, with the rule that fired.
    let page = output
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .find(|l| l.contains("/ui/subject"))
        .unwrap_or_else(|| panic!("run-local does not print the web view's address:\n{output}"));
    let path = page.trim_start_matches("http://127.0.0.1:9091");
    let (status, html) = try_admin_get("http://127.0.0.1:9091", path).await.unwrap();
    assert_eq!(status, 200, "{page}: {html}");
    assert!(
        html.contains("quarantine-low-humanity: enforced"),
        "{page} shows the rule that fired: {html}"
    );

    trial.signal_group("INT");
    trial.exit_within(Duration::from_secs(40)).await;
    assert!(trial.output().contains("stopped"), "{}", trial.output());
}
