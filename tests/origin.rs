//! The origin policy: a cross-site `text/plain` POST (a CORS "simple request", no preflight)
//! is refused and never broadcast; our own origin and listed origins work, with CORS answers.

mod common;

use std::time::Duration;

use common::*;

async fn post_from(server: &TestServer, origin: &str, body: &str) -> Response {
    request(
        server.addr,
        "POST",
        "/channel/send/room/request",
        &[("origin", origin), ("content-type", "text/plain")],
        body.as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_origin_posts_are_refused_and_not_broadcast() {
    let server = TestServer::start().await;
    let mut sub = server.subscribe("room").await;
    let own = format!("http://{}", server.addr);

    for evil in [
        "https://evil.example",
        "null",
        "http://127.0.0.1:1",
        &own.replace("http", "https"),
    ] {
        let r = post_from(&server, evil, "forged").await;
        assert_eq!(r.status, 403, "{evil}");
        assert!(r.json()["error"].as_str().unwrap().contains("not allowed"));
        assert!(r.header("access-control-allow-origin").is_none());
    }
    let r = request(
        server.addr,
        "GET",
        "/stream?channel=room",
        &[("origin", "https://evil.example")],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);

    // Our own pages, and clients that send no Origin at all (curl, the seed's server side).
    assert_eq!(post_from(&server, &own, "mine").await.status, 200);
    assert_eq!(
        server.post("room", "request", "no origin").await.status,
        200
    );

    let first = sub.next_message().await.unwrap();
    assert_eq!(message_of(&first), "mine");
    let second = sub.next_message().await.unwrap();
    assert_eq!(message_of(&second), "no origin");
    assert!(sub
        .next_within(Duration::from_millis(300))
        .await
        .is_none_or(|e| e.event == "presence"));
}

#[tokio::test(flavor = "multi_thread")]
async fn listed_origins_get_cors_answers() {
    let server = TestServer::with(|c| c.cors_origins = vec!["https://app.example".into()]).await;
    let mut sub = server.subscribe("room").await;

    let preflight = request(
        server.addr,
        "OPTIONS",
        "/channel/send/room/request",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        b"",
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(preflight
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));

    let r = post_from(&server, "https://app.example", "allowed").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(message_of(&sub.next_message().await.unwrap()), "allowed");

    let stream = SseClient::connect(
        server.addr,
        "/stream?channel=room",
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.headers["access-control-allow-origin"],
        "https://app.example"
    );

    assert_eq!(
        post_from(&server, "https://other.example", "x")
            .await
            .status,
        403
    );
    let refused = request(
        server.addr,
        "OPTIONS",
        "/channel/send/room/request",
        &[("origin", "https://other.example")],
        b"",
    )
    .await;
    assert_eq!(refused.status, 403);
}
