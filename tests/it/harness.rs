//! Test harness: starts a listener against the real RabbitMQ at `HOOKWARDEN_TEST_AMQP`
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`) with uniquely named exchanges and
//! queues, signs and posts requests, and reads what reached the queue. Names are deleted
//! when the harness drops, also when a test fails.
//!
//! Prerequisite: RabbitMQ running locally (`.ci/run` starts it).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hookwarden::cli::http_client::{self, Answer};
use hookwarden::listener::config::ListenerConfig;
use http::{HeaderName, HeaderValue};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::ShortString;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

/// Every broker await in tests is bounded by this.
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker URL tests use.
pub fn amqp_url() -> String {
    std::env::var("HOOKWARDEN_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The default test provider: HMAC-SHA256, hex, `sha256=` prefix.
pub const DREGS: &str = r#"
name = "dregs"
scheme = "hmac-sha256"
secrets = ["test-secret"]
signature_header = "X-Dregs-Signature"
prefix = "sha256="
"#;

/// Unique topology names for one test; deleted on drop.
pub struct Names {
    pub exchange: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub review_queue: String,
}

impl Names {
    pub fn new() -> Self {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let tag = &tag[..12];
        Self {
            exchange: format!("hwtest.{tag}"),
            queue: format!("hwtest.{tag}.events"),
            dead_letter_exchange: format!("hwtest.{tag}.dlx"),
            dead_letter_queue: format!("hwtest.{tag}.dead"),
            review_queue: format!("hwtest.{tag}.review"),
        }
    }
}

impl Names {
    /// The same names (deleted again when this copy drops: deleting twice is harmless).
    pub fn clone_names(&self) -> Names {
        Names {
            exchange: self.exchange.clone(),
            queue: self.queue.clone(),
            dead_letter_exchange: self.dead_letter_exchange.clone(),
            dead_letter_queue: self.dead_letter_queue.clone(),
            review_queue: self.review_queue.clone(),
        }
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        let queues = [
            self.queue.clone(),
            self.dead_letter_queue.clone(),
            self.review_queue.clone(),
        ];
        let exchanges = [self.exchange.clone(), self.dead_letter_exchange.clone()];
        // Drop may run inside a runtime: clean up from a thread with its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(Ok(conn)) = tokio::time::timeout(
                    BROKER_TIMEOUT,
                    Connection::connect(&amqp_url(), ConnectionProperties::default()),
                )
                .await
                else {
                    return;
                };
                if let Ok(ch) = conn.create_channel().await {
                    for q in queues {
                        let _ = ch
                            .queue_delete(ShortString::from(q), QueueDeleteOptions::default())
                            .await;
                    }
                    for e in exchanges {
                        let _ = ch
                            .exchange_delete(ShortString::from(e), ExchangeDeleteOptions::default())
                            .await;
                    }
                }
                let _ = conn.close(200, "cleanup".into()).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Builds a listener config for one test.
pub struct Harness {
    spool: Option<String>,
    providers: Vec<String>,
    server: Vec<(String, String)>,
    amqp: Vec<(String, String)>,
    env: HashMap<String, String>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        Self {
            spool: None,
            providers: Vec::new(),
            server: Vec::new(),
            amqp: Vec::new(),
            env: HashMap::new(),
        }
    }

    /// Adds a `[[providers]]` entry (its TOML body).
    pub fn provider(mut self, toml: &str) -> Self {
        self.providers.push(toml.to_owned());
        self
    }

    /// Sets a `[server]` key; `value` is a TOML literal (`"2s"`, `1024`).
    pub fn server(mut self, key: &str, value: &str) -> Self {
        self.server.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Enables the spool at `path` (any `[spool]` keys after it as TOML lines).
    pub fn spool(mut self, path: &std::path::Path, extra: &str) -> Self {
        self.spool = Some(format!("[spool]\npath = \"{}\"\n{extra}\n", path.display()));
        self
    }

    /// Sets an `[amqp]` key; `value` is a TOML literal.
    pub fn amqp(mut self, key: &str, value: &str) -> Self {
        self.amqp.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The config text for `names`, listening on `public`/`admin`.
    pub fn config_text(&self, names: &Names, public: SocketAddr, admin: SocketAddr) -> String {
        let mut text = format!(
            "[server]\nlisten = \"{public}\"\nadmin_listen = \"{admin}\"\nshutdown_grace = \"5s\"\n"
        );
        for (k, v) in &self.server {
            text.push_str(&format!("{k} = {v}\n"));
        }
        text.push_str(&format!(
            "[amqp]\nexchange = \"{}\"\nqueue = \"{}\"\ndead_letter_exchange = \"{}\"\ndead_letter_queue = \"{}\"\n",
            names.exchange, names.queue, names.dead_letter_exchange, names.dead_letter_queue
        ));
        if !self.amqp.iter().any(|(k, _)| k == "url") {
            text.push_str(&format!("url = \"{}\"\n", amqp_url()));
        }
        for (k, v) in &self.amqp {
            text.push_str(&format!("{k} = {v}\n"));
        }
        if let Some(spool) = &self.spool {
            text.push_str(spool);
        }
        let providers = if self.providers.is_empty() {
            vec![DREGS.to_owned()]
        } else {
            self.providers.clone()
        };
        for p in providers {
            text.push_str("[[providers]]\n");
            text.push_str(&p);
            text.push('\n');
        }
        text
    }

    /// Starts the listener in this process on ephemeral ports, and waits for the broker
    /// (unless the config points at an unreachable one).
    pub async fn start(self) -> TestListener {
        self.start_with_names(Names::new()).await
    }

    /// Starts on the topology of an earlier listener (a restart).
    pub async fn start_with_names(self, names: Names) -> TestListener {
        let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (public_addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
        let text = self.config_text(&names, public_addr, admin_addr);
        let config = ListenerConfig::parse("test.toml", &text, &self.env).unwrap();
        let signers = ListenerConfig::parse("test.toml", &text, &self.env).unwrap();
        let shutdown = CancellationToken::new();
        let running = hookwarden::listener::start(config, public, admin, shutdown.clone()).unwrap();
        let expect_broker = !self.amqp.iter().any(|(k, _)| k == "url");
        if expect_broker {
            assert!(
                running.publisher.wait_connected(BROKER_TIMEOUT).await,
                "listener did not connect to the broker"
            );
        }
        TestListener {
            base: format!("http://{public_addr}"),
            admin: format!("http://{admin_addr}"),
            addr: public_addr,
            signers,
            config_text: text,
            shutdown,
            running: Some(running),
            names,
        }
    }

    /// Writes a config file for a listener process; returns its path and the names.
    pub fn write_config(
        &self,
        public: SocketAddr,
        admin: SocketAddr,
    ) -> (tempdir::Dir, PathBuf, Names) {
        let names = Names::new();
        let dir = tempdir::Dir::new();
        let path = dir.path.join("listener.toml");
        std::fs::write(&path, self.config_text(&names, public, admin)).unwrap();
        (dir, path, names)
    }
}

/// A free loopback port (bound, then released) for process tests.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub mod tempdir {
    use std::path::PathBuf;

    /// A temporary directory removed on drop.
    pub struct Dir {
        pub path: PathBuf,
    }

    impl Dir {
        pub fn new() -> Self {
            let path =
                std::env::temp_dir().join(format!("hwtest-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&path).unwrap();
            Self { path }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Headers `provider` as configured in `config` would send for `body` at `at`; `id` is the
/// event id, for the schemes that sign one.
pub fn sign_with(
    config: &ListenerConfig,
    provider: &str,
    body: &[u8],
    at: SystemTime,
    id: &str,
) -> Vec<(HeaderName, HeaderValue)> {
    let p = config
        .provider(provider)
        .unwrap_or_else(|| panic!("provider {provider} configured"));
    p.scheme.sign(&p.keys[0], body, at, id).unwrap()
}

/// A listener running in this test process.
pub struct TestListener {
    pub base: String,
    pub admin: String,
    pub addr: SocketAddr,
    signers: ListenerConfig,
    config_text: String,
    shutdown: CancellationToken,
    pub running: Option<hookwarden::listener::Running>,
    pub names: Names,
}

impl TestListener {
    /// Headers `provider` would send for `body`, signed now.
    pub fn sign(&self, provider: &str, body: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
        self.sign_at(provider, body, SystemTime::now())
    }

    /// Headers `provider` would send for `body`, signed at `at`.
    pub fn sign_at(
        &self,
        provider: &str,
        body: &[u8],
        at: SystemTime,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        sign_with(&self.signers, provider, body, at, &id)
    }

    /// POSTs `body` signed by `provider` to its route.
    pub async fn send(&self, provider: &str, body: &str) -> Answer {
        let headers = self.sign(provider, body.as_bytes());
        self.post(&format!("/hooks/{provider}"), &headers, body)
            .await
    }

    /// POSTs with exactly these headers.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: &str,
    ) -> Answer {
        http_client::post(
            &format!("{}{path}", self.base),
            headers,
            Bytes::from(body.to_owned()),
        )
        .await
        .unwrap()
    }

    /// The config text this listener runs (for building signers elsewhere).
    pub fn config_text_for_signing(&self) -> String {
        self.config_text.clone()
    }

    /// Stops the listener and waits until it has.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(15), running.done)
                .await
                .expect("listener stopped in time")
                .unwrap();
        }
    }
}

impl Drop for TestListener {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A JSON event body with this id.
pub fn event(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"identity.scored","data":{{"identity_id":"usr_1","scores":{{"humanity":22}}}}}}"#
    )
}

/// The JSON of an answer's body.
pub fn json(answer: &Answer) -> serde_json::Value {
    serde_json::from_str(&answer.body).unwrap_or_else(|_| panic!("not JSON: {}", answer.body))
}

/// An inspection connection to the broker.
pub struct Broker {
    pub connection: Connection,
    pub channel: Channel,
}

impl Broker {
    pub async fn connect() -> Self {
        let connection = tokio::time::timeout(
            BROKER_TIMEOUT,
            Connection::connect(&amqp_url(), ConnectionProperties::default()),
        )
        .await
        .expect("broker connect timed out")
        .expect("broker reachable");
        let channel = connection.create_channel().await.unwrap();
        Self {
            connection,
            channel,
        }
    }

    /// Takes one message off `queue` (acked), if any.
    pub async fn get(&self, queue: &str) -> Option<BasicGetMessage> {
        tokio::time::timeout(
            BROKER_TIMEOUT,
            self.channel
                .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic_get timed out")
        .unwrap()
    }

    /// Takes every message off `queue`.
    pub async fn drain(&self, queue: &str) -> Vec<BasicGetMessage> {
        let mut out = Vec::new();
        while let Some(m) = self.get(queue).await {
            out.push(m);
        }
        out
    }

    /// The event ids (message ids) of every message on `queue`.
    pub async fn drain_ids(&self, queue: &str) -> Vec<String> {
        self.drain(queue)
            .await
            .into_iter()
            .filter_map(|m| {
                m.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
            })
            .collect()
    }
}

/// GETs an admin path; returns status and body.
pub async fn admin_get(base: &str, path: &str) -> (u16, String) {
    try_admin_get(base, path)
        .await
        .unwrap_or_else(|err| panic!("GET {base}{path}: {err}"))
}

/// GETs an admin path, or says why it could not (for a server that may not be up yet).
pub async fn try_admin_get(base: &str, path: &str) -> Result<(u16, String), String> {
    let uri: http::Uri = format!("{base}{path}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let host = uri.authority().ok_or("no host in the URL")?.to_string();
    let stream = tokio::net::TcpStream::connect(&host)
        .await
        .map_err(|e| format!("cannot connect to {host}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = http::Request::get(uri)
        .header(http::header::HOST, host)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends raw bytes on a new connection and returns whatever comes back before the server
/// closes or `wait` passes.
pub async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// How long a wait lets pass between two looks at its condition.
const POLL: Duration = Duration::from_millis(50);

/// Looks at `check` until it gives `Ok`, or `within` has passed: then `Err` with what it
/// last saw. `check` answers `Err(what it saw)` while the condition does not hold yet; a look
/// that does not return before the deadline counts as one that did not hold.
pub async fn try_wait_for<T, F, Fut>(within: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = match tokio::time::timeout_at(deadline, check()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(seen)) => seen,
            Err(_) => "a look that had not returned at the deadline".to_owned(),
        };
        if tokio::time::Instant::now() + POLL >= deadline {
            return Err(seen);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `check` gives `Ok` and returns its value; after `within`, fails saying what it
/// waited for and what `check` last saw. The one way these tests wait for a condition.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    match try_wait_for(within, check).await {
        Ok(value) => value,
        Err(seen) => panic!("waited {within:?} for {what}; last saw: {seen}"),
    }
}

/// What a metric's value must come to.
#[derive(Clone, Copy, Debug)]
pub enum Want {
    Equal(f64),
    AtLeast(f64),
}

impl Want {
    fn holds(self, value: f64) -> bool {
        match self {
            Want::Equal(want) => value == want,
            Want::AtLeast(want) => value >= want,
        }
    }
}

impl std::fmt::Display for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Want::Equal(want) => write!(f, "= {want}"),
            Want::AtLeast(want) => write!(f, ">= {want}"),
        }
    }
}

/// The value of one series in a Prometheus text exposition; `series` is the name with its
/// labels exactly as exposed (`hookwarden_requests_total{provider="dregs",status="200"}`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
}

/// Waits until `series` on the `/metrics` of the admin server at `admin` (a base URL) is as
/// `want` says; returns its value. Works on a daemon not yet listening: that is what it saw.
pub async fn wait_for_metric(admin: &str, series: &str, want: Want, within: Duration) -> f64 {
    wait_for(&format!("{series} {want}"), within, || async move {
        let (status, text) = try_admin_get(admin, "/metrics").await?;
        match metric(&text, series) {
            Some(value) if want.holds(value) => Ok(value),
            Some(value) => Err(format!("{series} {value}")),
            None => Err(format!("no {series} in /metrics (status {status})")),
        }
    })
    .await
}

/// Waits until something accepts TCP connections at `addr`.
pub async fn wait_for_port(addr: SocketAddr, within: Duration) {
    wait_for(&format!("{addr} accepting"), within, || async move {
        tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;
}

/// Waits until the text of the file at `path` (a daemon's log, say) passes `check`; returns
/// the text. On timeout, shows the file's last lines.
pub async fn wait_for_file(
    path: &std::path::Path,
    what: &str,
    within: Duration,
    check: impl Fn(&str) -> bool,
) -> String {
    let check = &check;
    wait_for(what, within, || async move {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if check(&text) {
            Ok(text)
        } else {
            Err(format!("{} ending:\n{}", path.display(), tail(&text)))
        }
    })
    .await
}

/// The last lines of `text`, for a failure message.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A message header as text.
pub fn header(props: &lapin::BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => {
            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        other => Some(format!("{other:?}")),
    }
}

/// Waits for a message on `queue` and takes it.
pub async fn eventually_get(broker: &Broker, queue: &str) -> BasicGetMessage {
    wait_for(
        &format!("a message on {queue}"),
        Duration::from_secs(15),
        || async move { broker.get(queue).await.ok_or("the queue empty".to_owned()) },
    )
    .await
}

/// A TCP proxy in front of the broker that a test can cut (closing every connection and
/// refusing new ones) and restore.
pub struct Proxy {
    pub addr: SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Connections accepted so far, numbered from 1.
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Connections numbered up to this forward nothing (see [`Proxy::freeze`]).
    frozen_upto: std::sync::Arc<std::sync::atomic::AtomicU64>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let frozen_upto = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (u, a, f, c, target) = (
            up.clone(),
            accepted.clone(),
            frozen_upto.clone(),
            connections.clone(),
            target.to_owned(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused in effect
                }
                let mine = a.fetch_add(1, Ordering::SeqCst) + 1;
                let (target, f) = (target.clone(), f.clone());
                let handle = tokio::spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(&target).await {
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let alive = move || f.load(Ordering::SeqCst) < mine;
                        tokio::join!(pump(cr, sw, alive.clone()), pump(sr, cw, alive));
                    }
                });
                c.lock().unwrap().push(handle);
            }
        });
        Self {
            addr,
            up,
            accepted,
            frozen_upto,
            connections,
            task,
        }
    }

    /// The broker URL through this proxy.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Cuts every connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for h in self.connections.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Refuses new connections, leaving the open ones as they are.
    pub fn refuse_new(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every connection open now goes silent for good, in both directions, with its sockets
    /// left open: what a peer sees when a NAT entry, a firewall or a wedged broker drops its
    /// traffic. Nobody is told; only a heartbeat or a probe finds out. New connections work.
    pub fn freeze(&self) {
        use std::sync::atomic::Ordering;
        self.frozen_upto
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while `alive()`; once not, holds both ends open and silent.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    alive: impl Fn() -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout(Duration::from_millis(100), from.read(&mut buf)).await {
            Err(_) if alive() => continue,
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        if !alive() {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    // Frozen: keep the sockets (and so the peers' connections) open, forwarding nothing.
    let _held = (from, to);
    std::future::pending::<()>().await;
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.down();
    }
}

/// Kills a spawned process (SIGKILL) when dropped, so a failing test leaves nothing running.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Only ours: a pid reaped earlier may since belong to another process.
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains("hookwarden") {
            return;
        }
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Starts a daemon binary on `config` with its stdout and stderr written to `log`.
pub fn spawn_logged(
    bin: &str,
    config: &std::path::Path,
    log: &std::path::Path,
) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    std::process::Command::new(bin)
        .arg("--config")
        .arg(config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Sends `child` a signal (`-TERM`, `-HUP`, `-KILL`).
pub fn signal(child: &std::process::Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {}", child.id());
}

/// SIGTERM, then its exit status, waited for off the runtime's threads.
pub async fn terminate(mut child: std::process::Child) -> std::process::ExitStatus {
    signal(&child, "-TERM");
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap()
}

/// Runs `hookwarden ARGS` to its end (at most 60 s) without blocking the runtime: a worker
/// in this process must go on meanwhile.
pub async fn run_cli(args: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookwarden"))
        .args(args)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("hookwarden {args:?} still running after 60 s"))
        .expect("hookwarden ran")
}

/// A command's exit status and output, for a failure message.
pub fn explain(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
