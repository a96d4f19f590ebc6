//! Path templates (`/api/prices/{symbol}`) on the client side and URL templates
//! (`/prices/{symbol}?depth=1`) on the backend side.

/// One segment of a client path template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Variable,
}

/// A client path with `{name}` variables, each a whole path segment.
#[derive(Clone, Debug)]
pub struct PathTemplate {
    raw: String,
    segments: Vec<Segment>,
    variables: Vec<String>,
}

/// Why a template is not acceptable; the config layer turns these into located errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("must start with `/`")]
    NotAbsolute,
    #[error("variable `{{{0}}}` must be a whole path segment, like `/items/{{{0}}}`")]
    PartialSegment(String),
    #[error("`{0}` is not a valid variable name (letters, digits and `_`, not starting with a digit)")]
    BadName(String),
    #[error("variable `{{{0}}}` appears twice")]
    Repeated(String),
    #[error("unbalanced `{{` or `}}`")]
    Unbalanced,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl PathTemplate {
    pub fn parse(raw: &str) -> Result<Self, TemplateError> {
        if !raw.starts_with('/') {
            return Err(TemplateError::NotAbsolute);
        }
        let mut segments = Vec::new();
        let mut variables: Vec<String> = Vec::new();
        for part in raw[1..].split('/') {
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if !valid_name(name) {
                    return Err(TemplateError::BadName(name.to_string()));
                }
                if variables.iter().any(|v| v == name) {
                    return Err(TemplateError::Repeated(name.to_string()));
                }
                variables.push(name.to_string());
                segments.push(Segment::Variable);
            } else if part.contains('{') || part.contains('}') {
                let name = part
                    .split(['{', '}'])
                    .nth(1)
                    .filter(|n| !n.is_empty())
                    .ok_or(TemplateError::Unbalanced)?;
                return Err(TemplateError::PartialSegment(name.to_string()));
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(PathTemplate {
            raw: raw.to_string(),
            segments,
            variables,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn variables(&self) -> &[String] {
        &self.variables
    }

    /// The variable values if `path` (without query) matches, in declaration order. The
    /// path is compared as written; requests are matched in their canonical form with
    /// [`PathTemplate::matches_segments`].
    pub fn matches(&self, path: &str) -> Option<Vec<String>> {
        let rest = path.strip_prefix('/')?;
        self.matches_parts(rest.split('/'))
    }

    /// The variable values if these path segments (already percent-decoded, without empty
    /// ones) match, in declaration order.
    pub fn matches_segments<S: AsRef<str>>(&self, segments: &[S]) -> Option<Vec<String>> {
        self.matches_parts(segments.iter().map(AsRef::as_ref))
    }

    fn matches_parts<'a>(&self, mut parts: impl Iterator<Item = &'a str>) -> Option<Vec<String>> {
        let mut values = Vec::with_capacity(self.variables.len());
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Variable if part.is_empty() => return None,
                Segment::Variable => values.push(part.to_string()),
            }
        }
        parts.next().is_none().then_some(values)
    }

    /// Two templates that could match the same path (for duplicate detection).
    pub fn overlaps(&self, other: &PathTemplate) -> bool {
        self.segments.len() == other.segments.len()
            && self.segments.iter().zip(&other.segments).all(|pair| match pair {
                (Segment::Literal(a), Segment::Literal(b)) => a == b,
                _ => true,
            })
    }
}

#[derive(Clone, Debug)]
enum Part {
    Text(String),
    /// Index into the path template's variables, and where in the URL it stands.
    Variable(usize, Position),
}

/// Where a variable stands in a URL template: it is encoded for that place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// Before the `?`: within one path segment.
    Path,
    /// After the `?`: within a query key or value.
    Query,
}

/// What a value may keep unencoded: RFC 3986's unreserved characters only. Everything a
/// backend could read as structure is encoded: `/`, `?`, `#`, `%`, `;` in a path segment,
/// `&`, `=`, `+`, `#` in a query, and spaces and non-ASCII anywhere.
const VALUE_KEEPS: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment of a URL template, for comparing request paths with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Percent-decoded literal text.
    Literal(String),
    /// A variable: any text without `/`.
    Variable,
}

/// A backend URL path (and query) with variables taken from a path template.
#[derive(Clone, Debug)]
pub struct UrlTemplate {
    raw: String,
    parts: Vec<Part>,
}

impl UrlTemplate {
    /// Parses `raw` against the variables of `path`. Returns the template and the names it
    /// uses, or the first problem.
    pub fn parse(raw: &str, path_variables: &[String]) -> Result<(Self, Vec<String>), UrlTemplateError> {
        if !raw.starts_with('/') {
            return Err(UrlTemplateError::NotAbsolute);
        }
        let mut parts = Vec::new();
        let mut used = Vec::new();
        let mut rest = raw;
        let mut position = Position::Path;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .map(|i| open + i)
                .ok_or(UrlTemplateError::Unbalanced)?;
            if open > 0 {
                if rest[..open].contains('?') {
                    position = Position::Query;
                }
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let name = &rest[open + 1..close];
            let index = path_variables
                .iter()
                .position(|v| v == name)
                .ok_or_else(|| UrlTemplateError::UnknownVariable(name.to_string()))?;
            parts.push(Part::Variable(index, position));
            used.push(name.to_string());
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(UrlTemplateError::Unbalanced);
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok((
            UrlTemplate {
                raw: raw.to_string(),
                parts,
            },
            used,
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The concrete URL for one topic instance. Values are decoded text (a canonical request
    /// path's segments); each is percent-encoded for its position, so no value can add a
    /// path segment or a query parameter.
    pub fn render(&self, values: &[String]) -> String {
        let mut url = String::with_capacity(self.raw.len() + 16);
        for part in &self.parts {
            match part {
                Part::Text(text) => url.push_str(text),
                Part::Variable(index, position) => {
                    let value = values.get(*index).map_or("", String::as_str);
                    push_encoded(&mut url, value, *position);
                }
            }
        }
        url
    }

    /// The path part (before `?`) as segments of literal text and variables, below `prefix`
    /// (the base URL's path): the backend paths this template can address.
    pub fn path_pattern(&self, prefix: &str) -> Vec<Vec<Piece>> {
        let mut segments: Vec<Vec<Piece>> = vec![Vec::new()];
        let push_text = |segments: &mut Vec<Vec<Piece>>, text: &str| {
            for (i, chunk) in text.split('/').enumerate() {
                if i > 0 {
                    segments.push(Vec::new());
                }
                if !chunk.is_empty() {
                    if let Some(segment) = segments.last_mut() {
                        segment.push(Piece::Literal(decode_literal(chunk)));
                    }
                }
            }
        };
        push_text(&mut segments, prefix);
        for part in &self.parts {
            match part {
                Part::Text(text) => {
                    let path = text.split(['?', '#']).next().unwrap_or("");
                    push_text(&mut segments, path);
                    if path.len() < text.len() {
                        break;
                    }
                }
                Part::Variable(_, Position::Query) => break,
                Part::Variable(_, Position::Path) => {
                    if let Some(segment) = segments.last_mut() {
                        segment.push(Piece::Variable);
                    }
                }
            }
        }
        segments.retain(|segment| !segment.is_empty());
        segments
    }
}

fn push_encoded(url: &mut String, value: &str, position: Position) {
    // `.` is unreserved, but a value `.` or `..` as a whole segment would move the backend
    // path. A canonical request path never has one (it is refused with `400`); should a value
    // be one anyway, it is at least not sent as a dot segment.
    if position == Position::Path && (value == "." || value == "..") {
        url.push_str(if value == "." { "%2E" } else { "%2E%2E" });
        return;
    }
    url.extend(percent_encoding::utf8_percent_encode(value, VALUE_KEEPS));
}

fn decode_literal(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlTemplateError {
    #[error("must be a path on the backend starting with `/` (the host comes from upstream.base_url)")]
    NotAbsolute,
    #[error("unbalanced `{{` or `}}`")]
    Unbalanced,
    #[error("uses `{{{0}}}`, which the topic's path does not define")]
    UnknownVariable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_literals_and_variables() {
        let template = PathTemplate::parse("/api/prices/{symbol}").expect("valid");
        assert_eq!(
            template.matches("/api/prices/AAPL"),
            Some(vec!["AAPL".to_string()])
        );
        assert_eq!(template.matches("/api/prices/"), None);
        assert_eq!(template.matches("/api/prices/AAPL/x"), None);
        assert_eq!(template.matches("/api/price/AAPL"), None);
        let plain = PathTemplate::parse("/alerts").expect("valid");
        assert_eq!(plain.matches("/alerts"), Some(vec![]));
        assert_eq!(plain.matches("/alerts/"), None);
    }

    #[test]
    fn rejects_bad_templates() {
        assert_eq!(PathTemplate::parse("api").err(), Some(TemplateError::NotAbsolute));
        assert!(matches!(
            PathTemplate::parse("/a/x{id}"),
            Err(TemplateError::PartialSegment(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/a/{1d}"),
            Err(TemplateError::BadName(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/{a}/{a}"),
            Err(TemplateError::Repeated(_))
        ));
    }

    #[test]
    fn renders_source_urls() {
        let path = PathTemplate::parse("/rooms/{room}/items/{id}").expect("valid");
        let (url, used) = UrlTemplate::parse("/r/{room}/i?id={id}", path.variables()).expect("valid");
        assert_eq!(used, vec!["room", "id"]);
        assert_eq!(url.render(&["lobby".into(), "7".into()]), "/r/lobby/i?id=7");
        assert_eq!(
            UrlTemplate::parse("/r/{nope}", path.variables()).err(),
            Some(UrlTemplateError::UnknownVariable("nope".into()))
        );
    }

    #[test]
    fn values_are_encoded_for_their_position() {
        let path = PathTemplate::parse("/search/{term}/{room}").expect("valid");
        let (url, _) = UrlTemplate::parse("/s/{room}/x?q={term}&limit=10", path.variables()).expect("valid");
        let render = |term: &str, room: &str| url.render(&[term.into(), room.into()]);
        assert_eq!(
            render("x&limit=100000&admin=1", "lobby"),
            "/s/lobby/x?q=x%26limit%3D100000%26admin%3D1&limit=10"
        );
        assert_eq!(render("a+b c#d", "r"), "/s/r/x?q=a%2Bb%20c%23d&limit=10");
        assert_eq!(
            render("t", "a/../b?c#d%2F;e"),
            "/s/a%2F..%2Fb%3Fc%23d%252F%3Be/x?q=t&limit=10"
        );
        assert_eq!(render("é", "BRK.B"), "/s/BRK.B/x?q=%C3%A9&limit=10");
        assert_eq!(render("..", ".."), "/s/%2E%2E/x?q=..&limit=10");
        assert_eq!(render("t", "."), "/s/%2E/x?q=t&limit=10");
    }

    #[test]
    fn path_patterns_stop_at_the_query() {
        let path = PathTemplate::parse("/a/{x}/{y}").expect("valid");
        let (url, _) = UrlTemplate::parse("/p%41th/item-{x}.json/?y={y}", path.variables()).expect("valid");
        let literal = |text: &str| Piece::Literal(text.to_string());
        assert_eq!(
            url.path_pattern("/v1"),
            vec![
                vec![literal("v1")],
                vec![literal("pAth")],
                vec![literal("item-"), Piece::Variable, literal(".json")],
            ]
        );
        let (plain, _) = UrlTemplate::parse("/search?q={y}", path.variables()).expect("valid");
        assert_eq!(plain.path_pattern(""), vec![vec![literal("search")]]);
    }

    #[test]
    fn overlapping_templates_are_detected() {
        let a = PathTemplate::parse("/a/{x}").expect("valid");
        let b = PathTemplate::parse("/a/b").expect("valid");
        let c = PathTemplate::parse("/b/{x}").expect("valid");
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
    }
}
