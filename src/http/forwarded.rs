//! Who a request really comes from and which origin its page was served from, behind a proxy.
//!
//! Behind a load balancer every connection comes from the proxy, over whatever scheme the
//! proxy speaks to us. For a connection from a `--trusted-proxy` address, the client's address
//! and the public scheme and host come from the proxy's headers instead; from anyone else those
//! headers are ignored (a client must not pick its own address or origin). [`view`] is the one
//! place that decides, called by every relay path (hyper's route, `direct.rs`,
//! `direct_publish.rs`) and by `/config`.

use std::net::IpAddr;

use http::header::{HeaderName, FORWARDED};
use http::{HeaderMap, Request};

use super::{request_authority, Client, Transport};
use crate::config::{Cidr, PublicUrl};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

// `http::fast`'s `CHECKED_FIELDS` keeps these four (and `Host`) from a publish head: every
// header `view` reads.

/// Who is asking and which origin their page has, as far as this server can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View<'a> {
    /// The client's address: a trusted proxy's word for it, else the connection's peer. Rate
    /// limits key on it.
    pub client: IpAddr,
    /// The scheme and `host[:port]` the client used: a trusted proxy's word, else this
    /// connection's transport and `Host`.
    pub scheme: &'static str,
    pub authority: Option<&'a str>,
    /// Whether `authority` came from a trusted proxy's header.
    forwarded_host: bool,
    public: Option<&'a PublicUrl>,
}

/// The one place that decides [`View`] for a request.
pub fn view<'a, B>(
    req: &'a Request<B>,
    client: Client,
    trusted: &[Cidr],
    public: Option<&'a PublicUrl>,
) -> View<'a> {
    let peer = client.addr.ip().to_canonical();
    let mut seen = View {
        client: peer,
        scheme: match client.transport {
            Transport::Tls => "https",
            Transport::Plain | Transport::PlainOnTlsPort => "http",
        },
        authority: request_authority(req),
        forwarded_host: false,
        public,
    };
    if !trusted.iter().any(|net| net.contains(peer)) {
        return seen;
    }
    let said = proxies_say(req.headers(), peer, trusted);
    seen.client = said.client;
    if let Some(scheme) = said.proto {
        seen.scheme = scheme;
    }
    if let Some(host) = said
        .host
        .filter(|h| h.parse::<http::uri::Authority>().is_ok())
    {
        seen.authority = Some(host);
        seen.forwarded_host = true;
    }
    seen
}

impl View<'_> {
    /// `Origin` is this server's own: `scheme://authority` of the request as the client sent
    /// it, or `--public-url`.
    pub fn is_own_origin(&self, origin: &str) -> bool {
        if self
            .public
            .is_some_and(|p| p.origin().eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let Some(host) = self.authority else {
            return false;
        };
        let Some(rest) = origin
            .strip_prefix(self.scheme)
            .and_then(|r| r.strip_prefix("://"))
        else {
            return false;
        };
        let default_port = if self.scheme == "https" {
            ":443"
        } else {
            ":80"
        };
        let strip = |h: &str| {
            h.strip_suffix(default_port)
                .unwrap_or(h)
                .to_ascii_lowercase()
        };
        strip(rest) == strip(host)
    }

    /// The host (no port) the page was loaded from, for the STUN/TURN URLs in `/config`: a
    /// trusted proxy's word, else `--public-url`, else this request's `Host`.
    pub fn page_host(&self) -> Option<String> {
        let authority = match (self.forwarded_host, self.public) {
            (false, Some(public)) => public.authority(),
            _ => self.authority?,
        };
        let authority: http::uri::Authority = authority.parse().ok()?;
        // A bare IPv6 host goes into a stun: URL in brackets, as Authority keeps it.
        Some(authority.host().to_owned()).filter(|h| !h.is_empty())
    }
}

/// What the trusted proxies in front of us say.
struct ProxiesSay<'a> {
    client: IpAddr,
    proto: Option<&'static str>,
    host: Option<&'a str>,
}

/// Most hops read from a forwarding header (bounds the work a long list can cause).
const MAX_HOPS: usize = 32;

/// Reads `X-Forwarded-For` (with `-Proto`, `-Host`) when the request has it, else RFC 7239
/// `Forwarded`. The client is the right-most address that is not itself a trusted proxy (the
/// ones left of it were written by whoever sent them, the client included); an address that
/// cannot be read stops the walk at the last proxy. `peer` is a trusted proxy.
fn proxies_say<'a>(headers: &'a HeaderMap, peer: IpAddr, trusted: &[Cidr]) -> ProxiesSay<'a> {
    let values = |name: &HeaderName| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let mut said = ProxiesSay {
        client: peer,
        proto: None,
        host: None,
    };
    if headers.contains_key(&X_FORWARDED_FOR) {
        for hop in values(&X_FORWARDED_FOR).rev().take(MAX_HOPS) {
            let Some(ip) = node_address(hop) else { break };
            said.client = ip;
            if !trusted.iter().any(|net| net.contains(ip)) {
                break;
            }
        }
        // Set (replaced) by the nearest proxy: its right-most value.
        said.proto = values(&X_FORWARDED_PROTO).next_back().and_then(scheme);
        said.host = values(&X_FORWARDED_HOST).next_back();
        return said;
    }
    // Forwarded: each element was written by the hop it reached; an element written by a
    // trusted hop describes the request that hop received (its for=, proto= and host=).
    let elements = headers
        .get_all(&FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for element in elements.rev().take(MAX_HOPS) {
        let mut next = None;
        for pair in element.split(';') {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "for" => next = node_address(value),
                "proto" => said.proto = scheme(value).or(said.proto),
                "host" if !value.is_empty() => said.host = Some(value),
                _ => {}
            }
        }
        let Some(ip) = next else { break };
        said.client = ip;
        if !trusted.iter().any(|net| net.contains(ip)) {
            break;
        }
    }
    said
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`; `None` for `unknown`,
/// obfuscated names and anything else.
fn node_address(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    let ip = match text.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match text.parse::<std::net::SocketAddr>() {
            Ok(addr) => addr.ip(),
            Err(_) => text.strip_prefix('[')?.strip_suffix(']')?.parse().ok()?,
        },
    };
    Some(ip.to_canonical())
}

fn scheme(text: &str) -> Option<&'static str> {
    if text.eq_ignore_ascii_case("https") {
        Some("https")
    } else if text.eq_ignore_ascii_case("http") {
        Some("http")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|n| Cidr::parse(n).unwrap()).collect()
    }

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder()
            .uri("/stream")
            .header("host", "inner:8001");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap()
    }

    fn client(addr: &str) -> Client {
        Client {
            addr: addr.parse().unwrap(),
            transport: Transport::Plain,
        }
    }

    #[test]
    fn untrusted_peers_choose_nothing() {
        let req = request(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=203.0.113.9;proto=https;host=evil.example"),
        ]);
        let seen = view(&req, client("192.0.2.7:5000"), &nets(&["10.0.0.0/8"]), None);
        assert_eq!(seen.client, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!((seen.scheme, seen.authority), ("http", Some("inner:8001")));
        assert!(seen.is_own_origin("http://inner:8001"));
        assert!(!seen.is_own_origin("https://evil.example"));
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client wrote 1.1.1.1 itself; the outer proxy (10.0.0.2) saw 198.51.100.4.
        let req = request(&[
            ("x-forwarded-for", "1.1.1.1, 198.51.100.4"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "chat.example.org"),
        ]);
        let seen = view(&req, client("10.0.0.1:5000"), &trusted, None);
        assert_eq!(seen.client, "198.51.100.4".parse::<IpAddr>().unwrap());
        assert!(seen.is_own_origin("https://chat.example.org"));
        assert!(!seen.is_own_origin("http://inner:8001"));
        assert_eq!(seen.page_host().as_deref(), Some("chat.example.org"));
        // Every hop trusted: the left-most; garbage stops at the last proxy.
        let req = request(&[("x-forwarded-for", "10.9.9.9, 10.0.0.2")]);
        let seen = view(&req, client("10.0.0.1:5000"), &trusted, None);
        assert_eq!(seen.client, "10.9.9.9".parse::<IpAddr>().unwrap());
        let req = request(&[("x-forwarded-for", "not-an-ip, 10.0.0.2")]);
        let seen = view(&req, client("10.0.0.1:5000"), &trusted, None);
        assert_eq!(seen.client, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(
            seen.authority,
            Some("inner:8001"),
            "no X-Forwarded-Host: Host"
        );
    }

    #[test]
    fn rfc_7239_forwarded_is_read_too() {
        let trusted = nets(&["10.0.0.0/8", "::1"]);
        let req = request(&[(
            "forwarded",
            r#"for=192.0.2.60;proto=http, for="[2001:db8::7]:4711";proto=https;host="chat.example.org""#,
        )]);
        let seen = view(&req, client("[::1]:5000"), &trusted, None);
        assert_eq!(seen.client, "2001:db8::7".parse::<IpAddr>().unwrap());
        assert_eq!(seen.scheme, "https");
        assert_eq!(seen.authority, Some("chat.example.org"));
        let req = request(&[("forwarded", "for=unknown;proto=https")]);
        let seen = view(&req, client("10.0.0.1:5000"), &trusted, None);
        assert_eq!(seen.client, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(seen.scheme, "https");
    }

    #[test]
    fn the_public_url_is_our_own_origin() {
        let public = PublicUrl::parse("https://chat.example.org").unwrap();
        let req = request(&[]);
        let seen = view(&req, client("192.0.2.7:5000"), &[], Some(&public));
        assert!(seen.is_own_origin("https://chat.example.org"));
        assert!(
            seen.is_own_origin("http://inner:8001"),
            "the direct address still is"
        );
        assert!(!seen.is_own_origin("https://other.example"));
        assert_eq!(seen.page_host().as_deref(), Some("chat.example.org"));
    }
}
