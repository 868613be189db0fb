//! What group calls need from the relay (issue 16): presence says who is present (`present`,
//! the peer ids holding a place), and an addressed publish (`?to=PEER` or `X-Sigrelay-To`)
//! reaches only that peer id's streams, live and on a resume, on one instance and over Redis.

mod common;

use std::time::Duration;

use common::redis_server::RedisServer;
use common::{message_of, raw, request, status_of, SseClient, TestServer};
use sigrelay::hub::RedisFormat;

/// Long enough for an event that is coming to arrive on loopback.
const QUIET: Duration = Duration::from_millis(700);

/// The next `presence` event's `present` list.
async fn present(client: &mut SseClient) -> Vec<String> {
    loop {
        let event = client.next().await.expect("a presence event");
        if event.event == "presence" {
            let v: serde_json::Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(
                v["peers"].as_u64(),
                v["present"].as_array().map(|a| a.len() as u64),
                "peers and present disagree: {v}"
            );
            return v["present"]
                .as_array()
                .expect("present is a list")
                .iter()
                .map(|id| id.as_str().unwrap().to_owned())
                .collect();
        }
    }
}

/// Reads presence events until `present` is `want`.
async fn present_reaches(client: &mut SseClient, want: &[&str]) {
    for _ in 0..50 {
        if present(client).await == want {
            return;
        }
    }
    panic!("presence never listed {want:?}");
}

/// A stream holding `peer`'s place in `room` at `addr`, its welcome read: (stream, token).
async fn join(addr: std::net::SocketAddr, room: &str, peer: &str) -> (SseClient, String) {
    let mut client =
        SseClient::connect(addr, &format!("/stream?channel={room}&peer={peer}"), &[]).await;
    assert_eq!(client.status, 200);
    let (id, token) = client.welcome().await;
    assert_eq!(id, peer);
    (client, token)
}

/// Every published message (not gap, presence, welcome) until the stream is quiet.
async fn messages(client: &mut SseClient) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(event) = client.next_message_within(QUIET).await {
        if event.event != "gap" {
            seen.push(message_of(&event));
        }
    }
    seen
}

/// POST as `peer` (with its token) to `room`, addressed by `to` (`?to=` or the header).
async fn post(
    addr: std::net::SocketAddr,
    room: &str,
    (peer, token): (&str, &str),
    to: Option<(&str, bool)>,
    body: &str,
) -> common::Response {
    let mut target = format!("/channel/send/{room}/signal");
    let mut headers = vec![("x-sigrelay-peer", peer), ("x-sigrelay-token", token)];
    match to {
        Some((to, true)) => headers.push(("x-sigrelay-to", to)),
        Some((to, false)) => target.push_str(&format!("?to={to}")),
        None => {}
    }
    request(addr, "POST", &target, &headers, body.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_lists_the_peer_ids_present() {
    let server = TestServer::start().await;
    let (mut alice, _) = join(server.addr, "g", "alice").await;
    assert_eq!(present(&mut alice).await, ["alice"]);
    let (mut bob, _) = join(server.addr, "g", "bob").await;
    assert_eq!(present(&mut alice).await, ["alice", "bob"]);
    assert_eq!(present(&mut bob).await, ["alice", "bob"]);
    // An anonymous stream (a seed page) counts as a subscriber, not as a person.
    let anonymous = server.subscribe("g").await;
    present_reaches(&mut alice, &["alice", "bob"]).await;
    drop(anonymous);
    drop(bob);
    present_reaches(&mut alice, &["alice"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn addressed_events_reach_only_their_peer_live_and_on_resume() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let (mut alice, alice_token) = join(addr, "g", "alice").await;
    let (mut bob, _) = join(addr, "g", "bob").await;
    let (mut carol, _) = join(addr, "g", "carol").await;
    let mut anonymous = server.subscribe("g").await;
    let alice_id = ("alice", alice_token.as_str());

    // By query and by header, through the fast path (plain Content-Length) ...
    for (n, by_header) in [(1, false), (2, true)] {
        let body = format!("for bob {n}");
        let sent = post(addr, "g", alice_id, Some(("bob", by_header)), &body).await;
        assert_eq!(sent.status, 200, "{}", sent.text());
        let got = bob.next_message().await.expect("bob gets his event");
        assert_eq!(message_of(&got), body);
        assert!(got.data.contains(r#""from": "alice""#), "{}", got.data);
    }
    // ... and through hyper (a chunked body is handed over to it).
    let chunked = format!(
        "POST /channel/send/g/signal?to=bob HTTP/1.1\r\nHost: {addr}\r\nX-Sigrelay-Peer: alice\r\n\
         X-Sigrelay-Token: {alice_token}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         9\r\nfor bob 3\r\n0\r\n\r\n"
    );
    let answer = raw(addr, chunked.as_bytes()).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(message_of(&bob.next_message().await.unwrap()), "for bob 3");

    // Then one event for everyone: it is the first thing the others see.
    let everyone = post(addr, "g", alice_id, None, "for all").await;
    assert_eq!(everyone.status, 200);
    for (name, client) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("carol", &mut carol),
        ("anonymous", &mut anonymous),
    ] {
        let got = client.next_message().await.expect("the broadcast");
        assert_eq!(
            message_of(&got),
            "for all",
            "{name} saw another event first"
        );
    }
    assert!(carol.next_message_within(QUIET).await.is_none());

    // A newcomer resuming from before all of it (an anonymous stream, and another peer id)
    // is replayed the broadcast only.
    let mut newcomers = [
        SseClient::connect(addr, "/stream?channel=g", &[("last-event-id", "1")]).await,
        SseClient::connect(
            addr,
            "/stream?channel=g&peer=dave",
            &[("last-event-id", "1")],
        )
        .await,
    ];
    for newcomer in &mut newcomers {
        let seen = messages(newcomer).await;
        assert_eq!(seen, ["for all"], "a replay showed another peer's events");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_addressee_gets_its_events_again_on_resume() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let (_alice, alice_token) = join(addr, "g", "alice").await;
    let (mut bob, bob_token) = join(addr, "g", "bob").await;
    let (mut carol, carol_token) = join(addr, "g", "carol").await;
    let marker = post(addr, "g", ("alice", &alice_token), None, "marker").await;
    let after = marker.json()["id"].as_u64().unwrap().to_string();
    assert_eq!(message_of(&bob.next_message().await.unwrap()), "marker");
    assert_eq!(message_of(&carol.next_message().await.unwrap()), "marker");
    // Both go away; meanwhile alice writes to bob, then to everyone.
    drop(bob);
    drop(carol);
    let a = ("alice", alice_token.as_str());
    assert_eq!(
        post(addr, "g", a, Some(("bob", false)), "secret")
            .await
            .status,
        200
    );
    assert_eq!(post(addr, "g", a, None, "public").await.status, 200);
    // Each comes back with its token, resuming after the marker.
    let back = |peer: &str, token: &str| {
        let target = format!("/stream?channel=g&peer={peer}&token={token}");
        let after = after.clone();
        async move { SseClient::connect(addr, &target, &[("last-event-id", after.as_str())]).await }
    };
    let mut bob = back("bob", &bob_token).await;
    let mut carol = back("carol", &carol_token).await;
    assert_eq!(messages(&mut bob).await, ["secret", "public"]);
    assert_eq!(messages(&mut carol).await, ["public"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_addressee_is_refused() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let (_alice, token) = join(addr, "g", "alice").await;
    let a = ("alice", token.as_str());
    let bad = post(addr, "g", a, Some(("no/such", false)), "x").await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.json()["error"].as_str().unwrap().contains("peer id"));
    let both = request(
        addr,
        "POST",
        "/channel/send/g/signal?to=bob",
        &[("x-sigrelay-to", "carol")],
        b"x",
    )
    .await;
    assert_eq!(both.status, 400, "{}", both.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn over_redis_presence_lists_and_addressed_events_hold_across_instances() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    for format in [RedisFormat::Native, RedisFormat::FlaskSse] {
        let settings = redis.settings(format);
        let one = TestServer::with({
            let settings = settings.clone();
            move |c| c.redis = Some(settings)
        })
        .await;
        let two = TestServer::with(move |c| c.redis = Some(settings)).await;
        let room = format!("g{format:?}");
        let (mut alice, alice_token) = join(one.addr, &room, "alice").await;
        let (mut bob, bob_token) = join(two.addr, &room, "bob").await;
        let (mut carol, _) = join(two.addr, &room, "carol").await;
        present_reaches(&mut alice, &["alice", "bob", "carol"]).await;
        let a = ("alice", alice_token.as_str());
        let sent = post(one.addr, &room, a, Some(("bob", true)), "for bob").await;
        assert_eq!(sent.status, 200, "{}", sent.text());
        let marker = post(one.addr, &room, a, None, "for all").await;
        assert_eq!(marker.status, 200);
        assert_eq!(message_of(&bob.next_message().await.unwrap()), "for bob");
        assert_eq!(message_of(&bob.next_message().await.unwrap()), "for all");
        assert_eq!(message_of(&carol.next_message().await.unwrap()), "for all");
        assert_eq!(message_of(&alice.next_message().await.unwrap()), "for all");
        // A resume on the other instance, from Redis's history, keeps the address.
        let first = sent.json()["id"].as_u64().unwrap() - 1;
        drop(bob);
        let target = format!("/stream?channel={room}&peer=bob&token={bob_token}");
        let mut bob = SseClient::connect(
            one.addr,
            &target,
            &[("last-event-id", first.to_string().as_str())],
        )
        .await;
        assert_eq!(
            messages(&mut bob).await,
            ["for bob", "for all"],
            "{format:?}"
        );
        let target = format!("/stream?channel={room}&peer=dave");
        let mut dave = SseClient::connect(
            two.addr,
            &target,
            &[("last-event-id", first.to_string().as_str())],
        )
        .await;
        assert_eq!(
            messages(&mut dave).await,
            ["for all"],
            "{format:?}: dave saw bob's event"
        );
        present_reaches(&mut alice, &["alice", "bob", "carol", "dave"]).await;
    }
}
