//! A minimal W3C WebDriver client for chromedriver and geckodriver: just the commands the
//! browser tests use, over a blocking HTTP/1.1 request per command (`Connection: close`), so
//! no async runtime. The two drivers differ in three ways this file hides: geckodriver serves
//! one session per process, has no log endpoint (Firefox writes the page's console to the
//! driver's stdout, which is kept here), and has no Chrome DevTools endpoint.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long one WebDriver command may take (session creation starts a browser).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

pub type Result<T> = std::result::Result<T, String>;

/// One HTTP request with a JSON body; returns the status and the body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;

    // chromedriver keeps the connection open whatever we ask, so the body ends where its
    // Content-Length (or last chunk) says, not at end of file.
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut read_more = |raw: &mut Vec<u8>| -> io::Result<bool> {
        let n = stream.read(&mut buf)?;
        raw.extend_from_slice(&buf[..n]);
        Ok(n > 0)
    };
    let split = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if !read_more(&mut raw)? {
            return Err(bad("connection closed before the end of the headers"));
        }
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let header = |name: &str| {
        head.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim() == name)
            .map(|(_, value)| value.trim().to_string())
    };
    let start = split + 4;
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            if let Some(body) = dechunk(&raw[start..]) {
                return Ok((status, body));
            }
            if !read_more(&mut raw)? {
                return Err(bad("connection closed inside a chunked body"));
            }
        }
    }
    match header("content-length") {
        Some(length) => {
            let length: usize = length.parse().map_err(|_| bad("bad Content-Length"))?;
            while raw.len() < start + length {
                if !read_more(&mut raw)? {
                    return Err(bad("connection closed inside the body"));
                }
            }
            Ok((status, raw[start..start + length].to_vec()))
        }
        None => {
            while read_more(&mut raw)? {}
            Ok((status, raw[start..].to_vec()))
        }
    }
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Which driver a `Driver` runs: what it can do differs (see the file's opening lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chromium,
    Firefox,
}

/// At most this many lines of a driver's output are kept between two reads of the console.
const MAX_OUTPUT_LINES: usize = 10_000;

/// A chromedriver or geckodriver process on a free loopback port; killed on drop.
pub struct Driver {
    addr: SocketAddr,
    child: Child,
    kind: Kind,
    /// geckodriver's stdout and stderr (the Firefox page's console among them).
    output: Arc<Mutex<Vec<String>>>,
}

impl Driver {
    /// Starts the driver; the browsers it starts inherit `home` as `$HOME` when given (where
    /// Chromium on Linux reads its NSS certificate store, `$HOME/.pki/nssdb`).
    pub fn start(program: &Path, kind: Kind, home: Option<&Path>) -> Result<Driver> {
        // The drivers need a port number: take a free one from the kernel, then hand it over.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut command = Command::new(program);
        command.arg(format!("--port={port}")).stdin(Stdio::null());
        if let Some(home) = home {
            command.env("HOME", home);
        }
        match kind {
            Kind::Chromium => command.stdout(Stdio::null()).stderr(Stdio::null()),
            // `--websocket-port=0`: several geckodrivers at once must not all want 9222.
            Kind::Firefox => command
                .args(["--log=warn", "--websocket-port=0"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        };
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let pipes: [Option<Box<dyn Read + Send>>; 2] = [
            child.stdout.take().map(|p| Box::new(p) as _),
            child.stderr.take().map(|p| Box::new(p) as _),
        ];
        // Drained for the driver's whole life, so that neither it nor Firefox blocks on a pipe.
        for pipe in pipes.into_iter().flatten() {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(io::Result::ok) {
                    let mut lines = output.lock().unwrap();
                    if lines.len() < MAX_OUTPUT_LINES {
                        lines.push(line);
                    }
                }
            });
        }
        let driver = Driver {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            kind,
            output,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(status) = driver.command("GET", "/status", None) {
                if status["ready"] == json!(true) {
                    return Ok(driver);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not become ready within 20 s",
                    program.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends one command; returns its `value`, or the WebDriver error as text.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, bytes) = http(self.addr, method, path, body.as_ref())
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let reply: Value = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{method} {path}: HTTP {status}, not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        let value = reply.get("value").cloned().unwrap_or(Value::Null);
        if status != 200 {
            return Err(format!(
                "{method} {path}: HTTP {status}: {} {}",
                value["error"].as_str().unwrap_or("?"),
                value["message"].as_str().unwrap_or("")
            ));
        }
        Ok(value)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser (one person): a WebDriver session started with `capabilities`. Dropping it
/// quits the browser and removes `profile` (a folder the caller made for it), if any.
pub struct Session {
    driver: Arc<Driver>,
    id: String,
    profile: Option<PathBuf>,
}

impl Session {
    pub fn new(driver: Arc<Driver>, capabilities: Value, profile: Option<PathBuf>) -> Result<Self> {
        let value = driver.command(
            "POST",
            "/session",
            Some(json!({ "capabilities": { "alwaysMatch": capabilities } })),
        )?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no sessionId in {value}"))?
            .to_string();
        Ok(Session {
            driver,
            id,
            profile,
        })
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.driver
            .command(method, &format!("/session/{}{path}", self.id), body)
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .map(drop)
    }

    pub fn refresh(&self) -> Result<()> {
        self.cmd("POST", "/refresh", Some(json!({}))).map(drop)
    }

    pub fn current_url(&self) -> Result<String> {
        Ok(self
            .cmd("GET", "/url", None)?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Runs `script` as a function body in the page (`arguments[i]` are `args`).
    pub fn exec(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Clicks the element matching a CSS selector, as a person would (WebDriver Element Click).
    pub fn click(&self, css: &str) -> Result<()> {
        let found = self.cmd(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        let element = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no element id for {css} in {found}"))?
            .to_string();
        self.cmd(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .map(drop)
    }

    /// W3C Set Window Rect: the window's outer size in CSS pixels.
    pub fn set_window_size(&self, width: u32, height: u32) -> Result<()> {
        let rect = json!({ "width": width, "height": height });
        self.cmd("POST", "/window/rect", Some(rect)).map(drop)
    }

    /// Runs `source` in every document this browser opens from now on, before the page's
    /// own scripts (Chrome DevTools `Page.addScriptToEvaluateOnNewDocument`; Chromium only).
    pub fn add_init_script(&self, source: &str) -> Result<()> {
        if self.driver.kind != Kind::Chromium {
            return Err("init scripts need Chrome DevTools (Chromium only)".into());
        }
        let params = json!({ "cmd": "Page.addScriptToEvaluateOnNewDocument", "params": { "source": source } });
        self.cmd("POST", "/goog/cdp/execute", Some(params))
            .map(drop)
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Result<Vec<u8>> {
        let value = self.cmd("GET", "/screenshot", None)?;
        base64_decode(value.as_str().unwrap_or_default()).ok_or_else(|| "bad base64".to_string())
    }

    /// Console messages since the last call: `(level, message)`, e.g. `("SEVERE", "...")`.
    /// Firefox's come from its driver's output (`devtools.console.stdout.content`), where
    /// `console.error: ...` and uncaught `JavaScript error: http...` lines count as SEVERE.
    pub fn console_log(&self) -> Result<Vec<(String, String)>> {
        if self.driver.kind == Kind::Firefox {
            let lines = std::mem::take(&mut *self.driver.output.lock().unwrap());
            return Ok(lines
                .into_iter()
                .filter_map(|line| {
                    // Uncaught errors of the browser's own code (resource://, chrome://)
                    // are not the page's.
                    let page_error = line.starts_with("JavaScript error: http");
                    let level = if page_error
                        || line
                            .strip_prefix("console.error: ")
                            .is_some_and(|rest| !is_browser_logger(rest))
                    {
                        "SEVERE"
                    } else if line.starts_with("console.") {
                        "INFO"
                    } else {
                        return None;
                    };
                    Some((level.to_string(), line))
                })
                .collect());
        }
        let value = self.cmd("POST", "/se/log", Some(json!({ "type": "browser" })))?;
        Ok(value
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        let field = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                        (field("level"), field("message"))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.cmd("DELETE", "", None);
        if let Some(profile) = &self.profile {
            let _ = std::fs::remove_dir_all(profile);
        }
    }
}

/// Firefox's own modules log with a bare prefix (`console.error: RSLoader: ...`); a page's
/// console arguments come quoted or as objects (`console.error: "sigrelay: ..."`).
fn is_browser_logger(rest: &str) -> bool {
    rest.split_once(": ").is_some_and(|(prefix, _)| {
        prefix.starts_with(|c: char| c.is_ascii_alphabetic())
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    }) || rest.trim_end().ends_with(':') && !rest.starts_with(['"', '('])
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[test]
fn firefox_browser_loggers_are_told_from_the_page() {
    assert!(is_browser_logger("RSLoader: "));
    assert!(is_browser_logger("RSLoader: something failed"));
    assert!(!is_browser_logger(
        "\"sigrelay: could not send bye:\" TypeError"
    ));
    assert!(!is_browser_logger("(new Error(\"x\"))"));
}

#[test]
fn base64_decodes_padding_and_all_symbols() {
    assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
    assert_eq!(base64_decode("+/8=").unwrap(), [0xfb, 0xff]);
    assert!(base64_decode("a!").is_none());
}
