//! # sidestream
//!
//! A sidecar reverse proxy that turns an ordinary request/response HTTP backend into
//! real-time push. For each configured **topic** it talks to the backend once and fans the
//! result out to any number of clients; every other request passes through unchanged.
//!
//! ## The flow
//!
//! ```text
//! config ──▶ upstream ──publish──▶ hub ──subscribe──▶ downstream ──▶ clients
//!            (poll, stream or      (cursor, history,   (limits → auth → SSE, long/short
//!             push, once per        latest, queues)     poll, WebSocket; pass-through)
//!             instance)
//! ```
//!
//! `app` wires it into one pingora server; `main` is the CLI.
//!
//! With `[cluster]`, several sidecars behave as one through Redis ([`cluster`]): the lease
//! holder's source (or a push on any sidecar) publishes through a script in Redis that
//! assigns the cursor and appends to a shared stream; every sidecar's follower feeds those
//! messages into its local hub in order, so everything downstream of the hub is unchanged:
//!
//! ```text
//! upstream (lease holder only) ──▶ cluster (Redis: seq, stream, Pub/Sub) ──▶ hub (every sidecar)
//! ```
//!
//! ## Glossary
//!
//! - **topic**: a `[[topic]]` of the config: a client path template such as
//!   `/api/prices/{symbol}` and the backend source behind it. Each distinct set of path
//!   values is a **topic instance** ([`hub::TopicKey`]), with its own upstream task.
//! - **message**: one published payload with its cursor ([`hub::Message`]) and a cache of
//!   its wire forms ([`hub::encodings`]): each transport encodes a message once, on first
//!   delivery and outside the topic's lock ([`downstream::wire`]), and every subscriber
//!   shares those `Bytes` (encode once, write many).
//! - **cursor**: `{epoch}-{seq}` ([`hub::Cursor`]); `seq` grows by one per message, `epoch`
//!   changes when history is lost. It is the SSE `id` and every transport's resume token.
//! - **subscriber**: one client's bounded queue ([`hub::subscriber`]) with the topic's
//!   overflow policy (conflate, drop oldest, disconnect).
//! - **direct delivery**: while a subscriber's connection is **parked** (waiting, nothing
//!   taken, nothing of its own being written) the publishing task writes the message's
//!   shared frame straight into its socket instead of queueing and waking it
//!   ([`hub::DirectSink`], [`downstream::direct`]); anything else takes the queue. A held
//!   long poll is answered the same way (its sink takes one message, and the hub then drops
//!   the subscriber); the fan-out asks for the next clients' memory a few steps ahead
//!   ([`hub::prefetch`]).
//! - **upstream**: the side that talks to the backend ([`upstream`]): conditional polling
//!   with backoff and jitter.
//! - **lease**: with `[cluster]`, the right to run a topic instance's source; one holder
//!   cluster-wide, renewed in batches, fenced in the publish script.
//! - **follower**: with `[cluster]`, the per-instance task that keeps the local history in
//!   step with the shared one (ordering, gap repair, `reset` when history is gone).
//! - **degraded**: with `[cluster]`, Redis unanswered for `fallback_after_ms`: each sidecar
//!   serves its instances alone under a local epoch, and rejoins when Redis is back.
//! - **downstream**: the side that talks to clients ([`downstream`]): connection limits,
//!   subscriber auth and CORS, transport choice, the four transports, and pass-through of
//!   everything else.
//!
//! ## Where things live
//!
//! - [`config`]: TOML → typed settings; every error at once with `file:line:col`.
//! - [`upstream`]: backend client (pingora connector), poll and stream sources, backoff,
//!   circuit breaker.
//! - [`hub`]: topics, cursor, history, subscribers, registry, the per-message encoding
//!   cache. Knows nothing of HTTP, pingora, metrics or any transport's framing.
//! - [`downstream`]: the pingora proxy app: router, transports, responses, pass-through;
//!   `wire/` (every wire encoding: SSE, HTTP chunks, JSON envelopes, WebSocket frames and
//!   deflate), `direct.rs` (the socket a connection shares with the publishing task, and
//!   the one `send` a direct write or a long-poll answer is),
//!   `long_poll/` (`hold.rs`: the wait; `answer_sink.rs`: a held poll answered by the
//!   publishing task), `write_buffer.rs`, `auth/` (JWT, JWKS, auth callback), `cors.rs`,
//!   `connection_limit.rs`
//!   (the caps and the keep-alive loop), `request_head.rs` (each request head read before a
//!   pingora session exists), `next_poll.rs` (the next long poll on a held poll's connection,
//!   served without pingora; `poll_head.rs` knows a repeat of the last one admitted, which is
//!   admitted without routing it again), `sse_lane.rs` (a new SSE stream of a live instance
//!   opened from that head, before any pingora session exists),
//!   `response.rs` (polling answers, as pingora's `ResponseHeader` or a `WireHead` written to
//!   the socket).
//! - [`cluster`]: `[cluster]` on Redis: key names, Lua scripts, Pub/Sub bus, followers,
//!   leases, degraded mode. Only `app` and `admin` (pushes) know it exists.
//! - [`admin`]: `/live`, `/ready`, `/metrics`, `/publish`, and the live admin page with its
//!   `/api/topics` (per-instance figures the hub keeps in [`hub::stats`]); [`metrics`]
//!   defines every metric.
//! - [`app`]: builds the pingora server and its services; shutdown wiring.

pub mod admin;
pub mod app;
pub mod cluster;
pub mod config;
pub mod downstream;
pub mod hub;
pub mod metrics;
pub mod reload;
pub mod upstream;
