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
    let tls = tls::load(&CertSource::Generated {
        dir: dir.clone(),
        names: Vec::new(),
    })
    .unwrap();
    let cert = tls.anchor();
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
    let tls = tls::load(&CertSource::Generated {
        dir: dir.clone(),
        names: Vec::new(),
    })
    .unwrap();
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
    let first = tls::load(&CertSource::Generated {
        dir: dir.clone(),
        names: Vec::new(),
    })
    .unwrap();
    assert!(first.origin.starts_with("generated"), "{}", first.origin);
    let second = tls::load(&CertSource::Generated {
        dir: dir.clone(),
        names: Vec::new(),
    })
    .unwrap();
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
    let generated = tls::load(&CertSource::Generated {
        dir: dir.clone(),
        names: Vec::new(),
    })
    .unwrap();
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

/// Runs `program args`; panics with its output unless it succeeds. Returns stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (needed by this test): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::prelude::{Engine, BASE64_STANDARD};
    let b64 = BASE64_STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A phone's first visit: plain http on the https port gets the trust page and the CA (every
/// other path is redirected), and the CA downloaded that way verifies the chain the server
/// serves over https (rustls on a name, and `openssl verify`).
#[tokio::test(flavor = "multi_thread")]
async fn the_local_ca_is_downloaded_over_plain_http_and_verifies_the_served_chain() {
    let dir = temp_dir("trust");
    let tls = tls::load(&CertSource::Generated {
        dir: dir.clone(),
        names: vec!["classroom.test".into()],
    })
    .unwrap();
    let ca = tls
        .ca
        .clone()
        .expect("a generated certificate comes with a local CA");
    let server = TestServer::with(|c| c.tls = Some(tls)).await;

    let page = get_plain(server.addr, "/trust").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains("/trust/trust.js"), "{}", page.text());
    for asset in ["/trust/trust.js", "/trust/style.css"] {
        assert_eq!(get_plain(server.addr, asset).await.status, 200, "{asset}");
    }
    let info = get_plain(server.addr, "/trust/info").await.json();
    assert_eq!(info["fingerprint"], ca.fingerprint.as_str());
    assert_eq!(info["name"], ca.name.as_str());
    let crt = get_plain(server.addr, "/trust/sigrelay-ca.crt").await;
    assert_eq!(crt.status, 200);
    assert_eq!(
        crt.header("content-type"),
        Some("application/x-x509-ca-cert")
    );
    assert!(crt
        .header("content-disposition")
        .unwrap()
        .contains("sigrelay-ca.crt"));
    let downloaded = CertificateDer::from(crt.body.to_vec());
    assert_eq!(downloaded, ca.der);
    assert_eq!(tls::fingerprint(&downloaded), ca.fingerprint);
    let pem_download = get_plain(server.addr, "/trust/sigrelay-ca.pem").await;
    assert_eq!(pem_download.text(), ca.pem);
    // Everything else on the plain port is still sent to https.
    assert_eq!(get_plain(server.addr, "/").await.status, 307);
    assert_eq!(get_plain(server.addr, "/trustx").await.status, 307);
    assert_eq!(get_plain(server.addr, "/trust/nothing").await.status, 404);

    // A client that trusts only the downloaded CA reaches the server on each of its names.
    for name in ["localhost", "classroom.test", "127.0.0.1"] {
        let connector = tls_connector(&downloaded, b"h2");
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let stream = connector
            .connect(ServerName::try_from(name).unwrap().to_owned(), tcp)
            .await
            .unwrap_or_else(|e| panic!("{name}: the CA does not vouch for the server: {e}"));
        let chain: Vec<CertificateDer<'static>> = stream
            .get_ref()
            .1
            .peer_certificates()
            .unwrap()
            .iter()
            .map(|c| c.clone().into_owned())
            .collect();
        assert_eq!(chain.len(), 2, "the certificate, then the CA");
        // openssl, independently: the served chain against the downloaded CA, for this name.
        let ca_file = dir.join("downloaded-ca.pem");
        let leaf_file = dir.join("served-leaf.pem");
        let rest_file = dir.join("served-rest.pem");
        std::fs::write(&ca_file, pem("CERTIFICATE", &crt.body)).unwrap();
        std::fs::write(&leaf_file, pem("CERTIFICATE", &chain[0])).unwrap();
        std::fs::write(&rest_file, pem("CERTIFICATE", &chain[1])).unwrap();
        let check = if name.parse::<std::net::IpAddr>().is_ok() {
            "-verify_ip"
        } else {
            "-verify_hostname"
        };
        let said = run(
            "openssl",
            &[
                "verify",
                "-purpose",
                "sslserver",
                check,
                name,
                "-CAfile",
                ca_file.to_str().unwrap(),
                "-untrusted",
                rest_file.to_str().unwrap(),
                leaf_file.to_str().unwrap(),
            ],
        );
        assert!(said.contains(": OK"), "{said}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// GET on the plain-http side of the server (no TLS), whole answer.
async fn get_plain(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &[], b"").await
}

/// The iOS profile is a well-formed property list whose one payload is the CA as a root
/// certificate (read back with Python's plistlib, independently of how it was written).
#[tokio::test(flavor = "multi_thread")]
async fn the_ios_profile_carries_the_ca_as_a_root_payload() {
    let dir = temp_dir("profile");
    let tls = tls::load(&CertSource::Generated {
        dir: dir.clone(),
        names: Vec::new(),
    })
    .unwrap();
    let ca = tls.ca.clone().unwrap();
    let server = TestServer::with(|c| c.tls = Some(tls)).await;
    let profile = get_plain(server.addr, "/trust/sigrelay-ca.mobileconfig").await;
    assert_eq!(profile.status, 200);
    assert_eq!(
        profile.header("content-type"),
        Some("application/x-apple-aspen-config")
    );
    let file = dir.join("profile.mobileconfig");
    std::fs::write(&file, &profile.body).unwrap();
    let script = r#"
import plistlib, sys, json, base64
p = plistlib.load(open(sys.argv[1], 'rb'))
inner = p['PayloadContent']
print(json.dumps({
  'type': p['PayloadType'], 'version': p['PayloadVersion'], 'uuid': p['PayloadUUID'],
  'id': p['PayloadIdentifier'], 'count': len(inner),
  'inner_type': inner[0]['PayloadType'], 'inner_version': inner[0]['PayloadVersion'],
  'inner_uuid': inner[0]['PayloadUUID'], 'inner_id': inner[0]['PayloadIdentifier'],
  'der': base64.b64encode(inner[0]['PayloadContent']).decode(),
}))
"#;
    let out = run("python3", &["-c", script, file.to_str().unwrap()]);
    let seen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    use base64::prelude::{Engine, BASE64_STANDARD};
    assert_eq!(seen["type"], "Configuration", "{seen:#}");
    assert_eq!(seen["version"], 1);
    assert_eq!(seen["count"], 1);
    assert_eq!(seen["inner_type"], "com.apple.security.root");
    assert_eq!(seen["inner_version"], 1);
    assert_eq!(seen["der"], BASE64_STANDARD.encode(ca.der.as_ref()));
    assert_ne!(seen["uuid"], seen["inner_uuid"]);
    assert!(seen["inner_id"]
        .as_str()
        .unwrap()
        .starts_with(seen["id"].as_str().unwrap()));
    // The same CA gives the same profile, so a second install replaces the first.
    let again = get_plain(server.addr, "/trust/sigrelay-ca.mobileconfig").await;
    assert_eq!(again.body, profile.body);
    let _ = std::fs::remove_dir_all(dir);
}

/// An install from before the CA (a self-signed cert.pem, key.pem and names.txt) gets a CA and
/// a certificate it signed, for the old names too; then a new name re-issues the certificate
/// by the same CA, and a restart with nothing new reuses it.
#[test]
fn a_self_signed_install_migrates_to_a_ca_and_new_names_keep_it() {
    let dir = temp_dir("migrate");
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let old = rcgen::CertificateParams::new(vec!["old-name.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), old.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("names.txt"), "old-name.test\nlocalhost\n").unwrap();

    let migrated = tls::load(&CertSource::Generated {
        dir: dir.clone(),
        names: Vec::new(),
    })
    .unwrap();
    assert!(
        migrated.origin.contains("replaced the old self-signed"),
        "{}",
        migrated.origin
    );
    assert_ne!(migrated.certificate.as_ref(), old.der().as_ref());
    let ca = migrated.ca.clone().unwrap();
    let verify = |leaf_dir: &std::path::Path, name: &str| {
        run(
            "openssl",
            &[
                "verify",
                "-verify_hostname",
                name,
                "-CAfile",
                dir.join("ca.pem").to_str().unwrap(),
                leaf_dir.join("cert.pem").to_str().unwrap(),
            ],
        )
    };
    assert!(
        verify(&dir, "old-name.test").contains("OK"),
        "old names kept"
    );
    use std::os::unix::fs::PermissionsExt;
    for private in ["key.pem", "ca-key.pem"] {
        let mode = std::fs::metadata(dir.join(private))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{private} mode {mode:o}");
    }

    let more = tls::load(&CertSource::Generated {
        dir: dir.clone(),
        names: vec!["second.test".into()],
    })
    .unwrap();
    assert!(more.origin.starts_with("re-issued"), "{}", more.origin);
    assert_eq!(more.ca.as_ref().unwrap().fingerprint, ca.fingerprint);
    assert_ne!(more.fingerprint, migrated.fingerprint);
    assert!(verify(&dir, "second.test").contains("OK"));
    assert!(verify(&dir, "old-name.test").contains("OK"));

    let again = tls::load(&CertSource::Generated {
        dir: dir.clone(),
        names: Vec::new(),
    })
    .unwrap();
    assert!(again.origin.starts_with("reused"), "{}", again.origin);
    assert_eq!(again.fingerprint, more.fingerprint);
    assert_eq!(again.ca.unwrap().fingerprint, ca.fingerprint);
    let _ = std::fs::remove_dir_all(dir);
}
