//! Migrating from the Flask app (issue 13) in real Chromium: the seed's own Flask + flask-sse
//! app (`tests/seed/app.py` under gunicorn's gevent worker, serving the seed's pages) and
//! `sigrelay --redis URL --redis-format flask-sse` on one redis-server. One person is on the
//! Flask app's pages, the other on sigrelay's, in both roles; the call connects, both pictures
//! move, and it is still connected 5 s later. Runs only inside a loopback-only network
//! namespace, like tests/browser.rs:
//!
//! ```text
//! cargo test --no-run
//! unshare --net -- sh -c 'ip link set lo up && cargo test --test browser_migration'
//! ```
//!
//! Without redis-server or the seed's virtualenv (`tests/seed/venv.sh`) it says "skipped",
//! unless SIGRELAY_REQUIRE_REDIS=1 (CI), which makes that a failure.

// Shared with tests/browser.rs, which uses more of them.
#[allow(dead_code)]
#[path = "browser/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "common/redis_server.rs"]
mod redis_server;
#[allow(dead_code)]
#[path = "common/seed.rs"]
mod seed;
#[allow(dead_code)]
#[path = "browser/webdriver.rs"]
mod webdriver;

use std::time::{Duration, Instant};

use harness::{unique, Browsers, Person, Server, WAIT};
use redis_server::RedisServer;
use seed::FlaskApp;

/// How long the call must stay up once connected.
const STAYS_UP: Duration = Duration::from_secs(5);

struct Stacks {
    _redis: RedisServer,
    flask: FlaskApp,
    sigrelay: Server,
}

fn stacks() -> Option<Stacks> {
    let redis = RedisServer::start()?;
    let flask = FlaskApp::start(&redis.url())?;
    let sigrelay = Server::start(&["--redis", &redis.url(), "--redis-format", "flask-sse"]);
    Some(Stacks {
        _redis: redis,
        flask,
        sigrelay,
    })
}

/// Opens one of the seed's pages (`wait` or `join`) as the Flask app serves it.
fn open_flask_page(person: &Person, flask: &FlaskApp, page: &str, room: &str) {
    person.goto(&format!("{}/{page}/{room}", flask.url));
    person.wait_for("the seed page's camera", WAIT, |s| {
        s["local"]["width"].as_u64().unwrap_or(0) > 0
    });
}

/// The seed page's own RTCPeerConnection state.
fn seed_connection_state(person: &Person) -> String {
    let state = person.exec("return peerConnection.connectionState;", vec![]);
    state.as_str().unwrap_or_default().to_string()
}

/// Both pictures move; STAYS_UP later the call is still the same connected call, and the
/// sigrelay page still counts the Flask page among the room's subscribers.
fn assert_call_up(ours: &Person, theirs: &Person) {
    ours.wait_remote_video_moving();
    theirs.wait_remote_video_moving();
    std::thread::sleep(STAYS_UP);
    let snapshot = ours.snapshot();
    assert_eq!(snapshot["state"], "connected", "{snapshot:#}");
    assert_eq!(
        snapshot["connections"], 1,
        "the call restarted: {snapshot:#}"
    );
    // `data-peers` counts the other people: the Flask page is one.
    assert_eq!(
        snapshot["peers"], 1,
        "presence lost the Flask side: {snapshot:#}"
    );
    assert_eq!(seed_connection_state(theirs), "connected");
    ours.wait_remote_video_moving();
    theirs.wait_remote_video_moving();
    let errors = ours.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}

#[test]
fn a_flask_page_and_a_sigrelay_page_call_each_other_in_both_roles() {
    let Some(browsers) = Browsers::get("migration") else {
        return;
    };
    let Some(stacks) = stacks() else {
        return;
    };
    let flask_person = browsers.person("flask");
    let ours = browsers.person("sigrelay");

    // A creates the room on the Flask app's page (wait.html); B joins on sigrelay's. B offers
    // only once presence counts A, whose stream is on the Flask side.
    let room = format!("flask-creates-{:x}", unique());
    open_flask_page(&flask_person, &stacks.flask, "wait", &room);
    let started = Instant::now();
    ours.goto(&format!("{}/r/{room}", stacks.sigrelay.url));
    ours.wait_state("connected");
    eprintln!(
        "Flask creates, sigrelay joins: connected in {:?}",
        started.elapsed()
    );
    assert_call_up(&ours, &flask_person);

    // A creates the room on sigrelay's page; B joins on the Flask app's (join.html).
    let room = format!("sigrelay-creates-{:x}", unique());
    ours.goto(&format!("{}/r/{room}?as=creator", stacks.sigrelay.url));
    ours.wait_for("the creator page, subscribed and alone", WAIT, |s| {
        s["peers"] == 0 && s["state"] == "waiting"
    });
    let started = Instant::now();
    open_flask_page(&flask_person, &stacks.flask, "join", &room);
    ours.wait_state("connected");
    eprintln!(
        "sigrelay creates, Flask joins: connected in {:?}",
        started.elapsed()
    );
    assert_call_up(&ours, &flask_person);
}
