//! sigrelay: browser video chat in one binary. It serves the call pages and relays WebRTC
//! signaling between browsers over Server-Sent Events, speaking the wire protocol of the
//! Flask + flask-sse project it replaces (`GET /stream?channel=NAME`,
//! `POST /channel/send/NAME/TYPE`), with replay of missed messages and no database.
//!
//! # Layout
//! Dependencies point one way: `main → server → http → {hub, sse, assets, names} → {config, error}`.
//! - [`cli`] / [`config`]: the raw command line, and the validated [`Config`] built from it.
//! - [`shutdown`]: SIGINT/SIGTERM → one `CancellationToken`.
//! - [`server`]: accept loops, TLS handshakes, hyper connections, graceful drain; [`tls`]: the
//!   certificate (given, or generated once and reused) and rustls settings.
//! - [`http`]: the route table and the endpoints; [`error`]: errors → status + JSON, in one place.
//! - [`ice`]: built-in STUN/TURN (a packet filter in front of the `turn` crate: quotas,
//!   forbidden peers, bounded unauthenticated traffic) and the TURN credentials of `/config`.
//! - [`limits`]: connections per client and in total, publishes per client per second.
//! - [`metrics`]: the Prometheus registry behind `GET /metrics`.
//! - [`peers`]: peer claims and their tokens (a room's place in the hub keeps its claim; takeovers
//!   and stamped publishes present the token), anonymous ids (`--strict-peers`, `--peer-grace`).
//! - [`hub`]: channels, fan-out, history, presence; knows nothing of HTTP.
//! - [`trim`]: hands freed memory back to the OS after many channels were removed.
//! - [`sse`]: frame encoding; [`names`]: validated channel/type/peer names; [`assets`]: the
//!   embedded pages.

pub mod assets;
pub mod cli;
pub mod config;
pub mod error;
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
pub mod tls;
pub mod trim;

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
    let app = http::App::new(hub, config, &peer_secret);
    server::serve(listeners.http, app, shutdown).await;
    if let Some(ice) = ice {
        ice.close().await;
    }
    Ok(())
}
