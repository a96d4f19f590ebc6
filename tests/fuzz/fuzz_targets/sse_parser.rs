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

    // Without a size limit (the default) a parser never fails.
    let whole = EventStreamParser::resuming(None).feed(body).unwrap();
    let mut split = EventStreamParser::resuming(None);
    let mut pieces = split.feed(&body[..cut]).unwrap();
    pieces.extend(split.feed(&body[cut..]).unwrap());
    assert_eq!(whole, pieces, "SSE events depend on where the body was cut");

    let whole = NdjsonParser::default().feed(body).unwrap();
    let mut split = NdjsonParser::default();
    let mut pieces = split.feed(&body[..cut]).unwrap();
    pieces.extend(split.feed(&body[cut..]).unwrap());
    assert_eq!(whole, pieces, "NDJSON lines depend on where the body was cut");

    // With a small limit, no input may panic, and an input well under it parses as without
    // one. The limit counts decoded text, and lossy UTF-8 decoding turns one invalid byte into
    // a 3-byte U+FFFD, so "under it" means a third of the limit in input bytes.
    let limit = 64;
    let mut bounded = EventStreamParser::resuming(None).with_max_bytes(limit);
    if body.len() * 3 <= limit {
        assert_eq!(bounded.feed(body).unwrap(), whole_events(body));
    } else {
        let _ = bounded.feed(body);
    }
    let _ = NdjsonParser::default().with_max_bytes(limit).feed(body);
});

fn whole_events(body: &[u8]) -> Vec<sidestream::upstream::event_stream::StreamEvent> {
    EventStreamParser::resuming(None).feed(body).unwrap()
}
