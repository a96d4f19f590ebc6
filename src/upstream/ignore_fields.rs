//! `ignore_fields`: JSON Pointers (RFC 6901) to parts of a polled JSON state that change on
//! every response without meaning anything (`/updated_at`, `/meta/request_id`). Change
//! detection hashes the document with them removed, so a response that differs only there is
//! no change. A token `*` matches any one array index or object key
//! (`/items/*/fetched_at`); the rest of RFC 6901 is as written (`~1` is `/`, `~0` is `~`).

use std::hash::{Hash, Hasher};

use serde_json::Value;

/// One parsed pointer: its tokens, decoded; `None` is the `*` wildcard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPattern {
    text: String,
    tokens: Vec<Option<String>>,
}

impl FieldPattern {
    /// Parses one pointer. The empty pointer (the whole document) is refused: ignoring all of
    /// it would make every response "unchanged".
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("the empty pointer is the whole document, which cannot be ignored".into());
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("{text:?} is not a JSON Pointer: it must start with `/`"));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            if raw == "*" {
                tokens.push(None);
                continue;
            }
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    token.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => token.push('~'),
                    Some('1') => token.push('/'),
                    _ => {
                        return Err(format!(
                            "{text:?} is not a JSON Pointer: `~` must be followed by 0 or 1 (`~0` is `~`, `~1` is `/`)"
                        ))
                    }
                }
            }
            tokens.push(Some(token));
        }
        Ok(FieldPattern {
            text: text.to_string(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Removes every value the pattern points at (none is fine).
    pub fn remove_from(&self, document: &mut Value) {
        remove(document, &self.tokens);
    }
}

fn remove(value: &mut Value, tokens: &[Option<String>]) {
    let Some((first, rest)) = tokens.split_first() else {
        return;
    };
    let last = rest.is_empty();
    match (value, first) {
        (Value::Object(map), Some(key)) => {
            if last {
                map.remove(key);
            } else if let Some(child) = map.get_mut(key) {
                remove(child, rest);
            }
        }
        (Value::Object(map), None) => {
            if last {
                map.clear();
            } else {
                map.values_mut().for_each(|child| remove(child, rest));
            }
        }
        (Value::Array(items), Some(index)) => {
            // RFC 6901: an index is `0` or digits without a leading zero.
            let valid =
                index == "0" || (!index.starts_with('0') && index.bytes().all(|b| b.is_ascii_digit()));
            match index.parse::<usize>() {
                Ok(at) if valid && at < items.len() => {
                    if last {
                        items.remove(at);
                    } else {
                        remove(&mut items[at], rest);
                    }
                }
                _ => {}
            }
        }
        (Value::Array(items), None) => {
            if last {
                items.clear();
            } else {
                items.iter_mut().for_each(|child| remove(child, rest));
            }
        }
        _ => {}
    }
}

/// The hash of a polled JSON state with `ignore` removed, over a canonical form (object keys
/// sorted, numbers as serde_json writes them), so key order and whitespace do not count as
/// changes either. `Err` when the body is not JSON: on a topic with `ignore_fields` that is
/// an upstream error.
pub fn hash_without(
    content_type: Option<&str>,
    body: &[u8],
    ignore: &[FieldPattern],
    hasher: &mut impl Hasher,
) -> Result<(), String> {
    let mut document: Value = serde_json::from_slice(body).map_err(|error| {
        format!("backend sent a body that is not JSON on a topic with ignore_fields: {error}")
    })?;
    for pattern in ignore {
        pattern.remove_from(&mut document);
    }
    content_type.hash(hasher);
    hash_canonical(&document, hasher);
    Ok(())
}

fn hash_canonical(value: &Value, hasher: &mut impl Hasher) {
    match value {
        Value::Null => 0u8.hash(hasher),
        Value::Bool(flag) => (1u8, flag).hash(hasher),
        Value::Number(number) => (2u8, number.to_string()).hash(hasher),
        Value::String(text) => (3u8, text).hash(hasher),
        Value::Array(items) => {
            (4u8, items.len()).hash(hasher);
            items.iter().for_each(|item| hash_canonical(item, hasher));
        }
        Value::Object(map) => {
            (5u8, map.len()).hash(hasher);
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by_key(|(key, _)| *key);
            for (key, child) in entries {
                key.hash(hasher);
                hash_canonical(child, hasher);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn removed(document: Value, pointers: &[&str]) -> Value {
        let mut document = document;
        for pointer in pointers {
            FieldPattern::parse(pointer)
                .expect("valid")
                .remove_from(&mut document);
        }
        document
    }

    #[test]
    fn parses_rfc_6901_and_refuses_what_is_not() {
        let pattern = FieldPattern::parse("/a~1b/c~0d/*/0").expect("valid");
        assert_eq!(
            pattern.tokens,
            vec![Some("a/b".into()), Some("c~d".into()), None, Some("0".into())]
        );
        for bad in ["", "updated_at", "/a~2", "/a~", "/~x/b"] {
            assert!(FieldPattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn removes_fields_array_items_and_wildcards() {
        let document = json!({
            "updated_at": 5,
            "meta": {"request_id": "r", "keep": 1},
            "items": [{"fetched_at": 1, "v": 1}, {"fetched_at": 2, "v": 2}],
            "list": [1, 2, 3]
        });
        let out = removed(
            document,
            &[
                "/updated_at",
                "/meta/request_id",
                "/items/*/fetched_at",
                "/list/1",
                "/absent/x",
            ],
        );
        assert_eq!(
            out,
            json!({"meta": {"keep": 1}, "items": [{"v": 1}, {"v": 2}], "list": [1, 3]})
        );
    }

    #[test]
    fn the_hash_ignores_the_fields_key_order_and_whitespace_but_not_the_rest() {
        let ignore = [FieldPattern::parse("/updated_at").expect("valid")];
        let hash = |body: &str| {
            let mut hasher = std::hash::DefaultHasher::new();
            hash_without(Some("application/json"), body.as_bytes(), &ignore, &mut hasher)
                .map(|()| hasher.finish())
        };
        let first = hash(r#"{"a":1,"b":[1,2],"updated_at":1}"#).expect("json");
        assert_eq!(hash(r#"{ "b": [1, 2], "updated_at": 2, "a": 1 }"#), Ok(first));
        assert_ne!(hash(r#"{"a":2,"b":[1,2],"updated_at":1}"#), Ok(first));
        assert!(hash("not json").is_err());
    }
}
