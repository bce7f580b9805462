//! The transactional outbox: events commit with the state change that caused
//! them, and a relay publishes them.
//!
//! # Writing
//!
//! A service writes its events with [`Outbox::add`] *inside* the MongoDB
//! transaction that changes its state, into its own collection
//! (`outbox_<service>`). Either both commit or neither does: an event can no
//! longer be lost between a commit and a publish, nor published for a change
//! that rolled back. Each entry records the server time it was written
//! (`$currentDate`, one clock for all replicas) and the aggregate's version
//! (`seq`).
//!
//! # Relaying
//!
//! One [`Relay`] per service is active at a time, across replicas: it holds a
//! lease in Redis (`SET NX PX`, renewed at a third of its TTL by a script that
//! checks the holder), and a replica whose holder died takes over when the
//! lease expires. The active relay loops:
//!
//! 1. read up to `batch` unpublished entries in written order;
//! 2. publish them in one pipeline, each order's events in `seq` order;
//! 3. mark them published.
//!
//! A crash between 2 and 3 republishes those entries later: consumers dedupe
//! by `event_id` (their inbox), so that costs a duplicate message, never a
//! duplicate effect. A relay that was paused past its lease (say SIGSTOP)
//! checks the lease again before publishing, so two relays overlap at most for
//! one batch, with the same harmless duplicates.
//!
//! The relay wakes up at once when this process commits an entry
//! ([`Outbox::wake`]), when a change stream on the collection reports an insert
//! by any replica, and otherwise every `poll` interval. Published entries are
//! deleted once older than the retention (`OUTBOX_RETENTION_SECS`).

use std::{collections::HashMap, sync::Arc, time::Duration};

use bson::{Document, doc, oid::ObjectId};
use futures::{StreamExt, TryStreamExt};
use mongodb::{ClientSession, Collection, IndexModel};
use redis::{Script, aio::ConnectionManager};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    Envelope, failpoint,
    publisher::Publisher,
    streams::{Namespace, Stream},
};

/// Outbox tuning.
#[derive(Debug, Clone, Copy)]
pub struct OutboxSettings {
    /// Entries per relay round.
    pub batch: i64,
    /// Longest sleep when nothing wakes the relay.
    pub poll: Duration,
    /// Lease time to live; a dead holder is replaced after at most this.
    pub lease_ttl: Duration,
    /// How long published entries are kept.
    pub retention: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            batch: 500,
            poll: Duration::from_millis(250),
            lease_ttl: Duration::from_secs(5),
            retention: Duration::from_secs(3600),
        }
    }
}

impl OutboxSettings {
    /// Reads `OUTBOX_BATCH`, `OUTBOX_POLL_MS`, `OUTBOX_LEASE_MS`, `OUTBOX_RETENTION_SECS`.
    pub fn from_env(env: &mut crate::settings::Env) -> Self {
        let d = Self::default();
        let s = Self {
            batch: env.parse("OUTBOX_BATCH", d.batch),
            poll: env.millis("OUTBOX_POLL_MS", 250),
            lease_ttl: env.millis("OUTBOX_LEASE_MS", 5000),
            retention: Duration::from_secs(env.parse("OUTBOX_RETENTION_SECS", 3600)),
        };
        env.check(s.batch >= 1, "OUTBOX_BATCH must be at least 1");
        env.check(
            s.lease_ttl >= Duration::from_millis(300),
            "OUTBOX_LEASE_MS must be at least 300",
        );
        env.check(!s.poll.is_zero(), "OUTBOX_POLL_MS must be at least 1");
        s
    }
}

/// Where a service's transactions put their events.
#[derive(Debug, Clone)]
pub struct Outbox {
    coll: Collection<Document>,
    wake: Arc<Notify>,
    ns: Namespace,
    service: String,
}

impl Outbox {
    /// The outbox of `service` in `db`.
    pub fn new(db: &mongodb::Database, ns: Namespace, service: &str) -> Self {
        Self {
            coll: db.collection(&format!("outbox_{}", service.replace('-', "_"))),
            wake: Arc::new(Notify::new()),
            ns,
            service: service.to_owned(),
        }
    }

    /// Creates the index the relay reads by (idempotent).
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        self.coll
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "published": 1, "written_at": 1, "_id": 1 })
                    .build(),
            )
            .await
            .map(drop)
    }

    /// Adds an event for `stream` inside the caller's transaction. `seq` is the
    /// aggregate version after the change (orders the events of one key).
    pub async fn add(
        &self,
        s: &mut ClientSession,
        stream: Stream,
        event: &Envelope,
        seq: u32,
    ) -> mongodb::error::Result<()> {
        let mut fields = Document::new();
        for (k, v) in event.to_fields() {
            fields.insert(k, v);
        }
        // An upsert, so that `$currentDate` stamps the entry with the
        // database's clock: one clock for every replica that writes.
        self.coll
            .update_one(
                doc! { "_id": ObjectId::new() },
                doc! {
                    "$currentDate": { "written_at": true },
                    "$setOnInsert": {
                        "stream": stream.name(),
                        "key": &event.key,
                        "seq": i64::from(seq),
                        "event_id": event.event_id.to_string(),
                        "fields": fields,
                        "published": false,
                    },
                },
            )
            .upsert(true)
            .session(&mut *s)
            .await
            .map(drop)
    }

    /// The namespace of the relay's lease (and of failpoints).
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Tells this process' relay that an entry was committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Unpublished entries.
    pub async fn backlog(&self) -> mongodb::error::Result<u64> {
        self.coll.count_documents(doc! { "published": false }).await
    }

    /// Entries in the collection (published or not).
    pub async fn len(&self) -> mongodb::error::Result<u64> {
        self.coll.count_documents(doc! {}).await
    }

    /// The relay for this outbox.
    pub fn relay(
        &self,
        conn: ConnectionManager,
        publisher: Publisher,
        holder: &str,
        settings: OutboxSettings,
    ) -> Relay {
        Relay {
            outbox: self.clone(),
            conn,
            publisher,
            lease_key: self.ns.key(&format!("outbox-lease:{}", self.service)),
            holder: holder.to_owned(),
            settings,
        }
    }
}

/// Publishes an outbox while holding its lease; see the module docs.
#[derive(Debug)]
pub struct Relay {
    outbox: Outbox,
    conn: ConnectionManager,
    publisher: Publisher,
    lease_key: String,
    holder: String,
    settings: OutboxSettings,
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
        let watcher = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(watch_inserts(
            self.outbox.coll.clone(),
            self.outbox.wake.clone(),
            shutdown.clone(),
        )));
        let mut held = false;
        let mut last_sweep = tokio::time::Instant::now();
        info!(lease = %self.lease_key, holder = %self.holder, "outbox relay started");
        while !shutdown.is_cancelled() {
            held = match self.hold_lease(held).await {
                Ok(h) => h,
                Err(e) => {
                    warn!(error = %e, "outbox lease check failed");
                    false
                }
            };
            metrics::gauge!("outbox_relay_active").set(if held { 1.0 } else { 0.0 });
            let mut more = false;
            if held {
                match self.relay_once().await {
                    Ok(n) => more = n as i64 >= self.settings.batch,
                    Err(e) => warn!(error = %e, "outbox relay round failed; retrying"),
                }
                if last_sweep.elapsed() > Duration::from_secs(30) {
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
                self.settings.poll
            } else {
                self.settings.lease_ttl / 3
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = self.outbox.wake.notified(), if held => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        if held {
            let _: Result<i64, _> = RELEASE
                .key(&self.lease_key)
                .arg(&self.holder)
                .invoke_async(&mut self.conn.clone())
                .await;
        }
        drop(watcher);
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
        self.outbox
            .coll
            .update_many(
                doc! { "_id": { "$in": &ids } },
                doc! { "$set": { "published": true }, "$currentDate": { "published_at": true } },
            )
            .await?;
        metrics::counter!("outbox_published_total").increment(ids.len() as u64);
        debug!(count = ids.len(), "outbox entries published");
        Ok(batch.len())
    }

    async fn sweep(&self) {
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
        let entry = crate::StreamEntry {
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

/// Wakes the relay on every insert any replica commits (a change stream).
/// Without change streams the relay still polls.
async fn watch_inserts(coll: Collection<Document>, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        match coll
            .watch()
            .pipeline([doc! { "$match": { "operationType": "insert" } }])
            .await
        {
            Ok(mut stream) => {
                backoff = Duration::from_millis(500);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        next = stream.next() => match next {
                            Some(Ok(_)) => wake.notify_one(),
                            Some(Err(e)) => { debug!(error = %e, "outbox change stream broke; reopening"); break }
                            None => break,
                        }
                    }
                }
            }
            Err(e) => debug!(error = %e, "outbox change stream unavailable; polling"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
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
