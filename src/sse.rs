//! Server-Sent Events encoding: turns published messages, presence, gaps and keep-alives into
//! the exact bytes a subscriber reads. Pure functions, no I/O and no hyper, so the framing can
//! be tested (and fuzzed) against a WHATWG parser without sockets.
//!
//! A published body becomes `data: {"message": "<body as a JSON string>"}`, what flask-sse's
//! `sse.publish({"message": body}, type=TYPE)` sent, so the seed's
//! `JSON.parse(JSON.parse(e.data).message)` keeps working. JSON escaping turns every CR, LF and
//! NUL into `\r`, `\n`, `\u0000`, so a body can never end the `data:` line or start a field;
//! event types are validated by [`crate::names::EventType`] for the same reason.

use bytes::{BufMut, Bytes, BytesMut};

use crate::names::{GAP, PRESENCE, WELCOME};

/// Sent every `--keepalive` seconds on an idle stream: a comment, ignored by every client,
/// which keeps proxies and NAT tables from timing the connection out.
pub const KEEPALIVE: Bytes = Bytes::from_static(b": keep-alive\n\n");

/// The first bytes of every stream: a comment, so the response head and a body chunk go out at
/// once and `EventSource.onopen` fires before any message, then the reconnection delay.
pub fn preamble(retry_ms: u64) -> Bytes {
    Bytes::from(format!(": sigrelay\nretry: {retry_ms}\n\n"))
}

/// The largest message tail a body of at most `max_body` bytes may encode to: twice the body,
/// plus room for the type, the sender and the fixed text. JSON escaping doubles a quote or a
/// backslash but makes six bytes of a control character (`\u0001`), so without this a 64 KiB
/// body could become a 384 KiB frame held in history and written to every subscriber; signaling
/// text (SDP, JSON) grows by a few percent.
pub fn max_tail_len(max_body: usize) -> usize {
    2 * max_body + 256
}

/// The part of a message frame that does not depend on its id, encoded once per publish
/// (outside any lock): `event: TYPE\ndata: {"message": "..."}\n\n`.
pub struct MessageTail(Vec<u8>);

impl MessageTail {
    /// `event_type` must already be validated (no CR/LF/colon); `body` may be anything.
    pub fn new(event_type: &str, body: &str) -> Self {
        Self::from_peer(event_type, body, None)
    }

    /// A message stamped with the verified sender: `{"message": "...", "from": "PEER"}`.
    /// `message` stays first so clients that read only it are unaffected.
    pub fn from_peer(event_type: &str, body: &str, from: Option<&str>) -> Self {
        // Escaping grows a body by a few bytes in the common case; reserve for that.
        let mut buf = Vec::with_capacity(event_type.len() + body.len() + body.len() / 8 + 40);
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(event_type.as_bytes());
        buf.extend_from_slice(b"\ndata: {\"message\": ");
        serde_json::to_writer(&mut buf, body).expect("writing JSON to a Vec cannot fail");
        if let Some(from) = from {
            buf.extend_from_slice(b", \"from\": ");
            serde_json::to_writer(&mut buf, from).expect("writing JSON to a Vec cannot fail");
        }
        buf.extend_from_slice(b"}\n\n");
        MessageTail(buf)
    }

    /// The encoded tail, as stored in history and sent through Redis.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The event type and the `data:` JSON, for re-wrapping in another format (flask-sse's).
    pub fn parts(&self) -> (&str, &str) {
        // Built by `new` as `event: T\ndata: JSON\n\n` from UTF-8 text, so this cannot fail.
        let text = std::str::from_utf8(&self.0).unwrap_or_default();
        let text = text.strip_prefix("event: ").unwrap_or(text);
        let text = text.strip_suffix("\n\n").unwrap_or(text);
        text.split_once("\ndata: ").unwrap_or((text, "null"))
    }

    /// The whole frame, `id: N\n` first: one `Bytes` shared by every subscriber.
    pub fn with_id(&self, id: u64) -> Bytes {
        let mut frame = BytesMut::with_capacity(self.0.len() + 26);
        frame.put_slice(b"id: ");
        put_decimal(&mut frame, id);
        frame.put_u8(b'\n');
        frame.put_slice(&self.0);
        frame.freeze()
    }
}

/// Writes `n` in decimal: digits straight into the buffer, without the formatting machinery
/// (this runs for every publish, twice).
pub fn put_decimal(out: &mut impl BufMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[start..]);
}

/// A frame the relay itself emits (`presence`, `gap`, `welcome`: the types in
/// [`crate::names::SERVER_EVENT_TYPES`], which no publish may use). `data_json` is one line of JSON built by
/// serde_json, so it holds no raw newline.
pub fn event_frame(id: Option<u64>, event_type: &str, data_json: &str) -> Bytes {
    debug_assert!(!data_json.contains(['\n', '\r']));
    let id_line = id.map(|id| format!("id: {id}\n")).unwrap_or_default();
    Bytes::from(format!(
        "{id_line}event: {event_type}\ndata: {data_json}\n\n"
    ))
}

/// A frame for a message that arrived in flask-sse's format: its `data` text (every line
/// becomes a `data:` line, as flask-sse writes it), optional type, numeric id and retry.
pub fn foreign_frame(
    id: Option<u64>,
    event_type: Option<&str>,
    data: &str,
    retry: Option<u64>,
) -> Bytes {
    let mut frame = String::with_capacity(data.len() + 64);
    if let Some(id) = id {
        frame.push_str(&format!("id: {id}\n"));
    }
    if let Some(event_type) = event_type {
        frame.push_str(&format!("event: {event_type}\n"));
    }
    // Python's str.splitlines: CR LF, LF and CR all end a line; CR and LF never reach a field.
    for line in data.split("\r\n").flat_map(|l| l.split(['\n', '\r'])) {
        frame.push_str("data: ");
        frame.push_str(line);
        frame.push('\n');
    }
    if let Some(retry) = retry {
        frame.push_str(&format!("retry: {retry}\n"));
    }
    frame.push('\n');
    Bytes::from(frame)
}

/// JSON as Python's `json.dumps` writes it by default (`", "` and `": "` separators, every
/// non-ASCII character escaped), which is what flask-sse puts after `data:`.
pub fn python_json(value: &serde_json::Value) -> String {
    fn write(value: &serde_json::Value, out: &mut String) {
        use serde_json::Value;
        match value {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::String(s) => write_str(s, out),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write(item, out);
                }
                out.push(']');
            }
            Value::Object(map) => {
                out.push('{');
                for (i, (key, item)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_str(key, out);
                    out.push_str(": ");
                    write(item, out);
                }
                out.push('}');
            }
        }
    }
    fn write_str(s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                ' '..='~' => out.push(c),
                _ => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
            }
        }
        out.push('"');
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// `event: presence` with `{"subscribers": N, "peers": M, "present": [ids]}`: who is in the
/// room now. `present` lists the peer ids holding a place (sorted, so every instance and every
/// subscriber sees the same list); `peers` is its length, kept for older pages.
pub fn presence_frame<S: AsRef<str>>(subscribers: usize, present: &[S]) -> Bytes {
    let mut data = format!(
        r#"{{"subscribers": {subscribers}, "peers": {}, "present": ["#,
        present.len()
    );
    for (i, peer) in present.iter().enumerate() {
        if i > 0 {
            data.push_str(", ");
        }
        // Peer ids are `[A-Za-z0-9_-]`: nothing to escape, but the encoder says so itself.
        data.push_str(&serde_json::Value::from(peer.as_ref()).to_string());
    }
    data.push_str("]}");
    event_frame(None, PRESENCE, &data)
}

/// `event: welcome` with `{"peer": ID, "token": T}`, the first event of every stream: who this
/// stream is, and the token its publishes present to be stamped `from` that peer. No id, so it
/// never moves the client's `Last-Event-ID`.
pub fn welcome_frame(peer: &str, token: &str) -> Bytes {
    let data = format!(
        r#"{{"peer": {}, "token": {}}}"#,
        serde_json::Value::from(peer),
        serde_json::Value::from(token)
    );
    event_frame(None, WELCOME, &data)
}

/// `event: gap`: the client asked to resume after `last_event_id` but events after it are no
/// longer kept, so it must restart whatever it was doing (WebRTC: renegotiate). The frame carries
/// `id: resume_from` so the client's next reconnect does not report the same gap again.
pub fn gap_frame(last_event_id: &str, resume_from: u64) -> Bytes {
    let data = serde_json::json!({
        "lastEventId": last_event_id,
        "resumeFrom": resume_from.to_string(),
    });
    event_frame(Some(resume_from), GAP, &data.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;

    /// Parses bytes with a WHATWG-conformant parser, fed one byte at a time to catch framing
    /// that only works when a frame arrives whole.
    async fn parse(bytes: &[u8]) -> Vec<eventsource_stream::Event> {
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = bytes
            .iter()
            .map(|b| Ok(Bytes::copy_from_slice(&[*b])))
            .collect();
        futures_util::stream::iter(chunks)
            .eventsource()
            .map(|e| e.expect("parse"))
            .collect()
            .await
    }

    fn message_of(data: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        v["message"].as_str().unwrap().to_owned()
    }

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 99, 1_000_000, 1_796_179_656_403_971, u64::MAX] {
            let mut out = Vec::new();
            put_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn exact_framing() {
        let frame = MessageTail::new("request", "{\"sdp\":1}").with_id(7);
        assert_eq!(
            &frame[..],
            b"id: 7\nevent: request\ndata: {\"message\": \"{\\\"sdp\\\":1}\"}\n\n"
        );
    }

    #[tokio::test]
    async fn hostile_bodies_read_back_exactly() {
        let bodies = [
            "",
            "plain",
            "line1\nline2\r\nline3\rend",
            "\n\n\n",
            "data: injected\n\nevent: x\nid: 99\n\n",
            "quotes \" and \\ backslash",
            "nul \u{0} and bell \u{7}",
            "emoji 😀 and \u{2028} separator \u{feff}",
            "\r",
        ];
        for body in bodies {
            let frame = MessageTail::new("ice2", body).with_id(42);
            let events = parse(&frame).await;
            assert_eq!(events.len(), 1, "{body:?}");
            assert_eq!(events[0].event, "ice2");
            assert_eq!(events[0].id, "42");
            assert_eq!(message_of(&events[0].data), body);
        }
    }

    #[tokio::test]
    async fn keepalive_and_preamble_dispatch_nothing() {
        let mut stream = preamble(2000).to_vec();
        stream.extend_from_slice(&KEEPALIVE);
        stream.extend_from_slice(&MessageTail::new("t", "x").with_id(1));
        stream.extend_from_slice(&KEEPALIVE);
        let events = parse(&stream).await;
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].id.as_str(), message_of(&events[0].data).as_str()),
            ("1", "x")
        );
        // `retry` is a stream setting, not an event: check it is its own well-formed field.
        assert!(preamble(2000).starts_with(b": sigrelay\nretry: 2000\n\n"));
    }

    #[tokio::test]
    async fn presence_and_gap() {
        let mut stream = presence_frame(2, &["alice"]).to_vec();
        stream.extend_from_slice(&gap_frame("5", 9));
        let events = parse(&stream).await;
        assert_eq!(events[0].event, "presence");
        assert_eq!(
            events[0].data,
            r#"{"subscribers": 2, "peers": 1, "present": ["alice"]}"#
        );
        assert_eq!(events[1].event, "gap");
        assert_eq!(events[1].id, "9");
        assert_eq!(events[1].data, r#"{"lastEventId":"5","resumeFrom":"9"}"#);
    }
}
