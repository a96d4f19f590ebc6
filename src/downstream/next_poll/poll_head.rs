//! A long-poll connection's next request head, as the lane reads it: the previous poll again
//! with only its cursor changed (known by comparing bytes, or by its parsed lines), a request
//! that may be a long poll (parsed into a `RequestHeader` to be routed), or none of the lane's.

use pingora_http::RequestHeader;

use crate::downstream::request_head::plain_get;
use crate::downstream::response::if_none_match_cursor;
use crate::hub::Cursor;

/// A header line's name and value.
type HeaderLine = (Box<[u8]>, Box<[u8]>);

/// A head's target and header lines without `If-None-Match` (the cursor, which changes).
pub(super) struct HeadShape {
    target: Box<[u8]>,
    headers: Vec<HeaderLine>,
    /// The head's bytes around its one `If-None-Match` value, once a head with one was
    /// read: a repeat is then known by comparing bytes, without parsing.
    raw: Option<RawHead>,
}

/// A head's bytes before and after the value of its only `If-None-Match` line. Bytes that
/// are this prefix, a value without control characters, and this suffix are the same head
/// with another value: the prefix and suffix hold every line break, so the lines are the
/// same lines. Comparing them is ~100 instructions where parsing the head again (httparse,
/// then the shape compared line by line) was ~1 300 of a repeated poll's ~14 600.
pub(super) struct RawHead {
    prefix: Box<[u8]>,
    suffix: Box<[u8]>,
    /// [`head_bytes`] of the head, but for the value.
    bytes_but_value: usize,
}

impl RawHead {
    /// The bytes around `parsed`'s one `If-None-Match` value, `head` being the bytes it
    /// was parsed from; `None` without exactly one such line.
    fn of(parsed: &httparse::Request, head: &[u8]) -> Option<Self> {
        let mut lines = parsed.headers.iter().filter(|line| is_cursor_header(line));
        let (line, None) = (lines.next()?, lines.next()) else {
            return None;
        };
        // httparse's values are slices of the bytes it parsed.
        let start = (line.value.as_ptr() as usize).checked_sub(head.as_ptr() as usize)?;
        let end = start
            .checked_add(line.value.len())
            .filter(|&end| end <= head.len())?;
        Some(RawHead {
            prefix: head[..start].into(),
            suffix: head[end..].into(),
            bytes_but_value: head_bytes(parsed) - line.value.len(),
        })
    }

    /// The cursor and header size of `bytes` when they are exactly this head again with
    /// another well-formed `If-None-Match` (anything else is parsed as usual).
    fn repeat(&self, bytes: &[u8]) -> Option<PollHead> {
        let value_end = bytes.len().checked_sub(self.suffix.len())?;
        if value_end < self.prefix.len() || !bytes.starts_with(&self.prefix) || !bytes.ends_with(&self.suffix)
        {
            return None;
        }
        let value = &bytes[self.prefix.len()..value_end];
        if !value
            .iter()
            .all(|&byte| byte == b'\t' || (b' '..=b'~').contains(&byte))
        {
            return None;
        }
        let value = value.trim_ascii();
        let cursor = if_none_match_cursor(Some(std::str::from_utf8(value).ok()?)).ok()?;
        Some(PollHead::Repeat(cursor, self.bytes_but_value + value.len(), None))
    }
}

impl HeadShape {
    fn of(parsed: &httparse::Request, head: &[u8]) -> Option<Self> {
        Some(HeadShape {
            target: parsed.path?.as_bytes().into(),
            headers: parsed
                .headers
                .iter()
                .filter(|line| !is_cursor_header(line))
                .map(|line| (line.name.as_bytes().into(), line.value.into()))
                .collect(),
            raw: RawHead::of(parsed, head),
        })
    }

    /// `bytes` as this head again with another cursor, known without parsing (once the
    /// head's raw form is known).
    pub(super) fn repeat_of_bytes(&self, bytes: &[u8]) -> Option<PollHead> {
        self.raw.as_ref()?.repeat(bytes)
    }

    /// Keeps the raw form a repeat brought, when the shape had none yet.
    pub(super) fn learn_raw(&mut self, raw: Option<RawHead>) {
        if raw.is_some() {
            self.raw = raw;
        }
    }

    /// Whether `parsed` has this shape: compared in place, nothing allocated.
    fn matches(&self, parsed: &httparse::Request) -> bool {
        parsed.path.is_some_and(|path| path.as_bytes() == &*self.target)
            && parsed
                .headers
                .iter()
                .filter(|line| !is_cursor_header(line))
                .map(|line| (line.name.as_bytes(), line.value))
                .eq(self.headers.iter().map(|(name, value)| (&**name, &**value)))
    }
}

fn is_cursor_header(line: &httparse::Header) -> bool {
    line.name.eq_ignore_ascii_case("if-none-match")
}

/// What the lane made of a complete head.
pub(super) enum PollHead {
    /// The connection's previous poll again, with this `If-None-Match` cursor; the header's
    /// size as [`request_header_bytes`] counts it; and the head's bytes around the cursor,
    /// when the shape did not have them yet.
    Repeat(Option<Cursor>, usize, Option<RawHead>),
    /// A request that may be a long poll, to be routed; and its shape, to know it again.
    Fresh(Box<RequestHeader>, Option<HeadShape>),
    /// Not a long poll the lane serves.
    Other,
}

/// Decides what a complete head is: the previous poll again, a request to route, or none
/// of the lane's.
pub(super) fn classify(parsed: &httparse::Request, head: &[u8], shape: Option<&HeadShape>) -> PollHead {
    if let Some(shape) = shape.filter(|shape| shape.matches(parsed)) {
        // The same lines passed `plain_get` before; only the cursor is read again.
        let cursor = parsed
            .headers
            .iter()
            .find(|line| is_cursor_header(line))
            .map(|line| std::str::from_utf8(line.value).map_err(|_| ()))
            .transpose()
            .ok()
            .map(|value| if_none_match_cursor(value));
        if let Some(Ok(cursor)) = cursor {
            let raw = match shape.raw {
                Some(_) => None,
                None => RawHead::of(parsed, head),
            };
            return PollHead::Repeat(cursor, head_bytes(parsed), raw);
        }
    }
    match plain_get(parsed) {
        Some(request) => PollHead::Fresh(Box::new(request), HeadShape::of(parsed, head)),
        None => PollHead::Other,
    }
}

/// A parsed head's size as [`request_header_bytes`] counts it.
fn head_bytes(parsed: &httparse::Request) -> usize {
    let line = parsed.method.map_or(0, str::len) + parsed.path.map_or(0, str::len) + 11;
    let headers: usize = parsed
        .headers
        .iter()
        .map(|line| line.name.len() + line.value.len() + 4)
        .sum();
    line + headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::downstream::request_head::with_parsed_head;
    use crate::downstream::request_header_bytes;

    /// Whether `shape` (of `first`) knows `next` again.
    fn same_shape(first: &[u8], next: &[u8]) -> bool {
        let shape = with_parsed_head(first, |parsed| HeadShape::of(parsed, first)).expect("a shape");
        with_parsed_head(next, |parsed| shape.matches(parsed))
    }

    #[test]
    fn a_repeat_is_the_same_request_but_for_its_if_none_match() {
        let first = b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\"\r\nAccept: */*\r\n\r\n";
        assert!(same_shape(first, first));
        assert!(same_shape(
            first,
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nif-none-match: \"a-2\"\r\nAccept: */*\r\n\r\n"
        ));
        assert!(same_shape(
            first,
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
        ));
        for other in [
            &b"GET /feed?wait=11 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\"\r\nAccept: */*\r\n\r\n"[..],
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: y\r\nIf-None-Match: \"a-1\"\r\nAccept: */*\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nAccept: */*\r\nHost: x\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nOrigin: https://a.example\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        ] {
            let same = same_shape(first, other);
            // The one with a blank line more is the same head (the rest is a next request,
            // which the lane checks apart from the shape).
            assert_eq!(
                same,
                other.ends_with(b"\r\n\r\n\r\n"),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    /// What the bytes of `first` (around its `If-None-Match` value) know of `next` without
    /// parsing it: its cursor and header size, and those the parse gives, for comparison.
    fn raw_repeat(first: &[u8], next: &[u8]) -> Option<(Option<Cursor>, usize)> {
        let raw = with_parsed_head(first, |parsed| RawHead::of(parsed, first))?;
        match raw.repeat(next)? {
            PollHead::Repeat(cursor, size, None) => Some((cursor, size)),
            _ => panic!("a raw repeat is a repeat, and brings no new raw head"),
        }
    }

    #[test]
    fn a_repeat_is_known_by_its_bytes_only_when_nothing_but_the_cursor_changed() {
        let first = b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\"\r\nAccept: */*\r\n\r\n";
        let next = b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-12\"\r\nAccept: */*\r\n\r\n";
        let parsed_size = with_parsed_head(next, head_bytes);
        let cursor: Cursor = "a-12".parse().expect("a cursor");
        assert_eq!(raw_repeat(first, next), Some((Some(cursor), parsed_size)));
        assert_eq!(
            raw_repeat(
                first,
                b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match:  \"a-12\" \r\nAccept: */*\r\n\r\n"
            ),
            Some((Some(cursor), parsed_size)),
            "spaces around the value are not part of it"
        );
        assert_eq!(
            raw_repeat(
                first,
                b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: *\r\nAccept: */*\r\n\r\n"
            ),
            Some((None, parsed_size - 5))
        );
        for other in [
            // Another line, or the same with a line break, a control byte, a pipelined
            // request or a bad cursor in the value: parsed as usual.
            &b"GET /feed?wait=11 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-12\"\r\nAccept: */*\r\n\r\n"[..],
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-12\"\r\nX: y\r\nAccept: */*\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\r\nX: 2\"\r\nAccept: */*\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\x002\"\r\nAccept: */*\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\"\r\nAccept: */*\r\n\r\nGET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-2\"\r\nAccept: */*\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-x\"\r\nAccept: */*\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\"\r\nAccept: */*\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(raw_repeat(first, other), None, "{}", String::from_utf8_lossy(other));
        }
        // A head with no or two `If-None-Match` lines has no raw form.
        for without in [
            &b"GET /feed HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /feed HTTP/1.1\r\nIf-None-Match: \"a-1\"\r\nif-none-match: \"a-2\"\r\n\r\n",
        ] {
            assert_eq!(raw_repeat(without, without), None);
        }
    }

    #[test]
    fn a_parsed_heads_size_is_counted_as_for_a_request_header() {
        let bytes = b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\"\r\n\r\n";
        with_parsed_head(bytes, |parsed| {
            let request = plain_get(parsed).expect("a poll");
            assert_eq!(head_bytes(parsed), request_header_bytes(&request));
        });
    }
}
