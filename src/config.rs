//! The validated configuration. Built from the [`crate::cli::Cli`] (or directly by tests) and
//! checked once, so the rest of the code can trust every value.

use std::net::SocketAddr;
use std::time::Duration;

use crate::cli::Cli;
use crate::hub::{HubSettings, RedisFormat, RedisSettings};
use crate::ice::IceSettings;
use crate::tls::{CertSource, Tls};

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: Vec<SocketAddr>,
    pub hub: HubSettings,
    /// `--redis`: share rooms with other instances; `None` runs the in-memory hub alone.
    pub redis: Option<RedisSettings>,
    /// Largest accepted publish body, bytes.
    pub max_body: usize,
    /// Interval of keep-alive comments on idle streams.
    pub keepalive: Duration,
    /// The `retry:` a stream asks clients to wait before reconnecting, milliseconds.
    pub retry_ms: u64,
    /// Open connections allowed in total, and from one client address.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Publishes per client address per second, and the burst allowed above that.
    pub post_rate: f64,
    pub post_burst: f64,
    /// How long a client may take to send a publish body.
    pub body_timeout: Duration,
    /// Publishes without a valid peer token are refused (`--strict-peers`).
    pub strict_peers: bool,
    /// Signs peer tokens (`--peer-secret`); random per process unless given.
    pub peer_secret: String,
    /// Foreign origins allowed to use the relay from a browser (`*` for any).
    pub cors_origins: Vec<String>,
    /// Built-in STUN/TURN and the ICE servers handed to pages.
    pub ice: IceSettings,
    /// How long shutdown waits for open connections before giving up on them.
    pub drain_timeout: Duration,
    /// How long a client may take to send a request head.
    pub header_timeout: Duration,
    pub log: String,
    /// Where the TLS certificate comes from, when `--tls` is on.
    pub tls_source: Option<CertSource>,
    /// The loaded TLS setup; `main` fills it from `tls_source` (loading touches files, which
    /// validating flags does not), tests set it directly.
    pub tls: Option<Tls>,
    /// Draw the QR code of the LAN URL in the start-up banner.
    pub qr: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: vec![SocketAddr::from(([0, 0, 0, 0], 8000))],
            hub: HubSettings {
                history: 64,
                history_ttl: Duration::from_secs(60),
                room_capacity: 2,
                broadcast_capacity: 16,
                max_channels: 100_000,
                max_subscribers: 1_000,
                peer_grace: Duration::from_secs(30),
            },
            redis: None,
            max_body: 64 * 1024,
            keepalive: Duration::from_secs(15),
            retry_ms: 2000,
            ice: IceSettings::default(),
            cors_origins: Vec::new(),
            strict_peers: false,
            peer_secret: crate::ice::random_secret(),
            max_connections: 16_000,
            max_connections_per_ip: 2_000,
            post_rate: 50.0,
            post_burst: 200.0,
            body_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            log: "info".into(),
            tls_source: None,
            tls: None,
            qr: true,
        }
    }
}

/// A flag value that cannot work, with the flag's name.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn seconds(flag: &str, value: f64, min: f64, max: f64) -> Result<Duration, ConfigError> {
    if !(value.is_finite() && (min..=max).contains(&value)) {
        return Err(ConfigError(format!(
            "--{flag} must be between {min} and {max} seconds, got {value}"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        let defaults = Config::default();
        if cli.bind.is_empty() {
            return Err(ConfigError("--bind needs at least one address".into()));
        }
        if cli.history > 100_000 {
            return Err(ConfigError("--history must be at most 100000".into()));
        }
        if !(1..=16 * 1024 * 1024).contains(&cli.max_body) {
            return Err(ConfigError(
                "--max-body must be between 1 and 16777216 bytes".into(),
            ));
        }
        if !(1..=1000).contains(&cli.room_capacity) {
            return Err(ConfigError(
                "--room-capacity must be between 1 and 1000".into(),
            ));
        }
        for url in &cli.ice_server {
            let scheme = url.split(':').next().unwrap_or("");
            if !matches!(scheme, "stun" | "stuns" | "turn" | "turns") || url.len() < 6 {
                return Err(ConfigError(format!(
                    "--ice-server {url:?} is not a stun:, stuns:, turn: or turns: URL"
                )));
            }
        }
        let tls_source = match (cli.tls, cli.cert, cli.key) {
            (false, None, None) => None,
            (false, _, _) => return Err(ConfigError("--cert and --key need --tls".into())),
            (true, Some(cert), Some(key)) => Some(CertSource::Files { cert, key }),
            (true, _, _) => Some(CertSource::Generated {
                dir: cli.tls_dir.unwrap_or_else(crate::tls::default_dir),
            }),
        };
        for origin in &cli.cors_origin {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/'));
            if !ok {
                return Err(ConfigError(format!(
                    "--cors-origin {origin:?} must be * or scheme://host[:port] (no trailing slash)"
                )));
            }
        }
        if cli.max_connections == 0 || cli.max_connections_per_ip == 0 {
            return Err(ConfigError("connection limits must be at least 1".into()));
        }
        let rate_ok = cli.post_rate.is_finite() && cli.post_rate > 0.0;
        let burst_ok = cli.post_burst.is_finite() && cli.post_burst >= 1.0;
        if !(rate_ok && burst_ok) {
            return Err(ConfigError(
                "--post-rate must be above 0 and --post-burst at least 1".into(),
            ));
        }
        let peer_secret = match cli.peer_secret {
            Some(secret) if secret.is_empty() => {
                return Err(ConfigError("--peer-secret must not be empty".into()))
            }
            Some(secret) => secret,
            None => defaults.peer_secret.clone(),
        };
        Ok(Config {
            strict_peers: cli.strict_peers,
            peer_secret,
            max_connections: cli.max_connections,
            max_connections_per_ip: cli.max_connections_per_ip,
            post_rate: cli.post_rate,
            post_burst: cli.post_burst,
            header_timeout: seconds("header-timeout", cli.header_timeout, 0.1, 3600.0)?,
            body_timeout: seconds("body-timeout", cli.body_timeout, 0.1, 3600.0)?,
            cors_origins: cli.cors_origin,
            bind: cli.bind,
            tls_source,
            qr: !cli.no_qr,
            hub: HubSettings {
                history: cli.history,
                history_ttl: seconds("history-ttl", cli.history_ttl, 0.0, 86_400.0)?,
                room_capacity: cli.room_capacity,
                max_channels: cli.max_channels,
                max_subscribers: cli.max_subscribers,
                peer_grace: seconds("peer-grace", cli.peer_grace, 0.0, 3600.0)?,
                ..defaults.hub
            },
            redis: match cli.redis {
                None => None,
                Some(url) => Some(RedisSettings {
                    url,
                    format: match cli.redis_format.as_str() {
                        "flask-sse" => RedisFormat::FlaskSse,
                        _ => RedisFormat::Native,
                    },
                    heartbeat: seconds("redis-heartbeat", cli.redis_heartbeat, 0.05, 600.0)?,
                }),
            },
            max_body: cli.max_body,
            keepalive: seconds("keepalive", cli.keepalive, 0.05, 3600.0)?,
            ice: IceSettings {
                bind: cli
                    .stun
                    .or(cli.turn.then(|| SocketAddr::from(([0, 0, 0, 0], 3478)))),
                turn: cli.turn,
                relay_ip: cli.turn_relay_ip,
                secret: match cli.turn_secret {
                    Some(secret) if secret.is_empty() => {
                        return Err(ConfigError("--turn-secret must not be empty".into()))
                    }
                    Some(secret) => secret,
                    None => crate::ice::random_secret(),
                },
                external: cli.ice_server,
            },
            log: cli.log,
            ..defaults
        })
    }
}
