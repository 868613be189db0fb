//! Limits: connections per address and in total, publishes per second, slow heads and bodies.
//! Every refusal is a clear JSON error and the server keeps serving everyone else.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread")]
async fn connections_per_address_and_in_total() {
    let server = TestServer::with(|c| c.max_connections_per_ip = 4).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(server.subscribe("held").await);
    }
    let text = raw(server.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&text), 429, "{text}");
    assert!(
        text.contains(r#"{"error":"too many connections from your address (limit 4)"}"#),
        "{text}"
    );
    held.pop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.health().await["status"], "ok");

    let server = TestServer::with(|c| c.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(server.subscribe("held").await);
    }
    let text = raw(server.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&text), 503, "{text}");
    assert!(text.contains("limit of 3 connections"), "{text}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.health().await["status"], "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_per_second_are_limited_with_retry_after() {
    let server = TestServer::with(|c| {
        c.post_rate = 1.0;
        c.post_burst = 3.0;
    })
    .await;
    let mut sub = server.subscribe("rate").await;
    for i in 0..3 {
        assert_eq!(server.post("rate", "m", &i.to_string()).await.status, 200);
    }
    let refused = server.post("rate", "m", "over").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("slow down"));
    for i in 0..3 {
        assert_eq!(
            message_of(&sub.next_message().await.unwrap()),
            i.to_string()
        );
    }
    // Nothing refused was broadcast.
    assert!(sub
        .next_within(Duration::from_millis(300))
        .await
        .is_none_or(|e| e.event == "presence"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(server.post("rate", "m", "later").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_bodies_get_408_and_slow_heads_are_closed() {
    let server = TestServer::with(|c| {
        c.body_timeout = Duration::from_millis(300);
        c.header_timeout = Duration::from_millis(500);
    })
    .await;
    let text = raw(
        server.addr,
        b"POST /channel/send/slow/m HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab",
    )
    .await;
    assert_eq!(status_of(&text), 408, "{text}");

    // Slowloris: one header byte at a time, slower than the head timeout allows.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    dribble_until_closed(
        &mut stream,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaa",
    )
    .await;
    // Everyone else is still served.
    assert_eq!(server.health().await["status"], "ok");
}

#[tokio::test]
async fn channels_in_total_and_streams_per_channel() {
    let server = TestServer::with(|c| {
        c.hub.max_channels = 2;
        c.hub.max_subscribers = 2;
    })
    .await;
    server.publish("one", "m", "x").await;
    let mut listener = server.subscribe("two").await;
    // A third name is refused, by POST and by stream alike, and nothing is broadcast.
    let refused = server.post("three", "m", "x").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(
        refused.json()["error"],
        "the relay holds its maximum of 2 channels; try later"
    );
    assert_eq!(
        SseClient::connect(server.addr, "/stream?channel=three", &[])
            .await
            .status,
        503
    );
    // Existing channels still work at the limit.
    let _second = server.subscribe("two").await;
    let third = SseClient::connect(server.addr, "/stream?channel=two", &[]).await;
    assert_eq!(third.status, 409);
    server.publish("two", "m", "still here").await;
    assert_eq!(
        message_of(&listener.next_message().await.unwrap()),
        "still here"
    );
    assert_eq!(server.health().await["channels"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_publishers_are_cut_off_on_the_direct_path_too() {
    let server = TestServer::with(|c| c.header_timeout = Duration::from_millis(500)).await;
    // Slowloris after a first, plain publish on a kept-alive connection.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /channel/send/slow/m HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&buf[..n])), 200);
    dribble_until_closed(
        &mut stream,
        b"POST /channel/send/slow/m HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaa",
    )
    .await;
    assert_eq!(server.health().await["status"], "ok");
}

/// Sends `head` a byte every 200 ms (slower than the tests' header timeout allows) and asserts
/// the server cuts the connection off within 3 s.
async fn dribble_until_closed(stream: &mut TcpStream, head: &[u8]) {
    let started = Instant::now();
    let mut closed = false;
    for byte in head {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            // A 408 answer (the close follows), or nothing yet.
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    assert!(closed, "a dribbling client must be cut off");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
