//! Several instances sharing rooms through a real `redis-server` (started here on a free
//! loopback port): cross-instance delivery, resume on another instance, presence and capacity
//! over the cluster, peer ids that cannot be taken across instances without the holder's token,
//! Redis lost and back, flask-sse's message format, and start-up without Redis.
//!
//! Without redis-server these tests say "skipped: no redis-server", unless
//! SIGRELAY_REQUIRE_REDIS=1 (CI), which makes that a failure.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::{message_of, post_as, request, SseClient, TestServer, WAIT};
use futures_util::StreamExt;
use sigrelay::hub::{RedisFormat, RedisSettings};

/// How long a place is kept for its holder in these tests (`--peer-grace`).
const GRACE: Duration = Duration::from_millis(800);

async fn instance(redis: &RedisServer, format: RedisFormat) -> TestServer {
    let settings = redis.settings(format);
    TestServer::with(move |c| {
        c.redis = Some(settings);
        // No --peer-secret: the instances agree on one through Redis.
        c.hub.peer_grace = GRACE;
        // Two places, so a third peer shows the capacity (the default is six).
        c.hub.room_capacity = 2;
        c.keepalive = Duration::from_millis(500);
    })
    .await
}

/// Waits until `/healthz` says `ready` is `want`.
async fn wait_ready(server: &TestServer, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = server.health().await;
        if health["ready"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never became ready={want}: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next `presence` event's (subscribers, peers).
async fn presence(client: &mut SseClient) -> (u64, u64) {
    loop {
        let event = client.next().await.expect("no presence event");
        if event.event == "presence" {
            let v: serde_json::Value = serde_json::from_str(&event.data).unwrap();
            return (
                v["subscribers"].as_u64().unwrap(),
                v["peers"].as_u64().unwrap(),
            );
        }
    }
}

/// Reads presence events until one says (subscribers, peers).
async fn presence_reaches(client: &mut SseClient, want: (u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(25);
    while Instant::now() < deadline {
        if presence(client).await == want {
            return;
        }
    }
    panic!("presence never reached {want:?}");
}

#[tokio::test]
async fn a_post_on_one_instance_reaches_subscribers_on_both_in_order_exactly_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = instance(&redis, RedisFormat::Native).await;
    let b = instance(&redis, RedisFormat::Native).await;
    let mut on_a = a.subscribe("room").await;
    let mut on_b = b.subscribe("room").await;
    let mut ids = Vec::new();
    for i in 0..60 {
        // Alternate the instance taking the POST: order must hold whoever publishes.
        let publisher = if i % 2 == 0 { &b } else { &a };
        ids.push(publisher.publish("room", "m", &format!("msg {i}")).await);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    for client in [&mut on_a, &mut on_b] {
        for (i, id) in ids.iter().enumerate() {
            let event = client.next_message().await.expect("message missing");
            assert_eq!(event.id, id.to_string());
            assert_eq!(message_of(&event), format!("msg {i}"));
        }
        // Exactly once: nothing more arrives.
        let extra = client.next_within(Duration::from_millis(300)).await;
        assert!(
            extra.as_ref().is_none_or(|e| e.event == "presence"),
            "{extra:?}"
        );
    }
}

#[tokio::test]
async fn resume_on_another_instance_loses_nothing() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = instance(&redis, RedisFormat::Native).await;
    let b = instance(&redis, RedisFormat::Native).await;
    let mut first = a.subscribe("resume").await;
    for i in 0..5 {
        a.publish("resume", "m", &format!("early {i}")).await;
    }
    for _ in 0..3 {
        first.next_message().await.unwrap();
    }
    let last_seen = first.last_event_id.clone();
    drop(first);
    // Published while the browser is between connections, on the other instance.
    for i in 0..5 {
        b.publish("resume", "m", &format!("late {i}")).await;
    }
    let mut again = SseClient::connect(
        b.addr,
        "/stream?channel=resume",
        &[("last-event-id", &last_seen)],
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..7 {
        got.push(message_of(&again.next_message().await.expect("missing")));
    }
    assert_eq!(
        got,
        ["early 3", "early 4", "late 0", "late 1", "late 2", "late 3", "late 4"]
    );
    // And an id from before this room existed is a gap, on any instance.
    let mut stale =
        SseClient::connect(a.addr, "/stream?channel=fresh", &[("last-event-id", "5")]).await;
    assert_eq!(stale.next_message().await.unwrap().event, "gap");
}

#[tokio::test]
async fn presence_and_room_capacity_count_every_instance() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = instance(&redis, RedisFormat::Native).await;
    let b = instance(&redis, RedisFormat::Native).await;
    let mut alice = SseClient::connect(a.addr, "/stream?channel=call&peer=alice", &[]).await;
    assert_eq!(alice.status, 200);
    let (_, token) = alice.welcome().await;
    assert_eq!(presence(&mut alice).await, (1, 1));
    let mut bob = SseClient::connect(b.addr, "/stream?channel=call&peer=bob", &[]).await;
    assert_eq!(bob.status, 200);
    presence_reaches(&mut alice, (2, 2)).await;
    presence_reaches(&mut bob, (2, 2)).await;

    // A third peer is refused on either instance.
    for server in [&a, &b] {
        let carol = SseClient::connect(server.addr, "/stream?channel=call&peer=carol", &[]).await;
        assert_eq!(carol.status, 409);
    }
    // Alice reloading through the other instance (with her token) takes her own place over;
    // her old stream ends.
    let mut alice_again = SseClient::connect(
        b.addr,
        &format!("/stream?channel=call&peer=alice&token={token}"),
        &[],
    )
    .await;
    assert_eq!(alice_again.status, 200);
    let ended = tokio::time::timeout(WAIT, async { while alice.next().await.is_some() {} }).await;
    assert!(
        ended.is_ok(),
        "the old stream on the other instance did not end"
    );
    presence_reaches(&mut alice_again, (2, 2)).await;

    // Bob leaves: everyone is told, and once his place's grace is over it is free for Carol.
    drop(bob);
    presence_reaches(&mut alice_again, (1, 1)).await;
    tokio::time::sleep(GRACE + Duration::from_millis(200)).await;
    let carol = SseClient::connect(a.addr, "/stream?channel=call&peer=carol", &[]).await;
    assert_eq!(carol.status, 200);
}

#[tokio::test]
async fn redis_lost_and_back_refuses_then_resumes_without_a_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let a = instance(&redis, RedisFormat::Native).await;
    let b = instance(&redis, RedisFormat::Native).await;
    let mut on_a = a.subscribe("outage").await;
    b.publish("outage", "m", "before").await;
    assert_eq!(message_of(&on_a.next_message().await.unwrap()), "before");

    redis.stop();
    wait_ready(&b, false).await;
    let refused = b.post("outage", "m", "during").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("unavailable"));
    assert_eq!(refused.header("retry-after"), Some("1"));
    let health = b.get("/healthz").await;
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["status"], "degraded");
    let new_stream = SseClient::connect(b.addr, "/stream?channel=outage", &[]).await;
    assert_eq!(new_stream.status, 503);

    redis.spawn();
    wait_ready(&a, true).await;
    wait_ready(&b, true).await;
    // The stream opened before the outage is still open and gets what is published now.
    b.publish("outage", "m", "after").await;
    let event = on_a
        .next_message()
        .await
        .expect("no delivery after Redis came back");
    assert_eq!(message_of(&event), "after");
    assert_eq!(a.health().await["status"], "ok");
}

#[tokio::test]
async fn flask_sse_messages_go_both_ways() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let relay = instance(&redis, RedisFormat::FlaskSse).await;
    let mut conn = redis.client().await;

    // A Flask app calling sse.publish({"message": "hi"}, type="request", channel="room")
    // puts exactly this on the Redis channel "room".
    let mut browser = relay.subscribe("room").await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg("room")
        .arg(r#"{"data": {"message": "hi \u00e9"}, "type": "request"}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    let event = browser
        .next_message()
        .await
        .expect("flask message not delivered");
    assert_eq!(event.event, "request");
    assert_eq!(message_of(&event), "hi é");
    assert_eq!(event.id, "", "a Flask message carries no id of ours");

    // And a POST to sigrelay reaches a flask-sse subscriber of "room" as flask-sse reads it:
    // json.loads(payload) → Message(**fields), so only data/type/id/retry may appear.
    let mut flask = redis::Client::open(redis.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    flask.subscribe("room").await.unwrap();
    let id = relay.publish("room", "response", "{\"sdp\": 1}").await;
    let mut messages = flask.on_message();
    let message = tokio::time::timeout(WAIT, messages.next())
        .await
        .unwrap()
        .unwrap();
    let fields: serde_json::Value = serde_json::from_slice(message.get_payload_bytes()).unwrap();
    let keys: Vec<&String> = fields.as_object().unwrap().keys().collect();
    assert!(keys
        .iter()
        .all(|k| ["data", "type", "id", "retry"].contains(&k.as_str())));
    assert_eq!(fields["data"]["message"], "{\"sdp\": 1}");
    assert_eq!(fields["type"], "response");
    assert_eq!(fields["id"], id);
    // sigrelay's own streams get it too, with its id, in the seed's wire format.
    let event = browser.next_message().await.unwrap();
    assert_eq!(event.id, id.to_string());
    assert_eq!(event.data, r#"{"message": "{\"sdp\": 1}"}"#);
    // Names that would reach sigrelay's own pub/sub channels are refused.
    assert_eq!(relay.post("sigrelay:ctl", "m", "x").await.status, 400);
}

#[test]
fn the_binary_exits_with_a_clear_error_when_redis_is_unreachable() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let free: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sigrelay"))
        .args(["--bind", &free.to_string(), "--no-qr"])
        .args(["--redis", &format!("redis://127.0.0.1:{port}/")])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach Redis at 127.0.0.1:"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_instance_stops_counting_once_its_heartbeat_expires() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let settings = RedisSettings {
        heartbeat: Duration::from_millis(200),
        ..redis.settings(RedisFormat::Native)
    };
    let a = TestServer::with(move |c| {
        c.redis = Some(settings);
        c.hub.peer_grace = GRACE;
        c.hub.room_capacity = 2;
    })
    .await;
    // The other instance is a real process, killed with SIGKILL: no goodbye to Redis.
    let url = redis.url();
    let mut doomed = common::Binary::start(&[
        "--room-capacity",
        "2",
        "--bind",
        "127.0.0.1:0",
        "--no-qr",
        "--redis",
        &url,
        "--redis-heartbeat",
        "0.2",
    ]);
    let mut alice = SseClient::connect(a.addr, "/stream?channel=ghost&peer=alice", &[]).await;
    let bob = SseClient::connect(doomed.addr, "/stream?channel=ghost&peer=bob", &[]).await;
    assert_eq!(bob.status, 200);
    presence_reaches(&mut alice, (2, 2)).await;
    let carol = SseClient::connect(a.addr, "/stream?channel=ghost&peer=carol", &[]).await;
    assert_eq!(
        carol.status, 409,
        "the room is full while bob's instance lives"
    );

    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let died = Instant::now();
    presence_reaches(&mut alice, (1, 1)).await;
    let gone = died.elapsed();
    eprintln!("a dead instance's streams stopped counting after {gone:?} (heartbeat 0.2 s)");
    // Liveness expires after 3 heartbeats; the next heartbeat of a live instance notices.
    assert!(gone < Duration::from_secs(3), "{gone:?}");
    // Bob's place is kept for his page (it may come back through a live instance) for the
    // grace, then it is Carol's.
    let carol = SseClient::connect(a.addr, "/stream?channel=ghost&peer=carol", &[]).await;
    assert_eq!(carol.status, 409, "bob's place is kept during the grace");
    tokio::time::sleep(GRACE + Duration::from_millis(200)).await;
    let carol = SseClient::connect(a.addr, "/stream?channel=ghost&peer=carol", &[]).await;
    assert_eq!(carol.status, 200);
}

/// Issue 12's attack over a cluster: the place's claim lives in Redis, so every instance
/// refuses a stranger who only knows the id, lets the holder back with its token, keeps the
/// place for it during the grace, and refuses a token from an earlier claim.
#[tokio::test(flavor = "multi_thread")]
async fn peer_ids_cannot_be_taken_through_another_instance() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = instance(&redis, RedisFormat::Native).await;
    let b = instance(&redis, RedisFormat::Native).await;
    let mut alice = SseClient::connect(a.addr, "/stream?channel=id&peer=alice", &[]).await;
    let (_, token) = alice.welcome().await;
    let mut bob = SseClient::connect(b.addr, "/stream?channel=id&peer=bob", &[]).await;
    let (_, bob_token) = bob.welcome().await;

    // A stranger on either instance, with no token or a wrong one: 409, alice stays up.
    let forged = "A".repeat(64);
    for server in [&a, &b] {
        for target in [
            "/stream?channel=id&peer=alice".to_owned(),
            format!("/stream?channel=id&peer=alice&token={forged}"),
            format!("/stream?channel=id&peer=alice&token={bob_token}"),
        ] {
            let refused = request(server.addr, "GET", &target, &[], b"").await;
            assert_eq!(refused.status, 409, "{target}: {}", refused.text());
            assert!(!refused.text().contains("welcome\n"), "{}", refused.text());
        }
    }
    assert_eq!(post_as(&b, "id", "alice", &token, "mine").await.status, 200);
    let event = alice.next_message().await.expect("alice's stream is up");
    assert_eq!(message_of(&event), "mine");
    assert!(event.data.contains("\"from\": \"alice\""), "{}", event.data);

    // Alice reloads through the other instance with her token: her place, her token, and the
    // old stream ends.
    let mut again = SseClient::connect(
        b.addr,
        &format!("/stream?channel=id&peer=alice&token={token}"),
        &[],
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.welcome().await.1, token);
    let ended = tokio::time::timeout(WAIT, async { while alice.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the old stream on the other instance ended");

    // Her connection drops: the place is kept for her on every instance.
    drop(again);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for server in [&a, &b] {
        let refused = request(
            server.addr,
            "GET",
            "/stream?channel=id&peer=alice",
            &[],
            b"",
        )
        .await;
        assert_eq!(refused.status, 409, "{}", refused.text());
    }
    assert_eq!(post_as(&a, "id", "alice", &token, "blip").await.status, 200);
    let mut back = SseClient::connect(
        a.addr,
        &format!("/stream?channel=id&peer=alice&token={token}"),
        &[],
    )
    .await;
    assert_eq!(back.status, 200);
    assert_eq!(back.welcome().await.1, token);
    drop(back);

    // After the grace a newcomer gets the id with a new token; alice's is from an earlier
    // claim and is refused everywhere, for posting and for taking the id back.
    tokio::time::sleep(GRACE + Duration::from_millis(300)).await;
    let mut newcomer = SseClient::connect(a.addr, "/stream?channel=id&peer=alice", &[]).await;
    assert_eq!(newcomer.status, 200);
    let (_, new_token) = newcomer.welcome().await;
    assert_ne!(new_token, token);
    for server in [&a, &b] {
        assert_eq!(
            post_as(server, "id", "alice", &token, "stale").await.status,
            403
        );
        let target = format!("/stream?channel=id&peer=alice&token={token}");
        assert_eq!(
            request(server.addr, "GET", &target, &[], b"").await.status,
            409
        );
    }
    assert_eq!(
        post_as(&b, "id", "alice", &new_token, "new").await.status,
        200
    );
    let mut got = Vec::new();
    while let Some(event) = bob.next_message_within(Duration::from_millis(500)).await {
        got.push(message_of(&event));
    }
    assert_eq!(
        got,
        ["mine", "blip", "new"],
        "nothing refused was broadcast"
    );
    assert_eq!(
        message_of(&newcomer.next_message().await.unwrap()),
        "new",
        "the newcomer's stream was left alone"
    );
}

#[tokio::test]
async fn instances_agree_on_the_peer_secret_unless_one_is_given() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = instance(&redis, RedisFormat::Native).await;
    let b = instance(&redis, RedisFormat::Native).await;
    let settings = redis.settings(RedisFormat::Native);
    let own = TestServer::with(move |c| {
        c.redis = Some(settings);
        c.peer_secret = Some("given".into());
    })
    .await;
    let mut page = a.subscribe("secret").await;
    let (peer, token) = page.welcome().await;
    let headers = [
        ("x-sigrelay-peer", peer.as_str()),
        ("x-sigrelay-token", &token),
    ];
    let post = |server: &TestServer| {
        common::request(
            server.addr,
            "POST",
            "/channel/send/secret/m",
            &headers,
            b"hi",
        )
    };
    assert_eq!(post(&b).await.status, 200, "B accepts A's token");
    assert_eq!(post(&a).await.status, 200);
    assert_eq!(
        post(&own).await.status,
        403,
        "--peer-secret overrides the shared one"
    );
    let mut conn = redis.client().await;
    let stored: String = redis::cmd("GET")
        .arg("sigrelay:peer-secret")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_ne!(
        stored, "given",
        "an instance with its own secret leaves Redis's alone"
    );
}
