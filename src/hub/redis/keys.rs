//! Every Redis key and pub/sub channel name sigrelay uses, spelled once (the module docs of
//! `hub::redis` say what each holds).

use crate::names::ChannelName;

/// The prefix of every key and pub/sub channel sigrelay uses.
pub(super) const PREFIX: &str = "sigrelay:";
/// Control messages between instances (takeovers).
pub(super) const CONTROL: &str = "sigrelay:ctl";
/// The shared peer-token secret (never expires).
pub(super) const SECRET: &str = "sigrelay:peer-secret";
/// The cluster-wide event id counter.
pub(super) const ID: &str = "sigrelay:id";
/// `ALIVE_PREFIX` + instance id: the instance's liveness key.
pub(super) const ALIVE_PREFIX: &str = "sigrelay:alive:";
/// `EVENTS_PREFIX` + channel: the native format's pub/sub channel of a room's events.
pub(super) const EVENTS_PREFIX: &str = "sigrelay:ev:";
/// The pattern an instance listens on in the native format.
pub(super) const NATIVE_PATTERN: &str = "sigrelay:*";

/// A room's key of `kind` (`h` history, `f` floor, `s` subscriber counts, `p` places, `ev`
/// events).
pub(super) fn key(kind: &str, channel: &ChannelName) -> String {
    format!("{PREFIX}{kind}:{}", channel.as_str())
}

/// An instance's liveness key.
pub(super) fn alive(instance: &str) -> String {
    format!("{ALIVE_PREFIX}{instance}")
}
