//! Server-issued peer ids: the `welcome` event, `from` stamping, and `--strict-peers`.

mod common;

use std::time::Duration;

use common::*;

/// A POST to `room` with a peer id and token in the headers.
async fn post_as(server: &TestServer, room: &str, peer: &str, token: &str, body: &str) -> Response {
    request(
        server.addr,
        "POST",
        &format!("/channel/send/{room}/offer"),
        &[("x-sigrelay-peer", peer), ("x-sigrelay-token", token)],
        body.as_bytes(),
    )
    .await
}

fn data_of(event: &eventsource_stream::Event) -> serde_json::Value {
    serde_json::from_str(&event.data).unwrap()
}

#[tokio::test]
async fn welcome_then_stamped_from_and_anonymous_still_works() {
    let server = TestServer::start().await;
    let mut alice = SseClient::connect(server.addr, "/stream?channel=room&peer=alice", &[]).await;
    let (peer, token) = alice.welcome().await;
    assert_eq!(peer, "alice");
    // A stream without peer= gets a fresh random id (128 bits, base64url).
    let mut anon = server.subscribe("room").await;
    let (random, _) = anon.welcome().await;
    assert_eq!(random.len(), 22, "{random}");

    let r = post_as(&server, "room", &peer, &token, "signed").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let event = alice.next_message().await.unwrap();
    // `message` first, so the seed's parsing is unaffected.
    assert!(event.data.starts_with("{\"message\": "), "{}", event.data);
    assert_eq!(data_of(&event)["from"], "alice");
    assert_eq!(message_of(&event), "signed");

    // The seed's anonymous POST: delivered, with no `from`.
    server.publish("room", "offer", "anonymous").await;
    let event = alice.next_message().await.unwrap();
    assert_eq!(message_of(&event), "anonymous");
    assert!(data_of(&event).get("from").is_none(), "{}", event.data);
}

#[tokio::test]
async fn strict_peers_refuse_spoofing_and_nothing_is_broadcast() {
    let server = TestServer::with(|c| c.strict_peers = true).await;
    let mut alice = SseClient::connect(server.addr, "/stream?channel=room&peer=alice", &[]).await;
    let (peer, token) = alice.welcome().await;

    let anonymous = server.post("room", "offer", "who am I").await;
    assert_eq!(anonymous.status, 403);
    assert_eq!(
        anonymous.json()["error"],
        "a peer token for this channel is required"
    );
    // Posing as alice without her token.
    let forged = post_as(
        &server,
        "room",
        "alice",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "x",
    )
    .await;
    assert_eq!(forged.status, 403, "{}", forged.text());
    // Alice's token with another peer id.
    let wrong_peer = post_as(&server, "room", "mallory", &token, "x").await;
    assert_eq!(wrong_peer.status, 403);
    // One header without the other.
    let half = request(
        server.addr,
        "POST",
        "/channel/send/room/offer",
        &[("x-sigrelay-token", token.as_str())],
        b"x",
    )
    .await;
    assert_eq!(half.status, 400);

    assert_eq!(
        post_as(&server, "room", &peer, &token, "real").await.status,
        200
    );
    // The first message alice sees is the real one: none of the refused ones went out.
    let event = alice.next_message().await.unwrap();
    assert_eq!(message_of(&event), "real");
    assert_eq!(data_of(&event)["from"], "alice");
}

#[tokio::test]
async fn a_token_for_another_room_is_refused_even_when_not_strict() {
    let server = TestServer::start().await;
    let mut here = SseClient::connect(server.addr, "/stream?channel=room-a&peer=p1", &[]).await;
    let (peer, token) = here.welcome().await;
    let mut there = server.subscribe("room-b").await;
    there.welcome().await;
    let r = post_as(&server, "room-b", &peer, &token, "x").await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["error"],
        "the peer token is not valid for this channel"
    );
    assert!(
        there
            .next_message_within(Duration::from_millis(300))
            .await
            .is_none(),
        "a refused publish must not be broadcast"
    );
}

#[tokio::test]
async fn instances_sharing_a_secret_accept_each_others_tokens() {
    let secret = "shared-by-two-instances";
    let one = TestServer::with(|c| {
        c.peer_secret = Some(secret.into());
        c.strict_peers = true;
    })
    .await;
    let two = TestServer::with(|c| {
        c.peer_secret = Some(secret.into());
        c.strict_peers = true;
    })
    .await;
    let other = TestServer::with(|c| c.strict_peers = true).await;
    let mut sub = SseClient::connect(one.addr, "/stream?channel=room&peer=p1", &[]).await;
    let (peer, token) = sub.welcome().await;
    assert_eq!(post_as(&two, "room", &peer, &token, "x").await.status, 200);
    assert_eq!(
        post_as(&other, "room", &peer, &token, "x").await.status,
        403
    );
}
