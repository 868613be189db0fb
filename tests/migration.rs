//! Migrating a running Flask + flask-sse deployment (issue 13): the seed's own app
//! (`tests/seed/app.py`, the real flask-sse from PyPI under gunicorn's gevent worker) and the
//! `sigrelay` binary started with README's "Migrating from the Flask app" command (read from
//! README.md; only the addresses replaced), on one redis-server. Bodies cross both ways exactly once, byte for byte;
//! sigrelay's presence counts the Flask side's subscribers (never as peers), and capacity is
//! unchanged.
//!
//! Without redis-server or the seed's virtualenv (`tests/seed/venv.sh`) these tests say
//! "skipped", unless SIGRELAY_REQUIRE_REDIS=1 (CI), which makes that a failure.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::seed::FlaskApp;
use common::{message_of, request, Binary, SseClient, WAIT};
use tokio::task::JoinHandle;

/// Everything on one Redis: redis-server, the Flask app, and sigrelay in flask-sse format.
struct Stacks {
    redis: RedisServer,
    flask: FlaskApp,
    sigrelay: Binary,
}

/// README's "Migrating from the Flask app" sigrelay command, as arguments, with `--bind`'s value
/// replaced by `127.0.0.1:0` and `--redis`'s by `redis_url` (so the README cannot drift from what
/// these tests run).
fn readme_command(redis_url: &str) -> Vec<String> {
    const README: &str = include_str!("../README.md");
    let section = &README[README
        .find("\n### Migrating from the Flask app")
        .expect("README has the migration section")..];
    let block = &section[section.find("```sh\n").expect("a sh block")..];
    let line = block
        .lines()
        .skip(1)
        .take_while(|line| !line.starts_with("```"))
        .find_map(|line| line.trim().strip_prefix("./sigrelay "))
        .expect("the block starts sigrelay");
    let mut args: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    for (flag, value) in [("--bind", "127.0.0.1:0"), ("--redis", redis_url)] {
        let at = args.iter().position(|a| a == flag).expect(flag) + 1;
        args[at] = value.to_string();
    }
    assert!(
        args.windows(2)
            .any(|w| w == ["--redis-format", "flask-sse"]),
        "README's command must use flask-sse's format: {args:?}"
    );
    args.push("--no-qr".into());
    // Rooms of two, as the seed's (the default is six), so capacity can be checked below.
    args.extend(["--room-capacity".into(), "2".into()]);
    args
}

impl Stacks {
    fn start() -> Option<Stacks> {
        let redis = RedisServer::start()?;
        let flask = FlaskApp::start(&redis.url())?;
        let args = readme_command(&redis.url());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let sigrelay = Binary::start(&args);
        Some(Stacks {
            redis,
            flask,
            sigrelay,
        })
    }

    /// flask-sse's subscribers of `channel` in Redis (sigrelay's pattern is never among them).
    async fn numsub(&self, channel: &str) -> u64 {
        // Patient: three of these stacks may be starting at once on two cores.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(WAIT))
            .set_response_timeout(Some(WAIT));
        let mut conn = redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut conn)
            .await
            .unwrap();
        n
    }

    /// Opens a stream on the Flask app. flask-sse sends its response head only with the first
    /// message, so the stream is read in a task; this returns once its SUBSCRIBE is in Redis.
    async fn flask_stream(&self, channel: &str) -> JoinHandle<SseClient> {
        let before = self.numsub(channel).await;
        let target = format!("/stream?channel={channel}");
        let addr = self.flask.addr();
        let stream = tokio::spawn(async move { SseClient::connect(addr, &target, &[]).await });
        let deadline = Instant::now() + WAIT;
        while self.numsub(channel).await <= before {
            assert!(
                Instant::now() < deadline,
                "the Flask stream never subscribed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stream
    }

    async fn sigrelay_stream(&self, target: &str) -> SseClient {
        let client = SseClient::connect(self.sigrelay.addr, target, &[]).await;
        assert_eq!(client.status, 200);
        client
    }
}

/// POSTs `body` as the seed's pages do (an XHR with a string body).
async fn post(addr: std::net::SocketAddr, channel: &str, event_type: &str, body: &str) -> u16 {
    let response = request(
        addr,
        "POST",
        &format!("/channel/send/{channel}/{event_type}"),
        &[("content-type", "text/plain;charset=UTF-8")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.status
}

/// Messages (type, body) up to and including the one whose body is `last`.
async fn read_until(client: &mut SseClient, last: &str, who: &str) -> Vec<(String, String)> {
    let mut got = Vec::new();
    loop {
        let event = client
            .next_message()
            .await
            .unwrap_or_else(|| panic!("{who}: stream ended or went quiet after {got:?}"));
        let body = message_of(&event);
        let done = body == last;
        got.push((event.event, body));
        if done || got.len() > 100 {
            return got;
        }
    }
}

/// The issue's hostile set: quotes, backslashes, CR/LF with fake SSE field lines, emoji and the
/// JavaScript line separators, NUL, and 60 KB.
fn hostile_bodies() -> Vec<String> {
    let mut big = String::new();
    while big.len() < 60 * 1024 {
        big.push_str("{\"sdp\": \"v=0\\r\\n\"} \\ \" \r\n data: x 😀 \u{2028} ");
    }
    vec![
        r#"{"sdp": "say \"hi\"", 'single'}"#.to_string(),
        r#"back\slash \\ \n \u0041 \""#.to_string(),
        "line\r\ndata: fake\r\nevent: gap\n\nid: 999\rretry: 1\n: comment\n".to_string(),
        "😀 é \u{2028} \u{2029} \u{85} 𝄞".to_string(),
        "nul:\u{0}:end".to_string(),
        big,
    ]
}

#[tokio::test]
async fn bodies_cross_both_stacks_exactly_once_byte_for_byte() {
    let Some(stacks) = Stacks::start() else {
        return;
    };
    let room = "migrate-bodies";
    let mut ours = stacks
        .sigrelay_stream(&format!("/stream?channel={room}"))
        .await;
    let flask = stacks.flask_stream(room).await;

    // Each body POSTed to sigrelay, then to the Flask app: both go through Redis's PUBLISH, so
    // every subscriber sees them in exactly this order.
    let mut expected = Vec::new();
    for (i, body) in hostile_bodies().into_iter().enumerate() {
        let (to_us, to_flask) = (format!("ours{i}"), format!("flask{i}"));
        post(stacks.sigrelay.addr, room, &to_us, &body).await;
        post(stacks.flask.addr(), room, &to_flask, &body).await;
        expected.push((to_us, body.clone()));
        expected.push((to_flask, body));
    }
    post(stacks.flask.addr(), room, "end", "the end").await;
    expected.push(("end".into(), "the end".into()));

    let mut flask = tokio::time::timeout(WAIT, flask)
        .await
        .expect("the Flask stream never answered")
        .unwrap();
    assert_eq!(flask.status, 200);
    for (who, client) in [("sigrelay", &mut ours), ("flask-sse", &mut flask)] {
        let got = read_until(client, "the end", who).await;
        assert_eq!(got.len(), expected.len(), "{who}: wrong number of messages");
        for (got, want) in got.iter().zip(&expected) {
            assert_eq!(got.0, want.0, "{who}: event type");
            assert!(
                got.1 == want.1,
                "{who}: body of {} differs ({} bytes, want {})",
                want.0,
                got.1.len(),
                want.1.len()
            );
        }
        assert!(
            client
                .next_message_within(Duration::from_millis(500))
                .await
                .is_none(),
            "{who}: a message arrived twice"
        );
    }
}

/// Reads presence events until one says (subscribers, peers); returns how long that took.
async fn presence_reaches(client: &mut SseClient, want: (u64, u64)) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(15);
    while Instant::now() < deadline {
        let Some(event) = client.next_within(Duration::from_secs(2)).await else {
            continue;
        };
        if event.event == "presence" {
            let v: serde_json::Value = serde_json::from_str(&event.data).unwrap();
            let got = (
                v["subscribers"].as_u64().unwrap(),
                v["peers"].as_u64().unwrap(),
            );
            if got == want {
                return started.elapsed();
            }
        }
    }
    panic!("presence never reached {want:?}");
}

#[tokio::test]
async fn presence_counts_the_flask_side_as_anonymous_subscribers() {
    let Some(stacks) = Stacks::start() else {
        return;
    };
    let room = "migrate-presence";
    // Alone on sigrelay: sigrelay's own Redis subscription (a pattern) is not counted.
    let mut alice = stacks
        .sigrelay_stream(&format!("/stream?channel={room}&peer=alice"))
        .await;
    presence_reaches(&mut alice, (1, 1)).await;

    // A Flask page opens its stream: sigrelay's presence says two subscribers, one peer.
    let flask = stacks.flask_stream(room).await;
    let took = presence_reaches(&mut alice, (2, 1)).await;
    eprintln!("a Flask subscriber reached sigrelay's presence in {took:?}");
    // A sigrelay page that joins now counts it at once.
    let mut late = stacks
        .sigrelay_stream(&format!("/stream?channel={room}"))
        .await;
    presence_reaches(&mut late, (3, 1)).await;
    drop(late);
    presence_reaches(&mut alice, (2, 1)).await;

    // A publish counts both stacks' subscribers.
    let answer = request(
        stacks.sigrelay.addr,
        "POST",
        &format!("/channel/send/{room}/hello"),
        &[],
        b"hi",
    )
    .await;
    assert_eq!(answer.json()["subscribers"], 2, "{}", answer.text());

    // The Flask page goes away. flask-sse notices only when it next writes to the stream (it
    // sends no keep-alives), so messages on the room end its subscription; presence follows.
    let flask = tokio::time::timeout(WAIT, flask).await.unwrap().unwrap();
    drop(flask);
    let started = Instant::now();
    let mut publishes = 0;
    while stacks.numsub(room).await > 0 {
        assert!(
            publishes < 20,
            "flask-sse kept a closed stream subscribed after {publishes} messages"
        );
        post(stacks.sigrelay.addr, room, "ping", "ping").await;
        publishes += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    presence_reaches(&mut alice, (1, 1)).await;
    eprintln!(
        "a closed Flask stream left presence after {publishes} messages, {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn flask_subscribers_never_take_a_place_in_the_room() {
    let Some(stacks) = Stacks::start() else {
        return;
    };
    let room = "migrate-capacity";
    let _first = stacks.flask_stream(room).await;
    let _second = stacks.flask_stream(room).await;
    // Capacity (2 peers) is sigrelay's and counts only its peer= streams.
    let mut alice = stacks
        .sigrelay_stream(&format!("/stream?channel={room}&peer=alice"))
        .await;
    let _bob = stacks
        .sigrelay_stream(&format!("/stream?channel={room}&peer=bob"))
        .await;
    presence_reaches(&mut alice, (4, 2)).await;
    let carol = SseClient::connect(
        stacks.sigrelay.addr,
        &format!("/stream?channel={room}&peer=carol"),
        &[],
    )
    .await;
    assert_eq!(carol.status, 409, "a third peer must find the room full");
}
