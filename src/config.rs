//! The validated configuration. Built from the [`crate::cli::Cli`] (or directly by tests) and
//! checked once, so the rest of the code can trust every value.

use std::net::{IpAddr, SocketAddr};
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
    /// How long a stream (or an answer) may wait for its client to take bytes before the
    /// connection is reset.
    pub stall_timeout: Duration,
    /// Publishes without a valid peer token are refused (`--strict-peers`).
    pub strict_peers: bool,
    /// Signs peer tokens (`--peer-secret`). `None`: made at start by [`crate::run`], shared
    /// through Redis with `--redis` (so every instance accepts every other's tokens), random
    /// alone.
    pub peer_secret: Option<String>,
    /// `--trusted-proxy`: peers whose forwarding headers are believed (`http/forwarded.rs`).
    pub trusted_proxies: Vec<Cidr>,
    /// `--public-url`: the origin the pages are served from, if not our own address.
    pub public_url: Option<PublicUrl>,
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
                history_bytes: 1024 * 1024,
                history_budget: 64 * 1024 * 1024,
                history_ttl: Duration::from_secs(60),
                room_capacity: 6,
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
            peer_secret: None,
            trusted_proxies: Vec::new(),
            public_url: None,
            max_connections: 16_000,
            max_connections_per_ip: 2_000,
            post_rate: 50.0,
            post_burst: 200.0,
            body_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
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
        if !(1024..=1 << 40).contains(&cli.history_bytes)
            || !(1024..=1 << 40).contains(&cli.history_budget)
        {
            return Err(ConfigError(
                "--history-bytes and --history-budget must be between 1024 and 1099511627776"
                    .into(),
            ));
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
                names: cli.tls_name.clone(),
            }),
        };
        if !cli.tls_name.is_empty() && !matches!(tls_source, Some(CertSource::Generated { .. })) {
            return Err(ConfigError(
                "--tls-name needs --tls without --cert/--key".into(),
            ));
        }
        for name in &cli.tls_name {
            let dns = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-*".contains(&b));
            if !(dns || name.parse::<IpAddr>().is_ok()) {
                return Err(ConfigError(format!(
                    "--tls-name {name:?} is not a DNS name or an IP address"
                )));
            }
        }
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
        if cli.turn_max_allocations_per_ip == 0 || cli.turn_max_allocations_per_user == 0 {
            return Err(ConfigError(
                "--turn-max-allocations-per-ip and -per-user must be at least 1".into(),
            ));
        }
        if !(cli.stun_rate.is_finite() && cli.stun_rate >= 1.0) {
            return Err(ConfigError("--stun-rate must be at least 1".into()));
        }
        if cli.peer_secret.as_deref() == Some("") {
            return Err(ConfigError("--peer-secret must not be empty".into()));
        }
        let first_bind = cli.bind[0];
        let trusted_proxies = cli
            .trusted_proxy
            .iter()
            .map(|net| Cidr::parse(net).map_err(|e| ConfigError(format!("--trusted-proxy {e}"))))
            .collect::<Result<_, _>>()?;
        let public_url = cli
            .public_url
            .as_deref()
            .map(PublicUrl::parse)
            .transpose()
            .map_err(ConfigError)?;
        Ok(Config {
            strict_peers: cli.strict_peers,
            peer_secret: cli.peer_secret,
            trusted_proxies,
            public_url,
            max_connections: cli.max_connections,
            max_connections_per_ip: cli.max_connections_per_ip,
            post_rate: cli.post_rate,
            post_burst: cli.post_burst,
            header_timeout: seconds("header-timeout", cli.header_timeout, 0.1, 3600.0)?,
            body_timeout: seconds("body-timeout", cli.body_timeout, 0.1, 3600.0)?,
            stall_timeout: seconds("stall-timeout", cli.stall_timeout, 0.1, 3600.0)?,
            cors_origins: cli.cors_origin,
            bind: cli.bind,
            tls_source,
            qr: !cli.no_qr,
            hub: HubSettings {
                history: cli.history,
                history_bytes: cli.history_bytes,
                history_budget: cli.history_budget,
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
                // Given: that address or a failed start. Default: the first HTTP address's
                // port number over UDP, with a fallback (see `IceSettings::bind_fallback`).
                bind: match (cli.no_stun, cli.stun) {
                    (true, _) => None,
                    (false, Some(addr)) => Some(addr),
                    (false, None) => Some(first_bind),
                },
                bind_fallback: cli.stun.is_none(),
                tcp_port: None,
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
                max_allocations: cli.turn_max_allocations,
                max_allocations_per_ip: cli.turn_max_allocations_per_ip,
                max_allocations_per_user: cli.turn_max_allocations_per_user,
                deny_private: cli.turn_deny_private,
                allow_loopback_peers: cli.turn_allow_loopback_peers,
                request_rate: cli.stun_rate,
            },
            log: cli.log,
            ..defaults
        })
    }
}

/// An address range, `ADDR/BITS` or a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128`, `127.0.0.1` (one address).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("{text:?} is not an address or ADDR/BITS range");
        let (addr, bits) = match text.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits.parse::<u8>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let net = net.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(bad());
        }
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // The top `bits` of a `width`-bit address, as a mask (shifting by the width is
        // undefined, hence the zero case).
        let mask = |width: u32| match u32::from(self.bits) {
            0 => 0,
            bits => u128::MAX << (width - bits) & (u128::MAX >> (128 - width)),
        };
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                (u128::from(u32::from(net)) ^ u128::from(u32::from(ip))) & mask(32) == 0
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                (u128::from(net) ^ u128::from(ip)) & mask(128) == 0
            }
            _ => false,
        }
    }
}

/// `--public-url`: the origin the pages are served from, `scheme://host[:port]`, kept in the
/// form a browser's `Origin` header has (lower case, no default port, no path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    origin: String,
    /// Where the host starts in `origin`.
    host_at: usize,
}

impl PublicUrl {
    pub fn parse(text: &str) -> Result<PublicUrl, String> {
        let bad = || format!("--public-url {text:?} must be http(s)://host[:port], nothing after");
        let lower = text.trim_end_matches('/').to_ascii_lowercase();
        let (scheme, rest) = lower.split_once("://").ok_or_else(bad)?;
        if !matches!(scheme, "http" | "https")
            || rest.is_empty()
            || rest.contains(['/', '?', '#', '@'])
        {
            return Err(bad());
        }
        let authority: http::uri::Authority = rest.parse().map_err(|_| bad())?;
        let default_port = if scheme == "https" { 443 } else { 80 };
        let host = authority.host();
        let origin = match authority.port_u16() {
            Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
            _ => format!("{scheme}://{host}"),
        };
        Ok(PublicUrl {
            host_at: scheme.len() + 3,
            origin,
        })
    }

    /// `scheme://host[:port]`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// `host[:port]`.
    pub fn authority(&self) -> &str {
        &self.origin[self.host_at..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_what_they_cover() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains("127.9.9.9".parse().unwrap()));
        assert!(
            lo.contains("::ffff:127.0.0.1".parse().unwrap()),
            "v4-mapped"
        );
        assert!(!lo.contains("128.0.0.1".parse().unwrap()));
        assert!(!lo.contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let one = Cidr::parse("10.1.2.3").unwrap();
        assert!(one.contains("10.1.2.3".parse().unwrap()));
        assert!(!one.contains("10.1.2.4".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "host", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn public_urls_take_the_origin_form() {
        let url = PublicUrl::parse("HTTPS://Chat.Example.org:443/").unwrap();
        assert_eq!(url.origin(), "https://chat.example.org");
        assert_eq!(url.authority(), "chat.example.org");
        let url = PublicUrl::parse("http://[::1]:8080").unwrap();
        assert_eq!(url.origin(), "http://[::1]:8080");
        for bad in [
            "example.org",
            "ftp://x",
            "https://x/path",
            "https://",
            "https://a@b",
        ] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
