//! The relay protocol end to end: the real server on 127.0.0.1:0, real HTTP.

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_exact_framing_and_headers() {
    let server = TestServer::start().await;
    let mut sub = server.subscribe("room").await;
    assert_eq!(sub.status, 200);
    assert_eq!(sub.headers["content-type"], "text/event-stream");
    assert_eq!(sub.headers["cache-control"], "no-cache");
    assert_eq!(sub.headers["x-accel-buffering"], "no");
    assert_eq!(sub.next_presence().await, Some(1));

    let body = r#"{"sdp":{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}}"#;
    let response = server.post("room", "request", body).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let reply = response.json();
    assert_eq!(reply["subscribers"], 1);
    let id = reply["id"].as_u64().unwrap();

    let event = sub.next_message().await.expect("event delivered");
    assert_eq!(event.event, "request");
    assert_eq!(event.id, id.to_string());
    // Exactly what flask-sse sent: {"message": "<body as a JSON string>"}.
    assert_eq!(
        event.data,
        format!("{{\"message\": {}}}", serde_json::to_string(body).unwrap())
    );
    // The seed client's JSON.parse(JSON.parse(e.data).message) gives the object back.
    let inner: serde_json::Value = serde_json::from_str(&message_of(&event)).unwrap();
    assert_eq!(inner["sdp"]["type"], "offer");
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_bytes_on_the_wire() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let reader = tokio::spawn(async move {
        raw(
            addr,
            b"GET /stream?channel=wire HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
    });
    // Wait until the subscriber is in, then publish.
    for _ in 0..100 {
        if server.health().await["subscribers"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = server.publish("wire", "response", "a\nb").await;
    let text = reader.await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains(": sigrelay\nretry: 2000\n\n"), "{text}");
    let frame = format!("id: {id}\nevent: response\ndata: {{\"message\": \"a\\nb\"}}\n\n");
    assert!(text.contains(&frame), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn channels_are_isolated() {
    let server = TestServer::start().await;
    let mut lower = server.subscribe("room").await;
    let mut upper = server.subscribe("ROOM").await;
    let mut other = server.subscribe("room2").await;
    // "room " (with a space) is not a valid name: refused, and never reaches "room".
    let spaced = server.post("room%20", "m", "spaced").await;
    assert_eq!(spaced.status, 400);
    assert!(spaced.json()["error"]
        .as_str()
        .unwrap()
        .contains("channel name"));
    assert_eq!(
        SseClient::connect(server.addr, "/stream?channel=room%20", &[])
            .await
            .status,
        400
    );

    server.publish("room", "m", "to room").await;
    server.publish("ROOM", "m", "to ROOM").await;
    server.publish("room2", "m", "to room2").await;
    assert_eq!(message_of(&lower.next_message().await.unwrap()), "to room");
    assert_eq!(message_of(&upper.next_message().await.unwrap()), "to ROOM");
    assert_eq!(message_of(&other.next_message().await.unwrap()), "to room2");
    for sub in [&mut lower, &mut upper, &mut other] {
        let extra = sub.next_within(Duration::from_millis(300)).await;
        assert!(
            extra.as_ref().is_none_or(|e| e.event == "presence"),
            "{extra:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_bodies_arrive_intact_and_hostile_targets_are_refused() {
    let server = TestServer::start().await;
    let mut sub = server.subscribe("room").await;
    let bodies = [
        "line1\nline2\n\nline3",
        "\r\n\r\nid: 1\nevent: evil\ndata: x\n\n",
        "quotes \" ' and \\ backslashes",
        "nul \u{0} bell \u{7} del \u{7f}",
        "emoji 😀🎥 and \u{2028}",
        "",
        &"x".repeat(60_000),
    ];
    for body in bodies {
        assert_eq!(server.post("room", "m", body).await.status, 200);
    }
    let long = "a".repeat(10 * 1024);
    let bad_targets = [
        ("room", "bad%0Atype", 400),
        ("room", "bad%0D%0Aid:%201", 400),
        ("room", "ty:pe", 400),
        ("room", "t%", 400),
        ("room", "t%zz", 400),
        ("..%2F..%2Fetc", "m", 400),
        ("room%2Fx", "m", 400),
        (long.as_str(), "m", 400),
        ("room", long.as_str(), 400),
        ("room", "%C3%28", 400),
    ];
    for (channel, event_type, status) in bad_targets {
        let r = server.post(channel, event_type, "must not arrive").await;
        assert_eq!(
            r.status,
            status,
            "{channel:.20}/{event_type:.20}: {}",
            r.text()
        );
        assert!(r.json()["error"].is_string());
    }
    // Not UTF-8.
    let r = request(
        server.addr,
        "POST",
        "/channel/send/room/m",
        &[],
        b"\xff\xfe\x00",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "body is not valid UTF-8");
    // Missing type, extra segment.
    assert_eq!(server.post("room", "m/extra", "x").await.status, 400);
    assert_eq!(
        request(server.addr, "POST", "/channel/send/room", &[], b"x")
            .await
            .status,
        400
    );

    server.publish("room", "end", "marker").await;
    let mut got = Vec::new();
    loop {
        let event = sub.next_message().await.expect("stream open");
        if event.event == "end" {
            break;
        }
        assert_eq!(event.event, "m");
        got.push(message_of(&event));
    }
    assert_eq!(got, bodies);
}

#[tokio::test(flavor = "multi_thread")]
async fn last_event_id_resume_after_disconnect_during_a_burst() {
    // History holds the whole burst, so nothing may be lost however long the reconnect takes.
    let server = std::sync::Arc::new(TestServer::with(|c| c.hub.history = 256).await);
    let mut sub = server.subscribe("burst").await;
    let publisher = {
        let server = server.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                server.publish("burst", "m", &i.to_string()).await;
            }
            server.publish("burst", "end", "").await;
        })
    };
    let mut got = Vec::new();
    while got.len() < 50 {
        let event = sub.next_message().await.unwrap();
        got.push(message_of(&event));
    }
    let last = sub.last_event_id.clone();
    drop(sub); // disconnect mid-burst
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut sub = SseClient::connect(
        server.addr,
        "/stream?channel=burst",
        &[("last-event-id", &last)],
    )
    .await;
    loop {
        let event = sub.next_message().await.expect("stream open");
        assert_ne!(event.event, "gap");
        if event.event == "end" {
            break;
        }
        got.push(message_of(&event));
    }
    publisher.await.unwrap();
    let want: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "every message exactly once, in order");
}

#[tokio::test(flavor = "multi_thread")]
async fn query_parameter_resume_and_gap_when_history_is_gone() {
    let server = TestServer::with(|c| c.hub.history = 4).await;
    let first = server.publish("g", "m", "0").await;
    for i in 1..10 {
        server.publish("g", "m", &i.to_string()).await;
    }
    // Asked for everything after the first event: 8 are gone, so a gap comes first.
    let mut sub = SseClient::connect(
        server.addr,
        &format!("/stream?channel=g&lastEventId={first}"),
        &[],
    )
    .await;
    let gap = sub.next_message().await.unwrap();
    assert_eq!(gap.event, "gap");
    let data: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(data["lastEventId"], first.to_string());
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(message_of(&sub.next_message().await.unwrap()));
    }
    assert_eq!(got, ["6", "7", "8", "9"]);

    // Reconnecting with the id the gap event set: no second gap, nothing repeated.
    let last = sub.last_event_id.clone();
    drop(sub);
    server.publish("g", "m", "10").await;
    let mut sub = SseClient::connect(
        server.addr,
        "/stream?channel=g",
        &[("last-event-id", &last)],
    )
    .await;
    assert_eq!(message_of(&sub.next_message().await.unwrap()), "10");

    // An id the server never issued is a gap too.
    let mut sub = SseClient::connect(
        server.addr,
        "/stream?channel=g",
        &[("last-event-id", "nonsense")],
    )
    .await;
    assert_eq!(sub.next_message().await.unwrap().event, "gap");

    // A plain new subscriber gets only live events, as with flask-sse.
    let mut sub = server.subscribe("g").await;
    sub.welcome().await;
    assert!(sub
        .next_within(Duration::from_millis(300))
        .await
        .is_some_and(|e| e.event == "presence"));
    assert!(sub.next_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_get_413() {
    let server = TestServer::with(|c| c.max_body = 1000).await;
    let mut sub = server.subscribe("big").await;
    assert_eq!(server.post("big", "m", &"x".repeat(1000)).await.status, 200);
    let r = server.post("big", "m", &"x".repeat(1001)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "body larger than 1000 bytes");

    // Chunked, no Content-Length: cut off while reading.
    let chunk = "x".repeat(600);
    let req = format!(
        "POST /channel/send/big/m HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let text = raw(server.addr, req.as_bytes()).await;
    assert_eq!(status_of(&text), 413, "{text}");
    assert!(text.contains(r#"{"error":"body larger than 1000 bytes"}"#));
    // A small chunked body is fine.
    let req = "POST /channel/send/big/m HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nsmall\r\n0\r\n\r\n";
    assert_eq!(status_of(&raw(server.addr, req.as_bytes()).await), 200);

    assert_eq!(message_of(&sub.next_message().await.unwrap()).len(), 1000);
    assert_eq!(message_of(&sub.next_message().await.unwrap()), "small");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_channels_are_removed_after_the_ttl() {
    // Long enough for the setup below to finish within it on a busy machine.
    let server = TestServer::with(|c| c.hub.history_ttl = Duration::from_millis(2000)).await;
    let mut subs = Vec::new();
    for i in 0..20 {
        subs.push(server.subscribe(&format!("sub{i}")).await);
        server.publish(&format!("pub{i}"), "m", "x").await;
    }
    assert_eq!(server.health().await["channels"], 40);
    assert_eq!(server.health().await["subscribers"], 20);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // Publish-only channels went; channels with a subscriber stay.
    assert_eq!(server.health().await["channels"], 20);
    drop(subs);
    let mut channels = serde_json::Value::Null;
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        channels = server.health().await["channels"].clone();
        if channels == 0 {
            break;
        }
    }
    assert_eq!(channels, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_comments_on_idle_streams() {
    let server = TestServer::with(|c| c.keepalive = Duration::from_millis(200)).await;
    let text = raw(
        server.addr,
        b"GET /stream?channel=quiet HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(text.contains(": keep-alive\n\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_ends_open_streams() {
    let server = TestServer::start().await;
    let mut subs = Vec::new();
    for i in 0..20 {
        subs.push(server.subscribe(&format!("s{}", i % 3)).await);
    }
    // An in-flight request completes.
    assert_eq!(server.post("s0", "m", "last").await.status, 200);
    let took = server.stop().await;
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    for mut sub in subs {
        // Drain: every stream reaches its end rather than hanging.
        let ended = tokio::time::timeout(Duration::from_secs(2), async {
            while sub.next().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_subscribers_each_receive_every_message() {
    let server = TestServer::start().await;
    let subs = join_all((0..1000).map(|_| server.subscribe("crowd"))).await;
    assert_eq!(server.health().await["subscribers"], 1000);
    for i in 0..20 {
        let r = server.post("crowd", "m", &i.to_string()).await;
        assert_eq!(r.json()["subscribers"], 1000);
    }
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let results = join_all(subs.into_iter().map(|mut sub| async move {
        let mut got = Vec::new();
        while got.len() < 20 {
            got.push(message_of(&sub.next_message().await.expect("message")));
        }
        got
    }))
    .await;
    for got in results {
        assert_eq!(got, want);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_counts_joins_and_leaves() {
    let server = TestServer::start().await;
    let mut a = server.subscribe("p").await;
    assert_eq!(a.next_presence().await, Some(1));
    let mut b = server.subscribe("p").await;
    assert_eq!(a.next_presence().await, Some(2));
    assert_eq!(b.next_presence().await, Some(2));
    drop(b);
    assert_eq!(a.next_presence().await, Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn room_capacity_counts_distinct_peers() {
    let server = TestServer::with(|c| c.hub.room_capacity = 2).await;
    let mut a = SseClient::connect(server.addr, "/stream?channel=r&peer=alice", &[]).await;
    let _b = SseClient::connect(server.addr, "/stream?channel=r&peer=bob", &[]).await;
    assert_eq!(a.status, 200);
    let (_, token) = a.welcome().await;
    let third = request(server.addr, "GET", "/stream?channel=r&peer=eve", &[], b"").await;
    assert_eq!(third.status, 409);
    assert_eq!(third.json()["error"], "room is full");
    // A seed page (no peer id) still gets in.
    assert_eq!(server.subscribe("r").await.status, 200);
    // alice reloading (with the token from her welcome) takes her own place over; her old
    // stream ends.
    let a2 = SseClient::connect(
        server.addr,
        &format!("/stream?channel=r&peer=alice&token={token}"),
        &[],
    )
    .await;
    assert_eq!(a2.status, 200);
    let ended = tokio::time::timeout(WAIT, async { while a.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the replaced stream ended");
    let bad = request(
        server.addr,
        "GET",
        "/stream?channel=r&peer=bad%20id",
        &[],
        b"",
    )
    .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_paths_and_pages() {
    let server = TestServer::start().await;
    let r = request(server.addr, "POST", "/stream?channel=x", &[], b"").await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, OPTIONS")));
    let r = server.get("/channel/send/x/m").await;
    assert_eq!((r.status, r.header("allow")), (405, Some("POST, OPTIONS")));
    let r = server.get("/nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not found");

    let page = server.get("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let etag = page.header("etag").unwrap().to_owned();
    let again = request(server.addr, "GET", "/", &[("if-none-match", &etag)], b"").await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    for target in [
        "/assets/..%2FCargo.toml",
        "/assets/../Cargo.toml",
        "/assets/%2e%2e/Cargo.toml",
        "/assets/..%5CCargo.toml",
        "/assets/",
        "/assets/nope.js",
    ] {
        let text = raw(
            server.addr,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(matches!(status_of(&text), 400 | 404), "{target}: {text}");
        assert!(!text.contains("[package]"), "{target} leaked a file");
    }
    let config = server.get("/config").await;
    assert_eq!(config.json(), serde_json::json!({ "iceServers": [] }));
}
