//! The real executable: starts with `--bind 127.0.0.1:0`, prints where it listens, relays, and
//! exits 0 on SIGTERM even with streams open. Bad flags exit 2 with a clear message.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn start(args: &[&str]) -> (Binary, std::net::SocketAddr) {
    let binary = Binary::start(args);
    let addr = binary.addr;
    (binary, addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_serves_and_stops_cleanly_on_sigterm() {
    let (mut guard, addr) = start(&["--bind", "127.0.0.1:0", "--log", "warn"]);
    let mut sub = SseClient::connect(addr, "/stream?channel=bin", &[]).await;
    assert_eq!(sub.status, 200);
    let r = request(
        addr,
        "POST",
        "/channel/send/bin/request",
        &[],
        b"{\"sdp\":1}",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        message_of(&sub.next_message().await.unwrap()),
        "{\"sdp\":1}"
    );

    let pid = guard.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = guard.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    // The open stream was ended, not cut.
    assert!(sub.next().await.is_none());
}

#[test]
fn bad_flags_exit_2_with_a_reason() {
    for args in [
        &["--bind", "nonsense"][..],
        &["--keepalive", "0"][..],
        &["--max-body", "0"][..],
        &["--ice-server", "http://x"][..],
        &["--peer-secret", ""][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sigrelay"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn config_names_the_stun_port_actually_bound() {
    let (_guard, addr) = start(&["--bind", "127.0.0.1:0", "--stun", "127.0.0.1:0", "--turn"]);
    let config = request(addr, "GET", "/config?room=r1", &[], b"")
        .await
        .json();
    let stun = config["iceServers"][0]["urls"].as_str().unwrap().to_owned();
    let port: u16 = stun.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0, "{config}");
    let turn = config["iceServers"][1]["urls"].as_str().unwrap();
    assert_eq!(turn, format!("turn:127.0.0.1:{port}?transport=udp"));
}
