//! Plain-http publishes served on the socket directly, outside hyper.
//!
//! Why: a publish is a small POST on a keep-alive connection, and hyper's own per-request
//! work (header map, body channel, a timer per request, the dispatcher) was about half of a
//! publish's instructions. A connection whose first bytes are `POST /channel/send/` comes here
//! (`direct::sniff`), and each request on it is served here as long as it has the plain shape
//! of a publish: HTTP/1.1, exactly one `Content-Length` of digits within `--max-body`, and no
//! `Transfer-Encoding`, `Expect` or `Upgrade`. The first request with any other shape — and
//! everything after it — goes to hyper, which reads the bytes already taken from the socket
//! first ([`Prefixed`]). So every unusual or hostile framing meets hyper's parser exactly as
//! before; only the plain case is handled here, with the same checks, publish and answers as
//! the route ([`App::publish_direct`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use http::{header, HeaderValue};

// The same bounds as a direct stream's: a head over MAX_HEAD goes to hyper (its own limit
// applies there), and an answer the client does not take within WRITE_TIMEOUT ends the
// connection.
use super::direct::{answer_and_close, encode_response, MAX_HEAD, MAX_HEADERS, WRITE_TIMEOUT};
use super::publish::{PEER_HEADER, TOKEN_HEADER};
use super::{forwarded, pages, App, Client, PublishedAnswer};
use crate::error::ApiError;
use crate::sse;

/// How [`serve`] ended.
pub enum Served {
    /// The connection is over: closed, silent past a timeout, shut down, or answered with close.
    Done,
    /// A request that is not a plain publish: hyper serves the rest of the connection,
    /// starting with the bytes already read.
    ToHyper(Prefixed<TcpStream>),
}

/// Serves plain publishes on `stream` until it closes or a request needs hyper.
pub async fn serve(
    mut stream: TcpStream,
    client: Client,
    app: &App,
    shutdown: &CancellationToken,
) -> Served {
    let mut buf = BytesMut::with_capacity(4096);
    // One timer for the connection, moved to each request's deadline.
    let timer = tokio::time::sleep(app.config.header_timeout);
    tokio::pin!(timer);
    loop {
        // The whole head within the header timeout, counted from when we start waiting (an
        // idle keep-alive connection included, as hyper does): slowloris.
        timer
            .as_mut()
            .reset(Instant::now() + app.config.header_timeout);
        let head = loop {
            match parse(&buf, app.config.max_body) {
                Parsed::Plain(head) => break head,
                Parsed::Partial if buf.len() < MAX_HEAD => {}
                Parsed::Partial | Parsed::NotPlain => {
                    return Served::ToHyper(Prefixed::new(buf.freeze(), stream));
                }
            }
            match read_more(&mut stream, &mut buf, timer.as_mut(), shutdown).await {
                Read::Data => {}
                Read::Over | Read::TimedOut => return Served::Done,
            }
        };
        let total = head.head_len + head.content_length;
        if buf.len() < total {
            timer
                .as_mut()
                .reset(Instant::now() + app.config.body_timeout);
            while buf.len() < total {
                match read_more(&mut stream, &mut buf, timer.as_mut(), shutdown).await {
                    Read::Data => {}
                    Read::Over => return Served::Done,
                    Read::TimedOut => {
                        app.metrics.refused(ApiError::BodyTimeout.reason());
                        let answer = encode_response(ApiError::BodyTimeout.into_response(), false);
                        answer_and_close(stream, &answer.await).await;
                        return Served::Done;
                    }
                }
            }
        }
        let request = buf.split_to(total);
        let body = &request[head.head_len..];
        let answer = match app.publish_direct(&head.request, client, body).await {
            Ok(published) => published_answer(&published, !head.close),
            Err(refusal) => encode_response(refusal, !head.close).await,
        };
        if head.close {
            answer_and_close(stream, &answer).await;
            return Served::Done;
        }
        if !write_answer(&mut stream, &answer).await {
            return Served::Done;
        }
    }
}

/// `Some((head length, Content-Length, Connection: close))` when `buf` starts with the whole
/// head of a plain publish, one this module serves itself; for the fuzz target.
pub fn plain_publish_head(buf: &[u8], max_body: usize) -> Option<(usize, usize, bool)> {
    match parse(buf, max_body) {
        Parsed::Plain(head) => Some((head.head_len, head.content_length, head.close)),
        Parsed::Partial | Parsed::NotPlain => None,
    }
}

/// A plain publish's head.
struct PlainHead {
    request: http::Request<()>,
    head_len: usize,
    content_length: usize,
    /// The client asked for `Connection: close`.
    close: bool,
}

// Returned once per request and matched at once: boxing the large variant would only add an
// allocation per publish.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Plain(PlainHead),
    /// Not a whole head yet.
    Partial,
    /// Anything else, malformed included: hyper's to serve or refuse.
    NotPlain,
}

/// Whether `buf` starts with the head of a plain publish (see the module comment).
fn parse(buf: &[u8], max_body: usize) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut fields);
    let head_len = match head.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotPlain,
    };
    let publish_target = head
        .path
        .is_some_and(|path| path.starts_with("/channel/send/"));
    if head.method != Some("POST") || head.version != Some(1) || !publish_target {
        return Parsed::NotPlain;
    }
    let mut content_length = None;
    let mut close = false;
    for field in head.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            let digits = field.value;
            let plain = content_length.is_none()
                && (1..=18).contains(&digits.len())
                && digits.iter().all(u8::is_ascii_digit);
            if !plain {
                return Parsed::NotPlain;
            }
            // 18 digits or fewer always fit.
            content_length = Some(
                digits
                    .iter()
                    .fold(0usize, |n, d| n * 10 + usize::from(d - b'0')),
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Parsed::NotPlain;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in field.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    return Parsed::NotPlain;
                }
            }
        }
    }
    let Some(content_length) = content_length else {
        return Parsed::NotPlain;
    };
    if content_length > max_body {
        // hyper's route answers 413 before reading the body.
        return Parsed::NotPlain;
    }
    let Some(request) = publish_request(&head) else {
        return Parsed::NotPlain;
    };
    Parsed::Plain(PlainHead {
        request,
        head_len,
        content_length,
        close,
    })
}

/// The request the publish checks look at: method, target, and only the header fields they
/// read (`Host`, `Origin`, the peer pair, and the forwarding headers `forwarded::view` reads
/// when a trusted proxy sent them). A browser sends a dozen more; copying them into a header
/// map was the largest single cost of a direct publish. `None` if a kept value is not a valid
/// header value.
fn publish_request(head: &httparse::Request) -> Option<http::Request<()>> {
    let mut request = http::Request::new(());
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = head.path?.parse().ok()?;
    let headers = request.headers_mut();
    for field in head.headers.iter() {
        let name = if field.name.eq_ignore_ascii_case("host") {
            header::HOST
        } else if field.name.eq_ignore_ascii_case("origin") {
            header::ORIGIN
        } else if field.name.eq_ignore_ascii_case(PEER_HEADER.as_str()) {
            PEER_HEADER
        } else if field.name.eq_ignore_ascii_case(TOKEN_HEADER.as_str()) {
            TOKEN_HEADER
        } else if let Some(name) = forwarded::HEADERS
            .iter()
            .find(|name| field.name.eq_ignore_ascii_case(name.as_str()))
        {
            name.clone()
        } else {
            continue;
        };
        headers.append(name, HeaderValue::from_bytes(field.value).ok()?);
    }
    Some(request)
}

/// The answer to a publish that went out, as the route's (`pages::json`, `origin::decorate`)
/// but written straight out: no response or header map per publish.
fn published_answer(published: &PublishedAnswer, keep_alive: bool) -> Vec<u8> {
    let mut answer = Vec::with_capacity(256);
    answer.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    for (name, value) in pages::JSON_HEADERS {
        answer.extend_from_slice(name.as_str().as_bytes());
        answer.extend_from_slice(b": ");
        answer.extend_from_slice(value.as_bytes());
        answer.extend_from_slice(b"\r\n");
    }
    if let Some(origin) = &published.cors_origin {
        answer.extend_from_slice(b"access-control-allow-origin: ");
        answer.extend_from_slice(origin.as_bytes());
        answer.extend_from_slice(b"\r\nvary: Origin\r\n");
    }
    answer.extend_from_slice(b"content-length: ");
    sse::put_decimal(&mut answer, published.json.len() as u64);
    answer.extend_from_slice(b"\r\n");
    if !keep_alive {
        answer.extend_from_slice(b"connection: close\r\n");
    }
    answer.extend_from_slice(b"\r\n");
    answer.extend_from_slice(&published.json);
    answer
}

enum Read {
    Data,
    /// Closed by the client, failed, or the server is shutting down.
    Over,
    TimedOut,
}

/// Reads what the socket has into `buf`, waiting (until `timer` fires) only when nothing is
/// there yet.
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timer: Pin<&mut Sleep>,
    shutdown: &CancellationToken,
) -> Read {
    use tokio::io::AsyncReadExt;
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    // Pipelined or already arrived: no await.
    match stream.try_read_buf(buf) {
        Ok(0) => return Read::Over,
        Ok(_) => return Read::Data,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(_) => return Read::Over,
    }
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => Read::Over,
        read = stream.read_buf(buf) => match read {
            Ok(n) if n > 0 => Read::Data,
            _ => Read::Over,
        },
        _ = timer => Read::TimedOut,
    }
}

/// Writes an answer; false if the connection is gone or stalled past `WRITE_TIMEOUT`.
async fn write_answer(stream: &mut TcpStream, answer: &[u8]) -> bool {
    // Usually the socket has room: no timer, no await.
    let rest = match stream.try_write(answer) {
        Ok(n) if n == answer.len() => return true,
        Ok(n) => &answer[n..],
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => answer,
        Err(_) => return false,
    };
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(rest)).await,
        Ok(Ok(()))
    )
}

/// A connection handed to hyper after some of it was read here: reads return those bytes
/// first, then the socket's; writes go straight to the socket.
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(head: &str) -> Option<PlainHead> {
        match parse(head.as_bytes(), 1000) {
            Parsed::Plain(head) => Some(head),
            _ => None,
        }
    }

    #[test]
    fn only_the_plain_shape_is_served_here() {
        let ok = "POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let head = plain(ok).expect("plain");
        assert_eq!((head.content_length, head.close), (5, false));
        assert_eq!(head.head_len, ok.len() - 5);
        let close = "POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(plain(close).expect("plain").close);
        for hyper_s in [
            "POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
            "POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            "POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nContent-Length: 3\r\n\r\n",
            "POST /channel/send/a/b HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            "POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n",
            "POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST /channel/send/a\0/b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "GET /channel/send/a/b HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(
                matches!(parse(hyper_s.as_bytes(), 1000), Parsed::NotPlain),
                "{hyper_s:?}"
            );
        }
        assert!(matches!(
            parse(b"POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\n", 1000),
            Parsed::Partial
        ));
    }

    proptest::proptest! {
        /// Any bytes, and any one-byte change to a plain publish: never a panic, and a head
        /// taken as plain is within the buffer and the body limit.
        #[test]
        fn parse_is_total(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            at in 0usize..80,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let _ = parse(&noise, 1000);
            let mut request =
                b"POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                    .to_vec();
            let at = at.min(request.len() - 1);
            request[at] = byte;
            if let Parsed::Plain(head) = parse(&request, 1000) {
                proptest::prop_assert!(head.head_len <= request.len());
                proptest::prop_assert!(head.content_length <= 1000);
                // The head ends with its empty line (httparse, like hyper's own parser,
                // also takes a bare LF as a line end).
                proptest::prop_assert_eq!(request[head.head_len - 1], b'\n');
                proptest::prop_assert!(matches!(request[head.head_len - 2], b'\n' | b'\r'));
            }
        }
    }

    #[tokio::test]
    async fn prefixed_reads_the_prefix_first() {
        use tokio::io::AsyncReadExt;
        let inner: &[u8] = b" world";
        let mut io = Prefixed::new(Bytes::from_static(b"hello"), inner);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
