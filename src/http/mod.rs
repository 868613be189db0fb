//! The route table: one `match` on (method, path) that hands each request to its endpoint
//! module and turns every [`ApiError`] into a response in one place.
//!
//! - `forwarded.rs` the real client and the page's origin behind a `--trusted-proxy`, decided
//!   once for every path below
//! - `origin.rs`  who may use the relay endpoints from a browser (403 / CORS)
//! - `stream.rs`  `GET /stream?channel=NAME` (Server-Sent Events)
//! - `publish.rs` `POST /channel/send/NAME/TYPE`
//! - `fast/`      both of those served on the socket outside hyper, for plain-http connections
//!   (`fast/mod.rs` is the contract: what is served there, its invariants, what hyper gets)
//! - `pages.rs`   `GET /`, `/check`, `/r/ROOM`, `/assets/...`, `/config`, `/qr.svg`, the https redirect;
//!   `/healthz` and `/metrics` are answered here
//!
//! Each relay endpoint has one admission sequence, here in [`App`], that the route and the
//! fast path both call: [`App::open_stream`] and [`App::admit_publish`].

pub mod error;
pub mod fast;
pub mod forwarded;
mod origin;
mod pages;
mod publish;
mod stream;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;

use crate::http::error::ApiError;
use crate::hub::Hub;
use crate::limits::RateLimiter;
use crate::metrics::{self, Metrics};
use crate::names::PublishTarget;
use crate::peers::PeerTokens;
use crate::Config;

/// Every response body: a whole buffer, or an endless SSE stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A complete body from anything that becomes `Bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// The `host[:port]` the client addressed: the Host header, or the URI's authority under
/// HTTP/2 (which carries `:authority` instead).
pub fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// A publish that went out: the JSON answer, and the origin to echo in
/// `Access-Control-Allow-Origin` when a listed foreign origin sent it.
pub struct PublishedAnswer {
    pub json: Bytes,
    pub cors_origin: Option<http::HeaderValue>,
}

/// A publish admitted from its head ([`App::admit_publish`]): what publishing it needs.
pub struct PublishAdmission {
    verdict: origin::Verdict,
    target: PublishTarget,
    from: Option<publish::Sender>,
    to: Option<crate::names::PeerId>,
}

/// Who is asking, and over what.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub addr: std::net::SocketAddr,
    pub transport: Transport,
}

/// How a connection reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
    /// Plain http on a port that serves https: every request is redirected.
    PlainOnTlsPort,
}

/// What every request handler shares: built once at start-up, cloned per connection.
#[derive(Clone)]
pub struct App {
    pub hub: Arc<Hub>,
    pub config: Arc<Config>,
    /// Publishes per client address.
    pub post_limiter: Arc<RateLimiter>,
    pub metrics: Arc<Metrics>,
    /// Signs the peer tokens streams hand out and checks the ones publishes present.
    pub peers: Arc<PeerTokens>,
    /// TURN over TCP, when on: connections that open with a STUN message go there.
    pub turn_tcp: Option<Arc<crate::ice::tcp::TcpMux>>,
}

impl App {
    /// `peer_secret` signs peer tokens: `--peer-secret`, or the one `run` agreed on.
    pub fn new(hub: Arc<Hub>, config: Arc<Config>, peer_secret: &str) -> Self {
        let post_limiter = Arc::new(RateLimiter::new(config.post_rate, config.post_burst));
        let metrics = Arc::new(Metrics::new(hub.counters_handle()));
        let peers = Arc::new(PeerTokens::new(peer_secret));
        App {
            hub,
            config,
            post_limiter,
            metrics,
            peers,
            turn_tcp: None,
        }
    }

    /// The real client and the page's origin ([`forwarded::view`]): every path asks here.
    fn view<'a, B>(&'a self, req: &'a Request<B>, client: Client) -> forwarded::View<'a> {
        forwarded::view(
            req,
            client,
            &self.config.trusted_proxies,
            self.config.public_url.as_ref(),
        )
    }

    /// `GET /healthz`: liveness and readiness plus counts (never names: room names are not
    /// listed anywhere). Answers 503 with `"status": "degraded"` while the hub cannot serve
    /// (Redis lost), so a load balancer sends new clients to another instance meanwhile.
    fn health(&self) -> Response<Body> {
        let readiness = self.hub.readiness();
        let mut body = serde_json::json!({
            "status": if readiness.unavailable.is_some() { "degraded" } else { "ok" },
            "live": true,
            "ready": readiness.unavailable.is_none(),
            "backend": readiness.backend,
            "channels": self.hub.channel_count(),
            "subscribers": self.hub.subscriber_count(),
        });
        if let Some(reason) = &readiness.unavailable {
            body["reason"] = reason.as_str().into();
        }
        let mut response = pages::json(format!("{body}\n").into());
        if readiness.unavailable.is_some() {
            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        response
    }

    /// `GET /metrics`: Prometheus text, counts only (no label ever carries a room name).
    fn metrics_page(&self) -> Response<Body> {
        let mut response = Response::new(full(self.metrics.render(&self.hub)));
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(metrics::CONTENT_TYPE),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        response
    }

    /// The origin policy (`origin.rs`) for a request seen as `seen`, with `--cors-origin`.
    fn origin_verdict<B>(
        &self,
        req: &Request<B>,
        seen: &forwarded::View,
    ) -> Result<origin::Verdict, ApiError> {
        origin::check(req, seen, &self.config.cors_origins)
    }

    /// Any method of a relay endpoint other than its own (`allow` names them): a preflight
    /// answer for `OPTIONS`, 405 otherwise; either way only past the origin check.
    fn preflight_or_refuse<B>(
        &self,
        req: &Request<B>,
        client: Client,
        allow: &'static str,
    ) -> Result<Response<Body>, ApiError> {
        let verdict = self.origin_verdict(req, &self.view(req, client))?;
        match *req.method() {
            Method::OPTIONS => Ok(origin::preflight(&verdict, allow)),
            _ => Err(ApiError::MethodNotAllowed(allow)),
        }
    }

    /// The admission of `GET /stream`, for the route and `http::fast` alike: Host, origin,
    /// then the stream's own checks and the subscription. Gives the response head's fields
    /// and the open stream.
    pub async fn open_stream<B>(
        &self,
        req: &Request<B>,
        client: Client,
    ) -> Result<(http::HeaderMap, stream::OpenStream), ApiError> {
        require_host(req)?;
        let verdict = self.origin_verdict(req, &self.view(req, client))?;
        let open = stream::open(self, req).await?;
        let mut headers = http::HeaderMap::new();
        stream::stream_headers(&mut headers);
        origin::decorate(&mut headers, &verdict);
        Ok((headers, open))
    }

    /// The admission of `POST /channel/send/...`, for the route and `http::fast` alike, from
    /// the request head alone (before any body byte is read): Host, origin, the sender
    /// client's publish rate (the real client behind a `--trusted-proxy`), the target, the
    /// peer token, the addressee (`to`).
    pub fn admit_publish<B>(
        &self,
        req: &Request<B>,
        client: Client,
    ) -> Result<PublishAdmission, ApiError> {
        require_host(req)?;
        // The real client and the page's origin, behind a trusted proxy too.
        let seen = self.view(req, client);
        let verdict = self.origin_verdict(req, &seen)?;
        self.post_limiter
            .check(seen.client)
            .map_err(ApiError::TooManyRequests)?;
        let rest = req.uri().path().strip_prefix("/channel/send/");
        let target = PublishTarget::parse(rest.ok_or(ApiError::NotFound)?)?;
        let from = publish::sender(self, &target.channel, req.headers())?;
        let to = publish::addressee(req)?;
        Ok(PublishAdmission {
            verdict,
            target,
            from,
            to,
        })
    }

    /// Publishes an admitted request's body, however it was read.
    pub async fn publish_admitted(
        &self,
        admitted: PublishAdmission,
        body: &[u8],
    ) -> Result<PublishedAnswer, ApiError> {
        if body.len() > self.config.max_body {
            return Err(ApiError::PayloadTooLarge(self.config.max_body));
        }
        let json =
            publish::publish_body(self, admitted.target, admitted.from, admitted.to, body).await?;
        Ok(PublishedAnswer {
            json,
            cors_origin: admitted.verdict.into_allowed_origin(),
        })
    }

    /// The service: route, run, and map errors. Never fails at the hyper level.
    pub async fn handle(
        self,
        req: Request<Incoming>,
        client: Client,
    ) -> Result<Response<Body>, Infallible> {
        let started = std::time::Instant::now();
        let route = metrics::route_of(req.uri().path());
        // Copied only when they will be logged: this runs for every request.
        let logged = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| (req.method().clone(), req.uri().path().to_owned()));
        let result = match client.transport {
            // `/trust` is what a phone opens before it trusts https, so it stays plain.
            Transport::PlainOnTlsPort if !pages::is_trust_path(req.uri().path()) => {
                pages::to_https(&req)
            }
            _ => self.route(req, client).await,
        };
        let response = result.unwrap_or_else(|e| {
            self.metrics.refused(e.reason());
            e.into_response()
        });
        self.metrics.observe(route, started.elapsed());
        if let Some((method, path)) = logged {
            tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
        }
        Ok(response)
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        client: Client,
    ) -> Result<Response<Body>, ApiError> {
        require_host(&req)?;
        let path = req.uri().path();
        let is_get = matches!(*req.method(), Method::GET | Method::HEAD);

        if path == "/stream" {
            return match *req.method() {
                Method::GET => stream::subscribe(self, &req, client).await,
                _ => self.preflight_or_refuse(&req, client, "GET, OPTIONS"),
            };
        }
        if path.starts_with("/channel/send/") {
            return match *req.method() {
                Method::POST => {
                    let admitted = self.admit_publish(&req, client)?;
                    publish::publish(self, admitted, req).await
                }
                _ => self.preflight_or_refuse(&req, client, "POST, OPTIONS"),
            };
        }
        let page = match path {
            "/" => pages::file("index.html", &req),
            "/check" => pages::file("check.html", &req),
            "/config" => pages::client_config(&self.config.ice, &req, &self.view(&req, client)),
            "/healthz" => Ok(self.health()),
            "/metrics" => Ok(self.metrics_page()),
            "/qr.svg" => pages::qr_svg(&req),
            _ if pages::is_trust_path(path) => {
                let ca = self.config.tls.as_ref().and_then(|t| t.ca.as_ref());
                pages::trust(path, ca, &req)
            }
            _ if path.starts_with("/r/") => pages::room(&path[3..], &req),
            _ if path.starts_with("/assets/") => pages::file(&path[8..], &req),
            _ => Err(ApiError::NotFound),
        };
        if !is_get {
            // Only reached for paths that exist: an unknown path is 404 whatever the method.
            return match page {
                Err(ApiError::NotFound) => Err(ApiError::NotFound),
                _ => Err(ApiError::MethodNotAllowed("GET, HEAD")),
            };
        }
        page
    }
}

/// RFC 9112 3.2: an HTTP/1.1 request without Host is malformed. (HTTP/2 carries :authority
/// instead; HTTP/1.0 predates Host.)
fn require_host<B>(req: &Request<B>) -> Result<(), ApiError> {
    if req.version() == http::Version::HTTP_11 && !req.headers().contains_key(http::header::HOST) {
        return Err(ApiError::BadRequest("missing Host header".into()));
    }
    Ok(())
}
