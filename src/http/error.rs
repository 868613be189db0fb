//! The HTTP boundary's error type, and the one place errors become responses: a status code
//! and a one-line JSON body `{"error": "..."}`.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::{full, Body};
use crate::hub::HubError;
use crate::limits::ConnectionRefusal;
use crate::names::NameError;

/// Everything a request can be refused for.
#[derive(Debug)]
pub enum ApiError {
    /// Malformed request: bad name, bad query, body not UTF-8.
    BadRequest(String),
    NotFound,
    /// The path exists but not for this method; carries the `Allow` header value.
    MethodNotAllowed(&'static str),
    /// Body over `--max-body` bytes.
    PayloadTooLarge(usize),
    /// A body whose JSON-escaped frame would pass this many bytes (`sse::max_tail_len`).
    EscapedTooLarge(usize),
    /// A browser request from an origin the policy does not allow.
    Forbidden(String),
    /// A publish whose peer token is missing (under `--strict-peers`) or not valid for the
    /// channel.
    PeerRefused(&'static str),
    /// Too many publishes from this address; retry after this long.
    TooManyRequests(std::time::Duration),
    /// The body did not arrive within `--body-timeout`.
    BodyTimeout,
    /// A room already holds its capacity of peers.
    RoomFull(usize),
    /// A stream asked for a peer id held under another claim without proving it is that claim.
    PeerTaken(String),
    /// The channel holds `--max-subscribers` streams.
    ChannelFull(String),
    /// `--max-channels` channels exist; retry later.
    TooManyChannels(String),
    /// The relay cannot take this now (Redis unreachable); retry.
    Unavailable(String),
    /// `--max-connections` connections are open (refused at accept time).
    TooManyConnections(usize),
    /// `--max-connections-per-ip` connections are open from this address.
    TooManyFromAddress(usize),
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<ConnectionRefusal> for ApiError {
    fn from(refusal: ConnectionRefusal) -> Self {
        match refusal {
            ConnectionRefusal::Total(max) => ApiError::TooManyConnections(max),
            ConnectionRefusal::PerIp(max) => ApiError::TooManyFromAddress(max),
        }
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::RoomFull { capacity } => ApiError::RoomFull(capacity),
            HubError::TooManySubscribers { .. } => ApiError::ChannelFull(e.to_string()),
            HubError::TooManyChannels { .. } => ApiError::TooManyChannels(e.to_string()),
            HubError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            HubError::Reserved => ApiError::BadRequest(e.to_string()),
            HubError::PeerTaken => ApiError::PeerTaken(e.to_string()),
            HubError::NotCurrent => ApiError::PeerRefused(crate::hub::NOT_CURRENT),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) | ApiError::EscapedTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Forbidden(_) | ApiError::PeerRefused(_) => StatusCode::FORBIDDEN,
            ApiError::RoomFull(_) | ApiError::ChannelFull(_) | ApiError::PeerTaken(_) => {
                StatusCode::CONFLICT
            }
            ApiError::Unavailable(_) | ApiError::TooManyChannels(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::TooManyRequests(_) | ApiError::TooManyFromAddress(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::TooManyConnections(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::BadRequest(why)
            | ApiError::Forbidden(why)
            | ApiError::ChannelFull(why)
            | ApiError::PeerTaken(why)
            | ApiError::TooManyChannels(why)
            | ApiError::Unavailable(why) => why.clone(),
            ApiError::PeerRefused(why) => (*why).into(),
            ApiError::NotFound => "not found".into(),
            ApiError::MethodNotAllowed(allow) => format!("method not allowed; use {allow}"),
            ApiError::PayloadTooLarge(max) => format!("body larger than {max} bytes"),
            ApiError::EscapedTooLarge(max) => format!(
                "body escapes to more than {max} bytes of JSON (a control character takes 6)"
            ),
            ApiError::RoomFull(_) => "room is full".into(),
            ApiError::TooManyRequests(_) => "too many messages from this address; slow down".into(),
            ApiError::BodyTimeout => "the body took too long to arrive".into(),
            ApiError::TooManyConnections(max) => {
                format!("server is at its limit of {max} connections")
            }
            ApiError::TooManyFromAddress(max) => {
                format!("too many connections from your address (limit {max})")
            }
        }
    }

    /// A fixed word for `/metrics` (`sigrelay_refusals_total{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge(_) | ApiError::EscapedTooLarge(_) => "body_too_large",
            ApiError::Forbidden(_) => "forbidden_origin",
            ApiError::PeerRefused(_) => "forbidden_peer",
            ApiError::TooManyRequests(_) => "rate_limited",
            ApiError::BodyTimeout => "body_timeout",
            ApiError::RoomFull(_) => "room_full",
            ApiError::PeerTaken(_) => "peer_taken",
            ApiError::ChannelFull(_) => "too_many_subscribers",
            ApiError::TooManyChannels(_) => "too_many_channels",
            ApiError::Unavailable(_) => "backend_unavailable",
            ApiError::TooManyConnections(_) => "too_many_connections",
            ApiError::TooManyFromAddress(_) => "too_many_per_ip",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let (status, headers, body) = self.into_parts();
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }

    /// Status, header fields and the one-line JSON body: what [`ApiError::into_response`]
    /// sends through hyper, and what `http::fast` writes itself.
    pub fn into_parts(self) -> (StatusCode, HeaderMap, Bytes) {
        let mut body = serde_json::json!({ "error": self.message() });
        if let ApiError::RoomFull(capacity) = self {
            body["capacity"] = capacity.into();
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            ApiError::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::TooManyRequests(wait) => {
                let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            ApiError::Unavailable(_)
            | ApiError::TooManyChannels(_)
            | ApiError::TooManyConnections(_)
            | ApiError::TooManyFromAddress(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        (self.status(), headers, format!("{body}\n").into())
    }
}
