//! The hub: who is subscribed to which channel, and the events each channel has carried.
//!
//! The HTTP layer talks only to the types here; it never learns how fan-out is done. Today the
//! one backend is [`memory`], an in-process map of tokio broadcast channels with a bounded
//! history ring each. The hub knows nothing of hyper, so it is unit-tested without sockets.

mod memory;

pub use memory::{Hub, HubSettings, Subscription};

use bytes::Bytes;

/// One event as it travels to subscribers: already encoded as a complete SSE frame, shared by
/// every subscriber (cloning a `Bytes` bumps a reference count, it copies nothing).
#[derive(Clone, Debug)]
pub struct Event {
    /// `Some` for published messages (kept in history, replayable); `None` for relay-made
    /// events such as presence, which are only meaningful live.
    pub id: Option<u64>,
    pub frame: Bytes,
}

/// What a publish returns to the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub id: u64,
    /// Streams subscribed to the channel when the event was sent.
    pub subscribers: usize,
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

/// Why the hub refused a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubError {
    /// The channel already has `--room-capacity` distinct peers.
    RoomFull { capacity: usize },
}

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HubError::RoomFull { .. } => f.write_str("room is full"),
        }
    }
}

impl std::error::Error for HubError {}
