//! The scenarios: latency at a fixed rate, closed-loop throughput, idle streams' memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::now_us;
use crate::opts::Opts;
use crate::publisher::*;
use crate::subscriber::*;
use crate::target::{rss_kib, Target};

pub(crate) type Rows = Vec<(String, String)>;

pub(crate) static RUN: AtomicU64 = AtomicU64::new(0);

pub(crate) fn prefix(tag: &str) -> String {
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    format!("b{}{tag}{n}r", std::process::id())
}

pub(crate) async fn latency(t: &Target, o: &Opts, rows: &mut Rows) {
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
pub(crate) async fn throughput(
    t: &Target,
    o: &Opts,
    rooms: usize,
    per_room: usize,
    rows: &mut Rows,
) -> f64 {
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

pub(crate) async fn idle(t: &Target, o: &Opts, rows: &mut Rows) {
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
