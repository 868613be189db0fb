//! What is served outside hyper (`http::fast`) answers exactly as hyper's routes do: the
//! same events and refusals, hostile framing handed to hyper, refusals decided from the head,
//! publishes in flight finished at shutdown, and pipelined publishes that never outrun the
//! subscribers reading them.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Answers written outside hyper put `date` right after the status line; hyper puts it last.
fn served_directly(answer: &str) -> bool {
    answer
        .split("\r\n")
        .nth(1)
        .is_some_and(|l| l.starts_with("date: "))
}

/// A connection's first request for `/stream` is served outside hyper (`http::fast`):
/// close-delimited, with the same events and the same JSON refusals; behind another request
/// on a keep-alive connection, hyper serves it (chunked). A head that arrives in pieces is
/// still recognised.
#[tokio::test(flavor = "multi_thread")]
async fn streams_served_directly_and_through_hyper_say_the_same() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let direct = raw(
        addr,
        b"GET /stream?channel=direct&peer=alice HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&direct), 200, "{direct}");
    assert!(
        direct.contains("content-type: text/event-stream\r\n"),
        "{direct}"
    );
    assert!(direct.contains("connection: close\r\n"), "{direct}");
    assert!(!direct.contains("transfer-encoding"), "{direct}");
    assert!(
        direct.contains("event: welcome\ndata: {\"peer\": \"alice\""),
        "{direct}"
    );

    for (request, status) in [
        (
            &b"GET /stream?channel=a%20b HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            400,
        ),
        (b"GET /stream?channel=a HTTP/1.1\r\n\r\n", 400),
        (
            b"GET /stream?channel=a HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n",
            403,
        ),
    ] {
        let refused = raw(addr, request).await;
        assert_eq!(status_of(&refused), status, "{refused}");
        assert!(refused.contains("application/json"), "{refused}");
        assert!(refused.contains("{\"error\":"), "{refused}");
    }

    let behind = raw(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /stream?channel=direct HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(behind.contains("transfer-encoding: chunked"), "{behind}");
    assert!(behind.contains("event: welcome"), "{behind}");

    let mut pieces = TcpStream::connect(addr).await.unwrap();
    pieces.write_all(b"GE").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    pieces
        .write_all(b"T /stream?channel=direct HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), pieces.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\ndate: "), "{text}");
    assert!(text.contains("connection: close"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_served_directly_and_through_hyper_say_the_same() {
    let server = TestServer::start().await;
    let mut listener = server.subscribe("pub").await;
    listener.welcome().await;

    // One keep-alive connection: plain publishes (served directly), then a chunked one (handed
    // to hyper with the bytes already read), then a plain one again (hyper keeps it), and two
    // pipelined in one write.
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let mut pending = Vec::new();
    let plain = |body: &str| {
        format!(
            "POST /channel/send/pub/m HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    conn.write_all(plain("one").as_bytes()).await.unwrap();
    let first = read_response(&mut conn, &mut pending).await;
    assert_eq!(status_of(&first), 200, "{first}");
    assert!(
        first.contains("content-type: application/json\r\n"),
        "{first}"
    );
    assert!(!first.contains("connection: close"), "{first}");
    assert!(first.contains("\"subscribers\": 1"), "{first}");
    // Split across writes: head, then body.
    let split = plain("two");
    let (head, body) = split.split_at(split.len() - 3);
    conn.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    conn.write_all(body.as_bytes()).await.unwrap();
    assert_eq!(
        status_of(&read_response(&mut conn, &mut pending).await),
        200
    );
    conn.write_all(
        b"POST /channel/send/pub/m HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nthree\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let chunked = read_response(&mut conn, &mut pending).await;
    assert_eq!(status_of(&chunked), 200, "{chunked}");
    assert!(!served_directly(&chunked), "hyper answered: {chunked}");
    let pipelined = format!("{}{}", plain("four"), plain("five"));
    conn.write_all(pipelined.as_bytes()).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            status_of(&read_response(&mut conn, &mut pending).await),
            200
        );
    }
    let mut fresh = TcpStream::connect(server.addr).await.unwrap();
    let mut fresh_pending = Vec::new();
    let pipelined = format!("{}{}", plain("six"), plain("seven"));
    fresh.write_all(pipelined.as_bytes()).await.unwrap();
    for _ in 0..2 {
        let answer = read_response(&mut fresh, &mut fresh_pending).await;
        assert_eq!(status_of(&answer), 200, "{answer}");
        assert!(served_directly(&answer), "{answer}");
    }
    for expected in ["one", "two", "three", "four", "five", "six", "seven"] {
        let event = listener.next_message().await.expect("event");
        assert_eq!(message_of(&event), expected);
    }

    // The same refusals both ways (a chunked body sends the request to hyper).
    for (target, status) in [
        ("/channel/send/a%zz/m", 400),
        ("/channel/send/a/b/c", 400),
        ("/channel/send/pub/m", 403),
    ] {
        let origin = if status == 403 {
            "Origin: https://evil.example\r\n"
        } else {
            ""
        };
        let direct = raw(
            server.addr,
            format!("POST {target} HTTP/1.1\r\nHost: x\r\n{origin}Connection: close\r\nContent-Length: 1\r\n\r\nx").as_bytes(),
        )
        .await;
        let hyper = raw(
            server.addr,
            format!("POST {target} HTTP/1.1\r\nHost: x\r\n{origin}Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&direct), status, "{direct}");
        assert_eq!(status_of(&hyper), status, "{hyper}");
        let body = |t: &str| t.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        assert_eq!(body(&direct), body(&hyper));
        assert!(body(&direct).starts_with("{\"error\":"), "{direct}");
    }
    // Connection: close is honoured: the answer, then the end.
    let closed = raw(
        server.addr,
        b"POST /channel/send/pub/m HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\neight",
    )
    .await;
    assert_eq!(status_of(&closed), 200, "{closed}");
    assert!(closed.contains("connection: close\r\n"), "{closed}");
    assert_eq!(
        message_of(&listener.next_message().await.expect("event")),
        "eight"
    );
}

/// Issue 12 item 8: a first `GET /stream` with a body or unusual framing is hyper's, which
/// refuses it (400) as it would have without the fast path; nobody gets subscribed.
#[tokio::test(flavor = "multi_thread")]
async fn stream_heads_with_odd_framing_are_refused_as_hyper_refuses_them() {
    let server = TestServer::start().await;
    for framing in [
        "Content-Length: +3\r\n",
        "Content-Length: abc\r\n",
        "Content-Length: 0\r\nContent-Length: 1\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked, identity\r\n",
    ] {
        for version in ["HTTP/1.1", "HTTP/1.0"] {
            let head = format!("GET /stream?channel=odd {version}\r\nHost: x\r\n{framing}\r\n");
            let first = raw(server.addr, head.as_bytes()).await;
            let behind = raw(
                server.addr,
                format!("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n{head}").as_bytes(),
            )
            .await;
            let second = &behind[behind.find("}\n").expect("the health answer") + 2..];
            assert_eq!(status_of(&first), 400, "{framing}{version}: {first}");
            assert_eq!(status_of(second), 400, "{framing}{version}: {second}");
        }
    }
    // Transfer-Encoding on HTTP/1.0 is refused too (RFC 9112 6.1).
    let te10 = raw(
        server.addr,
        b"GET /stream?channel=odd HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&te10), 400, "{te10}");
    assert_eq!(server.health().await["subscribers"], 0);
}

/// Issue 12 item 8: a publish that will be refused is answered from its head, at once, while
/// its body is still on the way (not 408 after `--body-timeout`), as the hyper route does.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_decided_from_the_head_before_the_body() {
    let server = TestServer::with(|c| c.body_timeout = Duration::from_secs(8)).await;
    for (target, origin, status) in [
        ("/channel/send/a%zz/m", "", 400),
        ("/channel/send/a/b/c", "", 400),
        (
            "/channel/send/room/m",
            "Origin: https://evil.example\r\n",
            403,
        ),
    ] {
        for framing in [
            "Content-Length: 10\r\n\r\nab",
            "Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
        ] {
            let mut conn = TcpStream::connect(server.addr).await.unwrap();
            let head = format!("POST {target} HTTP/1.1\r\nHost: x\r\n{origin}{framing}");
            conn.write_all(head.as_bytes()).await.unwrap();
            let mut answer = vec![0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut answer))
                .await
                .unwrap_or_else(|_| panic!("{target} {framing:?}: no answer before the body"))
                .unwrap();
            let text = String::from_utf8_lossy(&answer[..n]);
            assert_eq!(status_of(&text), status, "{target} {framing:?}: {text}");
            assert!(text.contains("{\"error\":"), "{text}");
        }
    }
}

/// Issue 12 item 8: a publish whose body is arriving when the server shuts down is read,
/// published and answered (with `connection: close`), on both paths.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_in_flight_at_shutdown_is_answered() {
    let server = TestServer::start().await;
    let mut direct = TcpStream::connect(server.addr).await.unwrap();
    direct
        .write_all(
            b"POST /channel/send/late/m HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello",
        )
        .await
        .unwrap();
    let mut hyper = TcpStream::connect(server.addr).await.unwrap();
    hyper
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /channel/send/late/m HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    let mut pending = Vec::new();
    read_response(&mut hyper, &mut pending).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shutdown = server.shutdown.clone();
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for conn in [&mut direct, &mut hyper] {
        conn.write_all(b"world").await.unwrap();
    }
    let direct_answer = read_response(&mut direct, &mut Vec::new()).await;
    let hyper_answer = read_response(&mut hyper, &mut pending).await;
    for answer in [&direct_answer, &hyper_answer] {
        assert_eq!(status_of(answer), 200, "{answer}");
        assert!(answer.contains("{\"id\": "), "{answer}");
    }
    assert!(
        direct_answer.contains("connection: close\r\n"),
        "{direct_answer}"
    );
    server.stop().await;
}

/// Issue 12 item 7: publishes pipelined in one write on a fresh connection (the fast path
/// reads and publishes them in one go) never outrun a subscriber that reads: every reader gets
/// every one, in order, and no `gap`. With and without the default rate limits.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_publishes_reach_every_reader_in_order() {
    for (count, unlimited) in [(500usize, true), (150, false)] {
        let server = TestServer::with(|c| {
            if unlimited {
                c.post_rate = 1e6;
                c.post_burst = 1e6;
            }
        })
        .await;
        let mut readers = Vec::new();
        for _ in 0..3 {
            let mut reader = server.subscribe("pipe").await;
            reader.welcome().await;
            readers.push(reader);
        }
        let batch: String = (0..count)
            .map(|i| {
                let body = format!("m{i}");
                format!(
                    "POST /channel/send/pipe/m HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            })
            .collect();
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(batch.as_bytes()).await.unwrap();
        let mut pending = Vec::new();
        for i in 0..count {
            let answer = read_response(&mut conn, &mut pending).await;
            assert_eq!(status_of(&answer), 200, "publish {i}: {answer}");
        }
        for (r, reader) in readers.iter_mut().enumerate() {
            for i in 0..count {
                let event = loop {
                    let event = reader.next().await.expect("an event");
                    assert_ne!(event.event, "gap", "reader {r} got a gap before m{i}");
                    if event.event == "m" {
                        break event;
                    }
                };
                assert_eq!(message_of(&event), format!("m{i}"), "reader {r}");
            }
        }
    }
}

/// Issue 12 item 11: the relay's own event types cannot be published, on either publish path:
/// a connection whose first request is the publish is served directly (`http::fast`),
/// one that starts with `GET /healthz` stays with hyper. Each gets 400 with a one-line JSON
/// reason, and no subscriber sees anything.
#[tokio::test(flavor = "multi_thread")]
async fn server_event_types_cannot_be_published() {
    let server = TestServer::start().await;
    let mut listener = server.subscribe("own").await;
    listener.welcome().await;
    assert_eq!(listener.next_presence().await, Some(1));
    for reserved in sigrelay::names::SERVER_EVENT_TYPES {
        let publish = format!(
            "POST /channel/send/own/{reserved} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}"
        );
        let mut direct = TcpStream::connect(server.addr).await.unwrap();
        let mut pending = Vec::new();
        direct.write_all(publish.as_bytes()).await.unwrap();
        let direct_answer = read_response(&mut direct, &mut pending).await;
        assert!(served_directly(&direct_answer), "{direct_answer}");

        let mut hyper = TcpStream::connect(server.addr).await.unwrap();
        let mut pending = Vec::new();
        hyper
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            status_of(&read_response(&mut hyper, &mut pending).await),
            200
        );
        hyper.write_all(publish.as_bytes()).await.unwrap();
        let hyper_answer = read_response(&mut hyper, &mut pending).await;
        assert!(!served_directly(&hyper_answer), "{hyper_answer}");

        let body = |t: &str| t.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        for answer in [&direct_answer, &hyper_answer] {
            assert_eq!(status_of(answer), 400, "{answer}");
            assert_eq!(
                body(answer),
                format!(
                    "{{\"error\":\"event type {reserved} is reserved for the relay's own events\"}}\n"
                )
            );
        }
    }
    // Other spellings are ordinary types, and the channel still works.
    server.publish("own", "Gap", "fine").await;
    // Read with `next`, which skips nothing: a refused welcome/presence/gap would show here.
    let event = listener.next().await.expect("the ordinary message");
    assert_eq!(
        (event.event.as_str(), message_of(&event).as_str()),
        ("Gap", "fine")
    );
    let more = listener.next_within(Duration::from_millis(200)).await;
    assert!(more.is_none(), "nothing else was broadcast: {more:?}");
}
