//! Incremental parsers for backend streams: `text/event-stream` by the WHATWG rules, and
//! newline-delimited JSON. Both take arbitrary chunks and yield whole events.
//!
//! Both are bounded and linear: a line, or an event's accumulated fields, larger than the
//! parser's `max_bytes` is an error (the stream is broken or hostile; the caller drops it),
//! and each byte is scanned for a line end once, however the stream is chunked: the
//! unfinished tail remembers how far it was already searched.

use bytes::{Buf, Bytes, BytesMut};

/// A line or an event grew past the parser's limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the backend sent a line or event larger than max_body_bytes ({max_bytes})")]
pub struct TooLarge {
    pub max_bytes: usize,
}

/// The unfinished line at the end of the buffer: how much of it was already searched for a
/// line end, so that the next chunk's search starts there, not at the start again.
#[derive(Debug, Default)]
struct LineScan {
    searched: usize,
    /// Bytes examined over the parser's life (a measure of its work, for tests).
    total: u64,
}

impl LineScan {
    /// The position of the next byte in `buffer` that `is_end` accepts, searching only
    /// bytes not searched before.
    fn find(&mut self, buffer: &[u8], is_end: impl Fn(u8) -> bool) -> Option<usize> {
        let start = self.searched.min(buffer.len());
        match buffer[start..].iter().position(|b| is_end(*b)) {
            Some(offset) => {
                self.total += offset as u64 + 1;
                self.searched = 0; // the caller consumes the line up to here
                Some(start + offset)
            }
            None => {
                self.total += (buffer.len() - start) as u64;
                self.searched = buffer.len();
                None
            }
        }
    }
}

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
#[derive(Debug)]
pub struct EventStreamParser {
    buffer: BytesMut,
    scan: LineScan,
    max_bytes: usize,
    started: bool,
    /// A CR ended the previous chunk: an LF right after it belongs to the same line end.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    retry: Option<u64>,
}

impl Default for EventStreamParser {
    /// No size limit (for tests and fuzzing; the stream source always sets one).
    fn default() -> Self {
        EventStreamParser {
            buffer: BytesMut::new(),
            scan: LineScan::default(),
            max_bytes: usize::MAX,
            started: false,
            after_cr: false,
            event: None,
            data: String::new(),
            has_data: false,
            last_id: None,
            retry: None,
        }
    }
}

impl EventStreamParser {
    /// A parser for a reconnected stream that continues after `last_id`.
    pub fn resuming(last_id: Option<String>) -> Self {
        EventStreamParser {
            last_id,
            ..EventStreamParser::default()
        }
    }

    /// Lines, and events (their data plus event name), may be at most `max_bytes` long.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Bytes examined for line ends so far: linear in the input, whatever the chunking.
    pub fn bytes_scanned(&self) -> u64 {
        self.scan.total
    }

    /// The reconnection time the stream asked for with `retry:`, if any.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry
    }

    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Feeds a chunk; returns the events it completed, or an error once a line or an event
    /// is larger than the limit (the parser is then spent: drop it with the stream).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<StreamEvent>, TooLarge> {
        let mut chunk = chunk;
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        self.buffer.extend_from_slice(chunk);
        if !self.started {
            if self.buffer.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.buffer) {
                return Ok(Vec::new()); // could still be a BOM
            }
            if self.buffer.starts_with(b"\xEF\xBB\xBF") {
                self.buffer.advance(3);
            }
            self.started = true;
        }
        let mut events = Vec::new();
        while let Some(end) = self.scan.find(&self.buffer, |b| b == b'\n' || b == b'\r') {
            if end > self.max_bytes {
                return Err(self.too_large());
            }
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
            if self.pending_bytes() > self.max_bytes {
                return Err(self.too_large());
            }
        }
        if self.buffer.len() > self.max_bytes {
            return Err(self.too_large());
        }
        Ok(events)
    }

    /// The size of the event being assembled.
    fn pending_bytes(&self) -> usize {
        self.data.len() + self.event.as_ref().map_or(0, String::len)
    }

    /// Frees what the parser holds (the caller drops the stream) and names the limit.
    fn too_large(&mut self) -> TooLarge {
        self.buffer = BytesMut::new();
        self.data = String::new();
        self.event = None;
        self.has_data = false;
        TooLarge {
            max_bytes: self.max_bytes,
        }
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
#[derive(Debug)]
pub struct NdjsonParser {
    buffer: BytesMut,
    scan: LineScan,
    max_bytes: usize,
}

impl Default for NdjsonParser {
    /// No size limit (for tests and fuzzing; the stream source always sets one).
    fn default() -> Self {
        NdjsonParser {
            buffer: BytesMut::new(),
            scan: LineScan::default(),
            max_bytes: usize::MAX,
        }
    }
}

impl NdjsonParser {
    /// Lines may be at most `max_bytes` long.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Bytes examined for line ends so far: linear in the input, whatever the chunking.
    pub fn bytes_scanned(&self) -> u64 {
        self.scan.total
    }

    /// Feeds a chunk; returns each complete line as `Ok(json)` or `Err(reason)`, or an error
    /// once a line is larger than the limit (the parser is then spent).
    #[allow(clippy::type_complexity)]
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Result<Bytes, String>>, TooLarge> {
        self.buffer.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(end) = self.scan.find(&self.buffer, |b| b == b'\n') {
            if end > self.max_bytes {
                return Err(self.too_large());
            }
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
        if self.buffer.len() > self.max_bytes {
            return Err(self.too_large());
        }
        Ok(lines)
    }

    fn too_large(&mut self) -> TooLarge {
        self.buffer = BytesMut::new();
        TooLarge {
            max_bytes: self.max_bytes,
        }
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
        let events = chunks
            .iter()
            .flat_map(|chunk| parser.feed(chunk).expect("no limit"))
            .collect();
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
        let mut lines = parser.feed(b"{\"a\":1}\n{\"b\"").unwrap();
        lines.extend(parser.feed(b":2}\r\n\nnot json\n[3]").unwrap());
        lines.extend(parser.feed(b"\n").unwrap());
        let shown: Vec<String> = lines
            .into_iter()
            .map(|line| match line {
                Ok(json) => String::from_utf8_lossy(&json).into_owned(),
                Err(_) => "ERR".into(),
            })
            .collect();
        assert_eq!(shown, vec!["{\"a\":1}", "{\"b\":2}", "ERR", "[3]"]);
    }

    #[test]
    fn a_line_over_the_limit_is_an_error_without_a_line_end() {
        let mut parser = EventStreamParser::default().with_max_bytes(1024);
        for _ in 0..1023 {
            assert_eq!(parser.feed(b"x"), Ok(Vec::new()));
        }
        assert_eq!(parser.feed(b"x\n"), Ok(Vec::new()), "exactly the limit is fine");
        let error = (0..2000).find_map(|_| parser.feed(b"y").err());
        assert_eq!(error, Some(TooLarge { max_bytes: 1024 }));

        let mut ndjson = NdjsonParser::default().with_max_bytes(1024);
        assert!(ndjson.feed(&[b' '; 1024]).is_ok());
        assert!(ndjson.feed(b" ").is_err());
        let mut ndjson = NdjsonParser::default().with_max_bytes(1024);
        assert!(ndjson.feed(&[b' '; 5000]).is_err(), "one big chunk too");
    }

    #[test]
    fn an_event_of_many_short_lines_over_the_limit_is_an_error() {
        let mut parser = EventStreamParser::default().with_max_bytes(1024);
        let mut error = None;
        for _ in 0..200 {
            if let Err(too_large) = parser.feed(b"data: 0123456789\n") {
                error = Some(too_large);
                break;
            }
        }
        assert_eq!(error, Some(TooLarge { max_bytes: 1024 }));
        let mut parser = EventStreamParser::default().with_max_bytes(1024);
        let events = parser
            .feed(b"data: 0123456789\n\n".repeat(200).as_slice())
            .unwrap();
        assert_eq!(events.len(), 200, "many small events are fine");
    }

    #[test]
    fn one_byte_chunks_are_scanned_once() {
        const N: usize = 256 * 1024;
        let mut body = b"data: ".to_vec();
        body.resize(N - 2, b'x');
        body.extend_from_slice(b"\n\n");
        let mut parser = EventStreamParser::default();
        let mut events = Vec::new();
        for byte in body.chunks(1) {
            events.extend(parser.feed(byte).unwrap());
        }
        assert_eq!(events.len(), 1);
        assert!(
            parser.bytes_scanned() <= N as u64,
            "scanned {} bytes for {N}",
            parser.bytes_scanned()
        );

        let mut body = vec![b'1'; N - 1];
        body.push(b'\n');
        let mut ndjson = NdjsonParser::default();
        let mut lines = Vec::new();
        for byte in body.chunks(1) {
            lines.extend(ndjson.feed(byte).unwrap());
        }
        assert_eq!(lines.len(), 1);
        assert!(
            ndjson.bytes_scanned() <= N as u64,
            "scanned {}",
            ndjson.bytes_scanned()
        );
    }
}
