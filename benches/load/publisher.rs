//! Publishers: keep-alive HTTP/1.1 connections written by hand, answers read with httparse.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::subscriber::{Chunked, SubStats};
use crate::target::Tmpl;

/// One keep-alive publisher connection speaking HTTP/1.1 by hand: one write per request
/// (head and body together), the response read with `httparse` into a reused buffer. A
/// hyper client would cost two tasks and a handoff per request; the load generator shares
/// the two cores with the server, so every cycle it spends is one the server cannot use.
/// Reconnects (counted) when the server closes the connection, as nginx does after
/// `keepalive_requests`.
pub(crate) struct Publisher {
    pub(crate) t: Tmpl,
    pub(crate) conn: Option<TcpStream>,
    pub(crate) stats: Arc<PubStats>,
    pub(crate) req: Vec<u8>,
    pub(crate) resp: Vec<u8>,
}

/// What reading one response found.
pub(crate) enum Answer {
    /// A whole response: `ok` if its status was 2xx, `keep` if the connection may be reused.
    Done {
        ok: bool,
        keep: bool,
    },
    Broken,
}

impl Publisher {
    pub(crate) fn new(t: Tmpl, stats: Arc<PubStats>) -> Publisher {
        Publisher {
            t,
            conn: None,
            stats,
            req: Vec::with_capacity(512),
            resp: Vec::with_capacity(1024),
        }
    }

    pub(crate) async fn publish(&mut self, path: &str, body: String) -> bool {
        let ok = self.try_publish(path, body).await;
        if ok { &self.stats.ok } else { &self.stats.err }.fetch_add(1, Ordering::Relaxed);
        ok
    }

    pub(crate) async fn try_publish(&mut self, path: &str, body: String) -> bool {
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
pub(crate) async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> Answer {
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

pub(crate) fn body(seq: u64, t_us: u64) -> String {
    format!("{{\"ice\":\"@{seq}.{t_us}@ candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host\"}}")
}

#[derive(Default)]
pub(crate) struct PubStats {
    pub(crate) ok: AtomicU64,
    pub(crate) err: AtomicU64,
    pub(crate) connects: AtomicU64,
}

pub(crate) async fn wait_delivered(subs: &SubStats, expected: u64, max: Duration) {
    let until = Instant::now() + max;
    while subs.received.load(Ordering::Relaxed) < expected && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Waits for publisher tasks until `until`, then aborts the rest: a server that stops
/// answering ends the scenario instead of hanging it (publishers keep no per-request timer).
pub(crate) async fn join_bounded(tasks: Vec<tokio::task::JoinHandle<()>>, until: Instant) {
    for task in tasks {
        let left = until.saturating_duration_since(Instant::now());
        let abort = task.abort_handle();
        if tokio::time::timeout(left, task).await.is_err() {
            abort.abort();
        }
    }
}
