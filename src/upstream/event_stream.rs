//! Incremental parsers for backend streams: `text/event-stream` by the WHATWG rules, and
//! newline-delimited JSON. Both take arbitrary chunks and yield whole events.

use bytes::{Buf, Bytes, BytesMut};

/// One event from the backend's stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamEvent {
    /// `None` for the default `message` type.
    pub event: Option<String>,
    pub data: String,
    /// The last event id seen so far (ids persist across events, as in `EventSource`).
    pub id: Option<String>,
}

/// The WHATWG event-stream parser (HTML Living Standard, "Server-sent events", §9.2.5/6).
#[derive(Debug, Default)]
pub struct EventStreamParser {
    buffer: BytesMut,
    started: bool,
    /// A CR ended the previous chunk: an LF right after it belongs to the same line end.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    retry: Option<u64>,
}

impl EventStreamParser {
    /// A parser for a reconnected stream that continues after `last_id`.
    pub fn resuming(last_id: Option<String>) -> Self {
        EventStreamParser {
            last_id,
            ..EventStreamParser::default()
        }
    }

    /// The reconnection time the stream asked for with `retry:`, if any.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry
    }

    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Feeds a chunk; returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<StreamEvent> {
        let mut chunk = chunk;
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        self.buffer.extend_from_slice(chunk);
        if !self.started {
            if self.buffer.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.buffer) {
                return Vec::new(); // could still be a BOM
            }
            if self.buffer.starts_with(b"\xEF\xBB\xBF") {
                self.buffer.advance(3);
            }
            self.started = true;
        }
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n' || *b == b'\r') {
            let line = self.buffer.split_to(end);
            let terminator = self.buffer[0];
            self.buffer.advance(1);
            if terminator == b'\r' {
                match self.buffer.first() {
                    Some(b'\n') => self.buffer.advance(1),
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
            if let Some(event) = self.line(&String::from_utf8_lossy(&line)) {
                events.push(event);
            }
        }
        events
    }

    fn line(&mut self, line: &str) -> Option<StreamEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None; // comment
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<StreamEvent> {
        let event = self
            .event
            .take()
            .filter(|name| !name.is_empty() && name != "message");
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(StreamEvent {
            event,
            data: std::mem::take(&mut self.data),
            id: self.last_id.clone(),
        })
    }
}

/// Newline-delimited JSON: each complete line is one event (blank lines are skipped;
/// lines that are not JSON are reported, not published).
#[derive(Debug, Default)]
pub struct NdjsonParser {
    buffer: BytesMut,
}

impl NdjsonParser {
    /// Feeds a chunk; returns each complete line as `Ok(json)` or `Err(reason)`.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Result<Bytes, String>> {
        self.buffer.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let mut line = self.buffer.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            lines.push(match serde_json::from_slice::<serde::de::IgnoredAny>(&line) {
                Ok(_) => Ok(line.freeze()),
                Err(error) => Err(format!("not a JSON line: {error}")),
            });
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\xEF\xBB\xBF: a comment\r\nretry: 1500\n\
        id: 1\nevent: add\ndata: first\ndata:  two spaces\r\n\r\
        data\n\ndata: after field without colon\n\n\
        id: 2\ndata:{\"json\": true}\r\n\r\n\
        event: ignored-without-data\n\n\
        id\ndata: id reset to empty\n\n\
        data: no trailing newline yet";

    fn expected() -> Vec<StreamEvent> {
        vec![
            StreamEvent {
                event: Some("add".into()),
                data: "first\n two spaces".into(),
                id: Some("1".into()),
            },
            StreamEvent {
                event: None,
                data: "".into(),
                id: Some("1".into()),
            },
            StreamEvent {
                event: None,
                data: "after field without colon".into(),
                id: Some("1".into()),
            },
            StreamEvent {
                event: None,
                data: "{\"json\": true}".into(),
                id: Some("2".into()),
            },
            StreamEvent {
                event: None,
                data: "id reset to empty".into(),
                id: Some("".into()),
            },
        ]
    }

    fn parse(chunks: &[&[u8]]) -> (Vec<StreamEvent>, EventStreamParser) {
        let mut parser = EventStreamParser::default();
        let events = chunks.iter().flat_map(|chunk| parser.feed(chunk)).collect();
        (events, parser)
    }

    #[test]
    fn follows_the_whatwg_rules() {
        let (events, parser) = parse(&[SAMPLE]);
        assert_eq!(events, expected());
        assert_eq!(parser.retry_ms(), Some(1500));
        assert_eq!(parser.last_event_id(), Some(""));
    }

    #[test]
    fn every_split_into_two_and_three_chunks_gives_the_same_events() {
        for first in 0..=SAMPLE.len() {
            let (events, _) = parse(&[&SAMPLE[..first], &SAMPLE[first..]]);
            assert_eq!(events, expected(), "split at {first}");
        }
        for first in 0..=SAMPLE.len() {
            for second in first..=SAMPLE.len() {
                let (events, _) = parse(&[&SAMPLE[..first], &SAMPLE[first..second], &SAMPLE[second..]]);
                assert_eq!(events, expected(), "split at {first} and {second}");
            }
        }
        let bytes: Vec<&[u8]> = SAMPLE.chunks(1).collect();
        assert_eq!(parse(&bytes).0, expected(), "one byte at a time");
    }

    #[test]
    fn lone_cr_line_endings_work_at_chunk_edges() {
        let (events, _) = parse(&[b"data: a\r", b"\r", b"data: b\r\r"]);
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, vec!["a", "b"]);
    }

    #[test]
    fn ndjson_lines_across_chunks() {
        let mut parser = NdjsonParser::default();
        let mut lines = parser.feed(b"{\"a\":1}\n{\"b\"");
        lines.extend(parser.feed(b":2}\r\n\nnot json\n[3]"));
        lines.extend(parser.feed(b"\n"));
        let shown: Vec<String> = lines
            .into_iter()
            .map(|line| match line {
                Ok(json) => String::from_utf8_lossy(&json).into_owned(),
                Err(_) => "ERR".into(),
            })
            .collect();
        assert_eq!(shown, vec!["{\"a\":1}", "{\"b\":2}", "ERR", "[3]"]);
    }
}
