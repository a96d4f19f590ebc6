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

    /// The variable values if `path` (without query) matches, in declaration order.
    pub fn matches(&self, path: &str) -> Option<Vec<String>> {
        let rest = path.strip_prefix('/')?;
        let mut values = Vec::with_capacity(self.variables.len());
        let mut parts = rest.split('/');
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
    /// Index into the path template's variables.
    Variable(usize),
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
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .map(|i| open + i)
                .ok_or(UrlTemplateError::Unbalanced)?;
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let name = &rest[open + 1..close];
            let index = path_variables
                .iter()
                .position(|v| v == name)
                .ok_or_else(|| UrlTemplateError::UnknownVariable(name.to_string()))?;
            parts.push(Part::Variable(index));
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

    /// The concrete URL for one topic instance. Values come from one path segment each, so
    /// they are already percent-encoded and contain no `/`.
    pub fn render(&self, values: &[String]) -> String {
        let mut url = String::with_capacity(self.raw.len() + 16);
        for part in &self.parts {
            match part {
                Part::Text(text) => url.push_str(text),
                Part::Variable(index) => {
                    url.push_str(values.get(*index).map_or("", String::as_str));
                }
            }
        }
        url
    }
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
    fn overlapping_templates_are_detected() {
        let a = PathTemplate::parse("/a/{x}").expect("valid");
        let b = PathTemplate::parse("/a/b").expect("valid");
        let c = PathTemplate::parse("/b/{x}").expect("valid");
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
    }
}
