//! Built-in STUN and TURN on one UDP socket, served by the maintained webrtc-rs `turn` crate,
//! and the short-lived TURN credentials `GET /config` hands to each page.
//!
//! Classroom Wi-Fi often isolates clients from each other, so a direct path fails and media
//! must be relayed: TURN on the machine already running sigrelay makes that work with nothing
//! else installed. Credentials follow the TURN REST convention coturn also uses (username
//! `EXPIRY:ROOM`, password = base64(HMAC-SHA1(secret, username))), so an external coturn
//! sharing `--turn-secret` accepts the same credentials.
//!
//! The crate is not left facing the network alone: `filter.rs` reads every datagram first
//! (authentication, rate, quotas, forbidden peers), `quota.rs` counts allocations against
//! caps that leave HTTP its file descriptors, `peer.rs` says which peers may be relayed to.

pub mod filter;
pub mod peer;
pub mod quota;
pub mod tcp;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::prelude::{Engine, BASE64_STANDARD};
use ring::hmac;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use filter::{Filter, FilterSettings, FilteredRelayGenerator, Shared};
use peer::PeerRules;
use quota::{Caps, Quota};
use tcp::TcpMux;

/// The realm TURN clients authenticate in.
const REALM: &str = "sigrelay";

/// How long credentials from `/config` stay valid. Browsers reuse them to refresh a running
/// allocation, so this outlasts a long call; the page fetches new ones for every call.
pub const CREDENTIAL_TTL: Duration = Duration::from_secs(12 * 3600);

/// The STUN/TURN settings, from the validated config.
#[derive(Debug, Clone)]
pub struct IceSettings {
    /// Where the STUN/TURN UDP socket listens: `--stun`, or by default the first `--bind`
    /// address (its port number, over UDP); `None` with `--no-stun`.
    pub bind: Option<SocketAddr>,
    /// The address is the default, not a `--stun` given: when it is taken, `main` warns and
    /// takes a free port instead (then goes without STUN), rather than failing the start.
    pub bind_fallback: bool,
    /// TURN over TCP: the HTTP port it is served on (the first listener's), set at start
    /// when TURN is on.
    pub tcp_port: Option<u16>,
    /// Relay allocations too (TURN), not only Binding answers (STUN).
    pub turn: bool,
    /// The address relayed media is sent from and advertised as.
    pub relay_ip: Option<IpAddr>,
    /// HMAC key of the TURN REST credentials.
    pub secret: String,
    /// STUN/TURN URLs of other servers (`--ice-server`).
    pub external: Vec<String>,
    /// Allocations in total (`--turn-max-allocations`), lowered at start to the fd budget.
    pub max_allocations: usize,
    /// Allocations from one client address (`--turn-max-allocations-per-ip`).
    pub max_allocations_per_ip: usize,
    /// Allocations with one credential (`--turn-max-allocations-per-user`).
    pub max_allocations_per_user: usize,
    /// Refuse private peers too (`--turn-deny-private`), for servers on the internet.
    pub deny_private: bool,
    /// Allow loopback peers (`--turn-allow-loopback-peers`): tests and one-machine demos only.
    pub allow_loopback_peers: bool,
    /// STUN/TURN requests per client address per second (`--stun-rate`).
    pub request_rate: f64,
}

impl Default for IceSettings {
    fn default() -> Self {
        IceSettings {
            bind: None,
            bind_fallback: false,
            tcp_port: None,
            turn: false,
            relay_ip: None,
            secret: random_secret(),
            external: Vec::new(),
            max_allocations: 1000,
            max_allocations_per_ip: 32,
            max_allocations_per_user: 32,
            deny_private: false,
            allow_loopback_peers: false,
            request_rate: 50.0,
        }
    }
}

/// 32 random bytes, base64: the TURN secret when none is given.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system random source works");
    BASE64_STANDARD.encode(bytes)
}

/// The TURN REST password for `username`.
pub fn turn_password(secret: &str, username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    BASE64_STANDARD.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

/// Fresh credentials for `room`, valid for [`CREDENTIAL_TTL`].
pub fn credentials(secret: &str, room: &str) -> (String, String) {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(CREDENTIAL_TTL)
        .as_secs();
    let username = format!("{expiry}:{room}");
    let password = turn_password(secret, &username);
    (username, password)
}

/// The `iceServers` list for a page that reached us as `host` (the Host header's host part:
/// the address this client can reach, so it can reach our UDP port there too).
pub fn ice_servers(settings: &IceSettings, host: Option<&str>, room: &str) -> serde_json::Value {
    let mut servers: Vec<serde_json::Value> = Vec::new();
    if let (Some(bind), Some(host)) = (settings.bind, host) {
        let port = bind.port();
        servers.push(serde_json::json!({ "urls": format!("stun:{host}:{port}") }));
        if settings.turn {
            let (username, credential) = credentials(&settings.secret, room);
            servers.push(serde_json::json!({
                "urls": format!("turn:{host}:{port}?transport=udp"),
                "username": username,
                "credential": credential,
            }));
            // TURN over TCP on the HTTP port, for networks that block UDP.
            if let Some(tcp) = settings.tcp_port {
                servers.push(serde_json::json!({
                    "urls": format!("turn:{host}:{tcp}?transport=tcp"),
                    "username": username,
                    "credential": credential,
                }));
            }
        }
    }
    for url in &settings.external {
        servers.push(serde_json::json!({ "urls": url }));
    }
    serde_json::Value::Array(servers)
}

/// The long-term key (RFC 8489 §9.2) for a TURN REST `username`, if its credential is
/// acceptable: `EXPIRY:ROOM` with EXPIRY (Unix seconds) not past and ROOM a valid room name.
///
/// ROOM is a label: it names the room in the logs of allocations, and must pass the room-name
/// rule (so a log line cannot be forged through it), but quotas are not per room. Anybody can
/// get credentials for any room from `/config`, so a per-room cap would bound nothing an
/// attacker cannot sidestep, while it would let anyone lock a real room out of TURN by filling
/// its quota first. Quotas are per credential (the whole username), per address and in total.
pub fn auth_key(secret: &str, username: &str, realm: &str) -> Result<Vec<u8>, &'static str> {
    let (expiry, room) = username.split_once(':').ok_or("malformed username")?;
    let expiry: u64 = expiry.parse().map_err(|_| "malformed expiry")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if expiry < now {
        return Err("expired credentials");
    }
    crate::names::ChannelName::parse(room).map_err(|_| "invalid room in username")?;
    let password = turn_password(secret, username);
    Ok(turn::auth::generate_auth_key(username, realm, &password))
}

/// Checks TURN REST credentials for the crate (the filter has already checked them too).
struct RestAuth {
    secret: String,
}

impl turn::auth::AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        auth_key(&self.secret, username, realm)
            .map_err(|why| turn::Error::Other(format!("{why} from {src}")))
    }
}

/// Refuses every allocation: with `--stun` alone only Binding requests are answered.
struct NoRelay;

impl turn::auth::AuthHandler for NoRelay {
    fn auth_handle(&self, _: &str, _: &str, src: SocketAddr) -> Result<Vec<u8>, turn::Error> {
        Err(turn::Error::Other(format!(
            "TURN is off; refused allocation from {src}"
        )))
    }
}

/// The running STUN/TURN service.
pub struct IceServer {
    server: turn::server::Server,
    shared: Arc<Shared>,
    tasks: CancellationToken,
    tcp: Option<Arc<TcpMux>>,
}

impl IceServer {
    /// Starts answering on `socket`. `max_connections` is HTTP's connection cap and
    /// `own_ports` the ports the server listens on, which relays may never reach.
    pub async fn start(
        socket: UdpSocket,
        settings: &IceSettings,
        max_connections: usize,
        own_ports: &[u16],
    ) -> Result<Self, turn::Error> {
        let local = socket.local_addr()?;
        let relay_ip = settings
            .relay_ip
            .unwrap_or_else(|| default_relay_ip(local.ip()));
        let nofile = quota::open_file_limit();
        let caps = Caps {
            total: quota::fd_budget(settings.max_allocations, nofile, max_connections),
            per_ip: settings.max_allocations_per_ip,
            per_user: settings.max_allocations_per_user,
        };
        if settings.turn {
            tracing::info!(
                total = caps.total,
                requested = settings.max_allocations,
                per_ip = caps.per_ip,
                per_user = caps.per_user,
                nofile = ?nofile,
                max_connections,
                fd_reserve = quota::FD_RESERVE,
                "TURN allocation caps (total = min(--turn-max-allocations, nofile - --max-connections - reserve))"
            );
            if caps.total < settings.max_allocations {
                tracing::warn!(
                    total = caps.total,
                    "the open-file limit lowers --turn-max-allocations; raise `ulimit -n` or lower --max-connections"
                );
            }
        }
        let mut ports: Vec<u16> = own_ports.to_vec();
        ports.push(local.port());
        let extra_ips = [relay_ip, local.ip()];
        let shared = Arc::new(Shared {
            quota: Mutex::new(Quota::new(caps)),
            rules: RwLock::new(PeerRules {
                own_ips: peer::own_ips(&extra_ips),
                own_ports: ports.into_iter().collect(),
                deny_private: settings.deny_private,
                allow_loopback: settings.allow_loopback_peers,
            }),
            stats: Default::default(),
        });
        let auth: Arc<dyn turn::auth::AuthHandler + Send + Sync> = if settings.turn {
            Arc::new(RestAuth {
                secret: settings.secret.clone(),
            })
        } else {
            Arc::new(NoRelay)
        };
        let relay_bind = if relay_ip.is_loopback() {
            relay_ip.to_string()
        } else {
            "0.0.0.0".to_string()
        };
        let filter_settings = || FilterSettings {
            realm: REALM.to_owned(),
            secret: settings.secret.clone(),
            turn: settings.turn,
            rate: settings.request_rate,
        };
        let filter = Arc::new(Filter::new(socket, filter_settings(), shared.clone()));
        // TURN over TCP, on the HTTP port: the same filter rules before the same crate.
        let tcp = match (settings.turn, settings.tcp_port) {
            (true, Some(port)) => {
                let mux = Arc::new(TcpMux::new(
                    SocketAddr::new(local.ip(), port),
                    caps.total,
                    caps.per_ip,
                ));
                mux.attach(shared.clone());
                let filter = Arc::new(Filter::new(mux.clone(), filter_settings(), shared.clone()));
                Some((mux, filter))
            }
            _ => None,
        };
        let conn_config = |conn: Arc<Filter>| turn::server::config::ConnConfig {
            conn,
            relay_addr_generator: Box::new(FilteredRelayGenerator {
                inner: Box::new(turn::relay::relay_static::RelayAddressGeneratorStatic {
                    relay_address: relay_ip,
                    address: relay_bind.clone(),
                    net: Arc::new(webrtc_util::vnet::net::Net::new(None)),
                }),
                shared: shared.clone(),
            }),
        };
        let mut conn_configs = vec![conn_config(filter.clone())];
        let mut filters = vec![filter];
        if let Some((_, tcp_filter)) = &tcp {
            conn_configs.push(conn_config(tcp_filter.clone()));
            filters.push(tcp_filter.clone());
        }
        let (closed_tx, closed_rx) = mpsc::channel(256);
        let server = turn::server::Server::new(turn::server::config::ServerConfig {
            conn_configs,
            realm: REALM.to_owned(),
            auth_handler: auth,
            channel_bind_timeout: Duration::from_secs(0),
            alloc_close_notify: Some(closed_tx),
        })
        .await?;
        let tasks = CancellationToken::new();
        tokio::spawn(release_closed(closed_rx, shared.clone()));
        if settings.turn {
            for filter in &filters {
                if !filter.rotate_nonce(Duration::from_secs(5)).await {
                    return Err(turn::Error::Other("the TURN server gave no nonce".into()));
                }
            }
            tokio::spawn(maintain(filters, shared.clone(), extra_ips, tasks.clone()));
        }
        tracing::info!(%local, %relay_ip, turn = settings.turn, tcp = ?settings.tcp_port.filter(|_| settings.turn), "STUN/TURN listening");
        Ok(IceServer {
            server,
            shared,
            tasks,
            tcp: tcp.map(|(mux, _)| mux),
        })
    }

    /// TURN over TCP, when on: `server.rs` hands it the connections that start with STUN.
    pub fn tcp(&self) -> Option<Arc<TcpMux>> {
        self.tcp.clone()
    }

    /// Allocations held now.
    pub fn allocations(&self) -> usize {
        self.shared.quota().total()
    }

    pub async fn close(&self) {
        self.tasks.cancel();
        let _ = self.server.close().await;
    }
}

/// Gives back the place of every allocation the server closes (refresh to 0, expiry, close).
async fn release_closed(
    mut closed: mpsc::Receiver<turn::allocation::AllocationInfo>,
    shared: Arc<Shared>,
) {
    while let Some(info) = closed.recv().await {
        let client = info.five_tuple.src_addr;
        let room = info.username.split_once(':').map(|(_, room)| room);
        tracing::debug!(%client, room, relay = %info.relay_addr, "TURN allocation closed");
        shared.quota().release(client);
    }
}

/// Rotates the nonce and re-reads this machine's addresses (DHCP may change them).
async fn maintain(
    filters: Vec<Arc<Filter>>,
    shared: Arc<Shared>,
    extra_ips: [IpAddr; 2],
    stop: CancellationToken,
) {
    let mut last_rotation = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let ips = peer::own_ips(&extra_ips);
        shared
            .rules
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .own_ips = ips;
        if last_rotation.elapsed() >= filter::NONCE_ROTATION {
            last_rotation = tokio::time::Instant::now();
            for filter in &filters {
                if !filter.rotate_nonce(Duration::from_secs(5)).await {
                    tracing::warn!("the TURN server gave no fresh nonce; keeping the current one");
                }
            }
        }
    }
}

/// The relay address when none is given: the bound address, or else the first non-loopback
/// IPv4 address (the LAN one), or else loopback.
fn default_relay_ip(bound: IpAddr) -> IpAddr {
    if !bound.is_unspecified() {
        return bound;
    }
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|iface| iface.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_match_the_coturn_convention() {
        // HMAC-SHA1("secret", "1700000000:room") computed independently (openssl dgst -sha1 -hmac).
        assert_eq!(
            turn_password("secret", "1700000000:room"),
            "WRucgkdMkcTgsz5Y1kolSAFG6fQ="
        );
        let (user, pass) = credentials("secret", "room");
        assert!(user.ends_with(":room"));
        assert_eq!(pass, turn_password("secret", &user));
        let auth = RestAuth {
            secret: "secret".into(),
        };
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap();
        use turn::auth::AuthHandler;
        assert!(auth.auth_handle(&user, REALM, src).is_ok());
        assert!(auth.auth_handle("1:room", REALM, src).is_err(), "expired");
        assert!(auth.auth_handle("x:room", REALM, src).is_err(), "malformed");
        let far = format!("{}:", u64::MAX);
        assert!(auth_key("secret", &far, REALM).is_err(), "no room");
        assert!(
            auth_key("secret", &format!("{far}a b"), REALM).is_err(),
            "bad room"
        );
        assert!(auth_key("secret", &format!("{far}lab-1"), REALM).is_ok());
    }
}
