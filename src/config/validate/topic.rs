//! The `[[topic]]` half of validation: names, paths, sources, tunables, WebSocket settings.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

use toml::Spanned;

use super::super::file::{RawDefaults, RawPoll, RawSource, RawTesting, RawTopic, RawWebsocket, Transport};
use super::super::security::AuthSpec;
use super::super::template::{PathTemplate, UrlTemplate};
use super::super::{EchoSpec, PollSpec, SourceSpec, StreamSpec, TopicSpec, WebsocketSpec};
use super::Checker;
use crate::config::Envelope;
use crate::hub::{HistoryLimits, Mode, OverflowPolicy, QueueLimits, TopicSettings};
use crate::upstream::ignore_fields::FieldPattern;

impl Checker<'_> {
    pub(super) fn topic(
        &mut self,
        span: Range<usize>,
        raw: &RawTopic,
        defaults: &RawDefaults,
        paths: &mut Vec<(PathTemplate, String)>,
        names: &mut Vec<(String, usize)>,
    ) -> Option<TopicSpec> {
        let name = self.topic_name(span.clone(), raw, names);
        let path = self.topic_path(span.clone(), raw, paths);
        let source = match &raw.source {
            Some(source) => self.source(source, path.as_ref()),
            None => {
                self.error(
                    span.clone(),
                    "topic has no `source`",
                    Some("add `source.poll = { url = \"/backend/path\" }`".into()),
                );
                None
            }
        };
        // A polled resource is a state; a stream or pushes are events.
        let default_mode = match source {
            Some(SourceSpec::Stream(_)) | Some(SourceSpec::Push) => Mode::Events,
            Some(SourceSpec::Poll(_)) | None => Mode::State,
        };
        let mode = raw.mode.as_ref().map_or(default_mode, |m| *m.get_ref());
        // `None`: the source is invalid, which is reported already.
        let source_is_poll = source.as_ref().map(|s| matches!(s, SourceSpec::Poll(_)));
        let default_policy = match mode {
            Mode::State => OverflowPolicy::Conflate,
            Mode::Events => OverflowPolicy::Disconnect,
        };
        let on_full = raw
            .on_full
            .as_ref()
            .or(defaults.on_full.as_ref())
            .map_or(default_policy, |p| *p.get_ref());
        let event = raw.event.as_ref().and_then(|event| {
            let text = event.get_ref();
            if text.is_empty() || text.contains(['\r', '\n']) {
                self.error(
                    event.span(),
                    "`event` must be a non-empty name on one line",
                    Some("e.g. event = \"price\", or leave it out for the default `message`".into()),
                );
                return None;
            }
            Some(Arc::<str>::from(text.as_str()))
        });
        let transports = self.transports(raw, defaults);
        let hub = TopicSettings {
            mode,
            history: HistoryLimits {
                max_messages: self.count(
                    &raw.history_max_messages,
                    defaults.history_max_messages.as_ref(),
                    "history_max_messages",
                    256,
                ),
                max_bytes: self.count(
                    &raw.history_max_bytes,
                    defaults.history_max_bytes.as_ref(),
                    "history_max_bytes",
                    4 << 20,
                ),
            },
            queue: QueueLimits {
                max_messages: self.count(
                    &raw.queue_max_messages,
                    defaults.queue_max_messages.as_ref(),
                    "queue_max_messages",
                    64,
                ),
                max_bytes: self.count(
                    &raw.queue_max_bytes,
                    defaults.queue_max_bytes.as_ref(),
                    "queue_max_bytes",
                    1 << 20,
                ),
            },
            on_full,
            deltas: self.deltas(raw, mode),
            idle_linger: self.duration_ms(
                &raw.idle_linger_ms,
                defaults.idle_linger_ms.as_ref(),
                "idle_linger_ms",
                30_000,
                true,
            ),
        };
        let path_has_variables = path.as_ref().is_some_and(|p| !p.variables().is_empty());
        let websocket = self.websocket(raw.websocket.as_ref(), path.as_ref(), 1 << 20);
        let keepalive = self.duration_ms(
            &raw.keepalive_ms,
            defaults.keepalive_ms.as_ref(),
            "keepalive_ms",
            15_000,
            false,
        );
        let retry = self.duration_ms(
            &raw.retry_ms,
            defaults.retry_ms.as_ref(),
            "retry_ms",
            2_000,
            false,
        );
        let long_poll_max_wait = self.duration_ms(
            &raw.long_poll_max_wait_ms,
            defaults.long_poll_max_wait_ms.as_ref(),
            "long_poll_max_wait_ms",
            30_000,
            false,
        );
        Some(TopicSpec {
            name: name?,
            path: path?,
            source: source?,
            event,
            transports,
            hub,
            keepalive,
            retry,
            long_poll_max_wait,
            write_timeout: self.duration_ms(
                &raw.write_timeout_ms,
                defaults.write_timeout_ms.as_ref(),
                "write_timeout_ms",
                10_000,
                false,
            ),
            websocket: websocket?,
            forward_headers: self.forward_headers(raw),
            eager: self.eager(raw, path_has_variables),
            auth: self.topic_auth(raw),
            ignore_fields: self.ignore_fields(raw, mode, source_is_poll),
        })
    }

    /// `deltas = true`: JSON Patches between consecutive states, so a state topic only.
    fn deltas(&mut self, raw: &RawTopic, mode: Mode) -> bool {
        match &raw.deltas {
            Some(flag) if *flag.get_ref() && mode != Mode::State => {
                self.error(
                    flag.span(),
                    "`deltas` needs a state topic",
                    Some(
                        "patches go from one state to the next; set `mode = \"state\"` or remove `deltas`"
                            .into(),
                    ),
                );
                false
            }
            Some(flag) => *flag.get_ref(),
            None => false,
        }
    }

    /// `ignore_fields`: valid JSON Pointers, on a polled state topic (the only place a change
    /// is detected rather than given).
    fn ignore_fields(
        &mut self,
        raw: &RawTopic,
        mode: Mode,
        source_is_poll: Option<bool>,
    ) -> Arc<[FieldPattern]> {
        let Some(list) = &raw.ignore_fields else {
            return Arc::from(Vec::new());
        };
        if mode != Mode::State || source_is_poll == Some(false) {
            self.error(
                list.span(),
                "`ignore_fields` needs a polled state topic",
                Some("it tells a poll's change detection what to leave out; pushes and streams are never compared".into()),
            );
            return Arc::from(Vec::new());
        }
        let mut patterns = Vec::new();
        for pointer in list.get_ref() {
            match FieldPattern::parse(pointer.get_ref()) {
                Ok(pattern) => patterns.push(pattern),
                Err(problem) => self.error(
                    pointer.span(),
                    format!("`ignore_fields`: {problem}"),
                    Some(
                        "write RFC 6901 JSON Pointers, e.g. \"/updated_at\" or \"/items/*/fetched_at\""
                            .into(),
                    ),
                ),
            }
        }
        Arc::from(patterns)
    }

    /// An eager topic is one instance known at boot, so its path has no variables.
    fn eager(&mut self, raw: &RawTopic, path_has_variables: bool) -> bool {
        match &raw.eager {
            Some(eager) if *eager.get_ref() && path_has_variables => {
                self.error(
                    eager.span(),
                    "`eager` needs a path without variables",
                    Some("instances of a templated path are only known when a client asks".into()),
                );
                false
            }
            Some(eager) => *eager.get_ref(),
            None => false,
        }
    }

    fn forward_headers(&mut self, raw: &RawTopic) -> Vec<String> {
        match &raw.forward_headers {
            Some(list) => self.header_names(list.get_ref()),
            None => Vec::new(),
        }
    }

    fn topic_auth(&mut self, raw: &RawTopic) -> Option<Arc<AuthSpec>> {
        let name = raw.auth.as_ref()?;
        if let Some(policy) = self.auth_policies.get(name.get_ref()) {
            return Some(Arc::clone(policy));
        }
        if self.auth_names.contains(name.get_ref()) {
            // Defined, but invalid: that error is already reported.
            return None;
        }
        let defined: Vec<&str> = self.auth_policies.keys().map(String::as_str).collect();
        let help = if defined.is_empty() {
            format!(
                "define it: `[auth.{}.jwt]` or `[auth.{}.callback]`",
                name.get_ref(),
                name.get_ref()
            )
        } else {
            format!("defined policies: {}", defined.join(", "))
        };
        self.error(
            name.span(),
            format!("no `[auth.{}]` policy is defined", name.get_ref()),
            Some(help),
        );
        None
    }

    /// A topic's (or the echo route's) WebSocket settings; `inbound` is checked against the
    /// topic's path variables when the path is valid.
    fn websocket(
        &mut self,
        raw: Option<&Spanned<RawWebsocket>>,
        path: Option<&PathTemplate>,
        default_max_message_bytes: usize,
    ) -> Option<WebsocketSpec> {
        let empty = RawWebsocket::default();
        let ws = raw.map_or(&empty, |r| r.get_ref());
        let inbound = match (&ws.inbound, path) {
            (None, _) => None,
            (Some(url), Some(path)) => match UrlTemplate::parse(url.get_ref(), path.variables()) {
                Ok((template, _)) => Some(template),
                Err(error) => {
                    self.error(url.span(), format!("`inbound` {error}"), None);
                    return None;
                }
            },
            (Some(_), None) => return None,
        };
        let ping_interval = self.duration_ms(&ws.ping_interval_ms, None, "ping_interval_ms", 30_000, false);
        let pong_timeout = self.duration_ms(&ws.pong_timeout_ms, None, "pong_timeout_ms", 10_000, false);
        let max_message_bytes = self.count(
            &ws.max_message_bytes,
            None,
            "max_message_bytes",
            default_max_message_bytes,
        );
        Some(WebsocketSpec {
            deflate: ws.deflate.as_ref().is_none_or(|d| *d.get_ref()),
            deflate_min_bytes: match &ws.deflate_min_bytes {
                Some(value) if *value.get_ref() >= 0 => {
                    usize::try_from(*value.get_ref()).unwrap_or(usize::MAX)
                }
                Some(value) => {
                    self.error(value.span(), "`deflate_min_bytes` must be 0 or more", None);
                    256
                }
                None => 256,
            },
            envelope: ws.envelope.as_ref().map_or(Envelope::Raw, |e| *e.get_ref()),
            ping_interval,
            pong_timeout,
            max_message_bytes,
            max_frame_bytes: self.count(&ws.max_frame_bytes, None, "max_frame_bytes", max_message_bytes),
            inbound_messages_per_second: u32::try_from(self.count(
                &ws.inbound_messages_per_second,
                None,
                "inbound_messages_per_second",
                50,
            ))
            .unwrap_or(u32::MAX),
            inbound,
            subprotocols: self.subprotocols(ws.subprotocols.as_ref()),
        })
    }

    /// `websocket.subprotocols`: RFC 6455 §4.1 tokens, each listed once, at least one.
    fn subprotocols(&mut self, raw: Option<&Spanned<Vec<Spanned<String>>>>) -> Arc<[String]> {
        let Some(list) = raw else {
            return Arc::from([]);
        };
        if list.get_ref().is_empty() {
            self.error(
                list.span(),
                "`subprotocols` is empty",
                Some("list the subprotocols clients may ask for, or leave it out".into()),
            );
        }
        let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        let mut names: Vec<String> = Vec::new();
        for name in list.get_ref() {
            let text = name.get_ref();
            if text.is_empty() || !text.chars().all(is_token_char) {
                self.error(
                    name.span(),
                    format!("{text:?} is not a subprotocol name"),
                    Some("use ASCII letters, digits and !#$%&'*+-.^_`|~ (an RFC 6455 token)".into()),
                );
            } else if names.contains(text) {
                self.error(name.span(), format!("subprotocol {text:?} is listed twice"), None);
            } else {
                names.push(text.clone());
            }
        }
        names.into()
    }

    pub(super) fn echo(&mut self, raw: &RawTesting, paths: &[(PathTemplate, String)]) -> Option<EchoSpec> {
        let path = raw.websocket_echo_path.as_ref()?;
        let text = path.get_ref();
        if !text.starts_with('/') || text.contains('{') {
            self.error(
                path.span(),
                "`websocket_echo_path` must be a literal path starting with `/`",
                None,
            );
            return None;
        }
        if paths.iter().any(|(template, _)| template.matches(text).is_some()) {
            self.error(path.span(), "`websocket_echo_path` is also a topic path", None);
            return None;
        }
        // Conformance suites send messages of up to 16 MiB.
        let max_message_bytes = self.count(
            &raw.websocket_echo_max_message_bytes,
            None,
            "websocket_echo_max_message_bytes",
            16 << 20,
        );
        let mut websocket = self.websocket(None, None, max_message_bytes)?;
        websocket.deflate_min_bytes = 0;
        // Conformance suites send thousands of messages a second.
        websocket.inbound_messages_per_second = u32::MAX;
        Some(EchoSpec {
            path: text.clone(),
            websocket,
        })
    }

    fn topic_name(
        &mut self,
        span: Range<usize>,
        raw: &RawTopic,
        names: &mut Vec<(String, usize)>,
    ) -> Option<Arc<str>> {
        let Some(name) = &raw.name else {
            self.error(
                span,
                "topic has no `name`",
                Some("add `name = \"prices\"`".into()),
            );
            return None;
        };
        let text = name.get_ref();
        let valid = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            self.error(
                name.span(),
                format!("topic name {text:?} is not valid"),
                Some("use letters, digits, `_`, `-` and `.`".into()),
            );
            return None;
        }
        let line = self.text[..name.span().start].matches('\n').count() + 1;
        if let Some((_, first_line)) = names.iter().find(|(n, _)| n == text) {
            let help = format!("topic names must be unique; the first `{text}` is on line {first_line}");
            self.error(name.span(), format!("duplicate topic name `{text}`"), Some(help));
            return None;
        }
        names.push((text.clone(), line));
        Some(Arc::from(text.as_str()))
    }

    /// The path template; `paths` holds the earlier topics' templates (with their names) so
    /// that overlaps are found even when an earlier topic had other errors.
    fn topic_path(
        &mut self,
        span: Range<usize>,
        raw: &RawTopic,
        paths: &mut Vec<(PathTemplate, String)>,
    ) -> Option<PathTemplate> {
        let Some(path) = &raw.path else {
            self.error(
                span,
                "topic has no `path`",
                Some("add the client-facing path, e.g. `path = \"/api/prices/{symbol}\"`".into()),
            );
            return None;
        };
        match PathTemplate::parse(path.get_ref()) {
            Ok(template) => {
                if let Some((other, other_name)) = paths.iter().find(|(t, _)| t.overlaps(&template)) {
                    let message = format!(
                        "path `{}` overlaps topic `{other_name}` (`{}`)",
                        path.get_ref(),
                        other.as_str()
                    );
                    let help = Some("every request path must belong to at most one topic".to_string());
                    self.error(path.span(), message, help);
                    return None;
                }
                let name = raw
                    .name
                    .as_ref()
                    .map_or_else(String::new, |n| n.get_ref().clone());
                paths.push((template.clone(), name));
                Some(template)
            }
            Err(error) => {
                self.error(path.span(), format!("`path`: {error}"), None);
                None
            }
        }
    }

    /// The poll source; its URL is checked against `path`'s variables when the path is valid.
    fn source(&mut self, source: &Spanned<RawSource>, path: Option<&PathTemplate>) -> Option<SourceSpec> {
        let raw = source.get_ref();
        let named = [raw.poll.is_some(), raw.stream.is_some(), raw.push.is_some()];
        if named.iter().filter(|n| **n).count() != 1 {
            self.error(
                source.span(),
                "`source` must name exactly one of `poll`, `stream`, `push`",
                Some("e.g. `source.poll = { url = \"/backend/path\", interval_ms = 1000 }`".into()),
            );
            return None;
        }
        if let Some(poll) = &raw.poll {
            return self.poll(poll, path);
        }
        if let Some(stream) = &raw.stream {
            let idle_timeout = self.duration_ms(
                &stream.get_ref().idle_timeout_ms,
                None,
                "idle_timeout_ms",
                60_000,
                false,
            );
            let Some(url) = &stream.get_ref().url else {
                self.error(
                    stream.span(),
                    "`source.stream` has no `url`",
                    Some("add `url = \"/backend/stream\"`".into()),
                );
                return None;
            };
            let url = self.source_url(url, path?)?;
            return Some(SourceSpec::Stream(StreamSpec { url, idle_timeout }));
        }
        if !self.has_publish_token {
            self.error(
                source.span(),
                "a `push` topic needs `server.publish_token` (or SIDESTREAM_PUBLISH_TOKEN)",
                Some(
                    "publishers authenticate with `Authorization: Bearer <token>` on the admin listener"
                        .into(),
                ),
            );
            return None;
        }
        Some(SourceSpec::Push)
    }

    /// A backend URL template that uses every variable of the topic's path.
    fn source_url(&mut self, url: &Spanned<String>, path: &PathTemplate) -> Option<UrlTemplate> {
        match UrlTemplate::parse(url.get_ref(), path.variables()) {
            Ok((template, used)) => {
                let missing: Vec<String> = path
                    .variables()
                    .iter()
                    .filter(|v| !used.contains(v))
                    .map(|v| format!("{{{v}}}"))
                    .collect();
                if missing.is_empty() {
                    return Some(template);
                }
                self.error(
                    url.span(),
                    format!("`url` does not use path variable(s) {}", missing.join(", ")),
                    Some(
                        "each topic instance must poll its own resource: put every path variable in the URL"
                            .into(),
                    ),
                );
                None
            }
            Err(error) => {
                self.error(url.span(), format!("`url` {error}"), None);
                None
            }
        }
    }

    fn poll(&mut self, poll: &Spanned<RawPoll>, path: Option<&PathTemplate>) -> Option<SourceSpec> {
        let raw = poll.get_ref();
        let interval = self.duration_ms(&raw.interval_ms, None, "interval_ms", 1_000, false);
        let Some(url) = &raw.url else {
            self.error(
                poll.span(),
                "`source.poll` has no `url`",
                Some("add `url = \"/backend/path\"`".into()),
            );
            return None;
        };
        let jitter_default = u64::try_from(interval.as_millis() / 10).unwrap_or(0);
        let jitter = self.duration_ms(&raw.jitter_ms, None, "jitter_ms", jitter_default, true);
        if jitter >= interval && !interval.is_zero() {
            if let Some(field) = &raw.jitter_ms {
                self.error(
                    field.span(),
                    "`jitter_ms` must be smaller than `interval_ms`",
                    None,
                );
            }
        }
        let url = self.source_url(url, path?)?;
        Some(SourceSpec::Poll(PollSpec {
            url,
            interval,
            jitter,
        }))
    }

    fn transports(&mut self, raw: &RawTopic, defaults: &RawDefaults) -> BTreeSet<Transport> {
        let all = [
            Transport::Sse,
            Transport::LongPoll,
            Transport::ShortPoll,
            Transport::Websocket,
        ];
        match raw.transports.as_ref().or(defaults.transports.as_ref()) {
            None => all.into_iter().collect(),
            Some(list) if list.get_ref().is_empty() => {
                self.error(
                    list.span(),
                    "`transports` is empty",
                    Some(
                        "list at least one of \"sse\", \"long_poll\", \"short_poll\", \"websocket\", or leave it out".into(),
                    ),
                );
                all.into_iter().collect()
            }
            Some(list) => list.get_ref().iter().map(|t| *t.get_ref()).collect(),
        }
    }
}
