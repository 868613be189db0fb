//! Test support: the real server on 127.0.0.1:0 in-process, and small HTTP/SSE clients that
//! speak to it over real sockets.
#![allow(dead_code)]

pub mod nginx;
pub mod redis_server;
pub mod seed;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use sigrelay::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The real executable, started with `args`, killed (by its PID) on drop.
pub struct Binary {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Binary {
    /// Starts the binary and reads the address it printed (pass `--bind 127.0.0.1:0`).
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_nofile(args, None)
    }

    /// Like [`Binary::start`], with the open-file limit (soft and hard) set to `nofile` first.
    pub fn start_with_nofile(args: &[&str], nofile: Option<u64>) -> Self {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        // SIGRELAY_TEST_BIN runs a test against another build (before/after figures).
        let bin = std::env::var_os("SIGRELAY_TEST_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_sigrelay").into());
        let mut command = std::process::Command::new(bin);
        command
            .args(args)
            .env_remove("SIGRELAY_BIND")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if let Some(nofile) = nofile {
            let limit = libc::rlimit {
                rlim_cur: nofile as libc::rlim_t,
                rlim_max: nofile as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe and only reads `limit`, copied in.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let deadline = std::time::Instant::now() + WAIT;
        let addr = loop {
            assert!(std::time::Instant::now() < deadline, "no URL printed");
            let line = lines.next().expect("banner").unwrap();
            if let Some(url) = line.trim().strip_prefix("http://") {
                break url.trim_end_matches('/').parse().unwrap();
            }
        };
        Binary { child, addr }
    }

    /// The server's open file descriptors now (entries of /proc/PID/fd).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("the server is running")
            .count()
    }

    /// The server's resident memory now, KiB (VmRSS in /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bound for every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running server; stopped (shutdown token cancelled) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default();
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // `config.ice.bind` set by a test means "give me a STUN/TURN socket there".
        let udp = match config.ice.bind {
            Some(bind) => {
                let socket = tokio::net::UdpSocket::bind(bind).await.unwrap();
                config.ice.bind = Some(socket.local_addr().unwrap());
                Some(socket)
            }
            None => None,
        };
        let shutdown = CancellationToken::new();
        let listeners = sigrelay::Listeners {
            http: vec![listener],
            udp,
        };
        let running = sigrelay::run(listeners, config, shutdown.clone());
        let handle =
            tokio::spawn(async move { running.await.expect("the server failed to start") });
        TestServer {
            addr,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Cancels and waits for `run` to return; returns how long that took.
    pub async fn stop(mut self) -> Duration {
        let started = std::time::Instant::now();
        self.shutdown.cancel();
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(WAIT, handle)
            .await
            .expect("server did not stop in time")
            .unwrap();
        started.elapsed()
    }

    pub async fn post(&self, channel: &str, event_type: &str, body: &str) -> Response {
        request(
            self.addr,
            "POST",
            &format!("/channel/send/{channel}/{event_type}"),
            &[("content-type", "text/plain;charset=UTF-8")],
            body.as_bytes(),
        )
        .await
    }

    /// Publishes and returns the id the server gave the event.
    pub async fn publish(&self, channel: &str, event_type: &str, body: &str) -> u64 {
        let r = self.post(channel, event_type, body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["id"].as_u64().unwrap()
    }

    pub async fn get(&self, target: &str) -> Response {
        request(self.addr, "GET", target, &[], b"").await
    }

    pub async fn subscribe(&self, channel: &str) -> SseClient {
        SseClient::connect(self.addr, &format!("/stream?channel={channel}"), &[]).await
    }

    pub async fn health(&self) -> serde_json::Value {
        self.get("/healthz").await.json()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Any connection a request can go over: plain TCP, TLS, a socket bound to a chosen source.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

async fn handshake(io: impl Io) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn build(
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(target)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::copy_from_slice(body))).unwrap()
}

/// `POST /channel/send/ROOM/offer` on `server` with a peer id and token in the headers.
pub async fn post_as(
    server: &TestServer,
    room: &str,
    peer: &str,
    token: &str,
    body: &str,
) -> Response {
    request(
        server.addr,
        "POST",
        &format!("/channel/send/{room}/offer"),
        &[("x-sigrelay-peer", peer), ("x-sigrelay-token", token)],
        body.as_bytes(),
    )
    .await
}

/// One request on its own connection, whole response read.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let stream = TcpStream::connect(addr).await.unwrap();
    request_on(stream, &addr.to_string(), method, target, headers, body).await
}

/// One request on `io`, with `Host: host`, whole response read.
pub async fn request_on(
    io: impl Io,
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let fut = async {
        let mut sender = handshake(io).await;
        let response = sender
            .send_request(build(host, method, target, headers, body))
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("request timed out")
}

/// Writes raw bytes, reads until the server closes, a quiet half second or two seconds in all;
/// returns the text.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw response ("HTTP/1.1 400 ..." → 400).
pub fn status_of(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

type EventStream = std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>;

/// A subscriber parsing the stream with a WHATWG-conformant parser (eventsource-stream).
pub struct SseClient {
    pub status: u16,
    pub headers: http::HeaderMap,
    events: EventStream,
    /// The id of the last event read, as EventSource tracks it.
    pub last_event_id: String,
}

impl SseClient {
    pub async fn connect(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        Self::connect_on(stream, &addr.to_string(), target, headers).await
    }

    /// A stream over `io`, with `Host: host`.
    pub async fn connect_on(
        io: impl Io,
        host: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Self {
        let fut = async {
            let mut sender = handshake(io).await;
            let response = sender
                .send_request(build(host, "GET", target, headers, b""))
                .await
                .unwrap();
            let (parts, body) = response.into_parts();
            let events = body
                .into_data_stream()
                .eventsource()
                .filter_map(|e| async move { e.ok() })
                .boxed();
            SseClient {
                status: parts.status.as_u16(),
                headers: parts.headers,
                events,
                last_event_id: String::new(),
            }
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("connect timed out")
    }

    /// The next event of any type, or `None` if the stream ended or nothing came within `WAIT`.
    pub async fn next(&mut self) -> Option<Event> {
        self.next_within(WAIT).await
    }

    pub async fn next_within(&mut self, limit: Duration) -> Option<Event> {
        let event = tokio::time::timeout(limit, self.events.next())
            .await
            .ok()??;
        if !event.id.is_empty() {
            self.last_event_id = event.id.clone();
        }
        Some(event)
    }

    /// The next event that is not `presence` or `welcome`.
    pub async fn next_message(&mut self) -> Option<Event> {
        loop {
            let event = self.next().await?;
            if event.event != "presence" && event.event != "welcome" {
                return Some(event);
            }
        }
    }

    /// The stream's first event, `welcome`: (peer id, token).
    pub async fn welcome(&mut self) -> (String, String) {
        let event = self.next().await.expect("a welcome event");
        assert_eq!(event.event, "welcome", "{event:?}");
        let v: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        (
            v["peer"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    /// The next message (not presence or welcome) within `limit`, or `None`.
    pub async fn next_message_within(&mut self, limit: Duration) -> Option<Event> {
        tokio::time::timeout(limit, self.next_message())
            .await
            .ok()
            .flatten()
    }

    /// The next `presence` event's subscriber count.
    pub async fn next_presence(&mut self) -> Option<u64> {
        loop {
            let event = self.next().await?;
            if event.event == "presence" {
                let v: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                return v["subscribers"].as_u64();
            }
        }
    }
}

/// `JSON.parse(JSON.parse(e.data).message)` minus the outer parse: the published body.
pub fn message_of(event: &Event) -> String {
    let v: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    v["message"].as_str().unwrap().to_owned()
}

/// Reads one response with a `content-length` body from a kept-alive connection.
pub async fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(pending).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if pending.len() >= end + 4 + length {
                let rest = pending.split_off(end + 4 + length);
                let whole = String::from_utf8_lossy(pending).into_owned();
                *pending = rest;
                return whole;
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed early after {text:?}");
        pending.extend_from_slice(&buf[..n]);
    }
}

/// A TLS client that trusts exactly `trusted` and offers `alpn`.
pub fn tls_connector(
    trusted: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}
