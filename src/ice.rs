//! Built-in STUN and TURN on one UDP socket, served by the maintained webrtc-rs `turn` crate,
//! and the short-lived TURN credentials `GET /config` hands to each page.
//!
//! Classroom Wi-Fi often isolates clients from each other, so a direct path fails and media
//! must be relayed: TURN on the machine already running sigrelay makes that work with nothing
//! else installed. Credentials follow the TURN REST convention coturn also uses (username
//! `EXPIRY:ROOM`, password = base64(HMAC-SHA1(secret, username))), so an external coturn
//! sharing `--turn-secret` accepts the same credentials.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::prelude::{Engine, BASE64_STANDARD};
use ring::hmac;
use tokio::net::UdpSocket;

/// The realm TURN clients authenticate in.
const REALM: &str = "sigrelay";

/// How long credentials from `/config` stay valid. Browsers reuse them to refresh a running
/// allocation, so this outlasts a long call; the page fetches new ones for every call.
pub const CREDENTIAL_TTL: Duration = Duration::from_secs(12 * 3600);

/// The STUN/TURN settings, from the validated config.
#[derive(Debug, Clone)]
pub struct IceSettings {
    /// Where the STUN/TURN UDP socket listens (`--stun` / `--turn`).
    pub bind: Option<SocketAddr>,
    /// Relay allocations too (TURN), not only Binding answers (STUN).
    pub turn: bool,
    /// The address relayed media is sent from and advertised as.
    pub relay_ip: Option<IpAddr>,
    /// HMAC key of the TURN REST credentials.
    pub secret: String,
    /// STUN/TURN URLs of other servers (`--ice-server`).
    pub external: Vec<String>,
}

impl Default for IceSettings {
    fn default() -> Self {
        IceSettings {
            bind: None,
            turn: false,
            relay_ip: None,
            secret: random_secret(),
            external: Vec::new(),
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
        }
    }
    for url in &settings.external {
        servers.push(serde_json::json!({ "urls": url }));
    }
    serde_json::Value::Array(servers)
}

/// Checks TURN REST credentials: not expired, and signed with our secret.
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
        let expiry: u64 = username
            .split(':')
            .next()
            .and_then(|e| e.parse().ok())
            .ok_or_else(|| turn::Error::Other(format!("malformed TURN username from {src}")))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if expiry < now {
            return Err(turn::Error::Other(format!(
                "expired TURN credentials from {src}"
            )));
        }
        let password = turn_password(&self.secret, username);
        Ok(turn::auth::generate_auth_key(username, realm, &password))
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
}

impl IceServer {
    /// Starts answering on `socket`.
    pub async fn start(socket: UdpSocket, settings: &IceSettings) -> Result<Self, turn::Error> {
        let local = socket.local_addr()?;
        let relay_ip = settings
            .relay_ip
            .unwrap_or_else(|| default_relay_ip(local.ip()));
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
        let server = turn::server::Server::new(turn::server::config::ServerConfig {
            conn_configs: vec![turn::server::config::ConnConfig {
                conn: Arc::new(socket),
                relay_addr_generator: Box::new(
                    turn::relay::relay_static::RelayAddressGeneratorStatic {
                        relay_address: relay_ip,
                        address: relay_bind,
                        net: Arc::new(webrtc_util::vnet::net::Net::new(None)),
                    },
                ),
            }],
            realm: REALM.to_owned(),
            auth_handler: auth,
            channel_bind_timeout: Duration::from_secs(0),
            alloc_close_notify: None,
        })
        .await?;
        tracing::info!(%local, %relay_ip, turn = settings.turn, "STUN/TURN listening");
        Ok(IceServer { server })
    }

    pub async fn close(&self) {
        let _ = self.server.close().await;
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
    }
}
