//! Tracking tokens: how a customer proves an order is theirs.
//!
//! Placing an order returns, once, a [`TrackingToken`]: 256 random bits,
//! base64url without padding (43 characters). Reading the order, its
//! timeline, its WebSocket (and cancelling it) needs the token; without it, or
//! with a wrong one, the answer is the same 404 as for an order that does not
//! exist. Services store only its [`TokenHash`] (SHA-256), which travels in
//! `order.created.v1` so that notify-svc can check tokens without calling
//! order-svc. Hashes are compared in constant time ([`TokenHash::matches`]).

use std::fmt;

use rand::RngCore;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The length of a token's text: 32 bytes in base64url without padding.
pub const TOKEN_LEN: usize = 43;

/// A tracking token (secret: its `Debug` does not show it).
#[derive(Clone, PartialEq, Eq)]
pub struct TrackingToken(String);

impl fmt::Debug for TrackingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TrackingToken(***)")
    }
}

impl TrackingToken {
    /// A fresh token.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        // ThreadRng: a CSPRNG (ChaCha12) seeded from the operating system.
        rand::rng().fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// The token of these 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(base64url(&bytes))
    }

    /// Its 32 bytes.
    pub fn bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let decoded = unbase64url(&self.0);
        out.copy_from_slice(&decoded[..32]);
        out
    }

    /// A presented token, if it has the shape of one (43 base64url characters).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        (s.len() == TOKEN_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| Self(s.to_owned()))
    }

    /// The token's text (to send to its owner, once).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What is stored instead of the token.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

/// SHA-256 of a tracking token: stored with the order and its timeline.
/// The default is [`TokenHash::NONE`], which no token matches.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenHash([u8; 32]);

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", &self.to_string()[..8])
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl TokenHash {
    /// A hash that no token has (what an unknown order is compared against,
    /// so that its answer takes the same time as a wrong token's).
    pub const NONE: TokenHash = TokenHash([0; 32]);

    /// Parses 64 hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// Whether `presented` is the token of this hash, in constant time. A
    /// missing token is compared too (against nothing that can match), so
    /// missing, wrong and unknown all take the same path.
    pub fn matches(&self, presented: Option<&TrackingToken>) -> bool {
        let candidate = presented.map_or(TokenHash::NONE.0, |t| t.hash().0);
        let equal: bool = candidate.ct_eq(&self.0).into();
        equal && presented.is_some() && *self != TokenHash::NONE
    }
}

impl Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| serde::de::Error::custom("a token hash is 64 hex digits"))
    }
}

impl JsonSchema for TokenHash {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TokenHash".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "SHA-256 (hex) of the order's tracking token; never the token itself.",
        })
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn unbase64url(s: &str) -> Vec<u8> {
    let value = |c: u8| ALPHABET.iter().position(|a| *a == c).unwrap_or(0) as u32;
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | (value(*c) << (18 - 6 * i)));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push(((n >> (16 - 8 * i)) & 0xff) as u8);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_urlsafe_characters_of_256_random_bits() {
        let a = TrackingToken::generate();
        let b = TrackingToken::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), TOKEN_LEN);
        assert_eq!(TrackingToken::parse(a.expose()).unwrap(), a);
        assert_eq!(TrackingToken::from_bytes(a.bytes()), a);
        assert_eq!(format!("{a:?}"), "TrackingToken(***)");
        assert!(TrackingToken::parse("short").is_none());
        assert!(TrackingToken::parse(&"+".repeat(43)).is_none());
    }

    #[test]
    fn hashes_match_only_their_token() {
        let t = TrackingToken::generate();
        let h = t.hash();
        assert!(h.matches(Some(&t)));
        assert!(!h.matches(Some(&TrackingToken::generate())));
        assert!(!h.matches(None));
        assert!(!TokenHash::NONE.matches(None));
        assert_eq!(TokenHash::parse(&h.to_string()).unwrap(), h);
        assert_eq!(serde_json::to_value(h).unwrap(), h.to_string());
    }
}
