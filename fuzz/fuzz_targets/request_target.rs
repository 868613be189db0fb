//! Request-target parsing: any bytes as the path after `/channel/send/` and as a `/stream`
//! query. Nothing may panic; whatever is accepted is made only of characters that can be
//! written into an SSE frame verbatim, and reads back the same when parsed again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigrelay::names::{ChannelName, EventType, PublishTarget, StreamQuery};

fn safe_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
}

fn safe_type(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

fuzz_target!(|data: &[u8]| {
    // hyper hands us the target as text; anything else never reaches the parsers.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(target) = PublishTarget::parse(text) {
        assert!(safe_channel(target.channel.as_str()), "{target:?}");
        assert!(safe_type(target.event_type.as_str()), "{target:?}");
        let again = format!("{}/{}", target.channel, target.event_type.as_str());
        assert_eq!(PublishTarget::parse(&again).as_ref(), Ok(&target));
    }
    if let Ok(query) = StreamQuery::parse(text) {
        assert!(safe_channel(query.channel.as_str()), "{query:?}");
        assert!(ChannelName::parse(query.channel.as_str()).is_ok());
        if let Some(peer) = &query.peer {
            assert!(safe_type(peer.as_str()), "{query:?}");
            // The relay's anonymous ids cannot be asked for.
            assert!(!peer.as_str().starts_with("anon-"), "{query:?}");
        }
        // A token is base64url within its limit, and only ever comes with a peer id.
        if let Some(token) = &query.token {
            assert!(query.peer.is_some(), "{query:?}");
            assert!(token.as_str().len() <= 128, "{query:?}");
            assert!(safe_type(token.as_str()), "{query:?}");
        }
    }
    let _ = EventType::parse(text);
});
