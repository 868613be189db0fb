//! The command line, as clap reads it. Doc comments here are the `--help` text; every flag can
//! also be set through a `SIGRELAY_*` environment variable. Nothing outside `config.rs` uses
//! this type: it is turned into a validated [`crate::Config`] first.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Browser video chat for a room full of people, in one binary: sigrelay serves the web pages
/// and relays WebRTC signaling between browsers over Server-Sent Events. No database, no other
/// server.
///
/// Open the printed URL in two browsers, create a room in one and join it from the other.
/// Speaks the Flask + flask-sse protocol: GET /stream?channel=NAME (EventSource) and
/// POST /channel/send/NAME/TYPE.
#[derive(Debug, Parser)]
#[command(name = "sigrelay", version = crate::VERSION, about, long_about)]
pub struct Cli {
    /// Address to listen on; repeat to listen on several. Port 0 picks a free port (the bound
    /// address is printed at start-up).
    #[arg(
        long = "bind",
        value_name = "ADDR",
        env = "SIGRELAY_BIND",
        value_delimiter = ',',
        default_value = "0.0.0.0:8000"
    )]
    pub bind: Vec<SocketAddr>,

    /// Events kept per channel, so a subscriber that reconnects with Last-Event-ID (or falls
    /// behind) gets what it missed.
    #[arg(long, value_name = "N", env = "SIGRELAY_HISTORY", default_value_t = 64)]
    pub history: usize,

    /// Bytes of history kept per channel: each event counts its encoded frame (the body
    /// JSON-escaped) plus 96 bytes of bookkeeping. Past it the channel's oldest events go, and a
    /// resume from before them gets `event: gap`; an event larger than this is delivered but
    /// not kept.
    #[arg(
        long = "history-bytes",
        value_name = "BYTES",
        env = "SIGRELAY_HISTORY_BYTES",
        default_value_t = 1024 * 1024
    )]
    pub history_bytes: usize,

    /// Bytes of history kept over all channels together, counted as for --history-bytes. Past
    /// it the oldest events of the whole relay are evicted (resumes from before them get
    /// `event: gap`), so many rooms cannot make history outgrow this.
    #[arg(
        long = "history-budget",
        value_name = "BYTES",
        env = "SIGRELAY_HISTORY_BUDGET",
        default_value_t = 64 * 1024 * 1024
    )]
    pub history_budget: usize,

    /// Seconds a channel with no subscribers keeps its history before it is removed.
    #[arg(
        long = "history-ttl",
        value_name = "SECS",
        env = "SIGRELAY_HISTORY_TTL",
        default_value_t = 60.0
    )]
    pub history_ttl: f64,

    /// Largest message body accepted by POST /channel/send/..., in bytes (larger: 413).
    #[arg(
        long = "max-body",
        value_name = "BYTES",
        env = "SIGRELAY_MAX_BODY",
        default_value_t = 65536
    )]
    pub max_body: usize,

    /// Seconds between keep-alive comments on an idle stream.
    #[arg(
        long,
        value_name = "SECS",
        env = "SIGRELAY_KEEPALIVE",
        default_value_t = 15.0
    )]
    pub keepalive: f64,

    /// Distinct peers (streams opened with `peer=ID`, as the built-in call page does) allowed in
    /// one room; one more gets 409 "room is full". Streams without a peer id are not counted.
    #[arg(
        long = "room-capacity",
        value_name = "N",
        env = "SIGRELAY_ROOM_CAPACITY",
        default_value_t = 6
    )]
    pub room_capacity: usize,

    /// Channels held at once; a POST or stream that would create one more gets 503. Bounds the
    /// memory strangers can make the relay hold by inventing room names.
    #[arg(
        long = "max-channels",
        value_name = "N",
        env = "SIGRELAY_MAX_CHANNELS",
        default_value_t = 100_000
    )]
    pub max_channels: usize,

    /// Streams on one channel (anonymous ones included); one more gets 409.
    #[arg(
        long = "max-subscribers",
        value_name = "N",
        env = "SIGRELAY_MAX_SUBSCRIBERS",
        default_value_t = 1_000
    )]
    pub max_subscribers: usize,

    /// Share rooms with other sigrelay instances through this Redis server
    /// (redis://[:PASSWORD@]HOST:PORT[/DB]), for running several behind a load balancer. Ids,
    /// history, presence and room capacity then hold across instances. Off by default: one
    /// instance needs nothing but itself.
    #[arg(long, value_name = "URL", env = "SIGRELAY_REDIS")]
    pub redis: Option<String>,

    /// How messages travel through Redis: `native`, or `flask-sse` to read and write the same
    /// messages as the Flask app this project replaces (a migration path: its sse.publish()
    /// reaches sigrelay's streams and the other way round).
    #[arg(
        long = "redis-format",
        value_name = "FORMAT",
        env = "SIGRELAY_REDIS_FORMAT",
        default_value = "native",
        value_parser = ["native", "flask-sse"],
        requires = "redis"
    )]
    pub redis_format: String,

    /// Seconds between an instance's heartbeats in Redis. An instance that stops (crash, power
    /// cut) stops counting toward presence and room capacity within four heartbeats.
    #[arg(
        long = "redis-heartbeat",
        value_name = "SECS",
        env = "SIGRELAY_REDIS_HEARTBEAT",
        default_value_t = 5.0,
        requires = "redis"
    )]
    pub redis_heartbeat: f64,

    /// A STUN or TURN server URL handed to the pages in GET /config (for example
    /// stun:stun.example.org:3478); repeat for several. Default: none, which is right on a LAN.
    #[arg(
        long = "ice-server",
        value_name = "URL",
        env = "SIGRELAY_ICE_SERVER",
        value_delimiter = ','
    )]
    pub ice_server: Vec<String>,

    /// Answer STUN Binding requests (RFC 8489) on this UDP address instead of the default, and
    /// tell the pages to use it; `--stun` alone means 0.0.0.0:3478. By default STUN is on, over
    /// UDP on the address and port number of the first --bind (a port in use gets a warning and
    /// a free port instead): it gives each browser its real address, which browsers otherwise
    /// hide behind mDNS names that phones cannot resolve. A given address that cannot be bound
    /// fails the start.
    #[arg(long, value_name = "ADDR", env = "SIGRELAY_STUN", num_args = 0..=1, default_missing_value = "0.0.0.0:3478", conflicts_with = "no_stun")]
    pub stun: Option<SocketAddr>,

    /// Turn the built-in STUN off (and TURN with it): the pages then get no STUN server but
    /// --ice-server ones.
    #[arg(long = "no-stun", env = "SIGRELAY_NO_STUN", conflicts_with = "turn")]
    pub no_stun: bool,

    /// Also relay media (TURN) on the STUN socket, for networks where browsers cannot reach each
    /// other directly (client isolation on Wi-Fi), and over TCP on the HTTP port for networks
    /// that block UDP (turn:HOST:PORT?transport=tcp). Pages get short-lived credentials from
    /// GET /config.
    #[arg(long, env = "SIGRELAY_TURN")]
    pub turn: bool,

    /// The address TURN relays media from and advertises [default: the first LAN IPv4 address].
    #[arg(
        long = "turn-relay-ip",
        value_name = "IP",
        env = "SIGRELAY_TURN_RELAY_IP"
    )]
    pub turn_relay_ip: Option<std::net::IpAddr>,

    /// Secret for TURN REST credentials (username EXPIRY:ROOM, password base64 HMAC-SHA1);
    /// share it with an external coturn (`use-auth-secret`). Default: random at each start.
    #[arg(
        long = "turn-secret",
        value_name = "SECRET",
        env = "SIGRELAY_TURN_SECRET",
        hide_env_values = true
    )]
    pub turn_secret: Option<String>,

    /// TURN allocations held at once, in total (486 Allocation Quota Reached past it). Each one
    /// holds a UDP socket, so at start this is lowered to what the open-file limit leaves after
    /// --max-connections and a reserve of 256 (the cap in force is logged).
    #[arg(
        long = "turn-max-allocations",
        value_name = "N",
        env = "SIGRELAY_TURN_MAX_ALLOCATIONS",
        default_value_t = 1_000
    )]
    pub turn_max_allocations: usize,

    /// TURN allocations from one client address (486 past it). A browser in a call of six
    /// makes about ten.
    #[arg(
        long = "turn-max-allocations-per-ip",
        value_name = "N",
        env = "SIGRELAY_TURN_MAX_ALLOCATIONS_PER_IP",
        default_value_t = 32
    )]
    pub turn_max_allocations_per_ip: usize,

    /// TURN allocations with one credential (one `GET /config` answer; 486 past it).
    #[arg(
        long = "turn-max-allocations-per-user",
        value_name = "N",
        env = "SIGRELAY_TURN_MAX_ALLOCATIONS_PER_USER",
        default_value_t = 32
    )]
    pub turn_max_allocations_per_user: usize,

    /// Also refuse to relay to private addresses (10/8, 172.16/12, 192.168/16, 100.64/10,
    /// fc00::/7), for a server on the internet. Loopback, this machine's own addresses,
    /// link-local, multicast and broadcast are always refused (403 Forbidden IP).
    #[arg(long = "turn-deny-private", env = "SIGRELAY_TURN_DENY_PRIVATE")]
    pub turn_deny_private: bool,

    /// Allow TURN to relay to loopback addresses other than this server's own ports. For tests
    /// and one-machine demos only: on a shared machine it exposes local services.
    #[arg(
        long = "turn-allow-loopback-peers",
        env = "SIGRELAY_TURN_ALLOW_LOOPBACK_PEERS"
    )]
    pub turn_allow_loopback_peers: bool,

    /// STUN/TURN requests allowed per client address per second, bursts of four times that;
    /// more are dropped unanswered. Relayed media is not counted.
    #[arg(
        long = "stun-rate",
        value_name = "PER_SEC",
        env = "SIGRELAY_STUN_RATE",
        default_value_t = 50.0
    )]
    pub stun_rate: f64,

    /// Open connections allowed in total; more are refused with 503 and closed.
    #[arg(
        long = "max-connections",
        value_name = "N",
        env = "SIGRELAY_MAX_CONNECTIONS",
        default_value_t = 16_000
    )]
    pub max_connections: usize,

    /// Open connections allowed from one client address (429 past it). Raise it when many
    /// people reach the server through one NAT; behind a proxy it counts the proxy (it is
    /// decided before any header is read), so set it near --max-connections there.
    #[arg(
        long = "max-connections-per-ip",
        value_name = "N",
        env = "SIGRELAY_MAX_CONNECTIONS_PER_IP",
        default_value_t = 2_000
    )]
    pub max_connections_per_ip: usize,

    /// Publishes allowed per client address per second on average (429 with Retry-After past
    /// it; a call's signaling needs a few dozen in its first second). Behind a
    /// --trusted-proxy, per the client address the proxy names.
    #[arg(
        long = "post-rate",
        value_name = "PER_SEC",
        env = "SIGRELAY_POST_RATE",
        default_value_t = 50.0
    )]
    pub post_rate: f64,

    /// Publishes one client address may make in a burst above --post-rate.
    #[arg(
        long = "post-burst",
        value_name = "N",
        env = "SIGRELAY_POST_BURST",
        default_value_t = 200.0
    )]
    pub post_burst: f64,

    /// Seconds a client may take to send its request head (slowloris protection).
    #[arg(
        long = "header-timeout",
        value_name = "SECS",
        env = "SIGRELAY_HEADER_TIMEOUT",
        default_value_t = 10.0
    )]
    pub header_timeout: f64,

    /// Seconds a client may take to send a publish body (408 past it).
    #[arg(
        long = "body-timeout",
        value_name = "SECS",
        env = "SIGRELAY_BODY_TIMEOUT",
        default_value_t = 10.0
    )]
    pub body_timeout: f64,

    /// Seconds a plain-http event stream may go without its client taking anything from the
    /// socket; then it is reset (its kernel buffers freed at once) and the client resumes from
    /// history when it reconnects. (Streams served over TLS or HTTP/2 are not covered yet.)
    #[arg(
        long = "stall-timeout",
        value_name = "SECS",
        env = "SIGRELAY_STALL_TIMEOUT",
        default_value_t = 30.0
    )]
    pub stall_timeout: f64,

    /// A foreign origin (scheme://host[:port]) whose pages may use /stream and /channel/send
    /// from a browser; repeat for several, `*` for any. Requests from other foreign origins get
    /// 403, so a random web page cannot post into a room through a visitor's browser.
    #[arg(
        long = "cors-origin",
        value_name = "ORIGIN",
        env = "SIGRELAY_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origin: Vec<String>,

    /// Refuse (403) publishes that do not carry a peer token for their channel. Every stream
    /// starts with `event: welcome` carrying its peer id and token; a POST that sends them back
    /// (headers X-Sigrelay-Peer and X-Sigrelay-Token) is stamped `"from": PEER`, so nobody who
    /// merely guessed a room name can pose as a participant. Off by default so the seed's
    /// anonymous pages keep working (their events just carry no `from`).
    #[arg(long = "strict-peers", env = "SIGRELAY_STRICT_PEERS")]
    pub strict_peers: bool,

    /// Secret that signs peer tokens; every instance must accept the others' tokens. Default:
    /// with --redis, one secret shared through Redis (the first instance stores a random one,
    /// the others read it); alone, random at each start. Given, it is used as is (give it to
    /// every instance sharing a Redis, or to none).
    #[arg(
        long = "peer-secret",
        value_name = "SECRET",
        env = "SIGRELAY_PEER_SECRET",
        hide_env_values = true
    )]
    pub peer_secret: Option<String>,

    /// A proxy or load balancer (an address or CIDR, e.g. 127.0.0.1 or 10.0.0.0/8) whose
    /// X-Forwarded-For / X-Forwarded-Proto / X-Forwarded-Host (or RFC 7239 Forwarded) headers
    /// are believed: the client's address (for --post-rate) and the scheme and host its page
    /// was served from (for the origin check and /config) then come from them. Repeat for
    /// several. Headers from any other address are ignored. Off by default.
    #[arg(
        long = "trusted-proxy",
        value_name = "CIDR",
        env = "SIGRELAY_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<String>,

    /// The origin the pages are served from when that is not this server's own address, e.g.
    /// https://chat.example.org behind a proxy that terminates TLS. Browser requests from it
    /// pass the origin check, and /config names its host for STUN/TURN unless a trusted proxy
    /// names one.
    #[arg(long = "public-url", value_name = "URL", env = "SIGRELAY_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Seconds a peer id's place in a room stays reserved for its holder after its stream
    /// ended (a network blip, a reload): meanwhile only a stream presenting that holder's token
    /// (token=, from its welcome) gets the id back; anyone else asking for it gets 409. A kept
    /// place still counts toward --room-capacity. 0: the id is free as soon as the stream ends.
    #[arg(
        long = "peer-grace",
        value_name = "SECS",
        env = "SIGRELAY_PEER_GRACE",
        default_value_t = 30.0
    )]
    pub peer_grace: f64,

    /// Serve HTTPS (HTTP/2 and HTTP/1.1) instead of plain HTTP, which browsers need before they
    /// allow the camera anywhere but localhost. Without --cert/--key a local certificate
    /// authority is made once and kept in --tls-dir; it signs a certificate for this machine's
    /// names and addresses (re-issued when they change). Each device installs the CA once from
    /// http://HOST:PORT/trust and then sees no warning. Plain-http requests on the same port are
    /// redirected to https, except /trust.
    #[arg(long, env = "SIGRELAY_TLS")]
    pub tls: bool,

    /// Certificate chain (PEM) to serve with --tls, e.g. from Let's Encrypt or your CA.
    #[arg(long, value_name = "FILE", env = "SIGRELAY_CERT", requires = "key")]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) for --cert.
    #[arg(long, value_name = "FILE", env = "SIGRELAY_KEY", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Where the local CA and the generated certificate are kept [default: $XDG_DATA_HOME/sigrelay, or
    /// ~/.local/share/sigrelay].
    #[arg(long = "tls-dir", value_name = "DIR", env = "SIGRELAY_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,

    /// Another name (DNS name or address) the generated certificate must cover besides this
    /// machine's own, e.g. a name the classroom router gives it; repeat for several.
    #[arg(
        long = "tls-name",
        value_name = "NAME",
        env = "SIGRELAY_TLS_NAME",
        value_delimiter = ','
    )]
    pub tls_name: Vec<String>,

    /// Do not draw the QR code of the LAN address at start-up.
    #[arg(long = "no-qr", env = "SIGRELAY_NO_QR")]
    pub no_qr: bool,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive such as
    /// `sigrelay=debug`.
    #[arg(
        long,
        value_name = "LEVEL",
        env = "SIGRELAY_LOG",
        default_value = "info"
    )]
    pub log: String,
}
