//! A daemon binary run as a process, as systemd runs it: its stdout and stderr lines are
//! collected as they come, and it is stopped with SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{KillOnDrop, wait_for};

/// A daemon process whose stdout and stderr lines are collected as they come.
pub struct Daemon {
    name: &'static str,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    _kill: KillOnDrop,
}

impl Daemon {
    pub fn spawn(name: &'static str, bin: &str, config: &Path) -> Self {
        Self::spawn_with_env(name, bin, config, &[])
    }

    /// Spawns with `env` added to the environment.
    pub fn spawn_with_env(
        name: &'static str,
        bin: &str,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            // The level the shipped configs use, whatever the test runner's environment says.
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|stream| {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            })
        })
        .collect();
        let kill = KillOnDrop(child.id());
        Self {
            name,
            child,
            lines,
            readers,
            _kill: kill,
        }
    }

    /// Waits until a line it wrote contains `part`.
    pub async fn wait_for(&self, part: &str) {
        wait_for(
            &format!("the {} to log {part}", self.name),
            Duration::from_secs(20),
            || {
                let lines = self.lines.lock().unwrap();
                let verdict = if lines.iter().any(|l| l.contains(part)) {
                    Ok(())
                } else {
                    Err(format!(
                        "its last lines: {:#?}",
                        &lines[lines.len().saturating_sub(10)..]
                    ))
                };
                async move { verdict }
            },
        )
        .await;
    }

    /// SIGTERM, the exit, and every line it wrote.
    pub async fn stop(mut self) -> Vec<String> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let child = &mut self.child;
        let name = self.name;
        wait_for(
            &format!("the {name} to exit"),
            Duration::from_secs(30),
            || {
                let verdict = match child.try_wait() {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("still running".to_owned()),
                    Err(err) => Err(err.to_string()),
                };
                async move { verdict }
            },
        )
        .await;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}
