//! The one spelling of a request path that routing, auth and the pass-through shield see.
//!
//! A path is percent-decoded exactly once, segment by segment. Spellings that different
//! servers read differently are refused (`400` with the reason) rather than guessed at:
//! `.` and `..` segments (also encoded), an encoded `/` or `\` (a backend that decodes it
//! sees other segments), a raw `\` (some servers take it for `/`), control characters
//! including NUL, invalid UTF-8 after decoding, a `%` that starts no escape, and escapes of
//! `/`, `\`, `.` or NUL that were encoded twice (`%252F`: a backend that decodes twice).
//! Empty segments (`//`) and a trailing `/` are dropped: `/a//b/` is the same path as `/a/b`,
//! so every such spelling of a topic path reaches the topic and its auth.

use std::fmt;

use percent_encoding::percent_decode_str;

/// A decoded request path: its non-empty segments, none containing `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalPath {
    segments: Vec<String>,
}

/// Why a path is refused before routing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathRefusal {
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("the path has a `.` or `..` segment (also when percent-encoded); send the resolved path")]
    DotSegment,
    #[error("the path has an encoded `/` (`%2F`) or `\\` (`%5C`) inside a segment")]
    EncodedSeparator,
    #[error("the path has a `\\`; use `/` between segments")]
    Backslash,
    #[error("the path has a control character (such as NUL) after percent-decoding")]
    ControlCharacter,
    #[error("the path is not valid UTF-8 after percent-decoding")]
    InvalidUtf8,
    #[error("the path has a `%` that does not start a `%XX` escape; send `%25` for a literal `%`")]
    BadEscape,
    #[error("the path has an escape of `/`, `\\`, `.` or NUL encoded twice (like `%252F`)")]
    DoubleEncoded,
}

impl PathRefusal {
    /// A short stable name, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            PathRefusal::NotAbsolute => "not_absolute",
            PathRefusal::DotSegment => "dot_segment",
            PathRefusal::EncodedSeparator => "encoded_separator",
            PathRefusal::Backslash => "backslash",
            PathRefusal::ControlCharacter => "control_character",
            PathRefusal::InvalidUtf8 => "invalid_utf8",
            PathRefusal::BadEscape => "bad_escape",
            PathRefusal::DoubleEncoded => "double_encoded",
        }
    }
}

impl CanonicalPath {
    /// Canonicalizes the path part of a request target (no query), as it came on the wire.
    pub fn parse(raw: &str) -> Result<Self, PathRefusal> {
        let rest = raw.strip_prefix('/').ok_or(PathRefusal::NotAbsolute)?;
        if rest.contains('\\') {
            return Err(PathRefusal::Backslash);
        }
        let segments = rest
            .split('/')
            .filter(|raw_segment| !raw_segment.is_empty())
            .map(decode_segment)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CanonicalPath { segments })
    }

    /// The decoded segments, in order.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

/// `/`-joined decoded segments, for logs and messages (not a request target: unencoded).
impl fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for segment in &self.segments {
            write!(f, "/{segment}")?;
        }
        Ok(())
    }
}

fn decode_segment(raw: &str) -> Result<String, PathRefusal> {
    if !escapes_well_formed(raw) {
        return Err(PathRefusal::BadEscape);
    }
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| PathRefusal::InvalidUtf8)?;
    if decoded.contains(['/', '\\']) {
        return Err(PathRefusal::EncodedSeparator);
    }
    if decoded.chars().any(char::is_control) {
        return Err(PathRefusal::ControlCharacter);
    }
    if decoded == "." || decoded == ".." {
        return Err(PathRefusal::DotSegment);
    }
    if encodes_twice(&decoded) {
        return Err(PathRefusal::DoubleEncoded);
    }
    Ok(decoded.into_owned())
}

/// Every `%` is followed by two hex digits.
fn escapes_well_formed(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    bytes.iter().enumerate().all(|(i, byte)| {
        *byte != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// After one decoding, the value still spells an escape of a separator, a dot or NUL: only
/// a backend that decodes again would see it, and it would see another path.
fn encodes_twice(decoded: &str) -> bool {
    decoded.as_bytes().windows(3).any(|window| {
        window[0] == b'%'
            && matches!(
                [window[1], window[2].to_ascii_lowercase()],
                [b'2', b'f'] | [b'5', b'c'] | [b'2', b'e'] | [b'0', b'0']
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(raw: &str) -> Result<Vec<String>, PathRefusal> {
        CanonicalPath::parse(raw).map(|path| path.segments().to_vec())
    }

    #[test]
    fn decodes_once_and_drops_empty_segments() {
        assert_eq!(
            segments("/api/prices/AAPL"),
            Ok(vec!["api".into(), "prices".into(), "AAPL".into()])
        );
        assert_eq!(segments("/api/%70rices/AAPL"), segments("/api/prices/AAPL"));
        assert_eq!(segments("/api/%70%72ices/%41APL"), segments("/api/prices/AAPL"));
        assert_eq!(segments("//api///prices/AAPL/"), segments("/api/prices/AAPL"));
        assert_eq!(segments("/a%20b/%C3%A9"), Ok(vec!["a b".into(), "é".into()]));
        // `%25` is a literal `%`, decoded once only.
        assert_eq!(segments("/100%2541"), Ok(vec!["100%41".into()]));
        assert_eq!(segments("/"), Ok(vec![]));
        assert_eq!(
            CanonicalPath::parse("/a//b/").map(|p| p.to_string()),
            Ok("/a/b".into())
        );
        // Dots inside a segment are ordinary characters.
        assert_eq!(
            segments("/a/.b/c..d/..."),
            Ok(vec!["a".into(), ".b".into(), "c..d".into(), "...".into()])
        );
    }

    #[test]
    fn refuses_ambiguous_spellings() {
        let cases = [
            ("/a/../b", PathRefusal::DotSegment),
            ("/a/./b", PathRefusal::DotSegment),
            ("/a/..", PathRefusal::DotSegment),
            ("/a/%2e%2E/b", PathRefusal::DotSegment),
            ("/a/.%2e/b", PathRefusal::DotSegment),
            ("/a/%2E", PathRefusal::DotSegment),
            ("/a%2Fb", PathRefusal::EncodedSeparator),
            ("/a%2fb", PathRefusal::EncodedSeparator),
            ("/a%5Cb", PathRefusal::EncodedSeparator),
            ("/a%5cb", PathRefusal::EncodedSeparator),
            ("/a\\b", PathRefusal::Backslash),
            ("/a%00b", PathRefusal::ControlCharacter),
            ("/a%0Ab", PathRefusal::ControlCharacter),
            ("/a%7F", PathRefusal::ControlCharacter),
            ("/a%FF", PathRefusal::InvalidUtf8),
            ("/a%C3", PathRefusal::InvalidUtf8),
            ("/a%", PathRefusal::BadEscape),
            ("/a%4", PathRefusal::BadEscape),
            ("/a%zz", PathRefusal::BadEscape),
            ("/a%252Fb", PathRefusal::DoubleEncoded),
            ("/a%252e%252e", PathRefusal::DoubleEncoded),
            ("/a%255c", PathRefusal::DoubleEncoded),
            ("/a%2500", PathRefusal::DoubleEncoded),
            ("a/b", PathRefusal::NotAbsolute),
            ("*", PathRefusal::NotAbsolute),
        ];
        for (raw, expected) in cases {
            assert_eq!(CanonicalPath::parse(raw), Err(expected.clone()), "{raw}");
            assert!(!expected.to_string().is_empty());
        }
    }
}
