//! `demo --cluster`: the demo as a 3-instance cluster on one machine.
//!
//! This process runs the demo backend, starts its own `redis-server` (loopback, a free port,
//! no persistence) and three sidestream instances A, B, C, each a child process: this same
//! executable with `--cluster-instance <n>` (an `App` blocks its thread and owns its process).
//! Each instance runs `config/demo.toml` on its own ports, plus a push topic and `[cluster]`.
//! A child stops when its stdin closes, so the instances never outlive this process; an
//! instance that dies (e.g. `kill -9`) is started again, to show resuming after a restart.

use std::error::Error;
use std::net::{SocketAddr, TcpListener};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// The bearer token of the demo's `POST /publish` (loopback only, so a fixed one is fine).
const PUBLISH_TOKEN: &str = "demo-publish-token";
const NAMES: [&str; 3] = ["A", "B", "C"];
const FIRST_PORT: u16 = 8080;
const FIRST_ADMIN_PORT: u16 = 9090;
/// Where the demo config sets the listener; the instance config rewrites this line.
const LISTEN_LINE: &str = "listen = \"127.0.0.1:8080\"";
/// `redis-server` unless this names another binary (e.g. `valkey-server`).
const REDIS_SERVER_ENV: &str = "SIDESTREAM_DEMO_REDIS_SERVER";
/// How long Redis and each instance get to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the instances get to stop before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// An instance that dies sooner than this after starting is not restarted (a crash loop).
const MIN_LIFETIME: Duration = Duration::from_secs(5);

/// The config of instance `index`: the demo config on ports 8080+index / 9090+index, a push
/// topic `/api/news`, and `[cluster]` on `redis_url`.
pub fn instance_config(demo_config: &str, index: u16, redis_url: &str) -> Result<String, String> {
    if !demo_config.contains(LISTEN_LINE) {
        return Err(format!(
            "config/demo.toml no longer contains `{LISTEN_LINE}`; update demo/cluster.rs"
        ));
    }
    let server = format!(
        "listen = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\npublish_token = \"{PUBLISH_TOKEN}\"",
        FIRST_PORT + index,
        FIRST_ADMIN_PORT + index
    );
    let name = NAMES.get(usize::from(index)).copied().unwrap_or("X");
    Ok(format!(
        "{}\n\
         # Added by `demo --cluster`: published on any instance's admin port, delivered on all.\n\
         [[topic]]\n\
         name = \"news\"\n\
         path = \"/api/news\"\n\
         source.push = {{}}\n\
         \n\
         [cluster]\n\
         redis_url = \"{redis_url}\"\n\
         key_prefix = \"sidestream-demo\"\n\
         instance_id = \"demo-{name}\"\n",
        demo_config.replacen(LISTEN_LINE, &server, 1)
    ))
}

/// One instance, in the child process. Returns when it has stopped.
pub fn run_instance(demo_config: &str, index: u16, redis_url: &str) -> Result<(), Box<dyn Error>> {
    let text = instance_config(demo_config, index, redis_url)?;
    let name = format!("config/demo.toml + [cluster] (instance {index})");
    let config = sidestream::config::parse(&name, &text).map_err(|e| e.to_string())?;
    let app = sidestream::app::App::build(config)?;
    app.run(Box::new(SignalsOrParentGone));
    Ok(())
}

/// The usual signals, or the parent gone (our stdin closed): then stop at once.
struct SignalsOrParentGone;

#[async_trait]
impl ShutdownSignalWatch for SignalsOrParentGone {
    async fn recv(&self) -> ShutdownSignal {
        tokio::select! {
            signal = sidestream::app::UnixSignals.recv() => signal,
            () = stdin_closed() => ShutdownSignal::FastShutdown,
        }
    }
}

async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 64];
    while matches!(stdin.read(&mut buffer).await, Ok(n) if n > 0) {}
}

/// The parent: Redis, three instances, instructions; until Ctrl-C.
pub fn run(backend: &str) -> Result<(), Box<dyn Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(supervise(backend))
}

async fn supervise(backend: &str) -> Result<(), Box<dyn Error>> {
    let mut redis = Redis::start().await?;
    let redis_url = format!("redis://127.0.0.1:{}/", redis.port);
    let mut instances: Vec<Option<Instance>> = Vec::new();
    for index in 0..3 {
        match Instance::start(index, &redis_url).await {
            Ok(instance) => instances.push(Some(instance)),
            Err(error) => {
                stop(&mut instances, &mut redis).await;
                return Err(error);
            }
        }
    }
    print_instructions(backend, redis.port, &instances);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        // Borrows `instances` and `redis` while waiting; handled once they are released.
        let event = {
            let exits = instances
                .iter_mut()
                .enumerate()
                .filter_map(|(index, slot)| slot.as_mut().map(|instance| (index, instance)))
                .map(|(index, instance)| Box::pin(async move { (index, instance.child.wait().await) }))
                .collect::<Vec<_>>();
            if exits.is_empty() {
                Event::AllStopped
            } else {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => Event::Stop,
                    _ = terminate.recv() => Event::Stop,
                    status = redis.child.wait() => Event::RedisStopped(describe(status)),
                    ((index, status), _, _) = futures_util::future::select_all(exits) => {
                        Event::InstanceStopped(index, describe(status))
                    }
                }
            }
        };
        match event {
            Event::Stop => break,
            Event::AllStopped => {
                stop(&mut instances, &mut redis).await;
                return Err("every instance has stopped".into());
            }
            Event::RedisStopped(status) => {
                stop(&mut instances, &mut redis).await;
                return Err(format!("redis-server stopped ({status})").into());
            }
            Event::InstanceStopped(index, status) => {
                let Some(instance) = instances[index].take() else {
                    continue;
                };
                let name = NAMES[index];
                let lived = instance.started.elapsed();
                if lived < MIN_LIFETIME {
                    eprintln!(
                        "instance {name} stopped {lived:?} after starting ({status}): not restarting it"
                    );
                    continue;
                }
                eprintln!(
                    "instance {name} stopped ({status}); starting it again (its clients reconnect anywhere)"
                );
                match Instance::start(u16::try_from(index).unwrap_or(0), &redis_url).await {
                    Ok(instance) => {
                        println!("instance {name} is back (pid {})", instance.pid());
                        instances[index] = Some(instance);
                    }
                    Err(error) => eprintln!("instance {name} did not start again: {error}"),
                }
            }
        }
    }
    println!("stopping the instances and redis-server");
    stop(&mut instances, &mut redis).await;
    Ok(())
}

enum Event {
    /// Ctrl-C or SIGTERM.
    Stop,
    AllStopped,
    RedisStopped(String),
    InstanceStopped(usize, String),
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => format!("unknown status: {error}"),
    }
}

fn print_instructions(backend: &str, redis_port: u16, instances: &[Option<Instance>]) {
    let mut table = String::new();
    for (index, instance) in instances.iter().enumerate() {
        let pid = instance.as_ref().map_or(0, Instance::pid);
        let offset = u16::try_from(index).unwrap_or(0);
        table.push_str(&format!(
            "  {}  http://127.0.0.1:{}  admin http://127.0.0.1:{}  (pid {pid})\n",
            NAMES[index],
            FIRST_PORT + offset,
            FIRST_ADMIN_PORT + offset
        ));
    }
    println!(
        "\nsidestream demo: a cluster of 3 instances on one Redis\n  \
         backend     http://{backend}  (plain request/response; GET /stats: its requests per path)\n  \
         redis       redis://127.0.0.1:{redis_port}  (started by the demo, no persistence)\n{table}\n\
         try:\n  \
         # one poller for the whole cluster: subscribers on all three, the backend still sees\n  \
         # one request per interval: /prices/AAPL last_10s ~20 (interval_ms = 500), not 60\n  \
         for p in 8080 8081 8082; do curl -sN -H 'Accept: text/event-stream' http://127.0.0.1:$p/api/prices/AAPL >/dev/null & done\n  \
         sleep 10; curl -s http://{backend}/stats\n\n  \
         # resume on another instance: read trades from A, stop, go on at B with the last id\n  \
         curl -sN 'http://127.0.0.1:8080/api/trades?transport=sse'          # note an `id:`, then Ctrl-C\n  \
         curl -sN -H 'Last-Event-ID: <that id>' 'http://127.0.0.1:8081/api/trades?transport=sse'\n  \
         # (the next trades follow with no gap and no `event: reset`; long poll: ?cursor=<id>&wait=10)\n\n  \
         # publish on one instance's admin port, receive on the others\n  \
         curl -sN 'http://127.0.0.1:8081/api/news?transport=sse' &  curl -sN 'http://127.0.0.1:8082/api/news?transport=sse' &\n  \
         curl -X POST -H 'Authorization: Bearer {PUBLISH_TOKEN}' -d '{{\"headline\":\"hello\"}}' http://127.0.0.1:9090/publish/api/news\n\n  \
         # failover: kill an instance; another takes over the polling, the demo restarts it\n  \
         kill -9 <pid of A>\n\n\
         Instance logs are prefixed [A] [B] [C] (RUST_LOG=info for more). Ctrl-C stops everything.\n"
    );
}

/// Stops the instances (closing their stdin; killed after STOP_TIMEOUT), then Redis.
async fn stop(instances: &mut [Option<Instance>], redis: &mut Redis) {
    for instance in instances.iter_mut().flatten() {
        instance.stdin.take();
    }
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    for instance in instances.iter_mut().flatten() {
        if tokio::time::timeout_at(deadline, instance.child.wait())
            .await
            .is_err()
        {
            let _ = instance.child.kill().await;
        }
    }
    let _ = redis.child.kill().await;
}

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    async fn start() -> Result<Redis, Box<dyn Error>> {
        let program = std::env::var(REDIS_SERVER_ENV).unwrap_or_else(|_| "redis-server".into());
        let port = free_port()?;
        let mut child = Command::new(&program)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own process group: Ctrl-C reaches only the demo, which stops Redis last.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "`{program}` not found: --cluster needs a Redis server. Install it with \
                     `sudo apt-get install redis-server` (Debian/Ubuntu), or set \
                     {REDIS_SERVER_ENV}=/path/to/redis-server (valkey-server works too)"
                ),
                _ => format!("cannot start `{program}`: {error}"),
            })?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening(&mut child, address, "redis-server").await?;
        Ok(Redis { child, port })
    }
}

struct Instance {
    child: Child,
    /// Closing it tells the instance to stop.
    stdin: Option<ChildStdin>,
    started: Instant,
}

impl Instance {
    async fn start(index: u16, redis_url: &str) -> Result<Instance, Box<dyn Error>> {
        let name = NAMES[usize::from(index)];
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["--cluster-instance", &index.to_string(), "--redis-url", redis_url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            // Three instances' start-up lines would bury the instructions.
            command.env("RUST_LOG", "warn");
        }
        let mut child = command.spawn()?;
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(prefix_lines(name, stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(prefix_lines(name, stderr));
        }
        let stdin = child.stdin.take();
        let address = SocketAddr::from(([127, 0, 0, 1], FIRST_PORT + index));
        wait_listening(&mut child, address, &format!("instance {name}")).await?;
        Ok(Instance {
            child,
            stdin,
            started: Instant::now(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// Copies a child's output to ours, each line prefixed with the instance's name. Ends at EOF
/// (the child gone).
async fn prefix_lines(name: &'static str, output: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[{name}] {line}");
    }
}

/// Until `address` accepts connections; an error if `child` exits first or it takes too long.
async fn wait_listening(child: &mut Child, address: SocketAddr, what: &str) -> Result<(), Box<dyn Error>> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(format!("{what} exited while starting ({status}); see its output above").into());
        }
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill().await;
            return Err(format!("{what} did not listen on {address} within {START_TIMEOUT:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port nobody listens on right now (the OS picks it; Redis binds it a moment later).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_instance_config_is_valid() {
        for index in 0..3 {
            let text =
                super::instance_config(super::super::DEMO_CONFIG, index, "redis://127.0.0.1:6379/").unwrap();
            let config = sidestream::config::parse("demo", &text).unwrap();
            assert_eq!(config.server.listen.port(), 8080 + index);
            assert_eq!(config.server.admin_listen.port(), 9090 + index);
            assert!(config.cluster.is_some());
        }
    }
}
