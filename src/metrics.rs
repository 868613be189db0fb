//! `/metrics`: the Prometheus registry and every counter the server keeps about itself
//! (connections, events, bytes, refusals by reason, request latency by route).
//!
//! One [`Metrics`] is built per server and shared by the accept loop and the HTTP layer, which
//! only call the small methods here; nothing else touches prometheus-client. Labels are fixed
//! words (a route, a refusal reason): a room name never becomes a label, so `/metrics` can
//! never be used to list rooms.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::hub::{Hub, HubCounters};

/// The content type of [`Metrics::render`]'s output (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

/// Every metric, cheap to update from any task (atomics; the families take a short lock only
/// the first time a label value is seen).
pub struct Metrics {
    registry: Registry,
    connections_open: Gauge<i64, AtomicI64>,
    connections_accepted: Counter<u64, AtomicU64>,
    channels: Gauge<i64, AtomicI64>,
    subscribers: Gauge<i64, AtomicI64>,
    history_bytes: Gauge<i64, AtomicI64>,
    published: Counter<u64, AtomicU64>,
    delivered: Counter<u64, AtomicU64>,
    bytes_out: Counter<u64, AtomicU64>,
    refusals: Family<ReasonLabel, Counter<u64, AtomicU64>>,
    latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// Each route's histogram, looked up once here: `observe` runs on every request, and the
    /// family's lookup (a lock and a hash of the label) would be most of its cost.
    latency_by_route: Vec<(&'static str, Histogram)>,
}

/// Every value [`route_of`] gives.
const ROUTES: [&str; 11] = [
    "stream",
    "index",
    "config",
    "healthz",
    "metrics",
    "qr",
    "trust",
    "publish",
    "room_page",
    "assets",
    "other",
];

/// The hub's own totals (replays, gaps), read at scrape time.
#[derive(Debug)]
struct HubCollector(Arc<HubCounters>);

impl Collector for HubCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = [
            (
                "events_replayed",
                "Events sent to a subscriber from history (Last-Event-ID resume or lag recovery)",
                self.0.replayed(),
            ),
            (
                "events_dropped",
                "gap events: a subscriber asked for events no longer kept",
                self.0.gaps(),
            ),
        ];
        for (name, help, value) in totals {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~13 s in ×4 steps: signaling requests are sub-millisecond, a slow body is not.
    Histogram::new(exponential_buckets(0.000_05, 4.0, 10))
}

impl Metrics {
    pub fn new(hub_counters: Arc<HubCounters>) -> Self {
        let mut registry = Registry::with_prefix("sigrelay");
        let metrics = Metrics {
            registry: Registry::default(),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            channels: Gauge::default(),
            subscribers: Gauge::default(),
            history_bytes: Gauge::default(),
            published: Counter::default(),
            delivered: Counter::default(),
            bytes_out: Counter::default(),
            refusals: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            latency_by_route: Vec::new(),
        };
        let latency_by_route = ROUTES
            .iter()
            .map(|&route| {
                let histogram = metrics.latency.get_or_create(&RouteLabel { route }).clone();
                (route, histogram)
            })
            .collect();
        registry.register(
            "connections_open",
            "Open client connections",
            metrics.connections_open.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted (refused ones not included)",
            metrics.connections_accepted.clone(),
        );
        registry.register(
            "channels",
            "Channels in memory, with or without subscribers",
            metrics.channels.clone(),
        );
        registry.register(
            "subscribers",
            "Open event streams",
            metrics.subscribers.clone(),
        );
        registry.register(
            "history_bytes",
            "Bytes of history held for replay over all channels (frames plus bookkeeping)",
            metrics.history_bytes.clone(),
        );
        registry.register(
            "events_published",
            "Messages accepted by POST /channel/send",
            metrics.published.clone(),
        );
        registry.register(
            "events_delivered",
            "Event frames written to subscribers (messages, presence, gap)",
            metrics.delivered.clone(),
        );
        registry.register(
            "stream_bytes_out",
            "Bytes written on event streams, keep-alives included",
            metrics.bytes_out.clone(),
        );
        registry.register(
            "refusals",
            "Requests and connections refused, by reason",
            metrics.refusals.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to the response head, by route",
            metrics.latency.clone(),
        );
        registry.register_collector(Box::new(HubCollector(hub_counters)));
        Metrics {
            registry,
            latency_by_route,
            ..metrics
        }
    }

    /// A connection was accepted; it counts as open until the guard is dropped.
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.connections_accepted.inc();
        self.connections_open.inc();
        ConnectionGuard(self.clone())
    }

    /// A request or connection was refused; `reason` is a fixed word such as `rate_limited`.
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn published(&self) {
        self.published.inc();
    }

    /// One event frame written to a subscriber.
    pub fn delivered(&self, bytes: usize) {
        self.delivered.inc();
        self.bytes_out.inc_by(bytes as u64);
    }

    /// Stream bytes that are not events (preamble, keep-alive comments).
    pub fn stream_bytes(&self, bytes: usize) {
        self.bytes_out.inc_by(bytes as u64);
    }

    /// A request on `route` (a fixed route name, never the raw path) got its response head.
    pub fn observe(&self, route: &'static str, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        match self
            .latency_by_route
            .iter()
            .find(|(name, _)| *name == route)
        {
            Some((_, histogram)) => histogram.observe(seconds),
            None => self
                .latency
                .get_or_create(&RouteLabel { route })
                .observe(seconds),
        }
    }

    /// The text exposition, with the hub's gauges read now: three atomic loads, so a scrape
    /// costs the same whatever the number of channels.
    pub fn render(&self, hub: &Hub) -> String {
        self.channels.set(hub.channel_count() as i64);
        self.subscribers.set(hub.subscriber_count() as i64);
        self.history_bytes.set(hub.history_bytes() as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Holds one open connection in `sigrelay_connections_open`.
pub struct ConnectionGuard(Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

/// The route label for a request path: a fixed word per endpoint, so room names and asset
/// paths never become label values (which would list rooms and grow without bound).
pub fn route_of(path: &str) -> &'static str {
    match path {
        "/stream" => "stream",
        "/" => "index",
        "/config" => "config",
        "/healthz" => "healthz",
        "/metrics" => "metrics",
        "/qr.svg" => "qr",
        _ if path == "/trust" || path.starts_with("/trust/") => "trust",
        _ if path.starts_with("/channel/send/") => "publish",
        _ if path.starts_with("/r/") => "room_page",
        _ if path.starts_with("/assets/") => "assets",
        _ => "other",
    }
}
