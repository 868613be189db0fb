//! Static pages and the client configuration: embedded files with ETag revalidation, the call
//! page for any valid room URL, `GET /config`, and `/trust` (the local CA's downloads).

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};

use super::forwarded::View;
use super::{full, Body};
use crate::assets;
use crate::http::error::ApiError;
use crate::ice::IceSettings;
use crate::names::{percent_decode, query_value, ChannelName};
use crate::tls::Ca;
use crate::trust;

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

/// The headers of every JSON answer, here and in a direct publish's (written out by hand
/// there, so they are listed once).
pub const JSON_HEADERS: [(header::HeaderName, &str); 2] = [
    (header::CONTENT_TYPE, "application/json"),
    (header::CACHE_CONTROL, "no-store"),
];

/// A JSON response that must not be cached.
pub fn json(body: Bytes) -> Response<Body> {
    let mut response = Response::new(full(body));
    let headers = response.headers_mut();
    for (name, value) in JSON_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Longest text `/qr.svg` encodes; a room link is far shorter.
const MAX_QR_TEXT: usize = 1024;

/// `GET /qr.svg?text=...`: a QR code drawn by the server, so the call page can show its room
/// link as a code a phone scans, with no CDN.
pub fn qr_svg<B>(req: &Request<B>) -> Result<Response<Body>, ApiError> {
    let text = query_value(req.uri().query().unwrap_or(""), "text")?;
    let text = text.ok_or_else(|| ApiError::BadRequest("missing ?text=".into()))?;
    if text.is_empty() || text.len() > MAX_QR_TEXT {
        return Err(ApiError::BadRequest(format!(
            "text must be 1 to {MAX_QR_TEXT} bytes"
        )));
    }
    let code = qrcode::QrCode::new(text.as_bytes())
        .map_err(|e| ApiError::BadRequest(format!("cannot encode as a QR code: {e}")))?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .build();
    let mut response = Response::new(full(svg));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600"),
    );
    Ok(response)
}

/// Plain http on the https port: send the browser to the same URL over https (307, so a
/// browser does not remember it should the server later run without TLS).
pub fn to_https<B>(req: &Request<B>) -> Result<Response<Body>, ApiError> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']))
        .ok_or_else(|| ApiError::BadRequest("this port speaks https; send a Host header".into()))?;
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = HeaderValue::from_str(&format!("https://{host}{target}"))
        .map_err(|_| ApiError::BadRequest("invalid Host header".into()))?;
    let mut response = Response::new(full("this port speaks https\n"));
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// `GET /config[?room=NAME]`: the `iceServers` for this page, with fresh TURN credentials, at
/// the host the page was loaded from (`seen`: behind a trusted proxy, the proxy's word).
pub fn client_config<B>(
    ice: &IceSettings,
    req: &Request<B>,
    seen: &View,
) -> Result<Response<Body>, ApiError> {
    let room = match query_value(req.uri().query().unwrap_or(""), "room")? {
        Some(room) => ChannelName::parse(&room)?,
        None => ChannelName::parse("sigrelay")?,
    };
    let host = seen.page_host();
    let servers = crate::ice::ice_servers(ice, host.as_deref(), room.as_str());
    Ok(json(
        serde_json::json!({ "iceServers": servers })
            .to_string()
            .into(),
    ))
}

/// Whether `path` belongs to `/trust`, which is served over plain http on the https port too:
/// a phone must fetch the CA before it can trust https.
pub fn is_trust_path(path: &str) -> bool {
    path == "/trust" || path.starts_with("/trust/")
}

/// `/trust` and below: the page (and its script and style), its facts as JSON, and the CA as
/// `.crt` (DER), `.pem` and an iOS `.mobileconfig`. Without a local CA (no `--tls`, or
/// `--cert`) the page says so and the downloads are 404.
pub fn trust<B>(path: &str, ca: Option<&Ca>, req: &Request<B>) -> Result<Response<Body>, ApiError> {
    let rest = path.strip_prefix("/trust").unwrap_or_default();
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let download = |bytes: Vec<u8>, content_type: &'static str, name: &str| {
        let mut response = Response::new(full(bytes));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
        response
    };
    let need_ca = || ca.ok_or(ApiError::NotFound);
    match rest {
        "" => file("trust.html", req),
        "trust.js" | "style.css" | "favicon.svg" => file(rest, req),
        "info" => Ok(json(format!("{}\n", trust::info(ca)).into())),
        trust::CRT_NAME => Ok(download(
            need_ca()?.der.to_vec(),
            trust::CRT_TYPE,
            trust::CRT_NAME,
        )),
        "sigrelay-ca.pem" => Ok(download(
            need_ca()?.pem.clone().into_bytes(),
            "application/x-pem-file",
            "sigrelay-ca.pem",
        )),
        trust::PROFILE_NAME => Ok(download(
            trust::mobileconfig(need_ca()?).into_bytes(),
            trust::PROFILE_TYPE,
            trust::PROFILE_NAME,
        )),
        _ => Err(ApiError::NotFound),
    }
}
