//! The Redis backend (`--redis URL`): several instances behind a load balancer act as one relay.
//! The key names are in `keys.rs`; the scripts that change a room atomically are the `.lua`
//! files beside this one (`places.lua` is prepended to those that touch a room's places).
//!
//! What lives where:
//! - Redis holds what must be the same on every instance: the id counter (`sigrelay:id`), each
//!   channel's history (a capped stream `sigrelay:h:NAME`, with its floor in `sigrelay:f:NAME`),
//!   who is subscribed (`sigrelay:s:NAME`, instance → count) and who holds a place in a room
//!   (`sigrelay:p:NAME`, peer → "claim instance subscription" while a stream holds it, "claim -
//!   until_ms" while it is kept for its claim after the stream ended). Each change is one Lua
//!   script, so a publish assigns its id, stores it and sends it atomically, and per channel the
//!   order of ids, of history and of delivery is one order, as on a single instance; a takeover
//!   and a stamped publish check the place's claim in the same script that acts on it, so every
//!   instance applies the same rule as the memory hub (`hub/memory.rs`).
//! - Each instance keeps a [`memory::Hub`] as its local fan-out: one Redis subscription (a single
//!   pattern) feeds it, every event is encoded once per instance and shared by its streams.
//! - An instance proves it is alive with `sigrelay:alive:ID`, refreshed every heartbeat
//!   (`--redis-heartbeat`, 5 s) and expiring after three; the entries of an instance that
//!   stopped refreshing are dropped by the next script that reads the room (a live instance's
//!   heartbeat reads all of its rooms), so a dead instance's subscribers stop counting, and its
//!   places go from held to kept (for `--peer-grace`, so their pages can come back through
//!   another instance with their tokens), within four heartbeats (20 s by default).
//! - With `--redis-format flask-sse`, presence's `subscribers` (and a publish's count) also
//!   counts the Flask app's streams on the channel: each is its own `SUBSCRIBE` to the channel's
//!   name, counted by `PUBSUB NUMSUB` inside the join, sync and publish scripts (ours listen
//!   through a pattern, which NUMSUB does not count). They never take a place (`peers`). As
//!   they come and go without telling us, an instance polls NUMSUB for the rooms it has streams
//!   in every second and re-syncs a room whose count changed; the last count announced is kept
//!   in the room's counts, so one instance announces a change, not each.
//! - The peer-token secret, when `--peer-secret` is not given, is `sigrelay:peer-secret`: the
//!   first instance stores a random one (`SET NX`), every other reads it, and each instance
//!   stores it again (`NX`) at every heartbeat, so a Redis that restarted empty gets it back
//!   before a new instance could make another.
//! - Losing Redis: publishes and new streams answer 503 (nothing is accepted that would not be
//!   delivered), open streams stay open, the listener reconnects with backoff, then catches up on
//!   what was published meanwhile (from history) and re-registers its streams.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use ::redis::{Client, Msg, RedisError, Script, Value};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::join_all;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::memory::{self, HubSettings, Subscription};
use super::replay::{replay_since, resume_point};
use super::{Event, HubError, PeerJoin, Published, StartAt};
use crate::names::{ChannelName, PeerId};
use crate::peers::Claim;
use crate::sse::{self, MessageTail};
use crate::sync::lock;

/// An instance counts as alive for this many heartbeats after its last one.
const ALIVE_HEARTBEATS: u32 = 3;
/// Room records (counts, places) outlive a missed heartbeat or two, not a dead cluster.
const ROOM_HEARTBEATS: u32 = 12;
/// Every Redis round trip gives up after this; the request then answers 503.
mod keys;

use keys::key;

const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection delays double from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(3));
/// How often (`--redis-format flask-sse`) the flask-sse subscribers of the rooms this instance
/// has streams in are counted; a change is announced as presence.
const FOREIGN_POLL: Duration = Duration::from_secs(1);
/// Channels asked about in one `PUBSUB NUMSUB`.
const NUMSUB_BATCH: usize = 1000;

/// Store `ARGV[1]` unless a secret is there already; return the one that is.
const SECRET_LUA: &str = include_str!("secret.lua");

/// `--redis` and `--redis-format`.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub format: RedisFormat,
    /// How often an instance refreshes its liveness key and its rooms' counts.
    pub heartbeat: Duration,
}

/// How published messages travel through Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFormat {
    /// sigrelay's own: on `sigrelay:ev:NAME`, the encoded frame (each instance only adds the id).
    Native,
    /// flask-sse's: on the channel `NAME` itself, `{"data": ..., "type": ..., "id": ...}` JSON,
    /// so a Flask app's `sse.publish()` reaches sigrelay's streams and sigrelay's POSTs reach
    /// flask-sse's streams. The instance subscribes to the pattern `*`.
    FlaskSse,
}

/// Helpers every script that touches a room's places starts with (see the module docs for
/// the two shapes of a place).
const PLACES_LUA: &str = include_str!("places.lua");

/// Publish: check the sender's claim (if any), assign the next id, keep it in history (moving
/// the floor past what falls out), send it, and count the room's subscribers.
const PUBLISH_LUA: &str = include_str!("publish.lua");

/// Join: forget dead instances, take a free place (a new claim) or take over a held or kept
/// one (only with its claim), record this instance's count, announce presence, and return what
/// a replay needs and the place's claim.
const JOIN_LUA: &str = include_str!("join.lua");

/// Sync: make the room's record of this instance match what it holds (after streams end, on
/// every heartbeat, after a reconnect): places whose stream here ended are kept for their
/// claims, places held here are (re)recorded unless another claim took the id meanwhile; forget
/// dead instances, and announce presence if the counts changed. While anyone here listens, the
/// room's history does not expire.
const SYNC_LUA: &str = include_str!("sync.lua");

/// The relay backend: a local memory hub fed from Redis, and the link to Redis.
pub struct RedisHub {
    local: Arc<memory::Hub>,
    link: Arc<Link>,
    /// Taken by [`RedisHub::spawn_tasks`].
    tasks: Mutex<Option<(PubSub, mpsc::UnboundedReceiver<ChannelName>)>>,
}

/// Everything that talks to Redis. Shared by request handlers, the listener and the heartbeat.
struct Link {
    client: Client,
    /// Multiplexed and self-reconnecting: every request handler shares one connection.
    conn: ConnectionManager,
    settings: HubSettings,
    format: RedisFormat,
    heartbeat: Duration,
    /// This process's name in the cluster: random, so a restart is a new instance.
    instance: String,
    /// Set while the listener is subscribed; requests are refused with 503 when it is not.
    ready: AtomicBool,
    /// Why the hub is not ready (shown by `/healthz`).
    trouble: Mutex<Option<String>>,
    publish: Script,
    join: Script,
    sync: Script,
    secret: Script,
    /// The peer-token secret agreed through Redis, re-stored at every heartbeat; `None` when
    /// `--peer-secret` was given (then Redis is not asked).
    peer_secret: Mutex<Option<String>>,
    /// Joins hold it shared from their script until the place is recorded locally
    /// ([`memory::Hub::hold`]); a sync holds it alone, so it never reads this instance's places
    /// between the two and mistakes a new holder for a stream that ended.
    places: tokio::sync::RwLock<()>,
    shutdown: CancellationToken,
}

impl RedisHub {
    /// Connects and subscribes; fails with a clear reason when Redis cannot be reached, so the
    /// process exits instead of running a relay that cannot deliver.
    pub async fn connect(
        settings: HubSettings,
        redis: &RedisSettings,
        shutdown: CancellationToken,
    ) -> Result<RedisHub, HubError> {
        let client = Client::open(redis.url.as_str())
            .map_err(|e| HubError::Unavailable(format!("invalid --redis URL: {e}")))?;
        let addr = client.get_connection_info().addr().to_string();
        let unreachable =
            |e: String| HubError::Unavailable(format!("cannot reach Redis at {addr}: {e}"));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(BACKOFF.1);
        let conn = within(client.get_connection_manager_with_config(config))
            .await
            .map_err(unreachable)?;
        let link = Arc::new(Link {
            client,
            conn,
            settings: settings.clone(),
            format: redis.format,
            heartbeat: redis.heartbeat,
            instance: instance_name(),
            ready: AtomicBool::new(false),
            trouble: Mutex::new(Some("connecting to Redis".into())),
            publish: Script::new(&[PLACES_LUA, PUBLISH_LUA].concat()),
            join: Script::new(&[PLACES_LUA, JOIN_LUA].concat()),
            sync: Script::new(&[PLACES_LUA, SYNC_LUA].concat()),
            secret: Script::new(SECRET_LUA),
            peer_secret: Mutex::new(None),
            places: tokio::sync::RwLock::new(()),
            shutdown: shutdown.clone(),
        });
        let pubsub = link.subscribe().await.map_err(unreachable)?;
        link.refresh_alive().await.map_err(unreachable)?;
        link.set_ready(true, None);
        tracing::info!(redis = %addr, instance = %link.instance, format = ?link.format, "joined the Redis cluster");
        let (left_tx, left_rx) = mpsc::unbounded_channel();
        let local = Arc::new(memory::Hub::new_relay(settings, shutdown, left_tx));
        Ok(RedisHub {
            local,
            link,
            tasks: Mutex::new(Some((pubsub, left_rx))),
        })
    }

    /// Starts the listener (Redis → local streams) and the keeper (heartbeat, counts).
    pub fn spawn_tasks(&self) {
        let Some((pubsub, left)) = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return;
        };
        tokio::spawn(self.link.clone().listen(self.local.clone(), pubsub));
        tokio::spawn(self.link.clone().keep_counts(self.local.clone(), left));
    }

    pub fn local(&self) -> &memory::Hub {
        &self.local
    }

    /// See [`super::Hub::agree_secret`]; fails (the process then exits) when Redis cannot say.
    pub async fn agree_secret(&self, candidate: String) -> Result<String, HubError> {
        let agreed =
            self.link.store_secret(&candidate).await.map_err(|e| {
                HubError::Unavailable(format!("cannot agree on a peer secret: {e}"))
            })?;
        let source = if agreed == candidate {
            "stored a new one"
        } else {
            "read it"
        };
        tracing::info!("peer-token secret shared through Redis ({source})");
        *lock(&self.link.peer_secret) = Some(agreed.clone());
        Ok(agreed)
    }

    /// `Some(reason)` while requests are refused.
    pub fn unavailable(&self) -> Option<String> {
        if self.link.ready.load(Ordering::Acquire) {
            None
        } else {
            Some(
                lock(&self.link.trouble)
                    .clone()
                    .unwrap_or_else(|| "Redis unreachable".into()),
            )
        }
    }

    fn check(&self, channel: &ChannelName) -> Result<(), HubError> {
        if let Some(why) = self.unavailable() {
            return Err(HubError::Unavailable(why));
        }
        // With flask-sse's format, channel NAME is the pub/sub channel NAME; ours must not be
        // reachable through it.
        if self.link.format == RedisFormat::FlaskSse && channel.as_str().starts_with(keys::PREFIX) {
            return Err(HubError::Reserved);
        }
        Ok(())
    }

    pub async fn publish(
        &self,
        channel: &ChannelName,
        tail: &MessageTail,
        sender: Option<(&PeerId, Claim)>,
        to: Option<&PeerId>,
    ) -> Result<Published, HubError> {
        self.check(channel)?;
        let link = &self.link;
        let (pubsub_channel, head, payload_tail) = match link.format {
            RedisFormat::Native => {
                let mut payload_tail = Vec::with_capacity(tail.as_bytes().len() + 1);
                payload_tail.push(b'\n');
                payload_tail.extend_from_slice(tail.as_bytes());
                // `e<id>\n<tail>`, or `t<peer> <id>\n<tail>` for an addressed event.
                let head = match to {
                    None => b"e".to_vec(),
                    Some(peer) => format!("t{} ", peer.as_str()).into_bytes(),
                };
                (key("ev", channel), head, payload_tail)
            }
            RedisFormat::FlaskSse => {
                let (event_type, data) = tail.parts();
                // flask-sse's own streams do not know `sigrelay_to` and show an addressed
                // event to everyone; sigrelay's streams honour it.
                let addressed = to.map_or(String::new(), |peer| {
                    format!(r#""sigrelay_to": "{}", "#, peer.as_str())
                });
                let head = format!(
                    r#"{{"data": {data}, "type": {}, {addressed}"id": "#,
                    serde_json::Value::from(event_type)
                );
                (
                    channel.as_str().to_owned(),
                    head.into_bytes(),
                    b"}".to_vec(),
                )
            }
        };
        let mut conn = link.conn.clone();
        let mut call = link.publish.prepare_invoke();
        call.key(keys::ID)
            .key(key("h", channel))
            .key(key("f", channel))
            .key(pubsub_channel)
            .key(key("s", channel))
            .key(key("p", channel))
            .arg(now_micros())
            .arg(link.settings.history)
            .arg(link.settings.history_ttl.as_millis() as u64)
            .arg(head)
            .arg(payload_tail)
            .arg(tail.as_bytes())
            .arg(sender.map_or("", |(peer, _)| peer.as_str()))
            .arg(sender.map_or(String::new(), |(_, claim)| claim.to_text()))
            .arg(to.map_or("", |peer| peer.as_str()))
            .arg(link.foreign_name(channel));
        let (id, subscribers): (i64, i64) = within(call.invoke_async(&mut conn))
            .await
            .map_err(HubError::Unavailable)?;
        // -1: the sender's claim is not the room's current one; nothing was published.
        let id = u64::try_from(id).map_err(|_| HubError::NotCurrent)?;
        Ok(Published {
            id,
            subscribers: subscribers.max(0) as usize,
            queued: 0,
        })
    }

    pub async fn subscribe(
        &self,
        channel: &ChannelName,
        start: StartAt,
        peer: Option<PeerJoin>,
    ) -> Result<Subscription, HubError> {
        self.check(channel)?;
        let link = &self.link;
        // Join the local fan-out first: from here on every event for this channel reaches the
        // subscription, so what the replay below misses cannot be lost, only repeated (and
        // repeats are dropped by id). It holds no place until the cluster gives it one.
        let mut subscription = self.local.attach(channel)?;
        let places = link.places.read().await;
        let held = self
            .local
            .local_room(channel)
            .map_or(1, |room| room.subscribers);
        let mut conn = link.conn.clone();
        let mut call = link.join.prepare_invoke();
        call.key(key("s", channel))
            .key(key("p", channel))
            .key(key("h", channel))
            .key(key("f", channel))
            .key(keys::ID)
            .key(key("ev", channel))
            .key(keys::CONTROL)
            .arg(&link.instance)
            .arg(subscription.id())
            .arg(peer.as_ref().map_or("", |p| p.peer.as_str()))
            .arg(link.settings.room_capacity)
            .arg(held)
            .arg(u8::from(matches!(start, StartAt::After(_))))
            .arg(keys::ALIVE_PREFIX)
            .arg(link.room_ttl_ms())
            .arg(channel.as_str())
            .arg(
                peer.as_ref()
                    .and_then(|p| p.proof)
                    .map_or(String::new(), Claim::to_text),
            )
            .arg(Claim::random().to_text())
            .arg(link.settings.peer_grace.as_millis() as u64)
            .arg(link.foreign_name(channel));
        let reply: Value = within(call.invoke_async(&mut conn))
            .await
            .map_err(HubError::Unavailable)?;
        let joined = Joined::parse(reply)
            .ok_or_else(|| HubError::Unavailable("unexpected reply from Redis to a join".into()))?;
        let (newest, floor, history, claim) = match joined {
            Joined::Full => {
                return Err(HubError::RoomFull {
                    capacity: link.settings.room_capacity,
                })
            }
            Joined::Taken => return Err(HubError::PeerTaken),
            Joined::Ok {
                newest,
                floor,
                history,
                claim,
            } => (newest, floor, history, claim),
        };
        if let Some(PeerJoin { peer, .. }) = peer {
            let claim = claim.ok_or_else(|| {
                HubError::Unavailable("unexpected reply from Redis to a join".into())
            })?;
            self.local.hold(&subscription, peer.clone(), claim);
            subscription.set_place(peer, claim);
        }
        drop(places);
        match start {
            StartAt::Live => subscription.start_with(VecDeque::new(), newest),
            StartAt::After(raw) => {
                let mut pending = VecDeque::new();
                let after = resume_point(&raw, newest);
                let counters = self.local.counters_handle();
                let last =
                    replay_since(floor, history.iter(), after, &raw, &mut pending, &counters);
                subscription.start_with(pending, last);
            }
        }
        Ok(subscription)
    }
}

/// The reply of [`JOIN_LUA`].
enum Joined {
    Full,
    Taken,
    Ok {
        newest: u64,
        floor: u64,
        history: Vec<Event>,
        /// The place's claim, when the stream asked for one.
        claim: Option<Claim>,
    },
}

impl Joined {
    fn parse(reply: Value) -> Option<Joined> {
        let Value::Array(items) = reply else {
            return None;
        };
        let mut items = items.into_iter();
        match text(&items.next()?)?.as_str() {
            "full" => return Some(Joined::Full),
            "taken" => return Some(Joined::Taken),
            "ok" => {}
            _ => return None,
        }
        let newest = text(&items.next()?)?.parse().ok()?;
        let floor = text(&items.next()?)?.parse().ok()?;
        let Value::Array(entries) = items.next()? else {
            return None;
        };
        let history = entries.into_iter().filter_map(stream_entry).collect();
        let claim = items
            .next()
            .and_then(|claim| Claim::from_text(&text(&claim)?));
        Some(Joined::Ok {
            newest,
            floor,
            history,
            claim,
        })
    }
}

impl Link {
    /// A pub/sub connection subscribed to the one pattern this instance listens on.
    async fn subscribe(&self) -> Result<PubSub, String> {
        let mut pubsub = within(self.client.get_async_pubsub()).await?;
        let pattern = match self.format {
            RedisFormat::Native => keys::NATIVE_PATTERN,
            RedisFormat::FlaskSse => "*",
        };
        within(pubsub.psubscribe(pattern)).await?;
        Ok(pubsub)
    }

    /// The pub/sub channel whose own subscribers (`PUBSUB NUMSUB`) are another stack's streams
    /// on `channel`, counted in its presence: flask-sse's, on the channel's own name; none
    /// (`""`) in the native format.
    fn foreign_name<'a>(&self, channel: &'a ChannelName) -> &'a str {
        match self.format {
            RedisFormat::Native => "",
            RedisFormat::FlaskSse => channel.as_str(),
        }
    }

    fn set_ready(&self, ready: bool, trouble: Option<String>) {
        *lock(&self.trouble) = trouble;
        self.ready.store(ready, Ordering::Release);
    }

    /// Feeds Redis messages to the local hub; on a lost connection marks the hub unavailable,
    /// reconnects with backoff, catches up and carries on. Ends at shutdown.
    async fn listen(self: Arc<Self>, local: Arc<memory::Hub>, first: PubSub) {
        let mut pubsub = Some(first);
        let mut delay = BACKOFF.0;
        loop {
            if let Some(connection) = pubsub.take() {
                let mut messages = connection.into_on_message();
                loop {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        message = messages.next() => match message {
                            Some(message) => self.on_message(&local, &message),
                            None => break,
                        },
                    }
                }
                tracing::warn!(
                    "lost the Redis subscription; publishes answer 503 until it is back"
                );
                self.set_ready(
                    false,
                    Some("lost the connection to Redis; reconnecting".into()),
                );
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match self.rejoin(&local).await {
                Ok(connection) => {
                    tracing::info!("Redis is back; delivery resumed");
                    self.set_ready(true, None);
                    pubsub = Some(connection);
                    delay = BACKOFF.0;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Redis still unreachable");
                    self.set_ready(false, Some(format!("Redis unreachable: {e}")));
                    delay = (delay * 2).min(BACKOFF.1);
                }
            }
        }
    }

    /// After a lost connection: subscribe again, then deliver what was published meanwhile
    /// (from history; what the new subscription also carries is dropped as a repeat) and put
    /// this instance's streams back in the counts (Redis may have restarted empty).
    async fn rejoin(&self, local: &memory::Hub) -> Result<PubSub, String> {
        let pubsub = self.subscribe().await?;
        let names = local.channel_names();
        for name in &names {
            let Some(room) = local.local_room(name) else {
                continue;
            };
            let mut conn = self.conn.clone();
            let start = format!("({}-1", room.newest);
            let entries: Value = within(
                ::redis::cmd("XRANGE")
                    .arg(key("h", name))
                    .arg(start)
                    .arg("+")
                    .query_async(&mut conn),
            )
            .await?;
            if let Value::Array(entries) = entries {
                for event in entries.into_iter().filter_map(stream_entry) {
                    local.deliver(name, event);
                }
            }
        }
        self.heartbeat(&names, local).await?;
        Ok(pubsub)
    }

    /// One message from the pattern subscription.
    fn on_message(&self, local: &memory::Hub, message: &Msg) {
        let name = message.get_channel_name();
        let payload = message.get_payload_bytes();
        if let Some(channel) = name.strip_prefix(keys::EVENTS_PREFIX) {
            let Ok(channel) = ChannelName::parse(channel) else {
                return;
            };
            if let Some(event) = native_event(payload) {
                local.deliver(&channel, event);
            }
        } else if name == keys::CONTROL {
            // A peer's place was taken over through another instance: end the stream here.
            let text = String::from_utf8_lossy(payload);
            let mut fields = text.split('\n');
            if let (Some(channel), Some(peer), Some(instance), Some(subscription)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            {
                let (Ok(channel), Ok(peer)) = (ChannelName::parse(channel), PeerId::parse(peer))
                else {
                    return;
                };
                let keep = (instance == self.instance)
                    .then(|| subscription.parse().ok())
                    .flatten();
                local.stop_peer(&channel, &peer, keep);
            }
        } else if self.format == RedisFormat::FlaskSse && !name.starts_with(keys::PREFIX) {
            let Ok(channel) = ChannelName::parse(name) else {
                return;
            };
            match flask_event(payload) {
                Some(event) => {
                    local.deliver(&channel, event);
                }
                None => tracing::debug!(
                    "ignored a message that is not flask-sse's format or has a reserved type"
                ),
            }
        }
    }

    /// Keeps the cluster's counts true: re-syncs a room whenever a stream here ends, and every
    /// heartbeat refreshes the liveness key and every room this instance holds.
    async fn keep_counts(
        self: Arc<Self>,
        local: Arc<memory::Hub>,
        mut left: mpsc::UnboundedReceiver<ChannelName>,
    ) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty: HashSet<ChannelName> = HashSet::new();
        let mut poll = tokio::time::interval(FOREIGN_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut foreign: HashMap<ChannelName, u64> = HashMap::new();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = poll.tick(), if self.format == RedisFormat::FlaskSse => {
                    if self.ready.load(Ordering::Acquire) {
                        if let Err(e) = self.poll_foreign(&local, &mut foreign, &mut dirty).await {
                            tracing::debug!(error = %e, "counting flask-sse's subscribers failed");
                        }
                    }
                }
                Some(channel) = left.recv() => {
                    dirty.insert(channel);
                    while let Ok(channel) = left.try_recv() {
                        dirty.insert(channel);
                    }
                }
                _ = tick.tick() => {
                    if self.ready.load(Ordering::Acquire) {
                        let names = local.channel_names();
                        if let Err(e) = self.heartbeat(&names, &local).await {
                            tracing::debug!(error = %e, "heartbeat failed");
                        }
                    }
                }
            }
            if !dirty.is_empty() && self.ready.load(Ordering::Acquire) {
                let names: Vec<ChannelName> = dirty.drain().collect();
                if let Err(e) = self.sync_all(&names, &local).await {
                    tracing::debug!(error = %e, "recount failed; retried at the next heartbeat");
                }
            }
        }
        // Leaving: without the liveness key the others stop counting this instance at once.
        let mut conn = self.conn.clone();
        let alive = keys::alive(&self.instance);
        let _: Result<Result<(), RedisError>, _> = tokio::time::timeout(
            OP_TIMEOUT,
            ::redis::cmd("DEL").arg(alive).query_async(&mut conn),
        )
        .await;
    }

    /// flask-sse's streams come and go without a word to us: asks Redis how many subscribe to
    /// each room this instance has streams in (`PUBSUB NUMSUB`, [`NUMSUB_BATCH`] names a round
    /// trip), and marks `dirty` the rooms whose count differs from the last poll's (`seen`),
    /// whose sync then announces the new presence.
    async fn poll_foreign(
        &self,
        local: &memory::Hub,
        seen: &mut HashMap<ChannelName, u64>,
        dirty: &mut HashSet<ChannelName>,
    ) -> Result<(), String> {
        let names: Vec<ChannelName> = local
            .channel_names()
            .into_iter()
            .filter(|name| local.local_room(name).is_some_and(|r| r.subscribers > 0))
            .collect();
        let mut now = HashMap::new();
        for batch in names.chunks(NUMSUB_BATCH) {
            let mut conn = self.conn.clone();
            let mut numsub = ::redis::cmd("PUBSUB");
            numsub.arg("NUMSUB");
            for name in batch {
                numsub.arg(name.as_str());
            }
            // [name, count, name, count, ...] in the order asked.
            let reply: Vec<Value> = within(numsub.query_async(&mut conn)).await?;
            let counts = reply.chunks(2).map(|pair| match pair.get(1) {
                Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            });
            for (name, count) in batch.iter().zip(counts) {
                if seen.get(name).copied().unwrap_or(0) != count {
                    dirty.insert(name.clone());
                }
                if count > 0 {
                    now.insert(name.clone(), count);
                }
            }
        }
        *seen = now;
        Ok(())
    }

    /// Refreshes the liveness key, then syncs `names`.
    async fn heartbeat(&self, names: &[ChannelName], local: &memory::Hub) -> Result<(), String> {
        self.refresh_alive().await?;
        let secret = lock(&self.peer_secret).clone();
        if let Some(secret) = secret {
            let kept = self.store_secret(&secret).await?;
            if kept != secret {
                // Another secret got there first (Redis emptied, and a new instance started
                // before any heartbeat): tokens across the two groups are refused until one
                // group restarts. Said loudly, since only an operator can settle it.
                tracing::error!(
                    "the peer-token secret in Redis differs from this instance's; restart \
                     the instances (or give them all --peer-secret)"
                );
            }
        }
        self.sync_all(names, local).await
    }

    /// Room records outlive a few missed heartbeats, and a kept place its grace.
    fn room_ttl_ms(&self) -> u64 {
        (self.heartbeat * ROOM_HEARTBEATS)
            .max(self.settings.peer_grace)
            .as_millis() as u64
    }

    /// Stores `candidate` as the shared peer-token secret unless one is stored; gives the one
    /// that is.
    async fn store_secret(&self, candidate: &str) -> Result<String, String> {
        let mut conn = self.conn.clone();
        within(
            self.secret
                .key(keys::SECRET)
                .arg(candidate)
                .invoke_async::<String>(&mut conn),
        )
        .await
    }

    /// `sigrelay:alive:INSTANCE`, expiring after [`ALIVE_HEARTBEATS`] heartbeats.
    async fn refresh_alive(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        within(
            ::redis::cmd("SET")
                .arg(keys::alive(&self.instance))
                .arg(1)
                .arg("PX")
                .arg((self.heartbeat * ALIVE_HEARTBEATS).as_millis() as u64)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Syncs many rooms, a bounded number of scripts in flight on the multiplexed connection.
    async fn sync_all(&self, names: &[ChannelName], local: &memory::Hub) -> Result<(), String> {
        let _places = self.places.write().await;
        for batch in names.chunks(64) {
            let results = join_all(batch.iter().map(|name| self.sync(name, local))).await;
            results.into_iter().collect::<Result<(), String>>()?;
        }
        Ok(())
    }

    async fn sync(&self, channel: &ChannelName, local: &memory::Hub) -> Result<(), String> {
        let room = local.local_room(channel).unwrap_or(memory::LocalRoom {
            subscribers: 0,
            peers: Vec::new(),
            newest: 0,
        });
        let mut conn = self.conn.clone();
        let mut call = self.sync.prepare_invoke();
        call.key(key("s", channel))
            .key(key("p", channel))
            .key(key("h", channel))
            .key(key("f", channel))
            .key(key("ev", channel))
            .arg(&self.instance)
            .arg(room.subscribers)
            .arg(keys::ALIVE_PREFIX)
            .arg(self.room_ttl_ms())
            .arg(self.settings.history_ttl.as_millis() as u64)
            .arg(self.settings.peer_grace.as_millis() as u64)
            .arg(self.foreign_name(channel));
        for (peer, subscription, claim) in &room.peers {
            call.arg(peer.as_str())
                .arg(*subscription)
                .arg(claim.to_text());
        }
        within(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }
}

/// A native payload: `e<id>\n<tail>` (an event; the frame is `id: <id>\n<tail>`),
/// `t<peer> <id>\n<tail>` (the same, addressed to one peer id) or
/// `p<subscribers> <peers> <id,id,...>` (presence, counted over the cluster).
fn native_event(payload: &[u8]) -> Option<Event> {
    let event = |to: Option<PeerId>, rest: &[u8]| {
        let newline = rest.iter().position(|b| *b == b'\n')?;
        let id: u64 = std::str::from_utf8(&rest[..newline]).ok()?.parse().ok()?;
        Some(Event {
            id: Some(id),
            frame: with_id(id, &rest[newline + 1..]),
            to,
        })
    };
    match payload.split_first()? {
        (b'e', rest) => event(None, rest),
        (b't', rest) => {
            let space = rest.iter().position(|b| *b == b' ')?;
            let peer = PeerId::parse(std::str::from_utf8(&rest[..space]).ok()?).ok()?;
            event(Some(peer), &rest[space + 1..])
        }
        (b'p', rest) => {
            let text = std::str::from_utf8(rest).ok()?;
            let mut fields = text.splitn(3, ' ');
            let subscribers = fields.next()?.parse().ok()?;
            let _held: usize = fields.next()?.parse().ok()?;
            let present: Vec<&str> = fields
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|id| !id.is_empty())
                .collect();
            Some(Event::broadcast(
                None,
                sse::presence_frame(subscribers, &present),
            ))
        }
        _ => None,
    }
}

/// A message in flask-sse's format: `{"data": ..., "type": ..., "id": ..., "retry": ...}`. Only
/// a numeric id is kept as an event id (replayable); anything else is delivered live, without
/// one, so a client's `Last-Event-ID` is always an id this relay understands. A type that is
/// not a valid publishable [`crate::names::EventType`] drops the message, and that includes the
/// relay's own types (`welcome`, `presence`, `gap`): a Flask app's `sse.publish(..., type="gap")`
/// must not pose as the relay any more than a POST may.
fn flask_event(payload: &[u8]) -> Option<Event> {
    let message: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let message = message.as_object()?;
    let data = message.get("data")?;
    let event_type = match message.get("type") {
        None | Some(serde_json::Value::Null) => None,
        Some(t) => Some(crate::names::EventType::parse(t.as_str()?).ok()?),
    };
    let id = message.get("id").and_then(|v| v.as_u64());
    let to = match message.get("sigrelay_to") {
        None | Some(serde_json::Value::Null) => None,
        Some(peer) => Some(PeerId::parse(peer.as_str()?).ok()?),
    };
    let retry = message.get("retry").and_then(|v| v.as_u64());
    let data = match data {
        serde_json::Value::String(text) => text.clone(),
        other => sse::python_json(other),
    };
    Some(Event {
        id,
        frame: sse::foreign_frame(id, event_type.as_ref().map(|t| t.as_str()), &data, retry),
        to,
    })
}

/// A history entry (`[ "<id>-1", ["t", tail] ]`) as the event it was.
fn stream_entry(entry: Value) -> Option<Event> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let mut parts = parts.into_iter();
    let id: u64 = text(&parts.next()?)?.split('-').next()?.parse().ok()?;
    let Value::Array(fields) = parts.next()? else {
        return None;
    };
    let tail = match fields.get(1)? {
        Value::BulkString(bytes) => bytes.as_slice(),
        _ => return None,
    };
    // `to`, when the event was addressed (see PUBLISH_LUA).
    let to = match fields.get(3) {
        Some(peer) => Some(PeerId::parse(&text(peer)?).ok()?),
        None => None,
    };
    Some(Event {
        id: Some(id),
        frame: with_id(id, tail),
        to,
    })
}

fn with_id(id: u64, tail: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(tail.len() + 26);
    frame.put_slice(b"id: ");
    frame.put_slice(id.to_string().as_bytes());
    frame.put_u8(b'\n');
    frame.put_slice(tail);
    frame.freeze()
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// 64 random bits in hex.
fn instance_name() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        bytes = now_micros().to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Redis round trip bounded by [`OP_TIMEOUT`], its error as text.
async fn within<T>(
    call: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("Redis did not answer in time".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_payloads_round_trip() {
        let tail = MessageTail::new("request", "hi");
        let mut payload = b"e42\n".to_vec();
        payload.extend_from_slice(tail.as_bytes());
        let event = native_event(&payload).unwrap();
        assert_eq!(event.id, Some(42));
        assert_eq!(event.frame, tail.with_id(42));
        let presence = native_event(b"p3 2").unwrap();
        assert_eq!(presence.id, None);
        assert_eq!(presence.frame, sse::presence_frame::<&str>(3, &[]));
        let presence = native_event(b"p3 2 alice,bob").unwrap();
        assert_eq!(presence.frame, sse::presence_frame(3, &["alice", "bob"]));
        let addressed = native_event(b"tbob 7\nevent: x\n\n").unwrap();
        assert_eq!(addressed.id, Some(7));
        assert_eq!(addressed.to.as_ref().map(PeerId::as_str), Some("bob"));
        assert!(native_event(b"x").is_none());
        assert!(native_event(b"eNaN\n").is_none());
    }

    #[test]
    fn flask_messages_become_frames() {
        let event =
            flask_event(br#"{"data": {"message": "hi"}, "type": "request", "id": 7}"#).unwrap();
        assert_eq!(event.id, Some(7));
        assert_eq!(
            &event.frame[..],
            b"id: 7\nevent: request\ndata: {\"message\": \"hi\"}\n\n"
        );
        // Foreign ids are not ours to resume from; strings pass through as lines.
        let event = flask_event(br#"{"data": "a\nb", "id": "x1", "retry": 5}"#).unwrap();
        assert_eq!(event.id, None);
        assert_eq!(&event.frame[..], b"data: a\ndata: b\nretry: 5\n\n");
        // A type that could break the framing is refused, as are non-messages.
        assert!(flask_event(br#"{"data": 1, "type": "a\nb"}"#).is_none());
        for reserved in crate::names::SERVER_EVENT_TYPES {
            let message = format!(r#"{{"data": {{"resumeFrom": "1"}}, "type": "{reserved}"}}"#);
            assert!(flask_event(message.as_bytes()).is_none(), "{reserved}");
        }
        assert!(flask_event(b"not json").is_none());
        assert!(flask_event(br#"{"type": "x"}"#).is_none());
    }
}
