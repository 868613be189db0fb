//! The HTTP boundary's error type, and the one place errors become responses: a status code
//! and a one-line JSON body `{"error": "..."}`.

use http::{header, HeaderValue, Response, StatusCode};

use crate::http::{full, Body};
use crate::hub::HubError;
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
    /// A browser request from an origin the policy does not allow.
    Forbidden(String),
    /// Too many publishes from this address; retry after this long.
    TooManyRequests(std::time::Duration),
    /// The body did not arrive within `--body-timeout`.
    BodyTimeout,
    /// A room already holds its capacity of peers.
    RoomFull(usize),
    /// The channel holds `--max-subscribers` streams.
    ChannelFull(String),
    /// The relay cannot take this now (`--max-channels` reached, Redis unreachable); retry.
    Unavailable(String),
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::RoomFull { capacity } => ApiError::RoomFull(capacity),
            HubError::TooManySubscribers { .. } => ApiError::ChannelFull(e.to_string()),
            HubError::TooManyChannels { .. } | HubError::Unavailable(_) => {
                ApiError::Unavailable(e.to_string())
            }
            HubError::Reserved => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RoomFull(_) | ApiError::ChannelFull(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::BadRequest(why)
            | ApiError::Forbidden(why)
            | ApiError::ChannelFull(why)
            | ApiError::Unavailable(why) => why.clone(),
            ApiError::NotFound => "not found".into(),
            ApiError::MethodNotAllowed(allow) => format!("method not allowed; use {allow}"),
            ApiError::PayloadTooLarge(max) => format!("body larger than {max} bytes"),
            ApiError::RoomFull(_) => "room is full".into(),
            ApiError::TooManyRequests(_) => "too many messages from this address; slow down".into(),
            ApiError::BodyTimeout => "the body took too long to arrive".into(),
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut body = serde_json::json!({ "error": self.message() });
        if let ApiError::RoomFull(capacity) = self {
            body["capacity"] = capacity.into();
        }
        let mut response = Response::new(full(format!("{body}\n")));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
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
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
