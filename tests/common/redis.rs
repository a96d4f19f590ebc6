//! A `redis-server` of the test's own: a free loopback port, no persistence, its own directory
//! and log. Tests that need Redis fail with a clear message when `redis-server` is missing —
//! they never skip silently (CI installs it, see `.ci/run`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, WAIT};

/// A private directory under the system temp dir, removed on drop (no `tempfile` crate for
/// one directory).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "sidestream-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Panics (never skips) when a program the cluster tests need is not on `PATH`.
pub fn require_program(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} is missing: apt-get install -y redis-server (the cluster tests need it; \
         .ci/run installs it)"
    );
}

/// Sends SIGKILL and reaps the process.
pub fn kill_9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A running `redis-server`. Dropping it kills it.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// `appendonly yes` (`appendfsync always`): a restart comes back with every write.
    persistent: bool,
    /// `enable-debug-command yes`, for `DEBUG SLEEP`.
    debuggable: bool,
}

impl RedisServer {
    /// Starts `redis-server` on `127.0.0.1` and a free port and waits (bounded) until it
    /// answers `PING`.
    pub async fn start() -> RedisServer {
        Self::start_with(false).await
    }

    /// Like [`RedisServer::start`], with `DEBUG` commands enabled (`DEBUG SLEEP`).
    pub async fn start_debuggable() -> RedisServer {
        let mut server = Self::new(false);
        server.debuggable = true;
        server.spawn().await;
        server
    }

    /// Like [`RedisServer::start`], with an append-only file fsynced on every write, kept
    /// across [`RedisServer::restart`] (a restart then changes only Redis's `run_id`).
    pub async fn start_persistent() -> RedisServer {
        Self::start_with(true).await
    }

    async fn start_with(persistent: bool) -> RedisServer {
        let mut server = Self::new(persistent);
        server.spawn().await;
        server
    }

    fn new(persistent: bool) -> RedisServer {
        require_program("redis-server");
        require_program("redis-cli");
        RedisServer {
            port: free_port(),
            dir: TempDir::new("redis"),
            child: None,
            persistent,
            debuggable: false,
        }
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                if self.persistent { "yes" } else { "no" },
                "--appendfsync",
                "always",
            ])
            .args(if self.debuggable {
                &["--enable-debug-command", "yes"][..]
            } else {
                &[]
            })
            .args(["--daemonize", "no", "--protected-mode", "no", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if self
                .try_cli(&["PING"])
                .is_some_and(|answer| answer.trim() == "PONG")
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "redis-server exited ({status}) before answering PING:\n{}",
                    self.log()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not answer PING on port {} within the bound:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// What the server logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `redis-cli -p P args…`: its standard output (one line per reply element).
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed on port {}", self.port))
    }

    /// The keys matching `pattern` (`KEYS`: fine on a test's own small Redis).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["--raw", "KEYS", pattern])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// SIGKILL: no persistence, so everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_9(&mut child);
        }
    }

    /// Kills it (if running) and starts it again on the same port: empty, or (persistent)
    /// with everything it had.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
