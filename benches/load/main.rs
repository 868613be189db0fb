//! Load generator for sigrelay and any server speaking its API (issue 5).
//!
//! `cargo bench --bench load -- <scenario> [flags]` (`--help` lists them), scenarios:
//! `latency`, `throughput`, `idle N`, `nosub` (publish with no subscribers next to a built-in
//! hyper "hello" server), `all`. Without `--sub-url`/`--pub-url` it starts
//! `target/release/sigrelay --bind 127.0.0.1:0` itself (limits raised) and stops it at the end.
//! Loopback only; every loop is bounded in count and time.
//!
//! - `opts.rs` the command line; `target.rs` the server under load and its memory;
//! - `subscriber.rs` SSE readers; `publisher.rs` hand-written HTTP/1.1 publishers;
//! - `scenarios.rs` what is measured; `hello.rs` the hyper "hello" ceiling.

mod hello;
mod opts;
mod publisher;
mod scenarios;
mod subscriber;
mod target;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hello::{hello_server, spawn_hello};
use opts::{Opts, Scenario};
use scenarios::{idle, latency, throughput, Rows};
use target::target;

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

/// Microseconds since the generator started: the clock every timestamp uses.
pub(crate) fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("hello-server") {
        return hello_server();
    }
    let o = Opts::from_args();
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
        // Idle first, on a fresh server: later scenarios leave channels in history for
        // --history-ttl, which would blur the RSS baseline.
        if o.runs(Scenario::Idle) {
            idle(&t, &o, &mut rows).await;
        }
        if o.runs(Scenario::Latency) {
            latency(&t, &o, &mut rows).await;
        }
        if o.runs(Scenario::Throughput) {
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
        if o.runs(Scenario::Nosub) {
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
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(10);
    println!("\ntarget: {}", t.name);
    println!("| {:w$} | result |", "figure");
    println!("|{}|---|", "-".repeat(w + 2));
    for (k, v) in &rows {
        println!("| {k:w$} | {v} |");
    }
    rt.shutdown_timeout(Duration::from_secs(2));
}
