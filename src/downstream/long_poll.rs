//! Long polling: the request is held on a hub subscription plus a timer (no thread, no busy
//! loop) until something after the client's cursor exists or the wait runs out.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use pingora_core::protocols::Stream;
use pingora_error::{Error, ErrorType::WriteError, ErrorType::WriteTimedout, Result};
use pingora_proxy::Session;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

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
use crate::hub::{Cursor, Message, Mode, Topic};

mod answer_sink;
mod hold;

use answer_sink::{AnswerSink, Finished};
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
            // (One event answered by the publisher is counted by `count_one_event`.)
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
        if !self.plain(head, cors) {
            return None;
        }
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
        single_event_answer(message)
    }

    /// Whether one event's answer is the same for this request as for every other: an
    /// event topic, and nothing of the request's own to add (`HEAD`, private, CORS).
    fn plain(&self, head: bool, cors: &CorsStamp) -> bool {
        !head && !self.private && cors.adds_nothing() && self.topic.settings().mode == Mode::Events
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

/// One event written to a long-poll client as its answer (`body_len` bytes of body): the
/// delivery counted as [`Answer::count`] counts it, and the bytes out.
fn count_one_event(topic: &Topic, message: &Message, body_len: usize) {
    crate::metrics::long_poll_delivered(topic, 1);
    crate::metrics::delivered(topic, message, 1);
    topic.stats().wrote(body_len);
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
    /// The start of the next request, read while watching the held poll's connection.
    next_bytes: BytesMut,
}

/// What the client did while its poll was held, as `watch_client` saw it.
#[derive(Default)]
enum Watched {
    /// Nothing (the hold ended otherwise, or the task is owed the rest of a direct answer).
    #[default]
    Nothing,
    /// It closed the connection (or the read failed).
    Gone,
    /// It sent a request before the answer (pipelining): the hold goes on, and the
    /// connection closes after the answer.
    Pipelined,
    /// It sent these bytes after the publisher answered: the start of its next request.
    Asked(BytesMut),
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
            next_bytes: BytesMut::new(),
        })
    }

    /// A sink armed for `waiting` when the publisher may answer it: a plain TCP socket with
    /// nothing waiting above it, and an answer that is the same for every client. The
    /// ticket then goes with the sink, which releases it when it answers.
    ///
    /// A new sink for each hold: a publisher still going through an earlier hold's queue
    /// (taken before that hold ended) must find that hold's sink, finished, not one armed
    /// for a later cursor, or it would answer with a message the client already has.
    fn arm_sink(
        &mut self,
        answer: &Answer,
        waiting: &hold::Waiting,
        ticket: &mut Option<HoldTicket>,
    ) -> Option<Arc<AnswerSink>> {
        let fd = self.raw_fd?;
        if !answer.plain(self.head, &self.cors) || !super::direct::flushed(&mut self.stream) {
            return None;
        }
        let sink = Arc::new(AnswerSink::default());
        sink.arm(
            fd,
            Arc::clone(&answer.topic),
            self.keep_alive_after,
            ticket.take()?,
        );
        waiting.set_direct_sink(sink.clone());
        Some(sink)
    }

    /// Holds and answers this poll, then the connection's next ones as long as they are
    /// long polls the lane serves; the first other request goes back to pingora.
    async fn serve(
        mut self,
        mut answer: Answer,
        mut started: Started,
        mut wait: Duration,
        ticket: HoldTicket,
    ) {
        let mut ticket = Some(ticket);
        loop {
            let outcome = match started {
                Started::Ready(outcome) => Some(outcome),
                Started::Waiting(waiting) => self.hold(&answer, waiting, wait, &mut ticket).await,
            };
            // `None`: the publisher answered; the write is done.
            if let Some(outcome) = outcome {
                // Built before the write, so that the write's future (held while the socket
                // is full) is small.
                let written = match self.answer_wire(&answer, outcome) {
                    // The client is gone: dropping the socket closes it.
                    Ok(None) => return,
                    Ok(Some(wire)) => self.write(&wire).await,
                    Err(error) => Err(error),
                };
                if !self.written(written) {
                    return;
                }
            }
            // Answered: the drain no longer waits for it, nor does it hold its per-IP slot.
            drop(ticket.take());
            // Boxed, like the write: reading the next head is brief, the wait is held.
            let next = Box::pin(self.lane.next(
                &mut self.stream,
                &self.connection,
                &mut self.lane_state,
                std::mem::take(&mut self.next_bytes),
            ))
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
            ticket = Some(poll.ticket);
            started = start(&answer.topic, answer.cursor);
        }
    }

    /// Holds a poll until it ends: its outcome for the task to answer, or `None` when the
    /// publisher answered it and the connection goes on (the rest of that answer written,
    /// and the start of the next request, if any, in `next_bytes`). A connection to end
    /// after a direct answer is `Some(Outcome::ClientGone)`: nothing more to write.
    async fn hold(
        &mut self,
        answer: &Answer,
        waiting: hold::Waiting,
        wait: Duration,
        ticket: &mut Option<HoldTicket>,
    ) -> Option<Outcome> {
        let sink = self.arm_sink(answer, &waiting, ticket);
        let mut watched = Watched::Nothing;
        let outcome = waiting
            .wait(
                &answer.topic,
                wait,
                &self.lane.shutdown,
                watch_client(&mut self.stream, sink.as_deref(), &mut watched),
            )
            .await;
        let finished = sink.map_or(Finished::NotAnswered(None), |sink| sink.finish());
        match finished {
            Finished::NotAnswered(given_back) => {
                if given_back.is_some() {
                    *ticket = given_back;
                }
                // A server draining meanwhile tells the client not to come back on this
                // connection; so does a client that sent its next request before this
                // answer (HTTP/1.1 pipelining, which pingora does not serve either): it
                // retries it on a new one.
                let pipelined = matches!(watched, Watched::Pipelined);
                self.keep_alive_after &= !self.lane.shutdown.is_cancelled() && !pipelined;
                Some(outcome)
            }
            Finished::Answered { tail } => {
                // Whatever the hold's own outcome (a message queued after the answer, the
                // wait running out), the client has its answer; what followed it comes
                // from history on its next poll.
                if !tail.is_empty() {
                    let written = self.write(&tail).await;
                    if !self.written(written) {
                        return Some(Outcome::ClientGone);
                    }
                }
                if !self.keep_alive_after {
                    // The answer said `Connection: close`.
                    return Some(Outcome::ClientGone);
                }
                match watched {
                    Watched::Gone | Watched::Pipelined => Some(Outcome::ClientGone),
                    Watched::Asked(bytes) => {
                        self.next_bytes = bytes;
                        None
                    }
                    // The server stops: the connection ends here, as an idle one does.
                    Watched::Nothing if self.lane.shutdown.is_cancelled() => Some(Outcome::ClientGone),
                    Watched::Nothing => None,
                }
            }
        }
    }

    /// Whether an answer's write went through and the connection stays open.
    fn written(&self, written: Result<bool>) -> bool {
        match written {
            Ok(keep_alive) => keep_alive,
            Err(error) => {
                tracing::debug!("a held long poll could not answer: {error}");
                false
            }
        }
    }

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
    async fn write(&mut self, wire: &[u8]) -> Result<bool> {
        let keep_alive = self.keep_alive_after;
        let stream = &mut self.stream;
        let sent = super::direct::send_if_flushed(stream, self.raw_fd, wire);
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

/// Completes when the client closes the connection (or it fails), when it asks again after
/// the publisher answered, or when a direct answer left its rest to the task (`watched`
/// says which). A held poll has no request body: anything the client sends before its
/// answer is its next request (pipelined), not served here; the hold goes on (no longer
/// watching for a close) and the connection closes after the answer.
fn watch_client<'a>(
    stream: &'a mut Stream,
    sink: Option<&'a AnswerSink>,
    watched: &'a mut Watched,
) -> impl Future<Output = ()> + 'a {
    std::future::poll_fn(move |cx| {
        if matches!(watched, Watched::Pipelined) {
            return Poll::Pending;
        }
        if sink.is_some_and(|sink| sink.poll_tail_owed(cx).is_ready()) {
            return Poll::Ready(());
        }
        *watched = match poll_read_some(stream, cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => Watched::Gone,
            Poll::Ready(Some(bytes)) if sink.is_some_and(AnswerSink::withdraw) => Watched::Asked(bytes),
            Poll::Ready(Some(_)) => {
                // Nothing wakes this watch again: the hold ends otherwise.
                *watched = Watched::Pipelined;
                return Poll::Pending;
            }
        };
        Poll::Ready(())
    })
}

/// The next bytes the client sends (`None`: it closed, or the read failed). The buffer is
/// on the stack of the one poll that finds bytes, not in the held future: a held poll holds
/// no read buffer (they are copied out, once, when they come).
fn poll_read_some(stream: &mut Stream, cx: &mut Context<'_>) -> Poll<Option<BytesMut>> {
    let mut buffer = [MaybeUninit::<u8>::uninit(); super::request_head::HEAD_BUFFER_BYTES];
    let mut read = ReadBuf::uninit(&mut buffer);
    match Pin::new(&mut *stream).poll_read(cx, &mut read) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Ok(())) if !read.filled().is_empty() => {
            let mut bytes = BytesMut::with_capacity(super::request_head::HEAD_BUFFER_BYTES);
            bytes.extend_from_slice(read.filled());
            Poll::Ready(Some(bytes))
        }
        Poll::Ready(_) => Poll::Ready(None),
    }
}
