//! Validated names from the request target: channel (room) names, event types and peer ids,
//! plus the strict percent-decoding they go through.
//!
//! Validation lives here, apart from HTTP, because these rules are what keeps a client from
//! injecting SSE fields: a name that passes can be written into a frame verbatim.

use std::fmt;
use std::sync::Arc;

/// Longest channel name we accept (characters, all ASCII).
pub const MAX_CHANNEL_LEN: usize = 128;
/// Longest event type we accept.
pub const MAX_TYPE_LEN: usize = 64;
/// Longest peer id we accept.
pub const MAX_PEER_LEN: usize = 64;
/// The prefix of the ids the relay gives streams opened without `peer=` (`peers::random_peer`);
/// a stream may not choose such an id, so nobody but that one stream ever holds it.
pub const ANONYMOUS_PREFIX: &str = "anon-";
/// Longest `token=` we accept (ours are 64 characters; the slack is for a future format).
pub const MAX_TOKEN_LEN: usize = 128;

/// The event types the relay itself sends (`sse.rs` builds their frames with these names). A
/// client's page trusts them (a `gap` makes the call page renegotiate, `welcome` carries its
/// identity), so no publish may carry one: [`EventType::parse`] refuses every name listed here,
/// on every path a type comes in by (both publish paths, and flask-sse messages from Redis).
/// A new server event goes in this list.
pub const WELCOME: &str = "welcome";
pub const PRESENCE: &str = "presence";
pub const GAP: &str = "gap";
pub const SERVER_EVENT_TYPES: [&str; 3] = [WELCOME, PRESENCE, GAP];

/// Why a name was refused; the text is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    BadPercentEncoding,
    Empty(&'static str),
    TooLong(&'static str, usize),
    BadCharacter(&'static str, &'static str),
    /// The target does not have the expected shape; the text says which.
    Malformed(&'static str),
    /// An event type only the relay itself may send ([`SERVER_EVENT_TYPES`]).
    ReservedType(&'static str),
    /// A peer id a stream may not choose: the relay gives ids with this prefix to streams
    /// opened without one.
    ReservedPeer(&'static str),
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::BadPercentEncoding => f.write_str("invalid percent-encoding"),
            NameError::Empty(what) => write!(f, "{what} must not be empty"),
            NameError::TooLong(what, max) => write!(f, "{what} is longer than {max} characters"),
            NameError::BadCharacter(what, allowed) => {
                write!(f, "{what} may only contain {allowed}")
            }
            NameError::Malformed(expected) => write!(f, "expected {expected}"),
            NameError::ReservedType(name) => {
                write!(
                    f,
                    "event type {name} is reserved for the relay's own events"
                )
            }
            NameError::ReservedPeer(prefix) => write!(
                f,
                "peer ids starting with {prefix} are given by the relay to streams without one"
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// A channel (room) name: 1–128 characters of `[A-Za-z0-9._~-]` (URL-unreserved, so it never
/// needs escaping in a link). Cheap to clone: the hub keys its map by it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check(
            raw,
            "channel name",
            MAX_CHANNEL_LEN,
            "A-Z a-z 0-9 . _ ~ -",
            |b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'),
        )?;
        Ok(ChannelName(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// An SSE event type a client may publish: 1–64 characters of `[A-Za-z0-9_-]`, and none of
/// the relay's own ([`SERVER_EVENT_TYPES`]; compared exactly, as EventSource compares types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventType(Box<str>);

impl EventType {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check(raw, "event type", MAX_TYPE_LEN, "A-Z a-z 0-9 _ -", |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')
        })?;
        if let Some(reserved) = SERVER_EVENT_TYPES.iter().find(|t| **t == raw) {
            return Err(NameError::ReservedType(reserved));
        }
        Ok(EventType(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client-chosen peer id (`peer=` on a stream): 1–64 characters of `[A-Za-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerId(Box<str>);

impl PeerId {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check(raw, "peer id", MAX_PEER_LEN, "A-Z a-z 0-9 _ -", |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')
        })?;
        Ok(PeerId(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A peer token presented on a stream (`token=`, from an earlier `welcome` of the same peer
/// id): 1–128 characters of base64url. Only its shape is checked here; whether it proves
/// anything is for `peers` and the hub to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerToken(Box<str>);

impl PeerToken {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check(raw, "token", MAX_TOKEN_LEN, "A-Z a-z 0-9 _ -", |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')
        })?;
        Ok(PeerToken(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check(
    raw: &str,
    what: &'static str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(u8) -> bool,
) -> Result<(), NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty(what));
    }
    if raw.len() > max {
        return Err(NameError::TooLong(what, max));
    }
    if !raw.bytes().all(ok) {
        return Err(NameError::BadCharacter(what, allowed));
    }
    Ok(())
}

/// Decodes `%XX` escapes (and, for query strings, `+` as a space). Unlike lenient decoders it
/// refuses a `%` not followed by two hex digits and a result that is not UTF-8, so that a
/// malformed target is a clear 400 rather than a silently different name.
pub fn percent_decode(raw: &str, plus_is_space: bool) -> Result<String, NameError> {
    if !raw
        .bytes()
        .any(|b| b == b'%' || (plus_is_space && b == b'+'))
    {
        return Ok(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or(NameError::BadPercentEncoding)?;
                let hi = hex_value(hex[0]).ok_or(NameError::BadPercentEncoding)?;
                let lo = hex_value(hex[1]).ok_or(NameError::BadPercentEncoding)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| NameError::BadPercentEncoding)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Iterates `key=value` pairs of a query string, decoded. Pairs that fail to decode are
/// reported as errors so a caller can refuse them.
pub fn query_pairs(query: &str) -> impl Iterator<Item = Result<(String, String), NameError>> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        Ok((percent_decode(k, true)?, percent_decode(v, true)?))
    })
}

/// The decoded value of `key` in a query string (the last one if repeated), refusing any pair
/// that fails to decode.
pub fn query_value(query: &str, key: &str) -> Result<Option<String>, NameError> {
    let mut found = None;
    for pair in query_pairs(query) {
        let (k, v) = pair?;
        if k == key {
            found = Some(v);
        }
    }
    Ok(found)
}

/// The target of a publish: `NAME/TYPE` after `/channel/send/`, each segment percent-decoded
/// and validated. Pure, so it can be fuzzed without a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishTarget {
    pub channel: ChannelName,
    pub event_type: EventType,
}

impl PublishTarget {
    /// `rest` is the path after `/channel/send/`.
    pub fn parse(rest: &str) -> Result<Self, NameError> {
        let (raw_channel, raw_type) = rest
            .split_once('/')
            .filter(|(_, t)| !t.contains('/'))
            .ok_or(NameError::Malformed("/channel/send/NAME/TYPE"))?;
        Ok(PublishTarget {
            channel: ChannelName::parse(&percent_decode(raw_channel, false)?)?,
            event_type: EventType::parse(&percent_decode(raw_type, false)?)?,
        })
    }
}

/// flask-sse's channel when a stream names none.
pub const DEFAULT_CHANNEL: &str = "sse";

/// What a `GET /stream?...` query asks for. Unknown parameters (cache-busters) are ignored;
/// a pair that fails to decode, or a bad name, is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamQuery {
    pub channel: ChannelName,
    /// `peer=`: never one starting with [`ANONYMOUS_PREFIX`].
    pub peer: Option<PeerId>,
    /// `token=`: the proof that this stream is `peer` (only together with `peer=`).
    pub token: Option<PeerToken>,
    /// `lastEventId=`, for a first connect that resumes; the header wins over it.
    pub last_event_id: Option<String>,
}

impl StreamQuery {
    pub fn parse(query: &str) -> Result<Self, NameError> {
        let mut channel = None;
        let mut peer = None;
        let mut token = None;
        let mut last_event_id = None;
        for pair in query_pairs(query) {
            let (key, value) = pair?;
            match key.as_str() {
                "channel" => channel = Some(value),
                "peer" => peer = Some(PeerId::parse(&value)?),
                "token" => token = Some(PeerToken::parse(&value)?),
                "lastEventId" => last_event_id = Some(value),
                _ => {}
            }
        }
        if peer
            .as_ref()
            .is_some_and(|p| p.as_str().starts_with(ANONYMOUS_PREFIX))
        {
            return Err(NameError::ReservedPeer(ANONYMOUS_PREFIX));
        }
        if token.is_some() && peer.is_none() {
            return Err(NameError::Malformed("peer= with token="));
        }
        // flask-sse falls back to the channel "sse" when none (or an empty one) is given.
        let channel = match channel.as_deref() {
            None | Some("") => ChannelName::parse(DEFAULT_CHANNEL)?,
            Some(name) => ChannelName::parse(name)?,
        };
        Ok(StreamQuery {
            channel,
            peer,
            token,
            last_event_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(ChannelName::parse("room-1.a_b~c").is_ok());
        assert!(ChannelName::parse(&"a".repeat(128)).is_ok());
        assert_eq!(
            ChannelName::parse(&"a".repeat(129)),
            Err(NameError::TooLong("channel name", 128))
        );
        for bad in ["", "room ", "a/b", "..\u{0}", "é", "a\nb", "a%b"] {
            assert!(ChannelName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn event_types() {
        assert!(EventType::parse("ice1").is_ok());
        for bad in ["", "a.b", "a\nb", "a:b", "x y", &"t".repeat(65)] {
            assert!(EventType::parse(bad).is_err(), "{bad:?}");
        }
        for reserved in SERVER_EVENT_TYPES {
            assert_eq!(
                EventType::parse(reserved),
                Err(NameError::ReservedType(reserved))
            );
            let target = PublishTarget::parse(&format!("room/{reserved}"));
            assert_eq!(target, Err(NameError::ReservedType(reserved)));
        }
        // EventSource compares types exactly: other spellings are ordinary types.
        assert!(EventType::parse("Gap").is_ok());
        assert!(EventType::parse("gaps").is_ok());
    }

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode("a%41b", false).unwrap(), "aAb");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert_eq!(percent_decode("a+b", true).unwrap(), "a b");
        assert_eq!(percent_decode("..%2F", false).unwrap(), "../");
        for bad in ["%", "%4", "%zz", "%C3%28", "a%"] {
            assert_eq!(
                percent_decode(bad, false),
                Err(NameError::BadPercentEncoding),
                "{bad}"
            );
        }
    }

    #[test]
    fn stream_query_tokens() {
        let q = StreamQuery::parse("channel=r&peer=alice&token=AB_c-9").unwrap();
        assert_eq!(q.peer.unwrap().as_str(), "alice");
        assert_eq!(q.token.unwrap().as_str(), "AB_c-9");
        assert!(StreamQuery::parse(&format!("peer=a&token={}", "t".repeat(128))).is_ok());
        for bad in [
            "channel=r&token=abc",
            "peer=a&token=",
            "peer=a&token=a.b",
            "peer=a&token=a%2Bb",
            "peer=a&token=a+b",
        ] {
            assert!(StreamQuery::parse(bad).is_err(), "{bad}");
        }
        assert!(StreamQuery::parse(&format!("peer=a&token={}", "t".repeat(129))).is_err());
        assert_eq!(
            StreamQuery::parse("channel=r&peer=anon-x"),
            Err(NameError::ReservedPeer("anon-"))
        );
    }

    #[test]
    fn query_pairs_decode() {
        let pairs: Vec<_> = query_pairs("channel=a%2Db&&peer=x&flag")
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            pairs,
            vec![
                ("channel".into(), "a-b".into()),
                ("peer".into(), "x".into()),
                ("flag".into(), "".into())
            ]
        );
    }

    /// The pages check room names before asking the server (`ROOM_PATTERN` in
    /// assets/room.js): their rule must be this one, byte for byte and in length.
    #[test]
    fn the_pages_room_pattern_is_the_channel_rule() {
        let js = include_str!("../assets/room.js");
        let line = js
            .lines()
            .find(|l| l.starts_with("export const ROOM_PATTERN = /^["))
            .expect("ROOM_PATTERN in assets/room.js");
        let (class, rest) = line["export const ROOM_PATTERN = /^[".len()..]
            .split_once("]{")
            .expect("a character class and a length");
        let class = class.replace("A-Z", "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
        let class = class.replace("a-z", "abcdefghijklmnopqrstuvwxyz");
        let class = class.replace("0-9", "0123456789");
        for byte in 0u8..=127 {
            let name = (byte as char).to_string();
            assert_eq!(
                class.contains(byte as char),
                ChannelName::parse(&name).is_ok(),
                "{byte:#x}"
            );
        }
        assert_eq!(rest, "1,128}$/;");
        assert!(ChannelName::parse(&"a".repeat(128)).is_ok());
        assert!(ChannelName::parse(&"a".repeat(129)).is_err());
    }
}
