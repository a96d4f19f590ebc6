//! Random JSON documents and random edits of them, from a seeded generator (the JSON Patch
//! property tests in tests/state_deltas.rs).
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

pub fn random_key(rng: &mut StdRng) -> String {
    // Keys that need escaping in a JSON Pointer (`/`, `~`), the empty key, and digits.
    const KEYS: [&str; 10] = ["id", "name", "price", "rows", "a/b", "t~x", "", "*", "0", "meta"];
    if rng.random_bool(0.6) {
        KEYS[rng.random_range(0..KEYS.len())].to_string()
    } else {
        format!("k{}", rng.random_range(0..40))
    }
}

pub fn random_text(rng: &mut StdRng) -> String {
    const PIECES: [&str; 8] = ["a", "row ", "é", "\"", "\\", "\n", "日本", "~/"];
    (0..rng.random_range(0..12))
        .map(|_| PIECES[rng.random_range(0..PIECES.len())])
        .collect()
}

pub fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    let kinds = if depth == 0 { 5 } else { 7 };
    match rng.random_range(0..kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.random_bool(0.5)),
        2 => json!(rng.random_range(-1000i64..1000)),
        3 => json!(rng.random_range(-1000i64..1000) as f64 / 8.0),
        4 => Value::String(random_text(rng)),
        5 => Value::Object(
            (0..rng.random_range(0..6))
                .map(|_| (random_key(rng), random_value(rng, depth - 1)))
                .collect(),
        ),
        _ => Value::Array(
            (0..rng.random_range(0..6))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
    }
}

pub fn random_document(rng: &mut StdRng) -> Value {
    let mut document: serde_json::Map<String, Value> = (0..rng.random_range(4..10))
        .map(|_| (random_key(rng), random_value(rng, 3)))
        .collect();
    // Large enough that most small edits are worth a patch.
    document.insert(
        "padding".into(),
        Value::String("p".repeat(rng.random_range(0..400))),
    );
    Value::Object(document)
}

/// One random edit somewhere in `node`: set, insert, remove or replace.
pub fn edit(rng: &mut StdRng, node: &mut Value, depth: u32) {
    let descend = depth < 4 && rng.random_bool(0.6);
    match node {
        Value::Object(map) if descend && !map.is_empty() => {
            let key = map.keys().nth(rng.random_range(0..map.len())).unwrap().clone();
            return edit(rng, map.get_mut(&key).unwrap(), depth + 1);
        }
        Value::Array(items) if descend && !items.is_empty() => {
            let index = rng.random_range(0..items.len());
            return edit(rng, &mut items[index], depth + 1);
        }
        _ => {}
    }
    let action = rng.random_range(0..12);
    if action == 0 {
        // A whole subtree (or, at the top, the whole document) replaced.
        *node = if depth == 0 {
            random_document(rng)
        } else {
            random_value(rng, 2)
        };
        return;
    }
    match node {
        Value::Object(map) => {
            if action < 8 || map.is_empty() {
                map.insert(random_key(rng), random_value(rng, 2));
            } else {
                let key = map.keys().nth(rng.random_range(0..map.len())).unwrap().clone();
                map.remove(&key);
            }
        }
        Value::Array(items) => {
            let at = rng.random_range(0..=items.len());
            if action < 6 || items.is_empty() {
                items.insert(at, random_value(rng, 2));
            } else if action < 9 {
                items.remove(at.min(items.len() - 1));
            } else {
                let index = at.min(items.len() - 1);
                items[index] = random_value(rng, 2);
            }
        }
        other => *other = random_value(rng, 2),
    }
}
