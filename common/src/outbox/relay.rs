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
                    Ok(left) => more = left,
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

    /// One round: read, publish, delete (or mark). Returns whether entries
    /// were left for the next round.
    async fn relay_once(&self) -> Result<bool, RelayError> {
        let docs: Vec<Document> = self
            .outbox
            .coll
            .find(doc! { "published": false })
            .sort(doc! { "written_at": 1, "_id": 1 })
            .limit(self.settings.batch)
            .await?
            .try_collect()
            .await?;
        if docs.is_empty() {
            return Ok(false);
        }
        // Whole entries, in written order, until `batch` events.
        let mut events = Vec::new();
        let mut ids = Vec::new();
        for d in &docs {
            if !events.is_empty() && events.len() as i64 >= self.settings.batch {
                break;
            }
            let (id, parsed) = events_of(d)?;
            ids.push(id);
            events.extend(parsed);
        }
        let more = ids.len() < docs.len() || docs.len() as i64 >= self.settings.batch;
        let ordered = order_by_key(events);
        failpoint::hit(self.publisher.namespace(), "outbox.before_publish").await;
        // Another relay may have taken over while this one slept.
        let mut conn = self.conn.clone();
        let holder: Option<String> = redis::cmd("GET")
            .arg(&self.lease_key)
            .query_async(&mut conn)
            .await?;
        if holder.as_deref() != Some(self.holder.as_str()) {
            return Ok(false);
        }
        let out: Vec<(Stream, &Envelope)> = ordered.iter().map(|(s, e)| (*s, e)).collect();
        self.publisher.publish_all(&out).await?;
        failpoint::hit(self.publisher.namespace(), "outbox.after_publish").await;
        if self.settings.retention.is_zero() {
            // Nothing to keep: one write per round instead of a mark and a
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
        metrics::counter!("outbox_published_total").increment(out.len() as u64);
        debug!(
            events = out.len(),
            entries = ids.len(),
            "outbox entries published"
        );
        Ok(more)
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

/// One event read from an entry.
#[derive(Debug)]
struct Parsed {
    key: String,
    seq: i64,
    stream: Stream,
    envelope: Envelope,
}

/// An entry's id and events: the `events` of a commit, or (the earlier
/// shape) the entry itself as one event.
fn events_of(d: &Document) -> Result<(ObjectId, Vec<Parsed>), RelayError> {
    let id = d
        .get_object_id("_id")
        .map_err(|_| RelayError::Malformed("without _id".into()))?;
    let bad = || RelayError::Malformed(id.to_hex());
    let one = |e: &Document| -> Result<Parsed, RelayError> {
        let stream = e
            .get_str("stream")
            .ok()
            .and_then(Stream::from_name)
            .ok_or_else(bad)?;
        let fields = e.get_document("fields").map_err(|_| bad())?;
        let entry = StreamEntry {
            id: id.to_hex(),
            fields: fields
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.as_bytes().to_vec())))
                .collect(),
        };
        Ok(Parsed {
            key: e.get_str("key").map_err(|_| bad())?.to_owned(),
            seq: e.get_i64("seq").map_err(|_| bad())?,
            stream,
            envelope: Envelope::from_entry(&entry).map_err(|_| bad())?,
        })
    };
    let events = match d.get_array("events") {
        Ok(list) => list
            .iter()
            .map(|e| e.as_document().ok_or_else(bad).and_then(one))
            .collect::<Result<_, _>>()?,
        Err(_) => vec![one(d)?],
    };
    Ok((id, events))
}

/// The events in publishing order: they keep their written order, except
/// that each key's events go out in `seq` order.
fn order_by_key(parsed: Vec<Parsed>) -> Vec<(Stream, Envelope)> {
    // Slots of each key, in written order, refilled in seq order.
    let mut slots: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, p) in parsed.iter().enumerate() {
        slots.entry(p.key.clone()).or_default().push(i);
    }
    let mut out: Vec<Option<(Stream, Envelope)>> = vec![None; parsed.len()];
    let mut by_key: HashMap<String, Vec<Parsed>> = HashMap::new();
    for p in parsed {
        by_key.entry(p.key.clone()).or_default().push(p);
    }
    for (key, mut entries) in by_key {
        entries.sort_by_key(|p| p.seq);
        for (slot, p) in slots[&key].iter().zip(entries) {
            out[*slot] = Some((p.stream, p.envelope));
        }
    }
    out.into_iter().flatten().collect()
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

    fn event(key: &str, seq: i64, n: u8) -> Document {
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
        doc! { "stream": "orders-stream", "key": key, "seq": seq, "fields": fields }
    }

    fn commit(events: Vec<Document>) -> Document {
        doc! { "_id": ObjectId::new(), "events": events, "published": false }
    }

    fn legacy(key: &str, seq: i64, n: u8) -> Document {
        let mut d = event(key, seq, n);
        d.insert("_id", ObjectId::new());
        d
    }

    #[test]
    fn each_key_goes_out_in_seq_order_keeping_the_written_order_otherwise() {
        // Written order: a3, b1, a2, c1, a4 (a's v2 committed later than v3
        // by the clock), in two commits and one entry of the earlier shape.
        let entries = [
            commit(vec![event("a", 3, 0), event("b", 1, 1)]),
            legacy("a", 2, 2),
            commit(vec![event("c", 1, 3), event("a", 4, 4)]),
        ];
        let mut parsed = Vec::new();
        for d in &entries {
            let (id, events) = events_of(d).unwrap();
            assert_eq!(id, d.get_object_id("_id").unwrap());
            parsed.extend(events);
        }
        let got: Vec<(String, u64)> = order_by_key(parsed)
            .iter()
            .map(|(_, e)| (e.key.clone(), e.payload["n"].as_u64().unwrap()))
            .collect();
        let want = [("a", 2), ("b", 1), ("a", 0), ("c", 3), ("a", 4)];
        assert_eq!(got, want.map(|(k, n)| (k.to_owned(), n)));
    }

    #[test]
    fn a_malformed_event_names_its_entry() {
        let mut bad = event("a", 1, 0);
        bad.remove("seq");
        let d = commit(vec![event("b", 1, 1), bad]);
        let id = d.get_object_id("_id").unwrap().to_hex();
        match events_of(&d) {
            Err(RelayError::Malformed(got)) => assert_eq!(got, id),
            other => panic!("expected malformed, got {other:?}"),
        }
    }
}
