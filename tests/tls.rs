//! HTTPS: the whole relay protocol over HTTP/1.1 and HTTP/2 with the generated certificate
//! (the client trusts exactly that certificate), plain http redirected on the same port, the
//! certificate kept across restarts, and the QR endpoint.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use sigrelay::tls::{self, CertSource};
use tokio::net::TcpStream;

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sigrelay-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn tls_stream(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tls_connector(trusted, alpn);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("handshake with the generated certificate");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
    stream
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn connect(addr: SocketAddr, cert: &CertificateDer<'static>, h2: bool) -> Self {
        let io = TokioIo::new(tls_stream(addr, cert, if h2 { b"h2" } else { b"http/1.1" }).await);
        if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(sender)
        }
    }

    async fn send(
        &mut self,
        method: &str,
        target: &str,
        body: &str,
    ) -> http::Response<hyper::body::Incoming> {
        let uri = format!("https://localhost{target}");
        let req = http::Request::builder().method(method).uri(uri);
        let req = match self {
            Sender::H1(_) => req.header("host", "localhost"),
            Sender::H2(_) => req,
        };
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        match self {
            // A keep-alive connection takes the next request only once it has finished the
            // previous one: wait for that, as every real client does.
            Sender::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
            Sender::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_over_https_http1_and_http2() {
    let dir = temp_dir("https");
    let tls = tls::load(&CertSource::Generated { dir: dir.clone() }).unwrap();
    let cert = tls.certificate.clone();
    let server = TestServer::with(|c| c.tls = Some(tls)).await;

    for (sub_h2, pub_h2) in [(true, false), (false, true), (true, true)] {
        let mut subscriber = Sender::connect(server.addr, &cert, sub_h2).await;
        let response = subscriber.send("GET", "/stream?channel=secure", "").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut events = response.into_body().into_data_stream().eventsource();

        let mut publisher = Sender::connect(server.addr, &cert, pub_h2).await;
        // Several publishes on one connection (HTTP/2: one stream each).
        for i in 0..3 {
            let r = publisher
                .send(
                    "POST",
                    "/channel/send/secure/request",
                    &format!("{{\"n\":{i}}}"),
                )
                .await;
            assert_eq!(r.status(), 200);
        }
        let mut got = Vec::new();
        while got.len() < 3 {
            let event = tokio::time::timeout(WAIT, events.next())
                .await
                .expect("event in time")
                .unwrap()
                .unwrap();
            if event.event == "request" {
                let v: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                got.push(v["message"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(
            got,
            ["{\"n\":0}", "{\"n\":1}", "{\"n\":2}"],
            "h2 sub {sub_h2}, h2 pub {pub_h2}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_on_the_tls_port_is_redirected() {
    let dir = temp_dir("redirect");
    let tls = tls::load(&CertSource::Generated { dir: dir.clone() }).unwrap();
    let server = TestServer::with(|c| c.tls = Some(tls)).await;
    let text = raw(
        server.addr,
        b"GET /r/room-1?as=creator HTTP/1.1\r\nHost: classroom.test:8443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&text), 307, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("location: https://classroom.test:8443/r/room-1?as=creator\r\n"),
        "{text}"
    );
    // Nothing else is served in the clear: a publish is redirected too, not executed.
    let text = raw(server.addr, b"POST /channel/send/r/m HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx").await;
    assert_eq!(status_of(&text), 307, "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_generated_certificate_is_reused_after_a_restart() {
    let dir = temp_dir("reuse");
    let first = tls::load(&CertSource::Generated { dir: dir.clone() }).unwrap();
    assert!(first.origin.starts_with("generated"), "{}", first.origin);
    let second = tls::load(&CertSource::Generated { dir: dir.clone() }).unwrap();
    assert!(second.origin.starts_with("reused"), "{}", second.origin);
    assert_eq!(first.fingerprint, second.fingerprint);
    assert_eq!(first.certificate, second.certificate);
    assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
    // The private key is readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key.pem mode {mode:o}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn qr_codes_are_drawn_by_the_server() {
    let server = TestServer::start().await;
    let r = server
        .get("/qr.svg?text=https%3A%2F%2F192.168.1.5%3A8000%2Fr%2Froom")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/svg+xml"));
    assert!(r.text().contains("<svg"));
    assert_eq!(server.get("/qr.svg").await.status, 400);
    let long = "x".repeat(2000);
    assert_eq!(
        server.get(&format!("/qr.svg?text={long}")).await.status,
        400
    );
}

#[test]
fn given_certificate_files_are_used_and_bad_ones_are_named() {
    let dir = temp_dir("files");
    let generated = tls::load(&CertSource::Generated { dir: dir.clone() }).unwrap();
    let given = tls::load(&CertSource::Files {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    })
    .unwrap();
    assert_eq!(given.fingerprint, generated.fingerprint);
    let err = tls::load(&CertSource::Files {
        cert: dir.join("missing.pem"),
        key: dir.join("key.pem"),
    })
    .unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let err = tls::load(&CertSource::Files {
        cert: dir.join("cert.pem"),
        key: dir.join("cert.pem"),
    })
    .unwrap_err();
    assert!(err.to_string().contains("--key"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
