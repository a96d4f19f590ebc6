//! Long polling: the request is held on a hub subscription plus a timer (no thread, no busy
//! loop) until something after the client's cursor exists or the wait runs out.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use pingora_core::protocols::Stream;
use pingora_error::{Error, ErrorType::WriteError, ErrorType::WriteTimedout, Result};
use pingora_proxy::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use pingora_core::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_http::{RequestHeader, ResponseHeader};

use super::connection_limit::{self, ConnectionTicket, KeepAlive};
use super::cors::CorsStamp;
use super::in_flight::InFlightGuard;
use super::next_poll::{LaneState, Next, PollLane};
use super::per_ip::IpSlot;
use super::response::{
    batch_response, make_private, not_modified, poll_cursor, prepare_response, requested_wait, respond,
    respond_reason, single_event_answer, state_response, take_connection, with_http_date, AnswerHead,
    SingleEventAnswer, WireHead,
};
use crate::config::TopicSpec;
use crate::hub::{Cursor, Mode, Topic};

mod hold;

use hold::{start, Outcome, Started};

/// What a held long poll keeps until it has answered, wherever it waits: the drain's count
/// of requests in flight and the client's per-IP long-poll slot.
pub struct HoldTicket {
    pub in_flight: InFlightGuard,
    pub ip_slot: Option<IpSlot>,
}

/// What a long poll asks for: how long it may wait, after which cursor, and whether a state
/// comes as a patch.
pub struct PollRequest {
    pub wait: Duration,
    pub cursor: Option<Cursor>,
    pub deltas: bool,
}

impl PollRequest {
    /// The request's `wait`, cursor and delta format, or why one of them is refused (`400`).
    pub fn parse(request: &RequestHeader, spec: &TopicSpec) -> std::result::Result<Self, String> {
        let wait = requested_wait(request, spec.long_poll_max_wait)?.unwrap_or(spec.long_poll_max_wait);
        Ok(PollRequest {
            wait,
            cursor: poll_cursor(request)?,
            deltas: super::delta::requested(request, spec.hub.deltas)?,
        })
    }
}

pub async fn serve(
    session: &mut Session,
    topic: Arc<Topic>,
    spec: &TopicSpec,
    lane: &Arc<PollLane>,
    private: bool,
    ticket: HoldTicket,
) -> Result<()> {
    let poll = match PollRequest::parse(session.req_header(), spec) {
        Ok(poll) => poll,
        Err(reason) => return respond_reason(session, 400, &reason, &[]).await,
    };
    let answer = Answer {
        topic,
        cursor: poll.cursor,
        deltas: poll.deltas,
        private,
    };
    let waiting = match start(&answer.topic, poll.cursor) {
        Started::Ready(outcome) => return answer.respond(session, outcome).await,
        Started::Waiting(waiting) => waiting,
    };
    // The wait is held on a small task of its own, off pingora's request path, so a held
    // long poll costs about what an idle SSE stream does; its answer is written straight
    // to the socket, and the task reads the connection's next request itself
    // (`next_poll`): a long poll it serves in turn, anything else goes back to pingora.
    match Detached::take(session, spec.write_timeout, lane) {
        Some(detached) => {
            tokio::spawn(detached.serve(answer, Started::Waiting(waiting), poll.wait, ticket));
            Ok(())
        }
        None => {
            let outcome = waiting
                .wait(
                    &answer.topic,
                    poll.wait,
                    &lane.shutdown,
                    session.read_body_or_idle(true),
                )
                .await;
            answer.respond(session, outcome).await
        }
    }
}

/// How to turn a hold's outcome into the answer.
struct Answer {
    topic: Arc<Topic>,
    cursor: Option<Cursor>,
    deltas: bool,
    private: bool,
}

impl Answer {
    /// Counts the delivery (the messages and the freshness of the oldest sent).
    fn count(&self, outcome: &Outcome) {
        let topic = &self.topic;
        let mode = topic.settings().mode;
        if let Outcome::Messages { messages, .. } = outcome {
            let delivered = if mode == Mode::State {
                1
            } else {
                messages.len() as u64
            };
            crate::metrics::long_poll_delivered(topic, delivered);
            // The message whose age the write shows: the state sent, or the oldest event.
            let sent = if mode == Mode::State {
                messages.last()
            } else {
                messages.first()
            };
            sent.inspect(|message| crate::metrics::delivered(topic, message, delivered));
        }
    }

    /// The answer made once for every client of its one event ([`single_event_answer`]),
    /// when this answer is exactly that: one event after the client's cursor, no gap, and
    /// nothing of the request's own to add (`HEAD`, private, CORS).
    fn single_event(&self, outcome: &Outcome, head: bool, cors: &CorsStamp) -> Option<SingleEventAnswer> {
        let Outcome::Messages {
            messages,
            reset: false,
            skipped: 0,
            ..
        } = outcome
        else {
            return None;
        };
        let [message] = messages.as_slice() else {
            return None;
        };
        let plain = !head && !self.private && cors.adds_nothing();
        if !plain || self.topic.settings().mode != Mode::Events {
            return None;
        }
        single_event_answer(message)
    }

    /// The response, or `None` when the client is gone (nothing to write).
    fn build<H: AnswerHead>(&self, outcome: Outcome) -> Result<Option<(H, Bytes)>> {
        let topic = &self.topic;
        let mode = topic.settings().mode;
        self.count(&outcome);
        let (mut response, body) = match outcome {
            Outcome::ClientGone => return Ok(None),
            Outcome::NothingNew(position) => (not_modified(position, mode)?, Bytes::new()),
            Outcome::Messages {
                messages,
                reset,
                position,
                skipped,
            } => match (mode, messages.last()) {
                // A delta client holding a state still in history gets the patch from it.
                (Mode::State, Some(latest)) => {
                    let (response, body) = match self.cursor.filter(|_| self.deltas && !reset) {
                        Some(base) => match super::delta::long_poll_patch(topic, base, latest)? {
                            Some(answer) => answer,
                            None => state_response(topic, latest)?,
                        },
                        None => state_response(topic, latest)?,
                    };
                    (H::from_response(response)?, body)
                }
                (Mode::State, None) => (not_modified(position, mode)?, Bytes::new()),
                (Mode::Events, last) => {
                    let cursor = last.map_or(position, |m| m.cursor);
                    batch_response(mode, cursor, &messages, reset, skipped)?
                }
            },
        };
        if self.private {
            make_private(&mut response)?;
        }
        topic.stats().wrote(body.len());
        Ok(Some((response, body)))
    }

    /// Writes the answer through pingora's request (the request path).
    async fn respond(&self, session: &mut Session, outcome: Outcome) -> Result<()> {
        match self.build::<ResponseHeader>(outcome)? {
            Some((response, body)) => respond(session, response, body).await,
            None => {
                session.set_keepalive(None);
                Ok(())
            }
        }
    }
}

/// A held long poll's connection, taken out of pingora: the bare socket (the request was
/// read; pingora's session and its buffers are gone), what the answer needs (CORS headers,
/// `HEAD`, whether the connection is kept alive), the connection's place under the caps and
/// the way back to the keep-alive loop.
struct Detached {
    stream: Stream,
    /// The socket's descriptor, when an answer may be one `send` on it.
    raw_fd: Option<RawFd>,
    /// The keep-alive timeout and reuses left of the session it came from.
    settings: HttpPersistentSettings,
    keep_alive_after: bool,
    cors: CorsStamp,
    connection: Arc<ConnectionTicket>,
    keep_alive: KeepAlive,
    head: bool,
    write_timeout: Duration,
    lane: Arc<PollLane>,
    lane_state: LaneState,
}

impl Detached {
    /// `None` where the request cannot leave pingora (HTTP/2, or outside the connection
    /// loop): it is then held in place, as before.
    fn take(session: &mut Session, write_timeout: Duration, lane: &Arc<PollLane>) -> Option<Self> {
        let ServerSession::H1(http1) = &*session.downstream_session else {
            return None;
        };
        let connection = connection_limit::hold_connection()?;
        // pingora read more than the request header (a pipelined next request): those bytes
        // are in its session, which does not hand them out. Held in place instead, where
        // pingora answers and then closes, as for any request it overread.
        if connection.header_bytes_read() > http1.get_headers_raw_bytes().len() {
            return None;
        }
        let keep_alive_after = http1.will_keepalive();
        let keep_alive = KeepAlive::current()?;
        let settings = HttpPersistentSettings::for_session(&session.downstream_session);
        let head = session.req_header().method == http::Method::HEAD;
        let cors = CorsStamp::take(session);
        let ServerSession::H1(http1) = *take_connection(session) else {
            return None;
        };
        let stream = http1.into_inner();
        Some(Detached {
            raw_fd: super::direct::plain_tcp_fd(&stream),
            stream,
            settings,
            keep_alive_after,
            cors,
            connection,
            keep_alive,
            head,
            write_timeout,
            lane: Arc::clone(lane),
            lane_state: LaneState::default(),
        })
    }

    /// Holds and answers this poll, then the connection's next ones as long as they are
    /// long polls the lane serves; the first other request goes back to pingora.
    async fn serve(
        mut self,
        mut answer: Answer,
        mut started: Started,
        mut wait: Duration,
        mut ticket: HoldTicket,
    ) {
        loop {
            let outcome = match started {
                Started::Ready(outcome) => outcome,
                Started::Waiting(waiting) => {
                    let mut pipelined = false;
                    let outcome = waiting
                        .wait(
                            &answer.topic,
                            wait,
                            &self.lane.shutdown,
                            client_gone(&mut self.stream, &mut pipelined),
                        )
                        .await;
                    // A server draining meanwhile tells the client not to come back on this
                    // connection; so does a client that sent its next request before this
                    // answer (HTTP/1.1 pipelining, which pingora does not serve either): it
                    // retries it on a new one.
                    self.keep_alive_after &= !self.lane.shutdown.is_cancelled() && !pipelined;
                    outcome
                }
            };
            // Built before the write, so that the write's future (held while the socket is
            // full) is small.
            let written = match self.answer_wire(&answer, outcome) {
                // The client is gone: dropping the socket closes it.
                Ok(None) => return,
                Ok(Some(wire)) => self.write(wire).await,
                Err(error) => Err(error),
            };
            match written {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    tracing::debug!("a held long poll could not answer: {error}");
                    return;
                }
            }
            // Answered: the drain no longer waits for it, nor does it hold its per-IP slot.
            drop(ticket);
            // Boxed, like the write: reading the next head is brief, the wait is held.
            let next = Box::pin(
                self.lane
                    .next(&mut self.stream, &self.connection, &mut self.lane_state),
            )
            .await;
            let poll = match next {
                Next::Poll(poll) => poll,
                Next::Pingora(read) => {
                    self.keep_alive.resume(
                        ReusedHttpStream::new(self.stream, Some(self.settings)),
                        self.connection,
                        Some(read),
                    );
                    return;
                }
                Next::Close => return,
            };
            answer = Answer {
                topic: poll.topic,
                cursor: poll.request.cursor,
                deltas: poll.request.deltas,
                private: false,
            };
            self.cors = poll.cors;
            self.head = false;
            self.write_timeout = poll.write_timeout;
            wait = poll.request.wait;
            ticket = poll.ticket;
            started = start(&answer.topic, answer.cursor);
        }
    }

    /// Writes the answer; `Ok(true)` when the connection stays open for a next request.
    /// The answer's bytes, or `None` when the client is gone (nothing to write).
    fn answer_wire(&mut self, answer: &Answer, outcome: Outcome) -> Result<Option<BytesMut>> {
        let connection: &[u8] = if self.keep_alive_after {
            b"keep-alive"
        } else {
            b"close"
        };
        if let Some(made) = answer.single_event(&outcome, self.head, &self.cors) {
            answer.count(&outcome);
            answer.topic.stats().wrote(made.body_len());
            let mut wire = BytesMut::with_capacity(made.wire_capacity());
            with_http_date(|date| made.write_to(&mut wire, date, connection));
            return Ok(Some(wire));
        }
        let Some((mut response, body)) = answer.build::<WireHead>(outcome)? else {
            return Ok(None);
        };
        std::mem::take(&mut self.cors).apply(&mut response)?;
        let send_body = prepare_response(&mut response, &body, self.head)?;
        let mut wire = BytesMut::with_capacity(320 + if send_body { body.len() } else { 0 });
        with_http_date(|date| {
            response.write_to(
                &mut wire,
                &[("Date", date.as_bytes()), ("Connection", connection)],
            )
        });
        if send_body {
            wire.put_slice(&body);
        }
        Ok(Some(wire))
    }

    /// Writes an answer; `Ok(true)` when the connection stays open for a next request.
    async fn write(&mut self, wire: BytesMut) -> Result<bool> {
        let keep_alive = self.keep_alive_after;
        let stream = &mut self.stream;
        let sent = super::direct::send_if_flushed(stream, self.raw_fd, &wire);
        if sent == wire.len() {
            return Ok(keep_alive);
        }
        let write = async {
            stream.write_all(&wire[sent..]).await?;
            stream.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(Ok(())) => Ok(keep_alive),
            Ok(Err(error)) => Error::e_because(WriteError, "writing a long-poll answer", error),
            Err(_) => Error::e_explain(WriteTimedout, "writing a long-poll answer"),
        }
    }
}

/// Completes when the client closes the connection (or it fails). A held poll has no
/// request body: anything the client sends is its next request (`pipelined`), not served
/// here; the hold goes on (no longer watching for a close) and the connection closes after
/// the answer.
async fn client_gone(stream: &mut Stream, pipelined: &mut bool) {
    let mut buffer = [0u8; 64];
    match stream.read(&mut buffer).await {
        Ok(read) if read > 0 => {
            *pipelined = true;
            std::future::pending::<()>().await;
        }
        _ => {}
    }
}
