//! The call pages in real browsers (issues 3 and 15): two or three people, each a headless
//! Chromium or Firefox with its own profile and a fake camera, calling each other through the
//! real `sigrelay` binary; Chromium and Firefox in calls with each other in both roles; a
//! Firefox with WebRTC turned off; two phone-sized Chromiums. WebRTC media has to stay on
//! 127.0.0.1, so these run only inside a loopback-only network namespace (they say "skipped"
//! otherwise):
//!
//! ```text
//! cargo test --no-run
//! unshare --net -- sh -c 'ip link set lo up && cargo test --test browser'
//! ```
//!
//! Chromium comes from `SIGRELAY_CHROMIUM` or `PATH`, chromedriver from
//! `SIGRELAY_CHROMEDRIVER` or `PATH`; Firefox from `SIGRELAY_FIREFOX` or `PATH`
//! (`firefox-esr`, `firefox`), geckodriver from `SIGRELAY_GECKODRIVER`, `PATH` or
//! `~/.cargo/bin`. With `SIGRELAY_REQUIRE_BROWSER=1` a missing one fails.

#[path = "browser/harness.rs"]
mod harness;
#[path = "browser/webdriver.rs"]
mod webdriver;
// README's "Scaling out": redis-server, its instance commands and its nginx block.
#[allow(dead_code)]
#[path = "common/nginx.rs"]
mod nginx;
#[allow(dead_code)]
#[path = "common/redis_server.rs"]
mod redis_server;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use harness::{unique, Browsers, Kind, Person, Server, WAIT};

/// The issue's promise: after a reload the call is back within this.
const RECONNECT_LIMIT: Duration = Duration::from_secs(10);

const SEED_WAIT: &str = include_str!("seed/wait.html");
const SEED_JOIN: &str = include_str!("seed/join.html");

/// The server's own rule (`sigrelay::names`), which the pages' `ROOM_PATTERN` is tested against.
fn is_room_name(name: &str) -> bool {
    sigrelay::names::ChannelName::parse(name).is_ok()
}

/// Opens the landing page and waits until its script has run (it fills the room field with a
/// suggestion and the join link from it): a name typed before that would be overwritten by the
/// page's own suggestion, and the person would land in a room of their own.
fn open_landing(person: &Person, base: &str) {
    person.goto(&format!("{base}/"));
    let deadline = Instant::now() + WAIT;
    let script_ran = || {
        let link = person.exec("return document.querySelector('#link').value;", vec![]);
        !link.as_str().unwrap_or("").is_empty()
    };
    while !script_ran() {
        assert!(
            Instant::now() < deadline,
            "{}: the landing page's script never ran",
            person.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The landing page as people use it: the creator takes the suggested name and presses
/// "Create room", the joiner types that name and presses "Join room". Returns the room once
/// both pages are connected and each shows the other's moving picture.
fn start_call(base: &str, creator: &Person, joiner: &Person) -> String {
    open_landing(creator, base);
    let room = creator.exec("return document.querySelector('#room').value;", vec![]);
    let room = room.as_str().expect("#room holds text").to_string();
    assert!(
        is_room_name(&room),
        "suggested name {room:?} is not a valid room name"
    );
    assert!(
        room.len() >= 12 && room.bytes().any(|b| b.is_ascii_digit()) && room.contains('-'),
        "suggested name {room:?} is not words and digits"
    );
    creator.click("#create");
    let creator_url = format!("{base}/r/{room}?as=creator");
    creator.wait_for("the creator's page, subscribed and alone", WAIT, |s| {
        s["url"] == creator_url.as_str() && s["peers"] == 0 && s["state"] == "waiting"
    });

    open_landing(joiner, base);
    joiner.exec(
        "const input = document.querySelector('#room'); input.value = arguments[0];
         input.dispatchEvent(new Event('input')); return true;",
        vec![json!(room)],
    );
    joiner.click("#join");
    let joiner_url = format!("{base}/r/{room}");
    joiner.wait_for("the joiner's page", WAIT, |s| {
        s["url"] == joiner_url.as_str()
    });

    for person in [creator, joiner] {
        person.wait_state("connected");
    }
    for person in [creator, joiner] {
        person.wait_remote_video_moving();
    }
    // No STUN or TURN here: the media went straight between the two pages, and they say so.
    for person in [creator, joiner] {
        wait_path(person, "direct");
    }
    room
}

/// Waits until the page shows the call's path (`direct` or `relayed`), as data and in words.
fn wait_path(person: &Person, path: &str) {
    let words = if path == "relayed" {
        "relayed through the server"
    } else {
        "direct connection"
    };
    person.wait_for(&format!("path {path:?} ({words:?})"), WAIT, |s| {
        s["path"] == path
            && s["pathWords"]
                .as_str()
                .is_some_and(|w| w.to_lowercase() == words)
    });
}

fn connections(person: &Person) -> u64 {
    person.snapshot()["connections"].as_u64().unwrap_or(0)
}

fn assert_no_console_errors(person: &Person) {
    let errors = person.console_errors();
    assert!(
        errors.is_empty(),
        "{}: console errors: {errors:#?}",
        person.name
    );
}

fn notice(snapshot: &Value) -> String {
    snapshot["notice"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase()
}

/// Keeps a picture of what `person` sees as `target/tmp/browser-NAME.png`, for people
/// looking into a failure or a change of the pages.
fn keep_screenshot(person: &Person, name: &str) {
    person.screenshot(
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("browser-{name}.png")),
    );
}

/// The README's screenshot of a call. The test writes it only when it is missing or when asked
/// (`SIGRELAY_UPDATE_SCREENSHOT=1`), so that a test run leaves the work tree as it was.
fn save_readme_screenshot(person: &Person) {
    keep_screenshot(person, "call");
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshot.png");
    let update = std::env::var("SIGRELAY_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1");
    if update || !docs.exists() {
        person.screenshot(&docs);
    }
}

#[test]
fn create_and_join_then_both_see_moving_video() {
    create_and_join("create_and_join", Kind::Chromium);
}

#[test]
fn firefox_create_and_join_then_both_see_moving_video() {
    create_and_join("firefox_create_and_join", Kind::Firefox);
}

fn create_and_join(test: &str, kind: Kind) {
    let Some(browsers) = Browsers::get_with(test, &[kind]) else {
        return;
    };
    // Strict peers: the call only works if the pages present their welcome tokens on every post.
    let server = Server::start(&["--strict-peers"]);
    let creator = browsers.person_as(kind, "creator");
    let joiner = browsers.person_as(kind, "joiner");

    // An invalid name is refused on the landing page, with the rule in words.
    open_landing(&creator, &server.url);
    creator.exec(
        "document.querySelector('#room').value = 'not a room/name'; return true;",
        vec![],
    );
    creator.click("#create");
    let error = creator.exec(
        "const e = document.querySelector('#room-error'); return e.hidden ? '' : e.textContent;",
        vec![],
    );
    let landing = format!("{}/", server.url);
    assert_eq!(
        creator.url(),
        landing,
        "an invalid name must not leave the landing page"
    );
    assert!(
        error
            .as_str()
            .unwrap_or_default()
            .contains("1 to 128 characters"),
        "no clear message for an invalid name: {error}"
    );

    start_call(&server.url, &creator, &joiner);
    if kind == Kind::Chromium {
        save_readme_screenshot(&joiner);
    }

    // Mute and camera-off act on the local tracks.
    let enabled = "const s = document.querySelector('#local').srcObject;
                   return [s.getAudioTracks()[0].enabled, s.getVideoTracks()[0].enabled];";
    assert_eq!(joiner.exec(enabled, vec![]), json!([true, true]));
    joiner.click("#mute");
    joiner.click("#camera");
    assert_eq!(joiner.exec(enabled, vec![]), json!([false, false]));
    joiner.click("#mute");
    joiner.click("#camera");
    assert_eq!(joiner.exec(enabled, vec![]), json!([true, true]));

    for person in [&creator, &joiner] {
        assert_no_console_errors(person);
    }

    // The joiner hangs up: the creator is told, its remote video clears, and it waits again.
    joiner.click("#hangup");
    joiner.wait_state("disconnected");
    wait_peer_left(&creator);
    keep_screenshot(&creator, "peer-left");
    keep_screenshot(&joiner, "hung-up");
    for person in [&creator, &joiner] {
        assert_no_console_errors(person);
    }

    // "Rejoin" brings the call back; then the joiner's tab goes away without a word (no
    // goodbye message): the creator still notices, from the room's presence count.
    joiner.click("#rejoin");
    for person in [&creator, &joiner] {
        person.wait_state("connected");
    }
    joiner.exec(SILENCE_GOODBYE, vec![]);
    joiner.goto("about:blank");
    wait_peer_left(&creator);
    assert_no_console_errors(&creator);
}

/// Makes the page leave without its `bye` (a beacon, or a keepalive fetch once the page has its
/// peer token), as a crashed tab or a dropped network would.
const SILENCE_GOODBYE: &str =
    "Object.defineProperty(navigator, 'sendBeacon', { value: () => true });
     const fetch = window.fetch;
     window.fetch = (url, options) =>
       options && options.keepalive ? Promise.resolve(new Response('{}')) : fetch(url, options);
     return true;";

fn wait_peer_left(person: &Person) {
    let after = person.wait_for("\"peer left\", waiting again", WAIT, |s| {
        s["state"] == "waiting" && notice(s).contains("peer left")
    });
    // The other person's video is gone (or, on an older page, emptied).
    assert!(
        after["remote"].is_null() || after["remote"]["hasStream"] == false,
        "remote video not cleared: {after}"
    );
}

#[test]
fn either_side_reloads_and_the_call_comes_back() {
    reload("reload", [Kind::Chromium, Kind::Chromium]);
}

#[test]
fn firefox_either_side_reloads_and_the_call_comes_back() {
    reload("firefox_reload", [Kind::Firefox, Kind::Firefox]);
}

/// Chromium creates, Firefox joins: the call, moving video both ways, reloads on both sides.
#[test]
fn chromium_creates_firefox_joins_and_both_reload() {
    reload("chromium_firefox", [Kind::Chromium, Kind::Firefox]);
}

/// Firefox creates, Chromium joins: the call, moving video both ways, reloads on both sides.
#[test]
fn firefox_creates_chromium_joins_and_both_reload() {
    reload("firefox_chromium", [Kind::Firefox, Kind::Chromium]);
}

/// Create + join on the landing page with `kinds` (creator, joiner), then reloads on both sides.
fn reload(test: &str, kinds: [Kind; 2]) {
    let Some(browsers) = Browsers::get_with(test, &kinds) else {
        return;
    };
    let server = Server::start(&[]);
    let creator = browsers.person_as(kinds[0], "creator");
    let joiner = browsers.person_as(kinds[1], "joiner");
    start_call(&server.url, &creator, &joiner);
    reload_both_sides(&creator, &joiner);
}

/// Each side reloads in turn, with and without a goodbye; the call comes back every time.
fn reload_both_sides(creator: &Person, joiner: &Person) {
    // Each side reloads, first saying goodbye as a page does, then silently (as after a crash).
    let rounds = [
        (joiner, creator, true),
        (creator, joiner, true),
        (joiner, creator, false),
        (creator, joiner, false),
    ];
    for (reloading, other, goodbye) in rounds {
        if !goodbye {
            reloading.exec(SILENCE_GOODBYE, vec![]);
        }
        let before = connections(other);
        let started = Instant::now();
        reloading.reload();
        reloading.wait_state("connected");
        other.wait_for("a new connection after the reload", WAIT, |s| {
            s["state"] == "connected" && s["connections"].as_u64().unwrap_or(0) > before
        });
        let took = started.elapsed();
        assert!(
            took <= RECONNECT_LIMIT,
            "after {} reloaded (goodbye: {goodbye}), the call took {took:?} to come back",
            reloading.name
        );
        for person in [reloading, other] {
            person.wait_remote_video_moving();
        }
        eprintln!(
            "{} reloaded (goodbye: {goodbye}): connected again after {took:?}",
            reloading.name
        );
    }
    for person in [creator, joiner] {
        assert_no_console_errors(person);
    }
}

#[test]
fn a_third_person_is_told_the_room_is_full() {
    room_full("room_full", Kind::Chromium);
}

#[test]
fn firefox_a_third_person_is_told_the_room_is_full() {
    room_full("firefox_room_full", Kind::Firefox);
}

fn room_full(test: &str, kind: Kind) {
    let Some(browsers) = Browsers::get_with(test, &[kind]) else {
        return;
    };
    // A room of two (the default is six: see `a_group_of_four` for a full group).
    let server = Server::start(&["--room-capacity", "2"]);
    let creator = browsers.person_as(kind, "creator");
    let joiner = browsers.person_as(kind, "joiner");
    let room = start_call(&server.url, &creator, &joiner);
    let before = [connections(&creator), connections(&joiner)];

    let third = browsers.person_as(kind, "third");
    for link in [format!("/r/{room}"), format!("/r/{room}?as=creator")] {
        third.goto(&format!("{}{link}", server.url));
        third.wait_for("\"this room is full\"", WAIT, |s| {
            s["state"] == "failed" && notice(s).contains("this room is full")
        });
    }
    keep_screenshot(&third, "room-full");

    // The call in progress goes on undisturbed.
    std::thread::sleep(Duration::from_secs(2));
    for (person, before) in [(&creator, before[0]), (&joiner, before[1])] {
        let now = person.snapshot();
        assert_eq!(now["state"], "connected", "{}: {now:#}", person.name);
        assert_eq!(
            now["connections"], before,
            "{}: the call was restarted",
            person.name
        );
        person.wait_remote_video_moving();
        assert_no_console_errors(person);
    }
}

/// Opens a seed page (the Flask project's wait.html or join.html, which know nothing of
/// sigrelay) on the server's origin, the room filled in as its template did.
fn open_seed_page(person: &Person, server: &Server, html: &str, room: &str) {
    person.goto(&format!("{}/", server.url));
    person.write_page(&html.replace("{{name}}", room));
    person.wait_for("the seed page's camera", WAIT, |s| {
        s["local"]["width"].as_u64().unwrap_or(0) > 0
    });
}

#[test]
fn seed_pages_call_ours_in_both_roles() {
    seed_interop("seed_interop", Kind::Chromium);
}

#[test]
fn firefox_seed_pages_call_ours_in_both_roles() {
    seed_interop("firefox_seed_interop", Kind::Firefox);
}

fn seed_interop(test: &str, kind: Kind) {
    let Some(browsers) = Browsers::get_with(test, &[kind]) else {
        return;
    };
    let server = Server::start(&[]);
    let seed = browsers.person_as(kind, "seed");
    let ours = browsers.person_as(kind, "ours");

    // The seed's creator (wait.html) waits; our joiner page calls it.
    let room = format!("seed-creator-{:x}", unique());
    open_seed_page(&seed, &server, SEED_WAIT, &room);
    ours.goto(&format!("{}/r/{room}", server.url));
    ours.wait_state("connected");
    ours.wait_remote_video_moving();
    seed.wait_remote_video_moving();
    assert_no_console_errors(&ours);

    // Our creator page waits; the seed's joiner (join.html) calls it.
    let room = format!("seed-joiner-{:x}", unique());
    ours.goto(&format!("{}/r/{room}?as=creator", server.url));
    ours.wait_for("our creator page, subscribed and alone", WAIT, |s| {
        s["peers"] == 0 && s["state"] == "waiting"
    });
    open_seed_page(&seed, &server, SEED_JOIN, &room);
    ours.wait_state("connected");
    ours.wait_remote_video_moving();
    seed.wait_remote_video_moving();
    assert_no_console_errors(&ours);
}

#[test]
fn plain_http_on_a_lan_name_says_why_and_joins_receive_only() {
    let Some(browsers) = Browsers::get("insecure_context") else {
        return;
    };
    let server = Server::start(&[]);
    let creator = browsers.person("creator");
    // `classroom.test` resolves to 127.0.0.1 but is not "localhost" to Chromium: a page from it
    // over plain http is not a secure context, like a phone opening http://192.168.x.y:8000/.
    let joiner = browsers.person_with(
        "joiner",
        &[
            "--host-resolver-rules=MAP classroom.test 127.0.0.1",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
        ],
    );
    let room = format!("insecure-{:x}", unique());
    creator.goto(&format!("{}/r/{room}?as=creator", server.url));
    creator.wait_for("the creator's page, subscribed", WAIT, |s| s["peers"] == 0);

    let lan_url = server.url.replace("127.0.0.1", "classroom.test");
    joiner.goto(&format!("{lan_url}/r/{room}"));
    let shown = joiner.wait_for("the insecure-context notice", WAIT, |s| {
        s["media"] == "none" && notice(s).contains("https")
    });
    let text = notice(&shown);
    assert!(
        text.contains("--tls") && text.contains("receive-only") && text.contains("localhost"),
        "the notice does not say how to fix it: {text}"
    );
    joiner.wait_state("connected");
    creator.wait_state("connected");
    joiner.wait_remote_video_moving();
    keep_screenshot(&joiner, "insecure-context");
}

#[test]
fn no_camera_joins_with_audio_only_and_says_so() {
    no_camera("no_camera", Kind::Chromium);
}

#[test]
fn firefox_no_camera_joins_with_audio_only_and_says_so() {
    no_camera("firefox_no_camera", Kind::Firefox);
}

fn no_camera(test: &str, kind: Kind) {
    let Some(browsers) = Browsers::get_with(test, &[kind]) else {
        return;
    };
    let server = Server::start(&[]);
    let creator = browsers.person_as(kind, "creator");
    // The joiner's computer has a microphone but no camera.
    let joiner = match kind {
        Kind::Chromium => {
            let joiner = browsers.person("joiner");
            joiner.add_init_script(
                "const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
                 navigator.mediaDevices.getUserMedia = (constraints) => constraints && constraints.video
                   ? Promise.reject(new DOMException('Requested device not found', 'NotFoundError'))
                   : real(constraints);",
            );
            joiner
        }
        // Firefox looks for a real camera by this name instead of its fake one (the fake
        // microphone stays): there is none, so getUserMedia finds no camera, as on a desktop
        // without one.
        Kind::Firefox => {
            let mut prefs = serde_json::Map::new();
            prefs.insert(
                "media.video_loopback_dev".into(),
                json!("sigrelay-test: no such camera"),
            );
            browsers.firefox_with("joiner", prefs)
        }
    };
    let room = format!("no-camera-{:x}", unique());
    creator.goto(&format!("{}/r/{room}?as=creator", server.url));
    creator.wait_for("the creator's page, subscribed", WAIT, |s| s["peers"] == 0);
    joiner.goto(&format!("{}/r/{room}", server.url));
    let shown = joiner.wait_for("the audio-only notice", WAIT, |s| {
        s["media"] == "audio" && notice(s).contains("audio only")
    });
    assert!(notice(&shown).contains("no camera"), "{shown:#}");
    for person in [&creator, &joiner] {
        person.wait_state("connected");
    }
    joiner.wait_remote_video_moving();
    let audio = creator.exec(
        "const s = document.querySelector('#remotes video').srcObject;
         return s ? s.getAudioTracks().length : -1;",
        vec![],
    );
    assert_eq!(
        audio,
        json!(1),
        "the creator does not receive the joiner's microphone"
    );
    for person in [&creator, &joiner] {
        assert_no_console_errors(person);
    }
}

/// How long a forced-relay call without TURN gets to (wrongly) connect.
const NO_RELAY_WAIT: Duration = Duration::from_secs(15);

/// Opens a new room at `base`: the creator's page first, then the joiner's, both with the
/// query parameters `extra` (such as `relay=1`) added. Returns the room.
fn open_room(base: &str, creator: &Person, joiner: &Person, prefix: &str, extra: &str) -> String {
    let room = format!("{prefix}-{:x}", unique());
    let and = if extra.is_empty() { "" } else { "&" };
    creator.goto(&format!("{base}/r/{room}?as=creator{and}{extra}"));
    creator.wait_for("the creator's page, subscribed and alone", WAIT, |s| {
        s["peers"] == 0 && s["state"] == "waiting"
    });
    let query = if extra.is_empty() {
        String::new()
    } else {
        format!("?{extra}")
    };
    joiner.goto(&format!("{base}/r/{room}{query}"));
    room
}

#[test]
fn forced_relay_calls_through_the_built_in_turn_and_fails_without_it() {
    let Some(browsers) = Browsers::get("forced_relay") else {
        return;
    };
    let creator = browsers.person("creator");
    let joiner = browsers.person("joiner");

    // With TURN: both pages may use relay candidates only (`?relay=1`), so a connected call
    // with moving video is media that flowed through sigrelay's TURN relay.
    let server = Server::start(&[
        "--stun",
        "127.0.0.1:0",
        "--turn",
        "--turn-relay-ip",
        "127.0.0.1",
    ]);
    let banner = "STUN and TURN on udp 127.0.0.1:".to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log().contains(&banner) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        server.log().contains(&banner),
        "no {banner:?} in the banner:\n{}",
        server.log()
    );
    let room = open_room(&server.url, &creator, &joiner, "relay", "relay=1");
    for person in [&creator, &joiner] {
        person.wait_state("connected");
    }
    for person in [&creator, &joiner] {
        person.wait_remote_video_moving();
        wait_path(person, "relayed");
    }
    keep_screenshot(&joiner, "relayed");

    // The invite link's QR code: an image the server drew, of this room's joiner link.
    let qr = creator.exec(
        "const img = document.querySelector('#qr');
         return { src: img.getAttribute('src'), width: img.naturalWidth, hidden: img.hidden,
                  link: location.origin + '/r/' + arguments[0] };",
        vec![json!(room)],
    );
    let link = qr["link"].as_str().unwrap_or_default();
    let encoded: String = link
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    assert_eq!(qr["src"], format!("/qr.svg?text={encoded}"), "{qr:#}");
    assert!(
        qr["width"].as_u64().unwrap_or(0) > 0 && qr["hidden"] == false,
        "the QR code did not load: {qr:#}"
    );
    for person in [&creator, &joiner] {
        assert_no_console_errors(person);
    }
    drop(server);

    // Without TURN (STUN only): the same forced-relay call has no candidate to use and never
    // connects, so the call above could not have connected any other way.
    let server = Server::start(&["--stun", "127.0.0.1:0"]);
    open_room(&server.url, &creator, &joiner, "no-relay", "relay=1");
    let started = Instant::now();
    while started.elapsed() < NO_RELAY_WAIT {
        for person in [&creator, &joiner] {
            let now = person.snapshot();
            assert!(
                now["state"] != "connected" && now["connections"] == 0 && now["path"].is_null(),
                "{}: a forced-relay call without TURN connected: {now:#}",
                person.name
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for person in [&creator, &joiner] {
        let now = person.snapshot();
        assert!(
            notice(&now).contains("no turn relay"),
            "{}: the page does not say why it cannot connect: {now:#}",
            person.name
        );
        eprintln!(
            "{}: without TURN after {NO_RELAY_WAIT:?}: state {}, status {}",
            person.name, now["state"], now["status"]
        );
    }
    keep_screenshot(&joiner, "no-relay");
}

/// The base64 SHA-256 of a PEM certificate's SubjectPublicKeyInfo, as Chromium's
/// `--ignore-certificate-errors-spki-list` wants it (computed with the openssl command).
fn spki_sha256_base64(cert: &std::path::Path) -> String {
    let script = format!(
        "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform der \
         | openssl dgst -sha256 -binary | openssl base64 -A",
        cert.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run openssl (needed to trust the generated certificate)");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && hash.len() == 44,
        "openssl could not hash {}: {}",
        cert.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    hash
}

#[test]
fn https_on_a_lan_name_calls_with_the_generated_certificate() {
    let Some(browsers) = Browsers::get("lan_https") else {
        return;
    };
    let tls_dir = std::env::temp_dir().join(format!(
        "sigrelay-browser-tls-{}-{:x}",
        std::process::id(),
        unique()
    ));
    let server = Server::start(&["--tls", "--tls-dir", tls_dir.to_str().expect("utf-8 path")]);
    assert!(
        server.url.starts_with("https://"),
        "--tls printed {}",
        server.url
    );
    // The browsers trust exactly the certificate sigrelay made (a student's "Proceed"), on a
    // name that is not localhost, like https://192.168.x.y:8443/ on a LAN.
    let spki = spki_sha256_base64(&tls_dir.join("cert.pem"));
    let args = [
        "--host-resolver-rules=MAP classroom.test 127.0.0.1".to_string(),
        format!("--ignore-certificate-errors-spki-list={spki}"),
        "--disable-features=WebRtcHideLocalIpsWithMdns".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let creator = browsers.person_with("creator", &args);
    let joiner = browsers.person_with("joiner", &args);

    let base = server.url.replace("127.0.0.1", "classroom.test");
    open_room(&base, &creator, &joiner, "lan-https", "");
    for person in [&creator, &joiner] {
        person.wait_state("connected");
    }
    for person in [&creator, &joiner] {
        person.wait_remote_video_moving();
        let page = person.exec(
            "const nav = performance.getEntriesByType('navigation')[0];
             return { secure: window.isSecureContext, protocol: nav && nav.nextHopProtocol,
                      media: document.body.dataset.media, origin: location.origin };",
            vec![],
        );
        assert_eq!(
            page["secure"], true,
            "{}: not a secure context: {page:#}",
            person.name
        );
        assert_eq!(
            page["media"], "audio+video",
            "{}: no camera over https: {page:#}",
            person.name
        );
        assert_eq!(page["origin"], base.as_str(), "{}: {page:#}", person.name);
        assert_eq!(
            page["protocol"], "h2",
            "{}: the page was not served over HTTP/2: {page:#}",
            person.name
        );
        assert_no_console_errors(person);
    }
    keep_screenshot(&joiner, "lan-https");
    drop(server);
    let _ = std::fs::remove_dir_all(&tls_dir);
}

/// `GET /metrics` from an instance: the sum of its `sigrelay_refusals_total` samples.
fn refusals(base: &str) -> u64 {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).expect("the instance listens");
    conn.set_read_timeout(Some(WAIT)).unwrap();
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("the metrics");
    text.lines()
        .filter(|l| l.starts_with("sigrelay_refusals_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// README's "Scaling out" as written (its instance commands and nginx block), with two
/// browsers going through nginx on a non-default port, plain http or with TLS ended at nginx:
/// create + join, then reloads on both sides. Neither instance refuses anything.
fn call_through_nginx(test: &str, tls: bool) {
    let Some(browsers) = Browsers::get(test) else {
        return;
    };
    let Some(redis) = redis_server::RedisServer::start() else {
        return;
    };
    let instances: Vec<Server> = nginx::readme_instances(&redis.url())
        .into_iter()
        .map(|args| {
            // The harness binds 127.0.0.1:0 itself.
            let at = args.iter().position(|a| a == "--bind").expect("--bind");
            let args: Vec<&str> = args
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != at && *i != at + 1)
                .map(|(_, a)| a.as_str())
                .collect();
            Server::start(&args)
        })
        .collect();
    let tls_dir = std::env::temp_dir().join(format!(
        "sigrelay-browser-nginx-{}-{:x}",
        std::process::id(),
        unique()
    ));
    sigrelay::tls::load(&sigrelay::tls::CertSource::Generated {
        dir: tls_dir.clone(),
        names: Vec::new(),
    })
    .expect("a certificate for localhost");
    let upstreams: Vec<std::net::SocketAddr> = instances
        .iter()
        .map(|i| i.url.trim_start_matches("http://").parse().unwrap())
        .collect();
    let Some(proxy) = nginx::Nginx::start(
        &upstreams,
        &tls_dir.join("cert.pem"),
        &tls_dir.join("key.pem"),
    ) else {
        return;
    };
    let (base, args) = if tls {
        let spki = spki_sha256_base64(&tls_dir.join("cert.pem"));
        (
            format!("https://localhost:{}", proxy.https.port()),
            vec![format!("--ignore-certificate-errors-spki-list={spki}")],
        )
    } else {
        (
            format!("http://127.0.0.1:{}", proxy.http.port()),
            Vec::new(),
        )
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let creator = browsers.person_with("creator", &args);
    let joiner = browsers.person_with("joiner", &args);
    start_call(&base, &creator, &joiner);
    reload_both_sides(&creator, &joiner);
    for instance in &instances {
        assert_eq!(
            refusals(&instance.url),
            0,
            "an instance refused something behind nginx; its log:\n{}",
            instance.log()
        );
    }
    let _ = std::fs::remove_dir_all(&tls_dir);
}

#[test]
fn a_call_through_nginx_on_a_non_default_port() {
    call_through_nginx("nginx_plain", false);
}

#[test]
fn a_call_through_nginx_terminating_tls() {
    call_through_nginx("nginx_tls", true);
}

/// What Chromium shows at `url`: the page's URL, title, protocol and whether it is a secure
/// context; a certificate warning is an interstitial (`chrome-error://`) with no `#room`.
fn page_facts(person: &Person, url: &str) -> Value {
    person.goto(url);
    person.exec(
        "const nav = performance.getEntriesByType('navigation')[0];
         return { href: location.href, title: document.title, secure: window.isSecureContext,
                  protocol: nav && nav.nextHopProtocol,
                  landing: !!document.querySelector('#room') };",
        vec![],
    )
}

/// Waits until the trust page has checked whether this browser trusts the server's https.
fn trust_page_says(person: &Person, url: &str) -> Value {
    person.goto(url);
    let deadline = Instant::now() + WAIT;
    loop {
        let facts = person.exec(
            "return { trusted: document.body.dataset.trusted || null,
                      fingerprint: document.querySelector('#fingerprint').textContent,
                      status: document.querySelector('#trust-status').textContent };",
            vec![],
        );
        if !facts["trusted"].is_null() {
            return facts;
        }
        assert!(
            Instant::now() < deadline,
            "the trust page never decided: {facts:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 17: the local CA installed once (here: imported into the NSS store Chromium on Linux
/// reads, `$HOME/.pki/nssdb`, as a student's "trust" does on a phone) and the https page on a
/// LAN name opens with no warning and no certificate override, over HTTP/2; after the server
/// gains a name and re-issues its certificate (same CA), the new name opens with no warning
/// either. The new name before the re-issue does warn: the trust is the CA's, not a blanket
/// one.
#[test]
fn the_installed_local_ca_opens_https_without_a_warning_before_and_after_a_reissue() {
    let scratch = std::env::temp_dir().join(format!(
        "sigrelay-browser-ca-{}-{:x}",
        std::process::id(),
        unique()
    ));
    let tls_dir = scratch.join("tls");
    let home = scratch.join("home");
    let tls_dir_arg = tls_dir.to_str().expect("utf-8 path").to_string();
    let first = [
        "--tls",
        "--tls-dir",
        &tls_dir_arg,
        "--tls-name",
        "classroom.test",
    ];
    // The CA exists once the server has started; Chromium must find it in its store at start.
    let server = Server::start(&first);
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    let certutil = |args: &[&str]| {
        let out = std::process::Command::new("certutil")
            .args(args)
            .output()
            .expect("run certutil (Debian: libnss3-tools)");
        assert!(
            out.status.success(),
            "certutil {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    certutil(&["-N", "-d", &db, "--empty-password"]);
    let ca = tls_dir.join("ca.pem");
    certutil(&[
        "-A",
        "-d",
        &db,
        "-n",
        "sigrelay local CA",
        "-t",
        "C,,",
        "-i",
        ca.to_str().unwrap(),
    ]);

    let Some(browsers) = Browsers::get_with_home("local_ca", Some(&home)) else {
        return;
    };
    let student = browsers.person_with(
        "student",
        &["--host-resolver-rules=MAP classroom.test 127.0.0.1, MAP second.test 127.0.0.1"],
    );
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let lan = format!("https://classroom.test:{port}/");
    let facts = page_facts(&student, &lan);
    assert_eq!(
        facts["href"],
        lan.as_str(),
        "a warning instead of the page: {facts:#}"
    );
    assert_eq!(facts["landing"], true, "{facts:#}");
    assert_eq!(facts["secure"], true, "{facts:#}");
    assert_eq!(facts["protocol"], "h2", "not HTTP/2: {facts:#}");
    assert_no_console_errors(&student);
    // The trust page, opened over plain http as a phone does first, sees the trust.
    let trust = trust_page_says(&student, &format!("http://classroom.test:{port}/trust"));
    assert_eq!(trust["trusted"], "true", "{trust:#}");
    let fingerprint = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            ca.to_str().unwrap(),
        ])
        .output()
        .expect("openssl");
    let fingerprint = String::from_utf8_lossy(&fingerprint.stdout).to_string();
    assert!(
        fingerprint
            .trim()
            .ends_with(trust["fingerprint"].as_str().unwrap()),
        "the page's fingerprint {trust:#} is not the CA's ({fingerprint})"
    );
    // A name the certificate does not carry yet: Chromium warns (an error page).
    let facts = page_facts(&student, &format!("https://second.test:{port}/"));
    assert_ne!(
        facts["landing"], true,
        "no warning for an uncovered name: {facts:#}"
    );
    drop(server);

    // The machine gains a name: at its next start the certificate is re-issued by the same CA.
    let server = Server::start(&[&first[..], &["--tls-name", "second.test"]].concat());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log().contains("re-issued for new addresses") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        server.log().contains("re-issued for new addresses"),
        "{}",
        server.log()
    );
    let port = server.url.rsplit(':').next().unwrap().to_string();
    for name in ["second.test", "classroom.test"] {
        let url = format!("https://{name}:{port}/");
        let facts = page_facts(&student, &url);
        assert_eq!(
            facts["href"],
            url.as_str(),
            "a warning after the re-issue: {facts:#}"
        );
        assert_eq!(facts["landing"], true, "{facts:#}");
        assert_eq!(facts["protocol"], "h2", "{facts:#}");
    }
    keep_screenshot(&student, "local-ca");
    drop(server);
    drop(student);
    drop(browsers);
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Issue 17: a call forced through TURN over TCP (`?relay=1&tcp=1`: relay candidates only,
/// and the only TURN URL the page keeps is `turn:HOST:HTTP_PORT?transport=tcp`), so nothing
/// goes between the browsers and the server over UDP: it connects, relayed, with moving video,
/// and the server saw TURN clients over TCP on its HTTP port.
#[test]
fn a_call_forced_through_turn_over_tcp_connects() {
    let Some(browsers) = Browsers::get("turn_tcp") else {
        return;
    };
    let creator = browsers.person("creator");
    let joiner = browsers.person("joiner");
    let server = Server::start(&["--turn", "--turn-relay-ip", "127.0.0.1"]);
    open_room(&server.url, &creator, &joiner, "tcp", "relay=1&tcp=1");
    for person in [&creator, &joiner] {
        person.wait_state("connected");
    }
    for person in [&creator, &joiner] {
        person.wait_remote_video_moving();
        wait_path(person, "relayed");
    }
    let opened = server
        .log()
        .matches("TURN over TCP connection opened")
        .count();
    assert!(opened >= 2, "no TURN over TCP clients:\n{}", server.log());
    let relay = creator.exec(
        "const config = await (await fetch('/config?room=x')).json();
         return config.iceServers.map((s) => s.urls);",
        vec![],
    );
    let port = server.url.rsplit(':').next().unwrap();
    assert!(
        relay
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u.as_str() == Some(&format!("turn:127.0.0.1:{port}?transport=tcp"))),
        "{relay:#}"
    );
    for person in [&creator, &joiner] {
        assert_no_console_errors(person);
    }
    keep_screenshot(&joiner, "turn-tcp");
}

/// Firefox with WebRTC turned off (`media.peerconnection.enabled=false`, a real setting some
/// schools deploy; it removes RTCPeerConnection as Debian 12's WebKitGTK lacks it): that page
/// fails clearly and names what is missing, and the other person, in either role and under
/// `--strict-peers`, is told instead of waiting forever.
#[test]
fn a_browser_without_webrtc_says_so_and_the_other_person_is_told() {
    let Some(browsers) = Browsers::get_with("no_webrtc", &[Kind::Chromium, Kind::Firefox]) else {
        return;
    };
    let server = Server::start(&["--strict-peers"]);
    let capable = browsers.person("capable");
    let mut off = serde_json::Map::new();
    off.insert("media.peerconnection.enabled".into(), json!(false));
    let without = browsers.firefox_with("without-webrtc", off);

    for (capable_as, without_as) in [("?as=creator", ""), ("", "?as=creator")] {
        let room = format!("no-webrtc-{:x}", unique());
        capable.goto(&format!("{}/r/{room}{capable_as}", server.url));
        // `data-peers` counts the other people: none yet.
        capable.wait_for("the capable page, subscribed and alone", WAIT, |s| {
            s["peers"] == 0 && s["state"] == "waiting"
        });
        without.goto(&format!("{}/r/{room}{without_as}", server.url));
        let shown = without.wait_for("\"this browser cannot make video calls\"", WAIT, |s| {
            s["state"] == "failed" && notice(s).contains("cannot make video calls")
        });
        let text = notice(&shown);
        assert!(
            text.contains("rtcpeerconnection") && text.contains("firefox"),
            "the page does not say what is missing and what to use: {text}"
        );
        let told = capable.wait_for("\"the other person's browser cannot\"", WAIT, |s| {
            notice(s).contains("the other person's browser cannot do video calls")
        });
        assert_ne!(told["state"], "connected", "{told:#}");
        // The page that cannot call leaves the room, so someone who can is let in.
        capable.wait_for("the room back to one person", WAIT, |s| s["peers"] == 0);
        keep_screenshot(&without, "no-webrtc");
        keep_screenshot(&capable, "other-has-no-webrtc");
        assert_no_console_errors(&capable);
    }
}

/// What a phone-sized page must show and let the person reach: `(selector, a button?)`.
const PHONE_ESSENTIALS: &[(&str, bool)] = &[
    ("#room-name", false),
    ("#role", false),
    ("#status", false),
    ("#remotes", false),
    ("#mute", true),
    ("#camera", true),
    ("#hangup", true),
    ("#copy", true),
];

/// For each selector: is it inside the viewport, not clipped by its own box (its text fits),
/// the topmost element at its centre, and how big is it.
const LAYOUT: &str = r#"
const out = {
  overflowX: document.documentElement.scrollWidth - window.innerWidth,
  viewport: [window.innerWidth, window.innerHeight],
};
for (const css of arguments[0]) {
  const e = document.querySelector(css);
  if (!e) { out[css] = null; continue; }
  const r = e.getBoundingClientRect();
  const cx = r.left + r.width / 2, cy = r.top + r.height / 2;
  const top = document.elementFromPoint(cx, cy);
  out[css] = {
    width: r.width, height: r.height,
    inView: r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0 &&
            r.right <= window.innerWidth + 0.5 && r.bottom <= window.innerHeight + 0.5,
    // Cut short by its own box, or by an ancestor that hides what overflows it.
    clipped: e.scrollWidth > e.clientWidth + 1 || (() => {
      for (let a = e.parentElement; a; a = a.parentElement) {
        const style = getComputedStyle(a);
        if (style.overflowX === 'visible' && style.overflowY === 'visible') continue;
        const b = a.getBoundingClientRect();
        if (r.left < b.left - 0.5 || r.right > b.right + 0.5 ||
            r.top < b.top - 0.5 || r.bottom > b.bottom + 0.5) return true;
      }
      return false;
    })(),
    reachable: !!top && (top === e || e.contains(top)),
  };
}
return out;
"#;

fn assert_fits_a_phone(person: &Person) {
    let selectors: Vec<&str> = PHONE_ESSENTIALS.iter().map(|(css, _)| *css).collect();
    let layout = person.exec(LAYOUT, vec![json!(selectors)]);
    assert_eq!(
        layout["viewport"],
        json!([390, 844]),
        "not phone-sized: {layout:#}"
    );
    assert!(
        layout["overflowX"].as_f64().unwrap_or(1.0) <= 0.0,
        "{}: the page scrolls sideways: {layout:#}",
        person.name
    );
    for (css, button) in PHONE_ESSENTIALS {
        let e = &layout[*css];
        assert!(
            e["inView"] == true && e["clipped"] == false,
            "{}: {css} is not fully visible: {layout:#}",
            person.name
        );
        if *button {
            assert!(
                e["reachable"] == true
                    && e["height"].as_f64().unwrap_or(0.0) >= 44.0
                    && e["width"].as_f64().unwrap_or(0.0) >= 44.0,
                "{}: {css} is not a reachable 44 px target: {layout:#}",
                person.name
            );
        }
    }
}

/// Two phones (Chromium's mobile emulation, 390x844 at DPR 3 with touch) create and join on
/// the landing page; both see moving video, everything the person needs is on the screen
/// (the role label included) and every button is a reachable target of at least 44 px.
/// `docs/phone-creator.png` and `docs/phone-joiner.png` are written when missing or with
/// `SIGRELAY_UPDATE_SCREENSHOT=1`.
#[test]
fn a_call_between_two_phones_fits_the_screen() {
    let Some(browsers) = Browsers::get("phones") else {
        return;
    };
    let server = Server::start(&[]);
    let creator = browsers.phone("creator");
    let joiner = browsers.phone("joiner");
    start_call(&server.url, &creator, &joiner);
    let update = std::env::var("SIGRELAY_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1");
    for (person, name) in [(&creator, "phone-creator"), (&joiner, "phone-joiner")] {
        keep_screenshot(person, name);
        assert_fits_a_phone(person);
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("docs/{name}.png"));
        if update || !docs.exists() {
            person.screenshot(&docs);
        }
        assert_no_console_errors(person);
    }
}

/// Arguments for the people of a group call: a smaller window and a small fake camera (four
/// or more Chromiums share two cores), and a screen share that picks this tab by itself.
const GROUP_ARGS: &[&str] = &[
    "--window-size=800,600",
    "--use-fake-device-for-media-stream=fps=10",
    "--auto-accept-this-tab-capture",
    "--auto-select-tab-capture-source-by-title=sigrelay",
];

/// Waits until `person` is connected to `others` people, each shown in its own labelled video
/// whose picture moves, and `body[data-peers]` says so. On a timeout, prints what every page's
/// connections did (`window.sigrelayTrace`) before failing.
fn wait_group(person: &Person, others: usize, everyone: &[Person]) -> Value {
    let all_connected = |s: &Value| {
        s["state"] == "connected"
            && s["peers"] == others
            && s["remotes"].as_array().is_some_and(|r| {
                r.len() == others
                    && r.iter()
                        .all(|v| v["width"].as_u64().unwrap_or(0) > 0 && v["state"] == "connected")
            })
    };
    let deadline = Instant::now() + GROUP_WAIT;
    let mut connected = person.snapshot();
    while !all_connected(&connected) {
        if Instant::now() > deadline {
            for someone in everyone {
                let trace = someone.exec("return window.sigrelayTrace || [];", vec![]);
                let me = someone.exec("return document.body.dataset.me;", vec![]);
                eprintln!("{} ({me}): {trace:#}", someone.name);
            }
            panic!(
                "{}: not connected to {others} others within {GROUP_WAIT:?}: {connected:#}",
                person.name
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        connected = person.snapshot();
    }
    let times: Vec<f64> = connected["remotes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["time"].as_f64().unwrap_or(0.0))
        .collect();
    person.wait_for("every remote video moving", GROUP_WAIT, |s| {
        s["remotes"].as_array().is_some_and(|r| {
            r.len() == others
                && r.iter()
                    .zip(&times)
                    .all(|(v, t0)| v["time"].as_f64().unwrap_or(0.0) > t0 + 0.5)
        })
    })
}

/// Generous but bounded: four headless Chromiums with fake cameras on two cores.
const GROUP_WAIT: Duration = Duration::from_secs(120);

/// Makes `people` open `url` at the same instant (each page schedules its own navigation for
/// one shared moment), as two people clicking the link together.
fn open_together(people: &[&Person], url: &str) {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 1500;
    for person in people {
        person.exec(
            "const [url, at] = arguments;
             setTimeout(() => { location.href = url; }, Math.max(0, at - Date.now()));
             return true;",
            vec![json!(url), json!(at)],
        );
    }
}

#[test]
fn a_group_of_four_sees_chats_reloads_shares_and_refuses_a_fifth() {
    let Some(browsers) = Browsers::get("group") else {
        return;
    };
    let server = Server::start(&["--room-capacity", "4", "--strict-peers"]);
    let names = ["ana", "ben", "cleo", "dev"];
    let people: Vec<Person> = names
        .iter()
        .map(|name| browsers.person_with(name, GROUP_ARGS))
        .collect();
    let room = format!("group-{:x}", unique());
    let url = format!("{}/r/{room}", server.url);
    let started = Instant::now();

    // Two come one after the other, then two at the same instant.
    people[0].goto(&format!("{url}?as=creator"));
    people[0].wait_for("the first, alone", WAIT, |s| {
        s["peers"] == 0 && s["state"] == "waiting"
    });
    people[1].goto(&url);
    for person in &people[2..] {
        person.goto(&format!("{}/", server.url));
    }
    open_together(&[&people[2], &people[3]], &url);
    for person in &people {
        wait_group(person, 3, &people);
    }
    eprintln!("four people connected after {:?}", started.elapsed());
    let readme = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/group.png");
    let update = std::env::var("SIGRELAY_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1");
    if update || !readme.exists() {
        people[1].exec(
            "document.querySelector('#name').value = 'Ben'; return true;",
            vec![],
        );
        people[1].screenshot(&readme);
    }
    keep_screenshot(&people[1], "group");

    // Chat: what one writes reaches the other three, with who wrote it, as text.
    people[0].exec(
        "const input = document.querySelector('#chat-input');
         input.value = 'hello <b>all</b>';
         document.querySelector('#chat button').click(); return true;",
        vec![],
    );
    for person in &people[1..] {
        person.wait_for("ana's chat message", WAIT, |s| {
            s["chat"].as_array().is_some_and(|lines| {
                lines
                    .iter()
                    .any(|l| l.as_str().unwrap_or("").ends_with("hello <b>all</b>"))
            })
        });
    }
    people[0].wait_for("her own message, as hers", WAIT, |s| {
        s["chat"][0].as_str().unwrap_or("").starts_with("You")
    });

    // A middle person reloads (once with goodbye, once silently, as after a crash) and is
    // connected to all three again.
    for goodbye in [true, false] {
        if !goodbye {
            people[1].exec(SILENCE_GOODBYE, vec![]);
        }
        let reloaded = Instant::now();
        people[1].reload();
        wait_group(&people[1], 3, &people);
        let took = reloaded.elapsed();
        for person in [&people[0], &people[2], &people[3]] {
            wait_group(person, 3, &people);
        }
        eprintln!("ben reloaded (goodbye: {goodbye}): connected to all three after {took:?}");
        // Four Chromiums decoding three videos each on two cores: the figure is printed (and
        // in README); the bound only catches a reload that never settles (the two-person
        // reload test holds the 10 s promise).
        assert!(
            took <= GROUP_WAIT,
            "ben took {took:?} to be back with everyone"
        );
    }
    // A newcomer sees the chat still in the room's history.
    people[1].wait_for("the chat from before the reload", WAIT, |s| {
        s["chat"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l.as_str().unwrap_or("").contains("hello")))
    });

    // A fifth person is told the room is full; nobody else notices.
    let before: Vec<u64> = people.iter().map(connections).collect();
    // (A fifth Chromium does not fit on a 2-core machine beside four in a call: the page's
    // words for a full room are checked in `a_third_person_is_told_the_room_is_full`; here the
    // fifth is the stream the page would open.)
    let fifth = {
        use std::io::{Read, Write};
        let addr = server.url.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).expect("the server listens");
        conn.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            conn,
            "GET /stream?channel={room}&peer=eve-5 HTTP/1.0\r\nHost: {addr}\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).expect("an answer");
        answer
    };
    assert!(
        fifth.starts_with("HTTP/1.0 409") || fifth.starts_with("HTTP/1.1 409"),
        "a fifth person got in: {fifth}"
    );
    assert!(fifth.contains("room is full"), "{fifth}");
    std::thread::sleep(Duration::from_secs(2));
    for (person, before) in people.iter().zip(&before) {
        let now = person.snapshot();
        assert_eq!(now["state"], "connected", "{}: {now:#}", person.name);
        assert_eq!(&now["connections"], before, "{}: disturbed", person.name);
    }

    // Screen sharing: cleo's tile on the others changes picture (this tab, not the camera),
    // and back.
    let cleo = people[2].exec("return document.body.dataset.me;", vec![]);
    assert!(cleo.is_string(), "no body[data-me]: {cleo}");
    let size_of_cleo = |person: &Person| -> (u64, u64) {
        let snapshot = person.snapshot();
        snapshot["remotes"]
            .as_array()
            .and_then(|r| r.iter().find(|v| v["peer"] == cleo))
            .map(|v| {
                (
                    v["width"].as_u64().unwrap_or(0),
                    v["height"].as_u64().unwrap_or(0),
                )
            })
            .unwrap_or_default()
    };
    let camera = size_of_cleo(&people[0]);
    people[2].click("#share");
    people[2].wait_for("cleo sharing", WAIT, |s| s["sharing"] == true);
    for person in [&people[0], &people[1], &people[3]] {
        let deadline = Instant::now() + WAIT;
        while size_of_cleo(person) == camera {
            assert!(
                Instant::now() < deadline,
                "{}: cleo's share never showed",
                person.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    keep_screenshot(&people[0], "group-share");
    people[2].click("#share");
    let deadline = Instant::now() + WAIT;
    while size_of_cleo(&people[0]) != camera {
        assert!(Instant::now() < deadline, "cleo's camera never came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    for person in &people {
        assert_no_console_errors(person);
    }
}

/// The mesh benchmark (not a timed test; ignored by default): how long until everyone in a
/// room of 2, 3, 4 (and with `SIGRELAY_MESH_SIX=1`, 6) people is connected to everyone else,
/// counted from the moment the pages are opened (the browsers already started). Run:
/// `unshare --net -- sh -c 'ip link set lo up && cargo test --test browser mesh_connect_times -- --ignored --nocapture'`
#[test]
#[ignore]
fn mesh_connect_times() {
    let Some(browsers) = Browsers::get("mesh_bench") else {
        return;
    };
    let server = Server::start(&[]);
    let mut sizes = vec![2, 3, 4];
    if std::env::var("SIGRELAY_MESH_SIX").is_ok_and(|v| v == "1") {
        sizes.push(6);
    }
    const NAMES: [&str; 6] = ["p1", "p2", "p3", "p4", "p5", "p6"];
    for n in sizes {
        let people: Vec<Person> = NAMES[..n]
            .iter()
            .map(|name| browsers.person_with(name, GROUP_ARGS))
            .collect();
        let room = format!("bench-{n}-{:x}", unique());
        let url = format!("{}/r/{room}", server.url);
        for person in &people {
            person.goto(&format!("{}/", server.url));
        }
        let refs: Vec<&Person> = people.iter().collect();
        let started = Instant::now() + Duration::from_millis(1500);
        open_together(&refs, &url);
        for person in &people {
            person.wait_for("connected to everyone", GROUP_WAIT, |s| {
                s["state"] == "connected" && s["peers"] == n - 1
            });
        }
        let took = started.elapsed();
        println!("mesh of {n}: everyone connected {took:.1?} after the pages were opened together");
    }
}
