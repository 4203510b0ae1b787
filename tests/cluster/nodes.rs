//! A RabbitMQ cluster of its own for one test: three nodes started on this machine beside the
//! shared broker (own node names, AMQP and distribution ports, data directories), joined, and
//! stopped and removed when dropped, also when the test fails.

use std::path::PathBuf;
use std::process::Command;

/// One node of the test's cluster.
pub struct Node {
    pub name: String,
    pub port: u16,
}

/// Three clustered nodes; dropped, they are stopped and their data removed.
pub struct Cluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

/// Runs `rabbitmqctl` against `node`; panics with its output when it fails.
pub fn ctl(node: &str, args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .arg("-n")
        .arg(node)
        .args(args)
        .output()
        .expect("rabbitmqctl on PATH");
    assert!(
        out.status.success(),
        "rabbitmqctl -n {node} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// Starts three nodes and joins the second and third to the first. Blocking (a minute
    /// or so): call it from `spawn_blocking`.
    pub fn start() -> Self {
        // Ports and names apart from the shared broker's (5672) and from another run's.
        let base = 5700 + (std::process::id() % 90) as u16 * 3;
        let tag = std::process::id();
        let dir = std::env::temp_dir().join(format!("hwcluster-{tag}"));
        let mut cluster = Self {
            nodes: Vec::new(),
            dir: dir.clone(),
        };
        for i in 0..3u16 {
            let name = format!("hwt{tag}n{i}@localhost");
            let port = base + i;
            let home = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&home).unwrap();
            std::fs::write(
                home.join("rabbitmq.conf"),
                format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"),
            )
            .unwrap();
            std::fs::write(home.join("enabled_plugins"), "[].\n").unwrap();
            // The node runs as the rabbitmq user, like the shared broker (same Erlang cookie).
            let owned = Command::new("chown")
                .args(["-R", "rabbitmq:rabbitmq"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(owned.success(), "chown {}", dir.display());
            let env = [
                ("RABBITMQ_NODENAME", name.clone()),
                ("RABBITMQ_NODE_PORT", port.to_string()),
                ("RABBITMQ_DIST_PORT", (port + 20000).to_string()),
                (
                    "RABBITMQ_CONFIG_FILE",
                    home.join("rabbitmq").display().to_string(),
                ),
                (
                    "RABBITMQ_MNESIA_BASE",
                    home.join("mnesia").display().to_string(),
                ),
                ("RABBITMQ_LOG_BASE", home.join("log").display().to_string()),
                (
                    "RABBITMQ_ENABLED_PLUGINS_FILE",
                    home.join("enabled_plugins").display().to_string(),
                ),
                ("RABBITMQ_PID_FILE", home.join("pid").display().to_string()),
            ];
            let started = Command::new("su")
                .args([
                    "rabbitmq",
                    "-s",
                    "/bin/sh",
                    "-c",
                    "/usr/lib/rabbitmq/bin/rabbitmq-server -detached",
                ])
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .status()
                .unwrap();
            assert!(started.success(), "starting {name}");
            cluster.nodes.push(Node { name, port });
        }
        for node in &cluster.nodes {
            // `-detached` returns before the node's VM is up, and `await_startup` gives up on
            // a node that is not running yet: wait for it to answer a ping first.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
            while !Command::new("rabbitmqctl")
                .args(["-n", &node.name, "-q", "ping"])
                .output()
                .is_ok_and(|o| o.status.success())
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} did not start (log in {})",
                    node.name,
                    dir.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            ctl(&node.name, &["-t", "120", "await_startup"]);
        }
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            ctl(&node.name, &["stop_app"]);
            ctl(&node.name, &["join_cluster", &first]);
            ctl(&node.name, &["start_app"]);
        }
        cluster
    }

    /// The AMQP URL of each node, in order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", n.port))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = Command::new("rabbitmqctl")
                .args(["-n", &node.name, "stop"])
                .output();
        }
        // A node still booting (a test that failed early) does not answer `stop`: its VM is
        // found by the node name in its environment (its command line does not carry it).
        let names: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("RABBITMQ_NODENAME={}", n.name))
            .collect();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            let ours = environ
                .split(|&b| b == 0)
                .any(|var| names.iter().any(|n| var == n.as_bytes()));
            if ours {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(entry.file_name())
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
