//! TURN allocation accounting: how many allocations exist per credential, per client address
//! and in total, the relayed address of each, and the peers each has asked for. No sockets:
//! the packet filter asks and reports, allocation-closed notifications release.
//!
//! Also the file-descriptor budget: every allocation holds one UDP socket, so the total cap is
//! computed at start from the open-file limit, after HTTP's `--max-connections` and a reserve.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Descriptors kept free for everything that is neither a client connection nor a relay
/// socket: listeners, the runtime's epoll and wake-up fds, Redis, certificate files, logs.
pub const FD_RESERVE: u64 = 256;

/// Distinct peer addresses one allocation may ask permissions for. A browser needs one per
/// candidate address of the other side (a handful); each costs the server a timer task.
pub const MAX_PEERS_PER_ALLOCATION: usize = 64;

/// The allocation caps in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_ip: usize,
    pub per_user: usize,
}

/// Why an Allocate is refused with 486.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    Total(usize),
    PerIp(usize),
    PerUser(usize),
}

impl std::fmt::Display for QuotaRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuotaRefusal::Total(n) => write!(f, "{n} allocations in total"),
            QuotaRefusal::PerIp(n) => write!(f, "{n} allocations from this address"),
            QuotaRefusal::PerUser(n) => write!(f, "{n} allocations with this credential"),
        }
    }
}

/// The total cap: `--turn-max-allocations`, lowered so relay sockets can never take the
/// descriptors HTTP needs: `nofile - max_connections - FD_RESERVE` (`nofile` after main raised
/// the soft limit; `None` when unlimited).
pub fn fd_budget(requested: usize, nofile: Option<u64>, max_connections: usize) -> usize {
    match nofile {
        None => requested,
        Some(nofile) => {
            let left = nofile.saturating_sub(max_connections as u64 + FD_RESERVE);
            requested.min(usize::try_from(left).unwrap_or(usize::MAX))
        }
    }
}

/// The process's open-file soft limit now (`None`: unlimited or unknown).
pub fn open_file_limit() -> Option<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(limit.rlim_cur)
}

/// One allocation, keyed by the client's address (the 5-tuple, on our one UDP socket).
struct Allocation {
    user: Arc<str>,
    /// Set when the success response went out; `None` while the Allocate is being handled.
    relay: Option<SocketAddr>,
    peers: HashSet<IpAddr>,
}

/// The counts. Invariant: `per_ip`, `per_user` and `by_client.len()` always agree with the
/// entries of `by_client` (pending ones included), and zero counts are removed, so the maps
/// never hold more than `caps.total` keys.
pub struct Quota {
    caps: Caps,
    by_client: HashMap<SocketAddr, Allocation>,
    per_ip: HashMap<IpAddr, usize>,
    per_user: HashMap<Arc<str>, usize>,
    relays: HashSet<SocketAddr>,
}

impl Quota {
    pub fn new(caps: Caps) -> Self {
        Quota {
            caps,
            by_client: HashMap::new(),
            per_ip: HashMap::new(),
            per_user: HashMap::new(),
            relays: HashSet::new(),
        }
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Allocations held now (pending ones included).
    pub fn total(&self) -> usize {
        self.by_client.len()
    }

    /// Whether `client` holds (or is being given) an allocation.
    pub fn has(&self, client: SocketAddr) -> bool {
        self.by_client.contains_key(&client)
    }

    /// Whether `addr` is the relayed address of a live allocation.
    pub fn is_relay(&self, addr: SocketAddr) -> bool {
        self.relays.contains(&addr)
    }

    /// Takes a place for an allocation `client` is asking for with credential `user`.
    pub fn reserve(&mut self, client: SocketAddr, user: &str) -> Result<(), QuotaRefusal> {
        if self.by_client.contains_key(&client) {
            // The server answers 437 (Allocation Mismatch); nothing new is held.
            return Ok(());
        }
        if self.by_client.len() >= self.caps.total {
            return Err(QuotaRefusal::Total(self.caps.total));
        }
        if self.per_ip.get(&client.ip()).copied().unwrap_or(0) >= self.caps.per_ip {
            return Err(QuotaRefusal::PerIp(self.caps.per_ip));
        }
        if self.per_user.get(user).copied().unwrap_or(0) >= self.caps.per_user {
            return Err(QuotaRefusal::PerUser(self.caps.per_user));
        }
        let user: Arc<str> = self
            .per_user
            .get_key_value(user)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| user.into());
        *self.per_ip.entry(client.ip()).or_insert(0) += 1;
        *self.per_user.entry(user.clone()).or_insert(0) += 1;
        self.by_client.insert(
            client,
            Allocation {
                user,
                relay: None,
                peers: HashSet::new(),
            },
        );
        Ok(())
    }

    /// The server made the allocation: remember its relayed address.
    pub fn confirm(&mut self, client: SocketAddr, relay: SocketAddr) {
        if let Some(a) = self.by_client.get_mut(&client) {
            if let Some(old) = a.relay.replace(relay) {
                self.relays.remove(&old);
            }
            self.relays.insert(relay);
        }
    }

    /// Whether `client`'s allocation exists but was never confirmed (the Allocate failed).
    pub fn is_pending(&self, client: SocketAddr) -> bool {
        self.by_client
            .get(&client)
            .is_some_and(|a| a.relay.is_none())
    }

    /// The allocation is gone (closed, expired, refused): give its place back.
    pub fn release(&mut self, client: SocketAddr) {
        let Some(a) = self.by_client.remove(&client) else {
            return;
        };
        if let Some(relay) = a.relay {
            self.relays.remove(&relay);
        }
        decrement(&mut self.per_ip, &client.ip());
        decrement(&mut self.per_user, &a.user);
    }

    /// Records that `client`'s allocation asks to reach `peers`; false past
    /// [`MAX_PEERS_PER_ALLOCATION`] distinct addresses (nothing recorded then).
    pub fn add_peers(&mut self, client: SocketAddr, peers: &[IpAddr]) -> bool {
        let Some(a) = self.by_client.get_mut(&client) else {
            return true; // no allocation: the server itself refuses
        };
        let new = peers.iter().filter(|p| !a.peers.contains(p)).count();
        if a.peers.len() + new > MAX_PEERS_PER_ALLOCATION {
            return false;
        }
        a.peers.extend(peers.iter().copied());
        true
    }
}

/// Counts one fewer for `key`, removing it at zero.
fn decrement<K, Q>(map: &mut HashMap<Q, usize>, key: &K)
where
    K: std::hash::Hash + Eq + ?Sized,
    Q: std::hash::Hash + Eq + std::borrow::Borrow<K>,
{
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_per_user_per_ip_and_total_then_release() {
        let mut q = Quota::new(Caps {
            total: 4,
            per_ip: 2,
            per_user: 3,
        });
        q.reserve(addr("10.0.0.1:1"), "u").unwrap();
        q.reserve(addr("10.0.0.1:2"), "u").unwrap();
        assert_eq!(
            q.reserve(addr("10.0.0.1:3"), "v"),
            Err(QuotaRefusal::PerIp(2))
        );
        q.reserve(addr("10.0.0.2:1"), "u").unwrap();
        assert_eq!(
            q.reserve(addr("10.0.0.3:1"), "u"),
            Err(QuotaRefusal::PerUser(3))
        );
        q.reserve(addr("10.0.0.3:1"), "v").unwrap();
        assert_eq!(
            q.reserve(addr("10.0.0.4:1"), "w"),
            Err(QuotaRefusal::Total(4))
        );
        assert!(q.reserve(addr("10.0.0.1:1"), "u").is_ok(), "same 5-tuple");
        q.confirm(addr("10.0.0.1:1"), addr("10.0.0.9:40000"));
        assert!(q.is_relay(addr("10.0.0.9:40000")));
        assert!(!q.is_pending(addr("10.0.0.1:1")));
        assert!(q.is_pending(addr("10.0.0.1:2")));
        q.release(addr("10.0.0.1:1"));
        assert!(!q.is_relay(addr("10.0.0.9:40000")));
        q.release(addr("10.0.0.1:1"));
        assert_eq!(q.total(), 3);
        q.reserve(addr("10.0.0.4:1"), "w").unwrap();
        for c in ["10.0.0.1:2", "10.0.0.2:1", "10.0.0.3:1", "10.0.0.4:1"] {
            q.release(addr(c));
        }
        assert!(q.per_ip.is_empty() && q.per_user.is_empty() && q.relays.is_empty());
    }

    #[test]
    fn peers_per_allocation_are_capped() {
        let mut q = Quota::new(Caps {
            total: 1,
            per_ip: 1,
            per_user: 1,
        });
        let c = addr("10.0.0.1:1");
        q.reserve(c, "u").unwrap();
        let peers: Vec<IpAddr> = (0..MAX_PEERS_PER_ALLOCATION as u32)
            .map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
            .collect();
        assert!(q.add_peers(c, &peers));
        assert!(q.add_peers(c, &peers[..3]), "known peers again");
        assert!(!q.add_peers(c, &["8.8.8.8".parse().unwrap()]));
    }

    #[test]
    fn the_fd_budget_leaves_http_its_descriptors() {
        assert_eq!(fd_budget(1000, Some(20_000), 16_000), 1000);
        assert_eq!(
            fd_budget(10_000, Some(20_000), 16_000),
            20_000 - 16_000 - 256
        );
        assert_eq!(fd_budget(1000, Some(1024), 16_000), 0);
        assert_eq!(fd_budget(1000, None, 16_000), 1000);
    }
}
