//! The pass-through shield: backend paths that carry what a topic with `auth` protects are
//! not passed through, or the pass-through would hand out the data without the auth.
//!
//! Shielded are, for every topic with `auth`: its source URL's path (variables match any
//! segment text), its `websocket.inbound` URL's path, and its policy's callback and JWKS
//! paths, each below `upstream.base_url`'s path. A request whose canonical path matches one
//! is refused with `403`. Matching leans towards refusing what a backend might read as the
//! same path: literal segments compare ASCII-case-insensitively (case-insensitive servers)
//! and a segment also matches with a `;parameter` suffix removed (servlet path parameters).

use crate::config::template::{Piece, UrlTemplate};
use crate::config::{AuthKind, JwtKeys, SourceSpec, TopicSpec};

use super::canonical::CanonicalPath;

/// One shielded backend path.
#[derive(Debug)]
struct Shielded {
    /// Segments of lower-cased literal text and variables.
    pattern: Vec<Vec<Piece>>,
    /// The path with `*` for variables, and what it is, for the start-up notice and refusals.
    description: String,
}

#[derive(Debug, Default)]
pub struct Shield {
    paths: Vec<Shielded>,
}

impl Shield {
    pub fn new(topics: &[TopicSpec], path_prefix: &str) -> Self {
        let mut shield = Shield::default();
        for spec in topics {
            let Some(policy) = &spec.auth else {
                continue;
            };
            match &spec.source {
                SourceSpec::Poll(poll) => shield.add_template(&poll.url, path_prefix, "source", &spec.name),
                SourceSpec::Stream(stream) => {
                    shield.add_template(&stream.url, path_prefix, "source", &spec.name)
                }
                SourceSpec::Push => {}
            }
            if let Some(inbound) = &spec.websocket.inbound {
                shield.add_template(inbound, path_prefix, "websocket.inbound", &spec.name);
            }
            match &policy.kind {
                AuthKind::Callback(callback) => {
                    shield.add_literal(&callback.url, path_prefix, "auth callback", &policy.name)
                }
                AuthKind::Jwt(jwt) => {
                    if let JwtKeys::Jwks { url, .. } = &jwt.keys {
                        shield.add_literal(url, path_prefix, "JWKS", &policy.name);
                    }
                }
            }
        }
        shield
    }

    /// What the path is, if the pass-through must not send it to the backend.
    pub fn covers(&self, path: &CanonicalPath) -> Option<&str> {
        let segments: Vec<String> = path.segments().iter().map(|segment| fold_case(segment)).collect();
        self.paths
            .iter()
            .find(|shielded| {
                shielded.pattern.len() == segments.len()
                    && shielded
                        .pattern
                        .iter()
                        .zip(&segments)
                        .all(|(pieces, segment)| segment_matches_loosely(pieces, segment))
            })
            .map(|shielded| shielded.description.as_str())
    }

    /// Descriptions of every shielded path, for the start-up notice.
    pub fn descriptions(&self) -> Vec<&str> {
        self.paths.iter().map(|s| s.description.as_str()).collect()
    }

    fn add_template(&mut self, template: &UrlTemplate, prefix: &str, what: &str, owner: &str) {
        self.add(template.path_pattern(prefix), &format!("{what} of topic {owner}"));
    }

    fn add_literal(&mut self, path: &str, prefix: &str, what: &str, owner: &str) {
        let pattern = match UrlTemplate::parse(path, &[]) {
            Ok((template, _)) => template.path_pattern(prefix),
            // Braces in a fixed path are just text: shield the path as written.
            Err(_) => format!("{prefix}{path}")
                .split(['?', '#'])
                .next()
                .unwrap_or("")
                .split('/')
                .filter(|segment| !segment.is_empty())
                .map(|segment| vec![Piece::Literal(segment.to_string())])
                .collect(),
        };
        self.add(pattern, &format!("{what} of auth policy {owner}"));
    }

    fn add(&mut self, pattern: Vec<Vec<Piece>>, what: &str) {
        let pattern: Vec<Vec<Piece>> = pattern
            .into_iter()
            .map(|pieces| {
                pieces
                    .into_iter()
                    .map(|piece| match piece {
                        Piece::Literal(text) => Piece::Literal(fold_case(&text)),
                        Piece::Variable => Piece::Variable,
                    })
                    .collect()
            })
            .collect();
        let mut path = String::new();
        for pieces in &pattern {
            path.push('/');
            for piece in pieces {
                match piece {
                    Piece::Literal(text) => path.push_str(text),
                    Piece::Variable => path.push('*'),
                }
            }
        }
        if path.is_empty() {
            path.push('/');
        }
        if let Some(known) = self.paths.iter_mut().find(|s| s.pattern == pattern) {
            known.description.push_str(&format!(", {what}"));
            return;
        }
        self.paths.push(Shielded {
            pattern,
            description: format!("{path} ({what})"),
        });
    }
}

/// The segment matches as it is or without a `;parameter` suffix.
fn segment_matches_loosely(pieces: &[Piece], segment: &str) -> bool {
    segment_matches(pieces, segment)
        || segment
            .split_once(';')
            .is_some_and(|(before, _)| segment_matches(pieces, before))
}

/// Literal pieces in order, each variable standing for any text (even none).
fn segment_matches(pieces: &[Piece], text: &str) -> bool {
    let mut position = 0;
    for (i, piece) in pieces.iter().enumerate() {
        let Piece::Literal(literal) = piece else {
            continue;
        };
        let after_variable = i > 0 && pieces[i - 1] == Piece::Variable;
        let rest = &text[position..];
        if !after_variable {
            if !rest.starts_with(literal.as_str()) {
                return false;
            }
            position += literal.len();
        } else if i == pieces.len() - 1 {
            return rest.ends_with(literal.as_str());
        } else {
            match rest.find(literal.as_str()) {
                Some(found) => position += found + literal.len(),
                None => return false,
            }
        }
    }
    pieces.last() == Some(&Piece::Variable) || position == text.len()
}

/// Unicode case folding (upper, then lower, per character), so that the spellings a
/// case-insensitive backend may equate (`ı`/`I`/`i`, `ſ`/`s`, the Kelvin sign/`k`) compare
/// equal here too: ASCII folding alone would let `/api/pr%C4%B1ces` past the shield of
/// `/api/prices` on a backend that matches with Unicode rules (Java's `equalsIgnoreCase`).
fn fold_case(text: &str) -> String {
    text.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(text: &str) -> Piece {
        Piece::Literal(text.to_string())
    }

    #[test]
    fn segments_match_pieces() {
        let item = [literal("item-"), Piece::Variable, literal(".json")];
        assert!(segment_matches(&item, "item-7.json"));
        assert!(segment_matches(&item, "item-.json"));
        assert!(!segment_matches(&item, "item-7.jsonx"));
        assert!(!segment_matches(&item, "xitem-7.json"));
        assert!(segment_matches(&[Piece::Variable], "anything"));
        assert!(segment_matches(&[literal("prices")], "prices"));
        assert!(!segment_matches(&[literal("prices")], "pricesx"));
        let middle = [Piece::Variable, literal("-"), Piece::Variable];
        assert!(segment_matches(&middle, "a-b"));
        assert!(!segment_matches(&middle, "ab"));
        assert!(segment_matches_loosely(
            &[literal("prices")],
            "prices;jsessionid=1"
        ));
    }

    #[test]
    fn shields_the_backend_paths_of_topics_with_auth_below_the_base_path() {
        let text = r#"
[upstream]
base_url = "http://127.0.0.1:3000/v1/"

[[topic]]
name = "prices"
path = "/prices/{symbol}"
source.poll = { url = "/quotes/{symbol}?depth=1" }
websocket = { inbound = "/quotes/{symbol}/orders" }
auth = "keys"

[[topic]]
name = "rooms"
path = "/rooms/{room}"
source.stream = { url = "/rooms/{room}/events" }
auth = "gate"

[[topic]]
name = "open"
path = "/open/{id}"
source.poll = { url = "/open/{id}" }

[auth.keys.jwt]
algorithms = ["ES256"]
jwks_url = "/.well-known/jwks.json"

[auth.gate.callback]
url = "/auth/check?v=2"
"#;
        let config = crate::config::parse("shield.toml", text).expect("valid config");
        let shield = Shield::new(&config.topics, &config.upstream.path_prefix);
        assert_eq!(
            shield.descriptions(),
            vec![
                "/v1/quotes/* (source of topic prices)",
                "/v1/quotes/*/orders (websocket.inbound of topic prices)",
                "/v1/.well-known/jwks.json (JWKS of auth policy keys)",
                "/v1/rooms/*/events (source of topic rooms)",
                "/v1/auth/check (auth callback of auth policy gate)",
            ]
        );
        let covers = |raw: &str| {
            shield
                .covers(&CanonicalPath::parse(raw).expect("canonical"))
                .is_some()
        };
        assert!(covers("/v1/quotes/AAPL"));
        assert!(covers("/v1/auth/check"));
        assert!(
            !covers("/quotes/AAPL"),
            "the pass-through sends paths as they are, not below /v1"
        );
        assert!(
            !covers("/v1/open/1"),
            "a topic without auth has nothing to shield"
        );
    }

    #[test]
    fn covers_case_and_parameter_variants() {
        let mut shield = Shield::default();
        shield.add(
            vec![
                vec![literal("API")],
                vec![literal("prices")],
                vec![Piece::Variable],
            ],
            "source of topic prices",
        );
        let covers = |raw: &str| {
            shield
                .covers(&CanonicalPath::parse(raw).expect("canonical"))
                .is_some()
        };
        assert!(covers("/api/prices/AAPL"));
        assert!(covers("/API/Prices/AAPL"));
        assert!(covers("/api/prices;x=1/AAPL"));
        assert!(covers("//api/prices/AAPL/"));
        // Unicode look-alikes that Unicode case-insensitive matching equates with ASCII.
        assert!(covers("/api/pr%C4%B1ces/AAPL"), "dotless i");
        assert!(covers("/api/price%C5%BF/AAPL"), "long s");
        assert!(!covers("/api/prices"));
        assert!(!covers("/api/prices/AAPL/daily"));
        assert!(!covers("/api/news/AAPL"));
        assert_eq!(
            shield.descriptions(),
            vec!["/api/prices/* (source of topic prices)"]
        );
    }
}
