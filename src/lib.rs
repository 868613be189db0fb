//! sigrelay: browser video chat in one binary. It serves the call pages and relays WebRTC
//! signaling between browsers over Server-Sent Events, speaking the wire protocol of the
//! Flask + flask-sse project it replaces (`GET /stream?channel=NAME`,
//! `POST /channel/send/NAME/TYPE`), with replay of missed messages and no database.
//!
//! # Layout
//! Each arrow reads "imports"; nothing imports back up the list, so there is no cycle:
//! - `main` → [`cli`], [`config`], [`tls`], [`shutdown`], then [`run`] → [`server`], [`http`],
//!   [`hub`], [`ice`], [`trim`].
//! - [`server`] → [`http`], [`ice`] (TURN over TCP shares the HTTP port), [`limits`], [`tls`]: accept loops, connection limits, TLS
//!   handshakes, hyper connections, graceful drain. Each plain-http connection goes to
//!   [`http::fast`] first (everything served outside hyper, with its contract), then to hyper.
//! - [`http`] → [`hub`], [`peers`], [`limits`], [`metrics`], [`assets`], [`sse`], [`names`],
//!   [`ice`] (credentials for `/config`), [`trust`] (the CA's downloads for `/trust`), [`config`]: the route table, one admission function
//!   per relay endpoint (called by the routes and by `http::fast` alike), the endpoints,
//!   `http::error` (every error → status + one-line JSON), `http::forwarded` (the real client
//!   behind a `--trusted-proxy`).
//! - [`metrics`] → [`hub`] (its counters): the Prometheus registry behind `GET /metrics`;
//!   [`trim`] → [`hub`]: hands freed memory back to the OS after many channels were removed.
//! - [`hub`] → [`peers`], [`sse`], [`names`]: channels, fan-out, history, presence, peer places;
//!   knows nothing of HTTP.
//! - [`ice`] → [`limits`], [`names`]: built-in STUN/TURN (a packet filter in front of the
//!   `turn` crate: quotas, forbidden peers, bounded unauthenticated traffic) and the TURN
//!   credentials of `/config`.
//! - [`trust`] → [`tls`]: the local CA as `.crt`, `.pem` and an iOS `.mobileconfig`.
//! - [`peers`] → [`names`]: peer claims and their tokens; [`sse`] → [`names`]: frame encoding.
//! - [`config`] → [`cli`] and the settings types of [`hub`], [`ice`], [`tls`]: the validated
//!   [`Config`]; nothing else sees the raw command line.
//! - Leaves: [`names`] (validated channel/type/peer names), [`assets`] (the embedded pages),
//!   [`tls`] (the certificate, given or issued by a local CA made once and kept; rustls
//!   settings), [`limits`]
//!   (connections per client and in total, token buckets), [`shutdown`] (SIGINT/SIGTERM → one
//!   `CancellationToken`), `sync` (the one `lock()`).

pub mod assets;
pub mod cli;
pub mod config;
pub mod http;
pub mod hub;
pub mod ice;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod peers;
pub mod server;
pub mod shutdown;
pub mod sse;
mod sync;
pub mod tls;
pub mod trim;
pub mod trust;

use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The version `--version`, the man page and the banner print: the package version, plus the
/// git commit when built from a checkout (see build.rs).
pub const VERSION: &str = env!("SIGRELAY_BUILD_VERSION");

/// The sockets the server runs on, bound by the caller (so `main` reports a busy port before
/// anything starts, and tests can bind port 0 and know the port).
pub struct Listeners {
    pub http: Vec<TcpListener>,
    /// STUN/TURN, when `--stun` or `--turn` is on.
    pub udp: Option<UdpSocket>,
}

impl From<Vec<TcpListener>> for Listeners {
    fn from(http: Vec<TcpListener>) -> Self {
        Listeners { http, udp: None }
    }
}

/// Runs the relay on already-bound listeners until `shutdown` is cancelled, then drains.
/// `main` and the tests both call this. Fails before serving anything when `--redis` is given
/// and Redis cannot be reached.
pub async fn run(
    listeners: impl Into<Listeners>,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), hub::HubError> {
    let listeners = listeners.into();
    let hub = hub::Hub::start(config.hub.clone(), config.redis.as_ref(), shutdown.clone()).await?;
    // Relays must never reach our own HTTP ports, even on a loopback peer.
    let http_ports: Vec<u16> = listeners
        .http
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.port())
        .collect();
    // Every instance on one Redis must accept the others' peer tokens: without --peer-secret,
    // they agree on one through Redis.
    let peer_secret = match &config.peer_secret {
        Some(secret) => secret.clone(),
        None => hub.agree_secret(ice::random_secret()).await?,
    };
    let mut config = config;
    // TURN over TCP rides on the first HTTP port (connections starting with STUN).
    if config.ice.turn {
        config.ice.tcp_port = http_ports.first().copied();
    }
    let config = Arc::new(config);
    let ice = match listeners.udp {
        Some(socket) => {
            match ice::IceServer::start(socket, &config.ice, config.max_connections, &http_ports)
                .await
            {
                Ok(server) => Some(server),
                Err(e) => {
                    tracing::error!(error = %e, "STUN/TURN could not start; continuing without it");
                    None
                }
            }
        }
        None => None,
    };
    tokio::spawn(trim::run(hub.clone(), shutdown.clone()));
    let mut app = http::App::new(hub, config, &peer_secret);
    app.turn_tcp = ice.as_ref().and_then(ice::IceServer::tcp);
    server::serve(listeners.http, app, shutdown).await;
    if let Some(ice) = ice {
        ice.close().await;
    }
    Ok(())
}
