//! `POST /channel/send/NAME/TYPE`: validates the target and body, publishes, and answers
//! `{"id": N, "subscribers": N}`. Nothing invalid is ever broadcast.

use http::{header, Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::{pages, App, Body};
use crate::error::ApiError;
use crate::names::{percent_decode, ChannelName, EventType};
use crate::sse::MessageTail;

/// `rest` is the path after `/channel/send/`: exactly `NAME/TYPE`, each percent-decoded.
pub async fn publish(
    app: &App,
    rest: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (raw_channel, raw_type) = rest
        .split_once('/')
        .filter(|(_, t)| !t.contains('/'))
        .ok_or_else(|| ApiError::BadRequest("expected /channel/send/NAME/TYPE".into()))?;
    let channel = ChannelName::parse(&percent_decode(raw_channel, false)?)?;
    let event_type = EventType::parse(&percent_decode(raw_type, false)?)?;

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
    let body = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("body is not valid UTF-8".into()))?;

    let tail = MessageTail::new(event_type.as_str(), body);
    let published = app.hub.publish(&channel, &tail).await?;
    Ok(pages::json(
        format!(
            "{{\"id\": {}, \"subscribers\": {}}}\n",
            published.id, published.subscribers
        )
        .into(),
    ))
}
