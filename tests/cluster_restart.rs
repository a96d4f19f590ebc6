//! Issue 14's acceptance: `kill -9` of an instance that served clients, then a restart — its
//! clients reconnect (to it or to another) and resume with 0 gaps on a push topic and a stream
//! topic, because history and the backend stream's position live in Redis. Three real
//! sidestream processes on a test `redis-server` (needs it on PATH; fails, never skips).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::cluster::{Cluster, PUSH_TOPIC, STREAM_TOPIC};
use common::ticking::TickingStream;
use common::trace::*;
use common::*;

/// Reads until the stream ends (the instance died); every event up to then is in `trace`.
async fn read_until_end(client: &mut SseClient, trace: &mut Trace) {
    let ended = !read_sse(client, trace, |_| false).await;
    assert!(ended, "{}: read until the end", trace.what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_lose_nothing_on_push_and_stream_topics() {
    let backend = TickingStream::start(Duration::from_millis(50)).await;
    let mut cluster = Cluster::start(3, backend.port, "", &format!("{PUSH_TOPIC}{STREAM_TOPIC}")).await;
    let path = "/alerts/crash";

    // The stream topic's first client is on A, so A most likely holds its lease (and the
    // backend stream); the victim is whoever Redis says holds it, A if the key is not found.
    let mut first = SseClient::connect(cluster.a().port(), "/ticks", &[]).await;
    let mut warmup = Trace::new("first stream client");
    read_sse(&mut first, &mut warmup, |t| !t.got.is_empty()).await;
    let holders = cluster.lease_holders();
    let victim = holders.first().cloned().unwrap_or_else(|| "a".to_string());
    let others: Vec<String> = cluster
        .instances
        .iter()
        .map(|i| i.id.clone())
        .filter(|id| *id != victim)
        .collect();
    let (survivor, publisher_on) = (others[0].clone(), others[1].clone());
    let victim_port = cluster.by_id(&victim).port();
    let survivor_port = cluster.by_id(&survivor).port();
    let publisher_admin = cluster.by_id(&publisher_on).admin_port();
    eprintln!("lease holders {holders:?}: killing {victim}, publishing on {publisher_on}");

    // A push publisher at 100 msg/s on an instance that stays up.
    let start = publish_ok(publisher_admin, path, "0", None).await["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    const LAST: u64 = 500;
    let publisher = Publisher::start(publisher_admin, path, 1, LAST, Duration::from_millis(10));

    // The victim's clients: two on the push topic, two on the stream topic; one of each comes
    // back to the restarted victim, the other goes to a survivor.
    let mut push_clients = Vec::new();
    let mut stream_clients = Vec::new();
    for (name, back_to) in [
        ("back to the restarted victim", victim_port),
        ("to a survivor", survivor_port),
    ] {
        let client = SseClient::connect(victim_port, path, &[("Last-Event-ID", start.as_str())]).await;
        push_clients.push((client, Trace::new(&format!("push client {name}")), back_to));
        let client = SseClient::connect(victim_port, "/ticks", &[]).await;
        stream_clients.push((client, Trace::new(&format!("stream client {name}")), back_to));
    }
    // A stream client on the survivor that never moves: it sees the takeover from outside.
    let mut watcher = SseClient::connect(survivor_port, "/ticks", &[]).await;
    let mut watcher_trace = Trace::new("stream client that stays on the survivor");

    // Let them read for a second, then kill -9 the victim while they are connected.
    let readers: Vec<_> = push_clients
        .into_iter()
        .chain(stream_clients)
        .map(|(mut client, mut trace, back_to)| {
            tokio::spawn(async move {
                read_until_end(&mut client, &mut trace).await;
                (trace, back_to)
            })
        })
        .collect();
    read_sse(&mut watcher, &mut watcher_trace, |t| t.got.len() >= 20).await;
    assert!(
        publisher.published() < LAST,
        "the publisher still runs when the victim dies"
    );
    cluster.by_id(&victim).kill_9();
    let killed_at_tick = backend.current();
    let mut moved = Vec::new();
    for reader in readers {
        let (trace, back_to) = reader.await.unwrap();
        assert!(
            !trace.got.is_empty(),
            "{}: read something before the kill",
            trace.what
        );
        moved.push((trace, back_to));
    }

    // Reconnect: to a survivor at once, to the victim once it is back.
    let mut resumed: Vec<Option<SseClient>> = moved.iter().map(|_| None).collect();
    for (index, (trace, back_to)) in moved.iter_mut().enumerate() {
        if *back_to == survivor_port {
            resumed[index] = Some(reconnect(trace, *back_to).await);
        }
    }
    cluster.by_id(&victim).restart().await;
    for (index, (trace, back_to)) in moved.iter_mut().enumerate() {
        if *back_to == victim_port {
            resumed[index] = Some(reconnect(trace, *back_to).await);
        }
    }
    let cursors = publisher.finish().await;
    // Stream clients read until well after the takeover (≈ 1 s of events after now).
    let stream_target = backend.current() + 20;
    let mut faults = Vec::new();
    for ((trace, _), client) in moved.iter_mut().zip(resumed) {
        let mut client = client.expect("every client reconnected");
        if trace.what.starts_with("push") {
            read_sse(&mut client, trace, |t| t.last_n() >= Some(LAST)).await;
            if trace.numbers() != (1..=LAST).collect::<Vec<_>>() {
                faults.push(format!(
                    "{}: not exactly 1..={LAST} ({} messages)",
                    trace.what,
                    trace.got.len()
                ));
            }
            let ids: Vec<String> = trace.got.iter().map(|g| g.id.clone()).collect();
            if ids != cursors {
                faults.push(format!(
                    "{}: cursors differ from the publish replies'",
                    trace.what
                ));
            }
        } else {
            read_sse(&mut client, trace, |t| t.last_n() >= Some(stream_target)).await;
        }
        if let Err(fault) = trace.check_contiguous() {
            faults.push(fault);
        }
    }
    read_sse(&mut watcher, &mut watcher_trace, |t| {
        t.last_n() >= Some(stream_target)
    })
    .await;
    if let Err(fault) = watcher_trace.check_contiguous() {
        faults.push(fault);
    }
    assert!(
        faults.is_empty(),
        "killed {victim} at backend event {killed_at_tick}; backend stream connections {} \
         (Last-Event-IDs {:?}): {faults:#?}",
        backend.connections(),
        backend.resumes()
    );
    // The takeover resumed the backend stream where Redis said the cluster was, not from now.
    let resumes = backend.resumes();
    assert!(
        resumes.iter().skip(1).all(Option::is_some),
        "every stream after the first resumes with Last-Event-ID: {resumes:?}"
    );
}

/// Connects again with the trace's last cursor.
async fn reconnect(trace: &mut Trace, port: u16) -> SseClient {
    let path = if trace.what.starts_with("push") {
        "/alerts/crash"
    } else {
        "/ticks"
    };
    let last = trace.last_id().unwrap().to_string();
    let client = SseClient::connect(port, path, &[("Last-Event-ID", last.as_str())]).await;
    assert_eq!(client.status, 200, "{}: reconnect", trace.what);
    trace.reconnected();
    client
}
