//! `POST /channel/send/NAME/TYPE`: validates the target and body, publishes, and answers
//! `{"id": N, "subscribers": N}`. Nothing invalid is ever broadcast.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::{origin, pages, App, Body, PublishAdmission};
use crate::http::error::ApiError;
use crate::names::{ChannelName, PeerId, PublishTarget};
use crate::peers::{is_anonymous, Claim};
use crate::sse::{self, MessageTail};

/// `POST /channel/send/...` through hyper, once admitted from its head: reads the body
/// (refusing a declared oversize one before reading a byte), publishes, answers.
pub async fn publish(
    app: &App,
    admitted: PublishAdmission,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let max = app.config.max_body;
    // Refuse a declared oversize body before reading a byte of it.
    if let Some(length) = req.headers().get(header::CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ApiError::BadRequest("invalid Content-Length".into()))?;
        if length > max as u64 {
            return Err(ApiError::PayloadTooLarge(max));
        }
    }
    // A chunked (or lying) body is cut off at the limit while it is read.
    let reading = Limited::new(req.into_body(), max).collect();
    let body = tokio::time::timeout(app.config.body_timeout, reading)
        .await
        .map_err(|_| ApiError::BodyTimeout)?
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                ApiError::PayloadTooLarge(max)
            } else {
                ApiError::BadRequest(format!("could not read the body: {e}"))
            }
        })?
        .to_bytes();
    let published = app.publish_admitted(admitted, &body).await?;
    let mut response = pages::json(published.json);
    if let Some(origin) = &published.cors_origin {
        response.headers_mut().extend(origin::cors_fields(origin));
    }
    Ok(response)
}

/// What every publish does once its sender is known and its body read, whichever way it came
/// (hyper, or `http::fast`): check the body, encode the event once, publish. Gives the
/// answer's JSON, `{"id": N, "subscribers": N}`.
pub async fn publish_body(
    app: &App,
    target: PublishTarget,
    from: Option<Sender>,
    to: Option<PeerId>,
    body: &[u8],
) -> Result<Bytes, ApiError> {
    let PublishTarget {
        channel,
        event_type,
    } = target;
    let body = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("body is not valid UTF-8".into()))?;

    let tail = MessageTail::from_peer(
        event_type.as_str(),
        body,
        from.as_ref().map(|s| s.peer.as_str()),
    );
    let limit = sse::max_tail_len(app.config.max_body);
    if tail.as_bytes().len() > limit {
        return Err(ApiError::EscapedTooLarge(limit));
    }
    // A relay-given anonymous id has no place to check: only its stream ever had its token.
    let current = from
        .as_ref()
        .filter(|s| !is_anonymous(&s.peer))
        .map(|s| (&s.peer, s.claim));
    let published = app
        .hub
        .publish(&channel, &tail, current, to.as_ref())
        .await?;
    app.metrics.published();
    let mut answer = Vec::with_capacity(64);
    answer.extend_from_slice(b"{\"id\": ");
    sse::put_decimal(&mut answer, published.id);
    answer.extend_from_slice(b", \"subscribers\": ");
    sse::put_decimal(&mut answer, published.subscribers as u64);
    answer.extend_from_slice(b"}\n");
    Ok(answer.into())
}

/// The peer headers, parsed once (a `&str` name would be parsed and checked on every lookup).
pub const PEER_HEADER: HeaderName = HeaderName::from_static("x-sigrelay-peer");
pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-sigrelay-token");
pub const TO_HEADER: HeaderName = HeaderName::from_static("x-sigrelay-to");

/// The addressee of a publish: `X-Sigrelay-To: PEER` or `?to=PEER` (one of them; both must
/// agree). Only that peer id's streams get the event (see `hub::Event::to`).
pub fn addressee<B>(req: &Request<B>) -> Result<Option<PeerId>, ApiError> {
    let header = req
        .headers()
        .get(&TO_HEADER)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest(format!("{TO_HEADER} is not ASCII")))
        })
        .transpose()?;
    let query = crate::names::query_value(req.uri().query().unwrap_or(""), "to")?;
    let to = match (header, query.as_deref()) {
        (None, None) => return Ok(None),
        (Some(one), None) | (None, Some(one)) => one,
        (Some(a), Some(b)) if a == b => a,
        _ => {
            return Err(ApiError::BadRequest(
                "X-Sigrelay-To and ?to= name different peers".into(),
            ))
        }
    };
    Ok(Some(PeerId::parse(to)?))
}

/// A publish's sender whose token's signature checked out: the peer id, and the claim the
/// token was issued for (the hub checks that it is still the room's current one).
pub struct Sender {
    pub peer: PeerId,
    pub claim: Claim,
}

/// The sender of a publish: the peer whose token (from its stream's `welcome` event) came in
/// `X-Sigrelay-Peer` / `X-Sigrelay-Token`. Anonymous is allowed unless `--strict-peers`; a
/// token that does not fit the channel is refused either way (and one whose claim is no
/// longer current, by the hub), so a client that believes it is identified never has its
/// events go out unstamped.
pub fn sender(
    app: &App,
    channel: &ChannelName,
    headers: &HeaderMap,
) -> Result<Option<Sender>, ApiError> {
    let text = |name: &HeaderName| {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| ApiError::BadRequest(format!("{name} is not ASCII")))
            })
            .transpose()
    };
    match (text(&PEER_HEADER)?, text(&TOKEN_HEADER)?) {
        (None, None) if app.config.strict_peers => Err(ApiError::PeerRefused(
            "a peer token for this channel is required",
        )),
        (None, None) => Ok(None),
        (Some(peer), Some(token)) => {
            let peer = PeerId::parse(peer)?;
            match app.peers.verify(channel, &peer, token) {
                Some(claim) => Ok(Some(Sender { peer, claim })),
                None => Err(ApiError::PeerRefused(
                    "the peer token is not valid for this channel",
                )),
            }
        }
        _ => Err(ApiError::BadRequest(
            "X-Sigrelay-Peer and X-Sigrelay-Token must be sent together".into(),
        )),
    }
}
