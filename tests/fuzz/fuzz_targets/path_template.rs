//! Path templates come from the config, paths from clients. The input is
//! `<template>\n<path>`: parsing either must not panic, and a match must bind one value per
//! variable, each non-empty and free of `/`. A canonical path's values, rendered into a
//! backend URL, stay inside their path segment or query value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidestream::config::template::{PathTemplate, UrlTemplate};
use sidestream::downstream::canonical::CanonicalPath;

fuzz_target!(|text: &str| {
    let (template, path) = text.split_once('\n').unwrap_or((text, text));
    let Ok(template) = PathTemplate::parse(template) else {
        return;
    };
    if let Some(values) = template.matches(path) {
        assert_eq!(values.len(), template.variables().len());
        for value in values {
            assert!(!value.is_empty() && !value.contains('/'), "bad binding {value:?}");
        }
    }
    let _ = template.overlaps(&template);
    let Ok(canonical) = CanonicalPath::parse(path) else {
        return;
    };
    let Some(values) = template.matches_segments(canonical.segments()) else {
        return;
    };
    assert_eq!(values.len(), template.variables().len());
    // `/x/{a}/{b}?a={a}&b={b}`: as many segments and parameters as variables, whatever the values.
    let names = template.variables();
    let mut raw = String::from("/x");
    for name in names {
        raw.push_str(&format!("/{{{name}}}"));
    }
    raw.push('?');
    let query: Vec<String> = names.iter().map(|name| format!("{name}={{{name}}}")).collect();
    raw.push_str(&query.join("&"));
    let Ok((url, _)) = UrlTemplate::parse(&raw, names) else {
        return;
    };
    let rendered = url.render(&values);
    let (path_part, query_part) = rendered.split_once('?').expect("the template's `?` stays");
    let segments: Vec<&str> = path_part.split('/').skip(1).collect();
    assert_eq!(segments.len(), names.len() + 1, "{rendered}");
    assert!(segments.iter().all(|s| *s != "." && *s != ".."), "{rendered}");
    assert!(!query_part.contains('#'), "{rendered}");
    if !names.is_empty() {
        assert_eq!(query_part.split('&').count(), names.len(), "{rendered}");
        assert!(query_part.split('&').all(|pair| pair.matches('=').count() == 1), "{rendered}");
    }
});
