//! Issue 15, "Redis gone": Redis stopped for 30 s under three real sidestream processes.
//! Past `fallback_after_ms` every sidecar serves its topics alone (its own poller, a local
//! epoch): every client stays connected and keeps receiving poll-topic updates, pushes answer
//! `503` + `Retry-After`, `/ready` stays 200, `/metrics` and one log line say "degraded".
//! Redis started again: cluster mode within 5 s, at most one `reset` per client, then one
//! shared sequence again. Needs `redis-server` on PATH (fails, never skips, without it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, LEASE_TTL_MS, POLL_TOPIC, PUSH_TOPIC};
use common::redis::RedisServer;
use common::trace::*;
use common::*;

const FALLBACK_AFTER_MS: u64 = 2000;
const OUTAGE: Duration = Duration::from_secs(30);
/// The bound for "cluster mode again" after Redis is back.
const REJOIN_BOUND: Duration = Duration::from_secs(5);

/// One SSE client that reads in the background, reconnecting with its last id when the
/// sidecar ends the stream (as EventSource does), until told to stop.
struct Reader {
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Trace>,
}

impl Reader {
    fn start(port: u16, path: &'static str, what: String) -> Reader {
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (received.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut trace = Trace::new(&what);
            let mut client = SseClient::connect(port, path, &[]).await;
            assert_eq!(client.status, 200, "{what}: connect");
            loop {
                let done = |t: &Trace| {
                    count.store(t.got.len(), Ordering::Relaxed);
                    halt.load(Ordering::Relaxed)
                };
                if read_sse(&mut client, &mut trace, done).await {
                    return trace;
                }
                assert!(
                    trace.reconnects.len() < 5,
                    "{what}: ended {} times",
                    trace.reconnects.len()
                );
                let last = trace.last_id().unwrap_or("").to_string();
                client = SseClient::connect(port, path, &[("Last-Event-ID", last.as_str())]).await;
                assert_eq!(client.status, 200, "{what}: reconnect");
                trace.reconnected();
            }
        });
        Reader { received, stop, task }
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }

    async fn finish(self) -> Trace {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

async fn degraded_everywhere(cluster: &Cluster) -> Vec<f64> {
    let mut states = Vec::new();
    for instance in &cluster.instances {
        states.push(metric(instance.admin_port(), "sidestream_cluster_degraded", &[]).await);
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_for_30_s_clients_keep_receiving_and_rejoin_with_at_most_one_reset() {
    const { assert!(FALLBACK_AFTER_MS >= LEASE_TTL_MS, "the config rule") };
    let backend = TestBackend::start().await;
    backend.set("/prices/G", Behaviour::Counter);
    let mut cluster = Cluster::start_with_fallback(
        RedisServer::start().await,
        3,
        backend.port,
        "",
        &format!("{POLL_TOPIC}{PUSH_TOPIC}"),
        FALLBACK_AFTER_MS,
    )
    .await;
    let push_path = "/alerts/degraded";

    // A push client on each instance has the first message before the outage.
    let mut push_clients = Vec::new();
    for instance in &cluster.instances {
        let client = SseClient::connect(instance.port(), push_path, &[]).await;
        push_clients.push((
            client,
            Trace::new(&format!("push client on {}", instance.id)),
            instance.port(),
        ));
    }
    publish_ok(cluster.a().admin_port(), push_path, "1", None).await;
    for (client, trace, _) in &mut push_clients {
        read_sse(client, trace, |t| t.last_n() >= Some(1)).await;
    }
    let readers: Vec<Reader> = cluster
        .instances
        .iter()
        .map(|i| Reader::start(i.port(), "/prices/G", format!("poll client on {}", i.id)))
        .collect();
    eventually("every poll client receives", || {
        readers.iter().all(|r| r.received() >= 3)
    })
    .await;

    // Redis gone.
    cluster.redis.kill();
    let killed = Instant::now();
    let deadline = killed + WAIT + Duration::from_millis(FALLBACK_AFTER_MS);
    while degraded_everywhere(&cluster).await != [1.0, 1.0, 1.0] {
        assert!(Instant::now() < deadline, "every instance reports degraded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("degraded everywhere {:?} after the kill", killed.elapsed());
    let at_degraded: Vec<usize> = readers.iter().map(Reader::received).collect();
    for instance in &cluster.instances {
        assert_eq!(
            get(instance.admin_port(), "/ready", &[]).await.status,
            200,
            "{}: /ready stays 200 while degraded",
            instance.id
        );
        let refused = publish(instance.admin_port(), push_path, "never", None).await;
        assert_eq!(
            refused.status,
            503,
            "{}: a push while degraded: {}",
            instance.id,
            refused.text()
        );
        assert!(
            refused.headers.contains_key("retry-after"),
            "{}: the 503 says when to retry",
            instance.id
        );
    }
    tokio::time::sleep(OUTAGE.saturating_sub(killed.elapsed())).await;
    let at_return: Vec<usize> = readers.iter().map(Reader::received).collect();

    // Redis back (empty: a new epoch).
    cluster.redis.restart().await;
    let back = Instant::now();
    while degraded_everywhere(&cluster).await != [0.0, 0.0, 0.0] {
        assert!(
            back.elapsed() < REJOIN_BOUND,
            "cluster mode again within {REJOIN_BOUND:?} of Redis coming back: {:?}",
            degraded_everywhere(&cluster).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("cluster mode again {:?} after Redis came back", back.elapsed());

    // Pushes work again and reach every instance; each push client saw at most one reset.
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = publish(cluster.a().admin_port(), push_path, "2", Some("after-the-outage")).await;
        if reply.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a push is accepted again: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut faults = Vec::new();
    for (mut client, mut trace, port) in push_clients {
        while !read_sse(&mut client, &mut trace, |t| t.last_n() >= Some(2)).await {
            assert!(trace.reconnects.len() < 3, "{}: ended too often", trace.what);
            let last = trace.last_id().unwrap().to_string();
            client = SseClient::connect(port, push_path, &[("Last-Event-ID", last.as_str())]).await;
            trace.reconnected();
        }
        check_at_most_one_reset(&trace, &mut faults);
        if trace.numbers() != [1, 2] {
            faults.push(format!("{}: got {:?}, want [1, 2]", trace.what, trace.numbers()));
        }
    }

    // Poll clients: a few more updates after the rejoin, then the checks.
    let after_rejoin: Vec<usize> = readers.iter().map(Reader::received).collect();
    eventually("poll clients receive after the rejoin", || {
        readers
            .iter()
            .zip(&after_rejoin)
            .all(|(r, at)| r.received() >= at + 5)
    })
    .await;
    let window_start = backend.hit_count("/prices/G");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let polls_in_2s = backend.hit_count("/prices/G") - window_start;
    let mut final_epochs = std::collections::BTreeSet::new();
    for (index, reader) in readers.into_iter().enumerate() {
        let trace = reader.finish().await;
        eprintln!(
            "{}: {} messages, reconnects at {:?}, notices {:?}",
            trace.what,
            trace.got.len(),
            trace.reconnects,
            trace.unexpected
        );
        if at_return[index] < at_degraded[index] + 10 {
            faults.push(format!(
                "{}: only {} updates in the {OUTAGE:?} outage",
                trace.what,
                at_return[index] - at_degraded[index]
            ));
        }
        if trace.reconnects.iter().any(|&at| at < at_return[index]) {
            faults.push(format!(
                "{}: disconnected while Redis was gone ({:?})",
                trace.what, trace.reconnects
            ));
        }
        check_at_most_one_reset(&trace, &mut faults);
        // Up to the rejoin one connection, seqs one apart (the epoch turns local once, with
        // no reset: it continues the sequence); after it one shared epoch, contiguous.
        // Values only grow within each part; across the reset they may not (this sidecar's
        // own poller may have read the backend after the cluster's did) — which is what the
        // reset tells the client.
        let split = trace.reconnects.first().copied().unwrap_or(trace.got.len());
        for part in [&trace.got[..split], &trace.got[split..]] {
            if part.windows(2).any(|w| w[1].n <= w[0].n) {
                faults.push(format!(
                    "{}: a value came twice or out of order: {:?}",
                    trace.what,
                    trace.numbers()
                ));
            }
        }
        let seqs: Vec<(&str, u64)> = trace.got.iter().map(|g| split_cursor(&g.id)).collect();
        let (before, after) = seqs.split_at(split);
        let epochs_before: std::collections::BTreeSet<&str> = before.iter().map(|s| s.0).collect();
        if before.windows(2).any(|w| w[1].1 != w[0].1 + 1) || epochs_before.len() > 2 {
            faults.push(format!("{}: before the rejoin {before:?}", trace.what));
        }
        if after.windows(2).any(|w| w[1].0 != w[0].0 || w[1].1 != w[0].1 + 1) {
            faults.push(format!("{}: after the rejoin {after:?}", trace.what));
        }
        if let Some(last) = seqs.last() {
            final_epochs.insert(last.0.to_string());
        }
    }
    if final_epochs.len() != 1 {
        faults.push(format!(
            "one shared epoch after the rejoin, found {final_epochs:?}"
        ));
    }
    // One poller cluster-wide again: 2 s at 200 ms is 10 polls; three local pollers ≈ 30.
    if polls_in_2s > 14 {
        faults.push(format!(
            "{polls_in_2s} polls in 2 s after the rejoin: more than one poller"
        ));
    }
    for instance in &cluster.instances {
        let log = instance.log();
        for (line, want) in [("cluster degraded", 1), ("cluster resumed", 1)] {
            let found = log.matches(line).count();
            if found != want {
                faults.push(format!(
                    "{}: {found} log lines \"{line}\", want {want}",
                    instance.id
                ));
            }
        }
    }
    assert!(faults.is_empty(), "{faults:#?}\n{}", cluster.logs(60));
}

fn check_at_most_one_reset(trace: &Trace, faults: &mut Vec<String>) {
    let resets = trace.unexpected.iter().filter(|u| u.contains("reset")).count();
    if resets > 1 || trace.unexpected.len() != resets {
        faults.push(format!("{}: {:?}", trace.what, trace.unexpected));
    }
}
