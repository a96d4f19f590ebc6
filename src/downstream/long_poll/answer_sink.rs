//! A held long poll answered by the publishing task itself, as nginx answers its waiting
//! requests from the publishing event: one `send` on the client's socket, without waking the
//! poll's own task.
//!
//! Before this, every delivery to a held poll cost two wake-ups of its task: one from the
//! publisher (to write the answer) and one from the reactor (the client's next request).
//! With the sink the publisher writes the answer, and the task wakes once, when the next
//! request arrives, which it reads with the same read that watched for the client's going
//! away (into a buffer on the stack of that one poll, so that a held poll holds no read
//! buffer: see `watch_client`).
//!
//! The sink takes only what is the same for every client: the one-event answer made once
//! per message (`single_event_answer`), on a plain TCP socket whose writes are all flushed,
//! for a request with nothing of its own to add (not `HEAD`, not private, no CORS); the
//! task decides that when it arms the sink. Anything else, or a socket that would block at
//! once, takes the queue and the task's write as before.
//!
//! The sink only holds the socket's descriptor, never the socket: the task owns it and
//! reads from it. So the descriptor is written only while the sink is armed, under its lock,
//! and the task disarms it ([`AnswerSink::finish`]) before the socket can be closed: a
//! descriptor number reused by another connection is never written.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};

use super::HoldTicket;
use crate::downstream::direct::send_now;
use crate::downstream::response::{single_event_answer, with_http_date};
use crate::hub::{DirectSink, Message, Topic};
use crate::metrics::METRICS;

/// One held poll's sink, armed when the publisher may answer it (a new one for each hold).
#[derive(Default)]
pub(super) struct AnswerSink {
    state: Mutex<SinkState>,
}

#[derive(Default)]
enum SinkState {
    /// No hold the publisher may answer: offers are refused (the message is queued).
    #[default]
    Idle,
    Armed(Armed),
    /// The client sent bytes while its poll was held (a pipelined request): the task
    /// answers this hold itself, and closes the connection after it.
    Withdrawn(HoldTicket),
    /// The publisher answered; `tail` is what the kernel did not take at once. The hub
    /// offers nothing more ([`DirectSink::takes_one`]): the client's next poll asks for what
    /// follows its new cursor, and gets it from history, as it would after any answer.
    Answered {
        tail: Bytes,
    },
}

struct Armed {
    fd: RawFd,
    topic: Arc<Topic>,
    /// The answer's `Connection` value.
    connection: &'static [u8],
    /// The drain's count and the per-IP slot, released as soon as the poll is answered.
    ticket: HoldTicket,
    /// The connection's task, woken when the kernel did not take a direct answer whole:
    /// the client waits for the rest before it asks again, so only the task can finish it.
    /// (A waker, not a `Notify`: a held poll's memory is the budget here.)
    task: Option<Waker>,
}

/// How a hold ended, as far as the sink knows.
pub(super) enum Finished {
    /// The sink was not armed for it, or it was withdrawn: the task answers, with this
    /// ticket when it had given it to the sink.
    NotAnswered(Option<HoldTicket>),
    /// The publisher answered; the task writes `tail` (often empty) and reads the next
    /// request.
    Answered { tail: Bytes },
}

impl AnswerSink {
    fn lock(&self) -> MutexGuard<'_, SinkState> {
        // Every transition leaves the state whole; a panic elsewhere must not lose the socket.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets the publisher answer the hold about to wait on `topic`, with one `send` on `fd`
    /// (a plain TCP socket with nothing waiting above it).
    pub(super) fn arm(&self, fd: RawFd, topic: Arc<Topic>, keep_alive: bool, ticket: HoldTicket) {
        let connection: &'static [u8] = if keep_alive { b"keep-alive" } else { b"close" };
        *self.lock() = SinkState::Armed(Armed {
            fd,
            topic,
            connection,
            ticket,
            task: None,
        });
    }

    /// The client sent bytes during the hold. `true` if the publisher has already answered
    /// (they are the next request); otherwise no direct answer can happen any more (the
    /// task answers, and the bytes were a pipelined request).
    pub(super) fn withdraw(&self) -> bool {
        let mut state = self.lock();
        match std::mem::take(&mut *state) {
            SinkState::Armed(armed) => {
                *state = SinkState::Withdrawn(armed.ticket);
                false
            }
            answered @ SinkState::Answered { .. } => {
                *state = answered;
                true
            }
            other => {
                *state = other;
                false
            }
        }
    }

    /// Disarms the sink (the socket may be written by the task, or closed, from here on)
    /// and says whether the publisher answered.
    pub(super) fn finish(&self) -> Finished {
        match std::mem::take(&mut *self.lock()) {
            SinkState::Idle => Finished::NotAnswered(None),
            SinkState::Armed(armed) => Finished::NotAnswered(Some(armed.ticket)),
            SinkState::Withdrawn(ticket) => Finished::NotAnswered(Some(ticket)),
            SinkState::Answered { tail } => Finished::Answered { tail },
        }
    }

    /// Ready when a direct answer left bytes for the task to write; until then the task
    /// (`cx`) is woken when that happens.
    pub(super) fn poll_tail_owed(&self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut *self.lock() {
            SinkState::Answered { tail } if !tail.is_empty() => Poll::Ready(()),
            SinkState::Armed(armed) => {
                if !armed.task.as_ref().is_some_and(|task| task.will_wake(cx.waker())) {
                    armed.task = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            _ => Poll::Pending,
        }
    }
}

impl DirectSink for AnswerSink {
    fn takes_one(&self) -> bool {
        true
    }

    fn offer(&self, message: &Arc<Message>) -> bool {
        let mut state = self.lock();
        let SinkState::Armed(armed) = &*state else {
            return false;
        };
        let Some(made) = single_event_answer(message) else {
            return false;
        };
        let mut wire = BytesMut::with_capacity(made.wire_capacity());
        with_http_date(|date| made.write_to(&mut wire, date, armed.connection));
        let sent = send_now(armed.fd, &wire);
        if sent == 0 {
            // Would block, or failed: the task writes it, and finds out which.
            return false;
        }
        let tail = wire.freeze().slice(sent..);
        let owed = !tail.is_empty();
        let SinkState::Armed(armed) = std::mem::replace(&mut *state, SinkState::Answered { tail }) else {
            return true;
        };
        drop(state);
        super::count_one_event(&armed.topic, message, made.body_len());
        METRICS.long_polls_answered_by_publisher.inc();
        if owed {
            armed.task.inspect(Waker::wake_by_ref);
        }
        // The poll is answered: the drain no longer waits for it, nor does it hold its
        // per-IP slot (the ticket goes with `armed`, dropped here, outside the lock).
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::downstream::in_flight::InFlight;
    use crate::hub::{HistoryLimits, Mode, OverflowPolicy, Payload, QueueLimits, TopicKey, TopicSettings};
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn topic() -> Arc<Topic> {
        let limits = (16, 1 << 20);
        Topic::new(
            TopicKey::new("t", vec![]),
            TopicSettings {
                mode: Mode::Events,
                history: HistoryLimits {
                    max_messages: limits.0,
                    max_bytes: limits.1,
                },
                queue: QueueLimits {
                    max_messages: limits.0,
                    max_bytes: limits.1,
                },
                on_full: OverflowPolicy::DropOldest,
                deltas: false,
                idle_linger: Duration::from_secs(5),
            },
        )
    }

    fn ticket(in_flight: &Arc<InFlight>) -> HoldTicket {
        HoldTicket {
            in_flight: in_flight.enter(),
            ip_slot: None,
        }
    }

    fn message(topic: &Topic) -> Arc<Message> {
        topic.publish(Payload {
            data: Bytes::from_static(b"hello"),
            ..Payload::default()
        })
    }

    /// A connected pair of plain TCP sockets on loopback.
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    #[test]
    fn an_armed_sink_answers_once_and_releases_the_ticket() {
        let topic = topic();
        let first = message(&topic);
        let (mut client, server) = pair();
        let in_flight = Arc::new(InFlight::default());
        let sink = AnswerSink::default();
        sink.arm(server.as_raw_fd(), Arc::clone(&topic), true, ticket(&in_flight));
        assert_eq!(in_flight.count(), 1);
        assert!(sink.takes_one());
        assert!(sink.offer(&first));
        assert_eq!(in_flight.count(), 0, "answered: the drain no longer waits for it");
        // Answered once (the hub offers nothing more; the next poll gets what follows from
        // history).
        assert!(!sink.offer(&first));
        let Finished::Answered { tail } = sink.finish() else {
            panic!("the publisher answered")
        };
        assert!(tail.is_empty());
        let made = single_event_answer(&first).expect("a one-event answer");
        let mut expected = BytesMut::new();
        with_http_date(|date| made.write_to(&mut expected, date, b"keep-alive"));
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).expect("the answer");
        // The same bytes but for the second of the Date line.
        assert_eq!(got.len(), expected.len());
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(got.ends_with(&expected[expected.len() - made.body_len()..]));
        client.set_nonblocking(true).expect("nonblocking");
        assert!(client.read(&mut [0u8; 16]).is_err(), "written once");
        // Finished: offers are refused (the descriptor may be closed now).
        assert!(!sink.offer(&first));
    }

    /// Records whether it was woken.
    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn what_the_kernel_does_not_take_at_once_is_left_to_the_woken_task() {
        let topic = topic();
        // Far more than a socket takes at once from a peer that is not reading.
        let large = topic.publish(Payload {
            data: Bytes::from(vec![b'x'; 8 << 20]),
            ..Payload::default()
        });
        let (_client, server) = pair();
        let in_flight = Arc::new(InFlight::default());
        let sink = AnswerSink::default();
        sink.arm(server.as_raw_fd(), Arc::clone(&topic), true, ticket(&in_flight));
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        assert!(sink.poll_tail_owed(&mut cx).is_pending());
        assert!(sink.offer(&large), "started: the sink owns the rest");
        assert!(
            woken.0.load(std::sync::atomic::Ordering::SeqCst),
            "the task is woken"
        );
        assert!(sink.poll_tail_owed(&mut cx).is_ready());
        let Finished::Answered { tail } = sink.finish() else {
            panic!("answered, in part")
        };
        assert!(!tail.is_empty() && tail.len() < 8 << 20);
        assert_eq!(in_flight.count(), 0);
    }

    #[test]
    fn a_withdrawn_or_idle_sink_refuses_and_gives_the_ticket_back() {
        let topic = topic();
        let first = message(&topic);
        let (_client, server) = pair();
        let in_flight = Arc::new(InFlight::default());
        let sink = AnswerSink::default();
        assert!(!sink.offer(&first), "never armed");
        sink.arm(server.as_raw_fd(), Arc::clone(&topic), true, ticket(&in_flight));
        assert!(!sink.withdraw(), "not answered yet");
        assert!(!sink.offer(&first), "withdrawn: the task answers");
        let Finished::NotAnswered(Some(_ticket)) = sink.finish() else {
            panic!("the ticket comes back")
        };
        assert_eq!(in_flight.count(), 1);
    }

    #[test]
    fn a_socket_that_would_block_is_refused_and_the_sink_stays_armed() {
        let topic = topic();
        let first = message(&topic);
        let (client, server) = pair();
        // The client's end is closed and reset: the send fails, nothing is written.
        drop(client);
        let in_flight = Arc::new(InFlight::default());
        let sink = AnswerSink::default();
        sink.arm(server.as_raw_fd(), Arc::clone(&topic), true, ticket(&in_flight));
        // The first send to a closed peer may still succeed (the RST comes back to it);
        // after that every send fails, and a failed send is a refusal.
        let refused = (0..2).any(|_| {
            let answered = sink.offer(&first);
            if answered {
                sink.finish();
                sink.arm(server.as_raw_fd(), Arc::clone(&topic), true, ticket(&in_flight));
            }
            !answered
        });
        assert!(refused);
        assert!(matches!(sink.finish(), Finished::NotAnswered(Some(_))));
    }
}
