//! Long polling: the request is held on a hub subscription plus a timer (no thread, no busy
//! loop) until something after the client's cursor exists or the wait runs out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora_error::Result;
use pingora_proxy::Session;
use tokio_util::sync::CancellationToken;

use super::response::{
    batch_response, make_private, not_modified, poll_cursor, requested_wait, respond, respond_reason,
    state_response,
};
use crate::config::TopicSpec;
use crate::hub::{CloseReason, Cursor, Delivery, Message, Mode, Resume, Subscribe, Topic};
use crate::metrics::{SubscriberGauge, METRICS};

/// What ends a hold.
enum Outcome {
    /// Messages after the cursor (`reset` if the cursor was unknown).
    Messages {
        messages: Vec<Arc<Message>>,
        reset: bool,
        position: Cursor,
        /// Messages dropped before these (`drop_oldest`) that history could not supply.
        skipped: u64,
    },
    /// Nothing new within the wait (or the server is draining): `304`.
    NothingNew(Cursor),
    ClientGone,
}

pub async fn serve(
    session: &mut Session,
    topic: Arc<Topic>,
    spec: &TopicSpec,
    shutdown: &CancellationToken,
    private: bool,
) -> Result<()> {
    let request = session.req_header();
    let wait = match requested_wait(request, spec.long_poll_max_wait) {
        Ok(wait) => wait.unwrap_or(spec.long_poll_max_wait),
        Err(reason) => return respond_reason(session, 400, &reason, &[]).await,
    };
    let cursor = match poll_cursor(request) {
        Ok(cursor) => cursor,
        Err(reason) => return respond_reason(session, 400, &reason, &[]).await,
    };
    let deltas = match super::delta::requested(request, spec.hub.deltas) {
        Ok(deltas) => deltas,
        Err(reason) => return respond_reason(session, 400, &reason, &[]).await,
    };
    let outcome = {
        let _held = SubscriberGauge::new(&topic, "long_poll");
        hold(session, &topic, cursor, wait, shutdown).await
    };
    if let Outcome::Messages { messages, .. } = &outcome {
        let delivered = if spec.mode() == Mode::State {
            1
        } else {
            messages.len() as u64
        };
        METRICS
            .deliveries
            .with_label_values(&[&topic.key().name, "long_poll"])
            .inc_by(delivered);
        // The message whose age the write shows: the state sent, or the oldest event.
        let sent = if spec.mode() == Mode::State {
            messages.last()
        } else {
            messages.first()
        };
        sent.inspect(|message| crate::metrics::delivered(&topic, message, delivered));
    }
    let mode = spec.mode();
    let (mut response, body) = match outcome {
        Outcome::ClientGone => {
            session.set_keepalive(None);
            return Ok(());
        }
        Outcome::NothingNew(position) => (not_modified(position, mode)?, Bytes::new()),
        Outcome::Messages {
            messages,
            reset,
            position,
            skipped,
        } => match (mode, messages.last()) {
            // A delta client holding a state still in history gets the patch from it.
            (Mode::State, Some(latest)) => match cursor.filter(|_| deltas && !reset) {
                Some(base) => match super::delta::long_poll_patch(&topic, base, latest)? {
                    Some(answer) => answer,
                    None => state_response(&topic, latest)?,
                },
                None => state_response(&topic, latest)?,
            },
            (Mode::State, None) => (not_modified(position, mode)?, Bytes::new()),
            (Mode::Events, last) => {
                let cursor = last.map_or(position, |m| m.cursor);
                batch_response(mode, cursor, &messages, reset, skipped)?
            }
        },
    };
    if private {
        make_private(&mut response)?;
    }
    topic.stats().wrote(body.len());
    respond(session, response, body).await
}

async fn hold(
    session: &mut Session,
    topic: &Arc<Topic>,
    cursor: Option<Cursor>,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Outcome {
    hold_on(topic, cursor, wait, shutdown, session.read_body_or_idle(true)).await
}

/// The hold itself, with the client's going away as a future (it ends the hold when it
/// completes, whatever its output) so that it runs without a pingora session in tests.
async fn hold_on<F: Future>(
    topic: &Arc<Topic>,
    cursor: Option<Cursor>,
    wait: Duration,
    shutdown: &CancellationToken,
    client_gone: F,
) -> Outcome {
    let resume = cursor.map_or(Resume::Latest, Resume::After);
    let Subscribe {
        reset,
        backlog,
        start,
        subscription,
    } = topic.subscribe(resume);
    // The position a `304` repeats: what the client already has.
    let position = cursor.unwrap_or(start);
    if reset.is_some() || !backlog.is_empty() {
        return Outcome::Messages {
            position: reset.unwrap_or(position),
            messages: backlog,
            reset: reset.is_some(),
            skipped: 0,
        };
    }
    let deadline = tokio::time::Instant::now() + wait;
    let first = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return Outcome::NothingNew(position),
        delivery = subscription.recv() => delivery,
        _ = tokio::time::sleep_until(deadline) => return Outcome::NothingNew(position),
        _ = client_gone => return Outcome::ClientGone,
    };
    match first {
        Delivery::Message { message, skipped } => {
            // Everything already queued goes in the same answer: fewer round trips under load.
            let mut messages = vec![message];
            let mut gap = skipped;
            while let Some(Delivery::Message { message, skipped }) = subscription.try_recv() {
                gap += skipped;
                messages.push(message);
            }
            if gap == 0 || topic.settings().mode == Mode::State {
                // A state topic answers with the newest state anyway: nothing is missing.
                return Outcome::Messages {
                    messages,
                    reset: false,
                    position,
                    skipped: 0,
                };
            }
            // `drop_oldest` dropped messages for this request ("nothing falls between two
            // polls"): history may still hold all of them; if not, the gap is announced as
            // SSE announces it, with `reset` and how many were skipped.
            drop(subscription);
            let again = topic.subscribe(Resume::After(position));
            match again.reset {
                None => Outcome::Messages {
                    messages: again.backlog,
                    reset: false,
                    position,
                    skipped: 0,
                },
                Some(_) => Outcome::Messages {
                    messages,
                    reset: true,
                    position,
                    skipped: gap,
                },
            }
        }
        Delivery::Closed(CloseReason::Overflow) => {
            // More arrived than this request's queue holds before it could answer; history
            // has them all (or says they are gone), so answer from there.
            drop(subscription);
            let again = topic.subscribe(resume);
            Outcome::Messages {
                position: again.reset.unwrap_or(position),
                reset: again.reset.is_some(),
                messages: again.backlog,
                skipped: 0,
            }
        }
        Delivery::Closed(CloseReason::TopicClosed) => Outcome::NothingNew(position),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{HistoryLimits, OverflowPolicy, Payload, QueueLimits, TopicKey, TopicSettings};

    /// An event topic under `drop_oldest` whose subscriber queue holds two messages.
    fn drop_oldest_topic(history: usize) -> Arc<Topic> {
        Topic::new(
            TopicKey::new("t", vec![]),
            TopicSettings {
                mode: Mode::Events,
                history: HistoryLimits {
                    max_messages: history,
                    max_bytes: 1 << 20,
                },
                queue: QueueLimits {
                    max_messages: 2,
                    max_bytes: 1 << 20,
                },
                on_full: OverflowPolicy::DropOldest,
                deltas: false,
                idle_linger: Duration::from_secs(5),
            },
        )
    }

    fn publish(topic: &Topic) -> Cursor {
        topic
            .publish(Payload {
                data: Bytes::from_static(b"x"),
                ..Payload::default()
            })
            .cursor
    }

    /// Holds a long poll after `cursor` and, once it waits on its queue, publishes `burst`
    /// messages in one go: more than the queue holds before the poll gets to drain it.
    async fn poll_through_a_burst(topic: &Arc<Topic>, cursor: Cursor, burst: usize) -> Outcome {
        let held = tokio::spawn({
            let topic = topic.clone();
            async move {
                let shutdown = CancellationToken::new();
                let never_gone = std::future::pending::<()>();
                hold_on(
                    &topic,
                    Some(cursor),
                    Duration::from_secs(30),
                    &shutdown,
                    never_gone,
                )
                .await
            }
        });
        // Subscribing and starting to wait happen in one poll of the task, so once it is
        // subscribed it waits; the runtime is current-thread and nothing below yields, so
        // the whole burst is queued (and overflows) before the poll drains it.
        while topic.subscriber_count() == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..burst {
            publish(topic);
        }
        held.await.expect("the hold does not panic")
    }

    /// `(seqs, reset, skipped)` of a `Messages` outcome.
    fn answer(outcome: Outcome) -> (Vec<u64>, bool, u64) {
        match outcome {
            Outcome::Messages {
                messages,
                reset,
                skipped,
                ..
            } => (messages.iter().map(|m| m.cursor.seq).collect(), reset, skipped),
            Outcome::NothingNew(_) => panic!("answered 304"),
            Outcome::ClientGone => panic!("client gone"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn drop_oldest_overflow_is_answered_from_history() {
        let topic = drop_oldest_topic(16);
        let seen = publish(&topic);
        // The queue keeps 5 and 6 (2..4 dropped); history still has 2..6.
        let outcome = poll_through_a_burst(&topic, seen, 5).await;
        assert_eq!(answer(outcome), (vec![2, 3, 4, 5, 6], false, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn drop_oldest_overflow_beyond_history_is_a_reset_with_skipped() {
        let topic = drop_oldest_topic(3);
        let seen = publish(&topic);
        // The queue keeps 6 and 7 (2..5 dropped); history has only 5..7, not 2.
        let outcome = poll_through_a_burst(&topic, seen, 6).await;
        assert_eq!(answer(outcome), (vec![6, 7], true, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn without_overflow_the_queue_is_the_answer() {
        let topic = drop_oldest_topic(16);
        let seen = publish(&topic);
        let outcome = poll_through_a_burst(&topic, seen, 2).await;
        assert_eq!(answer(outcome), (vec![2, 3], false, 0));
    }
}
