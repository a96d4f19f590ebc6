//! Path templates come from the config, paths from clients. The input is
//! `<template>\n<path>`: parsing either must not panic, and a match must bind one value per
//! variable, each non-empty and free of `/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidestream::config::template::PathTemplate;

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
});
