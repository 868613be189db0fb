//! Server-issued peer identities: the claim a room's place holds, the token a stream hands out
//! in its `welcome` event, and the check a publish goes through before its event is stamped
//! `"from": PEER`.
//!
//! A token is base64url(claim ‖ HMAC-SHA256(secret, channel "\n" peer "\n" claim)), where the
//! claim is 128 random bits drawn when a stream first takes a free peer id. The signature
//! proves "the server gave this claim of this peer id on this channel" to every instance with
//! the same `--peer-secret`; which claim is *current* is the hub's to say (the room's place
//! keeps it), so a token from an earlier claim of the id is worthless. No hyper here.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::names::{ChannelName, PeerId, ANONYMOUS_PREFIX};

/// Bytes of a claim.
const CLAIM_LEN: usize = 16;
/// Bytes of a decoded token: the claim, then the HMAC-SHA256 tag.
const TOKEN_LEN: usize = CLAIM_LEN + 32;

/// One claim of a peer id in a room: drawn when a stream takes the id while it is free, kept
/// by the room's place while the id is held (and for `--peer-grace` after), and carried
/// inside the token. Two claims of the same id never share one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claim([u8; CLAIM_LEN]);

impl Claim {
    pub fn random() -> Claim {
        let mut bytes = [0u8; CLAIM_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system random source works");
        Claim(bytes)
    }

    /// 22 base64url characters (how Redis stores it).
    pub fn to_text(self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    pub fn from_text(text: &str) -> Option<Claim> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        Some(Claim(bytes.try_into().ok()?))
    }
}

impl std::fmt::Debug for Claim {
    // Printed shortened: a claim in a log line must not be enough to rebuild a token (it is
    // not, without the secret, but the log need not carry it whole either).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Claim({}…)", &self.to_text()[..4])
    }
}

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

    /// The token for `claim` of `peer` on `channel`.
    pub fn issue(&self, channel: &ChannelName, peer: &PeerId, claim: Claim) -> String {
        let tag = hmac::sign(&self.key, &signed_text(channel, peer, claim));
        let mut bytes = Vec::with_capacity(TOKEN_LEN);
        bytes.extend_from_slice(&claim.0);
        bytes.extend_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The claim `token` was issued for, if it was issued for `peer` on `channel` (the tag is
    /// compared in constant time). Whether that claim is still the current one is the hub's
    /// question.
    pub fn verify(&self, channel: &ChannelName, peer: &PeerId, token: &str) -> Option<Claim> {
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
        if bytes.len() != TOKEN_LEN {
            return None;
        }
        let (claim, tag) = bytes.split_at(CLAIM_LEN);
        let claim = Claim(claim.try_into().ok()?);
        hmac::verify(&self.key, &signed_text(channel, peer, claim), tag).ok()?;
        Some(claim)
    }
}

fn signed_text(channel: &ChannelName, peer: &PeerId, claim: Claim) -> Vec<u8> {
    let mut text = format!("{channel}\n{}\n", peer.as_str()).into_bytes();
    text.extend_from_slice(&claim.0);
    text
}

/// A fresh random peer id for a stream that gave none: `anon-` and 22 base64url characters
/// (128 bits). Streams cannot ask for such an id, so it is never claimed twice and its token
/// needs no place in the room to stay the only one.
pub fn random_peer() -> PeerId {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    PeerId::parse(&format!(
        "{ANONYMOUS_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(bytes)
    ))
    .expect("base64url is a valid peer id")
}

/// Whether `peer` is one the relay gave an anonymous stream.
pub fn is_anonymous(peer: &PeerId) -> bool {
    peer.as_str().starts_with(ANONYMOUS_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_peer_channel_and_claim() {
        let tokens = PeerTokens::new("secret");
        let room = ChannelName::parse("room").unwrap();
        let other = ChannelName::parse("room2").unwrap();
        let alice = PeerId::parse("alice").unwrap();
        let bob = PeerId::parse("bob").unwrap();
        let claim = Claim::random();
        let token = tokens.issue(&room, &alice, claim);
        assert_eq!(token.len(), 64);
        assert_eq!(tokens.verify(&room, &alice, &token), Some(claim));
        assert_eq!(tokens.verify(&other, &alice, &token), None);
        assert_eq!(tokens.verify(&room, &bob, &token), None);
        assert_eq!(tokens.verify(&room, &alice, "not base64 !"), None);
        assert_eq!(tokens.verify(&room, &alice, &token[..43]), None);
        assert_eq!(
            PeerTokens::new("other secret").verify(&room, &alice, &token),
            None
        );
        // Another instance with the same secret accepts it.
        assert_eq!(
            PeerTokens::new("secret").verify(&room, &alice, &token),
            Some(claim)
        );
        // Another claim of the same id gets another token; a claim swapped into a token
        // breaks its signature.
        let second = Claim::random();
        assert_ne!(claim, second);
        let token2 = tokens.issue(&room, &alice, second);
        assert_ne!(token, token2);
        let spliced = format!("{}{}", &token2[..22], &token[22..]);
        assert_eq!(tokens.verify(&room, &alice, &spliced), None);
        assert_eq!(Claim::from_text(&claim.to_text()), Some(claim));
    }

    #[test]
    fn random_peers_are_valid_distinct_and_anonymous() {
        let a = random_peer();
        assert_eq!(a.as_str().len(), 27);
        assert!(is_anonymous(&a));
        assert_ne!(a, random_peer());
        assert!(!is_anonymous(&PeerId::parse("alice").unwrap()));
    }
}
