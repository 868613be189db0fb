//! Plain-http `GET /stream` served on the socket directly, outside hyper.
//!
//! Why: idle subscribers are most of what a relay holds (a classroom's browsers sit on their
//! streams for an hour), and through hyper each keeps a connection task with its read and
//! write buffers, about 30 KiB measured. Here a stream is one small task: the request head is
//! read into a buffer that is freed once parsed, the response head goes out, and from then on
//! the task only forwards frames, gathering every frame that is ready into one `writev`.
//!
//! Only a connection whose first bytes are `GET /stream` comes here (`sniff`); everything
//! else (other paths, TLS, HTTP/2, later requests on a keep-alive connection) goes to hyper.
//! The checks and the errors are the same ones both ways: [`App::open_stream`] runs them, and
//! a refusal is the same [`ApiError`] response, written out here with `connection: close`.

use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{App, Body, Client};
use crate::error::ApiError;
use crate::hub::Subscription;
use crate::metrics;
use crate::sse;

/// What a plain-http connection's first bytes say.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// `GET /stream?...` or `GET /stream HTTP/...`: serve it here.
    Stream,
    /// `POST /channel/send/...`: a publisher (`direct_publish`).
    Publish,
    /// Anything else: hyper's. `maybe_h2`: the bytes seen so far could begin HTTP/2's
    /// connection preface (h2c with prior knowledge); otherwise it is HTTP/1.
    Other { maybe_h2: bool },
    /// Closed, failed, or silent past the header timeout.
    Gone,
}

const STREAM_PREFIX: &[u8] = b"GET /stream";
const PUBLISH_PREFIX: &[u8] = b"POST /channel/send/";
/// Largest request head read here and in `direct_publish` (hyper's own limit is larger, but a
/// stream request or a publish carries a short target and a browser's usual headers).
pub(super) const MAX_HEAD: usize = 16 * 1024;
/// Header fields, as hyper's default.
pub(super) const MAX_HEADERS: usize = 100;
/// Frames gathered into one write.
const MAX_BATCH: usize = 32;
/// Bytes gathered into one write: a batch stops growing past this (one frame may pass it).
/// A stream whose client stopped reading holds its batch until `WRITE_TIMEOUT`, so this is
/// what one stalled stream can pin beyond the history budget, whatever the frame size.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// A client that takes nothing from its socket for this long is cut off (its subscription
/// meanwhile resumes from history or reports a gap, so nothing is lost silently).
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Looks at a plain-http connection's first bytes, without consuming them, until they say
/// what the connection is (bounded by `deadline`).
pub async fn sniff(stream: &TcpStream, deadline: Instant) -> Sniffed {
    let mut buf = [0u8; PUBLISH_PREFIX.len() + 1];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Sniffed::Gone,
        };
        if let Some(sniffed) = classify(&buf[..n]) {
            return sniffed;
        }
        // A prefix of one of ours so far. `peek` returns at once while those bytes wait, so
        // pause before looking again (a head arriving in pieces is rare; the deadline bounds
        // this).
        if Instant::now() >= deadline {
            return Sniffed::Gone;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a connection starting with `seen` is; `None` while `seen` is still a prefix of
/// `GET /stream` + one byte or of `POST /channel/send/`.
fn classify(seen: &[u8]) -> Option<Sniffed> {
    if seen.len() > STREAM_PREFIX.len() && seen.starts_with(STREAM_PREFIX) {
        let stream_target = matches!(seen[STREAM_PREFIX.len()], b'?' | b' ');
        return Some(if stream_target {
            Sniffed::Stream
        } else {
            Sniffed::Other { maybe_h2: false }
        });
    }
    if seen.starts_with(PUBLISH_PREFIX) {
        return Some(Sniffed::Publish);
    }
    let undecided = (seen.len() <= STREAM_PREFIX.len() && STREAM_PREFIX.starts_with(seen))
        || (seen.len() < PUBLISH_PREFIX.len() && PUBLISH_PREFIX.starts_with(seen));
    if undecided {
        return None;
    }
    Some(Sniffed::Other {
        maybe_h2: could_be_h2(seen),
    })
}

/// HTTP/2's client connection preface (RFC 9113 3.4), as far as `sniff` looks.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a connection that starts with `seen` may be HTTP/2 with prior knowledge.
fn could_be_h2(seen: &[u8]) -> bool {
    H2_PREFACE.starts_with(seen) || seen.starts_with(H2_PREFACE)
}

/// A stream request that passed every check: the socket, the subscription, and the stream's
/// first bytes (response head, preamble and `welcome`, for one write).
pub struct Accepted {
    stream: TcpStream,
    subscription: Subscription,
    first: Bytes,
}

/// Reads the head of a connection that `sniff` found to start with `GET /stream`, runs the
/// checks and subscribes; a refusal is answered here and gives `None`. `deadline` is the
/// same as `sniff`'s: the whole head must arrive by then (slowloris).
///
/// Short-lived and large (the subscribe future, the head buffer): the caller boxes it, so a
/// stream's long-lived task is sized for [`forward`] only.
pub async fn accept(
    mut stream: TcpStream,
    client: Client,
    app: &App,
    deadline: Instant,
) -> Option<Accepted> {
    let started = std::time::Instant::now();
    let opened = match read_head(&mut stream, deadline).await {
        Ok(Some(req)) => app.open_stream(&req, client).await,
        // Closed or silent past the header timeout: close, as hyper does.
        Ok(None) => return None,
        Err(e) => Err(e),
    };
    app.metrics
        .observe(metrics::route_of("/stream"), started.elapsed());
    match opened {
        Ok((headers, open)) => {
            // Close-delimited (no chunked framing): the stream is the last thing on this
            // connection. The header map is dropped here, not kept for the stream's life.
            let mut first = response_head(StatusCode::OK, &headers, None, false);
            first.extend_from_slice(&open.first);
            app.metrics.stream_bytes(open.first.len());
            Some(Accepted {
                stream,
                subscription: open.subscription,
                first: first.into(),
            })
        }
        Err(e) => {
            app.metrics.refused(e.reason());
            tracing::debug!(status = e.status().as_u16(), "stream refused");
            let answer = encode_response(e.into_response(), false).await;
            answer_and_close(stream, &answer).await;
            None
        }
    }
}

/// Reads and parses the request head. `Ok(None)`: the client closed or went silent.
async fn read_head(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<Option<Request<()>>, ApiError> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HEAD {
            return Err(ApiError::HeadTooLarge);
        }
        // Straight into the buffer's spare room (no chunk on the task's stack: an idle
        // stream's task is sized for its largest state).
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(1024);
        }
        let room_left = MAX_HEAD - buf.len();
        let mut room = (&mut buf).limit(room_left);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut room)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Ok(None),
        }
        if let Some(req) = parse_head(&buf)? {
            return Ok(Some(req));
        }
    }
}

/// `Ok(None)`: the head is not complete yet.
fn parse_head(buf: &[u8]) -> Result<Option<Request<()>>, ApiError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut fields);
    match head.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ApiError::HeadTooLarge),
        Err(e) => return Err(ApiError::BadRequest(format!("malformed request head: {e}"))),
    }
    request_from(&head).map(Some)
}

/// The `http` request for a parsed head, to run the same checks hyper's requests go through.
fn request_from(head: &httparse::Request) -> Result<Request<()>, ApiError> {
    let version = match head.version {
        Some(0) => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    let mut builder = Request::builder()
        .method(head.method.unwrap_or("GET"))
        .uri(head.path.unwrap_or("/"))
        .version(version);
    for field in head.headers.iter() {
        builder = builder.header(field.name, field.value);
    }
    builder
        .body(())
        .map_err(|e| ApiError::BadRequest(format!("malformed request head: {e}")))
}

/// The stream itself: response head and first frames in one write, then every frame as it
/// comes (all that are ready in one `writev`), a keep-alive comment when quiet, until the
/// subscription ends (shutdown, takeover), the client closes, or a write stalls.
pub async fn forward(accepted: Accepted, app: &App) {
    let Accepted {
        stream,
        mut subscription,
        first,
    } = accepted;
    // Reused for every batch: one allocation per stream, not per write.
    let mut batch = vec![first];
    if !write_frames(&stream, &mut batch).await {
        return;
    }
    let keepalive = app.config.keepalive;
    let keepalive_timer = tokio::time::sleep(keepalive);
    tokio::pin!(keepalive_timer);
    loop {
        tokio::select! {
            frame = subscription.recv() => {
                let Some(frame) = frame else { break };
                let mut gathered = frame.len();
                batch.push(frame);
                while batch.len() < MAX_BATCH && gathered < MAX_BATCH_BYTES {
                    match subscription.try_recv() {
                        Some(frame) => {
                            gathered += frame.len();
                            batch.push(frame);
                        }
                        None => break,
                    }
                }
                for frame in &batch {
                    app.metrics.delivered(frame.len());
                }
            }
            _ = &mut keepalive_timer => {
                keepalive_timer.as_mut().reset(Instant::now() + keepalive);
                app.metrics.stream_bytes(sse::KEEPALIVE.len());
                batch.push(sse::KEEPALIVE);
            }
            readable = stream.readable() => {
                if readable.is_err() || client_closed(&stream) {
                    break;
                }
                continue;
            }
        }
        if !write_frames(&stream, &mut batch).await {
            break;
        }
    }
}

/// Reads and discards what the client sent after its request; true once it has closed.
fn client_closed(stream: &TcpStream) -> bool {
    let mut sink = [0u8; 512];
    for _ in 0..64 {
        match stream.try_read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
    false
}

/// Writes every frame, as few `writev` calls as the kernel allows, and empties `frames`;
/// false if the connection is gone or stalled past `WRITE_TIMEOUT`. The usual case (the
/// socket has room) is one `writev` with no timer and no await.
async fn write_frames(stream: &TcpStream, frames: &mut Vec<Bytes>) -> bool {
    let mut next = 0;
    let done = match write_some(stream, frames, &mut next) {
        Ok(()) => next == frames.len(),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => return false,
    };
    if !done {
        let rest = async {
            while next < frames.len() {
                stream.writable().await?;
                match write_some(stream, frames, &mut next) {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                    _ => {}
                }
            }
            Ok::<_, io::Error>(())
        };
        // Boxed: the rare path (a full socket buffer) should not size every stream's task.
        let rest = Box::pin(tokio::time::timeout(WRITE_TIMEOUT, rest));
        if !matches!(rest.await, Ok(Ok(()))) {
            return false;
        }
    }
    frames.clear();
    true
}

/// One `writev` of the frames from `next` on (at most `MAX_BATCH`); advances `next` past what
/// was written and trims a frame written in part. The slices live on the stack only here,
/// never across an await, so an idle task does not carry them.
fn write_some(stream: &TcpStream, frames: &mut [Bytes], next: &mut usize) -> io::Result<()> {
    let mut slices = [IoSlice::new(&[]); MAX_BATCH];
    let count = (frames.len() - *next).min(MAX_BATCH);
    for (slice, frame) in slices.iter_mut().zip(&frames[*next..*next + count]) {
        *slice = IoSlice::new(frame);
    }
    let mut written = stream.try_write_vectored(&slices[..count])?;
    while written > 0 {
        let frame = &mut frames[*next];
        let taken = written.min(frame.len());
        frame.advance(taken);
        written -= taken;
        if frame.is_empty() {
            *next += 1;
        }
    }
    Ok(())
}

/// An HTTP/1.1 response head; `connection: close` unless `keep_alive` (only a publish
/// answer, which has a length, is followed by more on its connection).
pub(super) fn response_head(
    status: StatusCode,
    headers: &HeaderMap,
    content_length: Option<usize>,
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let Some(length) = content_length {
        head.extend_from_slice(b"content-length: ");
        sse::put_decimal(&mut head, length as u64);
        head.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A whole response with a complete body (an error's one-line JSON, a publish answer) as
/// bytes.
pub(super) async fn encode_response(response: Response<Body>, keep_alive: bool) -> Vec<u8> {
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let mut bytes = response_head(parts.status, &parts.headers, Some(body.len()), keep_alive);
    bytes.extend_from_slice(&body);
    bytes
}

/// Writes a final answer and closes without losing it: shut down our side, then read what the
/// client still sends (closing with unread data makes the kernel send a reset, which can
/// destroy the answer before the client reads it). At most a second in all.
pub async fn answer_and_close(mut stream: TcpStream, answer: &[u8]) {
    use tokio::io::AsyncReadExt;
    let write = async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_or_are_refused() {
        let req =
            parse_head(b"GET /stream?channel=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(req.uri().query(), Some("channel=a"));
        assert_eq!(req.headers()["last-event-id"], "7");
        assert_eq!(req.version(), http::Version::HTTP_11);
        assert!(parse_head(b"GET /stream HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .is_none());
        assert!(matches!(
            parse_head(b"GET /stream HTTP/1.1\r\nHo\0st: x\r\n\r\n"),
            Err(ApiError::BadRequest(_))
        ));
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("GET /stream HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse_head(head.as_bytes()),
            Err(ApiError::HeadTooLarge)
        ));
    }

    #[test]
    fn response_heads_close_the_connection() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/event-stream".parse().unwrap());
        let head = response_head(StatusCode::OK, &headers, None, false);
        assert_eq!(
            head,
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        );
    }
}
