//! The config loader on arbitrary text: it either accepts the file or lists errors, each with
//! a position inside the file; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidestream::config;

fuzz_target!(|text: &str| {
    if let Err(errors) = config::parse("fuzz.toml", text) {
        assert!(!errors.0.is_empty(), "an error result with no errors");
        let lines = text.lines().count().max(1);
        for error in &errors.0 {
            let rendered = error.to_string();
            assert!(rendered.starts_with("fuzz.toml:"), "{rendered}");
            assert!(error.line <= lines + 1, "line {} past the end ({lines}): {rendered}", error.line);
        }
    }
});
