//! The backend's `text/event-stream` and NDJSON bodies, cut into chunks at fuzzer-chosen points:
//! no input may panic, and the events must not depend on where the chunks were cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidestream::upstream::event_stream::{EventStreamParser, NdjsonParser};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(body.len());

    let whole = EventStreamParser::resuming(None).feed(body);
    let mut split = EventStreamParser::resuming(None);
    let mut pieces = split.feed(&body[..cut]);
    pieces.extend(split.feed(&body[cut..]));
    assert_eq!(whole, pieces, "SSE events depend on where the body was cut");

    let whole = NdjsonParser::default().feed(body);
    let mut split = NdjsonParser::default();
    let mut pieces = split.feed(&body[..cut]);
    pieces.extend(split.feed(&body[cut..]));
    assert_eq!(whole, pieces, "NDJSON lines depend on where the body was cut");
});
