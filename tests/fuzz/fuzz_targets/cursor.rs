//! Cursors come from clients (`Last-Event-ID`, `If-None-Match`, `?cursor=`): any text either
//! parses to a cursor that prints back to an equivalent token, or is rejected without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidestream::downstream::response::parse_cursor_token;
use sidestream::hub::Cursor;

fuzz_target!(|text: &str| {
    if let Ok(cursor) = text.parse::<Cursor>() {
        let printed = cursor.to_string();
        assert_eq!(printed.parse::<Cursor>(), Ok(cursor), "{text:?} → {printed:?}");
    }
    if let Some(cursor) = parse_cursor_token(text) {
        assert_eq!(parse_cursor_token(&cursor.to_string()), Some(cursor));
    }
});
