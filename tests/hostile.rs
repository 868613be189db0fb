//! A battery of hostile request shapes: each gets a 4xx, nothing is broadcast, and the server
//! keeps serving.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_get_4xx_and_nothing_is_broadcast() {
    let server = TestServer::start().await;
    let mut sub = server.subscribe("room").await;
    let many_headers: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge_target = format!("/channel/send/{}/m", "a".repeat(500_000));
    // (what, the documented status, the raw request)
    let cases: Vec<(&str, u16, String)> = vec![
        ("CL with a sign", 400, "POST /channel/send/room/m HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc".into()),
        ("two different CLs", 400, "POST /channel/send/room/m HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into()),
        ("101 headers", 431, format!("POST /channel/send/room/m HTTP/1.1\r\nHost: x\r\n{many_headers}Content-Length: 1\r\n\r\nx")),
        ("huge target", 431, format!("POST {huge_target} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")),
        ("bad percent-encoding", 400, "POST /channel/send/ro%zzom/m HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx".into()),
        ("NUL in target", 400, "POST /channel/send/ro\0om/m HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx".into()),
        ("CR LF in type", 400, "POST /channel/send/room/m%0D%0Aevent:%20x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx".into()),
        ("traversal in assets", 404, "GET /assets/..%2F..%2FCargo.toml HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("non-UTF-8 body", 400, "POST /channel/send/room/m HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n\u{ff}\u{fe}".into()),
        ("chunked with a bad size", 400, "POST /channel/send/room/m HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".into()),
        ("HTTP/1.1 without Host", 400, "POST /channel/send/room/m HTTP/1.1\r\nContent-Length: 1\r\n\r\nx".into()),
    ];
    // Content-Length with Transfer-Encoding: hyper reads the body as chunked, as RFC 9112 6.3
    // says, and closes the connection after answering, so nothing can hide behind it.
    let text = raw(
        server.addr,
        b"POST /channel/send/room/m HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(
        !text.contains("HTTP/1.1 404"),
        "a request was smuggled behind the body: {text}"
    );

    let mut tried = 0;
    let mut json_reasons = 0;
    for (what, expected, request) in &cases {
        // Latin-1 bytes for the non-UTF-8 case: send each char as one byte where it fits.
        let bytes: Vec<u8> = request.chars().map(|c| c as u32 as u8).collect();
        let text = raw(server.addr, &bytes).await;
        let status = status_of(&text);
        assert_eq!(status, *expected, "{what}: {text:.200}");
        // Our own refusals carry a one-line JSON reason. Framing that hyper's parser refuses
        // (bad or duplicate Content-Length, NUL, over 100 headers, an oversized head) is
        // answered by hyper itself, before any of our code runs: status only, no body.
        if text.contains("application/json") {
            assert!(text.contains("\"error\""), "{what}: {text:.200}");
            json_reasons += 1;
        } else {
            assert!(text.contains("content-length: 0"), "{what}: {text:.200}");
        }
        tried += 1;
    }
    assert_eq!(tried, cases.len());
    assert_eq!(json_reasons, 6, "the refusals from our own code");
    // Publish a marker and check that no hostile body got through before it.
    server.publish("room", "end", "marker").await;
    loop {
        let event = sub.next_message().await.expect("stream open");
        if event.event == "end" {
            break;
        }
        assert_eq!(
            message_of(&event),
            "abc",
            "only the chunked CL+TE body may arrive"
        );
    }
    assert!(sub
        .next_within(Duration::from_millis(200))
        .await
        .is_none_or(|e| e.event == "presence"));
    assert_eq!(server.health().await["status"], "ok");
}
