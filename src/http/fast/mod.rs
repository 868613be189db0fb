//! Everything served outside hyper. This module is a contract; every byte of HTTP read or
//! written outside hyper is read or written in one of its files.
//!
//! # What is served here
//! Only on plain-http connections (never TLS, never a plain request on a `--tls` port), and
//! only two requests, because they are most of a relay's traffic:
//! - a connection's first request when it is a plain `GET /stream` ([`stream`]): the SSE
//!   stream is then the last thing on that connection;
//! - the publishes of a connection that starts with `POST /channel/send/` ([`publish`]), as
//!   long as each one is plain.
//!
//! *Plain* ([`head`]): a whole head within [`head::MAX_HEAD`] bytes and [`head::MAX_HEADERS`]
//! fields that httparse accepts; no `Transfer-Encoding`, `Expect` or `Upgrade`; `Connection`
//! only `keep-alive`/`close`; at most one `Content-Length`, of digits. A stream: `GET`,
//! HTTP/1.0 or 1.1, no body (no length but `0`). A publish: `POST`, HTTP/1.1, exactly one
//! length within `--max-body`.
//!
//! # Invariants
//! - **Nothing is lost or reordered on the way to hyper.** Every byte read from the socket
//!   here belongs to a request served here in full, or is handed to hyper, in order, ahead of
//!   the rest of the socket ([`Rewind`]): the first request that is not plain and everything
//!   after it go to hyper, so every unusual or hostile framing meets hyper's parser exactly as
//!   if we were not here.
//! - **The same checks as the routes.** Admission is the route's own function
//!   ([`App::admit_publish`], [`App::open_stream`]), decided from the head before any body byte
//!   is waited for; refusals are the same [`ApiError`] answers.
//! - **One response-head writer** ([`head::ResponseHead`]): status line, `date`, fields,
//!   `content-length`, `connection: close`.
//! - **Waiting costs no CPU**: reads wait for readiness, never poll on a timer.
//! - **Every wait is bounded**: the head by `--header-timeout` (an idle keep-alive connection
//!   included, as hyper), a body by `--body-timeout` (408, close), a write by
//!   `--stall-timeout` (a stream is then reset, freeing its kernel buffers).
//! - **Shutdown**: streams end; an idle or half-sent head is closed; a publish whose body is
//!   arriving is read, published and answered with `connection: close`.
//!
//! # What hyper gets
//! [`Handoff::Hyper`]: the socket behind a [`Rewind`] holding the bytes already read, and
//! whether those could begin HTTP/2's preface (h2c with prior knowledge).

mod head;
mod publish;
mod rewind;
mod sniff;
mod stream;

pub use head::plain_publish_head;
pub use rewind::Rewind;
pub use stream::STREAM_SNDBUF;

use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::{App, Client};
use crate::http::error::ApiError;
use crate::limits::ConnectionRefusal;

/// How a connection left the fast path.
pub enum Handoff {
    /// Served here to its end.
    Done,
    /// hyper serves the rest of the connection, reading `io`.
    Hyper {
        io: Rewind<TcpStream>,
        maybe_h2: bool,
    },
}

/// Serves a plain-http connection as far as it is ours (see the module docs).
pub async fn serve(
    stream: TcpStream,
    client: Client,
    app: &App,
    shutdown: &CancellationToken,
) -> Handoff {
    // One deadline for the first head, sniffing included.
    let deadline = Instant::now() + app.config.header_timeout;
    let Some((kind, buf)) = sniff::read(&stream, deadline).await else {
        return Handoff::Done;
    };
    match kind {
        sniff::Kind::Stream => stream::serve(stream, buf, client, app, deadline).await,
        // Boxed: a publisher's state need not size every stream's task.
        sniff::Kind::Publish => Box::pin(publish::serve(stream, buf, client, app, shutdown)).await,
        sniff::Kind::Other { maybe_h2 } => Handoff::Hyper {
            io: Rewind::new(buf.freeze(), stream),
            maybe_h2,
        },
    }
}

/// Reads what the socket has into `buf`, waiting (until `timer` fires) only when nothing is
/// there yet; false when the client closed, failed or the timer fired.
async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut, timer: Pin<&mut Sleep>) -> bool {
    use tokio::io::AsyncReadExt;
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    // Pipelined or already arrived: no await.
    match stream.try_read_buf(buf) {
        Ok(0) => return false,
        Ok(_) => return true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(_) => return false,
    }
    tokio::select! {
        biased;
        read = stream.read_buf(buf) => matches!(read, Ok(n) if n > 0),
        _ = timer => false,
    }
}

/// A refusal's answer (one-line JSON, as the routes give it) as bytes.
fn encode_refusal(refusal: ApiError, keep_alive: bool) -> Vec<u8> {
    let (status, headers, body) = refusal.into_parts();
    let mut answer = head::ResponseHead::new(status);
    answer.fields(&headers);
    let mut bytes = answer.finish(Some(body.len()), keep_alive);
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
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// A connection turned away at accept time (over a connection limit): the one-line JSON
/// answer, written blind (we have not read the request) and closed.
pub async fn refuse_connection(stream: TcpStream, refusal: ConnectionRefusal) {
    answer_and_close(stream, &encode_refusal(refusal.into(), false)).await;
}
