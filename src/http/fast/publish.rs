//! Plain-http publishes served on the socket directly, outside hyper.
//!
//! Why: a publish is a small POST on a keep-alive connection, and hyper's own per-request
//! work (header map, body channel, a timer per request, the dispatcher) was about half of a
//! publish's instructions. Each request on a connection that starts with `POST /channel/send/`
//! is served here while it has the plain shape ([`head::publish_head`]); the first request of
//! any other shape, and everything after it, goes to hyper with the bytes already read.
//!
//! A request is admitted from its head alone ([`App::admit_publish`], the route's own
//! admission), before any body byte is waited for, so a refusal is answered at once as
//! hyper's route answers it. A body that is arriving when the server shuts down is still read
//! (within `--body-timeout`) and answered, with `connection: close`.

use std::time::Duration;

use bytes::BytesMut;
use http::StatusCode;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::head::{self, Head, ResponseHead, MAX_HEAD};
use super::{answer_and_close, encode_refusal, read_more, Handoff, Rewind};
use crate::http::error::ApiError;
use crate::http::{origin, pages, App, Client, PublishedAnswer};
use crate::metrics;

/// Serves plain publishes on `stream`, starting with the bytes in `buf`, until it closes or a
/// request needs hyper.
pub async fn serve(
    mut stream: TcpStream,
    mut buf: BytesMut,
    client: Client,
    app: &App,
    shutdown: &CancellationToken,
) -> Handoff {
    let route = metrics::route_of("/channel/send/");
    // One timer for the connection, moved to each wait's deadline.
    let timer = tokio::time::sleep(app.config.header_timeout);
    tokio::pin!(timer);
    loop {
        // The whole head within the header timeout, counted from when we start waiting (an
        // idle keep-alive connection included, as hyper does): slowloris. An idle connection
        // or a half-sent head is simply closed at shutdown.
        timer
            .as_mut()
            .reset(Instant::now() + app.config.header_timeout);
        let head = loop {
            match head::publish_head(&buf, app.config.max_body) {
                Head::Plain(head) => break head,
                Head::Partial if buf.len() < MAX_HEAD => {}
                Head::Partial | Head::Hyper => {
                    return Handoff::Hyper {
                        io: Rewind::new(buf.freeze(), stream),
                        maybe_h2: false,
                    };
                }
            }
            let more = tokio::select! {
                biased;
                _ = shutdown.cancelled() => false,
                more = read_more(&mut stream, &mut buf, timer.as_mut()) => more,
            };
            if !more {
                return Handoff::Done;
            }
        };
        let started = std::time::Instant::now();
        let total = head.head_len + head.content_length;
        let answer = match app.admit_publish(&head.request, client) {
            Err(refusal) => {
                app.metrics.refused(refusal.reason());
                app.metrics.observe(route, started.elapsed());
                // Answered at once, from the head; the body (still on its way, perhaps) is
                // then read and dropped so the connection can go on, as hyper does.
                if head.close {
                    answer_and_close(stream, &encode_refusal(refusal, false)).await;
                    return Handoff::Done;
                }
                let answer = encode_refusal(refusal, true);
                if !write_answer(&mut stream, &answer, app.config.stall_timeout).await {
                    return Handoff::Done;
                }
                timer
                    .as_mut()
                    .reset(Instant::now() + app.config.body_timeout);
                while buf.len() < total {
                    if !read_more(&mut stream, &mut buf, timer.as_mut()).await {
                        return Handoff::Done;
                    }
                }
                let _ = buf.split_to(total);
                continue;
            }
            Ok(admitted) => {
                if buf.len() < total {
                    // Shutdown does not cut a body short: the request is in flight.
                    timer
                        .as_mut()
                        .reset(Instant::now() + app.config.body_timeout);
                    while buf.len() < total {
                        if !read_more(&mut stream, &mut buf, timer.as_mut()).await {
                            if timer.is_elapsed() {
                                let refusal = ApiError::BodyTimeout;
                                app.metrics.refused(refusal.reason());
                                answer_and_close(stream, &encode_refusal(refusal, false)).await;
                            }
                            return Handoff::Done;
                        }
                    }
                }
                let request = buf.split_to(total);
                let keep_alive = !head.close && !shutdown.is_cancelled();
                let answer = match app
                    .publish_admitted(admitted, &request[head.head_len..])
                    .await
                {
                    Ok(published) => published_answer(&published, keep_alive),
                    Err(refusal) => {
                        app.metrics.refused(refusal.reason());
                        encode_refusal(refusal, keep_alive)
                    }
                };
                app.metrics.observe(route, started.elapsed());
                if !keep_alive {
                    answer_and_close(stream, &answer).await;
                    return Handoff::Done;
                }
                answer
            }
        };
        if !write_answer(&mut stream, &answer, app.config.stall_timeout).await {
            return Handoff::Done;
        }
    }
}

/// The answer to a publish that went out, with the route's headers (`pages::JSON_HEADERS`,
/// `origin::cors_fields`) but written straight out: no response or header map per publish.
fn published_answer(published: &PublishedAnswer, keep_alive: bool) -> Vec<u8> {
    let mut head = ResponseHead::new(StatusCode::OK);
    for (name, value) in pages::JSON_HEADERS {
        head.field(name.as_str(), value.as_bytes());
    }
    if let Some(origin) = &published.cors_origin {
        for (name, value) in origin::cors_fields(origin) {
            head.field(name.as_str(), value.as_bytes());
        }
    }
    let mut answer = head.finish(Some(published.json.len()), keep_alive);
    answer.extend_from_slice(&published.json);
    answer
}

/// Writes an answer; false if the connection is gone or stalled past `--stall-timeout`.
async fn write_answer(stream: &mut TcpStream, answer: &[u8], stall: Duration) -> bool {
    use tokio::io::AsyncWriteExt;
    // Usually the socket has room: no timer, no await.
    let rest = match stream.try_write(answer) {
        Ok(n) if n == answer.len() => return true,
        Ok(n) => &answer[n..],
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => answer,
        Err(_) => return false,
    };
    matches!(
        tokio::time::timeout(stall, stream.write_all(rest)).await,
        Ok(Ok(()))
    )
}
