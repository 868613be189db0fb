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
//!   never removed under a subscriber.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::{Event, HubError, Published, StartAt};
use crate::names::{ChannelName, PeerId};
use crate::sse;

/// Shards of the channel map; a power of two comfortably above the core count, so publishes to
/// different channels rarely touch the same lock.
const SHARDS: usize = 64;

/// One shard of the channel map.
type Shard = Mutex<HashMap<ChannelName, Arc<Channel>>>;

/// Tunables, from the validated config.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Events kept per channel for `Last-Event-ID` replay and lag recovery.
    pub history: usize,
    /// How long a channel with no subscribers keeps its history before it is removed.
    pub history_ttl: Duration,
    /// Distinct peer ids (streams opened with `peer=`) allowed in one channel.
    pub room_capacity: usize,
    /// Slots in each channel's broadcast buffer. tokio allocates them up front for every
    /// channel, so this stays small; a subscriber that falls further behind is resumed from the
    /// (larger) history ring instead.
    pub broadcast_capacity: usize,
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
}

struct Channel {
    name: ChannelName,
    tx: broadcast::Sender<Event>,
    state: Mutex<ChannelState>,
}

struct ChannelState {
    /// Published events, oldest first, at most `settings.history` long.
    history: VecDeque<Event>,
    /// Events with ids up to here may have existed but are not in `history` (evicted, or from
    /// before this channel was created): resuming after an id below it is a gap.
    floor: u64,
    subscribers: usize,
    peers: Vec<PeerSlot>,
    /// When the last subscriber left (or the channel was created by a publish); `None` while
    /// anyone is subscribed.
    idle_since: Option<Instant>,
}

/// A peer holding a place in a room; a new stream with the same peer id takes the place over and
/// ends the old stream (a page reload must never lock its own user out).
struct PeerSlot {
    peer: PeerId,
    subscription: u64,
    stop: CancellationToken,
}

impl Hub {
    pub fn new(settings: HubSettings, shutdown: CancellationToken) -> Self {
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
        }
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    fn shard(&self, name: &ChannelName) -> MutexGuard<'_, HashMap<ChannelName, Arc<Channel>>> {
        let index = self.hasher.hash_one(name) as usize % SHARDS;
        lock(&self.shards[index])
    }

    fn new_channel(&self, name: &ChannelName) -> Arc<Channel> {
        tracing::info!(channel = %name, "channel created");
        let (tx, _) = broadcast::channel(self.settings.broadcast_capacity);
        Arc::new(Channel {
            name: name.clone(),
            tx,
            state: Mutex::new(ChannelState {
                history: VecDeque::new(),
                floor: self.last_id.load(Ordering::SeqCst),
                subscribers: 0,
                peers: Vec::new(),
                idle_since: Some(Instant::now()),
            }),
        })
    }

    /// Publishes one message: encodes it once, stores it in history and sends it to every
    /// current subscriber of `channel`.
    pub fn publish(&self, channel: &ChannelName, tail: &sse::MessageTail) -> Published {
        let mut shard = self.shard(channel);
        let chan = match shard.entry(channel.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(self.new_channel(channel)),
        };
        // The shard lock is held across the publish so the reaper cannot remove the channel
        // between lookup and send (the event would vanish with it).
        let mut state = lock(&chan.state);
        let id = self.last_id.fetch_add(1, Ordering::SeqCst) + 1;
        let event = Event {
            id: Some(id),
            frame: tail.with_id(id),
        };
        if state.history.len() == self.settings.history {
            if let Some(evicted) = state.history.pop_front() {
                state.floor = evicted.id.unwrap_or(state.floor);
            }
        }
        if self.settings.history > 0 {
            state.history.push_back(event.clone());
        } else {
            state.floor = id;
        }
        // An error only means nobody is subscribed right now; history still has the event.
        let _ = chan.tx.send(event);
        Published {
            id,
            subscribers: state.subscribers,
        }
    }

    /// Subscribes to `channel`, creating it if needed. With a `peer`, the stream takes one of
    /// the room's `room_capacity` places (or takes over that peer's own older place).
    pub fn subscribe(
        &self,
        channel: &ChannelName,
        start: StartAt,
        peer: Option<PeerId>,
    ) -> Result<Subscription, HubError> {
        let subscription_id = self.next_subscription.fetch_add(1, Ordering::Relaxed);
        let stop = self.shutdown.child_token();
        let mut shard = self.shard(channel);
        let chan = match shard.entry(channel.clone()) {
            Entry::Occupied(e) => e.into_mut().clone(),
            Entry::Vacant(e) => e.insert(self.new_channel(channel)).clone(),
        };
        let mut state = lock(&chan.state);

        if let Some(peer) = peer.clone() {
            if let Some(slot) = state.peers.iter_mut().find(|s| s.peer == peer) {
                tracing::debug!(channel = %channel, peer = peer.as_str(), "peer took over its place");
                slot.stop.cancel();
                slot.subscription = subscription_id;
                slot.stop = stop.clone();
            } else if state.peers.len() >= self.settings.room_capacity {
                return Err(HubError::RoomFull {
                    capacity: self.settings.room_capacity,
                });
            } else {
                state.peers.push(PeerSlot {
                    peer,
                    subscription: subscription_id,
                    stop: stop.clone(),
                });
            }
        }

        state.subscribers += 1;
        state.idle_since = None;
        let rx = chan.tx.subscribe();
        let mut pending = VecDeque::new();
        let newest = self.last_id.load(Ordering::SeqCst);
        let last_id = match start {
            StartAt::Live => newest,
            StartAt::After(raw) => {
                // An id we never issued (garbage, or from the future) cannot be resumed from.
                let after = raw.trim().parse::<u64>().ok().filter(|id| *id <= newest);
                queue_since(&state, after, &raw, &mut pending)
            }
        };
        // The newcomer gets the same presence event as everyone else: it was subscribed above.
        let _ = chan.tx.send(Event {
            id: None,
            frame: sse::presence_frame(state.subscribers, state.peers.len()),
        });
        drop(state);
        drop(shard);

        Ok(Subscription {
            channel: chan,
            rx,
            pending,
            last_id,
            stopped: Box::pin(stop.cancelled_owned()),
            id: subscription_id,
        })
    }

    /// Removes channels that have had no subscriber for `history_ttl`. Returns how many.
    pub fn reap_idle(&self) -> usize {
        let now = Instant::now();
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            map.retain(|name, chan| {
                let state = lock(&chan.state);
                let expired = state.subscribers == 0
                    && state
                        .idle_since
                        .is_some_and(|t| now.duration_since(t) >= self.settings.history_ttl);
                if expired {
                    tracing::info!(channel = %name, "channel removed after idle ttl");
                    removed += 1;
                }
                !expired
            });
        }
        removed
    }

    /// Runs [`Hub::reap_idle`] periodically until shutdown.
    pub async fn run_reaper(self: Arc<Self>) {
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

    /// Channels currently in the map (with or without subscribers).
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Streams currently subscribed, over all channels.
    pub fn subscriber_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                lock(s)
                    .values()
                    .map(|c| lock(&c.state).subscribers)
                    .sum::<usize>()
            })
            .sum()
    }
}

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
    id: u64,
}

impl Subscription {
    /// The next frame for this subscriber, or `None` when the stream must end (shutdown, or the
    /// same peer opened a newer stream).
    pub async fn recv(&mut self) -> Option<bytes::Bytes> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if let Some(id) = event.id {
                    self.last_id = self.last_id.max(id);
                }
                return Some(event.frame);
            }
            let received = tokio::select! {
                biased;
                _ = &mut self.stopped => return None,
                received = self.rx.recv() => received,
            };
            match received {
                Ok(Event { id: Some(id), .. }) if id <= self.last_id => continue,
                Ok(event) => {
                    if let Some(id) = event.id {
                        self.last_id = id;
                    }
                    return Some(event.frame);
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

    /// After a lag: re-subscribe and queue what was missed from history (or a gap notice).
    fn resume_from_history(&mut self) {
        let state = lock(&self.channel.state);
        self.rx = self.channel.tx.subscribe();
        let last = self.last_id;
        self.last_id = queue_since(&state, Some(last), &last.to_string(), &mut self.pending);
        // Presence events are not kept in history; send the current count instead.
        self.pending.push_back(Event {
            id: None,
            frame: sse::presence_frame(state.subscribers, state.peers.len()),
        });
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
        let id = self.id;
        state.peers.retain(|slot| slot.subscription != id);
        if state.subscribers == 0 {
            state.idle_since = Some(Instant::now());
        } else {
            let _ = self.channel.tx.send(Event {
                id: None,
                frame: sse::presence_frame(state.subscribers, state.peers.len()),
            });
        }
    }
}

/// Queues every event after `after` that history still holds, preceded by a gap event when
/// events after it may have been lost (it is below the floor, or not an id at all; `reported`
/// is what the client sent, echoed in the gap event). Returns the id to resume after.
fn queue_since(
    state: &ChannelState,
    after: Option<u64>,
    reported: &str,
    pending: &mut VecDeque<Event>,
) -> u64 {
    let after = match after {
        Some(id) if id >= state.floor => id,
        _ => {
            pending.push_back(Event {
                id: Some(state.floor),
                frame: sse::gap_frame(reported, state.floor),
            });
            state.floor
        }
    };
    pending.extend(
        state
            .history
            .iter()
            .filter(|e| e.id.is_some_and(|id| id > after))
            .cloned(),
    );
    after
}

/// Locks a std mutex, ignoring poisoning: every critical section here leaves the data
/// consistent at each step, so a panic elsewhere must not take the hub down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hub(history: usize, broadcast_capacity: usize) -> Hub {
        Hub::new(
            HubSettings {
                history,
                history_ttl: Duration::from_millis(50),
                room_capacity: 2,
                broadcast_capacity,
            },
            CancellationToken::new(),
        )
    }

    fn room() -> ChannelName {
        ChannelName::parse("room").unwrap()
    }

    fn publish(hub: &Hub, body: &str) -> u64 {
        hub.publish(&room(), &sse::MessageTail::new("m", body)).id
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

    #[tokio::test]
    async fn capacity_and_takeover() {
        let hub = hub(64, 16);
        let peer = |p: &str| Some(PeerId::parse(p).unwrap());
        let mut a = hub.subscribe(&room(), StartAt::Live, peer("a")).unwrap();
        let _b = hub.subscribe(&room(), StartAt::Live, peer("b")).unwrap();
        assert!(matches!(
            hub.subscribe(&room(), StartAt::Live, peer("c")),
            Err(HubError::RoomFull { capacity: 2 })
        ));
        // Anonymous (seed) streams are not counted.
        let _seed = hub.subscribe(&room(), StartAt::Live, None).unwrap();
        // "a" reconnecting takes over its own place and ends the old stream.
        let _a2 = hub.subscribe(&room(), StartAt::Live, peer("a")).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(1), async {
            while a.recv().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok());
        drop(a);
        assert!(hub.subscribe(&room(), StartAt::Live, peer("c")).is_err());
    }

    #[tokio::test]
    async fn idle_channels_are_reaped_but_not_under_a_subscriber() {
        let hub = hub(64, 16);
        let other = ChannelName::parse("other").unwrap();
        let sub = hub.subscribe(&room(), StartAt::Live, None).unwrap();
        hub.publish(&other, &sse::MessageTail::new("m", "x"));
        assert_eq!(hub.channel_count(), 2);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(hub.reap_idle(), 1);
        assert_eq!(hub.channel_count(), 1);
        drop(sub);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(hub.reap_idle(), 1);
        assert_eq!(hub.channel_count(), 0);
    }
}
