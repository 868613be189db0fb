//! The SSE encoder: any event type, body, sender and id. For every type the server accepts,
//! a WHATWG-conformant parser (eventsource-stream, independent of our code) reads the frame,
//! cut at a fuzzer-chosen point, back as exactly one event carrying exactly the body.
#![no_main]

use std::convert::Infallible;

use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures_util::{FutureExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use sigrelay::names::EventType;
use sigrelay::sse::MessageTail;

fn parse_events(frame: &[u8], cut: usize) -> Vec<Event> {
    let cut = cut % (frame.len() + 1);
    let chunks: Vec<Result<Bytes, Infallible>> = vec![
        Ok(Bytes::copy_from_slice(&frame[..cut])),
        Ok(Bytes::copy_from_slice(&frame[cut..])),
    ];
    futures_util::stream::iter(chunks)
        .eventsource()
        .map(|e| e.expect("the frame parses"))
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("a ready stream completes at once")
}

fuzz_target!(|input: (&str, &str, Option<&str>, u64, u16)| {
    let (event_type, body, from, id, cut) = input;
    if EventType::parse(event_type).is_err() {
        return;
    }
    let frame = MessageTail::from_peer(event_type, body, from).with_id(id);
    let events = parse_events(&frame, cut as usize);
    assert_eq!(events.len(), 1, "{:?}", String::from_utf8_lossy(&frame));
    assert_eq!(events[0].event, event_type);
    assert_eq!(events[0].id, id.to_string());
    let data: serde_json::Value = serde_json::from_str(&events[0].data).expect("data is JSON");
    assert_eq!(data["message"].as_str(), Some(body));
    assert_eq!(data.get("from").and_then(|f| f.as_str()), from);
});
