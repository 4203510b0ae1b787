//! Command actions: run a program directly (no shell) with a deadline, bounded output capture,
//! and on timeout a kill of its whole process group, reporting the result instead of failing.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// After a timeout kill, how long to wait for the process to be reaped and the pipes to close
/// (a process that left the group with `setsid` can keep them open; we stop waiting).
const KILL_GRACE: Duration = Duration::from_millis(500);
/// Read size for the output pipes.
const READ_CHUNK: usize = 8 * 1024;

/// What happened to a command. `error` is set whenever `ok` is false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// Exited with status 0 within the deadline.
    pub ok: bool,
    /// `None` if the process could not start or was ended by a signal.
    pub exit_code: Option<i32>,
    /// The deadline passed before it exited and closed its output; its group was killed.
    pub timed_out: bool,
    /// At most `max_output` bytes, lossy UTF-8.
    pub stdout: String,
    /// At most `max_output` bytes, lossy UTF-8.
    pub stderr: String,
    /// One-line reason for failure (start error, exit status, signal, timeout); `None` if `ok`.
    pub error: Option<String>,
}

impl ExecOutcome {
    fn failed(error: String) -> Self {
        ExecOutcome {
            ok: false,
            exit_code: None,
            timed_out: false,
            stdout: String::new(),
            stderr: String::new(),
            error: Some(error),
        }
    }
}

/// Runs `argv[0]` with `argv[1..]` directly (never through a shell). Never panics.
///
/// - Environment: the daemon's own environment plus `env` (which overrides); a bare program
///   name is looked up in the daemon's `PATH` (or in `env`'s `PATH` if it sets one).
/// - stdin is `/dev/null`; stdout and stderr are captured up to `max_output` bytes each, and
///   the rest is read and discarded so the child never blocks on a full pipe.
/// - The child leads a new process group. If it has not exited *and* closed its output by
///   `timeout`, the whole group gets SIGKILL (so `sh -c` scripts don't leave children behind)
///   and `timed_out` is set. Background processes still running after a normal exit, with
///   their output redirected elsewhere, are left alone.
/// - `ok` = exited with status 0 within the deadline.
/// - If the returned future is dropped early, the process group is killed as well.
pub async fn run(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
    max_output: usize,
) -> ExecOutcome {
    let Some((program, args)) = argv.split_first() else {
        return ExecOutcome::failed("empty command".to_owned());
    };
    if let Some((key, _)) = env
        .iter()
        .find(|(k, _)| k.is_empty() || k.contains(['=', '\0']))
    {
        // std would pass such a name through and the child would see a different variable.
        return ExecOutcome::failed(format!("invalid environment variable name {key:?}"));
    }

    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);

    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return ExecOutcome::failed(format!("cannot run {program:?}: {err}")),
    };
    let mut group = GroupGuard(child.id());
    let mut stdout_pipe = child.stdout.take();
    let mut stderr_pipe = child.stderr.take();
    // Buffers live out here so what was read survives the timeout cancelling the readers.
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());

    let deadline = Instant::now() + timeout;
    let finished = tokio::time::timeout_at(deadline, async {
        let (status, (), ()) = tokio::join!(
            child.wait(),
            drain(stdout_pipe.as_mut(), &mut stdout, max_output),
            drain(stderr_pipe.as_mut(), &mut stderr, max_output),
        );
        status
    })
    .await;

    let (status, timed_out) = match finished {
        Ok(Ok(status)) => {
            // Reaped and the pipes are closed: nothing of ours is left to kill.
            group.disarm();
            (Some(status), false)
        }
        Ok(Err(err)) => {
            group.kill();
            let _ = child.start_kill();
            return ExecOutcome {
                stdout: lossy(&stdout),
                stderr: lossy(&stderr),
                ..ExecOutcome::failed(format!("waiting for {program:?} failed: {err}"))
            };
        }
        Err(_elapsed) => {
            group.kill();
            let _ = child.start_kill();
            // Reap the child and collect what the pipes still hold; bounded in case a
            // process escaped the group and keeps a pipe open.
            let reaped = tokio::time::timeout(KILL_GRACE, async {
                let (status, (), ()) = tokio::join!(
                    child.wait(),
                    drain(stdout_pipe.as_mut(), &mut stdout, max_output),
                    drain(stderr_pipe.as_mut(), &mut stderr, max_output),
                );
                status
            })
            .await;
            (reaped.ok().and_then(Result::ok), true)
        }
    };

    let exit_code = status.and_then(|s| s.code());
    let ok = !timed_out && status.is_some_and(|s| s.success());
    let error = if timed_out {
        Some(format!("timed out after {timeout:?}; process group killed"))
    } else {
        status.and_then(describe_failure)
    };
    ExecOutcome {
        ok,
        exit_code,
        timed_out,
        stdout: lossy(&stdout),
        stderr: lossy(&stderr),
        error,
    }
}

fn describe_failure(status: ExitStatus) -> Option<String> {
    if status.success() {
        return None;
    }
    if let Some(code) = status.code() {
        return Some(format!("exited with status {code}"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return Some(format!("killed by signal {signal}"));
        }
    }
    Some(format!("failed: {status}"))
}

/// Reads `pipe` to EOF, appending to `kept` until it holds `max` bytes and discarding the rest.
/// Appends as it goes, so a cancelled drain leaves what it read in `kept`, and a later drain
/// of the same pipe continues where it stopped.
async fn drain<R: AsyncRead + Unpin>(pipe: Option<&mut R>, kept: &mut Vec<u8>, max: usize) {
    let Some(pipe) = pipe else { return };
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Lossy UTF-8, without a replacement character for a sequence cut by the byte limit.
fn lossy(bytes: &[u8]) -> String {
    let mut end = bytes.len();
    for back in 1..=bytes.len().min(3) {
        let i = bytes.len() - back;
        let byte = bytes[i];
        if byte & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let needed = match byte {
            0xF0..=0xF4 => 4,
            0xE0..=0xEF => 3,
            0xC2..=0xDF => 2,
            _ => 1, // ASCII or never valid as a lead byte: not a cut sequence
        };
        if needed > back {
            end = i;
        }
        break;
    }
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Kills the child's process group (its pgid is its pid, from `process_group(0)`) when
/// dropped while armed, covering cancellation of `run`'s future.
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }

    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            kill_group(pid);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(unix)]
fn kill_group(pid: u32) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    // pid 0 or 1 would mean "our own group" or "every process": never signal those.
    let Ok(pgid) = i32::try_from(pid) else {
        return;
    };
    if pgid > 1 {
        // The group outlives the leader while members hold its pipes, so the pgid is ours.
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

#[cfg(not(unix))]
fn kill_group(_pid: u32) {
    // No process groups: `start_kill`/`kill_on_drop` end the direct child only.
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    const T: Duration = Duration::from_secs(10);
    const MAX: usize = 64 * 1024;

    #[tokio::test]
    async fn echo_ok() {
        let out = run(&argv(&["/bin/echo", "hello"]), &[], T, MAX).await;
        assert_eq!(
            out,
            ExecOutcome {
                ok: true,
                exit_code: Some(0),
                timed_out: false,
                stdout: "hello\n".into(),
                stderr: String::new(),
                error: None,
            }
        );
    }

    #[tokio::test]
    async fn nonzero_exit_not_ok() {
        let out = run(
            &argv(&["/bin/sh", "-c", "echo oops >&2; exit 3"]),
            &[],
            T,
            MAX,
        )
        .await;
        assert!(!out.ok);
        assert_eq!(out.exit_code, Some(3));
        assert!(!out.timed_out);
        assert_eq!(out.stderr, "oops\n");
        assert_eq!(out.error.as_deref(), Some("exited with status 3"));
    }

    #[tokio::test]
    async fn timeout_kills_quickly() {
        let started = std::time::Instant::now();
        let out = run(&argv(&["sleep", "5"]), &[], Duration::from_millis(200), MAX).await;
        assert!(out.timed_out, "{out:?}");
        assert!(!out.ok);
        assert_eq!(out.exit_code, None);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn timeout_kills_grandchildren() {
        // The shell prints its background child's pid, then waits; both must die.
        let started = std::time::Instant::now();
        let out = run(
            &argv(&["/bin/sh", "-c", "sleep 30 & echo $!; wait"]),
            &[],
            Duration::from_millis(300),
            MAX,
        )
        .await;
        assert!(out.timed_out, "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let pid: u32 = out.stdout.trim().parse().unwrap();
        let gone = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // Killed but not yet reaped by init still counts as gone.
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .unwrap()
                .trim_start()
                .starts_with('Z'),
        };
        let mut waited = Duration::ZERO;
        while !gone() && waited < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
        assert!(gone(), "grandchild {pid} survived the timeout");
    }

    #[tokio::test]
    async fn output_truncated_and_rest_discarded() {
        let out = run(&argv(&["head", "-c", "100000", "/dev/zero"]), &[], T, 1000).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.stdout.len(), 1000);
        let out = run(
            &argv(&["/bin/sh", "-c", "head -c 300000 /dev/zero >&2; echo done"]),
            &[],
            T,
            10,
        )
        .await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.stderr.len(), 10);
        assert_eq!(out.stdout, "done\n");
        let out = run(&argv(&["/bin/echo", "hi"]), &[], T, 0).await;
        assert!(out.ok);
        assert_eq!(out.stdout, "");
    }

    #[tokio::test]
    async fn missing_program_is_error() {
        let out = run(&argv(&["/nonexistent/hookwarden-test"]), &[], T, MAX).await;
        assert!(!out.ok);
        assert_eq!(out.exit_code, None);
        let err = out.error.unwrap();
        assert!(err.starts_with("cannot run"), "{err}");
    }

    #[tokio::test]
    async fn empty_argv_is_error() {
        let out = run(&[], &[], T, MAX).await;
        assert!(!out.ok);
        assert_eq!(out.error.as_deref(), Some("empty command"));
    }

    #[tokio::test]
    async fn arguments_are_literal() {
        let evil = "x; rm -rf / $(id) `id` | cat && echo pwned";
        let out = run(&argv(&["/bin/echo", evil]), &[], T, MAX).await;
        assert!(out.ok);
        assert_eq!(out.stdout, format!("{evil}\n"));
    }

    #[tokio::test]
    async fn env_is_passed_and_validated() {
        let env = vec![("HOOKWARDEN_TEST".to_owned(), "a b; c".to_owned())];
        let out = run(
            &argv(&["/bin/sh", "-c", "printf %s \"$HOOKWARDEN_TEST\""]),
            &env,
            T,
            MAX,
        )
        .await;
        assert_eq!(out.stdout, "a b; c");
        let bad = vec![("A=B".to_owned(), "x".to_owned())];
        let out = run(&argv(&["/bin/true"]), &bad, T, MAX).await;
        assert!(!out.ok);
        assert!(
            out.error
                .unwrap()
                .contains("invalid environment variable name")
        );
        let nul = vec![("A".to_owned(), "x\0y".to_owned())];
        let out = run(&argv(&["/bin/true"]), &nul, T, MAX).await;
        assert!(!out.ok);
        assert!(out.error.is_some());
    }

    #[tokio::test]
    async fn stdin_is_null() {
        // `cat` would hang on an inherited terminal/pipe; with /dev/null it ends at once.
        let out = run(&argv(&["cat"]), &[], Duration::from_secs(5), MAX).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.stdout, "");
    }

    #[test]
    fn lossy_trims_cut_char() {
        assert_eq!(lossy(&"a€".as_bytes()[..2]), "a");
        assert_eq!(lossy("a€".as_bytes()), "a€");
        assert_eq!(lossy(b"\xff"), "\u{fffd}");
    }
}
