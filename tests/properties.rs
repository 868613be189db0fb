//! Property tests (proptest) for the two pure layers a hostile client reaches first: the
//! request-target parsers (`/channel/send/NAME/TYPE`, `/stream?...`) and the SSE encoder.
//! The same properties are fuzzed by `fuzz/` with cargo-fuzz; here they run in `cargo test`.
//!
//! The encoder is checked against an independent WHATWG-conformant parser (eventsource-stream),
//! fed the frame cut at arbitrary points, as TCP may deliver it.

use std::convert::Infallible;

use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures_util::{FutureExt, StreamExt};
use proptest::prelude::*;
use sigrelay::names::{ChannelName, EventType, PublishTarget, StreamQuery};
use sigrelay::sse::{foreign_frame, MessageTail};

/// Parses `frame` delivered in pieces cut at `cuts` (byte offsets, any order, may split a
/// UTF-8 character) and returns every event a browser would dispatch.
fn parse_events(frame: &[u8], cuts: &[usize]) -> Vec<Event> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (frame.len() + 1)).collect();
    points.push(0);
    points.push(frame.len());
    points.sort_unstable();
    points.dedup();
    let chunks: Vec<Result<Bytes, Infallible>> = points
        .windows(2)
        .map(|w| Ok(Bytes::copy_from_slice(&frame[w[0]..w[1]])))
        .collect();
    // Every chunk is ready, so the whole parse completes on the first poll.
    futures_util::stream::iter(chunks)
        .eventsource()
        .map(|e| e.expect("the frame parses"))
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("a ready stream completes at once")
}

/// Percent-encodes the characters at the positions `mask` selects (and always `%`, `/`, `?`).
fn percent_encode_some(text: &str, mask: &[bool]) -> String {
    let mut out = String::new();
    for (i, ch) in text.chars().enumerate() {
        let escape = mask.get(i).copied().unwrap_or(false) || matches!(ch, '%' | '/' | '?');
        if escape {
            let mut buf = [0u8; 4];
            for b in ch.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(ch);
        }
    }
    out
}

const CHANNEL: &str = "[A-Za-z0-9._~-]{1,128}";
const TYPE: &str = "[A-Za-z0-9_-]{1,64}";

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any valid name, escaped or not, reads back exactly.
    #[test]
    fn publish_targets_round_trip(
        channel in CHANNEL,
        event_type in TYPE,
        mask in proptest::collection::vec(any::<bool>(), 0..128),
    ) {
        let rest = format!(
            "{}/{}",
            percent_encode_some(&channel, &mask),
            percent_encode_some(&event_type, &mask)
        );
        // The relay's own types are refused by design (names::SERVER_EVENT_TYPES).
        prop_assume!(!sigrelay::names::SERVER_EVENT_TYPES.contains(&event_type.as_str()));
        let target = PublishTarget::parse(&rest).unwrap();
        prop_assert_eq!(target.channel.as_str(), channel.as_str());
        prop_assert_eq!(target.event_type.as_str(), event_type.as_str());
    }

    /// Whatever the path, parsing never panics, and what it accepts is made only of the
    /// characters that can be written into a frame verbatim.
    #[test]
    fn publish_targets_accept_only_safe_names(rest in any::<String>()) {
        if let Ok(target) = PublishTarget::parse(&rest) {
            let channel = target.channel.as_str();
            let event_type = target.event_type.as_str();
            prop_assert!(!channel.is_empty() && channel.len() <= 128);
            prop_assert!(channel.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b)));
            prop_assert!(!event_type.is_empty() && event_type.len() <= 64);
            prop_assert!(event_type.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)));
        }
    }

    /// A name holding any character outside the allowed set is refused, escaped or not.
    #[test]
    fn publish_targets_refuse_injection(
        prefix in "[a-z]{0,8}",
        bad in "[\r\n\0 :/é\u{2028}%+]",
    ) {
        let typed = format!("{prefix}{bad}");
        let rest = format!("room/{}", percent_encode_some(&typed, &[true; 16]));
        prop_assert!(PublishTarget::parse(&rest).is_err(), "{:?}", rest);
    }

    /// A stream query names its channel, escaped or not, among any other parameters.
    #[test]
    fn stream_queries_round_trip(
        channel in CHANNEL,
        mask in proptest::collection::vec(any::<bool>(), 0..128),
        noise in "x[a-z]{0,5}=[a-z0-9]{0,6}",
        last in proptest::option::of("[0-9]{1,8}"),
    ) {
        let mut query = format!("{noise}&channel={}", percent_encode_some(&channel, &mask));
        if let Some(last) = &last {
            query.push_str(&format!("&lastEventId={last}"));
        }
        let parsed = StreamQuery::parse(&query).unwrap();
        prop_assert_eq!(parsed.channel.as_str(), channel.as_str());
        prop_assert_eq!(parsed.last_event_id, last);
        prop_assert!(parsed.peer.is_none());
    }

    /// A peer id and its token come back exactly, escaped or not; a token never comes without
    /// a peer id, and a peer id never has the prefix of the relay's anonymous ids.
    #[test]
    fn stream_query_peers_and_tokens_round_trip(
        peer in "[A-Za-z0-9_-]{1,64}",
        token in "[A-Za-z0-9_-]{1,128}",
        mask in proptest::collection::vec(any::<bool>(), 0..128),
    ) {
        let query = format!(
            "channel=r&peer={}&token={}",
            percent_encode_some(&peer, &mask),
            percent_encode_some(&token, &mask)
        );
        match StreamQuery::parse(&query) {
            Ok(parsed) => {
                prop_assert!(!peer.starts_with("anon-"));
                prop_assert_eq!(parsed.peer.as_ref().map(|p| p.as_str()), Some(peer.as_str()));
                prop_assert_eq!(parsed.token.as_ref().map(|t| t.as_str()), Some(token.as_str()));
            }
            Err(_) => prop_assert!(peer.starts_with("anon-"), "{}", query),
        }
        let alone = format!("channel=r&token={token}");
        prop_assert!(StreamQuery::parse(&alone).is_err());
    }

    #[test]
    fn stream_queries_never_panic(query in any::<String>()) {
        if let Ok(parsed) = StreamQuery::parse(&query) {
            prop_assert!(ChannelName::parse(parsed.channel.as_str()).is_ok());
            prop_assert!(parsed.token.is_none() || parsed.peer.is_some());
            if let Some(peer) = &parsed.peer {
                prop_assert!(!peer.as_str().starts_with("anon-"));
            }
        }
    }

    /// The encoder's property: a WHATWG parser reads back exactly one event carrying exactly
    /// the published body (and sender, type and id), however the bytes are cut.
    #[test]
    fn a_published_body_reads_back_exactly(
        event_type in TYPE,
        body in any::<String>(),
        from in proptest::option::of("[A-Za-z0-9_-]{1,64}"),
        id in any::<u64>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        prop_assume!(EventType::parse(&event_type).is_ok());
        let frame = MessageTail::from_peer(&event_type, &body, from.as_deref()).with_id(id);
        let events = parse_events(&frame, &cuts);
        prop_assert_eq!(events.len(), 1, "{:?}", String::from_utf8_lossy(&frame));
        let event = &events[0];
        prop_assert_eq!(&event.event, &event_type);
        prop_assert_eq!(&event.id, &id.to_string());
        let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        prop_assert_eq!(data["message"].as_str(), Some(body.as_str()));
        prop_assert_eq!(data.get("from").and_then(|f| f.as_str()), from.as_deref());
        prop_assert_eq!(data.as_object().unwrap().len(), 1 + usize::from(from.is_some()));
    }

    /// Bodies with the characters that end SSE lines or fields, densely: still one event.
    #[test]
    fn line_breaks_in_bodies_never_split_the_event(
        body in "[\r\n\0:a ]{0,64}",
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let frame = MessageTail::new("request", &body).with_id(1);
        let events = parse_events(&frame, &cuts);
        prop_assert_eq!(events.len(), 1);
        let data: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
        prop_assert_eq!(data["message"].as_str(), Some(body.as_str()));
    }

    /// flask-sse's format (a message that came through Redis from a Flask app): one event, its
    /// data every line of the original, with line ends as the WHATWG parser reports them.
    #[test]
    fn foreign_frames_read_back_as_one_event(
        data in any::<String>(),
        event_type in proptest::option::of(TYPE),
        id in proptest::option::of(any::<u64>()),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let frame = foreign_frame(id, event_type.as_deref(), &data, None);
        let events = parse_events(&frame, &cuts);
        prop_assert_eq!(events.len(), 1);
        let normalized = data.replace("\r\n", "\n").replace('\r', "\n");
        prop_assert_eq!(&events[0].data, &normalized);
        prop_assert_eq!(&events[0].id, &id.map(|i| i.to_string()).unwrap_or_default());
        if let Some(t) = event_type {
            prop_assert_eq!(&events[0].event, &t);
        }
    }
}
