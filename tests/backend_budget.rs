//! The backend budget: no client can make sidestream ask the backend for more than
//! `max_requests_per_second`, held topics are served before instances only short polls keep
//! alive, those are polled on demand only, the backend's own pacing is capped, and clients'
//! auth and inbound traffic cannot take the backend away from the topics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use sidestream::upstream::{Backend, Traffic, UpstreamClient, UpstreamError};
use tokio::time::Instant;

const RATE: usize = 50;

const TOPICS: &str = r#"
[[topic]]
name = "live"
path = "/live"
source.poll = { url = "/live-src", interval_ms = 100, jitter_ms = 0 }

[[topic]]
name = "many"
path = "/many/{id}"
source.poll = { url = "/many-src/{id}", interval_ms = 100, jitter_ms = 0 }
"#;

/// Data events an SSE client receives until `end`.
async fn events_until(client: &mut SseClient, end: Instant) -> usize {
    let mut count = 0;
    while let Ok(Some(_)) = tokio::time::timeout_at(end, client.next_event()).await {
        count += 1;
    }
    count
}

/// The most requests the backend saw in any one second, counted in one-second buckets from
/// `from`.
fn busiest_second(seen: &[Seen], from: Instant) -> usize {
    let mut buckets = std::collections::HashMap::<u64, usize>::new();
    for hit in seen.iter().filter(|s| s.at >= from) {
        *buckets.entry((hit.at - from).as_secs()).or_default() += 1;
    }
    buckets.values().copied().max().unwrap_or(0)
}

/// The scenario of issue 13: one client short-polls 2 000 distinct instances of a 100 ms
/// poll topic, over and over, next to a live SSE topic polled every 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_poll_flood_neither_exceeds_the_budget_nor_starves_a_live_topic() {
    let backend = TestBackend::start().await;
    backend.set("/live-src", Behaviour::Counter);
    for n in 0..2000 {
        backend.set(
            &format!("/many-src/n{n}"),
            Behaviour::Json(format!("{{\"n\":{n}}}")),
        );
    }
    let sidecar = TestSidecar::start_with_upstream(
        backend.port,
        &format!("max_requests_per_second = {RATE}"),
        "",
        // Generous per-client shares, so that this test exercises the budget and the fair
        // queue, not the instance quota (tests/instance_quota.rs covers that).
        &format!(
            "{TOPICS}\n[limits]\nmax_topic_instances_per_client = 10000\n\
             topic_instance_creations_per_client_per_minute = 100000\n"
        ),
    )
    .await;
    let start = Instant::now();
    let mut live = SseClient::connect(sidecar.port, "/live", &[]).await;
    live.next_event().await.expect("first state");

    let phase = Duration::from_secs(3);
    let undisturbed = events_until(&mut live, Instant::now() + phase).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let flood = tokio::spawn({
        let (port, stop) = (sidecar.port, stop.clone());
        async move {
            let mut sent = 0usize;
            while !stop.is_cancelled() {
                futures_util::stream::iter(0..2000)
                    .map(|n| async move { get(port, &format!("/many/n{n}"), &[]).await.status })
                    .buffer_unordered(16)
                    .take_until(stop.cancelled())
                    .for_each(|_| {
                        sent += 1;
                        async {}
                    })
                    .await;
            }
            sent
        }
    });
    let disturbed = events_until(&mut live, Instant::now() + phase).await;
    let waiting_idle = metric(
        sidecar.admin_port,
        "sidestream_upstream_budget_waiting",
        &[("priority", "idle")],
    )
    .await;
    stop.cancel();
    let sent = flood.await.unwrap();

    assert!(
        undisturbed >= 20,
        "undisturbed: {undisturbed} updates in {phase:?}"
    );
    assert!(
        disturbed * 10 >= undisturbed * 8,
        "the live topic kept {disturbed} of {undisturbed} updates under the flood"
    );
    let busiest = busiest_second(&backend.all_seen(), start);
    assert!(
        busiest <= RATE + RATE / 10,
        "the backend saw {busiest} requests in one second (budget {RATE}/s)"
    );
    assert!(
        sent >= 2000,
        "the flood reached every instance ({sent} short polls)"
    );
    assert!(
        waiting_idle > 0.0,
        "the stretch is visible: short-poll-only instances wait for the budget"
    );
}

/// An instance that only short polls keep alive is polled when asked, at most once per
/// interval, not on its own 100 ms timer for the whole linger.
#[tokio::test]
async fn an_instance_only_short_polls_keep_alive_is_polled_on_demand() {
    let backend = TestBackend::start().await;
    backend.set("/many-src/a", Behaviour::Counter);
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let first = get(sidecar.port, "/many/a", &[]).await;
    assert_eq!(first.status, 503, "before any result: 503 + Retry-After");
    assert!(first.header("retry-after").is_some());
    eventually("first poll", || backend.hit_count("/many-src/a") >= 1).await;

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let idle_hits = backend.hit_count("/many-src/a");
    assert!(
        idle_hits <= 2,
        "{idle_hits} polls in 1 s with one short poll (a 100 ms timer would make ~10)"
    );

    // A short poll answers from the latest state and asks for a fresh one.
    let answer = get(sidecar.port, "/many/a", &[]).await;
    assert_eq!(answer.status, 200);
    eventually("polled on demand", || {
        backend.hit_count("/many-src/a") > idle_hits
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        backend.hit_count("/many-src/a"),
        idle_hits + 1,
        "one demand, one poll"
    );

    // Held by an SSE subscriber, it is back on its timer.
    let mut held = SseClient::connect(sidecar.port, "/many/a", &[]).await;
    held.next_event().await.unwrap();
    let before = backend.hit_count("/many-src/a");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        backend.hit_count("/many-src/a") >= before + 5,
        "a held instance polls every interval"
    );
}

/// `Cache-Control: max-age=86400` would mean one update a day; `max_interval_ms` caps it.
#[tokio::test]
async fn a_max_age_of_a_day_is_capped_by_max_interval() {
    let backend = TestBackend::start().await;
    backend.set("/live-src", Behaviour::JsonMaxAge("{\"v\":1}".into(), 86_400));
    let sidecar = TestSidecar::start_with_upstream(backend.port, "max_interval_ms = 300", "", TOPICS).await;
    let mut client = SseClient::connect(sidecar.port, "/live", &[]).await;
    client.next_event().await.unwrap();
    let first = backend.hit_count("/live-src");
    eventually("polled again within the cap", || {
        backend.hit_count("/live-src") > first
    })
    .await;
    let hits = backend.hits("/live-src");
    let gap = hits[1].at - hits[0].at;
    assert!(gap < Duration::from_secs(2), "next poll after {gap:?}");
}

fn client_for(backend: &TestBackend, upstream: &str) -> Arc<UpstreamClient> {
    let text = format!(
        "[upstream]\nbase_url = \"http://127.0.0.1:{}\"\ntimeout_ms = 300\n\
         circuit_failure_threshold = 3\ncircuit_open_ms = 60000\n{upstream}\n\n{TOPICS}",
        backend.port
    );
    let config = sidestream::config::parse("t.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let resolved = Backend::resolve(&config.upstream).unwrap();
    Arc::new(UpstreamClient::new(resolved, &config.upstream))
}

/// Inbound WebSocket POSTs have their own permits and breaker: a client whose messages make
/// the backend answer 5xx, or hang, does not stop the topics' polls.
#[tokio::test]
async fn inbound_failures_and_slow_inbound_posts_leave_topic_polls_alone() {
    let backend = TestBackend::start().await;
    backend.set("/inbound-500", Behaviour::Status(500));
    backend.set("/inbound-slow", Behaviour::Hang);
    backend.set("/topic", Behaviour::Json("{\"ok\":1}".into()));
    let client = client_for(
        &backend,
        "inbound_max_concurrent_requests = 2\nacquire_timeout_ms = 200",
    );
    let none = Vec::new();

    for _ in 0..10 {
        let answer = client
            .post("/inbound-500", &none, "x".into(), Traffic::Inbound)
            .await
            .expect("the backend's 5xx reaches the client");
        assert_eq!(answer.meta.status, 500);
    }
    let poll = client
        .get(
            "/topic",
            &Default::default(),
            &none,
            Traffic::Topic { held: true },
        )
        .await
        .expect("inbound 5xx never opens the topics' breaker");
    assert_eq!(poll.meta.status, 200);

    // Slow inbound POSTs take every inbound slot; more of them give up, topics go on.
    let slow: Vec<_> = (0..6)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .post("/inbound-slow", &Vec::new(), "x".into(), Traffic::Inbound)
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..5 {
        let poll = tokio::time::timeout(
            Duration::from_secs(2),
            client.get(
                "/topic",
                &Default::default(),
                &none,
                Traffic::Topic { held: true },
            ),
        )
        .await
        .expect("a topic poll is not queued behind slow inbound POSTs");
        assert_eq!(poll.unwrap().meta.status, 200);
    }
    let mut busy = 0;
    for task in slow {
        match tokio::time::timeout(WAIT, task)
            .await
            .expect("every acquire is bounded")
            .unwrap()
        {
            Err(UpstreamError::Busy(..)) => busy += 1,
            Err(UpstreamError::Timeout(_)) => {}
            other => panic!("unexpected outcome of a hanging POST: {other:?}"),
        }
    }
    assert!(
        busy >= 1,
        "POSTs beyond the inbound permits fail after acquire_timeout_ms"
    );
}

/// A failing topic source opens the topics' breaker, not the one auth uses.
#[tokio::test]
async fn a_failing_topic_source_does_not_lock_out_auth() {
    let backend = TestBackend::start().await;
    backend.set("/topic-500", Behaviour::Status(500));
    backend.set("/auth", Behaviour::Json("{}".into()));
    let client = client_for(&backend, "");
    let none = Vec::new();
    for _ in 0..5 {
        let _ = client
            .get(
                "/topic-500",
                &Default::default(),
                &none,
                Traffic::Topic { held: true },
            )
            .await;
    }
    assert!(client.circuit_open(), "the topics' breaker opened");
    let auth = client
        .get("/auth", &Default::default(), &none, Traffic::Auth)
        .await
        .expect("auth has its own breaker");
    assert_eq!(auth.meta.status, 200);
}

/// The new `[upstream]` options are validated with their place in the file.
#[test]
fn budget_options_are_validated_with_file_line_col() {
    let text = "[upstream]\nbase_url = \"http://127.0.0.1:1\"\nmax_requests_per_second = 0\n\
                max_interval_ms = -5\nacquire_timeout_ms = 0\ninbound_max_concurrent_requests = 0\n";
    let Err(error) = sidestream::config::parse("budget.toml", text) else {
        panic!("invalid values are refused");
    };
    let error = error.to_string();
    for (line, name) in [
        (3, "max_requests_per_second"),
        (4, "max_interval_ms"),
        (5, "acquire_timeout_ms"),
        (6, "inbound_max_concurrent_requests"),
    ] {
        assert!(
            error
                .lines()
                .any(|l| l.starts_with(&format!("budget.toml:{line}:")) && l.contains(name)),
            "{name} reported at line {line}:\n{error}"
        );
    }
}
