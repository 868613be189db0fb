//! Static pages and the client configuration: embedded files with ETag revalidation, the call
//! page for any valid room URL, and `GET /config`.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};

use super::{full, Body};
use crate::assets;
use crate::error::ApiError;
use crate::names::{percent_decode, ChannelName};

/// An embedded file, or `304 Not Modified` when the client's `If-None-Match` matches its ETag.
pub fn file<B>(path: &str, req: &Request<B>) -> Result<Response<Body>, ApiError> {
    let path = percent_decode(path, false).map_err(|_| ApiError::NotFound)?;
    let asset = assets::get(&path).ok_or(ApiError::NotFound)?;
    let etag = HeaderValue::from_str(&asset.etag).expect("hex ETag is a valid header");
    let not_modified = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == asset.etag
        });
    let mut response = if not_modified {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(full(Bytes::from(asset.bytes.into_owned())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&asset.content_type).expect("mime type is a valid header"),
        );
        r
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag);
    // Revalidate every time: cheap with the ETag, and a new binary's pages show at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

/// `/r/ROOM`: the call page, for any valid room name (the page reads the name from its URL).
pub fn room<B>(raw: &str, req: &Request<B>) -> Result<Response<Body>, ApiError> {
    let name = percent_decode(raw, false)?;
    ChannelName::parse(&name)?;
    file("call.html", req)
}

/// A JSON response that must not be cached.
pub fn json(body: Bytes) -> Response<Body> {
    let mut response = Response::new(full(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
