//! Server-issued peer identities: the token a stream hands out in its `welcome` event, and the
//! check a publish goes through before its event is stamped `"from": PEER`.
//!
//! A token is base64url(HMAC-SHA256(secret, channel + "\n" + peer)), so it proves "the server
//! gave this peer id a stream on this channel" without any state: every instance with the same
//! `--peer-secret` accepts it, and a token is worthless in another channel. No hyper here.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;

use crate::names::{ChannelName, PeerId};

/// Signs and checks peer tokens with one secret.
pub struct PeerTokens {
    key: hmac::Key,
}

impl PeerTokens {
    pub fn new(secret: &str) -> Self {
        PeerTokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        }
    }

    /// The token for `peer` on `channel`.
    pub fn issue(&self, channel: &ChannelName, peer: &PeerId) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, &signed_text(channel, peer)).as_ref())
    }

    /// Whether `token` was issued for `peer` on `channel` (constant-time comparison).
    pub fn verify(&self, channel: &ChannelName, peer: &PeerId, token: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(token.trim()) else {
            return false;
        };
        hmac::verify(&self.key, &signed_text(channel, peer), &tag).is_ok()
    }
}

fn signed_text(channel: &ChannelName, peer: &PeerId) -> Vec<u8> {
    format!("{channel}\n{}", peer.as_str()).into_bytes()
}

/// A fresh random peer id (22 base64url characters, 128 bits) for a stream that gave none.
pub fn random_peer() -> PeerId {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system random source works");
    PeerId::parse(&URL_SAFE_NO_PAD.encode(bytes)).expect("base64url is a valid peer id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_peer_and_channel() {
        let tokens = PeerTokens::new("secret");
        let room = ChannelName::parse("room").unwrap();
        let other = ChannelName::parse("room2").unwrap();
        let alice = PeerId::parse("alice").unwrap();
        let bob = PeerId::parse("bob").unwrap();
        let token = tokens.issue(&room, &alice);
        assert!(tokens.verify(&room, &alice, &token));
        assert!(!tokens.verify(&other, &alice, &token));
        assert!(!tokens.verify(&room, &bob, &token));
        assert!(!tokens.verify(&room, &alice, "not base64 !"));
        assert!(!PeerTokens::new("other secret").verify(&room, &alice, &token));
        // Another instance with the same secret accepts it.
        assert!(PeerTokens::new("secret").verify(&room, &alice, &token));
    }

    #[test]
    fn random_peers_are_valid_and_distinct() {
        let a = random_peer();
        assert_eq!(a.as_str().len(), 22);
        assert_ne!(a, random_peer());
    }
}
