//! The relay: one active per service across replicas (a lease in Redis),
//! publishing the outbox in written order, each key's events in `seq` order.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bson::{Document, doc, oid::ObjectId};
use futures::{StreamExt, TryStreamExt};
use redis::{Script, aio::ConnectionManager};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Outbox, OutboxSettings};
use contract::{Envelope, StreamEntry, streams::Stream};

use crate::{backoff::Backoff, failpoint, publisher::Publisher, settings::RETENTION_SWEEP_EVERY};

/// Publishes an outbox while holding its lease; see the module docs.
#[derive(Debug)]
pub struct Relay {
    outbox: Outbox,
    client: redis::Client,
    conn: ConnectionManager,
    publisher: Publisher,
    lease_key: String,
    holder: String,
    settings: OutboxSettings,
}

impl Relay {
    pub(super) fn new(
        outbox: Outbox,
        client: redis::Client,
        conn: ConnectionManager,
        publisher: Publisher,
        holder: &str,
        settings: OutboxSettings,
    ) -> Self {
        Self {
            lease_key: outbox.ns.key(&format!("outbox-lease:{}", outbox.service)),
            outbox,
            client,
            conn,
            publisher,
            holder: holder.to_owned(),
            settings,
        }
    }
}

static RENEW: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

static RELEASE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Mongo(#[from] mongodb::error::Error),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("malformed outbox entry {0}")]
    Malformed(String),
}

impl Relay {
    /// Runs until `shutdown`; releases the lease on the way out.
    pub async fn run(self, shutdown: CancellationToken) {
        let listener = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(listen(
            self.client.clone(),
            self.outbox.bell_channel(),
            self.outbox.wake.clone(),
            shutdown.clone(),
        )));
        let mut held = false;
        let mut renewed_at = tokio::time::Instant::now();
        let mut last_sweep = tokio::time::Instant::now();
        info!(lease = %self.lease_key, holder = %self.holder, "outbox relay started");
        while !shutdown.is_cancelled() {
            // A holder renews at a third of the TTL, not on every round: the
            // check before each publish (see `relay_once`) keeps it safe.
            if !held || renewed_at.elapsed() >= self.settings.lease_ttl / 3 {
                held = match self.hold_lease(held).await {
                    Ok(h) => h,
                    Err(e) => {
                        warn!(error = %e, "outbox lease check failed");
                        false
                    }
                };
                renewed_at = tokio::time::Instant::now();
                self.outbox.held.store(held, Ordering::Relaxed);
            }
            metrics::gauge!("outbox_relay_active").set(if held { 1.0 } else { 0.0 });
            let mut more = false;
            if held {
                match self.relay_once().await {
                    Ok(n) => more = n as i64 >= self.settings.batch,
                    Err(e) => warn!(error = %e, "outbox relay round failed; retrying"),
                }
                if last_sweep.elapsed() > RETENTION_SWEEP_EVERY {
                    self.sweep().await;
                    last_sweep = tokio::time::Instant::now();
                }
            }
            if more {
                continue;
            }
            // The lease holder waits for work; the others check the lease at
            // a third of its TTL.
            let wait = if held {
                self.settings
                    .poll
                    .min((self.settings.lease_ttl / 3).saturating_sub(renewed_at.elapsed()))
            } else {
                self.settings.lease_ttl / 3
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = self.outbox.wake.notified(), if held => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        self.outbox.held.store(false, Ordering::Relaxed);
        if held {
            let _: Result<i64, _> = RELEASE
                .key(&self.lease_key)
                .arg(&self.holder)
                .invoke_async(&mut self.conn.clone())
                .await;
        }
        drop(listener);
        info!("outbox relay stopped");
    }

    /// Keeps (or takes) the lease; `true` while this relay holds it.
    async fn hold_lease(&self, held: bool) -> Result<bool, RelayError> {
        let ttl = u64::try_from(self.settings.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut conn = self.conn.clone();
        if held {
            let renewed: i64 = RENEW
                .key(&self.lease_key)
                .arg(&self.holder)
                .arg(ttl)
                .invoke_async(&mut conn)
                .await?;
            if renewed == 1 {
                return Ok(true);
            }
            warn!("outbox lease lost");
        }
        let taken: Option<String> = redis::cmd("SET")
            .arg(&self.lease_key)
            .arg(&self.holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl)
            .query_async(&mut conn)
            .await?;
        if taken.is_some() {
            info!(holder = %self.holder, "outbox lease acquired; this replica relays");
        }
        Ok(taken.is_some())
    }

    /// One round: read, publish, mark. Returns how many entries it handled.
    async fn relay_once(&self) -> Result<usize, RelayError> {
        let batch: Vec<Document> = self
            .outbox
            .coll
            .find(doc! { "published": false })
            .sort(doc! { "written_at": 1, "_id": 1 })
            .limit(self.settings.batch)
            .await?
            .try_collect()
            .await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let ordered = order_by_key(&batch)?;
        failpoint::hit(self.publisher.namespace(), "outbox.before_publish").await;
        // Another relay may have taken over while this one slept.
        let mut conn = self.conn.clone();
        let holder: Option<String> = redis::cmd("GET")
            .arg(&self.lease_key)
            .query_async(&mut conn)
            .await?;
        if holder.as_deref() != Some(self.holder.as_str()) {
            return Ok(0);
        }
        let events: Vec<(Stream, &Envelope)> = ordered.iter().map(|(s, e, _)| (*s, e)).collect();
        self.publisher.publish_all(&events).await?;
        failpoint::hit(self.publisher.namespace(), "outbox.after_publish").await;
        let ids: Vec<ObjectId> = ordered.iter().map(|(_, _, id)| *id).collect();
        if self.settings.retention.is_zero() {
            // Nothing to keep: one write per entry instead of a mark and a
            // later sweep.
            self.outbox
                .coll
                .delete_many(doc! { "_id": { "$in": &ids } })
                .await?;
        } else {
            self.outbox
                .coll
                .update_many(
                    doc! { "_id": { "$in": &ids } },
                    doc! { "$set": { "published": true }, "$currentDate": { "published_at": true } },
                )
                .await?;
        }
        metrics::counter!("outbox_published_total").increment(ids.len() as u64);
        debug!(count = ids.len(), "outbox entries published");
        Ok(batch.len())
    }

    async fn sweep(&self) {
        if self.settings.retention.is_zero() {
            return;
        }
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(self.settings.retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = bson::DateTime::from_chrono(cutoff);
        match self
            .outbox
            .coll
            .delete_many(doc! { "published": true, "published_at": { "$lt": cutoff } })
            .await
        {
            Ok(r) if r.deleted_count > 0 => {
                debug!(deleted = r.deleted_count, "old outbox entries removed")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "outbox sweep failed"),
        }
    }
}

/// The batch in publishing order: entries keep their written order, except
/// that each key's entries go out in `seq` order.
fn order_by_key(batch: &[Document]) -> Result<Vec<(Stream, Envelope, ObjectId)>, RelayError> {
    let mut parsed = Vec::with_capacity(batch.len());
    for d in batch {
        let id = d
            .get_object_id("_id")
            .map_err(|_| RelayError::Malformed("without _id".into()))?;
        let bad = || RelayError::Malformed(id.to_hex());
        let stream = d
            .get_str("stream")
            .ok()
            .and_then(Stream::from_name)
            .ok_or_else(bad)?;
        let key = d.get_str("key").map_err(|_| bad())?.to_owned();
        let seq = d.get_i64("seq").map_err(|_| bad())?;
        let fields = d.get_document("fields").map_err(|_| bad())?;
        let entry = StreamEntry {
            id: id.to_hex(),
            fields: fields
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.as_bytes().to_vec())))
                .collect(),
        };
        let envelope = Envelope::from_entry(&entry).map_err(|_| bad())?;
        parsed.push((key, seq, stream, envelope, id));
    }
    // Slots of each key, in written order, refilled in seq order.
    let mut slots: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, (key, ..)) in parsed.iter().enumerate() {
        slots.entry(key.clone()).or_default().push(i);
    }
    let mut out: Vec<Option<(Stream, Envelope, ObjectId)>> = vec![None; parsed.len()];
    let mut by_key: HashMap<String, Vec<(i64, Stream, Envelope, ObjectId)>> = HashMap::new();
    for (key, seq, stream, envelope, id) in parsed {
        by_key
            .entry(key)
            .or_default()
            .push((seq, stream, envelope, id));
    }
    for (key, mut entries) in by_key {
        entries.sort_by_key(|(seq, ..)| *seq);
        for (slot, (_, stream, envelope, id)) in slots[&key].iter().zip(entries) {
            out[*slot] = Some((stream, envelope, id));
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// Wakes the relay when another replica rings (see the module docs).
/// Without the subscription the relay still polls.
async fn listen(
    client: redis::Client,
    channel: String,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    while !shutdown.is_cancelled() {
        match subscribe(&client, &channel).await {
            Ok(pubsub) => {
                backoff.reset();
                let mut rings = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        ring = rings.next() => match ring {
                            Some(_) => wake.notify_one(),
                            None => { debug!("outbox wake-up subscription closed; reopening"); break }
                        }
                    }
                }
            }
            Err(e) => debug!(error = %e, "outbox wake-up subscription unavailable; polling"),
        }
        if !backoff.sleep(&shutdown).await {
            return;
        }
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, seq: i64, n: u8) -> Document {
        let e = Envelope::new(
            "order.status_updated.v1",
            key,
            "c",
            "t",
            &serde_json::json!({"n": n}),
        )
        .unwrap();
        let mut fields = Document::new();
        for (k, v) in e.to_fields() {
            fields.insert(k, v);
        }
        doc! { "_id": ObjectId::new(), "stream": "orders-stream", "key": key, "seq": seq, "fields": fields }
    }

    #[test]
    fn each_key_goes_out_in_seq_order_keeping_the_written_order_otherwise() {
        // Written order: a3, b1, a2, c1, a4 (a's v2 committed later than v3 by the clock).
        let batch = [
            entry("a", 3, 0),
            entry("b", 1, 1),
            entry("a", 2, 2),
            entry("c", 1, 3),
            entry("a", 4, 4),
        ];
        let out = order_by_key(&batch).unwrap();
        let got: Vec<(String, u64)> = out
            .iter()
            .map(|(_, e, _)| (e.key.clone(), e.payload["n"].as_u64().unwrap()))
            .collect();
        let want = [("a", 2), ("b", 1), ("a", 0), ("c", 3), ("a", 4)];
        assert_eq!(got, want.map(|(k, n)| (k.to_owned(), n)));
    }
}
