//! The hub: who is subscribed to which channel, and the events each channel has carried.
//!
//! The HTTP layer talks only to [`Hub`] and the types here; it never learns how fan-out is
//! done. Two backends sit behind it: [`memory`], an in-process map of tokio broadcast channels
//! with a bounded history ring each (the default: one process, nothing else to run), and
//! [`redis`], which makes several instances one relay by keeping ids, history, presence and
//! room capacity in Redis while each instance still fans events out to its own streams through
//! a memory hub. `replay.rs` is what a resume means, for both. The hub knows nothing of hyper,
//! so it is unit-tested without sockets.

pub mod memory;
pub mod redis;
mod replay;

pub use memory::{HubSettings, Subscription};
pub use redis::{RedisFormat, RedisSettings};

use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::names::{ChannelName, PeerId};
use crate::peers::Claim;
use crate::sse::MessageTail;

/// The hub the server runs on, whichever backend `--redis` chose.
pub enum Hub {
    Memory(memory::Hub),
    Redis(redis::RedisHub),
}

impl Hub {
    /// Builds the hub and starts its background tasks (the idle-channel reaper; with Redis, the
    /// subscription listener and the heartbeat). Fails only when Redis is asked for and cannot
    /// be reached: a relay that cannot deliver must not start.
    pub async fn start(
        settings: HubSettings,
        redis: Option<&RedisSettings>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Hub>, HubError> {
        let hub = match redis {
            None => Arc::new(Hub::Memory(memory::Hub::new(settings, shutdown))),
            Some(redis) => Arc::new(Hub::Redis(
                redis::RedisHub::connect(settings, redis, shutdown).await?,
            )),
        };
        match &*hub {
            Hub::Memory(_) => {}
            Hub::Redis(relay) => relay.spawn_tasks(),
        }
        let reaper = hub.clone();
        tokio::spawn(async move {
            let local = match &*reaper {
                Hub::Memory(memory) => memory,
                Hub::Redis(relay) => relay.local(),
            };
            local.run_reaper().await
        });
        Ok(hub)
    }

    /// Publishes one message to every subscriber of `channel` (on every instance). With
    /// `sender`, only if that claim of that peer id is the room's current one (the check and
    /// the publish are one step, so a takeover cannot slip between them).
    /// With `to`, the event is addressed: only that peer id's streams get it.
    pub async fn publish(
        &self,
        channel: &ChannelName,
        tail: &MessageTail,
        sender: Option<(&PeerId, Claim)>,
        to: Option<&PeerId>,
    ) -> Result<Published, HubError> {
        match self {
            Hub::Memory(hub) => {
                let published = hub.publish(channel, tail, sender, to)?;
                if published.queued > hub.catch_up_above() {
                    hub.let_readers_catch_up(channel, published.queued).await;
                }
                Ok(published)
            }
            Hub::Redis(hub) => hub.publish(channel, tail, sender, to).await,
        }
    }

    /// Opens a subscription: replay per `start`, then live events until it is dropped. With a
    /// `peer`, the stream takes a place in the room; [`Subscription::claim`] is then the claim
    /// its token must carry.
    pub async fn subscribe(
        &self,
        channel: &ChannelName,
        start: StartAt,
        peer: Option<PeerJoin>,
    ) -> Result<Subscription, HubError> {
        match self {
            Hub::Memory(hub) => hub.subscribe(channel, start, peer),
            Hub::Redis(hub) => hub.subscribe(channel, start, peer).await,
        }
    }

    /// The secret this instance signs peer tokens with when none was given: `candidate` alone;
    /// with Redis, the one every instance on that Redis uses (the first one's candidate, kept
    /// there), so a POST that a load balancer sends to another instance than its stream's is
    /// still accepted.
    pub async fn agree_secret(&self, candidate: String) -> Result<String, HubError> {
        match self {
            Hub::Memory(_) => Ok(candidate),
            Hub::Redis(hub) => hub.agree_secret(candidate).await,
        }
    }

    fn local(&self) -> &memory::Hub {
        match self {
            Hub::Memory(hub) => hub,
            Hub::Redis(hub) => hub.local(),
        }
    }

    /// Replay and gap counts for `/metrics` (this instance's streams).
    pub fn counters_handle(&self) -> Arc<HubCounters> {
        self.local().counters_handle()
    }

    /// Channels this instance holds.
    pub fn channel_count(&self) -> usize {
        self.local().channel_count()
    }

    /// Streams open on this instance.
    pub fn subscriber_count(&self) -> usize {
        self.local().subscriber_count()
    }

    /// Bytes of history this instance holds (with `--redis`, its local ring).
    pub fn history_bytes(&self) -> usize {
        self.local().history_bytes()
    }

    /// Whether publishes and new streams can be served right now, and if not, why.
    pub fn readiness(&self) -> Readiness {
        match self {
            Hub::Memory(_) => Readiness {
                backend: "memory",
                unavailable: None,
            },
            Hub::Redis(hub) => Readiness {
                backend: "redis",
                unavailable: hub.unavailable(),
            },
        }
    }
}

/// What `/healthz` reports about the hub.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub backend: &'static str,
    /// `Some(reason)` while the hub cannot serve (Redis lost, reconnecting).
    pub unavailable: Option<String>,
}

/// One event as it travels to subscribers: already encoded as a complete SSE frame, shared by
/// every subscriber (cloning a `Bytes` bumps a reference count, it copies nothing).
#[derive(Clone, Debug)]
pub struct Event {
    /// `Some` for published messages (kept in history, replayable); `None` for relay-made
    /// events such as presence, which are only meaningful live.
    pub id: Option<u64>,
    pub frame: Bytes,
    /// An addressed event (`to=` on the publish): only streams of this peer id get it, live or
    /// replayed; every other stream skips it as if it had never been published.
    pub to: Option<PeerId>,
}

impl Event {
    /// An event for every subscriber.
    pub fn broadcast(id: Option<u64>, frame: Bytes) -> Event {
        Event {
            id,
            frame,
            to: None,
        }
    }

    /// Whether a stream held by `peer` (`None`: anonymous) may see this event.
    pub fn is_for(&self, peer: Option<&PeerId>) -> bool {
        match &self.to {
            None => true,
            Some(to) => peer == Some(to),
        }
    }
}

/// What a publish returns to the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub id: u64,
    /// Streams subscribed to the channel when the event was sent.
    pub subscribers: usize,
    /// Events the slowest local subscriber has yet to take from the channel's broadcast buffer
    /// (0 where fan-out is not local to the publish: Redis).
    pub queued: usize,
}

/// A stream asking for a place in a room under a peer id.
#[derive(Debug, Clone)]
pub struct PeerJoin {
    pub peer: PeerId,
    /// The claim its `token=` proved (signature checked), if it presented one. A place that is
    /// held, or kept for its holder after a stream ended, is given only to its own claim.
    pub proof: Option<Claim>,
}

/// Where a new subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// Only events published from now on (what flask-sse did).
    Live,
    /// Every event after this `Last-Event-ID` still in history, then live events. The raw text
    /// is kept because a client may send anything; an id we never issued is treated as a gap.
    After(String),
}

/// What a publish whose claim is not current is told (`HubError::NotCurrent`).
pub const NOT_CURRENT: &str =
    "the peer token is not current: this peer id is no longer held under it in this room";

/// Why the hub refused a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubError {
    /// The channel already has `--room-capacity` distinct peers.
    RoomFull { capacity: usize },
    /// `--max-channels` channels exist; no new one is created.
    TooManyChannels { max: usize },
    /// The channel already has `--max-subscribers` streams here.
    TooManySubscribers { max: usize },
    /// The backend cannot take the request now (Redis unreachable); nothing was accepted.
    Unavailable(String),
    /// With `--redis-format flask-sse`, channel names starting with `sigrelay:` would reach
    /// sigrelay's own pub/sub channels.
    Reserved,
    /// The peer id is held (or kept for its holder) under another claim, and the stream did
    /// not prove it is that claim.
    PeerTaken,
    /// A publish's claim is not the room's current claim of its peer id (an earlier one, or
    /// the id is no longer held).
    NotCurrent,
}

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HubError::RoomFull { .. } => f.write_str("room is full"),
            HubError::TooManyChannels { max } => {
                write!(
                    f,
                    "the relay holds its maximum of {max} channels; try later"
                )
            }
            HubError::TooManySubscribers { max } => {
                write!(f, "this channel has its maximum of {max} streams")
            }
            HubError::Unavailable(why) => write!(f, "relay unavailable: {why}"),
            HubError::Reserved => f.write_str("channel names starting with sigrelay: are reserved"),
            HubError::PeerTaken => f.write_str(
                "this peer id is in use in this room; only its holder (token= from its welcome) can take it over",
            ),
            HubError::NotCurrent => f.write_str(NOT_CURRENT),
        }
    }
}

impl std::error::Error for HubError {}

/// Running totals the hub alone can see, read by `/metrics` at scrape time. Plain atomics, so
/// the hub stays free of any metrics library.
#[derive(Debug, Default)]
pub struct HubCounters {
    /// Events sent to a subscriber from history (a `Last-Event-ID` resume, or a lag recovered).
    pub replayed: AtomicU64,
    /// `gap` events: a subscriber was told events it wanted are no longer kept.
    pub gaps: AtomicU64,
    /// Streams open now, over all channels (kept beside the per-channel counts, so reading it
    /// costs the same with a million channels as with none).
    pub subscribers: AtomicU64,
    /// Bytes of history held now over all channels, as the budgets count them.
    pub history_bytes: AtomicU64,
}

impl HubCounters {
    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    pub fn subscribers(&self) -> u64 {
        self.subscribers.load(Ordering::Relaxed)
    }

    pub fn history_bytes(&self) -> u64 {
        self.history_bytes.load(Ordering::Relaxed)
    }
}
