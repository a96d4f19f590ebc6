//! Several real `sidestream` processes sharing one test Redis through `[cluster]`: own
//! listen/admin ports each, the same topics, instance ids "a", "b", "c"…, short leases. Each
//! process logs (`RUST_LOG=info,sidestream=debug`) to its own file; when a test fails while a
//! [`Cluster`] is alive, dropping it prints every instance's log and Redis's.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::redis::{kill_9, RedisServer, TempDir};
use super::{free_port, PUBLISH_TOKEN, WAIT};

/// Lease settings short enough that a takeover fits in a test's seconds.
pub const LEASE_TTL_MS: u64 = 1500;
pub const LEASE_RENEW_MS: u64 = 500;

const RUST_LOG: &str = "info,sidestream=debug";

/// One sidestream process of a [`Cluster`].
pub struct Instance {
    pub id: String,
    port: u16,
    admin_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Starts so far (a restart appends to the same log, under a marker line).
    starts: usize,
}

impl Instance {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_none())
    }

    async fn spawn(&mut self) {
        use std::io::Write;
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        writeln!(log, "===== start {} of instance {} =====", self.starts, self.id).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sidestream"))
            .args(["--config", self.config.to_str().unwrap()])
            .env("RUST_LOG", RUST_LOG)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        for port in [self.port, self.admin_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    // (Its log is printed by the cluster's drop.)
                    panic!("instance {} exited ({status}) before listening", self.id);
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "instance {} did not listen on {port} within the bound",
                    self.id
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Listening is not enough: wait for `/ready` (Redis reached, if the core makes
        // readiness depend on it), so a test's first client meets a cluster member.
        while super::get(self.admin_port, "/ready", &[]).await.status != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "instance {} did not turn ready within the bound",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`) with `kill -<name>`.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("the instance runs").id();
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// SIGKILL, no drain: what a crashed pod does.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_9(&mut child);
        }
    }

    /// Starts it again with the same ports and config (killing it first if it runs).
    pub async fn restart(&mut self) {
        self.kill_9();
        self.spawn().await;
    }

    /// Everything it logged so far, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// N instances on one Redis. Dropping it kills them all (and Redis).
pub struct Cluster {
    pub redis: RedisServer,
    pub instances: Vec<Instance>,
    pub key_prefix: String,
    dir: TempDir,
}

/// Redis unreachable this long → degraded (local) mode. Longer than any outage the other
/// tests stage (a 5 s `DEBUG SLEEP`), so only the degraded-mode test, which sets its own, sees it.
pub const FALLBACK_AFTER_MS: u64 = 10_000;

/// `[cluster]` lines for instance `id` (the settings every cluster test shares).
pub fn cluster_section(redis_url: &str, key_prefix: &str, id: &str, fallback_after_ms: u64) -> String {
    format!(
        "[cluster]\nredis_url = \"{redis_url}\"\nkey_prefix = \"{key_prefix}\"\ninstance_id = \"{id}\"\n\
         lease_ttl_ms = {LEASE_TTL_MS}\nlease_renew_ms = {LEASE_RENEW_MS}\n\
         fallback_after_ms = {fallback_after_ms}\n"
    )
}

impl Cluster {
    /// Starts its own Redis and `count` instances (ids "a", "b", "c"…) in front of
    /// `backend_port` with `topics` (`[[topic]]` tables) and `[defaults]` lines, and waits until
    /// each listens on both ports.
    pub async fn start(count: usize, backend_port: u16, defaults: &str, topics: &str) -> Cluster {
        Self::start_on(RedisServer::start().await, count, backend_port, defaults, topics).await
    }

    /// Like [`Cluster::start`], on a given Redis (e.g. a persistent one).
    pub async fn start_on(
        redis: RedisServer,
        count: usize,
        backend_port: u16,
        defaults: &str,
        topics: &str,
    ) -> Cluster {
        Self::start_with_fallback(redis, count, backend_port, defaults, topics, FALLBACK_AFTER_MS).await
    }

    /// Like [`Cluster::start_on`], going degraded after `fallback_after_ms` without Redis.
    pub async fn start_with_fallback(
        redis: RedisServer,
        count: usize,
        backend_port: u16,
        defaults: &str,
        topics: &str,
        fallback_after_ms: u64,
    ) -> Cluster {
        let dir = TempDir::new("cluster");
        // Its own Redis already isolates the test; a distinct prefix too keeps keys readable
        // when one looks at a failed test's Redis by hand.
        let key_prefix = format!("t{}", redis.port());
        let mut instances = Vec::new();
        for index in 0..count {
            let id = char::from(b'a' + u8::try_from(index).unwrap()).to_string();
            let (port, admin_port) = (free_port(), free_port());
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
                 publish_token = \"{PUBLISH_TOKEN}\"\ndrain_timeout_ms = 1000\nthreads = 1\n\n\
                 [upstream]\nbase_url = \"http://127.0.0.1:{backend_port}\"\ntimeout_ms = 1000\n\
                 backoff_initial_ms = 100\nbackoff_max_ms = 800\ncircuit_open_ms = 200\n\n\
                 {}\n[defaults]\n{defaults}\n\n{topics}\n",
                cluster_section(&redis.url(), &key_prefix, &id, fallback_after_ms)
            );
            let config = dir.path().join(format!("{id}.toml"));
            std::fs::write(&config, text).unwrap();
            instances.push(Instance {
                log: dir.path().join(format!("{id}.log")),
                id,
                port,
                admin_port,
                config,
                child: None,
                starts: 0,
            });
        }
        let mut cluster = Cluster {
            redis,
            instances,
            key_prefix,
            dir,
        };
        for instance in &mut cluster.instances {
            instance.spawn().await;
        }
        cluster
    }

    pub fn a(&self) -> &Instance {
        &self.instances[0]
    }

    pub fn b(&self) -> &Instance {
        &self.instances[1]
    }

    pub fn c(&self) -> &Instance {
        &self.instances[2]
    }

    /// The instance with this id.
    pub fn by_id(&mut self, id: &str) -> &mut Instance {
        self.instances
            .iter_mut()
            .find(|i| i.id == id)
            .unwrap_or_else(|| panic!("no instance {id}"))
    }

    /// The ids of the instances holding a lease now (from the `…:lease` keys, whose value is
    /// `<instance-id>:<nonce>`, design §2), one per lease key.
    pub fn lease_holders(&self) -> Vec<String> {
        let mut holders = Vec::new();
        for key in self.redis.keys(&format!("{}*lease*", self.key_prefix)) {
            let value = self.redis.cli(&["--raw", "GET", &key]);
            let value = value.trim();
            if !value.is_empty() {
                holders.push(value.split(':').next().unwrap_or(value).to_string());
            }
        }
        holders
    }

    /// The id of the instance holding the lease of one topic instance (its key id
    /// `name/param…`, e.g. `prices/A` or `ticks`; see `src/cluster/keys.rs`), if any.
    pub fn lease_holder(&self, topic_instance: &str) -> Option<String> {
        let key = format!("{}:{{{topic_instance}}}:lease", self.key_prefix);
        let value = self.redis.cli(&["--raw", "GET", &key]);
        let value = value.trim();
        (!value.is_empty()).then(|| value.split(':').next().unwrap_or(value).to_string())
    }

    /// The last `lines` lines of every instance's log and of Redis's, for a failure message.
    pub fn logs(&self, lines: usize) -> String {
        let mut all = String::new();
        for instance in &self.instances {
            all.push_str(&format!(
                "\n----- instance {} (listen {}, admin {}), last {lines} lines -----\n{}",
                instance.id,
                instance.port,
                instance.admin_port,
                tail(&instance.log(), lines)
            ));
        }
        all.push_str(&format!(
            "\n----- redis (port {}) -----\n{}",
            self.redis.port(),
            tail(&self.redis.log(), lines)
        ));
        all
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for instance in &mut self.instances {
            instance.kill_9();
        }
        if std::thread::panicking() {
            // The whole logs stay in the directory; the failure is usually in the last lines.
            eprintln!(
                "cluster logs (whole files in {}):{}",
                self.dir.path().display(),
                self.logs(400)
            );
        }
    }
}

/// A push topic of events with room for every message of a test (the JSON WebSocket
/// envelope carries each message's cursor).
pub const PUSH_TOPIC: &str = r#"
[[topic]]
name = "alerts"
path = "/alerts/{team}"
mode = "events"
source.push = {}
queue_max_messages = 5000
history_max_messages = 5000
websocket = { envelope = "json" }
"#;

/// An event topic fed by the backend stream `/ticks-source` (a `TickingStream`), with the
/// JSON WebSocket envelope (which carries the cursors).
pub const STREAM_TOPIC: &str = r#"
[[topic]]
name = "ticks"
path = "/ticks"
mode = "events"
source.stream = { url = "/ticks-source" }
queue_max_messages = 5000
history_max_messages = 5000
websocket = { envelope = "json" }
"#;

/// A state topic polled every 200 ms (no jitter) at the backend's `/prices/{symbol}`.
pub const POLL_TOPIC: &str = r#"
[[topic]]
name = "prices"
path = "/prices/{symbol}"
source.poll = { url = "/prices/{symbol}", interval_ms = 200, jitter_ms = 0 }
"#;
