//! Typed calls to the scripts: what the rest of the cluster module asks Redis, and the
//! decoding of its answers. Every call is bounded by the connection's response timeout.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::Value;

use super::keys::InstanceKeys;
use super::scripts;
use crate::hub::{Cursor, Epoch, Payload};
use crate::metrics::METRICS;
use crate::upstream::sink::Continuity;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered something unexpected to {0}")]
    Unexpected(&'static str),
    /// Not tried: Redis has been unreachable past `fallback_after_ms`.
    #[error("the cluster is degraded: Redis has been unreachable for longer than fallback_after_ms")]
    Degraded,
}

/// The outcome of the publish script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    Published(Cursor),
    /// The version or idempotency key was already published: its cursor (the current top
    /// for a version).
    Duplicate(Cursor),
    /// The publisher's lease is not the current one.
    Fenced,
}

/// What the history script returns.
#[derive(Debug)]
pub struct HistoryReply {
    pub epoch: Epoch,
    pub top: u64,
    /// The oldest seq the stream still holds (`top + 1` when it holds none).
    pub first_retained: u64,
    /// The lease holder's last word on the backend: `Some(reason)` while it fails.
    pub stale: Option<String>,
    pub entries: Vec<(Cursor, Payload)>,
}

/// One message as the publish script sends it on the channel:
/// `<epoch>:<seq>\n<event>\n<content type>\n<data>`.
pub fn parse_channel_message(raw: &[u8]) -> Option<(Cursor, Payload)> {
    let mut parts = raw.splitn(4, |b| *b == b'\n');
    let head = std::str::from_utf8(parts.next()?).ok()?;
    let event = parts.next()?;
    let content_type = parts.next()?;
    let data = parts.next()?;
    let (epoch, seq) = head.split_once(':')?;
    let cursor = Cursor {
        epoch: Epoch::parse(epoch)?,
        seq: seq.parse().ok()?,
    };
    Some((cursor, payload(event, content_type, Bytes::copy_from_slice(data))))
}

fn payload(event: &[u8], content_type: &[u8], data: Bytes) -> Payload {
    let text = |bytes: &[u8]| {
        (!bytes.is_empty())
            .then(|| std::str::from_utf8(bytes).ok().map(std::sync::Arc::<str>::from))
            .flatten()
    };
    Payload {
        event: text(event),
        content_type: text(content_type),
        data,
    }
}

fn as_bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => std::str::from_utf8(as_bytes(other)?).ok()?.parse().ok(),
    }
}

fn as_text(value: &Value) -> Option<&str> {
    std::str::from_utf8(as_bytes(value)?).ok()
}

fn items(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

fn cursor_of(epoch: &Value, seq: &Value) -> Option<Cursor> {
    Some(Cursor {
        epoch: Epoch::parse(as_text(epoch)?)?,
        seq: as_u64(seq)?,
    })
}

/// A stream entry `{id, {field, value, …}}` with id `<seq>-0`.
fn entry(epoch: Epoch, value: &Value) -> Option<(Cursor, Payload)> {
    let [id, fields] = items(value)? else {
        return None;
    };
    let seq = as_text(id)?.split('-').next()?.parse().ok()?;
    let (mut data, mut event, mut content_type): (&[u8], &[u8], &[u8]) = (b"", b"", b"");
    let fields = match fields {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect::<Vec<_>>(),
        other => items(other)?
            .chunks(2)
            .filter_map(|c| Some((c.first()?, c.get(1)?)))
            .collect(),
    };
    for (name, value) in fields {
        let value = as_bytes(value)?;
        match as_bytes(name)? {
            b"d" => data = value,
            b"e" => event = value,
            b"c" => content_type = value,
            _ => {}
        }
    }
    Some((
        Cursor { epoch, seq },
        payload(event, content_type, Bytes::copy_from_slice(data)),
    ))
}

/// Where a publish comes from: a lease holder (fenced) or a push (idempotency key).
pub enum Publisher<'a> {
    Holder {
        holder: &'a str,
        version: Option<&'a str>,
        continuity: &'a Continuity,
    },
    Push {
        idempotency_key: Option<&'a str>,
    },
}

pub struct Store {
    pub connection: ConnectionManager,
    pub history_ttl: Duration,
    pub idempotency_window: Duration,
}

impl Store {
    fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    fn record<T>(&self, operation: &'static str, result: &Result<T, StoreError>) {
        let connected = METRICS.cluster_redis_connected.with_label_values(&["commands"]);
        match result {
            Ok(_) => connected.set(1),
            Err(error) => {
                METRICS.cluster_redis_errors.with_label_values(&[operation]).inc();
                if matches!(error, StoreError::Redis(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal())
                {
                    connected.set(0);
                }
            }
        }
    }

    /// Runs the publish script: one round trip assigns the cursor, appends to the stream and
    /// publishes on the instance's channel.
    pub async fn publish(
        &self,
        keys: &InstanceKeys,
        max_messages: usize,
        payload: &Payload,
        from: Publisher<'_>,
    ) -> Result<PublishOutcome, StoreError> {
        let started = std::time::Instant::now();
        let result = self.publish_inner(keys, max_messages, payload, from).await;
        let outcome = match &result {
            Ok(PublishOutcome::Published(_)) => "ok",
            Ok(PublishOutcome::Duplicate(_)) => "dup",
            Ok(PublishOutcome::Fenced) => "fenced",
            Err(_) => "error",
        };
        METRICS
            .cluster_publish_duration
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
        if outcome == "fenced" {
            METRICS.cluster_fenced_publishes.inc();
        }
        self.record("publish", &result);
        result
    }

    async fn publish_inner(
        &self,
        keys: &InstanceKeys,
        max_messages: usize,
        payload: &Payload,
        from: Publisher<'_>,
    ) -> Result<PublishOutcome, StoreError> {
        let (owner, version, idempotency, continuity) = match from {
            Publisher::Holder {
                holder,
                version,
                continuity,
            } => (holder, version.unwrap_or(""), String::new(), Some(continuity)),
            Publisher::Push { idempotency_key } => (
                "",
                "",
                idempotency_key.map(|k| keys.idempotency(k)).unwrap_or_default(),
                None,
            ),
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut invocation = scripts::PUBLISH.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.log)
            .key(&keys.lease)
            .key(&idempotency)
            .arg(owner)
            .arg(Epoch::random().to_string())
            .arg(version)
            .arg(max_messages.max(1))
            .arg(self.history_ttl.as_millis() as u64)
            .arg(payload.data.as_ref())
            .arg(payload.event.as_deref().unwrap_or(""))
            .arg(payload.content_type.as_deref().unwrap_or(""))
            .arg(now_ms)
            .arg(self.idempotency_window.as_millis() as u64)
            .arg(&keys.channel);
        if let Some(continuity) = continuity {
            for (field, value) in continuity_fields(continuity) {
                invocation.arg(field).arg(value);
            }
        }
        let reply: Value = invocation.invoke_async(&mut self.connection()).await?;
        let reply = items(&reply).ok_or(StoreError::Unexpected("publish"))?;
        let outcome = match reply {
            [tag] if as_bytes(tag) == Some(b"fenced") => PublishOutcome::Fenced,
            [tag, epoch, seq] => {
                let cursor = cursor_of(epoch, seq).ok_or(StoreError::Unexpected("publish"))?;
                match as_bytes(tag) {
                    Some(b"ok") => PublishOutcome::Published(cursor),
                    Some(b"dup") => PublishOutcome::Duplicate(cursor),
                    _ => return Err(StoreError::Unexpected("publish")),
                }
            }
            _ => return Err(StoreError::Unexpected("publish")),
        };
        Ok(outcome)
    }

    /// The shared history: the newest `count` entries (`since` = `None`), or up to `count`
    /// entries after `since`.
    pub async fn history(
        &self,
        keys: &InstanceKeys,
        since: Option<u64>,
        count: usize,
    ) -> Result<HistoryReply, StoreError> {
        let result = self.history_inner(keys, since, count).await;
        self.record("history", &result);
        result
    }

    async fn history_inner(
        &self,
        keys: &InstanceKeys,
        since: Option<u64>,
        count: usize,
    ) -> Result<HistoryReply, StoreError> {
        let reply: Value = scripts::HISTORY
            .key(&keys.meta)
            .key(&keys.log)
            .arg(Epoch::random().to_string())
            .arg(since.map(|s| s.to_string()).unwrap_or_default())
            .arg(count.max(1))
            .arg(self.history_ttl.as_millis() as u64)
            .invoke_async(&mut self.connection())
            .await?;
        let bad = || StoreError::Unexpected("history");
        let reply = items(&reply).ok_or_else(bad)?;
        let [epoch, top, first, stale, entries @ ..] = reply else {
            return Err(bad());
        };
        let epoch = as_text(epoch).and_then(Epoch::parse).ok_or_else(bad)?;
        let entries = entries
            .iter()
            .map(|value| entry(epoch, value).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HistoryReply {
            epoch,
            top: as_u64(top).ok_or_else(bad)?,
            first_retained: as_u64(first).ok_or_else(bad)?,
            stale: as_text(stale)
                .filter(|reason| !reason.is_empty())
                .map(str::to_string),
            entries,
        })
    }

    /// Takes the lease if nobody holds it; then returns where the last holder stopped.
    pub async fn acquire(
        &self,
        keys: &InstanceKeys,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Continuity>, StoreError> {
        let result = async {
            let reply: Value = scripts::LEASE_ACQUIRE
                .key(&keys.lease)
                .key(&keys.meta)
                .arg(holder)
                .arg(ttl.as_millis() as u64)
                .invoke_async(&mut self.connection())
                .await?;
            Ok(match &reply {
                Value::Nil => None,
                Value::Map(pairs) => Some(continuity_from(pairs.iter().map(|(k, v)| (k, v)))),
                other => {
                    let flat = items(other).ok_or(StoreError::Unexpected("lease"))?;
                    Some(continuity_from(
                        flat.chunks(2).filter_map(|c| Some((c.first()?, c.get(1)?))),
                    ))
                }
            })
        }
        .await;
        self.record("lease", &result);
        result
    }

    /// Renews every lease in `leases` (`(lease key, holder)`) in one pipeline: `true` for each
    /// still held.
    pub async fn renew(&self, leases: &[(String, String)], ttl: Duration) -> Result<Vec<bool>, StoreError> {
        let result = async {
            let mut pipe = redis::pipe();
            for (key, holder) in leases {
                // EVAL with the text, not EVALSHA: a pipeline cannot load on NOSCRIPT, and
                // the script is a few bytes.
                pipe.cmd("EVAL")
                    .arg(scripts::LEASE_RENEW_TEXT)
                    .arg(1)
                    .arg(key)
                    .arg(holder)
                    .arg(ttl.as_millis() as u64);
            }
            let replies: Vec<i64> = pipe.query_async(&mut self.connection()).await?;
            Ok(replies.into_iter().map(|held| held == 1).collect())
        }
        .await;
        self.record("lease", &result);
        result
    }

    pub async fn release(&self, keys: &InstanceKeys, holder: &str) -> Result<(), StoreError> {
        let result = scripts::LEASE_RELEASE
            .key(&keys.lease)
            .arg(holder)
            .invoke_async::<Value>(&mut self.connection())
            .await;
        self.done("lease", result)
    }

    /// Who holds each of these leases now (`instance:nonce`), in one `MGET`; `None` for a
    /// lease nobody holds.
    pub async fn lease_holders(&self, lease_keys: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if lease_keys.is_empty() {
            return Ok(Vec::new());
        }
        let result = redis::cmd("MGET")
            .arg(lease_keys)
            .query_async::<Vec<Option<String>>>(&mut self.connection())
            .await
            .map_err(StoreError::from);
        self.record("lease", &result);
        result
    }

    /// Is Redis there? (The degraded-mode watch.)
    pub async fn ping(&self) -> Result<(), StoreError> {
        let result = redis::cmd("PING")
            .query_async::<String>(&mut self.connection())
            .await
            .map_err(StoreError::from)
            // Only Redis says PONG (not whatever else might listen on its port meanwhile).
            .and_then(|answer| match answer.as_str() {
                "PONG" => Ok(()),
                _ => Err(StoreError::Unexpected("PING")),
            });
        self.record("ping", &result);
        result
    }

    /// Records a call whose answer does not matter.
    fn done(&self, operation: &'static str, result: redis::RedisResult<Value>) -> Result<(), StoreError> {
        let result = result.map(drop).map_err(StoreError::from);
        self.record(operation, &result);
        result
    }

    /// Tells every sidecar following the instance that its data is stale (or fresh again),
    /// and keeps it in meta for sidecars that start following later.
    pub async fn announce_health(&self, keys: &InstanceKeys, stale: Option<&str>) -> Result<(), StoreError> {
        // A reason is never empty: '' in meta means fresh.
        let reason = stale.map(|r| if r.is_empty() { "the backend is failing" } else { r });
        let message = match reason {
            Some(reason) => format!("!1\n{reason}"),
            None => "!0".to_string(),
        };
        let result = redis::pipe()
            .hset(&keys.meta, "stale", reason.unwrap_or(""))
            .ignore()
            .publish(&keys.channel, message)
            .ignore()
            .query_async::<()>(&mut self.connection())
            .await
            .map(|()| Value::Nil);
        self.done("health", result)
    }
}

fn continuity_fields(continuity: &Continuity) -> Vec<(&'static str, String)> {
    let mut fields = Vec::new();
    if let Some(etag) = &continuity.etag {
        fields.push(("etag", etag.clone()));
    }
    if let Some(last_modified) = &continuity.last_modified {
        fields.push(("last_modified", last_modified.clone()));
    }
    if let Some(hash) = continuity.content_hash {
        fields.push(("hash", format!("{hash:016x}")));
    }
    if let Some(id) = &continuity.last_event_id {
        fields.push(("last_event_id", id.clone()));
    }
    fields
}

fn continuity_from<'a>(pairs: impl Iterator<Item = (&'a Value, &'a Value)>) -> Continuity {
    let mut continuity = Continuity::default();
    for (name, value) in pairs {
        let Some(value) = as_text(value) else { continue };
        match as_bytes(name) {
            Some(b"etag") => continuity.etag = Some(value.to_string()),
            Some(b"last_modified") => continuity.last_modified = Some(value.to_string()),
            Some(b"hash") => continuity.content_hash = u64::from_str_radix(value, 16).ok(),
            Some(b"last_event_id") => continuity.last_event_id = Some(value.to_string()),
            _ => {}
        }
    }
    continuity
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_messages_carry_cursor_event_type_and_any_bytes() {
        let (cursor, payload) =
            parse_channel_message(b"k3x9q1a:42\nprice\napplication/json\n{\"a\":\n1}").unwrap();
        assert_eq!(cursor.to_string(), "k3x9q1a-42");
        assert_eq!(payload.event.as_deref(), Some("price"));
        assert_eq!(payload.content_type.as_deref(), Some("application/json"));
        assert_eq!(&payload.data[..], b"{\"a\":\n1}");
        let (_, plain) = parse_channel_message(b"k3x9q1a:1\n\n\n").unwrap();
        assert!(plain.event.is_none() && plain.content_type.is_none() && plain.data.is_empty());
        assert!(parse_channel_message(b"!1\nreason").is_none());
    }

    #[test]
    fn continuity_round_trips_through_meta_fields() {
        let continuity = Continuity {
            etag: Some("\"v1\"".into()),
            last_modified: None,
            content_hash: Some(0xdead_beef),
            last_event_id: Some("77".into()),
        };
        let values: Vec<(Value, Value)> = continuity_fields(&continuity)
            .into_iter()
            .map(|(k, v)| (Value::BulkString(k.into()), Value::BulkString(v.into_bytes())))
            .collect();
        assert_eq!(continuity_from(values.iter().map(|(k, v)| (k, v))), continuity);
    }
}
