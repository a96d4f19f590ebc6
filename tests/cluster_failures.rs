//! Failure cases of the cluster design (`../shared/scaleout.md` §8), beyond issue 14's
//! acceptance list: Pub/Sub connections cut in a loop, a poll holder paused past its lease,
//! Redis restarted empty. Three real sidestream processes on a test `redis-server` (needs it
//! on PATH; fails, never skips).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::cluster::{Cluster, LEASE_TTL_MS, PUSH_TOPIC};
use common::redis::RedisServer;
use common::trace::*;
use common::*;

/// One cluster at a time (four processes each on a 2-core machine).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const POLL_TOPIC: &str = r#"
[[topic]]
name = "prices"
path = "/prices/{symbol}"
mode = "events"
queue_max_messages = 5000
history_max_messages = 5000
source.poll = { url = "/prices/{symbol}", interval_ms = 200, jitter_ms = 0 }
"#;

/// §8.5: `CLIENT KILL TYPE pubsub` every 200 ms for 5 s while A publishes at 200 msg/s:
/// subscribers on A, B and C still get every message once, in order (each cut is repaired
/// from the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_connections_cut_in_a_loop_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let backend = TestBackend::start().await;
    let cluster = Cluster::start(3, backend.port, "", PUSH_TOPIC).await;
    let path = "/alerts/cuts";
    let start = publish_ok(cluster.a().admin_port(), path, "0", None).await["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let mut subscribers = Vec::new();
    for instance in &cluster.instances {
        let client = SseClient::connect(instance.port(), path, &[("Last-Event-ID", start.as_str())]).await;
        subscribers.push((client, Trace::new(&format!("subscriber on {}", instance.id))));
    }
    const LAST: u64 = 1000;
    let publisher = Publisher::start(cluster.a().admin_port(), path, 1, LAST, Duration::from_millis(5));
    let mut cuts = 0usize;
    while publisher.published() < LAST {
        let killed = cluster.redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        cuts += killed.trim().parse::<usize>().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cursors = publisher.finish().await;
    assert!(cuts > 0, "the loop cut some Pub/Sub connections");
    let mut faults = Vec::new();
    for (mut client, mut trace) in subscribers {
        read_sse(&mut client, &mut trace, |t| t.last_n() >= Some(LAST)).await;
        if let Err(fault) = trace.check_contiguous() {
            faults.push(fault);
        }
        let ids: Vec<String> = trace.got.iter().map(|g| g.id.clone()).collect();
        if trace.numbers() != (1..=LAST).collect::<Vec<_>>() || ids != cursors {
            faults.push(format!("{}: not exactly 1..={LAST} with A's cursors", trace.what));
        }
    }
    assert!(faults.is_empty(), "{cuts} Pub/Sub connections cut: {faults:#?}");
}

/// §8.1/§8.2: the poll holder is paused (SIGSTOP) for 2 × the lease TTL: a standby takes over
/// and polls meanwhile; when the old holder wakes it neither publishes (fenced) nor keeps
/// polling, so clients on every instance see one cursor sequence without gap or duplicate and
/// the backend is polled once per interval again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_poll_holder_is_replaced_and_fenced() {
    let _serial = SERIAL.lock().await;
    let backend = TestBackend::start().await;
    backend.set("/prices/P", Behaviour::Counter);
    let cluster = Cluster::start(3, backend.port, "", POLL_TOPIC).await;
    let mut clients = Vec::new();
    for instance in &cluster.instances {
        let mut client = SseClient::connect(instance.port(), "/prices/P", &[]).await;
        let mut trace = Trace::new(&format!("client on {}", instance.id));
        read_sse(&mut client, &mut trace, |t| !t.got.is_empty()).await;
        clients.push((instance.id.clone(), client, trace));
    }
    // Whether the woken holder still tries to publish depends on which of its tasks runs
    // first after SIGCONT (a poll about to publish, or the renewal that sees the local
    // deadline passed and stops it): ≈ 3 in 4 pauses end in a fenced publish. Pausing the
    // current holder again until one does (at most 8 times) makes the fence observable. (A
    // loaded CI run once had 4 pauses in a row end without one.)
    let mut fenced = 0.0;
    let mut pauses = Vec::new();
    while fenced == 0.0 && pauses.len() < 8 {
        let holders = cluster.lease_holders();
        assert_eq!(
            holders.len(),
            1,
            "one lease for the one poll topic instance: {holders:?}"
        );
        let holder = cluster.instances.iter().find(|i| i.id == holders[0]).unwrap();
        holder.signal("STOP");
        let paused_at = backend.hit_count("/prices/P");
        tokio::time::sleep(Duration::from_millis(2 * LEASE_TTL_MS)).await;
        let polled_while_paused = backend.hit_count("/prices/P") - paused_at;
        holder.signal("CONT");
        assert!(
            polled_while_paused > 0,
            "a standby took over while {} was paused",
            holder.id
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        fenced = 0.0;
        for instance in &cluster.instances {
            fenced += metric(
                instance.admin_port(),
                "sidestream_cluster_fenced_publishes_total",
                &[],
            )
            .await;
        }
        pauses.push(format!(
            "{} ({polled_while_paused} polls while paused)",
            holder.id
        ));
    }
    // After the wake-up: one poller again (2 s window: 10 slots, ± 2 as in tests/cluster.rs).
    let before = backend.hit_count("/prices/P");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let after = backend.hit_count("/prices/P");
    let polls = after - before;
    let target = after as u64;
    let mut faults = Vec::new();
    for (_, client, trace) in &mut clients {
        read_sse(client, trace, |t| t.last_n() >= Some(target)).await;
        // Every poll is a change here, but a poll whose publish was fenced is not a message:
        // the numbers may skip, the cursors may not.
        let mut seqs = trace.got.iter().map(|g| split_cursor(&g.id));
        let first = seqs.next().unwrap();
        let mut previous = first;
        for seq in seqs {
            if seq.0 != previous.0 || seq.1 != previous.1 + 1 {
                faults.push(format!("{}: cursor {:?} after {:?}", trace.what, seq, previous));
                break;
            }
            previous = seq;
        }
        if trace.got.windows(2).any(|w| w[1].n <= w[0].n) {
            faults.push(format!("{}: a value came twice or out of order", trace.what));
        }
        if !trace.unexpected.is_empty() {
            faults.push(format!("{}: {:?}", trace.what, trace.unexpected));
        }
    }
    eprintln!("paused {pauses:?}, {polls} polls after, {fenced} fenced");
    assert!(
        faults.is_empty() && (8..=12).contains(&polls) && fenced > 0.0,
        "paused {pauses:?}; {polls} polls in the 2 s after (8..=12), {fenced} fenced publishes \
         (want > 0): {faults:#?}"
    );
}

/// §8.7: Redis restarted without persistence: each subscriber sees exactly one reset (the
/// epoch changed: crossing it silently would be a gap nobody was told about), then
/// everything published after the restart, in order, no duplicate; publishing works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_redis_restart_costs_exactly_one_reset() {
    a_redis_restart_costs_exactly_one_reset(RedisServer::start().await).await;
}

/// §8.8: Redis restarted with its append-only file: the data is back but `run_id` changed,
/// so the epoch changes once (a rolled-back history must never be mistaken for the old one):
/// exactly one reset per subscriber, nothing lost, and no cursor names two contents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aof_redis_restart_changes_the_epoch_once_and_never_reuses_a_cursor() {
    let redis = RedisServer::start_persistent().await;
    a_redis_restart_costs_exactly_one_reset(redis).await;
}

/// §8.8 for a poll topic whose backend does not change: the AOF brings back the holder's
/// lease and the stored content hash, but `run_id` changed, so the history starts a new
/// epoch, empty. The holder starts its poller over (and a new holder ignores the old meta),
/// so the unchanged state is published into the new epoch: a client arriving after the
/// restart, on any instance, gets it at once in the new epoch. (Without that it got nothing
/// until the backend changed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aof_redis_restart_republishes_an_unchanged_poll_state_into_the_new_epoch() {
    let _serial = SERIAL.lock().await;
    let backend = TestBackend::start().await;
    backend.set("/prices/S", Behaviour::Json(r#"{"n":7}"#.into()));
    let redis = RedisServer::start_persistent().await;
    let mut cluster = Cluster::start_on(redis, 3, backend.port, "", common::cluster::POLL_TOPIC).await;
    let first_event = |port: u16| async move {
        let mut client = SseClient::connect(port, "/prices/S", &[]).await;
        let event = tokio::time::timeout(Duration::from_secs(2), client.next_event())
            .await
            .ok()
            .flatten()?;
        Some((event.id.unwrap_or_default(), event.data.unwrap_or_default()))
    };
    // Held on every instance, so each one follows (and one polls).
    let mut holders = Vec::new();
    for instance in &cluster.instances {
        holders.push(SseClient::connect(instance.port(), "/prices/S", &[]).await);
    }
    let (before, data) = first_event(cluster.a().port())
        .await
        .expect("the state before the restart");
    assert!(data.contains("\"n\":7"), "{data}");
    let epoch_before = split_cursor(&before).0.to_string();
    eventually("the lease is held", || !cluster.lease_holders().is_empty()).await;
    cluster.redis.restart().await;
    let mut faults = Vec::new();
    for instance in &cluster.instances {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match first_event(instance.port()).await {
                Some((id, data)) if split_cursor(&id).0 != epoch_before => {
                    if !data.contains("\"n\":7") {
                        faults.push(format!("{}: {data} in the new epoch", instance.id));
                    }
                    break;
                }
                got => {
                    if tokio::time::Instant::now() >= deadline {
                        faults.push(format!("{}: no state in a new epoch, last {got:?}", instance.id));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    assert!(faults.is_empty(), "{faults:#?}\n{}", cluster.logs(40));
    drop(holders);
}

async fn a_redis_restart_costs_exactly_one_reset(redis: RedisServer) {
    let _serial = SERIAL.lock().await;
    let backend = TestBackend::start().await;
    let mut cluster = Cluster::start_on(redis, 3, backend.port, "", PUSH_TOPIC).await;
    let path = "/alerts/restart";
    let start = publish_ok(cluster.a().admin_port(), path, "0", None).await["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let mut subscribers = Vec::new();
    for instance in &cluster.instances[1..] {
        let client = SseClient::connect(instance.port(), path, &[("Last-Event-ID", start.as_str())]).await;
        subscribers.push((client, Trace::new(&format!("subscriber on {}", instance.id))));
    }
    for n in 1..=50u64 {
        publish_ok(cluster.a().admin_port(), path, &n.to_string(), None).await;
    }
    for (client, trace) in &mut subscribers {
        read_sse(client, trace, |t| t.last_n() >= Some(50)).await;
    }
    cluster.redis.restart().await;
    // Publishes may be refused until the sidecars reconnect; each is retried (bounded) with
    // its own Idempotency-Key, as a real publisher would, so a retry is never a duplicate.
    let mut refused = 0usize;
    let epoch_before = split_cursor(&start).0;
    let mut epochs_after = std::collections::BTreeSet::<String>::new();
    for n in 51..=100u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        let key = format!("restart-{n}");
        loop {
            let reply = publish(cluster.a().admin_port(), path, &n.to_string(), Some(&key)).await;
            if reply.status == 200 {
                let answer: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
                epochs_after.insert(split_cursor(answer["cursor"].as_str().unwrap()).0.to_string());
                break;
            }
            refused += 1;
            assert!(
                tokio::time::Instant::now() < deadline,
                "publishing works again after the Redis restart (last: {} {})",
                reply.status,
                reply.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        epochs_after.len(),
        1,
        "one epoch after the restart: {epochs_after:?}"
    );
    assert!(
        !epochs_after.contains(epoch_before),
        "a restarted Redis (new run_id) must not go on with the old epoch's seqs"
    );
    let mut faults = Vec::new();
    let mut contents: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for ((mut client, mut trace), port) in subscribers
        .into_iter()
        .zip([cluster.b().port(), cluster.c().port()])
    {
        // Events after the restart: a reset notice (at most one) is recorded as unexpected.
        // A stream the sidecar ends is reconnected with the last id, as EventSource does.
        let mut reconnects = 0;
        while !read_sse(&mut client, &mut trace, |t| t.last_n() >= Some(100)).await {
            reconnects += 1;
            assert!(reconnects <= 3, "{}: ended {reconnects} times", trace.what);
            let last = trace.last_id().unwrap().to_string();
            client = SseClient::connect(port, path, &[("Last-Event-ID", last.as_str())]).await;
            trace.reconnected();
        }
        eprintln!(
            "{}: reconnects at {:?}, notices {:?}",
            trace.what, trace.reconnects, trace.unexpected
        );
        for got in &trace.got {
            if let Some(other) = contents.insert(got.id.clone(), got.n) {
                if other != got.n {
                    faults.push(format!("cursor {} named {other} and {}", got.id, got.n));
                }
            }
        }
        let resets = trace.unexpected.iter().filter(|u| u.contains("reset")).count();
        if resets != 1 || trace.unexpected.len() != resets {
            faults.push(format!("{}: {:?}", trace.what, trace.unexpected));
        }
        if trace.numbers() != (1..=100).collect::<Vec<_>>() {
            faults.push(format!(
                "{}: not exactly 1..=100 once each in order (reconnects at {:?}): {:?}",
                trace.what,
                trace.reconnects,
                trace.numbers()
            ));
        }
    }
    assert!(
        faults.is_empty(),
        "{refused} publishes refused while reconnecting: {faults:#?}"
    );
}

/// §8.4 and the cursor rules on any instance: on instances that never saw the topic, a cursor
/// trimmed off the shared history, one from another epoch and one in the future each get one
/// `reset` and then what history holds; a retained cursor replays exactly what follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_resolve_against_the_shared_history_on_any_instance() {
    let _serial = SERIAL.lock().await;
    let backend = TestBackend::start().await;
    let topics = PUSH_TOPIC.replace("history_max_messages = 5000", "history_max_messages = 20");
    let cluster = Cluster::start(3, backend.port, "", &topics).await;
    let path = "/alerts/trim";
    let mut cursors = Vec::new();
    for n in 0..=100u64 {
        let reply = publish_ok(cluster.a().admin_port(), path, &n.to_string(), None).await;
        cursors.push(reply["cursor"].as_str().unwrap().to_string());
    }
    let (epoch, top) = split_cursor(&cursors[100]);
    let retained = cursors[90].clone();
    let mut faults = Vec::new();
    for (what, port, cursor) in [
        ("trimmed cursor on B", cluster.b().port(), cursors[0].clone()),
        ("other epoch on C", cluster.c().port(), format!("zzzzzzz-{top}")),
        (
            "future cursor on B",
            cluster.b().port(),
            format!("{epoch}-{}", top + 50),
        ),
    ] {
        let mut client = SseClient::connect(port, path, &[("Last-Event-ID", cursor.as_str())]).await;
        let mut trace = Trace::new(what);
        read_sse(&mut client, &mut trace, |t| t.last_n() >= Some(100)).await;
        let resets = trace
            .unexpected
            .iter()
            .filter(|u| u.contains("event: reset"))
            .count();
        if resets != 1 || trace.unexpected.len() != 1 {
            faults.push(format!("{what}: one reset expected, got {:?}", trace.unexpected));
        }
        let mut messages = trace.clone();
        messages.unexpected.clear();
        if let Err(fault) = messages.check_contiguous() {
            faults.push(fault);
        }
        // What history holds: at most the last 20 (81..=100), in order.
        let numbers = trace.numbers();
        if numbers.first().is_none_or(|first| *first < 81) || numbers.last() != Some(&100) {
            faults.push(format!("{what}: after the reset {numbers:?}"));
        }
    }
    let mut client =
        SseClient::connect(cluster.c().port(), path, &[("Last-Event-ID", retained.as_str())]).await;
    let mut trace = Trace::new("retained cursor on C");
    read_sse(&mut client, &mut trace, |t| t.last_n() >= Some(100)).await;
    if let Err(fault) = trace.check_contiguous() {
        faults.push(fault);
    }
    if trace.numbers() != (91..=100).collect::<Vec<_>>() {
        faults.push(format!("retained cursor on C: {:?}", trace.numbers()));
    }
    assert!(faults.is_empty(), "{faults:#?}");
}

/// §8.9: `DEBUG SLEEP 5` stalls Redis with the poll holder's lease in it. The holder cannot
/// renew, so it stops polling on its own local deadline (0.8 × TTL after its last renewal),
/// and nobody else can take the lease while Redis sleeps: for the rest of the stall nobody
/// polls — never two pollers. When Redis wakes, the old holder's queued publishes are fenced
/// (its lease expired meanwhile), one sidecar polls again, and every client on every instance
/// has one contiguous cursor sequence with strictly increasing values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_stops_the_poller_before_anyone_else_can_take_over() {
    let _serial = SERIAL.lock().await;
    let backend = TestBackend::start().await;
    backend.set("/prices/D", Behaviour::Counter);
    let redis = RedisServer::start_debuggable().await;
    let cluster = Cluster::start_on(redis, 3, backend.port, "", POLL_TOPIC).await;
    let mut clients = Vec::new();
    for instance in &cluster.instances {
        let mut client = SseClient::connect(instance.port(), "/prices/D", &[]).await;
        let mut trace = Trace::new(&format!("client on {}", instance.id));
        read_sse(&mut client, &mut trace, |t| !t.got.is_empty()).await;
        clients.push((client, trace));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sleeper = std::process::Command::new("redis-cli")
        .args(["-p", &cluster.redis.port().to_string(), "DEBUG", "SLEEP", "5"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The local deadline is 0.8 × 1.5 s after the last renewal, renewals come every 0.5 s:
    // by 2.2 s into the stall the holder has stopped. From then until Redis wakes, no polls.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let quiet_from = backend.hit_count("/prices/D");
    let stalled_from = std::time::Instant::now();
    // A stalled Redis slows publishing, never the clients: a client resuming on any instance
    // is served what it missed from the local history while Redis still sleeps.
    let resume_from = clients[0].1.got[0].id.clone();
    for instance in &cluster.instances {
        let mut late = SseClient::connect(
            instance.port(),
            "/prices/D",
            &[("Last-Event-ID", resume_from.as_str())],
        )
        .await;
        let first = tokio::time::timeout(Duration::from_millis(800), late.next_event()).await;
        assert!(
            matches!(&first, Ok(Some(event)) if event.data.as_deref().is_some_and(|d| d.contains("\"n\""))),
            "{}: a client resuming while Redis is stalled is served at once: {first:?}",
            instance.id
        );
    }
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "those clients were served during the stall"
    );
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(stalled_from.elapsed())).await;
    let polled_while_stalled = backend.hit_count("/prices/D") - quiet_from;
    let deadline = std::time::Instant::now() + WAIT;
    while sleeper.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "DEBUG SLEEP 5 returns");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        polled_while_stalled, 0,
        "nobody polls while Redis is stalled and the holder's lease cannot be renewed"
    );
    // Polling resumes under one holder; clients everywhere follow it.
    let resumed_from = backend.hit_count("/prices/D");
    eventually("polling resumes after the stall", || {
        backend.hit_count("/prices/D") >= resumed_from + 5
    })
    .await;
    let target = backend.hit_count("/prices/D") as u64;
    let mut faults = Vec::new();
    for (client, trace) in &mut clients {
        read_sse(client, trace, |t| t.last_n() >= Some(target)).await;
        let seqs: Vec<(&str, u64)> = trace.got.iter().map(|g| split_cursor(&g.id)).collect();
        if seqs.windows(2).any(|w| w[1].0 != w[0].0 || w[1].1 != w[0].1 + 1) {
            faults.push(format!("{}: cursors not contiguous: {seqs:?}", trace.what));
        }
        if trace.got.windows(2).any(|w| w[1].n <= w[0].n) {
            faults.push(format!("{}: a value came twice or out of order", trace.what));
        }
        if !trace.unexpected.is_empty() {
            faults.push(format!("{}: {:?}", trace.what, trace.unexpected));
        }
    }
    assert!(faults.is_empty(), "{faults:#?}");
}

/// §8.6: a Pub/Sub reader that falls behind is cut off by Redis (`client-output-buffer-limit
/// pubsub`, set tiny here) — B is paused (SIGSTOP) while A publishes 16 KiB messages (more than loopback socket buffers hold). When B
/// wakes, its connection is gone: it reconnects, resubscribes and repairs from the stream, so
/// its subscriber still gets every message once, in order, with A's cursors (or would be told
/// `reset` if the stream no longer had them) — never a silent gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubsub_reader_cut_off_for_falling_behind_catches_up() {
    const LAST: u64 = 300;
    let _serial = SERIAL.lock().await;
    let backend = TestBackend::start().await;
    // Room for the whole burst in the client's queue and the ring: this test is about the
    // Pub/Sub cut, not the slow-client policy.
    let topics = format!("{PUSH_TOPIC}queue_max_bytes = 268435456\nhistory_max_bytes = 268435456\n");
    let cluster = Cluster::start(3, backend.port, "", &topics).await;
    let path = "/alerts/slow";
    let pad = "x".repeat(16 * 1024);
    let start = publish_ok(cluster.a().admin_port(), path, "{\"n\":0}", None).await["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let mut client = SseClient::connect(cluster.b().port(), path, &[("Last-Event-ID", start.as_str())]).await;
    let mut trace = Trace::new("subscriber on b");
    cluster
        .redis
        .cli(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 8kb 4kb 1"]);
    cluster.b().signal("STOP");
    let mut cursors = Vec::new();
    for n in 1..=LAST {
        let body = format!("{{\"n\":{n},\"pad\":\"{pad}\"}}");
        let reply = publish_ok(cluster.a().admin_port(), path, &body, None).await;
        cursors.push(reply["cursor"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.b().signal("CONT");
    assert!(
        read_sse(&mut client, &mut trace, |t| t.last_n() >= Some(LAST)).await,
        "the stream on b stays open"
    );
    let ids: Vec<String> = trace.got.iter().map(|g| g.id.clone()).collect();
    assert!(
        trace.numbers() == (1..=LAST).collect::<Vec<_>>() && ids == cursors && trace.unexpected.is_empty(),
        "b's subscriber got exactly 1..={LAST} with A's cursors: {:?} {:?}",
        trace.numbers(),
        trace.unexpected
    );
    let repaired = metric(
        cluster.b().admin_port(),
        "sidestream_cluster_gap_repairs_total",
        &[("outcome", "repaired")],
    )
    .await;
    assert!(
        repaired >= 1.0,
        "b repaired from the stream (the cut happened): {repaired}"
    );
}
