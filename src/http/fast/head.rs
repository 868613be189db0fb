//! Request heads read outside hyper, and every response head written outside hyper.
//!
//! A head is served here only if it has the *plain shape* (see `fast/mod.rs`); [`Head::Hyper`]
//! means "not ours": malformed, too large, unusual framing — hyper reads it from the start and
//! answers exactly as it would have without us.

use http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode};

use crate::http::forwarded;
use crate::http::publish::{PEER_HEADER, TOKEN_HEADER, TO_HEADER};
use crate::sse;

/// Largest request head read here. A longer head is handed to hyper with what was read, and
/// hyper's own limit applies to it.
pub const MAX_HEAD: usize = 16 * 1024;
/// Header fields, as hyper's default; more goes to hyper (which answers 431).
pub const MAX_HEADERS: usize = 100;

/// What the bytes read so far hold.
pub enum Head<T> {
    /// A whole head of the plain shape.
    Plain(T),
    /// Not a whole head yet (and under [`MAX_HEAD`]: the caller checks).
    Partial,
    /// Anything else, malformed included: hyper's to serve or refuse.
    Hyper,
}

/// A plain `GET /stream` head.
pub struct StreamHead {
    /// Every header field: opening a stream is rare next to its life, and the checks read
    /// several of them.
    pub request: Request<()>,
}

/// A plain publish head.
pub struct PublishHead {
    /// Method, target, and only the header fields the checks read ([`CHECKED_FIELDS`]).
    pub request: Request<()>,
    pub head_len: usize,
    pub content_length: usize,
    /// The client asked for `Connection: close`.
    pub close: bool,
}

/// The header fields the publish checks read (the forwarding ones count only from a
/// `--trusted-proxy`). A browser sends a dozen more; copying them into a header map was the
/// largest single cost of a direct publish.
pub static CHECKED_FIELDS: [HeaderName; 9] = [
    header::HOST,
    header::ORIGIN,
    PEER_HEADER,
    TOKEN_HEADER,
    TO_HEADER,
    header::FORWARDED,
    forwarded::X_FORWARDED_FOR,
    forwarded::X_FORWARDED_PROTO,
    forwarded::X_FORWARDED_HOST,
];

/// The framing fields of a head, when they have the plain shape.
struct Framing {
    content_length: Option<usize>,
    close: bool,
}

/// At most one `Content-Length` of 1–18 digits; no `Transfer-Encoding`, `Expect` or
/// `Upgrade`; `Connection` only `keep-alive` / `close`. `None`: not plain.
fn framing(fields: &[httparse::Header]) -> Option<Framing> {
    let mut content_length = None;
    let mut close = false;
    for field in fields {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            let digits = field.value;
            let plain = content_length.is_none()
                && (1..=18).contains(&digits.len())
                && digits.iter().all(u8::is_ascii_digit);
            if !plain {
                return None;
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
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in field.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    return None;
                }
            }
        }
    }
    Some(Framing {
        content_length,
        close,
    })
}

/// Parses a head with httparse; `Err(Head::Partial | Head::Hyper)` when it is not a whole,
/// well-formed head of at most [`MAX_HEADERS`] fields.
fn parse<'h, 'b>(
    buf: &'b [u8],
    fields: &'h mut [httparse::Header<'b>],
) -> Result<(httparse::Request<'h, 'b>, usize), Head<std::convert::Infallible>> {
    let mut head = httparse::Request::new(fields);
    match head.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok((head, n)),
        Ok(httparse::Status::Partial) => Err(Head::Partial),
        Err(_) => Err(Head::Hyper),
    }
}

/// Lifts a parse failure into any `Head<T>`.
fn lift<T>(failed: Head<std::convert::Infallible>) -> Head<T> {
    match failed {
        Head::Partial => Head::Partial,
        _ => Head::Hyper,
    }
}

/// Whether `buf` starts with the head of a plain `GET /stream`: HTTP/1.0 or 1.1, no body
/// (no `Content-Length` but `0`) and plain framing.
pub fn stream_head(buf: &[u8]) -> Head<StreamHead> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (head, _) = match parse(buf, &mut fields) {
        Ok(parsed) => parsed,
        Err(failed) => return lift(failed),
    };
    let stream_target = head
        .path
        .is_some_and(|p| p == "/stream" || p.starts_with("/stream?"));
    if head.method != Some("GET") || !stream_target {
        return Head::Hyper;
    }
    match framing(head.headers) {
        Some(Framing {
            content_length: None | Some(0),
            ..
        }) => {}
        _ => return Head::Hyper,
    }
    let version = match head.version {
        Some(0) => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    let mut builder = Request::builder()
        .method(http::Method::GET)
        .uri(head.path.unwrap_or("/"))
        .version(version);
    for field in head.headers.iter() {
        builder = builder.header(field.name, field.value);
    }
    match builder.body(()) {
        Ok(request) => Head::Plain(StreamHead { request }),
        Err(_) => Head::Hyper,
    }
}

/// Whether `buf` starts with the head of a plain publish: `POST /channel/send/...` over
/// HTTP/1.1 with exactly one `Content-Length` within `max_body` and plain framing.
pub fn publish_head(buf: &[u8], max_body: usize) -> Head<PublishHead> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (head, head_len) = match parse(buf, &mut fields) {
        Ok(parsed) => parsed,
        Err(failed) => return lift(failed),
    };
    let publish_target = head
        .path
        .is_some_and(|path| path.starts_with("/channel/send/"));
    if head.method != Some("POST") || head.version != Some(1) || !publish_target {
        return Head::Hyper;
    }
    let Some(Framing {
        content_length: Some(content_length),
        close,
    }) = framing(head.headers)
    else {
        return Head::Hyper;
    };
    if content_length > max_body {
        // hyper's route answers 413 before reading the body.
        return Head::Hyper;
    }
    let Some(request) = checked_request(&head) else {
        return Head::Hyper;
    };
    Head::Plain(PublishHead {
        request,
        head_len,
        content_length,
        close,
    })
}

/// The request the publish checks look at: method, target, and the [`CHECKED_FIELDS`].
/// `None` if a kept value is not a valid header value.
fn checked_request(head: &httparse::Request) -> Option<Request<()>> {
    let mut request = Request::new(());
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = head.path?.parse().ok()?;
    let headers = request.headers_mut();
    for field in head.headers.iter() {
        let Some(name) = CHECKED_FIELDS
            .iter()
            .find(|name| field.name.eq_ignore_ascii_case(name.as_str()))
        else {
            continue;
        };
        headers.append(name.clone(), HeaderValue::from_bytes(field.value).ok()?);
    }
    Some(request)
}

/// `Some((head length, Content-Length, Connection: close))` when `buf` starts with the whole
/// head of a plain publish, one served outside hyper; for the fuzz target.
pub fn plain_publish_head(buf: &[u8], max_body: usize) -> Option<(usize, usize, bool)> {
    match publish_head(buf, max_body) {
        Head::Plain(head) => Some((head.head_len, head.content_length, head.close)),
        Head::Partial | Head::Hyper => None,
    }
}

/// Writes an HTTP/1.1 response head: every response written outside hyper starts here, so
/// the status line, `date` and the closing fields are the same for all of them (and as
/// hyper's).
pub struct ResponseHead(Vec<u8>);

impl ResponseHead {
    pub fn new(status: StatusCode) -> Self {
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(status.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        head.extend_from_slice(b"\r\ndate: ");
        date::put(&mut head);
        head.extend_from_slice(b"\r\n");
        ResponseHead(head)
    }

    pub fn field(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value);
        self.0.extend_from_slice(b"\r\n");
        self
    }

    pub fn fields(&mut self, headers: &HeaderMap) -> &mut Self {
        for (name, value) in headers {
            self.field(name.as_str(), value.as_bytes());
        }
        self
    }

    /// Ends the head: `content-length` when the body has one (otherwise the body runs until
    /// the connection closes), and `connection: close` unless `keep_alive`.
    pub fn finish(mut self, content_length: Option<usize>, keep_alive: bool) -> Vec<u8> {
        if let Some(length) = content_length {
            self.0.extend_from_slice(b"content-length: ");
            sse::put_decimal(&mut self.0, length as u64);
            self.0.extend_from_slice(b"\r\n");
        }
        if !keep_alive {
            self.0.extend_from_slice(b"connection: close\r\n");
        }
        self.0.extend_from_slice(b"\r\n");
        self.0
    }
}

/// The `date` field's value (RFC 9110 6.6.1: an origin server with a clock sends one), made
/// at most once a second per thread, as hyper does.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        /// The second it was made for, and the text.
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    pub fn put(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let second = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != second {
                let text = httpdate::fmt_http_date(now);
                if text.len() == 29 {
                    cached.1.copy_from_slice(text.as_bytes());
                    cached.0 = second;
                }
            }
            out.extend_from_slice(&cached.1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_publish(head: &str) -> Option<PublishHead> {
        match publish_head(head.as_bytes(), 1000) {
            Head::Plain(head) => Some(head),
            _ => None,
        }
    }

    #[test]
    fn only_the_plain_publish_shape_is_served_here() {
        let ok = "POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let head = plain_publish(ok).expect("plain");
        assert_eq!((head.content_length, head.close), (5, false));
        assert_eq!(head.head_len, ok.len() - 5);
        let close = "POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(plain_publish(close).expect("plain").close);
        for hypers in [
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
                matches!(publish_head(hypers.as_bytes(), 1000), Head::Hyper),
                "{hypers:?}"
            );
        }
        assert!(matches!(
            publish_head(b"POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\n", 1000),
            Head::Partial
        ));
    }

    #[test]
    fn stream_heads_with_a_body_or_odd_framing_go_to_hyper() {
        let plain = |head: &str| matches!(stream_head(head.as_bytes()), Head::Plain(_));
        assert!(plain(
            "GET /stream?channel=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\n"
        ));
        assert!(plain("GET /stream HTTP/1.0\r\n\r\n"));
        assert!(plain(
            "GET /stream?channel=a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        ));
        for hypers in [
            "GET /stream?channel=a HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
            "GET /stream?channel=a HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            "GET /stream?channel=a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            "GET /stream?channel=a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "GET /stream?channel=a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "GET /stream?channel=a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "GET /stream?channel=a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /stream?channel=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            "GET /stream HTTP/1.1\r\nHo\0st: x\r\n\r\n",
            "GET /streams HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert!(matches!(stream_head(hypers.as_bytes()), Head::Hyper), "{hypers:?}");
        }
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("GET /stream HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(stream_head(head.as_bytes()), Head::Hyper));
        assert!(matches!(
            stream_head(b"GET /stream HTTP/1.1\r\nHost: x\r\n"),
            Head::Partial
        ));
    }

    #[test]
    fn response_heads_carry_date_length_and_close() {
        let mut head = ResponseHead::new(StatusCode::OK);
        head.field("content-type", b"text/event-stream");
        let text = String::from_utf8(head.finish(None, false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ndate: "), "{text}");
        assert!(
            text.ends_with("GMT\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"),
            "{text}"
        );
        let kept =
            String::from_utf8(ResponseHead::new(StatusCode::NOT_FOUND).finish(Some(3), true))
                .unwrap();
        assert!(kept.ends_with("content-length: 3\r\n\r\n"), "{kept}");
        assert!(!kept.contains("connection"));
    }

    proptest::proptest! {
        /// Any bytes, and any one-byte change to a plain publish: never a panic, and a head
        /// taken as plain is within the buffer and the body limit.
        #[test]
        fn publish_head_is_total(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            at in 0usize..80,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let _ = publish_head(&noise, 1000);
            let _ = stream_head(&noise);
            let mut request =
                b"POST /channel/send/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                    .to_vec();
            let at = at.min(request.len() - 1);
            request[at] = byte;
            if let Head::Plain(head) = publish_head(&request, 1000) {
                proptest::prop_assert!(head.head_len <= request.len());
                proptest::prop_assert!(head.content_length <= 1000);
                // The head ends with its empty line (httparse, like hyper's own parser,
                // also takes a bare LF as a line end).
                proptest::prop_assert_eq!(request[head.head_len - 1], b'\n');
                proptest::prop_assert!(matches!(request[head.head_len - 2], b'\n' | b'\r'));
            }
        }
    }
}
