//! Load generator for sigrelay and any server speaking its API (issue 5).
//!
//! `cargo bench --bench load -- <scenario> [flags]`, scenarios: `latency`, `throughput`,
//! `idle N`, `nosub` (publish with no subscribers next to a built-in hyper "hello" server),
//! `all`. Without `--sub-url`/`--pub-url` it starts `target/release/sigrelay --bind
//! 127.0.0.1:0` itself (limits raised) and stops it at the end. Loopback only; every loop is
//! bounded in count and time.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const USAGE: &str =
    "usage: load <latency|throughput|idle N|nosub|all> [--sub-url T] [--pub-url T] \
[--server-pid P[,P..]] [--server-bin PATH] [--rooms R] [--rate MSG_PER_S] [--duration S] \
[--publishers C] [--pub-conns K] [--n N] [--sources K] [--client-threads T]";

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

#[derive(Clone, Debug)]
struct Opts {
    scenario: String,
    n: usize,
    sub_url: Option<String>,
    pub_url: Option<String>,
    server_pids: Vec<u32>,
    server_bin: Option<String>,
    rooms: Option<usize>,
    rate: f64,
    duration: f64,
    publishers: usize,
    pub_conns: usize,
    sources: Option<usize>,
    client_threads: usize,
}

fn parse_opts() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut o = Opts {
        scenario: String::new(),
        n: 19_000,
        sub_url: None,
        pub_url: None,
        server_pids: vec![],
        server_bin: None,
        rooms: None,
        rate: 5000.0,
        duration: 10.0,
        publishers: 64,
        pub_conns: 16,
        sources: None,
        client_threads: 2,
    };
    fn val<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
        v.ok_or(format!("{flag} needs a value"))?
            .parse()
            .map_err(|_| format!("bad value for {flag}"))
    }
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sub-url" => o.sub_url = Some(val(&a, args.next())?),
            "--pub-url" => o.pub_url = Some(val(&a, args.next())?),
            "--server-pid" => {
                let s: String = val(&a, args.next())?;
                for p in s.split(',') {
                    o.server_pids
                        .push(p.parse().map_err(|_| "bad --server-pid")?);
                }
            }
            "--server-bin" => o.server_bin = Some(val(&a, args.next())?),
            "--rooms" => o.rooms = Some(val(&a, args.next())?),
            "--rate" => o.rate = val(&a, args.next())?,
            "--duration" => o.duration = val(&a, args.next())?,
            "--publishers" => o.publishers = val(&a, args.next())?,
            "--pub-conns" => o.pub_conns = val(&a, args.next())?,
            "--n" => o.n = val(&a, args.next())?,
            "--sources" => o.sources = Some(val(&a, args.next())?),
            "--client-threads" => o.client_threads = val(&a, args.next())?,
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with("--") => return Err(format!("unknown flag {s}\n{USAGE}")),
            s if o.scenario.is_empty() => o.scenario = s.to_string(),
            s if o.scenario == "idle" => o.n = s.parse().map_err(|_| "bad N for idle")?,
            s => return Err(format!("unexpected argument {s}\n{USAGE}")),
        }
    }
    if o.scenario.is_empty() {
        return Err(USAGE.into());
    }
    if !(o.rate > 0.0 && o.rate <= 1e6 && o.duration > 0.0 && o.duration <= 600.0) {
        return Err("--rate must be in (0, 1e6] and --duration in (0, 600]".into());
    }
    if o.n > 60_000 || o.publishers == 0 || o.publishers > 4096 || o.pub_conns == 0 {
        return Err("--n at most 60000, --publishers 1..4096, --pub-conns at least 1".into());
    }
    if o.sub_url.is_some() != o.pub_url.is_some() {
        return Err("--sub-url and --pub-url go together".into());
    }
    Ok(o)
}

/// A URL template `http://HOST:PORT/path?q={room}`.
#[derive(Clone, Debug)]
struct Tmpl {
    addr: SocketAddr,
    host: String,
    path: String,
}

impl Tmpl {
    fn parse(url: &str) -> Result<Tmpl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or(format!("{url}: only http:// URLs"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = host
            .to_socket_addrs()
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or(format!("{host}: no address"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{url}: loopback only"));
        }
        Ok(Tmpl {
            addr,
            host: host.to_string(),
            path: path.to_string(),
        })
    }
    fn path(&self, room: &str, ty: &str) -> String {
        self.path.replace("{room}", room).replace("{type}", ty)
    }
}

struct Target {
    sub: Tmpl,
    publ: Tmpl,
    pids: Vec<u32>,
    child: Option<Child>,
    name: String,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_relay(o: &Opts) -> Result<Target, String> {
    let bin = o.server_bin.clone().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/sigrelay").to_string()
    });
    let mut child = Command::new(&bin)
        .args(["--bind", "127.0.0.1:0", "--no-qr", "--log", "warn"])
        .args(["--max-connections", "1000000"])
        .args(["--max-connections-per-ip", "1000000"])
        .args(["--post-rate", "1e9", "--post-burst", "1e9"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{bin}: {e} (run `cargo build --release` first)"))?;
    let out = child.stdout.take().expect("piped");
    let mut url = None;
    // The banner is a handful of lines; give up after 50 or EOF.
    for line in BufReader::new(out).lines().take(50) {
        let Ok(line) = line else { break };
        if let Some(i) = line.find("http://127.0.0.1:") {
            url = Some(line[i..].trim().trim_end_matches('/').to_string());
            break;
        }
    }
    let Some(base) = url else {
        let _ = child.kill();
        return Err("sigrelay printed no http://127.0.0.1 URL".into());
    };
    let pid = child.id();
    Ok(Target {
        sub: Tmpl::parse(&format!("{base}/stream?channel={{room}}"))?,
        publ: Tmpl::parse(&format!("{base}/channel/send/{{room}}/{{type}}"))?,
        pids: vec![pid],
        child: Some(child),
        name: format!("sigrelay (pid {pid}, {base})"),
    })
}

fn target(o: &Opts) -> Result<Target, String> {
    match (&o.sub_url, &o.pub_url) {
        (Some(s), Some(p)) => Ok(Target {
            sub: Tmpl::parse(s)?,
            publ: Tmpl::parse(p)?,
            pids: o.server_pids.clone(),
            child: None,
            name: format!("external ({p})"),
        }),
        _ => spawn_relay(o),
    }
}

fn rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let mut sum = 0;
    for pid in pids {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        sum += line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(sum)
}

// ---------------------------------------------------------------- subscribers

#[derive(Default)]
struct SubStats {
    received: AtomicU64,
    headers_ok: AtomicU64,
    pending: AtomicU64,
    failed: AtomicU64,
    done: AtomicU64,
    lat_us: Mutex<Vec<u32>>,
}

/// Minimal HTTP/1.1 chunked-body decoder (enough for an SSE stream).
#[derive(Default)]
struct Chunked {
    remaining: usize,
    skip: usize,
    size_line: Vec<u8>,
    ended: bool,
}

impl Chunked {
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() && !self.ended {
            if self.skip > 0 {
                let n = self.skip.min(input.len());
                input = &input[n..];
                self.skip -= n;
            } else if self.remaining > 0 {
                let n = self.remaining.min(input.len());
                out.extend_from_slice(&input[..n]);
                input = &input[n..];
                self.remaining -= n;
                if self.remaining == 0 {
                    self.skip = 2;
                }
            } else if let Some(p) = input.iter().position(|&b| b == b'\n') {
                self.size_line.extend_from_slice(&input[..p]);
                input = &input[p + 1..];
                let hex: String = self
                    .size_line
                    .iter()
                    .take_while(|b| b.is_ascii_hexdigit())
                    .map(|&b| b as char)
                    .collect();
                self.size_line.clear();
                match usize::from_str_radix(&hex, 16) {
                    Ok(0) | Err(_) => self.ended = true,
                    Ok(n) => self.remaining = n,
                }
            } else {
                self.size_line.extend_from_slice(input);
                break;
            }
        }
    }
}

/// Finds `@SEQ.TUS@` in an SSE `data:` line and returns TUS.
fn token(line: &[u8]) -> Option<u64> {
    let a = line.iter().position(|&b| b == b'@')?;
    let rest = &line[a + 1..];
    let b = rest.iter().position(|&b| b == b'@')?;
    let tok = std::str::from_utf8(&rest[..b]).ok()?;
    tok.split_once('.')?.1.parse().ok()
}

async fn connect(addr: SocketAddr, src: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    match (src, addr) {
        (Some(ip), SocketAddr::V4(_)) => {
            let s = TcpSocket::new_v4()?;
            s.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
            s.connect(addr).await
        }
        _ => TcpStream::connect(addr).await,
    }
}

/// What every subscriber of one scenario shares.
struct SubCtx {
    t: Tmpl,
    stats: Arc<SubStats>,
    record: bool,
    ready: Arc<Semaphore>,
    stop: CancellationToken,
}

/// One SSE subscriber: sends the GET, then counts and times every `@seq.t@` token until
/// `stop`. `ready` is released once headers arrived (or 3 s passed without them: flask-sse
/// sends none before the first event).
async fn subscriber(
    ctx: Arc<SubCtx>,
    path: String,
    src: Option<Ipv4Addr>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let SubCtx {
        t,
        stats,
        record,
        ready,
        stop,
    } = &*ctx;
    let record = *record;
    // Held until this subscriber is ready or failed: bounds connects in flight.
    let mut permit = Some(permit);
    let mut signalled = false;
    let signal = |ok: Option<bool>, signalled: &mut bool| {
        if !*signalled {
            *signalled = true;
            match ok {
                Some(true) => &stats.headers_ok,
                Some(false) => &stats.failed,
                None => &stats.pending,
            }
            .fetch_add(1, Ordering::Relaxed);
            ready.add_permits(1);
        }
    };
    let conn = tokio::time::timeout(Duration::from_secs(10), connect(t.addr, src)).await;
    let Ok(Ok(mut s)) = conn else {
        signal(Some(false), &mut signalled);
        return;
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        t.host
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        signal(Some(false), &mut signalled);
        return;
    }
    let mut buf = vec![0u8; 2048];
    let mut head: Vec<u8> = Vec::new();
    let mut in_body = false;
    let mut chunked: Option<Chunked> = None;
    let mut body = Vec::new();
    let mut line: Vec<u8> = Vec::new();
    let mut lat = Vec::new();
    let started = Instant::now();
    // One waiter on the stop token for the whole stream, and no timer per read once the
    // headers are in: the subscriber's own cost is kept out of the server's share of the CPU.
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        let n = if signalled {
            permit.take();
            tokio::select! {
                _ = &mut cancelled => break,
                r = s.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                }
            }
        } else {
            let wait = Duration::from_secs(3).saturating_sub(started.elapsed());
            tokio::select! {
                _ = &mut cancelled => break,
                r = tokio::time::timeout(wait, s.read(&mut buf)) => match r {
                    Err(_) => { signal(None, &mut signalled); continue }
                    Ok(Ok(0)) | Ok(Err(_)) => { signal(Some(false), &mut signalled); break }
                    Ok(Ok(n)) => n,
                }
            }
        };
        let mut data = &buf[..n];
        if !in_body {
            head.extend_from_slice(data);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                if head.len() > 16 * 1024 {
                    signal(Some(false), &mut signalled);
                    break;
                }
                continue;
            };
            let h = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            if !h.starts_with("http/1.1 200") && !h.starts_with("http/1.0 200") {
                signal(Some(false), &mut signalled);
                break;
            }
            signal(Some(true), &mut signalled);
            if h.contains("transfer-encoding: chunked") {
                chunked = Some(Chunked::default());
            }
            in_body = true;
            let rest = head.split_off(end + 4);
            head = rest;
            data = &head;
        }
        body.clear();
        match &mut chunked {
            Some(c) => c.feed(data, &mut body),
            None => body.extend_from_slice(data),
        }
        let now = now_us();
        let mut rest = &body[..];
        while let Some(p) = rest.iter().position(|&b| b == b'\n') {
            // A line whole in this read is looked at in place; only a line cut by the read
            // boundary is gathered in `line`.
            let whole: &[u8] = if line.is_empty() {
                &rest[..p]
            } else {
                append_bounded(&mut line, &rest[..p]);
                &line
            };
            if whole.starts_with(b"data:") {
                if let Some(t0) = token(whole) {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    if record {
                        lat.push(now.saturating_sub(t0).min(u32::MAX as u64) as u32);
                    }
                }
            }
            line.clear();
            rest = &rest[p + 1..];
        }
        append_bounded(&mut line, rest);
        head.clear();
        if chunked.as_ref().is_some_and(|c| c.ended) {
            break;
        }
    }
    if !lat.is_empty() {
        stats.lat_us.lock().unwrap().extend(lat);
    }
    stats.done.fetch_add(1, Ordering::Relaxed);
}

/// Appends to a partial line, keeping at most 64 KiB of it.
fn append_bounded(line: &mut Vec<u8>, more: &[u8]) {
    let room = (64 * 1024usize).saturating_sub(line.len());
    line.extend_from_slice(&more[..more.len().min(room)]);
}

/// Starts `rooms * per_room` subscribers and waits (bounded) until each is ready.
async fn start_subs(
    t: &Target,
    prefix: &str,
    rooms: usize,
    per_room: usize,
    sources: usize,
    record: bool,
    stop: &CancellationToken,
) -> Arc<SubStats> {
    let stats = Arc::new(SubStats::default());
    let ready = Arc::new(Semaphore::new(0));
    let ctx = Arc::new(SubCtx {
        t: t.sub.clone(),
        stats: stats.clone(),
        record,
        ready: ready.clone(),
        stop: stop.clone(),
    });
    let total = rooms * per_room;
    let inflight = Arc::new(Semaphore::new(512));
    for i in 0..total {
        let room = format!("{prefix}{}", i / per_room);
        // 127.0.0.2, 127.0.0.3, ... (all of 127/8 is on lo).
        let src = (sources > 1)
            .then(|| Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + (i % sources) as u32));
        let permit = inflight.clone().acquire_owned().await.expect("open");
        let fut = subscriber(ctx.clone(), t.sub.path(&room, ""), src, permit);
        tokio::spawn(fut);
        // Pace connects a little so a listen backlog is not overrun.
        if i % 256 == 255 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let deadline = Duration::from_secs(30 + total as u64 / 500);
    let _ = tokio::time::timeout(deadline, ready.acquire_many(total as u32)).await;
    stats
}

// ---------------------------------------------------------------- publishers

/// One keep-alive publisher connection speaking HTTP/1.1 by hand: one write per request
/// (head and body together), the response read with `httparse` into a reused buffer. A
/// hyper client would cost two tasks and a handoff per request; the load generator shares
/// the two cores with the server, so every cycle it spends is one the server cannot use.
/// Reconnects (counted) when the server closes the connection, as nginx does after
/// `keepalive_requests`.
struct Publisher {
    t: Tmpl,
    conn: Option<TcpStream>,
    stats: Arc<PubStats>,
    req: Vec<u8>,
    resp: Vec<u8>,
}

/// What reading one response found.
enum Answer {
    /// A whole response: `ok` if its status was 2xx, `keep` if the connection may be reused.
    Done {
        ok: bool,
        keep: bool,
    },
    Broken,
}

impl Publisher {
    fn new(t: Tmpl, stats: Arc<PubStats>) -> Publisher {
        Publisher {
            t,
            conn: None,
            stats,
            req: Vec::with_capacity(512),
            resp: Vec::with_capacity(1024),
        }
    }

    async fn publish(&mut self, path: &str, body: String) -> bool {
        let ok = self.try_publish(path, body).await;
        if ok { &self.stats.ok } else { &self.stats.err }.fetch_add(1, Ordering::Relaxed);
        ok
    }

    async fn try_publish(&mut self, path: &str, body: String) -> bool {
        use std::io::Write;
        if self.conn.is_none() {
            self.stats.connects.fetch_add(1, Ordering::Relaxed);
            match TcpStream::connect(self.t.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    self.conn = Some(s);
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    return false;
                }
            }
        }
        self.req.clear();
        let _ = write!(
            self.req,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            self.t.host,
            body.len()
        );
        let s = self.conn.as_mut().expect("connected");
        if s.write_all(&self.req).await.is_err() {
            self.conn = None;
            return false;
        }
        match read_answer(s, &mut self.resp).await {
            Answer::Done { ok, keep } => {
                if !keep {
                    self.conn = None;
                }
                ok
            }
            Answer::Broken => {
                self.conn = None;
                false
            }
        }
    }
}

/// Reads one HTTP/1.1 response (Content-Length, chunked, or up to EOF), bounded to 64 KiB.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> Answer {
    buf.clear();
    let mut chunk = [0u8; 2048];
    let (status, head_len, length, chunked, close) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let (mut length, mut chunked, mut close) = (None, false, false);
                for h in r.headers.iter() {
                    let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = v.parse::<usize>().ok();
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = v.eq_ignore_ascii_case("chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = v.eq_ignore_ascii_case("close");
                    }
                }
                break (r.code.unwrap_or(0), n, length, chunked, close);
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
            _ => return Answer::Broken,
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return Answer::Broken,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let ok = (200..300).contains(&status);
    let mut body_seen = buf.len() - head_len;
    let mut decoder = chunked.then(Chunked::default);
    let mut sink = Vec::new();
    if let Some(d) = &mut decoder {
        d.feed(&buf[head_len..], &mut sink);
    }
    // Bounded: 64 KiB of body at most, and every read either makes progress or ends.
    loop {
        let complete = match (&decoder, length) {
            (Some(d), _) => d.ended,
            (None, Some(l)) => body_seen >= l,
            (None, None) => false,
        };
        if complete {
            return Answer::Done { ok, keep: !close };
        }
        if body_seen > 64 * 1024 {
            return Answer::Broken;
        }
        match s.read(&mut chunk).await {
            Ok(0) if decoder.is_none() && length.is_none() => {
                return Answer::Done { ok, keep: false };
            }
            Ok(0) | Err(_) => return Answer::Broken,
            Ok(n) => {
                body_seen += n;
                if let Some(d) = &mut decoder {
                    sink.clear();
                    d.feed(&chunk[..n], &mut sink);
                }
            }
        }
    }
}

fn body(seq: u64, t_us: u64) -> String {
    format!("{{\"ice\":\"@{seq}.{t_us}@ candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host\"}}")
}

#[derive(Default)]
struct PubStats {
    ok: AtomicU64,
    err: AtomicU64,
    connects: AtomicU64,
}

async fn wait_delivered(subs: &SubStats, expected: u64, max: Duration) {
    let until = Instant::now() + max;
    while subs.received.load(Ordering::Relaxed) < expected && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Waits for publisher tasks until `until`, then aborts the rest: a server that stops
/// answering ends the scenario instead of hanging it (publishers keep no per-request timer).
async fn join_bounded(tasks: Vec<tokio::task::JoinHandle<()>>, until: Instant) {
    for task in tasks {
        let left = until.saturating_duration_since(Instant::now());
        let abort = task.abort_handle();
        if tokio::time::timeout(left, task).await.is_err() {
            abort.abort();
        }
    }
}

type Rows = Vec<(String, String)>;

static RUN: AtomicU64 = AtomicU64::new(0);

fn prefix(tag: &str) -> String {
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    format!("b{}{tag}{n}r", std::process::id())
}

async fn latency(t: &Target, o: &Opts, rows: &mut Rows) {
    let rooms = o.rooms.unwrap_or(1000);
    let stop = CancellationToken::new();
    let p = prefix("l");
    let subs = start_subs(t, &p, rooms, 2, o.sources.unwrap_or(1), true, &stop).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = (o.rate * o.duration) as u64;
    let ps = Arc::new(PubStats::default());
    let start = now_us() + 100_000;
    let k = o.pub_conns as u64;
    let lateness: Arc<Mutex<Vec<u64>>> = Arc::default();
    // The schedule is kept by one OS thread sleeping to each send time (the kernel's
    // high-resolution sleep; tokio's timer ticks in whole ms) and handing the message to its
    // connection's task. Spinning instead would take the cores the server needs.
    let rate = o.rate;
    let send_time = move |i: u64| start + (i as f64 * 1e6 / rate) as u64;
    let mut queues = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..k {
        let (queue, mut due) = tokio::sync::mpsc::unbounded_channel::<u64>();
        queues.push(queue);
        let (t2, ps, p) = (t.publ.clone(), ps.clone(), p.clone());
        let lateness = lateness.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = Publisher::new(t2.clone(), ps);
            let mut late: Vec<u64> = Vec::new();
            while let Some(i) = due.recv().await {
                let at = send_time(i);
                late.push(now_us().saturating_sub(at));
                let path = t2.path(&format!("{p}{}", i % rooms as u64), "ice1");
                tx.publish(&path, body(i, at)).await;
            }
            lateness.lock().unwrap().extend(late);
        }));
    }
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let at = send_time(i);
            let now = now_us();
            if at > now {
                std::thread::sleep(Duration::from_micros(at - now));
            }
            let _ = queues[(i % k) as usize].send(i);
        }
        // Dropping the queues ends the publisher tasks once they have sent everything.
    });
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    join_bounded(tasks, Instant::now() + Duration::from_secs(10)).await;
    let expected = ps.ok.load(Ordering::Relaxed) * 2;
    wait_delivered(&subs, expected, Duration::from_secs(5)).await;
    stop.cancel();
    let until = Instant::now() + Duration::from_secs(5);
    while subs.done.load(Ordering::Relaxed) < (rooms * 2) as u64 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = subs.received.load(Ordering::Relaxed);
    let mut late: Vec<u32> = lateness
        .lock()
        .unwrap()
        .iter()
        .map(|&l| l.min(u32::MAX as u64) as u32)
        .collect();
    late.sort_unstable();
    let mut lat = std::mem::take(&mut *subs.lat_us.lock().unwrap());
    lat.sort_unstable();
    let name = format!(
        "latency {rooms} rooms x 2, {} msg/s, {}s",
        o.rate, o.duration
    );
    rows.push((
        name.clone(),
        format!(
            "p50 {:.2} / p99 {:.2} / p99.9 {:.2} / max {:.2} ms",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 0.999),
            pct(&lat, 1.0)
        ),
    ));
    rows.push((
        format!("{name}: send lateness (harness)"),
        format!(
            "p99 {:.2} / max {:.2} ms",
            pct(&late, 0.99),
            pct(&late, 1.0)
        ),
    ));
    rows.push((
        format!("{name}: published ok/err, delivered/expected, lost"),
        format!(
            "{}/{} ({} connections), {got}/{expected}, lost {} (subs ready {} no-headers {} failed {})",
            ps.ok.load(Ordering::Relaxed),
            ps.err.load(Ordering::Relaxed),
            ps.connects.load(Ordering::Relaxed),
            expected.saturating_sub(got),
            subs.headers_ok.load(Ordering::Relaxed),
            subs.pending.load(Ordering::Relaxed),
            subs.failed.load(Ordering::Relaxed),
        ),
    ));
}

/// Closed-loop publishing; returns publishes/s.
async fn throughput(t: &Target, o: &Opts, rooms: usize, per_room: usize, rows: &mut Rows) -> f64 {
    let stop = CancellationToken::new();
    let p = prefix("t");
    let subs = start_subs(t, &p, rooms.max(1), per_room, 1, false, &stop).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ps = Arc::new(PubStats::default());
    let dur = Duration::from_secs_f64(o.duration);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..o.publishers {
        let (t2, ps, p) = (t.publ.clone(), ps.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            let mut tx = Publisher::new(t2.clone(), ps);
            let mut j = 0u64;
            // Bounded by time and by count.
            while t0.elapsed() < dur && j < 10_000_000 {
                let room = (c as u64 + j * 7919) % rooms.max(1) as u64;
                let path = t2.path(&format!("{p}{room}"), "ice1");
                tx.publish(&path, body(j, now_us())).await;
                j += 1;
            }
        }));
    }
    join_bounded(tasks, Instant::now() + dur + Duration::from_secs(10)).await;
    let secs = t0.elapsed().as_secs_f64();
    let delivered_in_time = subs.received.load(Ordering::Relaxed);
    let ok = ps.ok.load(Ordering::Relaxed);
    let expected = ok * per_room as u64;
    wait_delivered(&subs, expected, Duration::from_secs(5)).await;
    stop.cancel();
    let got = subs.received.load(Ordering::Relaxed);
    let rate = ok as f64 / secs;
    let name = if per_room == 0 {
        format!("publish, no subscribers, {} publishers", o.publishers)
    } else {
        format!(
            "throughput {rooms} rooms x {per_room}, {} publishers",
            o.publishers
        )
    };
    rows.push((
        name,
        format!(
            "{rate:.0} pub/s, {:.0} deliveries/s, errors {}, connections {}, lost {}",
            delivered_in_time as f64 / secs,
            ps.err.load(Ordering::Relaxed),
            ps.connects.load(Ordering::Relaxed),
            expected.saturating_sub(got)
        ),
    ));
    rate
}

async fn idle(t: &Target, o: &Opts, rows: &mut Rows) {
    let n = o.n - o.n % 2;
    let before = rss_kib(&t.pids);
    let stop = CancellationToken::new();
    let sources = o.sources.unwrap_or(n.div_ceil(1500).max(1));
    let t0 = Instant::now();
    let subs = start_subs(t, &prefix("i"), n / 2, 2, sources, false, &stop).await;
    let took = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(&t.pids);
    let held = subs.headers_ok.load(Ordering::Relaxed) + subs.pending.load(Ordering::Relaxed);
    let per = match (before, after) {
        (Some(b), Some(a)) if held > 0 => {
            format!(
                "{:.2} KiB/subscriber (RSS {b} -> {a} KiB)",
                (a as f64 - b as f64) / held as f64
            )
        }
        _ => "RSS unknown (give --server-pid)".into(),
    };
    rows.push((
        format!("idle {n} subscribers ({sources} source addrs)"),
        per,
    ));
    rows.push((
        format!("idle {n}: held (headers / no headers yet) / failed, connect time"),
        format!(
            "{} / {} / {}, {took:.1}s",
            subs.headers_ok.load(Ordering::Relaxed),
            subs.pending.load(Ordering::Relaxed),
            subs.failed.load(Ordering::Relaxed)
        ),
    ));
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
}

// ---------------------------------------------------------------- hello server

fn hello_server() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("http://{}", l.local_addr().expect("addr"));
        let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async {
            let _ = req.into_body().collect().await;
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                b"{\"id\":1,\"subscribers\":0}",
            ))))
        });
        // Bounded: the parent kills this process; the loop also ends on accept errors.
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

fn spawn_hello() -> Result<Target, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("hello-server")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let base = line.trim().to_string();
    let pid = child.id();
    Ok(Target {
        sub: Tmpl::parse(&format!("{base}/stream?channel={{room}}"))?,
        publ: Tmpl::parse(&format!("{base}/channel/send/{{room}}/{{type}}"))?,
        pids: vec![pid],
        child: Some(child),
        name: format!("hyper hello (pid {pid})"),
    })
}

// ---------------------------------------------------------------- main

fn main() {
    if std::env::args().nth(1).as_deref() == Some("hello-server") {
        return hello_server();
    }
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    epoch();
    let t = match target(&o) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("load: {e}");
            std::process::exit(1);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.client_threads.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows: Rows = Vec::new();
    eprintln!("load: target {}", t.name);
    rt.block_on(async {
        let sc = o.scenario.as_str();
        // Idle first, on a fresh server: later scenarios leave channels in history for
        // --history-ttl, which would blur the RSS baseline.
        if sc == "idle" || sc == "all" {
            idle(&t, &o, &mut rows).await;
        }
        if sc == "latency" || sc == "all" {
            latency(&t, &o, &mut rows).await;
        }
        if sc == "throughput" || sc == "all" {
            let mut o2 = o.clone();
            o2.duration = o.duration.min(10.0);
            match o.rooms {
                Some(r) => {
                    throughput(&t, &o2, r, 2, &mut rows).await;
                }
                None => {
                    throughput(&t, &o2, 100, 2, &mut rows).await;
                    throughput(&t, &o2, 1000, 2, &mut rows).await;
                }
            }
        }
        if sc == "nosub" || sc == "all" {
            let mut o2 = o.clone();
            o2.duration = o.duration.min(5.0);
            let r = throughput(&t, &o2, 1, 0, &mut rows).await;
            match spawn_hello() {
                Ok(h) => {
                    let hr = throughput(&h, &o2, 1, 0, &mut rows).await;
                    let last = rows.last_mut().expect("row");
                    last.0 = format!("hyper hello ceiling, {} publishers", o.publishers);
                    rows.push((
                        "no-subscriber publish / hyper hello".into(),
                        format!("{:.2}x", r / hr),
                    ));
                }
                Err(e) => eprintln!("load: hello server: {e}"),
            }
        }
    });
    if rows.is_empty() {
        eprintln!("load: unknown scenario {:?}\n{USAGE}", o.scenario);
        std::process::exit(2);
    }
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(10);
    println!("\ntarget: {}", t.name);
    println!("| {:w$} | result |", "figure");
    println!("|{}|---|", "-".repeat(w + 2));
    for (k, v) in &rows {
        println!("| {k:w$} | {v} |");
    }
    rt.shutdown_timeout(Duration::from_secs(2));
}
