//! `/metrics` parses as Prometheus text and its counters move with the traffic; `/live` and
//! `/ready` answer on the admin listener.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

const TOPICS: &str = r#"
[[topic]]
name = "prices"
path = "/prices/{symbol}"
source.poll = { url = "/p/{symbol}", interval_ms = 50, jitter_ms = 0 }
"#;

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let backend = TestBackend::start().await;
    backend.set("/p/M", Behaviour::Json("{\"v\":1}".into()));
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    assert_eq!(get(sidecar.admin_port, "/live", &[]).await.status, 200);
    assert_eq!(get(sidecar.admin_port, "/ready", &[]).await.status, 200);

    let before = scrape(&get(sidecar.admin_port, "/metrics", &[]).await.text());
    assert_eq!(
        metric_value(&before, "sidestream_subscribers", &[("transport", "sse")]),
        0.0
    );

    let mut client = SseClient::connect(sidecar.port, "/prices/M", &[]).await;
    client.next_event().await.unwrap();
    backend.set("/p/M", Behaviour::Json("{\"v\":2}".into()));
    client.next_event().await.unwrap();
    // A few more 50 ms polls, all answered 304.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let reply = get(sidecar.admin_port, "/metrics", &[]).await;
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let after = scrape(&reply.text());
    let topic = [("topic", "prices")];
    assert_eq!(
        metric_value(
            &after,
            "sidestream_subscribers",
            &[("topic", "prices"), ("transport", "sse")]
        ),
        1.0
    );
    assert_eq!(metric_value(&after, "sidestream_topic_instances", &[]), 1.0);
    assert!(metric_value(&after, "sidestream_messages_published_total", &topic) >= 2.0);
    assert!(
        metric_value(
            &after,
            "sidestream_deliveries_total",
            &[("topic", "prices"), ("transport", "sse")]
        ) >= 2.0
    );
    assert!(metric_value(&after, "sidestream_bytes_written_total", &[("transport", "sse")]) > 0.0);
    assert!(
        metric_value(
            &after,
            "sidestream_upstream_requests_total",
            &[("topic", "prices"), ("outcome", "changed")]
        ) >= 2.0
    );
    assert!(
        metric_value(
            &after,
            "sidestream_upstream_requests_total",
            &[("topic", "prices"), ("outcome", "unchanged")]
        ) >= 1.0
    );
    assert!(
        metric_value(
            &after,
            "sidestream_upstream_request_duration_seconds_count",
            &topic
        ) >= 2.0
    );

    // Resume outcomes are counted.
    let mut stale = SseClient::connect(sidecar.port, "/prices/M", &[("Last-Event-ID", "zzzzzzz-1")]).await;
    stale.next_event().await.unwrap();
    let resumed = scrape(&get(sidecar.admin_port, "/metrics", &[]).await.text());
    assert_eq!(
        metric_value(
            &resumed,
            "sidestream_resumes_total",
            &[("topic", "prices"), ("outcome", "reset")]
        ),
        1.0
    );
}
