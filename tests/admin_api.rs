//! The admin API (`/api/topics`), its token, and the freshness metrics, against a real
//! sidecar: poll, stream and push instances, a stale one, a circuit-open one, `DELETE`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;

const TOPICS: &str = r#"
[[topic]]
name = "prices"
path = "/api/prices/{symbol}"
source.poll = { url = "/prices/{symbol}", interval_ms = 50, jitter_ms = 0 }

[[topic]]
name = "feed"
path = "/api/feed"
mode = "events"
source.stream = { url = "/feed" }

[[topic]]
name = "alerts"
path = "/api/alerts"
mode = "events"
source.push = {}
"#;

async fn topics(admin_port: u16, query: &str) -> Value {
    let reply = get(admin_port, &format!("/api/topics{query}"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    serde_json::from_str(&reply.text()).unwrap()
}

fn instance<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["instance"] == name)
}

/// Polls the API until `check` holds for the instance `name`; returns that entry.
async fn wait_for(admin_port: u16, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let list = topics(admin_port, "").await;
        if let Some(entry) = instance(&list, name).filter(|e| check(e)) {
            return entry.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: never happened; last {name}: {:#}",
            instance(&list, name).unwrap_or(&Value::Null)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn lists_poll_stream_and_push_instances_with_their_figures() {
    let backend = TestBackend::start().await;
    backend.set("/prices/A", Behaviour::Json("{\"price\":1}".into()));
    backend.set(
        "/feed",
        Behaviour::EventStream {
            total: 3,
            drops: vec![],
        },
    );
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let mut prices_one = SseClient::connect(sidecar.port, "/api/prices/A", &[]).await;
    let mut prices_two = SseClient::connect(sidecar.port, "/api/prices/A", &[]).await;
    let mut feed = SseClient::connect(sidecar.port, "/api/feed", &[]).await;
    let mut alerts = SseClient::connect(sidecar.port, "/api/alerts", &[]).await;
    prices_one.next_event().await.unwrap();
    prices_two.next_event().await.unwrap();
    feed.next_event().await.unwrap();
    let published = request(
        sidecar.admin_port,
        "POST",
        "/publish/api/alerts",
        &[("authorization", &format!("Bearer {PUBLISH_TOKEN}"))],
        "fire",
    )
    .await;
    assert_eq!(published.status, 200);
    assert_eq!(alerts.next_event().await.unwrap().data.as_deref(), Some("fire"));

    let prices = wait_for(sidecar.admin_port, "prices/A", "two SSE subscribers", |e| {
        e["subscribers"]["sse"] == 2
            && e["deliveries"].as_u64() >= Some(2)
            && e["upstream"]["effective_interval_ms"].is_u64()
    })
    .await;
    assert_eq!(prices["topic"], "prices");
    assert_eq!(prices["source"], "poll");
    assert_eq!(prices["mode"], "state");
    assert_eq!(prices["subscribers"]["total"], 2);
    assert_eq!(prices["subscribers"]["websocket"], 0);
    assert_eq!(prices["subscribers"]["long_poll"], 0);
    assert_eq!(prices["published"], 1, "one change, however many polls");
    assert_eq!(prices["stale"], false);
    assert_eq!(prices["upstream"]["state"], "ok");
    assert_eq!(
        prices["upstream"]["last_status"]
            .as_u64()
            .map(|s| s == 200 || s == 304),
        Some(true)
    );
    assert!(prices["upstream"]["last_latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(prices["upstream"]["interval_ms"], 50);
    assert!(prices["upstream"]["effective_interval_ms"].as_u64().unwrap() >= 40);
    assert!(prices["upstream"]["interval_stretch"].as_f64().unwrap() > 0.5);
    assert!(prices["upstream"]["requests"].as_u64().unwrap() >= 1);
    assert!(prices["last_change_age_ms"].is_u64());
    assert!(!prices["cursor"].as_str().unwrap().is_empty());
    assert_eq!(prices["overflow"]["policy"], "conflate");
    assert_eq!(prices["overflow"]["dropped"], 0);
    assert!(prices["bytes_out"].as_u64().unwrap() > 0);
    assert!(prices["queue"]["max_depth_bytes"].is_u64());
    assert!(prices["lease"].is_null(), "no cluster");
    assert_eq!(prices["id"].as_str().unwrap().len(), 16);

    let feed_entry = wait_for(sidecar.admin_port, "feed", "stream events delivered", |e| {
        e["published"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(feed_entry["source"], "stream");
    assert_eq!(feed_entry["mode"], "events");
    assert_eq!(feed_entry["subscribers"]["sse"], 1);
    assert_eq!(feed_entry["upstream"]["last_status"], 200);
    assert!(
        feed_entry["upstream"]["interval_ms"].is_null(),
        "a stream has no interval"
    );

    let alerts_entry = wait_for(sidecar.admin_port, "alerts", "the push delivered", |e| {
        e["deliveries"] == 1
    })
    .await;
    assert_eq!(alerts_entry["source"], "push");
    assert_eq!(alerts_entry["published"], 1);
    assert_eq!(alerts_entry["upstream"]["state"], "ok");
    assert!(alerts_entry["upstream"]["last_status"].is_null());

    // The process header, paging and the filter.
    let list = topics(sidecar.admin_port, "?limit=2&sort=subscribers").await;
    assert_eq!(list["total"], 3);
    assert_eq!(list["topics"].as_array().unwrap().len(), 2);
    assert_eq!(
        list["topics"][0]["instance"], "prices/A",
        "most subscribers first"
    );
    assert_eq!(list["process"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(list["process"]["instances"], 3);
    assert!(list["process"]["rss_bytes"].as_u64().unwrap() > 0);
    assert!(list["process"]["connections"].as_i64().unwrap() >= 4);
    assert!(list["cluster"].is_null());
    let second_page = topics(sidecar.admin_port, "?limit=2&offset=2&sort=subscribers").await;
    assert_eq!(second_page["topics"].as_array().unwrap().len(), 1);
    let filtered = topics(sidecar.admin_port, "?filter=PRICES").await;
    assert_eq!(filtered["total"], 1);
    assert_eq!(
        get(sidecar.admin_port, "/api/topics?sort=size", &[]).await.status,
        400
    );

    // One instance by id, and an unknown id.
    let id = prices["id"].as_str().unwrap();
    let one = get(sidecar.admin_port, &format!("/api/topics/{id}"), &[]).await;
    assert_eq!(one.status, 200);
    let one: Value = serde_json::from_str(&one.text()).unwrap();
    assert_eq!(one["instance"], "prices/A");
    assert_eq!(
        get(sidecar.admin_port, "/api/topics/0000000000000000", &[])
            .await
            .status,
        404
    );

    // One client goes: the count follows. The backend fails: the instance turns stale.
    drop(prices_two);
    wait_for(sidecar.admin_port, "prices/A", "one subscriber left", |e| {
        e["subscribers"]["sse"] == 1
    })
    .await;
    backend.set("/prices/A", Behaviour::Status(500));
    let stale = wait_for(sidecar.admin_port, "prices/A", "stale", |e| {
        e["stale"] == true && e["upstream"]["last_status"] == 500
    })
    .await;
    assert!(
        ["backing_off", "stale"].contains(&stale["upstream"]["state"].as_str().unwrap()),
        "{stale:#}"
    );
    assert!(stale["upstream"]["consecutive_failures"].as_u64().unwrap() >= 1);
    let backing_off = wait_for(
        sidecar.admin_port,
        "prices/A",
        "backing off with a retry time",
        |e| e["upstream"]["state"] == "backing_off",
    )
    .await;
    assert!(backing_off["upstream"]["next_retry_in_ms"].as_u64().unwrap() <= 800);
    let only_stale = topics(sidecar.admin_port, "?state=backing_off").await;
    assert!(only_stale["total"].as_u64().unwrap() <= 1);
}

#[tokio::test]
async fn an_open_circuit_is_reported() {
    let backend = TestBackend::start().await;
    backend.set("/prices/C", Behaviour::Json("{\"price\":1}".into()));
    let sidecar =
        TestSidecar::start_with_upstream(backend.port, "circuit_failure_threshold = 2", "", TOPICS).await;
    let mut client = SseClient::connect(sidecar.port, "/api/prices/C", &[]).await;
    client.next_event().await.unwrap();
    backend.set("/prices/C", Behaviour::Status(503));
    let open = wait_for(sidecar.admin_port, "prices/C", "circuit open", |e| {
        e["upstream"]["state"] == "circuit_open"
    })
    .await;
    assert_eq!(open["stale"], true);
    assert!(
        open["upstream"]["last_status"].is_null(),
        "refused before it was sent"
    );
    assert!(open["upstream"]["last_error"]
        .as_str()
        .unwrap()
        .contains("circuit"));
}

#[tokio::test]
async fn delete_closes_an_instance_and_its_clients_reconnect() {
    let backend = TestBackend::start().await;
    backend.set("/prices/D", Behaviour::Json("{\"price\":1}".into()));
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let mut client = SseClient::connect(sidecar.port, "/api/prices/D", &[]).await;
    client.next_event().await.unwrap();
    let entry = wait_for(sidecar.admin_port, "prices/D", "subscribed", |e| {
        e["subscribers"]["sse"] == 1
    })
    .await;
    let id = entry["id"].as_str().unwrap();
    let closed = request(
        sidecar.admin_port,
        "DELETE",
        &format!("/api/topics/{id}"),
        &[],
        "",
    )
    .await;
    assert_eq!(closed.status, 200, "{}", closed.text());
    // The client is told to reconnect (a `retry:`), then the stream ends.
    let mut told_retry = false;
    while let Some(block) = client.next_block().await {
        told_retry |= block.retry.is_some() && block.comments.iter().any(|c| c == "draining");
    }
    assert!(told_retry, "the stream ends with a retry, as on reload");
    // It reconnects: a new instance under the same id, with its own upstream.
    let mut again = SseClient::connect(sidecar.port, "/api/prices/D", &[]).await;
    assert_eq!(
        again.next_event().await.unwrap().data.as_deref(),
        Some("{\"price\":1}")
    );
    let entry = wait_for(sidecar.admin_port, "prices/D", "re-subscribed", |e| {
        e["subscribers"]["sse"] == 1
    })
    .await;
    assert_eq!(entry["id"], id);
    assert_eq!(
        request(
            sidecar.admin_port,
            "DELETE",
            "/api/topics/ffffffffffffffff",
            &[],
            ""
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn admin_token_guards_the_page_and_the_api() {
    const TOKEN: &str = "admin-token-0123456789abcdef";
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start_with_server(
        backend.port,
        &format!("admin_token = \"{TOKEN}\""),
        "",
        "",
        TOPICS,
    )
    .await;
    let admin = sidecar.admin_port;
    let page = get(admin, "/", &[]).await;
    assert_eq!(page.status, 401);
    assert!(page.text().contains("<form"), "the page offers a login form");
    assert_eq!(get(admin, "/api/topics", &[]).await.status, 401);
    assert_eq!(get(admin, "/api/topics/0000000000000000", &[]).await.status, 401);
    assert_eq!(
        request(admin, "DELETE", "/api/topics/0000000000000000", &[], "")
            .await
            .status,
        401
    );
    let wrong = [("authorization", "Bearer not-the-token-at-all")];
    assert_eq!(get(admin, "/api/topics", &wrong).await.status, 401);
    // Probes and the scrape stay open.
    assert_eq!(get(admin, "/metrics", &[]).await.status, 200);
    assert_eq!(get(admin, "/live", &[]).await.status, 200);

    let bearer = format!("Bearer {TOKEN}");
    let with_token = [("authorization", bearer.as_str())];
    assert_eq!(get(admin, "/api/topics", &with_token).await.status, 200);
    let page = get(admin, "/", &with_token).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/api/topics"));

    // The login form: a wrong token is refused, the right one sets an HttpOnly cookie.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    assert_eq!(
        request(admin, "POST", "/login", &form, "token=nope").await.status,
        401
    );
    let login = request(admin, "POST", "/login", &form, &format!("token={TOKEN}")).await;
    assert_eq!(login.status, 303);
    let cookie = login.header("set-cookie").unwrap().to_string();
    assert!(cookie.contains("HttpOnly"));
    assert!(!cookie.contains(TOKEN), "the cookie is not the token");
    let session = cookie.split(';').next().unwrap();
    let with_cookie = [("cookie", session)];
    assert_eq!(get(admin, "/", &with_cookie).await.status, 200);
    assert_eq!(get(admin, "/api/topics", &with_cookie).await.status, 200);
}

#[tokio::test]
async fn freshness_metrics_come_from_a_real_scrape() {
    let backend = TestBackend::start().await;
    backend.set("/prices/F", Behaviour::Counter);
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let mut client = SseClient::connect(sidecar.port, "/api/prices/F", &[]).await;
    for _ in 0..3 {
        client.next_event().await.unwrap();
    }
    let body = get(sidecar.admin_port, "/metrics", &[]).await.text();
    let scrape = scrape(&body);
    let histogram = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "sidestream_delivery_freshness_seconds" && s.labels.get("topic") == Some("prices")
        })
        .expect("the freshness histogram is scraped");
    let prometheus_parse::Value::Histogram(buckets) = &histogram.value else {
        panic!("a histogram, got {:?}", histogram.value);
    };
    let count = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
    assert!(count >= 3.0, "one observation per write: {buckets:?}");
    let within_bound = buckets
        .iter()
        .find(|b| b.less_than == 30.0)
        .map(|b| b.count)
        .unwrap();
    assert_eq!(within_bound, count, "a local delivery is not 30 s old");
    let age = metric_value(
        &scrape,
        "sidestream_latest_state_age_seconds",
        &[("topic", "prices")],
    );
    assert!((0.0..30.0).contains(&age), "{age}");
    // Every poll of a counter is a change: one request per message.
    let per_message = metric_value(
        &scrape,
        "sidestream_upstream_requests_per_message",
        &[("topic", "prices")],
    );
    assert!((0.9..=1.5).contains(&per_message), "{per_message}");
}

#[tokio::test]
async fn a_cluster_shows_who_holds_each_lease_and_that_redis_is_up() {
    let backend = TestBackend::start().await;
    backend.set("/prices/L", Behaviour::Json("{\"price\":1}".into()));
    let cluster = common::cluster::Cluster::start(2, backend.port, "", common::cluster::POLL_TOPIC).await;
    let mut clients = Vec::new();
    for instance in &cluster.instances {
        let mut client = SseClient::connect(instance.port(), "/prices/L", &[]).await;
        client.next_event().await.unwrap();
        clients.push(client);
    }
    let holder = {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(holder) = cluster.lease_holder("prices/L") {
                break holder;
            }
            assert!(tokio::time::Instant::now() < deadline, "a lease is taken");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    for sidecar in &cluster.instances {
        let list = topics(sidecar.admin_port(), "").await;
        assert_eq!(list["cluster"]["instance_id"], sidecar.id.as_str());
        assert_eq!(list["cluster"]["redis_up"], true);
        let entry = instance(&list, "prices/L").unwrap();
        let held_here = sidecar.id == holder;
        assert_eq!(
            entry["lease"]["held_here"], held_here,
            "{}: {entry:#}",
            sidecar.id
        );
        if held_here {
            assert!(entry["lease"]["holder"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{holder}:")));
            assert_eq!(list["cluster"]["leases_held"], 1);
        } else {
            // Held by the other sidecar: asked of Redis for the page.
            assert!(
                entry["lease"]["holder"]
                    .as_str()
                    .is_some_and(|name| name.starts_with(&format!("{holder}:"))),
                "{}: {entry:#}",
                sidecar.id
            );
        }
    }
}
