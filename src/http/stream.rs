//! `GET /stream?channel=NAME`: a Server-Sent Events response fed by one hub subscription.
//!
//! The body is a `Stream` of `Bytes` frames: the preamble, then whatever the subscription
//! yields, with a keep-alive comment whenever it has been quiet for `--keepalive`. It ends when
//! the subscription ends (shutdown, or the same peer reconnected elsewhere).

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use std::sync::Arc;

use super::{App, Body, Client};
use crate::http::error::ApiError;
use crate::hub::{PeerJoin, StartAt, Subscription};
use crate::metrics::Metrics;
use crate::names::StreamQuery;
use crate::peers::{random_peer, Claim};
use crate::sse;

/// An accepted subscription and the first bytes of its stream (preamble and `welcome`),
/// before it is wrapped in a hyper body or served on the socket directly (`http::fast`).
pub struct OpenStream {
    pub subscription: Subscription,
    pub first: Bytes,
}

/// Everything `GET /stream` checks and sets up, shared by both ways of serving it.
pub async fn open<B>(app: &App, req: &Request<B>) -> Result<OpenStream, ApiError> {
    let StreamQuery {
        channel,
        peer,
        token,
        mut last_event_id,
    } = StreamQuery::parse(req.uri().query().unwrap_or(""))?;
    // The header (set by EventSource on reconnect) wins over the first-connect parameter.
    if let Some(header) = req.headers().get("last-event-id") {
        let value = header
            .to_str()
            .map_err(|_| ApiError::BadRequest("Last-Event-ID is not ASCII".into()))?;
        last_event_id = Some(value.to_owned());
    }
    let start = match last_event_id {
        Some(id) => StartAt::After(id),
        None => StartAt::Live,
    };

    // A token that does not verify (another secret, another room, garbled) proves nothing: the
    // stream is then a newcomer, let in only if the id is free.
    let join = peer.map(|peer| PeerJoin {
        proof: token.and_then(|t| app.peers.verify(&channel, &peer, t.as_str())),
        peer,
    });
    // The stream's identity: the peer id the client chose (validated above), or a fresh one.
    let identity = join
        .as_ref()
        .map_or_else(random_peer, |join| join.peer.clone());
    let subscription = app.hub.subscribe(&channel, start, join).await?;
    // The token of the claim this stream now holds: a new one for an id that was free, the
    // one it proved for a takeover, never another claim's. An anonymous id is its own claim.
    let claim = subscription.claim().unwrap_or_else(Claim::random);
    let welcome = sse::welcome_frame(
        identity.as_str(),
        &app.peers.issue(&channel, &identity, claim),
    );
    // Preamble and welcome in one chunk: one write, and `welcome` is always the first event.
    let mut first = sse::preamble(app.config.retry_ms).to_vec();
    first.extend_from_slice(&welcome);
    Ok(OpenStream {
        subscription,
        first: first.into(),
    })
}

/// The headers of every event stream.
pub fn stream_headers(headers: &mut http::HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx (and proxies that copy it) not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// `GET /stream` through hyper: the stream as a chunked response body.
pub async fn subscribe<B>(
    app: &App,
    req: &Request<B>,
    client: Client,
) -> Result<Response<Body>, ApiError> {
    let (headers, open) = app.open_stream(req, client).await?;
    let body = sse_body(
        open.subscription,
        open.first,
        app.config.keepalive,
        app.metrics.clone(),
    );
    let mut response = Response::new(body);
    *response.headers_mut() = headers;
    Ok(response)
}

struct StreamState {
    subscription: Subscription,
    preamble: Option<Bytes>,
    keepalive: Duration,
    /// One timer per stream, re-armed only when it fires: a comment every `keepalive` whatever
    /// the traffic, instead of a new timer for every frame on a busy stream.
    keepalive_timer: Pin<Box<tokio::time::Sleep>>,
    metrics: Arc<Metrics>,
}

fn sse_body(
    subscription: Subscription,
    preamble: Bytes,
    keepalive: Duration,
    metrics: Arc<Metrics>,
) -> Body {
    let state = StreamState {
        subscription,
        preamble: Some(preamble),
        keepalive,
        keepalive_timer: Box::pin(tokio::time::sleep(keepalive)),
        metrics,
    };
    let frames = stream::unfold(state, |mut state| async move {
        if let Some(preamble) = state.preamble.take() {
            state.metrics.stream_bytes(preamble.len());
            return Some((Ok::<_, Infallible>(Frame::data(preamble)), state));
        }
        let frame = tokio::select! {
            frame = state.subscription.recv() => {
                let frame = frame?;
                state.metrics.delivered(frame.len());
                frame
            }
            _ = &mut state.keepalive_timer => {
                let next = tokio::time::Instant::now() + state.keepalive;
                state.keepalive_timer.as_mut().reset(next);
                state.metrics.stream_bytes(sse::KEEPALIVE.len());
                sse::KEEPALIVE
            }
        };
        Some((Ok(Frame::data(frame)), state))
    });
    StreamBody::new(frames).boxed_unsync()
}
