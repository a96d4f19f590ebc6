//! The cursor: one opaque token `{epoch}-{seq}` shared by every transport.
//!
//! `seq` grows by exactly one per message of a topic instance; `epoch` changes whenever
//! history is lost (restart, topic re-created), so a cursor from an older life is recognised
//! as unknown instead of being silently mis-read as a position in the new one.

use std::fmt;
use std::str::FromStr;

/// Identifies one life of a topic instance's history. Rendered in base 36.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Epoch(u64);

impl Epoch {
    /// A fresh epoch. Seven base-36 digits: short enough for headers, random enough that two
    /// lives of one topic never share an epoch in practice.
    pub fn random() -> Self {
        const LOW: u64 = 36u64.pow(6);
        const HIGH: u64 = 36u64.pow(7);
        Epoch(rand::random_range(LOW..HIGH))
    }

    pub const fn from_raw(raw: u64) -> Self {
        Epoch(raw)
    }

    /// Reads the base-36 form written by `Display` (an epoch stored outside the process).
    pub fn parse(text: &str) -> Option<Self> {
        if text.is_empty() || text.len() > 13 {
            return None;
        }
        u64::from_str_radix(text, 36).ok().map(Epoch)
    }
}

impl Epoch {
    /// Writes the base-36 digits right-aligned before `end`; where they start.
    fn write_digits(self, out: &mut [u8], end: usize) -> usize {
        write_digits(self.0, 36, out, end)
    }
}

/// `value`'s digits in `radix` (10 or 36, lowercase), right-aligned before `end` in `out`;
/// where they start.
fn write_digits(mut value: u64, radix: u64, out: &mut [u8], end: usize) -> usize {
    let mut start = end;
    loop {
        start -= 1;
        let digit = (value % radix) as u8;
        out[start] = if digit < 10 {
            b'0' + digit
        } else {
            b'a' + digit - 10
        };
        value /= radix;
        if value == 0 {
            return start;
        }
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = [0u8; EPOCH_DIGITS];
        let start = self.write_digits(&mut digits, EPOCH_DIGITS);
        // Only ASCII digits and letters were written.
        f.write_str(std::str::from_utf8(&digits[start..]).map_err(|_| fmt::Error)?)
    }
}

/// A `u64` in base 36 has at most 13 digits, in base 10 at most 20.
const EPOCH_DIGITS: usize = 13;
const CURSOR_TEXT_BYTES: usize = EPOCH_DIGITS + 1 + 20;

/// A cursor's text, made without the formatting machinery or an allocation: every polling
/// answer writes its cursor twice (the `ETag` and the body).
pub struct CursorText {
    bytes: [u8; CURSOR_TEXT_BYTES],
    start: usize,
}

impl CursorText {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// Appends the text to `out` (digits, letters and '-' only: no UTF-8 check needed).
    pub fn push_to(&self, out: &mut String) {
        out.extend(self.as_bytes().iter().map(|&byte| char::from(byte)));
    }
}

impl std::ops::Deref for CursorText {
    type Target = str;

    fn deref(&self) -> &str {
        // Only ASCII digits, letters and '-' are written (`Cursor::text`).
        std::str::from_utf8(&self.bytes[self.start..]).unwrap_or_default()
    }
}

/// A position in a topic instance's message sequence: "everything up to and including `seq`".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Cursor {
    pub epoch: Epoch,
    pub seq: u64,
}

impl Cursor {
    /// `{epoch}-{seq}`, as `Display` writes it.
    pub fn text(&self) -> CursorText {
        let mut bytes = [0u8; CURSOR_TEXT_BYTES];
        let seq_start = write_digits(self.seq, 10, &mut bytes, CURSOR_TEXT_BYTES);
        bytes[seq_start - 1] = b'-';
        let start = self.epoch.write_digits(&mut bytes, seq_start - 1);
        CursorText { bytes, start }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed cursor {0:?}: expected <epoch>-<seq>, e.g. k3x9q1a-1042")]
pub struct CursorParseError(pub String);

impl FromStr for Cursor {
    type Err = CursorParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_cursor(text.as_bytes()).ok_or_else(|| CursorParseError(text.chars().take(64).collect()))
    }
}

/// `{epoch}-{seq}`: 1 to 13 base-36 digits (either case, as `u64::from_str_radix` reads
/// them, an optional `+` first), `-`, decimal digits; neither may overflow a `u64`. One pass
/// over the bytes: every repeated long poll parses its `If-None-Match`, and the std
/// parsers' generic paths were 3 % of a poll's instructions.
fn parse_cursor(text: &[u8]) -> Option<Cursor> {
    let dash = text.iter().position(|&byte| byte == b'-')?;
    let (epoch, seq) = (&text[..dash], &text[dash + 1..]);
    if epoch.is_empty() || epoch.len() > 13 || seq.is_empty() {
        return None;
    }
    let epoch = match epoch {
        [b'+', digits @ ..] if !digits.is_empty() => digits,
        digits => digits,
    };
    let mut epoch_value: u64 = 0;
    for &byte in epoch {
        let digit = char::from(byte).to_digit(36)?;
        epoch_value = epoch_value.checked_mul(36)?.checked_add(u64::from(digit))?;
    }
    let mut seq_value: u64 = 0;
    for &byte in seq {
        if !byte.is_ascii_digit() {
            return None;
        }
        seq_value = seq_value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
    }
    Some(Cursor {
        epoch: Epoch(epoch_value),
        seq: seq_value,
    })
}

#[cfg(test)]
impl Cursor {
    /// Seq `seq` of the first epoch there is (`1000000`), for tests.
    pub fn test(seq: u64) -> Cursor {
        Cursor {
            epoch: Epoch::from_raw(36u64.pow(6)),
            seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        for _ in 0..100 {
            let cursor = Cursor {
                epoch: Epoch::random(),
                seq: rand::random(),
            };
            let text = cursor.to_string();
            assert_eq!(text.parse::<Cursor>(), Ok(cursor), "{text}");
            assert_eq!(text, format!("{}-{}", cursor.epoch, cursor.seq));
            assert_eq!(&*cursor.text(), text);
        }
        let epoch_text = Epoch::random().to_string();
        assert_eq!(epoch_text.len(), 7);
        let widest = Cursor {
            epoch: Epoch(u64::MAX),
            seq: u64::MAX,
        };
        assert_eq!(&*widest.text(), "3w5e11264sgsf-18446744073709551615");
        let smallest = Cursor {
            epoch: Epoch(0),
            seq: 0,
        };
        assert_eq!(smallest.to_string(), "0-0");
    }

    /// What the parser accepted before it was one pass: the std parsers.
    fn std_parse(text: &str) -> Option<Cursor> {
        let (epoch, seq) = text.split_once('-')?;
        if epoch.is_empty() || epoch.len() > 13 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Cursor {
            epoch: Epoch(u64::from_str_radix(epoch, 36).ok()?),
            seq: seq.parse().ok()?,
        })
    }

    #[test]
    fn the_one_pass_parser_reads_what_the_std_parsers_read() {
        let mut cases: Vec<String> = [
            "k3x9q1a-1042",
            "K3X9Q1A-7",
            "+ab-5",
            "+-5",
            "+",
            "-",
            "a-",
            "-1",
            "a--1",
            "a-1-2",
            "zzzzzzzzzzzzz-1",
            "3w5e11264sgsf-1",
            "3w5e11264sgsg-1",
            "a-18446744073709551615",
            "a-18446744073709551616",
            "a-+1",
            "a- 1",
            " a-1",
            "é-1",
            "0-0",
            "00000000000000-1",
        ]
        .iter()
        .map(|case| case.to_string())
        .collect();
        // Every short string over the characters that matter.
        let alphabet = ['a', 'Z', '0', '9', '-', '+', ' '];
        for first in alphabet {
            for second in alphabet {
                for third in alphabet {
                    for fourth in alphabet {
                        cases.push([first, second, third, fourth].iter().collect());
                    }
                }
            }
        }
        for case in &cases {
            assert_eq!(case.parse::<Cursor>().ok(), std_parse(case), "{case:?}");
        }
    }

    #[test]
    fn rejects_malformed_tokens() {
        for bad in [
            "",
            "abc",
            "-1",
            "abc-",
            "abc-x",
            "a-b-c",
            "abc--1",
            "!!-1",
            "zzzzzzzzzzzzzz-1",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?} was accepted");
        }
    }
}
