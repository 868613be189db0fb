//! `GET /metrics`: the counters move with real traffic, and no room name ever appears.

mod common;

use common::*;

/// The value of one sample line (`name{labels} value`) in the exposition, 0 when absent
/// (a label value not seen yet is not printed).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

async fn scrape(server: &TestServer) -> String {
    let r = server.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .contains("openmetrics-text"),
        "{:?}",
        r.header("content-type")
    );
    r.text()
}

#[tokio::test]
async fn counters_follow_publish_delivery_and_refusals() {
    let server = TestServer::start().await;
    let before = scrape(&server).await;
    assert!(before.ends_with("# EOF\n"), "{before}");
    assert_eq!(sample(&before, "sigrelay_events_published_total"), 0.0);

    let mut sub = server.subscribe("secret-room-4821").await;
    server.publish("secret-room-4821", "offer", "hello").await;
    assert_eq!(message_of(&sub.next_message().await.unwrap()), "hello");
    // A browser request from a foreign origin: refused, counted under its reason.
    let refused = request(
        server.addr,
        "POST",
        "/channel/send/secret-room-4821/offer",
        &[("origin", "https://evil.example")],
        b"x",
    )
    .await;
    assert_eq!(refused.status, 403);
    // A resume from an id never issued: one gap event.
    let mut resumed = SseClient::connect(
        server.addr,
        "/stream?channel=secret-room-4821",
        &[("last-event-id", "garbage")],
    )
    .await;
    assert_eq!(resumed.next_message().await.unwrap().event, "gap");

    let after = scrape(&server).await;
    assert_eq!(sample(&after, "sigrelay_events_published_total"), 1.0);
    // The subscriber got at least the message (plus presence and welcome events).
    assert!(
        sample(&after, "sigrelay_events_delivered_total") >= 2.0,
        "{after}"
    );
    assert!(
        sample(&after, "sigrelay_stream_bytes_out_total") > 50.0,
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "sigrelay_refusals_total{reason=\"forbidden_origin\"}"
        ),
        1.0,
        "{after}"
    );
    assert_eq!(sample(&after, "sigrelay_events_dropped_total"), 1.0);
    assert_eq!(sample(&after, "sigrelay_events_replayed_total"), 1.0);
    assert_eq!(sample(&after, "sigrelay_channels"), 1.0);
    assert_eq!(sample(&after, "sigrelay_subscribers"), 2.0);
    assert!(sample(&after, "sigrelay_connections_accepted_total") >= 6.0);
    // The two streams and this scrape's own connection.
    assert!(
        sample(&after, "sigrelay_connections_open") >= 3.0,
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "sigrelay_request_duration_seconds_count{route=\"publish\"}"
        ),
        2.0,
        "{after}"
    );
    assert!(
        !after.contains("secret-room"),
        "room names are never listed"
    );
}

#[tokio::test]
async fn connection_refusals_are_counted() {
    let server = TestServer::with(|c| c.max_connections_per_ip = 1).await;
    let _held = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Wait until the held connection is counted, then try a second one.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let answer = raw(server.addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(status_of(&answer), 429, "{answer}");
    drop(_held);
    // The limit is per address: scrape once the held socket is gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = raw(server.addr, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await;
        if status_of(&text) == 200 {
            // At least the refusal above (a scrape tried before the held socket closed counts too).
            assert!(
                sample(&text, "sigrelay_refusals_total{reason=\"too_many_per_ip\"}") >= 1.0,
                "{text}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never got a scrape");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Issue 12 item 10: `/healthz` and `/metrics` read kept counts, so they cost the same with
/// many channels as with none (the figure is printed, not asserted: timings vary) and report
/// the counts exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_cost_no_more_with_many_channels() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CHANNELS: usize = 20_000;
    const PROBES: usize = 200;
    // One address publishes them all: the rate limit is not what this test is about.
    let server = TestServer::with(|c| {
        c.post_rate = 1e9;
        c.post_burst = 1e9;
    })
    .await;
    // Time per request over one keep-alive connection (answers have a Content-Length).
    let per_request = |target: &'static str| async move {
        let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        let started = std::time::Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..PROBES {
            conn.write_all(request.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            loop {
                let n = tokio::time::timeout(WAIT, conn.read(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap();
                    if got.len() >= end + 4 + length {
                        break;
                    }
                }
            }
        }
        started.elapsed() / PROBES as u32
    };
    let health_empty = per_request("/healthz").await;
    let metrics_empty = per_request("/metrics").await;

    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut pending = Vec::new();
    for batch in 0..CHANNELS / 500 {
        let mut requests = Vec::new();
        for i in 0..500 {
            requests.extend_from_slice(
                format!(
                    "POST /channel/send/many-{}/m HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
                    batch * 500 + i
                )
                .as_bytes(),
            );
        }
        conn.write_all(&requests).await.unwrap();
        for _ in 0..500 {
            let answer = read_response(&mut conn, &mut pending).await;
            assert_eq!(status_of(&answer), 200, "{answer}");
        }
    }
    let mut streams = Vec::new();
    for i in 0..3 {
        let mut sub = server.subscribe(&format!("many-{i}")).await;
        sub.welcome().await;
        streams.push(sub);
    }
    let health = server.health().await;
    assert_eq!(health["channels"], CHANNELS as u64);
    assert_eq!(health["subscribers"], 3);
    let text = scrape(&server).await;
    assert_eq!(sample(&text, "sigrelay_channels"), CHANNELS as f64);
    assert_eq!(sample(&text, "sigrelay_subscribers"), 3.0);
    assert!(sample(&text, "sigrelay_history_bytes") >= (CHANNELS * 96) as f64);
    let health_many = per_request("/healthz").await;
    let metrics_many = per_request("/metrics").await;
    eprintln!(
        "item 10: per request, no channels vs {CHANNELS}: /healthz {health_empty:.1?} vs \
         {health_many:.1?}, /metrics {metrics_empty:.1?} vs {metrics_many:.1?}"
    );
    drop(streams);
}
