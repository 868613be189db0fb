//! Built-in STUN and TURN: a Binding request from a real UDP socket gets the right
//! XOR-MAPPED-ADDRESS (parsed here by hand, independently of the server's library), TURN
//! allocates with the credentials `/config` hands out and refuses without them.

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
