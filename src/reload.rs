//! Hot reload on SIGHUP: re-read and validate the file; keep running unchanged if it is
//! invalid (every error logged); otherwise add, remove and change topics without touching the
//! clients of topics that did not change.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::{self, Config, ConfigErrors, TopicSpec};
use crate::downstream::router::TopicTable;
use crate::hub::Registry;
use crate::upstream::SourceLauncher;

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

pub struct Reloader {
    path: PathBuf,
    running: Mutex<Config>,
    topics: Arc<TopicTable>,
    launcher: Arc<SourceLauncher>,
    registry: Arc<Registry>,
}

/// A topic's settings as one comparable value: every field in its `Debug` form (all of them
/// are plain data or ordered collections, so equal settings print equally).
fn fingerprint(spec: &TopicSpec) -> String {
    format!("{spec:?}")
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        running: Config,
        topics: Arc<TopicTable>,
        launcher: Arc<SourceLauncher>,
        registry: Arc<Registry>,
    ) -> Self {
        Reloader {
            path,
            running: Mutex::new(running),
            topics,
            launcher,
            registry,
        }
    }

    pub fn reload(&self) -> Result<ReloadReport, ConfigErrors> {
        let next = config::load(&self.path)?;
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let before: HashMap<&str, String> = running
            .topics
            .iter()
            .map(|t| (&*t.name, fingerprint(t)))
            .collect();
        let after: HashMap<&str, String> = next.topics.iter().map(|t| (&*t.name, fingerprint(t))).collect();
        let mut report = ReloadReport::default();
        for (name, print) in &after {
            match before.get(name) {
                None => report.added.push(name.to_string()),
                Some(old) if old != print => report.changed.push(name.to_string()),
                Some(_) => {}
            }
        }
        report.removed = before
            .keys()
            .filter(|n| !after.contains_key(*n))
            .map(|n| n.to_string())
            .collect();
        let restart_only = [
            format!("{:?}", running.server) != format!("{:?}", next.server),
            format!("{:?}", running.upstream) != format!("{:?}", next.upstream),
            format!("{:?}", running.websocket_echo) != format!("{:?}", next.websocket_echo),
            format!("{:?}", running.cors) != format!("{:?}", next.cors),
            format!("{:?}", running.limits) != format!("{:?}", next.limits),
            cluster_changed(running.cluster.as_ref(), next.cluster.as_ref()),
        ];
        if restart_only.iter().any(|changed| *changed) {
            tracing::warn!(
                "changes to [server], [upstream], [cors], [limits], [testing] or [cluster] take effect at the next restart"
            );
        }
        // New specs first, so that clients of closed instances reconnect to the new ones.
        self.launcher.update(&next.topics);
        self.topics.replace(next.topics.clone());
        for name in report.removed.iter().chain(&report.changed) {
            self.registry.close_topic(name);
        }
        running.topics = next.topics;
        Ok(report)
    }

    /// Reloads on every SIGHUP until `shutdown`.
    pub async fn run(&self, shutdown: tokio_util::sync::CancellationToken) {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::error!("cannot listen for SIGHUP; hot reload is off");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hangups.recv() => {}
            }
            match self.reload() {
                Ok(report) => tracing::info!(
                    added = ?report.added,
                    removed = ?report.removed,
                    changed = ?report.changed,
                    "configuration reloaded"
                ),
                Err(errors) => {
                    for error in &errors.0 {
                        tracing::error!("{error}");
                    }
                    tracing::error!(
                        errors = errors.0.len(),
                        "configuration reload rejected; the running configuration is kept"
                    );
                }
            }
        }
    }
}

/// Whether `[cluster]` changed. The default `instance_id` is drawn anew at every parse, so
/// it is left out: the running process keeps its id until it restarts anyway.
fn cluster_changed(
    running: Option<&crate::config::cluster::ClusterSettings>,
    next: Option<&crate::config::cluster::ClusterSettings>,
) -> bool {
    let without_id = |settings: Option<&crate::config::cluster::ClusterSettings>| {
        settings.map(|settings| {
            let mut settings = settings.clone();
            settings.instance_id.clear();
            format!("{settings:?}")
        })
    };
    without_id(running) != without_id(next)
}
