//! What a plain-http connection is, from its first bytes: read (not peeked) into the buffer
//! the rest of the fast path continues with, so waiting for more costs nothing but readiness.

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What the first bytes say.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// `GET /stream?...` or `GET /stream HTTP/...`.
    Stream,
    /// `POST /channel/send/...`.
    Publish,
    /// Anything else: hyper's. `maybe_h2`: the bytes could begin HTTP/2's connection preface
    /// (h2c with prior knowledge); otherwise it is HTTP/1.
    Other { maybe_h2: bool },
}

const STREAM_PREFIX: &[u8] = b"GET /stream";
const PUBLISH_PREFIX: &[u8] = b"POST /channel/send/";
/// HTTP/2's client connection preface (RFC 9113 3.4), as far as `classify` looks.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes say what the connection is, by `deadline`; `None` if it closed,
/// failed or stayed silent. Waits on readiness only: a client that sent half a request line
/// and stopped costs no CPU until it sends more or the deadline passes.
pub async fn read(stream: &TcpStream, deadline: Instant) -> Option<(Kind, BytesMut)> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Ok(Ok(())) => {}
            _ => return None,
        }
        match stream.try_read_buf(&mut buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
        if let Some(kind) = classify(&buf) {
            return Some((kind, buf));
        }
    }
}

/// What a connection starting with `seen` is; `None` while `seen` is still a prefix of
/// `GET /stream` + one byte or of `POST /channel/send/`.
fn classify(seen: &[u8]) -> Option<Kind> {
    if seen.len() > STREAM_PREFIX.len() && seen.starts_with(STREAM_PREFIX) {
        let stream_target = matches!(seen[STREAM_PREFIX.len()], b'?' | b' ');
        return Some(if stream_target {
            Kind::Stream
        } else {
            Kind::Other { maybe_h2: false }
        });
    }
    if seen.starts_with(PUBLISH_PREFIX) {
        return Some(Kind::Publish);
    }
    let undecided = (seen.len() <= STREAM_PREFIX.len() && STREAM_PREFIX.starts_with(seen))
        || (seen.len() < PUBLISH_PREFIX.len() && PUBLISH_PREFIX.starts_with(seen));
    if undecided {
        return None;
    }
    Some(Kind::Other {
        maybe_h2: H2_PREFACE.starts_with(seen) || seen.starts_with(H2_PREFACE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_decide() {
        assert_eq!(classify(b"GET /stream?channel=a"), Some(Kind::Stream));
        assert_eq!(classify(b"GET /stream HTTP/1.1"), Some(Kind::Stream));
        assert_eq!(
            classify(b"GET /streams"),
            Some(Kind::Other { maybe_h2: false })
        );
        assert_eq!(classify(b"GET /strea"), None);
        assert_eq!(classify(b"POST /chan"), None);
        assert_eq!(classify(b"POST /channel/send/a/b"), Some(Kind::Publish));
        assert_eq!(classify(b"PRI * HT"), Some(Kind::Other { maybe_h2: true }));
        assert_eq!(
            classify(b"GET / HTTP/1.1"),
            Some(Kind::Other { maybe_h2: false })
        );
    }
}
