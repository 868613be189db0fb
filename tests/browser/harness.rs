//! What the browser tests stand on: finding Chromium and chromedriver, Firefox and geckodriver,
//! refusing to run WebRTC outside a loopback-only network namespace, the real `sigrelay`
//! binary as a child process, and a `Person` (one browser with a profile of its own, Chromium
//! or Firefox, desktop- or phone-sized) with bounded waits on what its page shows.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use crate::webdriver::Kind;
use crate::webdriver::{Driver, Session};

/// Every wait in these tests ends by this deadline at the latest.
pub const WAIT: Duration = Duration::from_secs(30);

/// The scenarios run one at a time: each starts two or three browsers, and the machine the
/// tests run on may have two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Writes straight to stderr, past the test harness's output capture, so that a skip shows.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

fn from_env_or_path(var: &str, names: &[&str]) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(value) if !value.is_empty() => Some(PathBuf::from(value)).filter(|p| p.is_file()),
        _ => on_path(names),
    }
}

/// Network interfaces other than `lo` in this process's network namespace (Linux), or None
/// when that cannot be told.
fn non_loopback_interfaces() -> Option<Vec<String>> {
    // /proc/net/dev follows the process's namespace (/sys/class/net does not).
    let table = std::fs::read_to_string("/proc/net/dev").ok()?;
    Some(
        table
            .lines()
            .skip(2)
            .filter_map(|line| line.split(':').next())
            .map(|name| name.trim().to_string())
            .filter(|name| name != "lo")
            .collect(),
    )
}

/// A number that differs between calls and between runs (for folder and room names).
pub fn unique() -> u64 {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos) << 16 | COUNT.fetch_add(1, Ordering::SeqCst) as u64
}

/// A browser program and its WebDriver server.
struct Programs {
    browser: PathBuf,
    driver: PathBuf,
}

/// Finds a browser and its driver, or says what is missing and how to get it.
fn find(kind: Kind) -> std::result::Result<Programs, String> {
    let (browser_var, browsers, driver_var, drivers, hint) = match kind {
        Kind::Chromium => (
            "SIGRELAY_CHROMIUM",
            &[
                "chromium",
                "chromium-browser",
                "google-chrome",
                "google-chrome-stable",
            ][..],
            "SIGRELAY_CHROMEDRIVER",
            &["chromedriver"][..],
            "Debian: apt-get install chromium chromium-driver",
        ),
        Kind::Firefox => (
            "SIGRELAY_FIREFOX",
            &["firefox-esr", "firefox"][..],
            "SIGRELAY_GECKODRIVER",
            &["geckodriver"][..],
            "Debian: apt-get install firefox-esr; cargo install --locked geckodriver",
        ),
    };
    let browser = from_env_or_path(browser_var, browsers).ok_or_else(|| {
        format!(
            "no {} (set {browser_var} or put it on PATH; {hint})",
            browsers[0]
        )
    })?;
    // `cargo install` puts geckodriver in ~/.cargo/bin, which a shell's PATH may lack.
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    let driver = from_env_or_path(driver_var, drivers)
        .or_else(|| Some(cargo_bin?.join(drivers[0])).filter(|p| p.is_file()))
        .ok_or_else(|| {
            format!(
                "no {} (set {driver_var} or put it on PATH; {hint})",
                drivers[0]
            )
        })?;
    Ok(Programs { browser, driver })
}

/// Firefox preferences for a call between headless browsers on loopback. Without a camera or
/// microphone permission Firefox gathers no ICE candidates at all in a loopback-only namespace
/// (fake streams do not count), hence the permission prefs.
fn firefox_prefs() -> serde_json::Map<String, Value> {
    let prefs = json!({
        "media.navigator.streams.fake": true,
        "media.navigator.permission.disabled": true,
        "permissions.default.camera": 1,
        "permissions.default.microphone": 1,
        "media.peerconnection.ice.loopback": true,
        "media.peerconnection.ice.obfuscate_host_addresses": false,
        // Like Chromium's --autoplay-policy=no-user-gesture-required.
        "media.autoplay.default": 0,
        "media.autoplay.blocking_policy": 0,
        // The page's console on the driver's stdout (geckodriver has no log endpoint).
        "devtools.console.stdout.content": true,
        // ... and not the browser's own (its remote-settings loader, backup service, ...).
        "devtools.console.stdout.chrome": false,
    });
    match prefs {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

/// The desktop window every person gets unless they hold a phone.
const WINDOW: (u32, u32) = (1100, 720);

/// What a scenario needs: the programs found, and the lock that runs scenarios one at a time.
pub struct Browsers {
    chromium: Option<Programs>,
    firefox: Option<Programs>,
    /// One chromedriver serves every Chromium person; started at the first one.
    chromedriver: OnceLock<Arc<Driver>>,
    /// `$HOME` for the browsers when set (`get_with_home`).
    home: Option<PathBuf>,
    people: AtomicUsize,
    scratch: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

impl Browsers {
    /// Chromium only; see `get_with`.
    pub fn get(test: &str) -> Option<Browsers> {
        Self::get_with(test, &[Kind::Chromium])
    }

    /// Chromium with its `$HOME` set to `home` (its `.pki/nssdb` is the certificate store
    /// Chromium on Linux trusts besides its own roots).
    pub fn get_with_home(test: &str, home: Option<&Path>) -> Option<Browsers> {
        let mut browsers = Self::get_with(test, &[Kind::Chromium])?;
        browsers.home = home.map(Path::to_path_buf);
        Some(browsers)
    }

    /// Finds the browsers of `kinds` and their drivers and checks the network namespace.
    /// Returns None (after saying why) when the browser tests cannot run here, unless
    /// `SIGRELAY_REQUIRE_BROWSER=1`, under which that is a failure.
    pub fn get_with(test: &str, kinds: &[Kind]) -> Option<Browsers> {
        let required = std::env::var("SIGRELAY_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        let skip = |why: String| {
            assert!(!required, "{test}: {why} (and SIGRELAY_REQUIRE_BROWSER=1)");
            say(&format!("{test}: skipped: {why}"));
            None
        };
        let (mut chromium, mut firefox) = (None, None);
        for &kind in kinds {
            let found = match find(kind) {
                Ok(found) => found,
                Err(why) => return skip(why),
            };
            match kind {
                Kind::Chromium => chromium = Some(found),
                Kind::Firefox => firefox = Some(found),
            }
        }
        // WebRTC media must never leave 127.0.0.1: Chromium offers every interface it sees.
        let any_network = std::env::var("SIGRELAY_BROWSER_ANY_NETWORK").is_ok_and(|v| v == "1");
        if !any_network {
            match non_loopback_interfaces() {
                Some(others) if others.is_empty() => {}
                found => {
                    let seen = found.map_or("unknown".into(), |o| o.join(", "));
                    return skip(format!(
                        "not in a loopback-only network namespace (interfaces: {seen}); run \
                         `unshare --net -- sh -c 'ip link set lo up && cargo test --test browser'` \
                         (or set SIGRELAY_BROWSER_ANY_NETWORK=1 to run anyway)"
                    ));
                }
            }
        }

        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let scratch = std::env::temp_dir().join(format!(
            "sigrelay-browser-{}-{test}-{}",
            std::process::id(),
            unique()
        ));
        Some(Browsers {
            chromium,
            firefox,
            chromedriver: OnceLock::new(),
            home: None,
            people: AtomicUsize::new(0),
            scratch,
            _turn: turn,
        })
    }

    /// A new person: a new headless Chromium with a profile of its own.
    pub fn person(&self, name: &'static str) -> Person {
        self.person_with(name, &[])
    }

    /// A new person in the browser of `kind`, desktop-sized.
    pub fn person_as(&self, kind: Kind, name: &'static str) -> Person {
        match kind {
            Kind::Chromium => self.person(name),
            Kind::Firefox => self.firefox_with(name, serde_json::Map::new()),
        }
    }

    pub fn person_with(&self, name: &'static str, extra_args: &[&str]) -> Person {
        let mut args = vec![format!("--window-size={},{}", WINDOW.0, WINDOW.1)];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        self.chromium(name, args, None)
    }

    /// A person holding a phone: Chromium's mobile emulation of a 390x844 CSS-pixel screen at
    /// device pixel ratio 3 with touch, and a phone's user agent.
    pub fn phone(&self, name: &'static str) -> Person {
        let emulation = json!({
            "deviceMetrics": { "width": 390, "height": 844, "pixelRatio": 3.0, "touch": true },
            "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 \
                          (KHTML, like Gecko) Chrome/148.0.0.0 Mobile Safari/537.36",
        });
        self.chromium(name, Vec::new(), Some(emulation))
    }

    fn chromium(&self, name: &'static str, extra: Vec<String>, mobile: Option<Value>) -> Person {
        let programs = self
            .chromium
            .as_ref()
            .expect("get_with(.., [Kind::Chromium, ..])");
        let n = self.people.fetch_add(1, Ordering::SeqCst);
        let profile = self.scratch.join(format!("{n}-{name}"));
        std::fs::create_dir_all(&profile).expect("a profile folder");
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--allow-loopback-in-peer-connection",
            "--autoplay-policy=no-user-gesture-required",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra);
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut options = json!({ "binary": programs.browser, "args": args });
        if let Some(emulation) = mobile {
            options["mobileEmulation"] = emulation;
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": { "browser": "ALL" },
            "timeouts": { "script": 30000, "pageLoad": 30000, "implicit": 0 },
            "unhandledPromptBehavior": "dismiss",
        });
        let driver = self.chromedriver.get_or_init(|| {
            Arc::new(
                Driver::start(&programs.driver, Kind::Chromium, self.home.as_deref())
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        });
        let session = Session::new(Arc::clone(driver), capabilities, Some(profile))
            .unwrap_or_else(|e| panic!("{name}: cannot start Chromium: {e}"));
        Person { name, session }
    }

    /// A new person in a headless Firefox (its own geckodriver, which serves one session, and
    /// a fresh profile geckodriver makes and removes) with `firefox_prefs` and `extra_prefs`.
    pub fn firefox_with(
        &self,
        name: &'static str,
        extra_prefs: serde_json::Map<String, Value>,
    ) -> Person {
        let programs = self
            .firefox
            .as_ref()
            .expect("get_with(.., [Kind::Firefox, ..])");
        let mut prefs = firefox_prefs();
        prefs.extend(extra_prefs);
        let capabilities = json!({
            "browserName": "firefox",
            "moz:firefoxOptions": {
                "binary": programs.browser,
                "args": ["-headless"],
                "prefs": prefs,
            },
            "timeouts": { "script": 30000, "pageLoad": 30000, "implicit": 0 },
            "unhandledPromptBehavior": "dismiss",
        });
        let driver = Driver::start(&programs.driver, Kind::Firefox, None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let session = Session::new(Arc::new(driver), capabilities, None)
            .unwrap_or_else(|e| panic!("{name}: cannot start Firefox: {e}"));
        // Firefox takes no window size on its command line in headless mode: W3C Set Window Rect.
        session
            .set_window_size(WINDOW.0, WINDOW.1)
            .unwrap_or_else(|e| panic!("{name}: window size: {e}"));
        Person { name, session }
    }
}

impl Drop for Browsers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// The real `sigrelay` binary on 127.0.0.1 with a kernel-chosen port; killed on drop.
pub struct Server {
    child: Child,
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(extra_args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sigrelay"))
            .args(["--bind", "127.0.0.1:0"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sigrelay");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (url_tx, url_rx) = mpsc::channel();
        let outputs: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        // Both pipes are drained for the server's whole life, so it never blocks on a full one.
        for output in outputs {
            let (log, url_tx) = (Arc::clone(&log), url_tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    // `http://127.0.0.1:PORT/`, or `https://...` with `--tls`.
                    let at = line
                        .find("http://127.0.0.1:")
                        .or_else(|| line.find("https://127.0.0.1:"));
                    if let Some(at) = at {
                        let url = line[at..].split_whitespace().next().unwrap_or_default();
                        let _ = url_tx.send(url.trim_end_matches('/').to_string());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let url = match url_rx.recv_timeout(WAIT) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "sigrelay printed no http(s)://127.0.0.1:PORT/ line; it said:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Server { child, url, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            say(&format!("--- sigrelay's output ---\n{}", self.log()));
        }
    }
}

/// One person at one browser.
pub struct Person {
    pub name: &'static str,
    session: Session,
}

/// Reads the page's test hooks: state, status and notice text, the local video, the first
/// remote one (ours: the first of `#remotes`; the seed's `#remoteVideo`), every remote video
/// with its peer id, and the chat's lines.
const SNAPSHOT: &str = r#"
const video = (v) => v && {
  width: v.videoWidth, height: v.videoHeight, time: v.currentTime,
  paused: v.paused, hasStream: !!v.srcObject,
};
const text = (sel) => { const e = document.querySelector(sel); return e ? e.textContent.trim() : null; };
const body = document.body;
return {
  url: location.href,
  state: body ? body.dataset.state || null : null,
  connections: body ? Number(body.dataset.connections || 0) : 0,
  peers: body && body.dataset.peers ? Number(body.dataset.peers) : null,
  media: body ? body.dataset.media || null : null,
  path: body ? body.dataset.path || null : null,
  pathWords: text('#path'),
  status: text('#status'),
  notice: text('#notice'),
  local: video(document.querySelector('#local') || document.querySelector('#localVideo')),
  remote: video(document.querySelector('#remotes video') || document.querySelector('#remoteVideo')),
  remotes: [...document.querySelectorAll('#remotes video[data-peer]')].map((v) => ({
    peer: v.dataset.peer, ...video(v), state: v.parentElement && v.parentElement.dataset.state,
  })),
  chat: [...document.querySelectorAll('#chat-log li')].map((li) => li.textContent),
  sharing: body ? body.dataset.sharing === 'true' : false,
};
"#;

impl Person {
    pub fn goto(&self, url: &str) {
        self.session
            .goto(url)
            .unwrap_or_else(|e| panic!("{}: open {url}: {e}", self.name));
    }

    pub fn reload(&self) {
        self.session
            .refresh()
            .unwrap_or_else(|e| panic!("{}: reload: {e}", self.name));
    }

    pub fn url(&self) -> String {
        self.session
            .current_url()
            .unwrap_or_else(|e| panic!("{}: url: {e}", self.name))
    }

    pub fn add_init_script(&self, source: &str) {
        self.session
            .add_init_script(source)
            .unwrap_or_else(|e| panic!("{}: init script: {e}", self.name));
    }

    pub fn click(&self, css: &str) {
        self.session
            .click(css)
            .unwrap_or_else(|e| panic!("{}: click {css}: {e}", self.name));
    }

    pub fn exec(&self, script: &str, args: Vec<Value>) -> Value {
        self.session
            .exec(script, args)
            .unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.name))
    }

    /// Everything the tests look at on this person's page, in one round trip.
    pub fn snapshot(&self) -> Value {
        self.session
            .exec(SNAPSHOT, vec![])
            .unwrap_or_else(|e| json!({ "error": e }))
    }

    /// Polls `check` on the snapshot until it holds; fails with the last snapshot after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let snapshot = self.snapshot();
            if check(&snapshot) {
                return snapshot;
            }
            if Instant::now() > deadline {
                let console = self.session.console_log().unwrap_or_default();
                panic!(
                    "{}: waited {limit:?} for {what}; the page shows {snapshot:#}\nconsole: {console:#?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    pub fn wait_state(&self, state: &str) -> Value {
        self.wait_for(&format!("state {state:?}"), WAIT, |s| s["state"] == state)
    }

    /// Waits until the remote video (ours `#remote`, the seed's `#remoteVideo`) has a picture
    /// and its clock moves on by at least half a second: frames are arriving.
    pub fn wait_remote_video_moving(&self) {
        let first = self.wait_for("a remote picture (videoWidth > 0)", WAIT, |s| {
            s["remote"]["width"].as_u64().unwrap_or(0) > 0
        });
        let t0 = first["remote"]["time"].as_f64().unwrap_or(0.0);
        self.wait_for(
            &format!("remote currentTime to advance past {t0} + 0.5 s"),
            WAIT,
            |s| {
                s["remote"]["width"].as_u64().unwrap_or(0) > 0
                    && s["remote"]["time"].as_f64().unwrap_or(0.0) > t0 + 0.5
            },
        );
    }

    /// Console messages at level SEVERE (errors) since the last call.
    pub fn console_errors(&self) -> Vec<String> {
        self.session
            .console_log()
            .unwrap_or_else(|e| panic!("{}: read the console: {e}", self.name))
            .into_iter()
            .filter(|(level, _)| level == "SEVERE")
            .map(|(_, message)| message)
            .collect()
    }

    pub fn screenshot(&self, path: &Path) {
        let png = self
            .session
            .screenshot()
            .unwrap_or_else(|e| panic!("{}: screenshot: {e}", self.name));
        assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the screenshot's folder");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Replaces the current page (which must be on the server's origin, so the test page is
    /// same-origin with `/stream` and `/channel/send`) with `html`, scripts and all.
    pub fn write_page(&self, html: &str) {
        self.exec(
            "document.open(); document.write(arguments[0]); document.close(); return true;",
            vec![json!(html)],
        );
    }
}
