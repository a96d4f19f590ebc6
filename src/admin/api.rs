//! `/api/topics`: the live topic instances as JSON, paged, filtered and sorted on the server
//! (10 000 instances must not reach a browser at once); `/api/topics/{id}` for one, and
//! `DELETE /api/topics/{id}` to close one as a reload would (its clients reconnect).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use serde_json::{json, Value};

use super::{reply, text, Admin};
use crate::config::SourceSpec;
use crate::downstream::router::Router;
use crate::hub::{Mode, Topic, Transport};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Query of `GET /api/topics`.
#[derive(Debug, PartialEq)]
struct ListQuery {
    limit: usize,
    offset: usize,
    /// Case-insensitive substring of the instance (`name/variables`).
    filter: String,
    /// Only instances in this upstream state (`ok`, `stale`, `backing_off`, `circuit_open`).
    state: Option<String>,
    sort: SortKey,
    descending: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SortKey {
    Instance,
    Subscribers,
    Staleness,
    Drops,
    Deliveries,
}

fn parse_query(query: Option<&str>) -> Result<ListQuery, String> {
    let mut parsed = ListQuery {
        limit: DEFAULT_LIMIT,
        offset: 0,
        filter: String::new(),
        state: None,
        sort: SortKey::Instance,
        descending: false,
    };
    let mut order: Option<bool> = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "limit" => {
                parsed.limit = value
                    .parse::<usize>()
                    .map_err(|_| format!("limit must be a number, got {value:?}"))?
                    .clamp(1, MAX_LIMIT)
            }
            "offset" => {
                parsed.offset = value
                    .parse()
                    .map_err(|_| format!("offset must be a number, got {value:?}"))?
            }
            "filter" => parsed.filter = value.to_lowercase(),
            "state" if !value.is_empty() => parsed.state = Some(value.into_owned()),
            "state" => {}
            "sort" => {
                parsed.sort = match &*value {
                    "instance" | "" => SortKey::Instance,
                    "subscribers" => SortKey::Subscribers,
                    "staleness" => SortKey::Staleness,
                    "drops" => SortKey::Drops,
                    "deliveries" => SortKey::Deliveries,
                    other => {
                        return Err(format!(
                        "sort is one of instance, subscribers, staleness, drops, deliveries; got {other:?}"
                    ))
                    }
                }
            }
            "order" => {
                order = Some(match &*value {
                    "desc" => true,
                    "asc" => false,
                    other => return Err(format!("order is asc or desc, got {other:?}")),
                })
            }
            _ => {}
        }
    }
    // Numbers read best largest first; names alphabetically.
    parsed.descending = order.unwrap_or(parsed.sort != SortKey::Instance);
    Ok(parsed)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The upstream state at a glance: `circuit_open`, `backing_off` (waiting to retry after a
/// failure), `stale` (serving the last good data), or `ok`.
fn upstream_state(topic: &Topic, report: &crate::hub::stats::UpstreamReport) -> &'static str {
    let stale = topic.is_stale();
    let retrying = report
        .next_retry_at
        .is_some_and(|at| at > tokio::time::Instant::now());
    if stale && report.circuit_open {
        "circuit_open"
    } else if stale && retrying {
        "backing_off"
    } else if stale {
        "stale"
    } else {
        "ok"
    }
}

/// One instance as the API shows it. Units: `_ms` milliseconds, `_bytes` bytes,
/// `_per_second` per second over the last sample second.
fn entry(admin: &Admin, router: &Router, topic: &Arc<Topic>) -> Value {
    let key = topic.key();
    let stats = topic.stats();
    let report = stats.upstream();
    let health = topic.upstream_health();
    let rates = admin.sampler.rates(key);
    let source = router
        .topics()
        .iter()
        .find(|spec| spec.name == key.name)
        .map(|spec| match spec.source {
            SourceSpec::Poll(_) => "poll",
            SourceSpec::Stream(_) => "stream",
            SourceSpec::Push => "push",
        });
    let depth = topic.queue_depth();
    let settings = topic.settings();
    let sse = stats.subscribers(Transport::Sse);
    let websocket = stats.subscribers(Transport::WebSocket);
    let long_poll = stats.subscribers(Transport::LongPoll);
    let now = tokio::time::Instant::now();
    let lease = admin.cluster.as_ref().map(|cluster| {
        let holder = cluster.leases.holder(&cluster.keys(key).lease);
        json!({ "held_here": holder.is_some(), "holder": holder })
    });
    let stretch = match (report.interval, report.effective_interval) {
        (Some(base), Some(effective)) if !base.is_zero() => {
            Some(effective.as_secs_f64() / base.as_secs_f64())
        }
        _ => None,
    };
    json!({
        "id": key.instance_id(),
        "topic": &*key.name,
        "instance": key.to_string(),
        "mode": match settings.mode { Mode::State => "state", Mode::Events => "events" },
        "source": source,
        "cursor": topic.cursor().to_string(),
        "subscribers": {
            "sse": sse,
            "websocket": websocket,
            "long_poll": long_poll,
            "total": sse + websocket + long_poll,
        },
        "published": topic.counters.published.load(Ordering::Relaxed),
        "published_per_second": rates.published_per_second,
        "deliveries": stats.deliveries(),
        "deliveries_per_second": rates.deliveries_per_second,
        "deliveries_per_second_history": rates.deliveries_history,
        "last_change_age_ms": topic.latest().map(|m| millis(m.received.elapsed())),
        "stale": topic.is_stale(),
        "upstream": {
            "state": upstream_state(topic, &report),
            "next_retry_in_ms": report.next_retry_at.filter(|at| *at > now).map(|at| millis(at - now)),
            "consecutive_failures": health.consecutive_failures,
            "last_error": health.last_error,
            "last_success_age_ms": health.last_success.map(|at| millis(at.elapsed())),
            "last_status": report.last_status,
            "last_latency_ms": report.last_latency.map(|l| l.as_secs_f64() * 1000.0),
            "requests": report.requests,
            "interval_ms": report.interval.map(millis),
            "effective_interval_ms": report.effective_interval.map(millis),
            "interval_stretch": stretch,
        },
        "overflow": {
            "policy": settings.on_full.name(),
            "dropped": topic.counters.dropped.load(Ordering::Relaxed),
            "disconnected": topic.counters.disconnected.load(Ordering::Relaxed),
        },
        "queue": {
            "messages": depth.messages,
            "bytes": depth.bytes,
            "max_depth_bytes": depth.largest_bytes,
            "limit_messages": settings.queue.max_messages,
            "limit_bytes": settings.queue.max_bytes,
        },
        "bytes_out": stats.bytes_out(),
        "lease": lease,
    })
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The process and cluster header of every answer.
fn process(admin: &Admin, instances: usize) -> (Value, Value) {
    let process = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_ms": millis(admin.started.elapsed()),
        "rss_bytes": resident_bytes(),
        "connections": crate::metrics::METRICS.client_connections.get(),
        "instances": instances,
    });
    let cluster = admin.cluster.as_ref().map_or(Value::Null, |cluster| {
        json!({
            "instance_id": cluster.settings.instance_id,
            "redis_up": !cluster.health.is_degraded(),
            "leases_held": crate::metrics::METRICS.cluster_leases_held.get(),
        })
    });
    (process, cluster)
}

fn json_reply(status: u16, value: &Value) -> Response<Vec<u8>> {
    reply(status, "application/json", format!("{value}\n"))
}

fn number(value: &Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

fn sort_value(entry: &Value, key: SortKey) -> f64 {
    match key {
        SortKey::Instance => 0.0,
        SortKey::Subscribers => number(entry, &["subscribers", "total"]),
        // Stale instances first, then the oldest data.
        SortKey::Staleness => {
            let stale = if entry["stale"].as_bool().unwrap_or(false) {
                1e15
            } else {
                0.0
            };
            stale + number(entry, &["last_change_age_ms"])
        }
        SortKey::Drops => {
            number(entry, &["overflow", "dropped"]) + number(entry, &["overflow", "disconnected"])
        }
        SortKey::Deliveries => number(entry, &["deliveries_per_second"]),
    }
}

/// Fills in who holds the lease of each instance held by another sidecar (its own are known
/// here): one `MGET` for the page. Left `null` when Redis does not answer in time.
async fn lease_holders(admin: &Admin, page: &mut [(&Arc<Topic>, Value)]) {
    let Some(cluster) = &admin.cluster else {
        return;
    };
    let elsewhere: Vec<usize> = (0..page.len())
        .filter(|&index| page[index].1["lease"]["held_here"] == false)
        .collect();
    let keys: Vec<crate::hub::TopicKey> = elsewhere
        .iter()
        .map(|&index| page[index].0.key().clone())
        .collect();
    if keys.is_empty() {
        return;
    }
    let Some(holders) = cluster.lease_holders(&keys).await else {
        return;
    };
    for (index, holder) in elsewhere.into_iter().zip(holders) {
        page[index].1["lease"]["holder"] = holder.map_or(Value::Null, Value::String);
    }
}

/// `GET /api/topics`.
pub async fn list(admin: &Admin, query: Option<&str>) -> Response<Vec<u8>> {
    let query = match parse_query(query) {
        Ok(query) => query,
        Err(reason) => return text(400, &reason),
    };
    let topics = admin.registry.topics();
    let instances = topics.len();
    let router = admin.topics.current();
    let mut entries: Vec<(&Arc<Topic>, Value)> = topics
        .iter()
        .filter(|topic| {
            query.filter.is_empty() || topic.key().to_string().to_lowercase().contains(&query.filter)
        })
        .map(|topic| (topic, entry(admin, &router, topic)))
        .filter(|(_, entry)| {
            query
                .state
                .as_deref()
                .is_none_or(|state| entry["upstream"]["state"] == state)
        })
        .collect();
    let by_instance = |a: &Value, b: &Value| a["instance"].as_str().cmp(&b["instance"].as_str());
    entries.sort_by(|(_, a), (_, b)| {
        let order = sort_value(a, query.sort)
            .total_cmp(&sort_value(b, query.sort))
            .then_with(|| by_instance(a, b));
        if query.descending {
            order.reverse()
        } else {
            order
        }
    });
    let total = entries.len();
    let mut page: Vec<(&Arc<Topic>, Value)> =
        entries.into_iter().skip(query.offset).take(query.limit).collect();
    lease_holders(admin, &mut page).await;
    let page: Vec<Value> = page.into_iter().map(|(_, entry)| entry).collect();
    let (process, cluster) = process(admin, instances);
    json_reply(
        200,
        &json!({
            "process": process,
            "cluster": cluster,
            "total": total,
            "offset": query.offset,
            "limit": query.limit,
            "topics": page,
        }),
    )
}

fn find(admin: &Admin, id: &str) -> Option<Arc<Topic>> {
    admin
        .registry
        .topics()
        .into_iter()
        .find(|topic| topic.key().instance_id() == id)
}

/// `GET /api/topics/{id}`.
pub async fn one(admin: &Admin, id: &str) -> Response<Vec<u8>> {
    match find(admin, id) {
        Some(topic) => {
            let mut page = [(&topic, entry(admin, &admin.topics.current(), &topic))];
            lease_holders(admin, &mut page).await;
            let [(_, entry)] = page;
            json_reply(200, &entry)
        }
        None => text(404, &format!("no live topic instance has the id {id}")),
    }
}

/// `DELETE /api/topics/{id}`: closes the instance as a reload does; its clients are told to
/// reconnect, which opens it anew (with a new upstream task).
pub fn close(admin: &Admin, id: &str) -> Response<Vec<u8>> {
    let Some(topic) = find(admin, id) else {
        return text(404, &format!("no live topic instance has the id {id}"));
    };
    if admin.registry.close_instance(topic.key()) {
        tracing::info!(topic = %topic.key(), "topic instance closed from the admin API");
    }
    json_reply(200, &json!({ "closed": id, "instance": topic.key().to_string() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_default_bound_and_refuse_nonsense() {
        let query = parse_query(None).unwrap();
        assert_eq!(
            (query.limit, query.offset, query.sort),
            (DEFAULT_LIMIT, 0, SortKey::Instance)
        );
        assert!(!query.descending);
        let query = parse_query(Some("limit=999999&offset=20&sort=drops&filter=AAPL&state=stale")).unwrap();
        assert_eq!(query.limit, MAX_LIMIT);
        assert_eq!(query.offset, 20);
        assert_eq!(query.sort, SortKey::Drops);
        assert!(query.descending, "numbers sort largest first");
        assert_eq!(query.filter, "aapl");
        assert_eq!(query.state.as_deref(), Some("stale"));
        assert!(parse_query(Some("sort=size")).is_err());
        assert!(parse_query(Some("limit=many")).is_err());
        assert!(parse_query(Some("sort=subscribers&order=asc")).is_ok_and(|q| !q.descending));
    }
}
