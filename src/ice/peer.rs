//! Which peer addresses a TURN allocation may relay to (RFC 8656 §9 "Forbidden IP"): a pure
//! rule over an address and what the server knows about itself, so it is tested with many
//! addresses and no sockets. The packet filter and the relay sockets both ask it.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a peer address is refused; the text goes to the log, the client sees 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    /// 127.0.0.0/8, ::1: services on the server's own machine (CVE-2020-26262 class).
    Loopback,
    /// 0.0.0.0/8, `::`: "this host" to most stacks, so again the server itself.
    Unspecified,
    /// Multicast, broadcast, link-local (169.254/16 holds cloud metadata services, fe80::/10),
    /// reserved 240/4: never the address of a browser's candidate.
    NeverUseful,
    /// One of the server's own addresses on a port that is not a live relay.
    OwnAddress,
    /// A private range (RFC 1918, 100.64/10 CGNAT, fc00::/7) with `--turn-deny-private`.
    Private,
}

impl std::fmt::Display for Forbidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Forbidden::Loopback => "loopback peer",
            Forbidden::Unspecified => "unspecified peer",
            Forbidden::NeverUseful => "multicast, broadcast, link-local or reserved peer",
            Forbidden::OwnAddress => "the server's own address",
            Forbidden::Private => "private peer (--turn-deny-private)",
        })
    }
}

/// What the rule needs to know besides the address.
#[derive(Debug, Clone, Default)]
pub struct PeerRules {
    /// Every address of this machine (interfaces, the relay address, bound addresses).
    pub own_ips: HashSet<IpAddr>,
    /// Ports the server listens on (HTTP, STUN): refused on loopback even when loopback peers
    /// are allowed.
    pub own_ports: HashSet<u16>,
    /// `--turn-deny-private`.
    pub deny_private: bool,
    /// `--turn-allow-loopback-peers` (tests and single-machine demos only).
    pub allow_loopback: bool,
}

impl PeerRules {
    /// Whether a relay may send to `peer`. `is_live_relay` says whether `peer` is exactly the
    /// relayed address of a current allocation: two clients both relayed through this server
    /// reach each other through the server's own address, and that must keep working.
    pub fn check(
        &self,
        peer: SocketAddr,
        is_live_relay: impl FnOnce(SocketAddr) -> bool,
    ) -> Result<(), Forbidden> {
        let ip = canonical(peer.ip());
        let peer = SocketAddr::new(ip, peer.port());
        if peer.port() != 0 && is_live_relay(peer) {
            return Ok(());
        }
        if ip.is_unspecified() || is_this_network(ip) {
            return Err(Forbidden::Unspecified);
        }
        if never_useful(ip) {
            return Err(Forbidden::NeverUseful);
        }
        if self.own_ips.contains(&ip) {
            return Err(Forbidden::OwnAddress);
        }
        if ip.is_loopback() {
            if !self.allow_loopback {
                return Err(Forbidden::Loopback);
            }
            if self.own_ports.contains(&peer.port()) {
                return Err(Forbidden::OwnAddress);
            }
        }
        if self.deny_private && is_private(ip) {
            return Err(Forbidden::Private);
        }
        Ok(())
    }
}

/// `::ffff:a.b.c.d` is judged as `a.b.c.d`: a relay socket sends to both alike.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn is_this_network(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 0)
}

fn never_useful(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_multicast() || v4.is_broadcast() || v4.is_link_local() || v4.octets()[0] >= 240
        }
        IpAddr::V6(v6) => {
            v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80 || is_v4_compatible(v6)
        }
    }
}

/// `::a.b.c.d` (deprecated IPv4-compatible) could smuggle an IPv4 address past the rules.
fn is_v4_compatible(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified()
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// The addresses of this machine's interfaces now, plus `extra` (the relay and bound addresses).
pub fn own_ips(extra: &[IpAddr]) -> HashSet<IpAddr> {
    let mut ips: HashSet<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|iface| iface.ip())
        .collect();
    ips.extend(
        extra
            .iter()
            .copied()
            .map(canonical)
            .filter(|ip| !ip.is_unspecified()),
    );
    ips.insert(IpAddr::V4(Ipv4Addr::LOCALHOST));
    ips.insert(IpAddr::V6(Ipv6Addr::LOCALHOST));
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> PeerRules {
        PeerRules {
            own_ips: ["192.168.1.10", "127.0.0.1", "::1"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            own_ports: [8000, 3478].into_iter().collect(),
            deny_private: false,
            allow_loopback: false,
        }
    }

    fn check(rules: &PeerRules, peer: &str) -> Result<(), Forbidden> {
        let live: SocketAddr = "192.168.1.10:40000".parse().unwrap();
        rules.check(peer.parse().unwrap(), |a| a == live)
    }

    #[test]
    fn the_server_itself_and_useless_ranges_are_refused() {
        let r = rules();
        for (peer, why) in [
            ("127.0.0.1:9", Forbidden::OwnAddress),
            ("127.0.0.53:53", Forbidden::Loopback),
            ("127.255.255.254:1", Forbidden::Loopback),
            ("[::1]:53", Forbidden::OwnAddress),
            ("[::ffff:127.0.0.1]:53", Forbidden::OwnAddress),
            ("[::ffff:127.0.0.2]:53", Forbidden::Loopback),
            ("0.0.0.0:3478", Forbidden::Unspecified),
            ("0.1.2.3:80", Forbidden::Unspecified),
            ("[::]:80", Forbidden::Unspecified),
            ("[::ffff:0.0.0.0]:80", Forbidden::Unspecified),
            ("224.0.0.1:5353", Forbidden::NeverUseful),
            ("224.0.0.251:5353", Forbidden::NeverUseful),
            ("239.255.255.250:1900", Forbidden::NeverUseful),
            ("255.255.255.255:67", Forbidden::NeverUseful),
            ("240.0.0.1:1", Forbidden::NeverUseful),
            ("169.254.169.254:80", Forbidden::NeverUseful),
            ("[fe80::1]:80", Forbidden::NeverUseful),
            ("[ff02::1]:80", Forbidden::NeverUseful),
            ("[::127.0.0.1]:80", Forbidden::NeverUseful),
            ("192.168.1.10:8000", Forbidden::OwnAddress),
            ("192.168.1.10:3478", Forbidden::OwnAddress),
            ("192.168.1.10:22", Forbidden::OwnAddress),
            ("192.168.1.10:40001", Forbidden::OwnAddress),
        ] {
            assert_eq!(check(&r, peer), Err(why), "{peer}");
        }
    }

    #[test]
    fn lan_internet_and_live_relays_are_allowed() {
        let r = rules();
        for peer in [
            "192.168.1.11:50000",
            "10.0.0.5:1",
            "172.16.3.4:9",
            "100.64.0.1:9",
            "8.8.8.8:53",
            "[2001:db8::1]:443",
            "[fd00::1]:443",
            "192.168.1.10:40000",
            "[::ffff:192.168.1.10]:40000",
        ] {
            assert_eq!(check(&r, peer), Ok(()), "{peer}");
        }
    }

    #[test]
    fn deny_private_refuses_lan_ranges_only() {
        let r = PeerRules {
            deny_private: true,
            ..rules()
        };
        for peer in [
            "10.0.0.5:1",
            "172.31.0.1:1",
            "192.168.0.1:1",
            "100.127.0.1:1",
            "[fd12::1]:1",
        ] {
            assert_eq!(check(&r, peer), Err(Forbidden::Private), "{peer}");
        }
        assert_eq!(check(&r, "172.32.0.1:1"), Ok(()));
        assert_eq!(check(&r, "100.128.0.1:1"), Ok(()));
        assert_eq!(check(&r, "8.8.8.8:53"), Ok(()));
        assert_eq!(check(&r, "192.168.1.10:40000"), Ok(()), "live relay");
    }

    #[test]
    fn allow_loopback_still_protects_own_addresses_and_ports() {
        let r = PeerRules {
            allow_loopback: true,
            ..rules()
        };
        assert_eq!(check(&r, "127.0.0.2:5000"), Ok(()));
        assert_eq!(check(&r, "127.0.0.2:8000"), Err(Forbidden::OwnAddress));
        assert_eq!(check(&r, "127.0.0.1:5000"), Err(Forbidden::OwnAddress));
        assert_eq!(check(&r, "0.0.0.0:5000"), Err(Forbidden::Unspecified));
    }
}
