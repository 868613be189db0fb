//! Built-in STUN and TURN: a Binding request from a real UDP socket gets the right
//! XOR-MAPPED-ADDRESS (parsed here by hand, independently of the server's library), TURN
//! allocates with the credentials `/config` hands out and refuses without them. Then the attacks
//! of issue 12, each against the real server over real UDP: allocations past the caps (486) and
//! the fd budget, relaying into the server's own machine (403), and unauthenticated floods
//! (bounded RSS, rate-limited answers). `SIGRELAY_TEST_BIN=path` runs the binary tests against
//! another build, for before/after figures.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::net::UdpSocket;

const MAGIC_COOKIE: u32 = 0x2112_A442;

async fn server_with(turn: bool) -> (TestServer, SocketAddr) {
    let server = TestServer::with(|c| {
        c.ice.bind = Some("127.0.0.1:0".parse().unwrap());
        c.ice.turn = turn;
        c.ice.relay_ip = Some(IpAddr::from([127, 0, 0, 1]));
    })
    .await;
    let config = server.get("/config").await.json();
    let stun_url = config["iceServers"][0]["urls"].as_str().unwrap().to_owned();
    let port: u16 = stun_url.rsplit(':').next().unwrap().parse().unwrap();
    (server, SocketAddr::from(([127, 0, 0, 1], port)))
}

#[tokio::test(flavor = "multi_thread")]
async fn stun_binding_returns_the_xor_mapped_address() {
    let (_server, stun) = server_with(false).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let transaction: [u8; 12] = *b"sigrelaytest";
    let mut request = Vec::new();
    request.extend_from_slice(&0x0001u16.to_be_bytes()); // Binding request
    request.extend_from_slice(&0u16.to_be_bytes()); // no attributes
    request.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    request.extend_from_slice(&transaction);
    client.send_to(&request, stun).await.unwrap();

    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .expect("a STUN answer")
        .unwrap();
    assert_eq!(from, stun);
    let answer = &buf[..n];
    assert_eq!(
        u16::from_be_bytes([answer[0], answer[1]]),
        0x0101,
        "Binding success"
    );
    assert_eq!(&answer[4..8], &MAGIC_COOKIE.to_be_bytes());
    assert_eq!(&answer[8..20], &transaction);
    let mut attrs = &answer[20..];
    let mut mapped = None;
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = u16::from_be_bytes([attrs[2], attrs[3]]) as usize;
        let value = &attrs[4..4 + len];
        if kind == 0x0020 {
            assert_eq!(value[1], 0x01, "IPv4");
            let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
            let ip = u32::from_be_bytes([value[4], value[5], value[6], value[7]]) ^ MAGIC_COOKIE;
            mapped = Some(SocketAddr::from((ip.to_be_bytes(), port)));
        }
        attrs = &attrs[4 + len.div_ceil(4) * 4..];
    }
    assert_eq!(mapped, Some(client.local_addr().unwrap()));
}

async fn allocate(stun: SocketAddr, username: &str, password: &str) -> Result<(), String> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: stun.to_string(),
        turn_serv_addr: stun.to_string(),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(socket),
        vnet: None,
    })
    .await
    .map_err(|e| e.to_string())?;
    client.listen().await.map_err(|e| e.to_string())?;
    let result = tokio::time::timeout(Duration::from_secs(10), client.allocate())
        .await
        .map_err(|_| "allocation timed out".to_string())
        .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
    let _ = client.close().await;
    result
}

#[tokio::test(flavor = "multi_thread")]
async fn turn_allocates_only_with_valid_credentials() {
    let (server, stun) = server_with(true).await;
    let config = server.get("/config?room=lab-1").await.json();
    let turn = &config["iceServers"][1];
    assert_eq!(
        turn["urls"],
        format!("turn:127.0.0.1:{}?transport=udp", stun.port())
    );
    let username = turn["username"].as_str().unwrap();
    assert!(username.ends_with(":lab-1"), "{username}");
    let credential = turn["credential"].as_str().unwrap();

    allocate(stun, username, credential)
        .await
        .expect("allocation with /config credentials");
    assert!(allocate(stun, username, "wrong").await.is_err());
    assert!(allocate(
        stun,
        "1:lab-1",
        &sigrelay::ice::turn_password("x", "1:lab-1")
    )
    .await
    .is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn stun_alone_refuses_allocations() {
    let (server, stun) = server_with(false).await;
    let config = server.get("/config").await.json();
    assert_eq!(
        config["iceServers"].as_array().unwrap().len(),
        1,
        "{config}"
    );
    let (user, pass) = sigrelay::ice::credentials("anything", "room");
    assert!(allocate(stun, &user, &pass).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Issue 12: quotas (1), forbidden peers (4), bounded unauthenticated traffic (5). A hand-made
// TURN client (the `stun` crate builds and reads the packets) speaks to the real server.

use stun::attributes::{ATTR_DATA, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;
use turn::proto::channum::ChannelNumber;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

/// What a request carries besides authentication.
#[derive(Default, Clone)]
struct Attrs {
    transport: bool,
    lifetime: Option<u64>,
    peers: Vec<SocketAddr>,
    channel: Option<u16>,
    data: Option<Vec<u8>>,
}

/// A TURN client on one UDP socket.
struct TurnClient {
    socket: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    realm: String,
    nonce: String,
}

fn build(method: Method, class: MessageClass, attrs: &Attrs, auth: Option<&TurnClient>) -> Vec<u8> {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(stun::agent::TransactionId::new()),
        Box::new(MessageType::new(method, class)),
    ];
    if attrs.transport {
        setters.push(Box::new(RequestedTransport {
            protocol: turn::proto::PROTO_UDP,
        }));
    }
    if let Some(secs) = attrs.lifetime {
        setters.push(Box::new(Lifetime(Duration::from_secs(secs))));
    }
    for peer in &attrs.peers {
        setters.push(Box::new(PeerAddress {
            ip: peer.ip(),
            port: peer.port(),
        }));
    }
    if let Some(channel) = attrs.channel {
        setters.push(Box::new(ChannelNumber(channel)));
    }
    if let Some(data) = &attrs.data {
        setters.push(Box::new(turn::proto::data::Data(data.clone())));
    }
    if let Some(c) = auth {
        setters.push(Box::new(TextAttribute::new(
            ATTR_USERNAME,
            c.username.clone(),
        )));
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, c.realm.clone())));
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, c.nonce.clone())));
        setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
            c.username.clone(),
            c.realm.clone(),
            c.password.clone(),
        )));
    }
    setters.push(Box::new(FINGERPRINT));
    let mut m = Message::new();
    m.build(&setters).unwrap();
    m.raw
}

fn decode(raw: &[u8]) -> Option<Message> {
    let mut m = Message::new();
    m.raw = raw.to_vec();
    m.decode().ok()?;
    Some(m)
}

fn error_code(m: &Message) -> u16 {
    let mut e = ErrorCodeAttribute::default();
    use stun::message::Getter;
    e.get_from(m).map(|_| e.code.0).unwrap_or(0)
}

impl TurnClient {
    async fn new(ip: &str, server: SocketAddr, username: &str, password: &str) -> Self {
        TurnClient {
            socket: UdpSocket::bind((ip, 0)).await.unwrap(),
            server,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: String::new(),
            nonce: String::new(),
        }
    }

    /// The next STUN message within `limit` that `wanted` accepts.
    async fn next(&self, limit: Duration, wanted: impl Fn(&Message) -> bool) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut buf = [0u8; 1500];
        loop {
            let (n, _) = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            match decode(&buf[..n]) {
                Some(m) if wanted(&m) => return Some(m),
                _ => continue,
            }
        }
    }

    /// Sends `raw` and waits up to 2 s for the response with its transaction id.
    async fn exchange(&self, raw: &[u8]) -> Option<Message> {
        self.socket.send_to(raw, self.server).await.unwrap();
        let id = &raw[8..20];
        self.next(Duration::from_secs(2), |m| m.transaction_id.0 == id)
            .await
    }

    /// An authenticated request (after one 401/438 round for the nonce); the error code if any.
    async fn request(&mut self, method: Method, attrs: &Attrs) -> Result<Message, u16> {
        for _ in 0..3 {
            let auth = (!self.nonce.is_empty()).then_some(&*self);
            let raw = build(method, CLASS_REQUEST, attrs, auth);
            let answer = self.exchange(&raw).await.ok_or(0u16)?;
            if answer.typ.class == CLASS_SUCCESS_RESPONSE {
                return Ok(answer);
            }
            let code = error_code(&answer);
            if code == 401 && self.nonce.is_empty() || code == 438 {
                self.nonce = TextAttribute::get_from_as(&answer, ATTR_NONCE)
                    .unwrap()
                    .text;
                self.realm = TextAttribute::get_from_as(&answer, ATTR_REALM)
                    .unwrap()
                    .text;
                continue;
            }
            return Err(code);
        }
        Err(0)
    }

    async fn allocate(&mut self) -> Result<SocketAddr, u16> {
        let attrs = Attrs {
            transport: true,
            lifetime: Some(600),
            ..Attrs::default()
        };
        let answer = self.request(METHOD_ALLOCATE, &attrs).await?;
        let mut relay = RelayedAddress::default();
        use stun::message::Getter;
        relay.get_from(&answer).unwrap();
        Ok(SocketAddr::new(relay.ip, relay.port))
    }

    async fn permit(&mut self, peer: SocketAddr) -> Result<(), u16> {
        let attrs = Attrs {
            peers: vec![peer],
            ..Attrs::default()
        };
        self.request(METHOD_CREATE_PERMISSION, &attrs)
            .await
            .map(|_| ())
    }

    async fn channel_bind(&mut self, peer: SocketAddr) -> Result<(), u16> {
        let attrs = Attrs {
            peers: vec![peer],
            channel: Some(0x4001),
            ..Attrs::default()
        };
        self.request(METHOD_CHANNEL_BIND, &attrs).await.map(|_| ())
    }

    async fn free(&mut self) -> Result<(), u16> {
        let attrs = Attrs {
            lifetime: Some(0),
            ..Attrs::default()
        };
        self.request(METHOD_REFRESH, &attrs).await.map(|_| ())
    }

    async fn send_to_peer(&self, peer: SocketAddr, data: &[u8]) {
        let attrs = Attrs {
            peers: vec![peer],
            data: Some(data.to_vec()),
            ..Attrs::default()
        };
        let raw = build(METHOD_SEND, CLASS_INDICATION, &attrs, None);
        self.socket.send_to(&raw, self.server).await.unwrap();
    }

    /// The next Data indication within `limit`: (peer, data).
    async fn data_from_peer(&self, limit: Duration) -> Option<(SocketAddr, Vec<u8>)> {
        let m = self
            .next(limit, |m| {
                m.typ.method == METHOD_DATA && m.typ.class == CLASS_INDICATION
            })
            .await?;
        let mut peer = PeerAddress::default();
        use stun::message::Getter;
        peer.get_from(&m).ok()?;
        let data = m.get(ATTR_DATA).ok()?;
        Some((SocketAddr::new(peer.ip, peer.port), data))
    }
}

/// The credentials `/config?room=ROOM` hands out.
fn creds(config: &serde_json::Value) -> (String, String) {
    let turn = &config["iceServers"][1];
    (
        turn["username"].as_str().unwrap().to_owned(),
        turn["credential"].as_str().unwrap().to_owned(),
    )
}

fn stun_addr(config: &serde_json::Value) -> SocketAddr {
    let url = config["iceServers"][0]["urls"].as_str().unwrap();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn get_json(addr: SocketAddr, target: &str) -> serde_json::Value {
    request(addr, "GET", target, &[], b"").await.json()
}

/// Allocates with a fresh client on `ip` per attempt; returns the successes, the clients
/// holding them, and the error codes of the rest.
async fn allocate_many(
    ip: &str,
    stun: SocketAddr,
    (user, pass): &(String, String),
    attempts: usize,
) -> (Vec<TurnClient>, Vec<u16>) {
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..attempts {
        let mut c = TurnClient::new(ip, stun, user, pass).await;
        match c.allocate().await {
            Ok(_) => held.push(c),
            Err(code) => refused.push(code),
        }
    }
    (held, refused)
}

/// The real binary on loopback with STUN (and TURN relaying from 127.0.0.1), plus `extra`.
fn ice_binary(turn: bool, extra: &[&str], nofile: Option<u64>) -> Binary {
    let mut args = vec!["--bind", "127.0.0.1:0", "--stun", "127.0.0.1:0"];
    if turn {
        args.extend(["--turn", "--turn-relay-ip", "127.0.0.1"]);
    }
    args.extend(extra);
    Binary::start_with_nofile(&args, nofile)
}

#[tokio::test(flavor = "multi_thread")]
async fn allocations_past_each_cap_get_486_and_freed_ones_let_new_ones_in() {
    let server = ice_binary(
        true,
        &[
            "--turn-max-allocations",
            "40",
            "--turn-max-allocations-per-ip",
            "25",
            "--turn-max-allocations-per-user",
            "30",
        ],
        None,
    );
    let config = get_json(server.addr, "/config?room=lab-1").await;
    let stun = stun_addr(&config);
    let a = creds(&config);
    let b = creds(&get_json(server.addr, "/config?room=lab-2").await);
    let fds_before = server.open_fds();

    // One credential, one address: the per-address cap.
    let (mut held, refused) = allocate_many("127.0.0.1", stun, &a, 28).await;
    assert_eq!((held.len(), refused.clone()), (25, vec![486; 3]));
    // The same credential from another address: the per-credential cap (30).
    let (more, refused) = allocate_many("127.0.0.2", stun, &a, 7).await;
    assert_eq!((more.len(), refused), (5, vec![486; 2]));
    held.extend(more);
    // Another credential: the total (40).
    let (more, refused) = allocate_many("127.0.0.3", stun, &b, 13).await;
    assert_eq!((more.len(), refused), (10, vec![486; 3]));
    held.extend(more);

    let fds = server.open_fds();
    println!("40 allocations held: server fds {fds_before} -> {fds}");
    assert!(fds <= fds_before + 40 + 16, "{fds_before} -> {fds}");
    let health = request(server.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(health.status, 200);

    // Freed allocations (Refresh with LIFETIME 0) let new ones in.
    for c in held.iter_mut().take(5) {
        c.free().await.expect("refresh 0");
    }
    let deadline = std::time::Instant::now() + WAIT;
    let mut fresh = Vec::new();
    while fresh.len() < 5 && std::time::Instant::now() < deadline {
        let (more, _) = allocate_many("127.0.0.4", stun, &b, 1).await;
        fresh.extend(more);
    }
    assert_eq!(fresh.len(), 5, "places given back");
    let (_, refused) = allocate_many("127.0.0.4", stun, &b, 1).await;
    assert_eq!(refused, vec![486]);
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_sockets_never_take_the_descriptors_http_needs() {
    // 400 descriptors, 100 of them for HTTP: TURN gets at most 400 - 100 - 256 = 44.
    let server = ice_binary(
        true,
        &[
            "--max-connections",
            "100",
            "--turn-max-allocations-per-ip",
            "1000",
            "--turn-max-allocations-per-user",
            "1000",
        ],
        Some(400),
    );
    let config = get_json(server.addr, "/config").await;
    let stun = stun_addr(&config);
    let (held, refused) = allocate_many("127.0.0.1", stun, &creds(&config), 60).await;
    assert_eq!((held.len(), refused.len()), (44, 16));
    assert!(refused.iter().all(|&c| c == 486), "{refused:?}");
    // HTTP still has its connections: 90 idle ones held, and /healthz answers.
    let mut idle = Vec::new();
    for _ in 0..90 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let health = request(server.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(health.status, 200);
    let fds = server.open_fds();
    println!("44 allocations + 91 connections: server fds {fds} of 400");
    assert!(fds < 400, "{fds}");
}

async fn turn_server(
    tweak: impl FnOnce(&mut sigrelay::Config),
) -> (TestServer, SocketAddr, (String, String)) {
    let server = TestServer::with(|c| {
        c.ice.bind = Some("127.0.0.1:0".parse().unwrap());
        c.ice.turn = true;
        c.ice.relay_ip = Some(IpAddr::from([127, 0, 0, 1]));
        tweak(c);
    })
    .await;
    let config = server.get("/config?room=lab-1").await.json();
    (server, stun_addr(&config), creds(&config))
}

#[tokio::test(flavor = "multi_thread")]
async fn turn_refuses_to_relay_into_the_servers_own_machine() {
    let (server, stun, (user, pass)) = turn_server(|_| {}).await;
    let victim1 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let victim2 = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let mut c = TurnClient::new("127.0.0.1", stun, &user, &pass).await;
    c.allocate().await.unwrap();
    let forbidden: Vec<SocketAddr> = vec![
        victim1.local_addr().unwrap(),
        victim2.local_addr().unwrap(),
        "0.0.0.0:9".parse().unwrap(),
        "127.0.0.53:53".parse().unwrap(),
        stun,
        server.addr,
        "224.0.0.251:5353".parse().unwrap(),
        "255.255.255.255:9".parse().unwrap(),
        "169.254.169.254:80".parse().unwrap(),
        "[::ffff:127.0.0.1]:9".parse().unwrap(),
    ];
    for peer in &forbidden {
        assert_eq!(c.permit(*peer).await, Err(403), "CreatePermission {peer}");
        assert_eq!(c.channel_bind(*peer).await, Err(403), "ChannelBind {peer}");
    }
    // A Send indication goes nowhere either, and a Binding request relayed to our own STUN
    // port gets no answer back.
    for peer in [
        victim1.local_addr().unwrap(),
        victim2.local_addr().unwrap(),
        stun,
    ] {
        c.send_to_peer(
            peer,
            &build(METHOD_BINDING, CLASS_REQUEST, &Attrs::default(), None),
        )
        .await;
    }
    let mut buf = [0u8; 1500];
    for victim in [&victim1, &victim2] {
        let got =
            tokio::time::timeout(Duration::from_millis(300), victim.recv_from(&mut buf)).await;
        assert!(got.is_err(), "a forbidden peer received a datagram");
    }
    assert!(c.data_from_peer(Duration::from_millis(300)).await.is_none());
    // A LAN peer is allowed by default (that is the point on a LAN).
    assert_eq!(c.permit("10.0.0.5:5000".parse().unwrap()).await, Ok(()));
    assert_eq!(c.permit("192.168.1.20:5000".parse().unwrap()).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_private_refuses_lan_peers() {
    let (_server, stun, (user, pass)) = turn_server(|c| c.ice.deny_private = true).await;
    let mut c = TurnClient::new("127.0.0.1", stun, &user, &pass).await;
    c.allocate().await.unwrap();
    for peer in [
        "10.0.0.5:5000",
        "172.16.0.1:5000",
        "192.168.1.20:5000",
        "[fd00::1]:5",
    ] {
        assert_eq!(c.permit(peer.parse().unwrap()).await, Err(403), "{peer}");
    }
    assert_eq!(c.permit("8.8.8.8:5000".parse().unwrap()).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread")]
async fn relayed_media_reaches_an_allowed_peer_and_another_relay() {
    let (_server, stun, (user, pass)) = turn_server(|c| c.ice.allow_loopback_peers = true).await;
    // With --turn-allow-loopback-peers a peer on 127.0.0.2 stands for a LAN peer.
    let peer = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut c = TurnClient::new("127.0.0.1", stun, &user, &pass).await;
    let relay = c.allocate().await.unwrap();
    c.permit(peer_addr).await.unwrap();
    c.send_to_peer(peer_addr, b"ping").await;
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .expect("relayed to the peer")
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"ping"[..], relay));
    peer.send_to(b"pong", relay).await.unwrap();
    assert_eq!(
        c.data_from_peer(WAIT).await,
        Some((peer_addr, b"pong".to_vec()))
    );
    // Still never the server's own ports, on any loopback address.
    assert_eq!(c.permit(stun).await, Err(403));
    let own_http_on_other_loopback =
        SocketAddr::new(IpAddr::from([127, 0, 0, 2]), _server.addr.port());
    assert_eq!(c.permit(own_http_on_other_loopback).await, Err(403));

    // Two clients both relayed through this server reach each other through the relay
    // addresses (on the default rules too: a live relay address is always allowed).
    let mut d = TurnClient::new("127.0.0.3", stun, &user, &pass).await;
    let relay_d = d.allocate().await.unwrap();
    c.permit(relay_d).await.unwrap();
    d.permit(relay).await.unwrap();
    c.send_to_peer(relay_d, b"to d").await;
    assert_eq!(
        d.data_from_peer(WAIT).await,
        Some((relay, b"to d".to_vec()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_to_relay_works_on_the_default_rules() {
    let (_server, stun, (user, pass)) = turn_server(|_| {}).await;
    let mut c = TurnClient::new("127.0.0.1", stun, &user, &pass).await;
    let mut d = TurnClient::new("127.0.0.2", stun, &user, &pass).await;
    let (relay_c, relay_d) = (c.allocate().await.unwrap(), d.allocate().await.unwrap());
    c.permit(relay_d).await.unwrap();
    d.permit(relay_c).await.unwrap();
    c.send_to_peer(relay_d, b"hello").await;
    assert_eq!(
        d.data_from_peer(WAIT).await,
        Some((relay_c, b"hello".to_vec()))
    );
    // A relay port that is no longer live is the server's own address again.
    d.free().await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while c.permit(relay_d).await != Err(403) {
        assert!(
            std::time::Instant::now() < deadline,
            "freed relay still allowed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Floods unauthenticated Allocate requests (half without MESSAGE-INTEGRITY, half with a made-up
/// nonce) from `sources` sockets for `duration`; returns (packets sent, answers received).
async fn flood(stun: SocketAddr, sources: &[&str], duration: Duration) -> (u64, u64) {
    let mut tasks = Vec::new();
    for ip in sources {
        let socket = Arc::new(UdpSocket::bind((*ip, 0)).await.unwrap());
        let reader = socket.clone();
        let answers = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            let mut n = 0u64;
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(500), reader.recv_from(&mut buf)).await
            {
                n += 1;
            }
            n
        });
        let sender = tokio::spawn(async move {
            let plain = build(
                METHOD_ALLOCATE,
                CLASS_REQUEST,
                &Attrs {
                    transport: true,
                    ..Attrs::default()
                },
                None,
            );
            let forged = TurnClient {
                socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
                server: stun,
                username: format!("{}:lab", u64::MAX),
                password: "guess".into(),
                realm: "sigrelay".into(),
                nonce: "0123456789abcdef".into(),
            };
            let with_mi = build(
                METHOD_ALLOCATE,
                CLASS_REQUEST,
                &Attrs {
                    transport: true,
                    ..Attrs::default()
                },
                Some(&forged),
            );
            let deadline = std::time::Instant::now() + duration;
            let mut sent = 0u64;
            while std::time::Instant::now() < deadline {
                for _ in 0..64 {
                    let mut p = if sent % 2 == 0 {
                        plain.clone()
                    } else {
                        with_mi.clone()
                    };
                    // A fresh transaction id each time, as a flood tool would send.
                    p[8..16].copy_from_slice(&sent.to_be_bytes());
                    let _ = socket.send_to(&p, stun).await;
                    sent += 1;
                }
                tokio::task::yield_now().await;
            }
            sent
        });
        tasks.push((sender, answers));
    }
    let (mut sent, mut answered) = (0, 0);
    for (s, a) in tasks {
        sent += s.await.unwrap();
        answered += a.await.unwrap();
    }
    (sent, answered)
}

/// CPU time (user + system) process `pid` has used, seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

async fn flood_keeps_memory_flat(turn: bool) {
    let server = ice_binary(turn, &[], None);
    let config = get_json(server.addr, "/config").await;
    let stun = stun_addr(&config);
    let rss_before = server.rss_kib();
    let cpu_before = cpu_secs(server.child.id());
    let duration = Duration::from_secs(3);
    let (sent_one, answered_one) = flood(stun, &["127.0.0.1"], duration).await;
    let sources = [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
        "127.0.0.7",
    ];
    let (sent_many, answered_many) = flood(stun, &sources, duration).await;
    let rss_after = server.rss_kib();
    let cpu = cpu_secs(server.child.id()) - cpu_before;
    println!(
        "turn {turn}: {sent_one} packets from 1 source ({answered_one} answered), {sent_many} from {} \
         ({answered_many} answered); RSS {rss_before} -> {rss_after} KiB; server CPU {cpu:.2} s",
        sources.len()
    );
    // Rate-limited: --stun-rate 50/s, bursts of 200, per address (3 s flood + the reply wait).
    let per_source = 200 + 50 * 4;
    assert!(answered_one <= per_source, "{answered_one}");
    assert!(
        answered_many <= per_source * sources.len() as u64,
        "{answered_many}"
    );
    assert!(answered_one > 0, "still answered");
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS {rss_before} -> {rss_after} KiB"
    );
    assert_eq!(
        request(server.addr, "GET", "/healthz", &[], b"")
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_floods_cost_bounded_memory_with_turn() {
    flood_keeps_memory_flat(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_floods_cost_bounded_memory_with_stun_alone() {
    flood_keeps_memory_flat(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allocation_still_works_after_a_flood() {
    let (_server, stun, (user, pass)) = turn_server(|_| {}).await;
    flood(stun, &["127.0.0.9"], Duration::from_secs(1)).await;
    let mut c = TurnClient::new("127.0.0.10", stun, &user, &pass).await;
    c.allocate().await.expect("a legitimate client is served");
}

/// Issue 17: TURN over TCP on the HTTP port. A Binding request framed on a TCP stream is
/// answered on it; HTTP on the same port still works; TCP clients per address are capped (the
/// per-address allocation cap: a TCP allocation needs its own connection), the next one is
/// closed at once; and a garbage frame ends its connection.
#[tokio::test(flavor = "multi_thread")]
async fn turn_over_tcp_shares_the_http_port_and_bounds_its_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::with(|c| {
        c.ice.bind = Some("127.0.0.1:0".parse().unwrap());
        c.ice.turn = true;
        c.ice.relay_ip = Some(IpAddr::from([127, 0, 0, 1]));
        c.ice.max_allocations_per_ip = 3;
    })
    .await;
    let config = server.get("/config?room=r1").await.json();
    let tcp_url = format!("turn:127.0.0.1:{}?transport=tcp", server.addr.port());
    assert!(
        config["iceServers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["urls"] == tcp_url.as_str() && s["username"].is_string()),
        "{config}"
    );
    let binding = || {
        let mut request = vec![0x00, 0x01, 0x00, 0x00];
        request.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        request.extend_from_slice(b"sigrelay-tcp");
        request
    };
    let mut held = Vec::new();
    for i in 0..3 {
        let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(&binding()).await.unwrap();
        let mut head = [0u8; 20];
        tokio::time::timeout(WAIT, conn.read_exact(&mut head))
            .await
            .unwrap_or_else(|_| panic!("client {i}: no Binding answer over TCP"))
            .unwrap();
        assert_eq!(&head[..2], &[0x01, 0x01], "Binding success");
        let length = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let mut rest = vec![0u8; length];
        conn.read_exact(&mut rest).await.unwrap();
        held.push(conn);
    }
    // The fourth from this address is over the cap: closed without an answer.
    let mut over = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    over.write_all(&binding()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, over.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "a TCP client over the cap was served");
    // HTTP still answers on the port meanwhile.
    assert_eq!(server.get("/healthz").await.status, 200);
    // A bad frame (a type whose top bits are not STUN's or ChannelData's) ends a connection,
    // and its place is free again for the next client.
    let mut bad = held.pop().unwrap();
    bad.write_all(&[0x80, 0, 0, 0]).await.unwrap();
    let n = tokio::time::timeout(WAIT, bad.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let mut again = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    again.write_all(&binding()).await.unwrap();
    let mut head = [0u8; 20];
    tokio::time::timeout(WAIT, again.read_exact(&mut head))
        .await
        .expect("a freed place is served")
        .unwrap();
    assert_eq!(&head[..2], &[0x01, 0x01]);
}
