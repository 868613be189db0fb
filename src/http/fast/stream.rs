//! Plain-http `GET /stream` served on the socket directly, outside hyper.
//!
//! Why: idle subscribers are most of what a relay holds (a classroom's browsers sit on their
//! streams for an hour), and through hyper each keeps a connection task with its read and
//! write buffers, about 30 KiB measured. Here a stream is one small task: the request head is
//! read into a buffer that is freed once parsed, the response head goes out, and from then on
//! the task only forwards frames, gathering every frame that is ready into one `writev`.
//!
//! The socket's send buffer is fixed at [`STREAM_SNDBUF`] (no autotuning up to megabytes for a
//! reader that stalls), and a stream whose client takes nothing for `--stall-timeout` is
//! reset, not closed gracefully, so the kernel frees what it still held for it at once
//! instead of keeping an orphaned socket with a full buffer.

use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::head::{self, Head, ResponseHead, MAX_HEAD};
use super::{answer_and_close, encode_refusal, Handoff, Rewind};
use crate::http::{App, Client};
use crate::hub::Subscription;
use crate::metrics;
use crate::sse;

/// Frames gathered into one write.
const MAX_BATCH: usize = 32;
/// Bytes gathered into one write: a batch stops growing past this (one frame may pass it).
/// A stream whose client stopped reading holds its batch until `--stall-timeout`, so this is
/// what one stalled stream can pin beyond the history budget, whatever the frame size.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Send buffer of a stream's socket (the kernel doubles it for its bookkeeping): room for a
/// few of the largest frames, and a bound on what a reader that stops can pin in the kernel.
pub const STREAM_SNDBUF: usize = 128 * 1024;

/// A stream request that passed every check: the socket, the subscription, and the stream's
/// first bytes (response head, preamble and `welcome`, for one write).
pub struct Accepted {
    stream: TcpStream,
    subscription: Subscription,
    first: Bytes,
}

/// How reading and checking the head ended.
pub enum Opened {
    Stream(Accepted),
    /// Refused (answered here), closed, or silent past the deadline.
    Done,
    /// Not a plain stream head: hyper's, with the bytes read.
    Hyper(Rewind<TcpStream>),
}

/// Serves a connection that [`super::sniff`] found to start with `GET /stream`.
pub async fn serve(
    stream: TcpStream,
    buf: BytesMut,
    client: Client,
    app: &App,
    deadline: Instant,
) -> Handoff {
    // Boxed: reading the head and subscribing are brief; only forwarding lives on.
    match Box::pin(open(stream, buf, client, app, deadline)).await {
        Opened::Stream(accepted) => {
            forward(accepted, app).await;
            Handoff::Done
        }
        Opened::Done => Handoff::Done,
        Opened::Hyper(io) => Handoff::Hyper {
            io,
            maybe_h2: false,
        },
    }
}

/// Reads the head (the whole head by `deadline`: slowloris), runs the stream admission and
/// subscribes; a refusal is answered here.
async fn open(
    mut stream: TcpStream,
    mut buf: BytesMut,
    client: Client,
    app: &App,
    deadline: Instant,
) -> Opened {
    let started = std::time::Instant::now();
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    let head = loop {
        match head::stream_head(&buf) {
            Head::Plain(head) => break head,
            Head::Partial if buf.len() < MAX_HEAD => {}
            Head::Partial | Head::Hyper => return Opened::Hyper(Rewind::new(buf.freeze(), stream)),
        }
        if !super::read_more(&mut stream, &mut buf, timer.as_mut()).await {
            // Closed or silent past the header timeout: close, as hyper does.
            return Opened::Done;
        }
    };
    // Anything after the head (a pipelined request) is not read: a stream is the last thing
    // on its connection.
    drop(buf);
    let opened = app.open_stream(&head.request, client).await;
    app.metrics
        .observe(metrics::route_of("/stream"), started.elapsed());
    match opened {
        Ok((headers, open)) => {
            // Close-delimited (no chunked framing): the stream is the last thing on this
            // connection. The header map is dropped here, not kept for the stream's life.
            let mut response = ResponseHead::new(http::StatusCode::OK);
            response.fields(&headers);
            let mut first = response.finish(None, false);
            first.extend_from_slice(&open.first);
            app.metrics.stream_bytes(open.first.len());
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(STREAM_SNDBUF);
            Opened::Stream(Accepted {
                stream,
                subscription: open.subscription,
                first: first.into(),
            })
        }
        Err(e) => {
            app.metrics.refused(e.reason());
            tracing::debug!(status = e.status().as_u16(), "stream refused");
            let answer = encode_refusal(e, false);
            answer_and_close(stream, &answer).await;
            Opened::Done
        }
    }
}
/// The stream itself: response head and first frames in one write, then every frame as it
/// comes (all that are ready in one `writev`), a keep-alive comment when quiet, until the
/// subscription ends (shutdown, takeover), the client closes, or a write stalls.
async fn forward(accepted: Accepted, app: &App) {
    let stall = app.config.stall_timeout;
    let Accepted {
        stream,
        mut subscription,
        first,
    } = accepted;
    // Reused for every batch: one allocation per stream, not per write.
    let mut batch = vec![first];
    if !write_frames(&stream, &mut batch, stall).await {
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
        if !write_frames(&stream, &mut batch, stall).await {
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
/// false if the connection is gone, or stalled past `stall` (then it is set to be
/// reset when dropped). The usual case (the
/// socket has room) is one `writev` with no timer and no await.
async fn write_frames(stream: &TcpStream, frames: &mut Vec<Bytes>, stall: Duration) -> bool {
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
        let rest = Box::pin(tokio::time::timeout(stall, rest));
        match rest.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_stalled) => {
                // Closing now would leave an orphaned socket holding its full send buffer
                // until the kernel gives up on the peer; a reset frees it at once.
                let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
                return false;
            }
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
