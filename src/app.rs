//! Wires everything into one pingora server. The only module that knows all the others.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use pingora_proxy::http_proxy;
use tokio_util::sync::CancellationToken;

use std::path::PathBuf;

use crate::admin::health::Readiness;
use crate::admin::Admin;
use crate::config::Config;
use crate::downstream::connection_limit::ConnectionLimit;
use crate::downstream::in_flight::InFlight;
use crate::downstream::router::TopicTable;
use crate::downstream::Sidecar;
use crate::hub::Registry;
use crate::reload::Reloader;
use crate::upstream::{Backend, SourceLauncher, UpstreamClient};

/// How often idle topic instances are looked for.
const REAP_PERIOD: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot resolve the backend {authority}: {source}")]
    Resolve {
        authority: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// A built, not yet running, sidecar.
pub struct App {
    config: Config,
    client: Arc<UpstreamClient>,
    launcher: Arc<SourceLauncher>,
    topics: Arc<TopicTable>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    /// Stops the upstream tasks: only once the drain is over, so that streams still open
    /// during it keep receiving fresh data (`shutdown` starts the drain).
    upstream_stop: CancellationToken,
    /// The file SIGHUP re-reads; `None`: no hot reload.
    config_path: Option<PathBuf>,
    /// `[cluster]`: the Redis side, and the runtime its tasks run on.
    cluster: Option<(Arc<crate::cluster::Cluster>, crate::cluster::ClusterRuntime)>,
}

impl App {
    pub fn build(config: Config) -> Result<Self, AppError> {
        // The hub reports what it does through a trait; the metrics record it.
        crate::hub::events::install(&*crate::metrics::METRICS);
        let backend = Backend::resolve(&config.upstream).map_err(|source| AppError::Resolve {
            authority: config.upstream.authority.clone(),
            source,
        })?;
        let shutdown = CancellationToken::new();
        let upstream_stop = CancellationToken::new();
        let client = Arc::new(UpstreamClient::new(backend, &config.upstream));
        let launcher = Arc::new(SourceLauncher::new(
            &config.topics,
            client.clone(),
            config.upstream.clone(),
        ));
        // With `[cluster]`, instances follow Redis and only the lease holder runs a source.
        let cluster = match &config.cluster {
            Some(settings) => Some(crate::cluster::Cluster::start(
                settings.clone(),
                upstream_stop.clone(),
            )?),
            None => None,
        };
        let registry_launcher: Arc<dyn crate::hub::UpstreamLauncher> = match &cluster {
            Some((cluster, _)) => Arc::new(crate::cluster::ClusterLauncher {
                cluster: cluster.clone(),
                sources: launcher.clone(),
            }),
            None => launcher.clone(),
        };
        let registry = Arc::new(Registry::new(registry_launcher, upstream_stop.clone()));
        Ok(App {
            topics: Arc::new(TopicTable::new(
                config.topics.clone(),
                &config.upstream.path_prefix,
            )),
            config,
            client,
            launcher,
            registry,
            shutdown,
            upstream_stop,
            config_path: None,
            cluster,
        })
    }

    /// Reload topics from `path` on SIGHUP.
    pub fn with_reload(mut self, path: PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// The hub's topic instances (for tests and admin).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The one process-wide shutdown signal every task watches.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until `signal` fires; blocks the calling thread.
    pub fn run(self, signal: Box<dyn ShutdownSignalWatch + Send + Sync>) {
        let conf = ServerConf {
            threads: self.config.server.threads,
            // The drain happens before pingora hears of the signal (see ForwardShutdown), so
            // its fixed grace sleep (default 300 s) is not needed at all.
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();

        let conf = server.configuration.clone();
        let in_flight = Arc::new(InFlight::default());
        let sidecar = Sidecar::new(
            &self.config,
            self.topics.clone(),
            self.registry.clone(),
            self.client.clone(),
            self.shutdown.clone(),
            in_flight.clone(),
        );
        let lane = sidecar.lane();
        let proxy = ConnectionLimit::new(
            http_proxy(&conf, sidecar),
            self.config.limits.clone(),
            self.config.server.write_buffer_bytes,
        )
        .with_sse_lane(lane);
        let mut proxy = Service::new("sidestream".to_string(), proxy);
        // pingora reads through a 64 KiB buffer per connection by default, which dominated
        // the memory of an idle push client; requests are small and bodies stream anyway.
        // The write buffer is sidestream's own (`downstream::write_buffer`): pingora's would
        // stay allocated for the life of every idle push connection.
        let buffers = L4BufferSettings::new(self.config.server.read_buffer_bytes, 0);
        let mut listener = ListenerConfig::tcp(self.config.server.listen.to_string()).l4_buffer(buffers);
        if self.config.server.reuse_port {
            let mut options = pingora_core::listeners::TcpSocketOptions::default();
            options.so_reuseport = Some(true);
            listener = listener.tcp_socket_options(options);
        }
        proxy.add_listener(listener);
        server.add_service(proxy);
        server.add_service(background_service("reaper", Reaper(self.registry.clone())));
        let readiness = Readiness::new(self.config.server.ready_grace);
        server.add_service(background_service(
            "eager topics",
            EagerTopics {
                topics: self.config.topics.iter().filter(|t| t.eager).cloned().collect(),
                registry: self.registry.clone(),
                readiness: readiness.clone(),
            },
        ));
        let admin = Admin::new(
            &self.config,
            self.topics.clone(),
            self.registry.clone(),
            readiness,
            self.shutdown.clone(),
        )
        .with_cluster(self.cluster.as_ref().map(|(cluster, _)| cluster.clone()));
        server.add_service(background_service(
            "admin sampler",
            AdminSampler(admin.sampler(), self.registry.clone(), self.shutdown.clone()),
        ));
        if let Some(path) = &self.config_path {
            let reloader = Reloader::new(
                path.clone(),
                self.config.clone(),
                self.topics.clone(),
                self.launcher.clone(),
                self.registry.clone(),
            );
            server.add_service(background_service(
                "reload",
                ReloadService(reloader, self.shutdown.clone()),
            ));
        }
        let mut admin =
            pingora_core::services::listening::Service::new("sidestream admin".to_string(), admin);
        admin.add_tcp(&self.config.server.admin_listen.to_string());
        server.add_service(admin);

        tracing::info!(listen = %self.config.server.listen, backend = %self.client.backend().addr, "sidestream starting");
        server.run(RunArgs {
            shutdown_signal: Box::new(ForwardShutdown {
                inner: signal,
                token: self.shutdown.clone(),
                upstream_stop: self.upstream_stop.clone(),
                in_flight,
                drain_timeout: self.config.server.drain_timeout,
            }),
        });
        self.shutdown.cancel();
        self.upstream_stop.cancel();
        self.registry.close_all();
        // The cluster's tasks stop with `upstream_stop`; its runtime goes with `self`.
        drop(self.cluster);
        tracing::info!("sidestream stopped");
    }
}

/// Starts the eager topics' instances (and so their upstreams) at boot, on this service's
/// runtime, and hands them to `/ready`.
struct EagerTopics {
    topics: Vec<crate::config::TopicSpec>,
    registry: Arc<Registry>,
    readiness: Arc<Readiness>,
}

#[async_trait]
impl BackgroundService for EagerTopics {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        for spec in &self.topics {
            let key = crate::hub::TopicKey::new(spec.name.clone(), Vec::new());
            let topic = self.registry.get_or_create_pinned(&key, || spec.hub.clone());
            self.readiness.watch(topic);
        }
        // The upstream tasks run on this runtime: keep it until shutdown.
        let _ = shutdown.changed().await;
    }
}

struct ReloadService(Reloader, CancellationToken);

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        self.0.run(self.1.clone()).await;
    }
}

/// The admin API's once-a-second sampling (it watches the process-wide shutdown token).
struct AdminSampler(
    Arc<crate::admin::sampler::Sampler>,
    Arc<Registry>,
    CancellationToken,
);

#[async_trait]
impl BackgroundService for AdminSampler {
    async fn start(&self, _shutdown: ShutdownWatch) {
        self.0.run(&self.1, self.2.clone()).await;
    }
}

struct Reaper(Arc<Registry>);

#[async_trait]
impl BackgroundService for Reaper {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // The registry watches the process-wide token, which fires before pingora's watch.
        self.0.run_reaper(REAP_PERIOD).await;
    }
}

/// The drain: on a graceful signal, tell every stream to wind down (SSE gets a `retry:` and
/// ends), wait until requests in progress are done or `drain_timeout` passes, and only then
/// stop the upstream tasks and pass the signal to pingora, which stops accepting and drops
/// what is left. Until then the upstreams run on, so a stream waiting for its turn to end
/// still receives every update.
struct ForwardShutdown {
    inner: Box<dyn ShutdownSignalWatch + Send + Sync>,
    token: CancellationToken,
    upstream_stop: CancellationToken,
    in_flight: Arc<InFlight>,
    drain_timeout: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for ForwardShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let signal = self.inner.recv().await;
        self.token.cancel();
        if matches!(signal, ShutdownSignal::FastShutdown) {
            tracing::info!("fast shutdown requested");
            self.upstream_stop.cancel();
            return signal;
        }
        tracing::info!(in_flight = self.in_flight.count(), "shutdown requested: draining");
        let _stop_upstreams = self.upstream_stop.clone().drop_guard();
        tokio::select! {
            idle = self.in_flight.wait_idle(self.drain_timeout) => {
                if !idle {
                    tracing::warn!(
                        in_flight = self.in_flight.count(),
                        "drain timeout reached; closing the remaining connections"
                    );
                }
                signal
            }
            // A second signal (SIGTERM again, or SIGINT) means: now.
            _ = self.inner.recv() => {
                tracing::info!("second signal: stopping without waiting for the drain");
                ShutdownSignal::FastShutdown
            }
        }
    }
}

/// SIGTERM drains gracefully (streams told to reconnect, then the grace period); SIGINT is
/// a fast stop. SIGQUIT (pingora's socket hand-over upgrade) is treated like SIGTERM, since
/// a sidecar is replaced by its orchestrator, not upgraded in place.
pub struct UnixSignals;

#[async_trait]
impl ShutdownSignalWatch for UnixSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = quit.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}
