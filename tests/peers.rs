//! Server-issued peer ids: the `welcome` event, `from` stamping, `--strict-peers`, and peer
//! ids that cannot be taken by knowing them (a takeover must present the holder's token; the
//! place is kept for its holder `--peer-grace` after its stream ends).

mod common;

use std::time::Duration;

use common::*;

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
    let (random, anon_token) = anon.welcome().await;
    assert_eq!(random.len(), 27, "{random}");
    assert!(random.starts_with("anon-"), "{random}");

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

    // The anonymous stream's token stamps its own relay-given id; nobody can ask for such
    // an id, so it has no other holder to fear.
    let r = post_as(&server, "room", &random, &anon_token, "from anon").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let event = alice.next_message().await.unwrap();
    assert_eq!(data_of(&event)["from"], random.as_str());
    let claim = request(
        server.addr,
        "GET",
        &format!("/stream?channel=room&peer={random}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(claim.status, 400, "{}", claim.text());
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
async fn another_instance_without_the_room_cannot_vouch_for_a_token() {
    // Same secret, no shared Redis: the token's signature checks out there, but that instance
    // does not hold the room, so it cannot know the claim is current (with --redis it does:
    // tests/redis.rs). An instance with another secret refuses it outright.
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
    assert_eq!(post_as(&one, "room", &peer, &token, "x").await.status, 200);
    let r = post_as(&two, "room", &peer, &token, "x").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        post_as(&other, "room", &peer, &token, "x").await.status,
        403
    );
}

/// `GET /stream` for `target` served by hyper (behind another request on the connection):
/// the raw answer to it.
async fn stream_via_hyper(server: &TestServer, target: &str) -> String {
    let text = raw(
        server.addr,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET {target} HTTP/1.1\r\nHost: x\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let second = text.rfind("HTTP/1.1 ").expect("two answers");
    text[second..].to_owned()
}

/// Streams asking for `peer` in `room` with `token` (none: `None`) through both ways of
/// serving a stream; each must be refused 409 with a one-line JSON reason and no welcome.
async fn assert_takeover_refused(server: &TestServer, room: &str, peer: &str, token: Option<&str>) {
    let mut target = format!("/stream?channel={room}&peer={peer}");
    if let Some(token) = token {
        target.push_str(&format!("&token={token}"));
    }
    let direct = request(server.addr, "GET", &target, &[], b"").await;
    assert_eq!(direct.status, 409, "{token:?}: {}", direct.text());
    let reason = direct.json()["error"].as_str().unwrap().to_owned();
    assert!(reason.contains("peer id is in use"), "{reason}");
    assert_eq!(direct.text().lines().count(), 1, "{}", direct.text());
    let hyper = stream_via_hyper(server, &target).await;
    assert_eq!(status_of(&hyper), 409, "{token:?}: {hyper}");
    assert!(hyper.contains(&reason), "{hyper}");
    for answer in [direct.text(), hyper] {
        assert!(!answer.contains("event: welcome"), "{answer}");
        assert!(!answer.contains("\"token\":"), "{answer}");
    }
}

/// The attack of issue 12: a stranger who read Alice's id (a `from` stamp) asks for a stream
/// under it. Before: her stream was closed and the stranger's welcome carried her token. Now:
/// without her token the stranger is refused, her stream stays up, and her posts stay hers;
/// the same with and without --strict-peers.
#[tokio::test]
async fn a_stranger_knowing_a_peer_id_cannot_take_it_over() {
    for strict in [false, true] {
        let server = TestServer::with(|c| c.strict_peers = strict).await;
        let mut alice =
            SseClient::connect(server.addr, "/stream?channel=room&peer=alice-1", &[]).await;
        let (_, token) = alice.welcome().await;
        let mut elsewhere =
            SseClient::connect(server.addr, "/stream?channel=other&peer=alice-1", &[]).await;
        let (_, other_room_token) = elsewhere.welcome().await;
        let mut bob = SseClient::connect(server.addr, "/stream?channel=room&peer=bob", &[]).await;
        let (_, bob_token) = bob.welcome().await;
        let forged = "A".repeat(64);
        for token in [
            None,
            Some(forged.as_str()),
            Some(other_room_token.as_str()),
            Some(bob_token.as_str()),
        ] {
            assert_takeover_refused(&server, "room", "alice-1", token).await;
        }
        // Alice's stream is up and still hers: her post goes out stamped, and she gets it.
        let r = post_as(&server, "room", "alice-1", &token, "still me").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let event = alice.next_message().await.expect("alice's stream is up");
        assert_eq!(message_of(&event), "still me");
        assert_eq!(data_of(&event)["from"], "alice-1");
        // The stranger's anonymous post (allowed without --strict-peers) is never stamped.
        let anonymous = server.post("room", "offer", "who am I").await;
        if strict {
            assert_eq!(anonymous.status, 403);
        } else {
            let event = alice.next_message().await.unwrap();
            assert!(data_of(&event).get("from").is_none(), "{}", event.data);
        }
        let refusals = server.get("/metrics").await.text();
        assert!(
            refusals.contains("sigrelay_refusals_total{reason=\"peer_taken\"} 8"),
            "{refusals}"
        );
    }
}

#[tokio::test]
async fn the_holder_reconnecting_with_its_token_takes_over_and_keeps_its_token() {
    let server = TestServer::start().await;
    let mut first = SseClient::connect(server.addr, "/stream?channel=room&peer=alice", &[]).await;
    let (_, token) = first.welcome().await;
    // A reload: the same id and the token from the last welcome, through either path.
    let mut second = SseClient::connect(
        server.addr,
        &format!("/stream?channel=room&peer=alice&token={token}"),
        &[],
    )
    .await;
    assert_eq!(second.status, 200);
    assert_eq!(second.welcome().await, ("alice".to_owned(), token.clone()));
    let ended = tokio::time::timeout(WAIT, async { while first.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the replaced stream ended");
    let via_hyper = stream_via_hyper(
        &server,
        &format!("/stream?channel=room&peer=alice&token={token}"),
    )
    .await;
    assert_eq!(status_of(&via_hyper), 200, "{via_hyper}");
    assert!(via_hyper.contains(&token), "{via_hyper}");
    // `raw` has closed that one again; the place is kept for alice, and her token still
    // stamps her posts.
    let r = post_as(&server, "room", "alice", &token, "after reloads").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A token without peer= is a bad request, not a silent anonymous stream.
    let bad = request(
        server.addr,
        "GET",
        &format!("/stream?channel=room&token={token}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
}

#[tokio::test]
async fn a_place_is_kept_for_its_holder_during_the_grace_then_freed_for_a_new_claim() {
    let grace = Duration::from_millis(700);
    let server = TestServer::with(|c| {
        c.hub.peer_grace = grace;
        c.strict_peers = true;
    })
    .await;
    let mut watcher = SseClient::connect(server.addr, "/stream?channel=room&peer=bob", &[]).await;
    let (_, bob_token) = watcher.welcome().await;
    let alice = SseClient::connect(server.addr, "/stream?channel=room&peer=alice", &[]).await;
    let mut alice = alice;
    let (_, token) = alice.welcome().await;
    // Alice's connection drops (a blip): nobody else gets her id meanwhile...
    drop(alice);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_takeover_refused(&server, "room", "alice", None).await;
    // ...and her token still stamps her posts, and brings her back with the same token.
    assert_eq!(
        post_as(&server, "room", "alice", &token, "x").await.status,
        200
    );
    let mut back = SseClient::connect(
        server.addr,
        &format!("/stream?channel=room&peer=alice&token={token}"),
        &[],
    )
    .await;
    assert_eq!(back.status, 200);
    assert_eq!(back.welcome().await.1, token);
    drop(back);
    // Past the grace the id is free: a newcomer gets it with a new token, never hers.
    tokio::time::sleep(grace + Duration::from_millis(300)).await;
    let mut stranger =
        SseClient::connect(server.addr, "/stream?channel=room&peer=alice", &[]).await;
    assert_eq!(stranger.status, 200);
    let (_, new_token) = stranger.welcome().await;
    assert_ne!(new_token, token, "a new claim gets a new token");
    // Alice's token is from the earlier claim: it neither stamps nor takes the id back.
    let stale = post_as(&server, "room", "alice", &token, "stale").await;
    assert_eq!(stale.status, 403, "{}", stale.text());
    assert!(
        stale.json()["error"]
            .as_str()
            .unwrap()
            .contains("not current"),
        "{}",
        stale.text()
    );
    assert_takeover_refused(&server, "room", "alice", Some(&token)).await;
    // Nothing refused was broadcast: bob sees the one accepted post, then the next one.
    let first = watcher.next_message().await.unwrap();
    assert_eq!(message_of(&first), "x");
    assert_eq!(
        post_as(&server, "room", "bob", &bob_token, "y")
            .await
            .status,
        200
    );
    assert_eq!(message_of(&watcher.next_message().await.unwrap()), "y");
    // The newcomer's stream was left alone through all of it.
    assert_eq!(
        post_as(&server, "room", "alice", &new_token, "z")
            .await
            .status,
        200
    );
    let mut got = Vec::new();
    while let Some(event) = stranger
        .next_message_within(Duration::from_millis(500))
        .await
    {
        got.push(message_of(&event));
    }
    assert_eq!(got, ["y", "z"]);
}
