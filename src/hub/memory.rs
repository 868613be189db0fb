//! The in-memory hub: a sharded map of channel name → [`Channel`], each a tokio broadcast
//! sender plus a bounded history ring, and the reaper that removes channels nobody uses.
//!
//! Invariants worth knowing before touching this file:
//! - Lock order is shard map → channel state; nothing awaits while holding either (std
//!   `Mutex`, held for a few hundred nanoseconds).
//! - A publish assigns the id, appends to history and sends on the broadcast channel under the
//!   channel's lock, so history order, broadcast order and id order are the same; a subscriber
//!   that snapshots history and subscribes under that lock sees every event exactly once.
//! - Ids come from one hub-wide counter seeded with the start time in microseconds: they increase
//!   per channel, and never repeat across a channel being removed and re-created or the server
//!   restarting, so a stale `Last-Event-ID` is recognised as a gap instead of matching a
//!   different event.
//! - The subscriber count changes only under the shard lock (join) or the channel lock (leave),
//!   and the reaper removes a channel only with both held and the count at zero, so a channel is
//!   never removed under a subscriber. The hub-wide count ([`HubCounters::subscribers`]) moves
//!   at the same two places, so `/healthz` and `/metrics` read one atomic, whatever the number
//!   of channels.
//! - History is bounded three ways: `history` events and `history_bytes` per channel, and
//!   `history_budget` over all channels; an event costs its encoded frame plus
//!   [`EVENT_OVERHEAD`] (so a JSON-escaped body is counted at its escaped size). Past a
//!   channel's bounds its oldest events go; past the budget the oldest events hub-wide go
//!   ([`Hub::enforce_budget`], through the `oldest` index, never while holding a channel lock).
//!   What is evicted moves the channel's floor, so a resume from before it gets `gap`. The total
//!   may pass the budget only by the events being published at that moment.
//! - History is where frames live on: the broadcast ring holds a frame only until every
//!   receiver has read it (tokio drops a slot's value when its last expected reader takes it,
//!   and a send with no receiver is not stored), so a frame outlives its eviction from history
//!   only for a subscriber that is behind (at most `broadcast_capacity` frames per channel, and
//!   the batch its writer holds), and such a subscriber is resumed from history or gets `gap`.
//! - A peer id's place holds one [`Claim`] from the stream that took the id free until the
//!   place is let go: a takeover must present that claim (so knowing an id is not enough to
//!   become it), publishes stamped with the id must carry it, and when the holding stream ends
//!   the place is kept for its claim `--peer-grace` longer (a blip or a reload does not free
//!   the id for a stranger). Kept places count toward `--room-capacity`, so they are bounded
//!   like held ones; presence counts held places only.
//!
//! With `--redis` the same map is the instance's local fan-out ([`Hub::new_relay`]): ids,
//! history of record, room capacity and presence come from Redis (`hub/redis.rs`), events arrive
//! through [`Hub::deliver`], and a subscription that ends reports its channel so the cluster's
//! counts are brought up to date. The local ring is then only a cache for lag recovery.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::replay::{replay_since, resume_point};
use super::{Event, HubCounters, HubError, PeerJoin, Published, StartAt};
use crate::names::{ChannelName, PeerId};
use crate::peers::Claim;
use crate::sse;
use crate::sync::lock;

/// Shards of the channel map; a power of two comfortably above the core count, so publishes to
/// different channels rarely touch the same lock.
const SHARDS: usize = 64;

/// Most times a publisher gives way to its channel's readers (`Hub::let_readers_catch_up`).
const CATCH_UP_YIELDS: usize = 16;

/// One shard of the channel map.
type Shard = Mutex<HashMap<ChannelName, Arc<Channel>>>;

/// What one history entry costs beyond its frame: the ring slot, the shared buffer's header and
/// the allocator's, rounded up. Counted so that many tiny events cannot outgrow the budget.
pub const EVENT_OVERHEAD: usize = 96;

/// The history budget's bill for one event.
fn cost(event: &Event) -> usize {
    event.frame.len() + EVENT_OVERHEAD
}

/// Tunables, from the validated config.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Events kept per channel for `Last-Event-ID` replay and lag recovery.
    pub history: usize,
    /// Bytes of history kept per channel (`--history-bytes`; frames plus [`EVENT_OVERHEAD`]).
    pub history_bytes: usize,
    /// Bytes of history kept over all channels (`--history-budget`); past it the oldest events
    /// hub-wide are evicted.
    pub history_budget: usize,
    /// How long a channel with no subscribers keeps its history before it is removed.
    pub history_ttl: Duration,
    /// Distinct peer ids (streams opened with `peer=`) allowed in one channel.
    pub room_capacity: usize,
    /// Slots in each channel's broadcast buffer. tokio allocates them up front for every
    /// channel, so this stays small; a subscriber that falls further behind is resumed from the
    /// (larger) history ring instead.
    pub broadcast_capacity: usize,
    /// Channels held at once (`--max-channels`); a publish or stream that would create one more
    /// is refused, so room names cannot be used to grow memory without bound.
    pub max_channels: usize,
    /// Streams on one channel (`--max-subscribers`), anonymous ones included.
    pub max_subscribers: usize,
    /// How long a peer id's place is kept for its claim after its stream ended
    /// (`--peer-grace`): only that claim's token can take it back meanwhile.
    pub peer_grace: Duration,
}

/// The in-memory hub. Cheap to share behind an `Arc`.
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: RandomState,
    settings: HubSettings,
    /// The last id handed out, hub-wide (see the module docs).
    last_id: AtomicU64,
    /// Cancelled on shutdown; every subscription's stop token is a child of it, so every open
    /// stream ends and graceful shutdown is not held up by SSE bodies that never finish.
    shutdown: CancellationToken,
    next_subscription: AtomicU64,
    /// Channels in the map, kept beside the shards so the `--max-channels` check is one load.
    channels: AtomicU64,
    /// Relay mode (`--redis`): where ending subscriptions report their channel. `None` when this
    /// hub is the whole story.
    relay: Option<mpsc::UnboundedSender<ChannelName>>,
    /// Replays and gaps, for `/metrics`; every channel holds a clone to count its own.
    counters: Arc<HubCounters>,
    /// Channels with history, keyed by (at most) their oldest event's id: where the budget
    /// finds the oldest events hub-wide. A key may lag behind its channel's true oldest id
    /// (it is corrected when the budget looks at it), so a publish does not touch this map
    /// unless its channel had no history. Locked last: after the shard and the channel.
    oldest: Mutex<BTreeMap<u64, Arc<Channel>>>,
}

struct Channel {
    name: ChannelName,
    /// How long a place outlives its stream here: `--peer-grace`, or zero for a relay's
    /// local fan-out (Redis keeps the place for the cluster).
    grace: Duration,
    counters: Arc<HubCounters>,
    tx: broadcast::Sender<Event>,
    state: Mutex<ChannelState>,
}

struct ChannelState {
    /// Published events, oldest first, at most `settings.history` long and
    /// `settings.history_bytes` in cost.
    history: VecDeque<Event>,
    /// What `history` costs ([`cost`]); its part of [`HubCounters::history_bytes`].
    history_bytes: usize,
    /// The key this channel is filed under in [`Hub::oldest`], if it is.
    indexed: Option<u64>,
    /// Events with ids up to here may have existed but are not in `history` (evicted, or from
    /// before this channel was created): resuming after an id below it is a gap.
    floor: u64,
    subscribers: usize,
    peers: Vec<PeerSlot>,
    /// When the last subscriber left (or the channel was created by a publish); `None` while
    /// anyone is subscribed.
    idle_since: Option<Instant>,
    /// The last presence frame sent, repeated to a subscriber that resumes after a lag
    /// (presence is not kept in history).
    presence: Option<bytes::Bytes>,
}

impl ChannelState {
    /// Lets go of places kept past their time.
    fn tidy_places(&mut self, now: Instant) {
        self.peers.retain(|slot| match slot.holder {
            Holder::Stream { .. } => true,
            Holder::Kept { until } => until > now,
        });
    }

    /// The peer ids whose place a stream holds now (presence's `present`), sorted.
    fn held_places(&self) -> Vec<&str> {
        let mut held: Vec<&str> = self
            .peers
            .iter()
            .filter(|slot| matches!(slot.holder, Holder::Stream { .. }))
            .map(|slot| slot.peer.as_str())
            .collect();
        held.sort_unstable();
        held
    }

    /// The presence event for the current counts and places.
    fn presence_frame(&self) -> bytes::Bytes {
        sse::presence_frame(self.subscribers, &self.held_places())
    }

    /// The newest id this channel has carried (or may have carried, for the floor).
    fn newest(&self) -> u64 {
        self.history
            .back()
            .and_then(|e| e.id)
            .unwrap_or(self.floor)
            .max(self.floor)
    }

    /// Appends a published event to the history ring, then evicts the oldest events while the
    /// channel holds more than `settings.history` events or `settings.history_bytes` (an event
    /// larger than that alone is delivered but not kept: the floor moves past it).
    fn remember(&mut self, event: &Event, settings: &HubSettings, counters: &HubCounters) {
        if event.id.is_none() {
            return;
        }
        self.history.push_back(event.clone());
        self.history_bytes += cost(event);
        counters
            .history_bytes
            .fetch_add(cost(event) as u64, Ordering::Relaxed);
        while self.history.len() > settings.history || self.history_bytes > settings.history_bytes {
            self.evict_oldest(counters);
        }
    }

    /// Drops the oldest event from history, moving the floor to its id. Returns its cost.
    fn evict_oldest(&mut self, counters: &HubCounters) -> usize {
        let Some(evicted) = self.history.pop_front() else {
            return 0;
        };
        self.floor = self.floor.max(evicted.id.unwrap_or(0));
        let cost = cost(&evicted);
        self.history_bytes -= cost;
        counters
            .history_bytes
            .fetch_sub(cost as u64, Ordering::Relaxed);
        cost
    }

    /// Forgets all history (the channel is being removed).
    fn forget(&mut self, counters: &HubCounters) {
        while self.evict_oldest(counters) > 0 {}
    }

    /// Sends a presence event to everyone subscribed and keeps it for lag recovery.
    fn announce(&mut self, tx: &broadcast::Sender<Event>, frame: bytes::Bytes) {
        self.presence = Some(frame.clone());
        let _ = tx.send(Event::broadcast(None, frame));
    }
}

/// A channel's local state as the relay backend sees it (see [`Hub::local_room`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRoom {
    pub subscribers: usize,
    /// Peers holding a place through this instance, with the subscription that holds it and
    /// the place's claim.
    pub peers: Vec<(PeerId, u64, Claim)>,
    /// The newest event id delivered here.
    pub newest: u64,
}

/// A peer id's place in a room. A new stream with the same id and the place's claim takes it
/// over and ends the old stream (a page reload must never lock its own user out); without the
/// claim it is refused and the holder is left alone.
struct PeerSlot {
    peer: PeerId,
    claim: Claim,
    holder: Holder,
}

enum Holder {
    /// A stream holds the place; `stop` ends it.
    Stream {
        subscription: u64,
        stop: CancellationToken,
    },
    /// The stream ended; the place is kept for its claim until then.
    Kept { until: Instant },
}

impl Hub {
    pub fn new(settings: HubSettings, shutdown: CancellationToken) -> Self {
        Self::build(settings, shutdown, None)
    }

    /// The local fan-out of a relay instance: ending subscriptions send their channel to
    /// `left`, and history, capacity and presence are left to the cluster.
    pub fn new_relay(
        settings: HubSettings,
        shutdown: CancellationToken,
        left: mpsc::UnboundedSender<ChannelName>,
    ) -> Self {
        Self::build(settings, shutdown, Some(left))
    }

    fn build(
        settings: HubSettings,
        shutdown: CancellationToken,
        relay: Option<mpsc::UnboundedSender<ChannelName>>,
    ) -> Self {
        let start_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            settings,
            last_id: AtomicU64::new(start_micros),
            shutdown,
            next_subscription: AtomicU64::new(1),
            channels: AtomicU64::new(0),
            relay,
            counters: Arc::default(),
            oldest: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    fn shard(&self, name: &ChannelName) -> MutexGuard<'_, HashMap<ChannelName, Arc<Channel>>> {
        let index = self.hasher.hash_one(name) as usize % SHARDS;
        lock(&self.shards[index])
    }

    /// The channel `name` from a locked shard, created if it does not exist and the
    /// `--max-channels` limit allows one more.
    fn channel_in(
        &self,
        shard: &mut HashMap<ChannelName, Arc<Channel>>,
        name: &ChannelName,
    ) -> Result<Arc<Channel>, HubError> {
        if let Some(chan) = shard.get(name) {
            return Ok(chan.clone());
        }
        let max = self.settings.max_channels;
        if self.channels.load(Ordering::Relaxed) >= max as u64 {
            return Err(HubError::TooManyChannels { max });
        }
        self.channels.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(channel = %name, "channel created");
        let (tx, _) = broadcast::channel(self.settings.broadcast_capacity);
        // A new channel may have carried events before (removed, or on an earlier run), so
        // resuming from anything issued so far is a gap. A relay's ids come from the cluster
        // and its replay from Redis, so its local ring starts from nothing.
        let floor = match self.relay {
            None => self.last_id.load(Ordering::SeqCst),
            Some(_) => 0,
        };
        let grace = match self.relay {
            None => self.settings.peer_grace,
            Some(_) => Duration::ZERO,
        };
        let chan = Arc::new(Channel {
            name: name.clone(),
            grace,
            counters: self.counters.clone(),
            tx,
            state: Mutex::new(ChannelState {
                history: VecDeque::new(),
                history_bytes: 0,
                indexed: None,
                floor,
                subscribers: 0,
                peers: Vec::new(),
                idle_since: Some(Instant::now()),
                presence: None,
            }),
        });
        shard.insert(name.clone(), chan.clone());
        Ok(chan)
    }

    /// Publishes one message: encodes it once, stores it in history and sends it to every
    /// current subscriber of `channel`. With `sender`, only if the room's place for that peer
    /// id (held, or kept) has that claim. With `to`, only that peer id's streams get it (live,
    /// and from history on a resume).
    pub fn publish(
        &self,
        channel: &ChannelName,
        tail: &sse::MessageTail,
        sender: Option<(&PeerId, Claim)>,
        to: Option<&PeerId>,
    ) -> Result<Published, HubError> {
        let mut shard = self.shard(channel);
        if sender.is_some() && !shard.contains_key(channel) {
            return Err(HubError::NotCurrent);
        }
        let chan = self.channel_in(&mut shard, channel)?;
        // The shard lock is held across the publish so the reaper cannot remove the channel
        // between lookup and send (the event would vanish with it).
        let mut state = lock(&chan.state);
        if let Some((peer, claim)) = sender {
            state.tidy_places(Instant::now());
            if !state
                .peers
                .iter()
                .any(|slot| slot.peer == *peer && slot.claim == claim)
            {
                return Err(HubError::NotCurrent);
            }
        }
        let id = self.last_id.fetch_add(1, Ordering::SeqCst) + 1;
        let event = Event {
            id: Some(id),
            frame: tail.with_id(id),
            to: to.cloned(),
        };
        self.keep(&chan, &mut state, &event);
        let subscribers = state.subscribers;
        // An error only means nobody is subscribed right now; history still has the event.
        let _ = chan.tx.send(event);
        let queued = chan.tx.len();
        drop(state);
        drop(shard);
        self.enforce_budget();
        Ok(Published {
            id,
            subscribers,
            queued,
        })
    }

    /// Puts `event` in `chan`'s history (its state locked by the caller) and files the channel
    /// in the oldest-first index if it had no history.
    fn keep(&self, chan: &Arc<Channel>, state: &mut ChannelState, event: &Event) {
        state.remember(event, &self.settings, &self.counters);
        if state.indexed.is_none() {
            if let Some(key) = state.history.front().and_then(|e| e.id) {
                state.indexed = Some(key);
                lock(&self.oldest).insert(key, chan.clone());
            }
        }
    }

    /// Evicts the oldest events hub-wide until history is within `--history-budget`. Called
    /// with no lock held; takes the index, then one channel at a time (index released first,
    /// since everywhere else the index is locked after a channel).
    pub fn enforce_budget(&self) {
        let budget = self.settings.history_budget as u64;
        while self.counters.history_bytes.load(Ordering::Relaxed) > budget {
            let Some((key, chan)) = lock(&self.oldest).pop_first() else {
                return;
            };
            let mut state = lock(&chan.state);
            if state.indexed != Some(key) {
                // Filed again (or removed) meanwhile by someone else; that entry stands.
                continue;
            }
            let front = state.history.front().and_then(|e| e.id);
            match front {
                // Older than the true front: a lagging key. Re-file it where it belongs.
                Some(id) if id > key => {}
                Some(_) => {
                    state.evict_oldest(&self.counters);
                }
                None => {}
            }
            state.indexed = state.history.front().map(|e| e.id.unwrap_or(0));
            if let Some(new_key) = state.indexed {
                lock(&self.oldest).insert(new_key, chan.clone());
            }
        }
    }

    /// How full a channel's broadcast buffer may be before a publish gives way to its readers
    /// ([`Hub::let_readers_catch_up`]): three quarters, so a reader that keeps up is never
    /// lagged (and one that falls a little behind still resumes from history, which is longer).
    pub fn catch_up_above(&self) -> usize {
        self.settings.broadcast_capacity * 3 / 4
    }

    /// Backpressure for a publisher that outruns its readers (pipelined publishes are read
    /// and published in one go, and woken subscriber tasks wait behind the publisher on the
    /// same worker): with `queued` events in `channel`'s broadcast buffer, give way while it is
    /// over [`Hub::catch_up_above`] and draining, a few times at most. A subscriber that does not
    /// read (its buffer stays full) costs one yield and never blocks the publisher; it is
    /// resumed from history later.
    pub async fn let_readers_catch_up(&self, channel: &ChannelName, queued: usize) {
        let limit = self.catch_up_above();
        let now = || self.shard(channel).get(channel).map_or(0, |c| c.tx.len());
        let mut before = queued;
        for _ in 0..CATCH_UP_YIELDS {
            tokio::task::yield_now().await;
            let queued = now();
            if queued <= limit || queued >= before {
                return;
            }
            before = queued;
        }
    }

    /// Relay mode: hands an event that came from the cluster to this instance's subscribers of
    /// `channel`. Nothing happens when no one here listens (the cluster keeps history), and an
    /// event this channel has already carried is dropped, so a catch-up read that overlaps the
    /// live feed delivers nothing twice. Returns whether the event went out.
    pub fn deliver(&self, channel: &ChannelName, event: Event) -> bool {
        let shard = self.shard(channel);
        let Some(chan) = shard.get(channel).cloned() else {
            return false;
        };
        let mut state = lock(&chan.state);
        match event.id {
            Some(id) if id <= state.newest() => return false,
            // The local ring is bounded like a lone hub's history, by the same budgets.
            Some(_) => self.keep(&chan, &mut state, &event),
            None => state.presence = Some(event.frame.clone()),
        }
        let _ = chan.tx.send(event);
        drop(state);
        drop(shard);
        self.enforce_budget();
        true
    }

    /// Relay mode: ends this instance's stream of `peer` in `channel` (another instance took
    /// the place over), unless it is subscription `keep`.
    pub fn stop_peer(&self, channel: &ChannelName, peer: &PeerId, keep: Option<u64>) {
        let shard = self.shard(channel);
        let Some(chan) = shard.get(channel) else {
            return;
        };
        let mut state = lock(&chan.state);
        state.peers.retain(|slot| {
            let stale = slot.peer == *peer
                && match &slot.holder {
                    Holder::Stream { subscription, stop } if Some(*subscription) != keep => {
                        stop.cancel();
                        true
                    }
                    _ => false,
                };
            !stale
        });
    }

    /// Relay mode: `subscription` holds `peer`'s place here under `claim` (the cluster gave it
    /// the place); any other local stream of that peer ends.
    pub fn hold(&self, subscription: &Subscription, peer: PeerId, claim: Claim) {
        self.stop_peer(subscription.channel(), &peer, Some(subscription.id));
        let mut state = lock(&subscription.channel.state);
        state.peers.push(PeerSlot {
            peer,
            claim,
            holder: Holder::Stream {
                subscription: subscription.id,
                stop: subscription.stop.clone(),
            },
        });
    }

    /// Relay mode: what this instance holds of `channel`, `None` if it holds nothing.
    pub fn local_room(&self, channel: &ChannelName) -> Option<LocalRoom> {
        let shard = self.shard(channel);
        let chan = shard.get(channel)?;
        let state = lock(&chan.state);
        Some(LocalRoom {
            subscribers: state.subscribers,
            peers: state
                .peers
                .iter()
                .filter_map(|s| match s.holder {
                    Holder::Stream { subscription, .. } => {
                        Some((s.peer.clone(), subscription, s.claim))
                    }
                    Holder::Kept { .. } => None,
                })
                .collect(),
            newest: state.newest(),
        })
    }

    /// Every channel this instance holds (relay mode: for the heartbeat and catch-up).
    pub fn channel_names(&self) -> Vec<ChannelName> {
        self.shards
            .iter()
            .flat_map(|s| lock(s).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Subscribes to `channel`, creating it if needed. With a `peer`, the stream takes one of
    /// the room's `room_capacity` places, or takes over that peer id's place if it proves the
    /// place's claim (see the module docs).
    pub fn subscribe(
        &self,
        channel: &ChannelName,
        start: StartAt,
        peer: Option<PeerJoin>,
    ) -> Result<Subscription, HubError> {
        self.join(channel, peer, Some(start))
    }

    /// Relay mode: joins this instance's fan-out of `channel` with nothing queued, no place and
    /// no capacity check (the cluster does those; [`Hub::hold`] records the place it gives);
    /// [`Subscription::start_with`] sets the replay.
    pub fn attach(&self, channel: &ChannelName) -> Result<Subscription, HubError> {
        self.join(channel, None, None)
    }

    fn join(
        &self,
        channel: &ChannelName,
        peer: Option<PeerJoin>,
        start: Option<StartAt>,
    ) -> Result<Subscription, HubError> {
        let subscription_id = self.next_subscription.fetch_add(1, Ordering::Relaxed);
        let stop = self.shutdown.child_token();
        let mut shard = self.shard(channel);
        let chan = self.channel_in(&mut shard, channel)?;
        let mut state = lock(&chan.state);
        if state.subscribers >= self.settings.max_subscribers {
            return Err(HubError::TooManySubscribers {
                max: self.settings.max_subscribers,
            });
        }

        let mut claim = None;
        let identity = peer.as_ref().map(|join| join.peer.clone());
        if let Some(PeerJoin { peer, proof }) = peer {
            state.tidy_places(Instant::now());
            let holder = Holder::Stream {
                subscription: subscription_id,
                stop: stop.clone(),
            };
            if let Some(slot) = state.peers.iter_mut().find(|s| s.peer == peer) {
                if proof != Some(slot.claim) {
                    tracing::debug!(channel = %channel, peer = peer.as_str(), "unproven takeover refused");
                    return Err(HubError::PeerTaken);
                }
                tracing::debug!(channel = %channel, peer = peer.as_str(), "peer took over its place");
                if let Holder::Stream { stop, .. } = &slot.holder {
                    stop.cancel();
                }
                slot.holder = holder;
                claim = Some(slot.claim);
            } else if state.peers.len() >= self.settings.room_capacity {
                return Err(HubError::RoomFull {
                    capacity: self.settings.room_capacity,
                });
            } else {
                // A free id: a new claim, whatever token came along (it was for an earlier one).
                let fresh = Claim::random();
                state.peers.push(PeerSlot {
                    peer,
                    claim: fresh,
                    holder,
                });
                claim = Some(fresh);
            }
        }

        state.subscribers += 1;
        self.counters.subscribers.fetch_add(1, Ordering::Relaxed);
        state.idle_since = None;
        let rx = chan.tx.subscribe();
        let mut pending = VecDeque::new();
        let newest = self.last_id.load(Ordering::SeqCst);
        let last_id = match start {
            None => 0,
            Some(StartAt::Live) => newest,
            Some(StartAt::After(raw)) => {
                let after = resume_point(&raw, newest);
                replay_since(
                    state.floor,
                    state.history.iter(),
                    after,
                    &raw,
                    &mut pending,
                    &chan.counters,
                )
            }
        };
        if self.relay.is_none() {
            // The newcomer gets the same presence event as everyone else: it was subscribed
            // above. (A relay's presence counts the whole cluster and comes from there.)
            let frame = state.presence_frame();
            state.announce(&chan.tx, frame);
        }
        drop(state);
        drop(shard);

        Ok(Subscription {
            channel: chan,
            rx,
            pending,
            last_id,
            stopped: Box::pin(stop.clone().cancelled_owned()),
            stop,
            ready_in_a_row: 0,
            id: subscription_id,
            claim,
            peer: identity,
            left: self.relay.clone(),
        })
    }

    /// Removes channels that have had no subscriber for `history_ttl`. Returns how many.
    pub fn reap_idle(&self) -> usize {
        let now = Instant::now();
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            map.retain(|name, chan| {
                let mut state = lock(&chan.state);
                // A place kept for its holder keeps the room (it is bounded by the capacity).
                state.tidy_places(now);
                let expired = state.subscribers == 0
                    && state.peers.is_empty()
                    && state
                        .idle_since
                        .is_some_and(|t| now.duration_since(t) >= self.settings.history_ttl);
                if expired {
                    tracing::debug!(channel = %name, "channel removed after idle ttl");
                    removed += 1;
                    state.forget(&self.counters);
                    if let Some(key) = state.indexed.take() {
                        lock(&self.oldest).remove(&key);
                    }
                }
                !expired
            });
        }
        self.channels.fetch_sub(removed as u64, Ordering::Relaxed);
        removed
    }

    /// Runs [`Hub::reap_idle`] periodically until shutdown.
    pub async fn run_reaper(&self) {
        let period = (self.settings.history_ttl / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => { self.reap_idle(); }
            }
        }
    }

    /// Replay and gap totals since start, shared (`/metrics` keeps a handle).
    pub fn counters_handle(&self) -> Arc<HubCounters> {
        self.counters.clone()
    }

    /// Channels currently in the map (with or without subscribers).
    pub fn channel_count(&self) -> usize {
        self.channels.load(Ordering::Relaxed) as usize
    }

    /// Streams currently subscribed, over all channels: one load, not a walk over channels
    /// (`/healthz` and `/metrics` must not cost more as rooms are created).
    pub fn subscriber_count(&self) -> usize {
        self.counters.subscribers() as usize
    }

    /// Bytes of history held over all channels (frames plus [`EVENT_OVERHEAD`] each).
    pub fn history_bytes(&self) -> usize {
        self.counters.history_bytes() as usize
    }
}

/// How many receives in a row may skip looking at the stop signal first.
const STOP_CHECK_EVERY: u32 = 32;

/// One open stream's place in a channel. Yields frames with [`Subscription::recv`]; dropping it
/// leaves the channel (and tells the others).
pub struct Subscription {
    channel: Arc<Channel>,
    rx: broadcast::Receiver<Event>,
    /// Replayed history, gap notices and the like, sent before anything from `rx`.
    pending: VecDeque<Event>,
    /// The newest id this subscriber has been given (or chose to skip); anything from `rx` at
    /// or below it is a duplicate of a replayed event and is dropped.
    last_id: u64,
    /// Resolves when the stream must end (shutdown, or this peer reconnected elsewhere).
    /// Made once and kept, so a receive does not build a new cancellation future each time.
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
    /// What `stopped` waits for; a place this stream holds keeps a clone to end it.
    stop: CancellationToken,
    /// Receives since `stopped` was last looked at first.
    ready_in_a_row: u32,
    id: u64,
    /// The claim of the place this stream holds (`None`: anonymous).
    claim: Option<Claim>,
    /// The peer id whose place this stream holds (`None`: anonymous): addressed events for
    /// another id are skipped, live and replayed alike.
    peer: Option<PeerId>,
    /// Relay mode: told this subscription's channel when it ends.
    left: Option<mpsc::UnboundedSender<ChannelName>>,
}

impl Subscription {
    /// The next frame for this subscriber, or `None` when the stream must end (shutdown, or the
    /// same peer opened a newer stream).
    pub async fn recv(&mut self) -> Option<bytes::Bytes> {
        loop {
            if let Some(frame) = self.next_pending() {
                return Some(frame);
            }
            // Events first: checking the stop signal takes a lock, so on a busy stream it is
            // looked at only when no event is ready, or after `STOP_CHECK_EVERY` in a row (so
            // a firehose cannot keep a stream alive past shutdown or a takeover).
            self.ready_in_a_row += 1;
            let received = if self.ready_in_a_row < STOP_CHECK_EVERY {
                tokio::select! {
                    biased;
                    received = self.rx.recv() => received,
                    _ = &mut self.stopped => return None,
                }
            } else {
                self.ready_in_a_row = 0;
                tokio::select! {
                    biased;
                    _ = &mut self.stopped => return None,
                    received = self.rx.recv() => received,
                }
            };
            match received {
                Ok(event) => {
                    if let Some(frame) = self.accept(event) {
                        return Some(frame);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::debug!(channel = %self.channel.name, skipped, "subscriber lagged; resuming from history");
                    self.resume_from_history();
                }
                // The sender lives in the channel we hold, so this cannot happen; end cleanly.
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next frame if one is ready now, without waiting: lets a writer gather every ready
    /// frame into one write. `None` means nothing is ready (or the stream is ending, which the
    /// next [`Subscription::recv`] reports).
    pub fn try_recv(&mut self) -> Option<bytes::Bytes> {
        loop {
            if let Some(frame) = self.next_pending() {
                return Some(frame);
            }
            match self.rx.try_recv() {
                Ok(event) => {
                    if let Some(frame) = self.accept(event) {
                        return Some(frame);
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.resume_from_history(),
                Err(_) => return None,
            }
        }
    }

    /// The next queued (replayed) frame meant for this stream, skipping events addressed to
    /// another peer id.
    fn next_pending(&mut self) -> Option<bytes::Bytes> {
        while let Some(event) = self.pending.pop_front() {
            if !event.is_for(self.peer.as_ref()) {
                continue;
            }
            if let Some(id) = event.id {
                self.last_id = self.last_id.max(id);
            }
            return Some(event.frame);
        }
        None
    }

    /// A live event's frame, or `None` for a duplicate of one already replayed or an event
    /// addressed to another peer id.
    fn accept(&mut self, event: Event) -> Option<bytes::Bytes> {
        if !event.is_for(self.peer.as_ref()) {
            return None;
        }
        match event.id {
            Some(id) if id <= self.last_id => None,
            Some(id) => {
                self.last_id = id;
                Some(event.frame)
            }
            None => Some(event.frame),
        }
    }

    /// After a lag: re-subscribe and queue what was missed from history (or a gap notice).
    fn resume_from_history(&mut self) {
        let state = lock(&self.channel.state);
        self.rx = self.channel.tx.subscribe();
        let last = self.last_id;
        self.last_id = replay_since(
            state.floor,
            state.history.iter(),
            Some(last),
            &last.to_string(),
            &mut self.pending,
            &self.channel.counters,
        );
        // Presence events are not kept in history; repeat the latest one.
        if let Some(frame) = state.presence.clone() {
            self.pending.push_back(Event::broadcast(None, frame));
        }
    }

    /// Relay mode: what to send before live events (replay from the cluster's history, gap
    /// notices), and the id it ends at; live events up to that id are duplicates and dropped.
    pub fn start_with(&mut self, pending: VecDeque<Event>, last_id: u64) {
        self.pending = pending;
        self.last_id = last_id;
    }

    /// This subscription's number, unique within the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The claim of the peer id's place this stream holds: what its `welcome` token carries.
    pub fn claim(&self) -> Option<Claim> {
        self.claim
    }

    /// Relay mode: the place the cluster gave this stream (its peer id and claim).
    pub fn set_place(&mut self, peer: PeerId, claim: Claim) {
        self.peer = Some(peer);
        self.claim = Some(claim);
    }

    /// The channel this subscription belongs to.
    pub fn channel(&self) -> &ChannelName {
        &self.channel.name
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = lock(&self.channel.state);
        state.subscribers -= 1;
        self.channel
            .counters
            .subscribers
            .fetch_sub(1, Ordering::Relaxed);
        let id = self.id;
        // The place stays the claim's for `grace` (a blip, a reload); with none, it is free.
        let until = Instant::now() + self.channel.grace;
        for slot in state.peers.iter_mut() {
            if matches!(slot.holder, Holder::Stream { subscription, .. } if subscription == id) {
                slot.holder = Holder::Kept { until };
            }
        }
        if self.channel.grace.is_zero() {
            state.tidy_places(until);
        }
        if state.subscribers == 0 {
            state.idle_since = Some(Instant::now());
        }
        if let Some(left) = &self.left {
            // The cluster recounts and announces; a closed receiver means shutdown.
            let _ = left.send(self.channel.name.clone());
        } else if state.subscribers > 0 {
            let frame = state.presence_frame();
            state.announce(&self.channel.tx, frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hub(history: usize, broadcast_capacity: usize) -> Hub {
        Hub::new(
            HubSettings {
                history,
                history_bytes: 1 << 30,
                history_budget: 1 << 30,
                history_ttl: Duration::from_millis(50),
                room_capacity: 2,
                broadcast_capacity,
                max_channels: 3,
                max_subscribers: 4,
                peer_grace: Duration::from_millis(200),
            },
            CancellationToken::new(),
        )
    }

    /// A hub with byte budgets: `per_channel` and `total` bytes of history, room for many
    /// channels and events.
    fn budgeted(per_channel: usize, total: usize) -> Hub {
        Hub::new(
            HubSettings {
                history: 1000,
                history_bytes: per_channel,
                history_budget: total,
                history_ttl: Duration::from_millis(50),
                room_capacity: 2,
                broadcast_capacity: 16,
                max_channels: 1000,
                max_subscribers: 4,
                peer_grace: Duration::from_millis(200),
            },
            CancellationToken::new(),
        )
    }

    /// Every channel's history cost, recounted from the events themselves.
    fn recount(hub: &Hub) -> Vec<usize> {
        hub.shards
            .iter()
            .flat_map(|s| {
                lock(s)
                    .values()
                    .map(|c| lock(&c.state).history.iter().map(cost).sum())
                    .collect::<Vec<usize>>()
            })
            .collect()
    }

    fn room() -> ChannelName {
        ChannelName::parse("room").unwrap()
    }

    fn publish(hub: &Hub, body: &str) -> u64 {
        hub.publish(&room(), &sse::MessageTail::new("m", body), None, None)
            .unwrap()
            .id
    }

    /// Frames until the subscription has nothing queued, skipping presence.
    async fn drain(sub: &mut Subscription) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Some(frame)) =
            tokio::time::timeout(Duration::from_millis(100), sub.recv()).await
        {
            let text = String::from_utf8(frame.to_vec()).unwrap();
            if !text.contains("event: presence") {
                out.push(text);
            }
        }
        out
    }

    #[tokio::test]
    async fn lag_within_history_loses_nothing() {
        let hub = hub(64, 4);
        let mut sub = hub.subscribe(&room(), StartAt::Live, None).unwrap();
        let ids: Vec<u64> = (0..40).map(|i| publish(&hub, &i.to_string())).collect();
        let frames = drain(&mut sub).await;
        let got: Vec<String> = frames
            .iter()
            .map(|f| f.lines().next().unwrap().to_owned())
            .collect();
        let want: Vec<String> = ids.iter().map(|id| format!("id: {id}")).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn lag_beyond_history_reports_a_gap() {
        let hub = hub(8, 4);
        let mut sub = hub.subscribe(&room(), StartAt::Live, None).unwrap();
        let ids: Vec<u64> = (0..40).map(|i| publish(&hub, &i.to_string())).collect();
        let frames = drain(&mut sub).await;
        assert!(frames[0].contains("event: gap"), "{frames:?}");
        let tail: Vec<String> = frames[1..]
            .iter()
            .map(|f| f.lines().next().unwrap().to_owned())
            .collect();
        let want: Vec<String> = ids[32..].iter().map(|id| format!("id: {id}")).collect();
        assert_eq!(tail, want);
    }

    #[tokio::test]
    async fn resume_replays_exactly_what_was_missed() {
        let hub = hub(64, 16);
        let ids: Vec<u64> = (0..10).map(|i| publish(&hub, &i.to_string())).collect();
        let mut sub = hub
            .subscribe(&room(), StartAt::After(ids[3].to_string()), None)
            .unwrap();
        let later = publish(&hub, "later");
        let frames = drain(&mut sub).await;
        let got: Vec<String> = frames
            .iter()
            .map(|f| f.lines().next().unwrap().to_owned())
            .collect();
        let mut want: Vec<String> = ids[4..].iter().map(|id| format!("id: {id}")).collect();
        want.push(format!("id: {later}"));
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn unknown_ids_are_gaps() {
        let hub = hub(64, 16);
        publish(&hub, "x");
        for bad in [
            "garbage",
            "0",
            "99999999999999999999",
            &u64::MAX.to_string(),
        ] {
            let mut sub = hub
                .subscribe(&room(), StartAt::After(bad.to_owned()), None)
                .unwrap();
            let frames = drain(&mut sub).await;
            assert!(frames[0].contains("event: gap"), "{bad}: {frames:?}");
        }
    }

    /// Issue 12 item 2: bodies that escape six-fold, into ever new channels and into one,
    /// never make history pass the per-channel or the total budget, and a resume from before
    /// what was evicted gets `gap` (then what is left).
    #[tokio::test]
    async fn history_stays_within_its_byte_budgets_and_evicted_resumes_get_a_gap() {
        const PER_CHANNEL: usize = 8 * 1024;
        const TOTAL: usize = 40 * 1024;
        let hub = budgeted(PER_CHANNEL, TOTAL);
        let escaped = "\u{1}".repeat(1000); // 1,000 bytes, about 6,000 once escaped
        let name = |i: usize| ChannelName::parse(&format!("r{i}")).unwrap();
        let mut first_ids = Vec::new();
        for i in 0..200 {
            let tail = sse::MessageTail::new("m", &escaped);
            let id = hub.publish(&name(i % 50), &tail, None, None).unwrap().id;
            if i < 50 {
                first_ids.push(id);
            }
            let counts = recount(&hub);
            let total: usize = counts.iter().sum();
            assert_eq!(total, hub.history_bytes(), "the running total is exact");
            assert!(total <= TOTAL, "after {i}: {total} > {TOTAL}");
            assert!(counts.iter().all(|c| *c <= PER_CHANNEL), "{counts:?}");
        }
        // Spread over 50 channels the total budget bites (an event costs ~6 KB, 40 KB in all).
        assert!(
            hub.history_bytes() > TOTAL - 7 * 1024,
            "{}",
            hub.history_bytes()
        );
        // One channel alone: its own budget bites first.
        for _ in 0..20 {
            publish(&hub, &escaped);
        }
        let room_bytes: usize = lock(&hub.shard(&room()).get(&room()).unwrap().state).history_bytes;
        assert!(
            room_bytes <= PER_CHANNEL && room_bytes > PER_CHANNEL / 2,
            "{room_bytes}"
        );
        // The first channel's first event is long gone: resuming after it is a gap.
        let mut sub = hub
            .subscribe(&name(0), StartAt::After(first_ids[0].to_string()), None)
            .unwrap();
        let frames = drain(&mut sub).await;
        assert!(
            frames.first().is_some_and(|f| f.contains("event: gap")),
            "{frames:?}"
        );
        // An event larger than a channel's budget is delivered but not kept.
        let mut live = hub.subscribe(&room(), StartAt::Live, None).unwrap();
        let big = "x".repeat(PER_CHANNEL + 1);
        let id = publish(&hub, &big);
        assert!(drain(&mut live).await[0].starts_with(&format!("id: {id}\n")));
        let chan = hub.shard(&room()).get(&room()).unwrap().clone();
        assert!(lock(&chan.state).history.is_empty());
        assert_eq!(lock(&chan.state).floor, id);
    }

    /// The broadcast ring does not keep a frame once every subscriber has read it: after
    /// eviction from history the subscriber's copy is the only one left.
    #[tokio::test]
    async fn a_frame_read_by_everyone_and_evicted_is_held_nowhere() {
        let hub = budgeted(4 * 1024, 1 << 20);
        let mut a = hub.subscribe(&room(), StartAt::Live, None).unwrap();
        let mut b = hub.subscribe(&room(), StartAt::Live, None).unwrap();
        let id = publish(&hub, &"y".repeat(3000));
        let frame = loop {
            let f = a.recv().await.unwrap();
            if f.starts_with(format!("id: {id}\n").as_bytes()) {
                break f;
            }
        };
        while !b
            .recv()
            .await
            .unwrap()
            .starts_with(format!("id: {id}\n").as_bytes())
        {}
        assert!(!frame.is_unique(), "history still holds it");
        publish(&hub, &"z".repeat(3000)); // evicts it from history (4 KiB per channel)
        drain(&mut a).await;
        drain(&mut b).await;
        assert!(
            frame.is_unique(),
            "the broadcast ring or history still holds the frame"
        );
    }

    /// Issue 12 item 10: the subscriber count is kept, not counted over channels.
    #[tokio::test]
    async fn subscriber_count_is_kept_as_streams_come_and_go() {
        let hub = budgeted(1 << 20, 1 << 20);
        let name = |i: usize| ChannelName::parse(&format!("c{i}")).unwrap();
        let subs: Vec<_> = (0..30)
            .map(|i| hub.subscribe(&name(i % 10), StartAt::Live, None).unwrap())
            .collect();
        assert_eq!(hub.subscriber_count(), 30);
        assert_eq!(hub.channel_count(), 10);
        drop(subs);
        assert_eq!(hub.subscriber_count(), 0);
        // A refused subscription counts nothing.
        let held: Vec<_> = (0..4)
            .map(|_| hub.subscribe(&room(), StartAt::Live, None).unwrap())
            .collect();
        assert!(hub.subscribe(&room(), StartAt::Live, None).is_err());
        assert_eq!(hub.subscriber_count(), 4);
        drop(held);
        assert_eq!(hub.subscriber_count(), 0);
    }

    fn join(p: &str, proof: Option<Claim>) -> Option<PeerJoin> {
        Some(PeerJoin {
            peer: PeerId::parse(p).unwrap(),
            proof,
        })
    }

    async fn ends(sub: &mut Subscription) -> bool {
        tokio::time::timeout(Duration::from_secs(1), async {
            while sub.recv().await.is_some() {}
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn capacity_and_takeover() {
        let hub = hub(64, 16);
        let mut a = hub
            .subscribe(&room(), StartAt::Live, join("a", None))
            .unwrap();
        let claim = a.claim().unwrap();
        let _b = hub
            .subscribe(&room(), StartAt::Live, join("b", None))
            .unwrap();
        assert!(matches!(
            hub.subscribe(&room(), StartAt::Live, join("c", None)),
            Err(HubError::RoomFull { capacity: 2 })
        ));
        // Anonymous (seed) streams are not counted.
        let _seed = hub.subscribe(&room(), StartAt::Live, None).unwrap();
        // "a" reconnecting with its claim takes over its own place and ends the old stream.
        let a2 = hub
            .subscribe(&room(), StartAt::Live, join("a", Some(claim)))
            .unwrap();
        assert_eq!(a2.claim(), Some(claim), "a takeover keeps the claim");
        assert!(ends(&mut a).await);
        drop(a);
        assert!(hub
            .subscribe(&room(), StartAt::Live, join("c", None))
            .is_err());
    }

    #[tokio::test]
    async fn an_unproven_takeover_is_refused_and_a_kept_place_waits_for_its_claim() {
        let hub = hub(64, 16);
        let tail = sse::MessageTail::new("m", "x");
        let alice = PeerId::parse("alice").unwrap();
        let mut a = hub
            .subscribe(&room(), StartAt::Live, join("alice", None))
            .unwrap();
        let claim = a.claim().unwrap();
        for proof in [None, Some(Claim::random())] {
            assert_eq!(
                hub.subscribe(&room(), StartAt::Live, join("alice", proof))
                    .err(),
                Some(HubError::PeerTaken)
            );
        }
        // The holder was left alone and still publishes under its claim; another does not.
        hub.publish(&room(), &tail, Some((&alice, claim)), None)
            .unwrap();
        assert_eq!(
            hub.publish(&room(), &tail, Some((&alice, Claim::random())), None)
                .err(),
            Some(HubError::NotCurrent)
        );
        assert!(!drain(&mut a).await.is_empty(), "alice's stream is up");
        // Her stream ends: the place is kept for her claim during the grace.
        drop(a);
        assert_eq!(
            hub.subscribe(&room(), StartAt::Live, join("alice", None))
                .err(),
            Some(HubError::PeerTaken)
        );
        hub.publish(&room(), &tail, Some((&alice, claim)), None)
            .unwrap();
        let back = hub
            .subscribe(&room(), StartAt::Live, join("alice", Some(claim)))
            .unwrap();
        assert_eq!(back.claim(), Some(claim));
        drop(back);
        // After the grace the id is free: the next stream gets a new claim, and the old
        // claim can neither publish nor take it back.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut stranger = hub
            .subscribe(&room(), StartAt::Live, join("alice", Some(claim)))
            .unwrap();
        let second = stranger.claim().unwrap();
        assert_ne!(second, claim);
        assert_eq!(
            hub.publish(&room(), &tail, Some((&alice, claim)), None)
                .err(),
            Some(HubError::NotCurrent)
        );
        assert_eq!(
            hub.subscribe(&room(), StartAt::Live, join("alice", Some(claim)))
                .err(),
            Some(HubError::PeerTaken)
        );
        assert!(!ends(&mut stranger).await, "the holder stays up");
        // A claim in a room that does not exist is not current (and creates no room).
        let nowhere = ChannelName::parse("nowhere").unwrap();
        assert_eq!(
            hub.publish(&nowhere, &tail, Some((&alice, second)), None)
                .err(),
            Some(HubError::NotCurrent)
        );
        assert_eq!(hub.channel_count(), 1);
    }

    #[tokio::test]
    async fn kept_places_count_toward_capacity_and_keep_the_room() {
        let hub = hub(64, 16);
        let a = hub
            .subscribe(&room(), StartAt::Live, join("a", None))
            .unwrap();
        let b = hub
            .subscribe(&room(), StartAt::Live, join("b", None))
            .unwrap();
        drop(a);
        drop(b);
        assert!(matches!(
            hub.subscribe(&room(), StartAt::Live, join("c", None)),
            Err(HubError::RoomFull { .. })
        ));
        // Past the history ttl (50 ms) but within the grace (200 ms): the room stays.
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(hub.reap_idle(), 0);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(hub.reap_idle(), 1);
    }

    #[tokio::test]
    async fn idle_channels_are_reaped_but_not_under_a_subscriber() {
        let hub = hub(64, 16);
        let other = ChannelName::parse("other").unwrap();
        let sub = hub.subscribe(&room(), StartAt::Live, None).unwrap();
        hub.publish(&other, &sse::MessageTail::new("m", "x"), None, None)
            .unwrap();
        assert_eq!(hub.channel_count(), 2);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(hub.reap_idle(), 1);
        assert_eq!(hub.channel_count(), 1);
        drop(sub);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(hub.reap_idle(), 1);
        assert_eq!(hub.channel_count(), 0);
    }

    #[tokio::test]
    async fn channel_and_subscriber_limits_refuse_without_side_effects() {
        let hub = hub(64, 16);
        let name = |n: &str| ChannelName::parse(n).unwrap();
        let tail = sse::MessageTail::new("m", "x");
        for n in ["a", "b", "c"] {
            hub.publish(&name(n), &tail, None, None).unwrap();
        }
        assert_eq!(
            hub.publish(&name("d"), &tail, None, None).unwrap_err(),
            HubError::TooManyChannels { max: 3 }
        );
        assert!(hub.subscribe(&name("d"), StartAt::Live, None).is_err());
        // Existing channels keep working at the limit.
        hub.publish(&name("a"), &tail, None, None).unwrap();
        let subs: Vec<_> = (0..4)
            .map(|_| hub.subscribe(&name("a"), StartAt::Live, None).unwrap())
            .collect();
        assert_eq!(
            hub.subscribe(&name("a"), StartAt::Live, None).err(),
            Some(HubError::TooManySubscribers { max: 4 })
        );
        drop(subs);
        assert!(hub.subscribe(&name("a"), StartAt::Live, None).is_ok());
    }

    #[tokio::test]
    async fn relay_delivery_drops_repeats_and_reports_leaving() {
        let (left_tx, mut left_rx) = mpsc::unbounded_channel();
        let hub = Hub::new_relay(
            HubSettings {
                history: 4,
                history_bytes: 1 << 30,
                history_budget: 1 << 30,
                history_ttl: Duration::from_secs(60),
                room_capacity: 1,
                broadcast_capacity: 16,
                max_channels: 10,
                max_subscribers: 10,
                peer_grace: Duration::from_secs(30),
            },
            CancellationToken::new(),
            left_tx,
        );
        let event =
            |id: u64| Event::broadcast(Some(id), bytes::Bytes::from(format!("id: {id}\n\n")));
        // No one here listens: nothing is kept.
        assert!(!hub.deliver(&room(), event(1)));
        let mut sub = hub.attach(&room()).unwrap();
        hub.hold(&sub, PeerId::parse("a").unwrap(), Claim::random());
        // The cluster enforces capacity, not the local map.
        let other = hub.attach(&room()).unwrap();
        hub.hold(&other, PeerId::parse("b").unwrap(), Claim::random());
        sub.start_with(VecDeque::from([event(5)]), 4);
        assert!(hub.deliver(&room(), event(5)));
        assert!(!hub.deliver(&room(), event(5)), "a repeat is dropped");
        assert!(hub.deliver(&room(), event(6)));
        let frames = drain(&mut sub).await;
        assert_eq!(frames, ["id: 5\n\n", "id: 6\n\n"]);
        let local = hub.local_room(&room()).unwrap();
        assert_eq!(local.subscribers, 2);
        assert_eq!(local.newest, 6);
        // Another instance took "b" over.
        hub.stop_peer(&room(), &PeerId::parse("b").unwrap(), None);
        assert_eq!(hub.local_room(&room()).unwrap().peers.len(), 1);
        drop(other);
        // A relay keeps no place after its stream: Redis keeps it for the cluster.
        drop(sub);
        assert!(hub.local_room(&room()).unwrap().peers.is_empty());
        assert_eq!(left_rx.try_recv().unwrap(), room());
        assert_eq!(left_rx.try_recv().unwrap(), room());
    }
}
