//! README's "Scaling out", run as written: a real redis-server, two instances started with the
//! README's own command lines, and a real nginx with the README's own block in front (plain
//! http on a non-default port, and TLS terminated at nginx). Page-like clients (their `Origin`
//! is nginx's) call through it with peer tokens while round robin alternates the instances,
//! and nothing may be refused; publishes are limited per real client (nginx sees two
//! addresses, 127.0.0.2 and 127.0.0.3); forwarding headers count only from a trusted proxy.
//!
//! Without nginx or redis-server the nginx tests say "skipped: ...", unless
//! SIGRELAY_REQUIRE_REDIS=1 (CI), which makes that a failure.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::nginx::{readme_instances, Nginx};
use common::redis_server::RedisServer;
use common::{message_of, raw, request_on, status_of, Binary, Io, SseClient, TestServer, WAIT};
use rustls::pki_types::{CertificateDer, ServerName};
use sigrelay::config::Cidr;
use sigrelay::tls::{self, CertSource};
use tokio::net::{TcpSocket, TcpStream};

/// Redis, README's two instances, nginx in front; everything stopped on drop.
struct Cluster {
    instances: Vec<Binary>,
    nginx: Nginx,
    cert: CertificateDer<'static>,
    tls_dir: std::path::PathBuf,
    _redis: RedisServer,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tls_dir);
    }
}

/// `None` when redis-server or nginx is missing (and not required).
fn cluster(tag: &str, extra: &[&str]) -> Option<Cluster> {
    let redis = RedisServer::start()?;
    let commands = readme_instances(&redis.url());
    assert_eq!(
        commands.len(),
        2,
        "README starts two instances: {commands:?}"
    );
    let instances: Vec<Binary> = commands
        .iter()
        .map(|args| {
            let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
            args.push("--no-qr");
            args.extend_from_slice(extra);
            Binary::start(&args)
        })
        .collect();
    let tls_dir =
        std::env::temp_dir().join(format!("sigrelay-proxy-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tls_dir);
    let generated = tls::load(&CertSource::Generated {
        dir: tls_dir.clone(),
        names: Vec::new(),
    })
    .expect("a certificate for localhost");
    let upstreams: Vec<SocketAddr> = instances.iter().map(|b| b.addr).collect();
    let nginx = Nginx::start(
        &upstreams,
        &tls_dir.join("cert.pem"),
        &tls_dir.join("key.pem"),
    )?;
    Some(Cluster {
        instances,
        nginx,
        cert: generated.anchor(),
        tls_dir,
        _redis: redis,
    })
}

/// How a browser reaches nginx: plain http, or https (TLS ends at nginx).
#[derive(Clone, Copy)]
enum Front {
    Plain,
    Tls,
}

impl Cluster {
    /// The page's origin and the `Host` its requests carry.
    fn origin(&self, front: Front) -> (String, String) {
        match front {
            Front::Plain => {
                let host = self.nginx.http.to_string();
                (format!("http://{host}"), host)
            }
            Front::Tls => {
                let host = format!("localhost:{}", self.nginx.https.port());
                (format!("https://{host}"), host)
            }
        }
    }

    /// A connection to nginx from the local address `from`.
    async fn connect(&self, front: Front, from: IpAddr) -> Box<dyn Io> {
        let addr = match front {
            Front::Plain => self.nginx.http,
            Front::Tls => self.nginx.https,
        };
        let tcp = connect_from(from, addr).await;
        match front {
            Front::Plain => Box::new(tcp),
            Front::Tls => Box::new(tls_client(tcp, &self.cert).await),
        }
    }

    /// A page-like POST through nginx from `from`: `(status, JSON)`.
    async fn post(
        &self,
        front: Front,
        from: IpAddr,
        target: &str,
        extra: &[(&str, &str)],
    ) -> common::Response {
        let (origin, host) = self.origin(front);
        let mut headers = vec![
            ("origin", origin.as_str()),
            ("content-type", "text/plain;charset=UTF-8"),
        ];
        headers.extend_from_slice(extra);
        let io = self.connect(front, from).await;
        request_on(io, &host, "POST", target, &headers, b"{\"sdp\": \"x\"}").await
    }

    /// Refusals of every reason counted by each instance's `/metrics`, and its publishes.
    async fn counts(&self) -> Vec<(u64, u64)> {
        let mut counts = Vec::new();
        for instance in &self.instances {
            let text = common::request(instance.addr, "GET", "/metrics", &[], b"")
                .await
                .text();
            counts.push((
                metric_sum(&text, "sigrelay_refusals_total"),
                metric_sum(&text, "sigrelay_events_published_total"),
            ));
        }
        counts
    }
}

/// The sum of every sample of `name` in Prometheus text.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A TCP connection from the local address `from` (127.0.0.2, ...): nginx then sees it as
/// that client.
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .expect("connect timed out")
        .expect("connect")
}

async fn tls_client(
    tcp: TcpStream,
    trusted: &CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = common::tls_connector(trusted, b"http/1.1");
    tokio::time::timeout(
        WAIT,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("TLS handshake timed out")
    .expect("TLS handshake with nginx")
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Two pages in one room through nginx: both streams and 12 POSTs with peer tokens, round
/// robin alternating the instances. Every POST is accepted and stamped with its sender, both
/// streams get all 12 in order, and neither instance refused anything.
async fn call_through_nginx(front: Front, tag: &str) {
    let Some(cluster) = cluster(tag, &[]) else {
        return;
    };
    let (origin, host) = cluster.origin(front);
    let room = format!("proxy-{tag}");
    let mut pages = Vec::new();
    for peer in ["alice", "bob"] {
        let io = cluster.connect(front, ip("127.0.0.2")).await;
        let target = format!("/stream?channel={room}&peer={peer}");
        let mut page = SseClient::connect_on(io, &host, &target, &[("origin", &origin)]).await;
        assert_eq!(page.status, 200, "{peer}'s stream through nginx");
        let (id, token) = page.welcome().await;
        assert_eq!(id, peer);
        pages.push((page, id, token));
    }
    // Two POSTs from each in turn: round robin alternates per request, so each page's POSTs
    // reach both instances (one sender per instance would hide a token only its own accepts).
    let sender_of = |i: usize| (i / 2) % 2;
    for i in 0..12 {
        let (_, peer, token) = &pages[sender_of(i)];
        let target = format!("/channel/send/{room}/request");
        let peer_headers = [
            ("x-sigrelay-peer", peer.as_str()),
            ("x-sigrelay-token", token),
        ];
        let answer = cluster
            .post(front, ip("127.0.0.2"), &target, &peer_headers)
            .await;
        assert_eq!(
            answer.status,
            200,
            "POST {i} from {peer}: {}",
            answer.text()
        );
    }
    for (page, peer, _) in &mut pages {
        for i in 0..12 {
            let event = page.next_message().await.expect("a message through nginx");
            let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
            let sender = ["alice", "bob"][sender_of(i)];
            assert_eq!(data["from"], sender, "{peer}'s event {i}: {data}");
            assert_eq!(message_of(&event), "{\"sdp\": \"x\"}");
        }
    }
    let counts = cluster.counts().await;
    for (n, (refused, published)) in counts.iter().enumerate() {
        assert_eq!(*refused, 0, "instance {n} refused something: {counts:?}");
        assert!(
            *published > 0,
            "round robin never sent a POST to instance {n}: {counts:?}"
        );
    }
    eprintln!(
        "{tag}: 2 streams + 12 POSTs through nginx, (refused, published) per instance {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_through_nginx_on_a_non_default_port_is_never_refused() {
    call_through_nginx(Front::Plain, "plain").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_through_nginx_terminating_tls_is_never_refused() {
    call_through_nginx(Front::Tls, "tls").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_through_nginx_are_limited_per_real_client() {
    // Three per instance, and no refill to speak of during the test.
    let Some(cluster) = cluster("rate", &["--post-rate", "0.01", "--post-burst", "3"]) else {
        return;
    };
    let target = "/channel/send/proxy-rate/m";
    // 127.0.0.2 POSTs until refused, each time claiming another address in X-Forwarded-For
    // (nginx appends the real one; what the client wrote is ignored).
    let mut accepted = 0;
    let mut refused = false;
    for i in 0..10 {
        let forged = format!("10.9.9.{i}");
        let answer = cluster
            .post(
                Front::Plain,
                ip("127.0.0.2"),
                target,
                &[("x-forwarded-for", &forged)],
            )
            .await;
        match answer.status {
            200 => accepted += 1,
            429 => {
                refused = true;
                break;
            }
            other => panic!("POST {i}: {other} {}", answer.text()),
        }
    }
    assert!(refused, "127.0.0.2 was never limited ({accepted} accepted)");
    assert!(
        (3..=6).contains(&accepted),
        "127.0.0.2 got {accepted} POSTs through (burst 3 on each of two instances)"
    );
    // Another client behind the same proxy has its own budget.
    for i in 0..3 {
        let answer = cluster
            .post(Front::Plain, ip("127.0.0.3"), target, &[])
            .await;
        assert_eq!(
            answer.status,
            200,
            "127.0.0.3's POST {i}: {}",
            answer.text()
        );
    }
    eprintln!("rate: 127.0.0.2 got {accepted} POSTs then 429; 127.0.0.3 3 of 3");
}

/// One instance alone (no nginx needed): forwarding headers move the client and the origin
/// only when they come from a trusted proxy, on both publish paths and on /config.
#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_count_only_from_a_trusted_proxy() {
    let server = TestServer::with(|c| {
        c.trusted_proxies = vec![Cidr::parse("127.0.0.1").unwrap()];
        c.post_rate = 0.01;
        c.post_burst = 2.0;
        c.ice.bind = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let host = server.addr.to_string();
    let forged = [
        ("x-forwarded-for", "192.0.2.50"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "chat.example.org"),
    ];
    let post_from = |from: &'static str, headers: Vec<(&'static str, String)>| {
        let host = host.clone();
        let addr = server.addr;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let io = connect_from(ip(from), addr).await;
            request_on(io, &host, "POST", "/channel/send/fwd/m", &headers, b"hi").await
        }
    };
    let owned = |list: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        list.iter().map(|(k, v)| (*k, v.to_string())).collect()
    };

    // Untrusted 127.0.0.2: a forged origin is refused, forged addresses share its budget.
    let mut evil = owned(&forged);
    evil.push(("origin", "https://chat.example.org".into()));
    let answer = post_from("127.0.0.2", evil).await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for i in 0..3 {
            let headers = vec![("x-forwarded-for", format!("192.0.2.{}", 100 + i))];
            statuses.push(post_from("127.0.0.2", headers).await.status);
        }
        statuses
    };
    assert_eq!(
        statuses,
        [200, 200, 429],
        "an untrusted peer chose its address"
    );

    // Trusted 127.0.0.1: the proxy's word is the origin and the client.
    let mut proxied = owned(&forged);
    proxied.push(("origin", "https://chat.example.org".into()));
    let answer = post_from("127.0.0.1", proxied.clone()).await;
    assert_eq!(answer.status, 200, "direct publish path: {}", answer.text());
    let answer = post_from("127.0.0.1", proxied).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    // 192.0.2.50's budget is spent: on the hyper route too (a chunked body is not plain).
    let chunked = format!(
        "POST /channel/send/fwd/m HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 192.0.2.50\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    );
    assert_eq!(status_of(&raw(server.addr, chunked.as_bytes()).await), 429);
    let other = chunked.replace("192.0.2.50", "192.0.2.51");
    assert_eq!(status_of(&raw(server.addr, other.as_bytes()).await), 200);

    // /config names the host the page came from: the proxy's word, from the proxy only.
    for (from, want) in [
        ("127.0.0.1", "stun:chat.example.org:"),
        ("127.0.0.2", "stun:127.0.0.1:"),
    ] {
        let io = connect_from(ip(from), server.addr).await;
        let config = request_on(io, &host, "GET", "/config", &forged, b"")
            .await
            .json();
        let url = config["iceServers"][0]["urls"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(url.starts_with(want), "from {from}: {config}");
    }
    // A stream opened through the trusted proxy with the public origin is accepted (the
    // direct stream path), one from elsewhere with that origin is not.
    let mut headers = forged.to_vec();
    headers.push(("origin", "https://chat.example.org"));
    let io = connect_from(ip("127.0.0.1"), server.addr).await;
    let stream = SseClient::connect_on(io, &host, "/stream?channel=fwd", &headers).await;
    assert_eq!(stream.status, 200);
    let io = connect_from(ip("127.0.0.2"), server.addr).await;
    let stream = SseClient::connect_on(io, &host, "/stream?channel=fwd", &headers).await;
    assert_eq!(stream.status, 403);
}
