//! SSE subscribers: raw HTTP/1.1 readers that count and time every published token.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::now_us;
use crate::target::{Target, Tmpl};

#[derive(Default)]
pub(crate) struct SubStats {
    pub(crate) received: AtomicU64,
    pub(crate) headers_ok: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) done: AtomicU64,
    pub(crate) lat_us: Mutex<Vec<u32>>,
}

/// Minimal HTTP/1.1 chunked-body decoder (enough for an SSE stream).
#[derive(Default)]
pub(crate) struct Chunked {
    pub(crate) remaining: usize,
    pub(crate) skip: usize,
    pub(crate) size_line: Vec<u8>,
    pub(crate) ended: bool,
}

impl Chunked {
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
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
pub(crate) fn token(line: &[u8]) -> Option<u64> {
    let a = line.iter().position(|&b| b == b'@')?;
    let rest = &line[a + 1..];
    let b = rest.iter().position(|&b| b == b'@')?;
    let tok = std::str::from_utf8(&rest[..b]).ok()?;
    tok.split_once('.')?.1.parse().ok()
}

pub(crate) async fn connect(addr: SocketAddr, src: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
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
pub(crate) struct SubCtx {
    pub(crate) t: Tmpl,
    pub(crate) stats: Arc<SubStats>,
    pub(crate) record: bool,
    pub(crate) ready: Arc<Semaphore>,
    pub(crate) stop: CancellationToken,
}

/// One SSE subscriber: sends the GET, then counts and times every `@seq.t@` token until
/// `stop`. `ready` is released once headers arrived (or 3 s passed without them: flask-sse
/// sends none before the first event).
pub(crate) async fn subscriber(
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
pub(crate) fn append_bounded(line: &mut Vec<u8>, more: &[u8]) {
    let room = (64 * 1024usize).saturating_sub(line.len());
    line.extend_from_slice(&more[..more.len().min(room)]);
}

/// Starts `rooms * per_room` subscribers and waits (bounded) until each is ready.
pub(crate) async fn start_subs(
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
