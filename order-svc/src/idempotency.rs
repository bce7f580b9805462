//! `Idempotency-Key` on `POST /api/v1/orders`.
//!
//! A client that does not know whether its request went through (a timeout, a
//! dropped connection, a crashed server) sends it again with the same key:
//!
//! * same key, same body → the original response (same status, same body,
//!   same `Location`), marked `Idempotent-Replayed: true`; no second order,
//!   no second stock reservation;
//! * same key, different body → `422 idempotency_key_reused`;
//! * keys expire after `IDEMPOTENCY_TTL_SECS` (default 24 h).
//!
//! The key is written in the *same transaction* as the order it produced: the
//! key exists exactly when the order does. A request that crashed before its
//! commit left nothing behind, so its retry simply runs; one that crashed
//! after its commit is answered from the stored response. Two identical
//! requests racing each other conflict on the key inside their transactions;
//! the loser is retried, finds the winner's key and replays its response.
//! Business refusals (`404`, `409`) are stored too, so a retry gets the same
//! answer even if stock came back meanwhile. Validation errors (`422`) are not
//! stored: nothing happened.
//!
//! The body is compared by the SHA-256 of its canonical JSON (object keys
//! sorted), so re-serialising the same order differently is not a conflict.
//!
//! # Keys, tokens and what is stored
//!
//! A key is stored as its SHA-256, never as sent. The answer to a placed order
//! carries its tracking token, which is stored nowhere in clear: the record
//! keeps the answer without it, plus the token *sealed* with the key (XOR
//! with HMAC-SHA256 of the key). A replay presents the key, which unseals
//! the token and completes the answer; the stored record alone (without the
//! key) reveals nothing about the token. A client that picks a guessable key
//! makes its token as guessable as its key: the web app uses random UUIDs.

use std::{collections::HashSet, time::Duration};

use axum::http::HeaderMap;
use bson::{Document, doc};
use futures::TryStreamExt;
use mongodb::{ClientSession, Collection};
use serde_json::Value;
use sha2::{Digest, Sha256};

use contract::auth::TrackingToken;

use crate::error::ApiError;

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// A validated key and the hash of the request it came with.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// The client's key (secret: it unseals the token).
    value: String,
    /// SHA-256 (hex) of the key: the record's id.
    pub id: String,
    /// SHA-256 (hex) of the canonical request body.
    pub body_hash: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("body_hash", &self.body_hash)
            .finish_non_exhaustive()
    }
}

impl Key {
    fn keystream(&self) -> [u8; 32] {
        use hmac::{KeyInit, Mac};
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(self.value.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(b"foodchain tracking token v1");
        mac.finalize().into_bytes().into()
    }

    /// `token` sealed with this key (hex), for the record.
    pub fn seal(&self, token: &TrackingToken) -> String {
        let ks = self.keystream();
        let sealed: Vec<u8> = token.bytes().iter().zip(ks).map(|(t, k)| t ^ k).collect();
        hex::encode(sealed)
    }

    /// The token a record sealed with this key.
    pub fn unseal(&self, sealed: &str) -> Option<TrackingToken> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(sealed, &mut bytes).ok()?;
        for (b, k) in bytes.iter_mut().zip(self.keystream()) {
            *b ^= k;
        }
        Some(TrackingToken::from_bytes(bytes))
    }
}

/// What a key is for: the same key may be used once per scope (placing an
/// order, cancelling order `<id>`), and a key's records never mix scopes.
pub fn scope_of_cancel(order_id: &str) -> String {
    format!("cancel:{order_id}")
}

/// The scope of order creation.
pub const CREATE: &str = "create";

/// The key of a request, if it sent one; `422` for a malformed one.
pub fn from_request(
    headers: &HeaderMap,
    body: &Value,
    scope: &str,
) -> Result<Option<Key>, ApiError> {
    let Some(raw) = headers.get(HEADER) else {
        return Ok(None);
    };
    let value = raw
        .to_str()
        .ok()
        .filter(|v| (1..=255).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or(ApiError::InvalidIdempotencyKey)?;
    Ok(Some(Key {
        // Keys for order creation keep their pre-scope ids, so a retry that
        // straddles an upgrade still finds its first answer.
        id: if scope == CREATE {
            hex::encode(Sha256::digest(value.as_bytes()))
        } else {
            hex::encode(Sha256::digest(format!("{scope}\n{value}").as_bytes()))
        },
        value: value.to_owned(),
        body_hash: hash(body),
    }))
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn hash(body: &Value) -> String {
    let mut text = String::new();
    canonical(body, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// An HTTP answer as the API sent it, kept for replays (built by the API
/// layer; stored here as it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body, as sent.
    pub body: String,
    /// `Location` header, for 201s.
    pub location: Option<String>,
}

/// A response kept for replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Hash of the body that produced it.
    pub body_hash: String,
    /// What was answered (without the tracking token).
    pub reply: Reply,
    /// The tracking token of a placed order, sealed with the key.
    pub sealed_token: Option<String>,
}

/// The `idempotency_keys` collection.
#[derive(Debug, Clone)]
pub struct Keys {
    coll: Collection<Document>,
}

/// The key was already taken (by a request that committed first).
#[derive(Debug, thiserror::Error)]
#[error("idempotency key already used")]
pub struct Taken;

impl Keys {
    /// `idempotency_keys` of `db`.
    pub fn new(db: &mongodb::Database) -> Self {
        Self {
            coll: db.collection("idempotency_keys"),
        }
    }

    /// The stored response for `key`, if any.
    pub async fn get(&self, key: &Key) -> mongodb::error::Result<Option<Stored>> {
        let Some(d) = self.coll.find_one(doc! { "_id": &key.id }).await? else {
            return Ok(None);
        };
        Ok(parse(&d))
    }

    /// The record of `key`: its request's hash, the reply, the sealed token.
    pub fn document(key: &Key, reply: &Reply, token: Option<&TrackingToken>) -> Document {
        doc! {
            "_id": &key.id,
            "body_hash": &key.body_hash,
            "status": i32::from(reply.status),
            "body": &reply.body,
            "location": reply.location.as_deref(),
            "sealed_token": token.map(|t| key.seal(t)),
            "created_at": bson::DateTime::now(),
        }
    }

    /// Stores the reply (and the sealed token of a placed order) inside the
    /// transaction that produced it (`None`: on its own, for refusals, which
    /// change nothing else).
    pub async fn store(
        &self,
        s: Option<&mut ClientSession>,
        key: &Key,
        reply: &Reply,
        token: Option<&TrackingToken>,
    ) -> Result<(), StoreError> {
        let insert = self.coll.insert_one(Self::document(key, reply, token));
        let result = match s {
            Some(s) => insert.session(s).await,
            None => insert.await,
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if common::mongo::is_duplicate_key(&e) => Err(StoreError::Taken(Taken)),
            Err(e) => Err(StoreError::Mongo(e)),
        }
    }

    /// Adds the insert of `record` (a [`Keys::document`]) to a
    /// transaction's writes.
    pub fn stage(&self, writes: &mut common::writes::Writes, record: Document) {
        writes.insert(&self.coll, record);
    }

    /// Which of the key ids `ids` are stored.
    pub async fn existing(&self, ids: &[&str]) -> mongodb::error::Result<HashSet<String>> {
        let found: Vec<Document> = self
            .coll
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(found
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect())
    }

    /// Deletes keys older than `ttl`.
    pub async fn sweep(&self, ttl: Duration) {
        let cutoff =
            chrono::Utc::now() - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        if let Err(e) = self
            .coll
            .delete_many(doc! { "created_at": { "$lt": bson::DateTime::from_chrono(cutoff) } })
            .await
        {
            tracing::warn!(error = %e, "idempotency key sweep failed");
        }
    }
}

/// Storing a key failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else stored it first.
    #[error(transparent)]
    Taken(Taken),
    /// The database failed.
    #[error(transparent)]
    Mongo(mongodb::error::Error),
}

fn parse(d: &Document) -> Option<Stored> {
    Some(Stored {
        body_hash: d.get_str("body_hash").ok()?.to_owned(),
        reply: Reply {
            status: u16::try_from(d.get_i32("status").ok()?).ok()?,
            body: d.get_str("body").ok()?.to_owned(),
            location: d.get_str("location").ok().map(str::to_owned),
        },
        sealed_token: d.get_str("sealed_token").ok().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_hash_ignores_key_order_and_whitespace_but_not_values() {
        let a = json!({"customer": {"name": "A", "phone": "1"}, "items": [{"item_id": "x", "quantity": 1}]});
        let b: Value = serde_json::from_str(
            r#"{ "items": [ {"quantity": 1, "item_id": "x"} ], "customer": {"phone": "1", "name": "A"} }"#,
        )
        .unwrap();
        assert_eq!(hash(&a), hash(&b));
        let c = json!({"customer": {"name": "A", "phone": "1"}, "items": [{"item_id": "x", "quantity": 2}]});
        assert_ne!(hash(&a), hash(&c));
    }

    #[test]
    fn a_sealed_token_opens_only_with_its_key() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, "key-one".parse().unwrap());
        let one = from_request(&h, &json!({}), CREATE).unwrap().unwrap();
        h.insert(HEADER, "key-two".parse().unwrap());
        let two = from_request(&h, &json!({}), CREATE).unwrap().unwrap();
        let token = TrackingToken::generate();
        let sealed = one.seal(&token);
        assert!(!sealed.contains(token.expose()));
        assert_eq!(one.unseal(&sealed).unwrap(), token);
        assert_ne!(two.unseal(&sealed).unwrap(), token);
        assert_ne!(one.id, "key-one", "the key is stored hashed");
        assert!(!format!("{one:?}").contains("key-one"));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let mut h = HeaderMap::new();
        assert_eq!(from_request(&h, &json!({}), CREATE).unwrap(), None);
        h.insert(HEADER, "has space".parse().unwrap());
        assert!(matches!(
            from_request(&h, &json!({}), CREATE),
            Err(ApiError::InvalidIdempotencyKey)
        ));
        h.insert(HEADER, "a".repeat(256).parse().unwrap());
        assert!(from_request(&h, &json!({}), CREATE).is_err());
        h.insert(HEADER, "order-2026-11-23-0001".parse().unwrap());
        assert_eq!(
            from_request(&h, &json!({}), CREATE).unwrap().unwrap().value,
            "order-2026-11-23-0001"
        );
    }
}
