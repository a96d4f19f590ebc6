//! A long poll's hold: where it starts (answered at once from history, or subscribed) and
//! the wait on its subscription until something after the client's cursor exists, the wait
//! runs out, the server drains or the client goes away. No sockets: unit-tested here with
//! paused time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::hub::{
    CloseReason, Cursor, Delivery, DirectSink, Message, Mode, Resume, Subscribe, Subscription, Topic,
};
use crate::metrics::SubscriberGauge;

/// What ends a hold.
pub(super) enum Outcome {
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

/// Where a poll starts: answered at once from history, or waiting on a subscription.
pub(super) enum Started {
    Ready(Outcome),
    Waiting(Waiting),
}

pub(super) struct Waiting {
    subscription: Subscription,
    resume: Resume,
    /// The position a `304` repeats: what the client already has.
    position: Cursor,
}

pub(super) fn start(topic: &Arc<Topic>, cursor: Option<Cursor>) -> Started {
    let resume = cursor.map_or(Resume::Latest, Resume::After);
    let Subscribe {
        reset,
        backlog,
        start,
        subscription,
    } = topic.subscribe(resume);
    let position = cursor.unwrap_or(start);
    if reset.is_some() || !backlog.is_empty() {
        return Started::Ready(Outcome::Messages {
            position: reset.unwrap_or(position),
            messages: backlog,
            reset: reset.is_some(),
            skipped: 0,
        });
    }
    Started::Waiting(Waiting {
        subscription,
        resume,
        position,
    })
}

impl Waiting {
    /// Lets the publisher hand this hold's first message to `sink` (see `answer_sink`).
    pub(super) fn set_direct_sink(&self, sink: Arc<dyn DirectSink>) {
        self.subscription.set_direct_sink(sink);
    }

    /// The hold itself, with the client's going away as a future (it ends the hold when it
    /// completes, whatever its output) so that it runs without a pingora session in tests.
    pub(super) async fn wait<F: Future>(
        self,
        topic: &Arc<Topic>,
        wait: Duration,
        shutdown: &CancellationToken,
        client_gone: F,
    ) -> Outcome {
        let _held = SubscriberGauge::new(topic, "long_poll");
        let Waiting {
            subscription,
            resume,
            position,
        } = self;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{HistoryLimits, OverflowPolicy, Payload, QueueLimits, TopicKey, TopicSettings};
    use bytes::Bytes;

    /// A whole poll after `cursor`, the client never going away.
    async fn hold_on(
        topic: &Arc<Topic>,
        cursor: Option<Cursor>,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Outcome {
        match start(topic, cursor) {
            Started::Ready(outcome) => outcome,
            Started::Waiting(waiting) => {
                waiting
                    .wait(topic, wait, shutdown, std::future::pending::<()>())
                    .await
            }
        }
    }

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
                hold_on(&topic, Some(cursor), Duration::from_secs(30), &shutdown).await
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
