//! The packet filter between the STUN/TURN UDP socket and the `turn` crate's server: a `Conn`
//! that reads every datagram before the server does, answers or drops what must not reach it,
//! and watches the server's answers to keep the allocation counts.
//!
//! Invariants (each one closes a hole the crate leaves open; tests/ice.rs attacks each):
//! - **Only authenticated requests reach the crate's authentication.** The crate stores every
//!   nonce it hands out and never forgets an unused one, so a request without
//!   MESSAGE-INTEGRITY, with a nonce we did not issue, a bad credential or a bad integrity is
//!   answered here (401 / 438 / 400), from state of fixed size. Nonces are the crate's own:
//!   the filter asks it for one every [`NONCE_ROTATION`] through an injected request (from
//!   [`INTERNAL`], answered to nothing), accepts the current and the previous one, and later
//!   presents each retired one once more after it expired, which is the only way the crate
//!   deletes a nonce. The crate's nonce map thus holds a handful of entries, ever.
//! - **Every STUN request costs a token** of the sender's address (`--stun-rate`) and of a
//!   global bucket; past either it is dropped unanswered (no reflection, bounded CPU). Media
//!   (ChannelData, Send indications) of an existing allocation is not counted.
//! - **Nothing without an allocation reaches the relay path**: ChannelData and Send
//!   indications from an address holding no allocation are dropped.
//! - **No allocation beyond the quota**: an Allocate past the per-credential, per-address or
//!   total cap (the total already lowered to the fd budget) gets 486 and never reaches the
//!   crate. The place is taken before the crate sees the request and released when its answer
//!   is not a success, or when the allocation-closed notification arrives. The crate handles
//!   one datagram at a time on this socket, so "the answer to the request just passed" is the
//!   next Allocate response it sends, before it reads again.
//! - **No relaying to forbidden peers**: every XOR-PEER-ADDRESS of a CreatePermission or
//!   ChannelBind is checked against [`super::peer::PeerRules`] (403 Forbidden IP, RFC 8656
//!   §9), Send indications to a forbidden peer are dropped, and the relay sockets themselves
//!   refuse to send there (the second line, see [`FilteredRelay`]).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use stun::attributes::*;
use stun::error_code::*;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use turn::proto::chandata::ChannelData;
use turn::proto::relayaddr::RelayedAddress;
use webrtc_util::Conn;

use super::peer::PeerRules;
use super::quota::Quota;
use crate::limits::RateLimiter;
use crate::sync::lock;

/// The source of requests the filter injects to obtain nonces; no real datagram comes from
/// port 0, and answers to it are read here, never sent.
pub const INTERNAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// How often a fresh nonce is asked for. The current and the previous one are accepted, so a
/// nonce lives 2 × this (well inside the crate's one-hour nonce lifetime).
pub const NONCE_ROTATION: Duration = Duration::from_secs(20 * 60);

/// The crate's nonce lifetime (`turn::server::request::NONCE_LIFETIME`, not public): a retired
/// nonce presented after this is deleted by the crate.
const CRATE_NONCE_LIFETIME: Duration = Duration::from_secs(3600);

/// STUN requests per second from all addresses together, and the burst above that: bounds the
/// CPU a flood from many (possibly spoofed) sources can take.
pub const GLOBAL_RATE: f64 = 5_000.0;
pub const GLOBAL_BURST: f64 = 10_000.0;

/// Counters, for logs and tests.
#[derive(Default, Debug)]
pub struct Stats {
    pub rate_limited: AtomicU64,
    pub unauthenticated: AtomicU64,
    pub quota_refused: AtomicU64,
    pub forbidden_peer: AtomicU64,
    pub dropped: AtomicU64,
}

/// What the filter and the relay sockets share.
pub struct Shared {
    pub quota: Mutex<Quota>,
    pub rules: RwLock<PeerRules>,
    pub stats: Stats,
}

impl Shared {
    pub fn quota(&self) -> MutexGuard<'_, Quota> {
        lock(&self.quota)
    }

    /// Whether a relay may exchange datagrams with `peer`.
    pub fn peer_allowed(&self, peer: SocketAddr) -> Result<(), super::peer::Forbidden> {
        let rules = self.rules.read().unwrap_or_else(|p| p.into_inner());
        rules.check(peer, |a| self.quota().is_relay(a))
    }
}

/// How the filter authenticates and what it allows.
pub struct FilterSettings {
    pub realm: String,
    pub secret: String,
    /// TURN on; otherwise only Binding requests are served.
    pub turn: bool,
    /// `--stun-rate`: requests per address per second; bursts of four times that.
    pub rate: f64,
}

#[derive(Clone)]
struct IssuedNonce {
    text: String,
    issued: Instant,
}

#[derive(Default)]
struct Nonces {
    current: Option<IssuedNonce>,
    previous: Option<IssuedNonce>,
    /// Still in the crate's map; each is presented once after it expired, then forgotten.
    retired: VecDeque<IssuedNonce>,
}

impl Nonces {
    fn accepts(&self, nonce: &str) -> bool {
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .any(|n| n.text == nonce)
    }
}

/// What the filter reads from and answers on: the UDP socket, or the TCP clients of
/// [`super::tcp::TcpMux`] seen as datagrams (one STUN message or ChannelData each).
#[async_trait]
pub trait Datagrams: Send + Sync {
    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)>;
    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> std::io::Result<usize>;
    fn local_addr(&self) -> std::io::Result<SocketAddr>;
}

#[async_trait]
impl Datagrams for UdpSocket {
    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        UdpSocket::recv_from(self, buf).await
    }
    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        UdpSocket::send_to(self, buf, to).await
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        UdpSocket::local_addr(self)
    }
}

#[async_trait]
impl<T: Datagrams + ?Sized> Datagrams for Arc<T> {
    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        (**self).recv_from(buf).await
    }
    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        (**self).send_to(buf, to).await
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        (**self).local_addr()
    }
}

/// The STUN/TURN socket (UDP, or TCP clients) as the `turn` server sees it.
pub struct Filter {
    socket: Box<dyn Datagrams>,
    settings: FilterSettings,
    shared: Arc<Shared>,
    per_ip: RateLimiter,
    global: RateLimiter,
    nonces: Mutex<Nonces>,
    nonce_arrived: Notify,
    /// The client whose Allocate was passed last and is not yet answered.
    pending: Mutex<Option<SocketAddr>>,
    inject_tx: mpsc::Sender<Vec<u8>>,
    inject_rx: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
}

/// What to do with a datagram.
enum Verdict {
    Pass,
    Drop,
}

impl Filter {
    pub fn new(
        socket: impl Datagrams + 'static,
        settings: FilterSettings,
        shared: Arc<Shared>,
    ) -> Self {
        let (inject_tx, inject_rx) = mpsc::channel(4);
        Filter {
            socket: Box::new(socket),
            per_ip: RateLimiter::new(settings.rate, settings.rate * 4.0),
            global: RateLimiter::new(GLOBAL_RATE, GLOBAL_BURST),
            settings,
            shared,
            nonces: Mutex::new(Nonces::default()),
            nonce_arrived: Notify::new(),
            pending: Mutex::new(None),
            inject_tx,
            inject_rx: tokio::sync::Mutex::new(inject_rx),
        }
    }

    /// Asks the server for a fresh nonce and waits (up to `wait`) until it is the current one.
    /// Presents the oldest expired retired nonce if there is one, so the server deletes it.
    pub async fn rotate_nonce(&self, wait: Duration) -> bool {
        let expired = {
            let mut nonces = lock(&self.nonces);
            match nonces.retired.front() {
                Some(n) if n.issued.elapsed() > CRATE_NONCE_LIFETIME + Duration::from_secs(5) => {
                    nonces.retired.pop_front()
                }
                _ => None,
            }
        };
        let Some(raw) = nonce_request(expired.as_ref().map(|n| n.text.as_str())) else {
            return false;
        };
        let arrived = self.nonce_arrived.notified();
        if self.inject_tx.send(raw).await.is_err() {
            return false;
        }
        tokio::time::timeout(wait, arrived).await.is_ok()
    }

    /// Reads a nonce the server sent to [`INTERNAL`] and makes it current.
    fn take_nonce(&self, raw: &[u8]) {
        let mut m = Message::new();
        m.raw = raw.to_vec();
        if m.decode().is_err() {
            return;
        }
        let Ok(nonce) = TextAttribute::get_from_as(&m, ATTR_NONCE) else {
            return;
        };
        let mut nonces = lock(&self.nonces);
        let fresh = IssuedNonce {
            text: nonce.text,
            issued: Instant::now(),
        };
        if let Some(old) = nonces.previous.take() {
            nonces.retired.push_back(old);
        }
        nonces.previous = nonces.current.replace(fresh);
        drop(nonces);
        self.nonce_arrived.notify_waiters();
    }

    fn current_nonce(&self) -> String {
        lock(&self.nonces)
            .current
            .as_ref()
            .map(|n| n.text.clone())
            .unwrap_or_default()
    }

    async fn judge(&self, packet: &[u8], src: SocketAddr) -> Verdict {
        if ChannelData::is_channel_data(packet) {
            return self.only_with_allocation(src);
        }
        if !is_message(packet) {
            return self.drop_it();
        }
        // The class bits of the type (RFC 8489 §5) are both zero for a request: its token is
        // taken before any parsing, so a flood costs little more than the read.
        if packet[0] & 0x01 == 0 && packet[1] & 0x10 == 0 && !self.take_token(src) {
            return Verdict::Drop;
        }
        let mut m = Message::new();
        m.raw = packet.to_vec();
        if m.decode().is_err() {
            return self.drop_it();
        }
        if m.typ.class == CLASS_INDICATION && m.typ.method == METHOD_SEND {
            if let Verdict::Drop = self.only_with_allocation(src) {
                return Verdict::Drop;
            }
            let peers = peer_addresses(&m);
            if peers.len() != 1 || self.forbidden(&peers, src).is_some() {
                return self.drop_it();
            }
            return Verdict::Pass;
        }
        if m.typ.class != CLASS_REQUEST {
            return self.drop_it();
        }
        let method = m.typ.method;
        if method == METHOD_BINDING {
            return Verdict::Pass;
        }
        if !self.settings.turn {
            self.answer(&m, src, CODE_FORBIDDEN, "TURN is off", None)
                .await;
            return Verdict::Drop;
        }
        if ![
            METHOD_ALLOCATE,
            METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
        ]
        .contains(&method)
        {
            self.answer(&m, src, CODE_BAD_REQUEST, "unsupported method", None)
                .await;
            return Verdict::Drop;
        }
        let Some((user, key)) = self.authenticate(&mut m, src).await else {
            self.shared
                .stats
                .unauthenticated
                .fetch_add(1, Ordering::Relaxed);
            return Verdict::Drop;
        };
        if method == METHOD_ALLOCATE {
            let fresh = !self.shared.quota().has(src);
            let reserved = self.shared.quota().reserve(src, &user);
            return match reserved {
                Ok(()) => {
                    if fresh {
                        *lock(&self.pending) = Some(src);
                    }
                    Verdict::Pass
                }
                Err(refusal) => {
                    self.shared
                        .stats
                        .quota_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(client = %src, user, %refusal, "TURN allocation refused (486)");
                    self.answer(
                        &m,
                        src,
                        CODE_ALLOC_QUOTA_REACHED,
                        "Allocation Quota Reached",
                        Some(&key),
                    )
                    .await;
                    Verdict::Drop
                }
            };
        }
        if method == METHOD_CREATE_PERMISSION || method == METHOD_CHANNEL_BIND {
            let peers = peer_addresses(&m);
            if peers.is_empty() {
                self.answer(&m, src, CODE_BAD_REQUEST, "no peer address", Some(&key))
                    .await;
                return Verdict::Drop;
            }
            if let Some(why) = self.forbidden(&peers, src) {
                tracing::info!(client = %src, user, %why, "TURN peer refused (403)");
                self.answer(&m, src, CODE_FORBIDDEN, "Forbidden IP", Some(&key))
                    .await;
                return Verdict::Drop;
            }
            let ips: Vec<IpAddr> = peers.iter().map(|p| p.ip()).collect();
            if !self.shared.quota().add_peers(src, &ips) {
                self.answer(
                    &m,
                    src,
                    CODE_INSUFFICIENT_CAPACITY,
                    "too many peers on one allocation",
                    Some(&key),
                )
                .await;
                return Verdict::Drop;
            }
        }
        Verdict::Pass
    }

    /// Checks nonce, credential and integrity; answers and returns `None` when one fails.
    /// On success: the username and the long-term key.
    async fn authenticate(&self, m: &mut Message, src: SocketAddr) -> Option<(String, Vec<u8>)> {
        if !m.contains(ATTR_MESSAGE_INTEGRITY) {
            self.answer(m, src, CODE_UNAUTHORIZED, "Unauthorized", None)
                .await;
            return None;
        }
        let Ok(nonce) = TextAttribute::get_from_as(m, ATTR_NONCE) else {
            self.answer(m, src, CODE_BAD_REQUEST, "no nonce", None)
                .await;
            return None;
        };
        if !lock(&self.nonces).accepts(&nonce.text) {
            self.answer(m, src, CODE_STALE_NONCE, "Stale Nonce", None)
                .await;
            return None;
        }
        let user = TextAttribute::get_from_as(m, ATTR_USERNAME).ok()?.text;
        let key = match super::auth_key(&self.settings.secret, &user, &self.settings.realm) {
            Ok(key) => key,
            Err(why) => {
                tracing::debug!(client = %src, why, "TURN credential refused");
                self.answer(m, src, CODE_UNAUTHORIZED, "Unauthorized", None)
                    .await;
                return None;
            }
        };
        if MessageIntegrity(key.clone()).check(m).is_err() {
            self.answer(m, src, CODE_UNAUTHORIZED, "Unauthorized", None)
                .await;
            return None;
        }
        Some((user, key))
    }

    /// The first peer (of `peers`) a relay must not reach, if any.
    fn forbidden(&self, peers: &[SocketAddr], src: SocketAddr) -> Option<super::peer::Forbidden> {
        let why = peers
            .iter()
            .find_map(|p| self.shared.peer_allowed(*p).err())?;
        self.shared
            .stats
            .forbidden_peer
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(client = %src, ?peers, %why, "TURN peer refused");
        Some(why)
    }

    /// One request's worth of the sender's and the global bucket.
    fn take_token(&self, src: SocketAddr) -> bool {
        if self.per_ip.check(src.ip()).is_err() || self.global.check(INTERNAL.ip()).is_err() {
            self.shared
                .stats
                .rate_limited
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn only_with_allocation(&self, src: SocketAddr) -> Verdict {
        if self.shared.quota().has(src) {
            Verdict::Pass
        } else {
            self.drop_it()
        }
    }

    fn drop_it(&self) -> Verdict {
        self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        Verdict::Drop
    }

    /// Sends an error response to `req`: with REALM and the current NONCE for 401/438, with
    /// MESSAGE-INTEGRITY when the request was authenticated with `key`.
    async fn answer(
        &self,
        req: &Message,
        to: SocketAddr,
        code: ErrorCode,
        reason: &str,
        key: Option<&[u8]>,
    ) {
        let nonce = (code == CODE_UNAUTHORIZED || code == CODE_STALE_NONCE)
            .then(|| (self.settings.realm.clone(), self.current_nonce()));
        if let Some(raw) = error_response(req, code, reason, nonce, key) {
            let _ = self.socket.send_to(&raw, to).await;
        }
    }

    /// The Allocate passed last got no success answer: give its place back.
    fn settle_pending(&self) {
        if let Some(client) = lock(&self.pending).take() {
            let mut quota = self.shared.quota();
            if quota.is_pending(client) {
                quota.release(client);
            }
        }
    }

    /// Watches an answer of the server on its way out.
    fn observe_answer(&self, packet: &[u8], to: SocketAddr) {
        // Allocate success 0x0103, Allocate error 0x0113 (RFC 8489 §5 type layout).
        let kind = match packet {
            [0x01, 0x03, ..] => true,
            [0x01, 0x13, ..] => false,
            _ => return,
        };
        if !is_message(packet) {
            return;
        }
        if !kind {
            return self.settle_pending();
        }
        let mut m = Message::new();
        m.raw = packet.to_vec();
        let mut relay = RelayedAddress::default();
        if m.decode().is_ok() && relay.get_from(&m).is_ok() {
            self.shared
                .quota()
                .confirm(to, SocketAddr::new(relay.ip, relay.port));
            lock(&self.pending).take();
        }
    }
}

#[async_trait]
impl Conn for Filter {
    async fn connect(&self, _: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other("not supported".into()))
    }

    async fn recv(&self, _: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other("not supported".into()))
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            // The server asks for the next datagram only once it has handled the previous one.
            self.settle_pending();
            let mut injected = self.inject_rx.lock().await;
            let received = tokio::select! {
                biased;
                Some(packet) = injected.recv() => {
                    let n = packet.len().min(buf.len());
                    buf[..n].copy_from_slice(&packet[..n]);
                    return Ok((n, INTERNAL));
                }
                r = self.socket.recv_from(buf) => r,
            };
            drop(injected);
            let (n, src) = match received {
                Ok(v) => v,
                Err(e) => {
                    // One bad datagram (or a full buffer) must not end the service: the
                    // crate's read loop stops at the first error it is given.
                    tracing::warn!(error = %e, "STUN/TURN socket read failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if src == INTERNAL {
                continue;
            }
            if let Verdict::Pass = self.judge(&buf[..n], src).await {
                return Ok((n, src));
            }
        }
    }

    async fn send(&self, _: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other("not supported".into()))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if target == INTERNAL {
            self.take_nonce(buf);
            return Ok(buf.len());
        }
        self.observe_answer(buf, target);
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// A no-op, like the crate's own `UdpSocket` impl: every allocation "closes" the shared
    /// server socket when it ends.
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A relay socket that refuses to exchange datagrams with forbidden peers: the second line
/// behind the filter's permission checks (a permission is per IP, and a bug or a future crate
/// version must still not reach the server's own services).
pub struct FilteredRelay {
    inner: Arc<dyn Conn + Send + Sync>,
    shared: Arc<Shared>,
}

#[async_trait]
impl Conn for FilteredRelay {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.inner.recv(buf).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, src) = self.inner.recv_from(buf).await?;
            if self.shared.peer_allowed(src).is_ok() {
                return Ok((n, src));
            }
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if let Err(why) = self.shared.peer_allowed(target) {
            self.shared
                .stats
                .forbidden_peer
                .fetch_add(1, Ordering::Relaxed);
            return Err(webrtc_util::Error::Other(format!(
                "relay to {target} refused: {why}"
            )));
        }
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.inner.close().await
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Hands out relay sockets wrapped in [`FilteredRelay`].
pub struct FilteredRelayGenerator {
    pub inner: Box<dyn turn::relay::RelayAddressGenerator + Send + Sync>,
    pub shared: Arc<Shared>,
}

#[async_trait]
impl turn::relay::RelayAddressGenerator for FilteredRelayGenerator {
    fn validate(&self) -> Result<(), turn::Error> {
        self.inner.validate()
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        let (inner, addr) = self.inner.allocate_conn(use_ipv4, requested_port).await?;
        let relay = FilteredRelay {
            inner,
            shared: self.shared.clone(),
        };
        Ok((Arc::new(relay), addr))
    }
}

/// Every XOR-PEER-ADDRESS of `m` (the crate reads only the first; all are checked here).
/// A malformed one yields an unspecified address, which the rules refuse.
pub fn peer_addresses(m: &Message) -> Vec<SocketAddr> {
    m.attributes
        .0
        .iter()
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        .map(|a| xor_address(&a.value, &m.transaction_id.0).unwrap_or(INTERNAL))
        .collect()
}

/// Decodes an XOR-*-ADDRESS value (RFC 8489 §14.2).
fn xor_address(value: &[u8], transaction: &[u8; 12]) -> Option<SocketAddr> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = u16::from_be_bytes([value.get(2)?, value.get(3)?].map(|b| *b))
        ^ u16::from_be_bytes([cookie[0], cookie[1]]);
    match (value.get(1)?, value.len()) {
        (0x01, 8) => {
            let mut ip = [0u8; 4];
            for (i, b) in ip.iter_mut().enumerate() {
                *b = value[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        (0x02, 20) => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&cookie);
            key[4..].copy_from_slice(transaction);
            let mut ip = [0u8; 16];
            for (i, b) in ip.iter_mut().enumerate() {
                *b = value[4 + i] ^ key[i];
            }
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        _ => None,
    }
}

/// An Allocate request without credentials (the crate answers 401 with a fresh nonce), or,
/// with `expired`, one presenting that nonce and a dummy MESSAGE-INTEGRITY (the crate deletes
/// the nonce and answers 438 with a fresh one; it looks only for the attribute before it
/// checks the nonce's age).
fn nonce_request(expired: Option<&str>) -> Option<Vec<u8>> {
    let mut m = Message::new();
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(stun::agent::TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
    ];
    if let Some(nonce) = expired {
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce.to_owned())));
    }
    m.build(&setters).ok()?;
    if expired.is_some() {
        m.add(ATTR_MESSAGE_INTEGRITY, &[0; 20]);
        m.write_length();
    }
    Some(m.raw)
}

/// An error response to `req`: with REALM and NONCE when given (401/438), with
/// MESSAGE-INTEGRITY when the request was authenticated with `key`.
fn error_response(
    req: &Message,
    code: ErrorCode,
    reason: &str,
    nonce: Option<(String, String)>,
    key: Option<&[u8]>,
) -> Option<Vec<u8>> {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(req.transaction_id),
        Box::new(MessageType::new(req.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code,
            reason: reason.as_bytes().to_vec(),
        }),
    ];
    if let Some((realm, nonce)) = nonce {
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, realm)));
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce)));
    }
    if let Some(key) = key {
        setters.push(Box::new(MessageIntegrity(key.to_vec())));
    }
    setters.push(Box::new(FINGERPRINT));
    let mut m = Message::new();
    m.build(&setters).ok()?;
    Some(m.raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_peer_addresses_decode_every_attribute() {
        let mut m = Message::new();
        let peers = [
            turn::proto::peeraddr::PeerAddress {
                ip: "127.0.0.1".parse().unwrap(),
                port: 3478,
            },
            turn::proto::peeraddr::PeerAddress {
                ip: "2001:db8::7".parse().unwrap(),
                port: 9,
            },
        ];
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(stun::agent::TransactionId::new()),
            Box::new(MessageType::new(METHOD_CREATE_PERMISSION, CLASS_REQUEST)),
        ];
        for p in peers {
            setters.push(Box::new(p));
        }
        m.build(&setters).unwrap();
        let mut decoded = Message::new();
        decoded.raw = m.raw.clone();
        decoded.decode().unwrap();
        assert_eq!(
            peer_addresses(&decoded),
            vec![
                "127.0.0.1:3478".parse::<SocketAddr>().unwrap(),
                "[2001:db8::7]:9".parse().unwrap()
            ]
        );
        assert_eq!(xor_address(&[0, 1, 0], &[0; 12]), None);
    }
}
