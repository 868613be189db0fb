//! The origin policy for the relay endpoints (`/stream`, `/channel/send/...`).
//!
//! A `text/plain` POST is a CORS "simple request": any page a student visits could make their
//! browser publish into a room without a preflight. So a request that carries an `Origin`
//! other than this server's own is refused with 403, unless `--cors-origin` lists it (or `*`).
//! Requests without `Origin` (curl, server-side clients, same-origin EventSource) are not
//! browser cross-site requests and pass. Allowed origins get proper CORS answers, preflight
//! included, so a page served elsewhere can use the relay.

use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};

use super::forwarded::View;
use super::{full, Body};
use crate::http::error::ApiError;

/// What the policy decided for an allowed request.
pub enum Verdict {
    /// No `Origin`, or our own: nothing to add.
    SameOrigin,
    /// An allowed foreign origin: echo it in `Access-Control-Allow-Origin`.
    Cors(HeaderValue),
}

/// Checks the request's `Origin` against our own (as `seen` says: behind a trusted proxy, the
/// origin the proxy served the page from) and the allowed list.
pub fn check<B>(req: &Request<B>, seen: &View, allowed: &[String]) -> Result<Verdict, ApiError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(Verdict::SameOrigin);
    };
    let text = origin
        .to_str()
        .map_err(|_| ApiError::Forbidden("invalid Origin header".into()))?;
    if seen.is_own_origin(text) {
        return Ok(Verdict::SameOrigin);
    }
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(text))
    {
        return Ok(Verdict::Cors(origin.clone()));
    }
    Err(ApiError::Forbidden(format!(
        "origin {text} is not allowed (see --cors-origin)"
    )))
}

impl Verdict {
    /// The foreign origin to echo, if any.
    pub fn into_allowed_origin(self) -> Option<HeaderValue> {
        match self {
            Verdict::SameOrigin => None,
            Verdict::Cors(origin) => Some(origin),
        }
    }
}

/// The CORS answer fields for an allowed foreign origin (`Vary: Origin` with them: the answer
/// depends on it). The one place they are written: [`decorate`] puts them in a header map,
/// `http::fast` writes them straight out.
pub fn cors_fields(origin: &HeaderValue) -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()),
        (header::VARY, HeaderValue::from_static("Origin")),
    ]
}

/// Adds the CORS answer fields for an allowed foreign origin.
pub fn decorate(headers: &mut HeaderMap, verdict: &Verdict) {
    if let Verdict::Cors(origin) = verdict {
        headers.extend(cors_fields(origin));
    }
}

/// The answer to a preflight (`OPTIONS`) from an allowed origin.
pub fn preflight(verdict: &Verdict, methods: &'static str) -> Response<Body> {
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    decorate(headers, verdict);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "content-type, last-event-id, x-sigrelay-peer, x-sigrelay-token, x-sigrelay-to",
        ),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}
