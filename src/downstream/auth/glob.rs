//! Glob patterns over topic instance names (`prices/*`, `rooms/**`), as listed in a token's
//! topics claim: `*` matches within one `/`-separated segment, `**` matches anything.

/// Whether `pattern` matches the whole of `name`.
pub fn matches(pattern: &str, name: &str) -> bool {
    match_bytes(pattern.as_bytes(), name.as_bytes())
}

fn match_bytes(pattern: &[u8], name: &[u8]) -> bool {
    // Dynamic programming over (pattern position, name position): O(|pattern| × |name|) for
    // any pattern, so a hostile claim cannot make matching exponential.
    // `row[n]`: pattern[p..] matches name[n..]; filled from the end of the pattern.
    let mut next = vec![false; name.len() + 1];
    next[name.len()] = true;
    let mut p = pattern.len();
    while p > 0 {
        // Step back over one token: `**`, `*`, or a literal byte.
        let (start, token) = if pattern[p - 1] == b'*' && p >= 2 && pattern[p - 2] == b'*' {
            (p - 2, Token::Deep)
        } else if pattern[p - 1] == b'*' {
            (p - 1, Token::Star)
        } else {
            (p - 1, Token::Byte(pattern[p - 1]))
        };
        let mut row = vec![false; name.len() + 1];
        for n in (0..=name.len()).rev() {
            row[n] = match token {
                Token::Byte(b) => n < name.len() && name[n] == b && next[n + 1],
                // Zero bytes, or one more (a single star stops at `/`).
                Token::Star => next[n] || (n < name.len() && name[n] != b'/' && row[n + 1]),
                Token::Deep => next[n] || (n < name.len() && row[n + 1]),
            };
        }
        next = row;
        p = start;
    }
    next[0]
}

#[derive(Clone, Copy)]
enum Token {
    Byte(u8),
    Star,
    Deep,
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn literal_and_wildcards() {
        assert!(matches("prices", "prices"));
        assert!(!matches("prices", "prices/AAPL"));
        assert!(matches("prices/*", "prices/AAPL"));
        assert!(!matches("prices/*", "prices/AAPL/daily"));
        assert!(matches("prices/**", "prices/AAPL/daily"));
        assert!(matches("prices/A*", "prices/AAPL"));
        assert!(!matches("prices/B*", "prices/AAPL"));
        assert!(matches("*/AAPL", "prices/AAPL"));
        assert!(matches("**", "anything/at/all"));
        assert!(!matches("rooms/*", "prices/AAPL"));
        assert!(matches("rooms/*/events", "rooms/42/events"));
        assert!(!matches("rooms/*/events", "rooms/42/other"));
        assert!(matches("**/*", "a/b/c"));
        assert!(matches("a/**/c", "a/x/y/c"));
    }

    #[test]
    fn hostile_patterns_stay_linear() {
        let pattern = "*a".repeat(50) + "b";
        let name = "a".repeat(5_000);
        assert!(!matches(&pattern, &name));
    }
}
