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
//! 1. read unpublished entries in written order, up to `batch` events;
//! 2. publish them in one pipeline, each order's events in `seq` order;
//! 3. delete them (or mark them published, see below), with one write for
//!    everything published in the last 20 ms (or the last 256 entries),
//!    and always before the next read.
//!
//! # Hand-off
//!
//! Most entries need not be read back at all: the process that committed
//! one hands it to its own relay ([`Outbox::committed`], after the commit,
//! before the writer answers anyone), and if that relay holds the lease it
//! publishes the entry as it was written, skipping step 1. It does so only
//! when every event in it is the next of its key: `seq` 1, or the relay
//! itself published `seq − 1` (it remembers the last `seq` per key). An
//! event whose predecessor it has not seen (written by another replica, or
//! before this relay took the lease) may have that predecessor still in the
//! collection, so the relay reads the collection instead, in written order,
//! and each key keeps its order. One whose `seq` it already published was
//! published by such a read and is skipped. The relay still reads when
//! another replica rings, at least every `poll` interval, and after taking
//! the lease, so nothing depends on the hand-off: a crash between the
//! commit and the hand-off leaves the entry for the next read.
//!
//! # One document per commit
//!
//! An entry is one document per [`Outbox::add_all`] call, that is per
//! transaction, holding that commit's events in an `events` array: a group
//! commit of 64 orders writes one outbox document, not 64, and the relay
//! reads and deletes one. What MongoDB spends is mostly per document and per
//! command (index maintenance, cursors, BSON), so this cut its CPU per order
//! (docs/performance.md). The relay still reads entries of the earlier
//! one-event-per-document shape, so an upgrade leaves nothing behind.
//!
//! A crash between 2 and 3 (within those 20 ms) republishes those entries later: consumers shrug
//! (their effects are idempotent), so that costs a duplicate message, never a
//! duplicate effect. A relay that was paused past its lease (say SIGSTOP)
//! checks the lease again before publishing, so two relays overlap at most for
//! one batch, with the same harmless duplicates. It asks Redis only when
//! its last renewal is more than half the TTL old by its own monotonic
//! clock (which a pause moves on too, counted from before the renewal was
//! sent): a healthy relay renews at a third of the TTL, so it publishes
//! without that extra round trip, which under `appendfsync always` waits
//! for an fsync like any other (docs/performance.md, 24). A lease that
//! Redis itself lost while its holder ran (a failover to a replica that
//! had not received it) is noticed at the next renewal, within a third of
//! the TTL; until then two relays publish, which costs duplicates only.
//!
//! The relay wakes up at once when this process commits an entry
//! ([`Outbox::wake`]); a replica that does not hold the lease rings the
//! holder instead, with a Redis `PUBLISH` on `<prefix>outbox-wake:<service>`
//! (not persisted, so no fsync), which the holder's relay subscribes to;
//! and otherwise the relay looks every `poll` interval, so a lost ring only
//! delays. (A MongoDB change stream did this before; it cost the database
//! about a sixth of its CPU per order, see docs/performance.md.) Published entries are
//! deleted at once by default; with a retention (`OUTBOX_RETENTION_SECS`)
//! they are marked published and deleted once older than it (to inspect
//! what went out, at the price of a second write per event).

mod relay;

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bson::{Document, doc, oid::ObjectId};
use contract::redis::Conn;
use futures::TryStreamExt;
use mongodb::{ClientSession, Collection, IndexModel};
use tokio::sync::Notify;

pub use self::relay::Relay;
use contract::{
    Envelope,
    streams::{Namespace, Stream},
};

use crate::{publisher::Publisher, writes::Writes};

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
            retention: Duration::ZERO,
        }
    }
}

impl OutboxSettings {
    /// Reads `OUTBOX_BATCH`, `OUTBOX_POLL_MS`, `OUTBOX_LEASE_MS`, `OUTBOX_RETENTION_SECS`.
    pub fn from_env(env: &mut crate::settings::Env) -> Self {
        let d = Self::default();
        let s = Self {
            batch: env.parse("OUTBOX_BATCH", d.batch),
            poll: env.millis("OUTBOX_POLL_MS", crate::settings::millis(d.poll)),
            lease_ttl: env.millis("OUTBOX_LEASE_MS", crate::settings::millis(d.lease_ttl)),
            retention: Duration::from_secs(
                env.parse("OUTBOX_RETENTION_SECS", d.retention.as_secs()),
            ),
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
    db: mongodb::Database,
    coll: Collection<Document>,
    wake: Arc<Notify>,
    /// How this process reaches the relay holding the lease elsewhere.
    bell: Arc<OnceLock<Bell>>,
    /// Whether this process's relay holds the lease.
    held: Arc<AtomicBool>,
    /// Entries this process committed, for its relay to publish unread.
    handed: Arc<Mutex<Vec<Written>>>,
    /// Whether another replica rang since the relay last read the collection.
    rung: Arc<AtomicBool>,
    ns: Namespace,
    service: String,
    /// Whether the server takes a transaction's writes as one `bulkWrite`.
    support: crate::writes::Support,
}

/// An entry a transaction wrote ([`Outbox::add_all`]): its id and events,
/// as stored.
#[derive(Debug)]
pub struct Written {
    id: ObjectId,
    events: Vec<Document>,
}

/// The wake-up channel of a service's relays.
#[derive(Debug)]
struct Bell {
    conn: Conn,
    channel: String,
}

impl Outbox {
    /// The outbox of `service` in `db`.
    pub fn new(db: &mongodb::Database, ns: Namespace, service: &str) -> Self {
        Self {
            db: db.clone(),
            coll: db.collection(&format!("outbox_{}", service.replace('-', "_"))),
            wake: Arc::new(Notify::new()),
            bell: Arc::new(OnceLock::new()),
            held: Arc::new(AtomicBool::new(false)),
            handed: Arc::default(),
            rung: Arc::new(AtomicBool::new(false)),
            ns,
            service: service.to_owned(),
            support: crate::writes::Support::default(),
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
    ) -> mongodb::error::Result<Option<Written>> {
        self.add_all(s, &[(stream, event, seq)]).await
    }

    /// Adds several events inside the caller's transaction, in this order:
    /// one document holding them all (see "One document per commit" in the
    /// module docs), written in one round trip. Returns the entry (none for
    /// no events), for [`Outbox::committed`] once the transaction commits.
    pub async fn add_all(
        &self,
        s: &mut ClientSession,
        events: &[(Stream, &Envelope, u32)],
    ) -> mongodb::error::Result<Option<Written>> {
        self.write_with(s, Writes::new(), events).await
    }

    /// Writes `writes` and, after them, the entry of `events` (as
    /// [`Outbox::add_all`] does), all in one round trip where the server
    /// allows it (see [`crate::writes`]): a state change and its events in
    /// one command.
    pub async fn write_with(
        &self,
        s: &mut ClientSession,
        mut writes: Writes,
        events: &[(Stream, &Envelope, u32)],
    ) -> mongodb::error::Result<Option<Written>> {
        let written = self.stage(&mut writes, events);
        let client = self.db.client();
        let mode = self.support.mode(client).await;
        writes.run(client, s, mode).await?;
        Ok(written)
    }

    /// Adds the entry of `events` to `writes` (nothing for no events).
    fn stage(&self, writes: &mut Writes, events: &[(Stream, &Envelope, u32)]) -> Option<Written> {
        if events.is_empty() {
            return None;
        }
        let events: Vec<Document> = events
            .iter()
            .map(|(stream, event, seq)| {
                let mut fields = Document::new();
                for (k, v) in event.to_fields() {
                    fields.insert(k, v);
                }
                doc! {
                    "stream": stream.name(),
                    "key": &event.key,
                    "seq": i64::from(*seq),
                    "event_id": event.event_id.to_string(),
                    "fields": fields,
                }
            })
            .collect();
        // An upsert, so that `$currentDate` stamps the entry with the
        // database's clock: one clock for every replica that writes.
        let id = ObjectId::new();
        writes.upsert(
            &self.coll,
            doc! { "_id": id },
            doc! {
                "$currentDate": { "written_at": true },
                "$setOnInsert": { "events": &events, "published": false },
            },
        );
        Some(Written { id, events })
    }

    /// Hands what a transaction wrote to the relay once it committed (call
    /// it after the commit, before answering whoever waits for it, from a
    /// Tokio runtime): if this process's relay holds the lease it publishes
    /// the entry without reading it back (see "Hand-off" in the module
    /// docs); otherwise the relay that holds it is rung.
    pub fn committed(&self, written: impl IntoIterator<Item = Written>) {
        let mut written = written.into_iter().peekable();
        if written.peek().is_none() {
            return; // nothing was written (every move stale, say): no ring
        }
        if self.held.load(Ordering::Relaxed) {
            self.handed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(written);
        }
        self.wake();
    }

    /// Takes what was handed over since the last call.
    fn take_handed(&self) -> Vec<Written> {
        std::mem::take(
            &mut *self
                .handed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The namespace of the relay's lease (and of failpoints).
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Tells the relay that an entry was committed: this process's relay
    /// directly, and, unless it holds the lease, the one that does (see the
    /// module docs). Call it after the commit, from a Tokio runtime.
    fn wake(&self) {
        self.wake.notify_one();
        if self.held.load(Ordering::Relaxed) {
            return;
        }
        if let Some(bell) = self.bell.get() {
            let (mut conn, channel) = (bell.conn.clone(), bell.channel.clone());
            tokio::spawn(async move {
                let rung: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(1)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = rung {
                    tracing::debug!(error = %e, "could not ring the outbox relay; it polls");
                }
            });
        }
    }

    fn bell_channel(&self) -> String {
        self.ns.key(&format!("outbox-wake:{}", self.service))
    }

    /// Unpublished events.
    pub async fn backlog(&self) -> mongodb::error::Result<u64> {
        self.count_events(doc! { "published": false }).await
    }

    /// Events in the collection (published or not).
    pub async fn len(&self) -> mongodb::error::Result<u64> {
        self.count_events(doc! {}).await
    }

    /// Events in the entries matching `filter`; an entry of the earlier
    /// one-event-per-document shape counts one.
    async fn count_events(&self, filter: Document) -> mongodb::error::Result<u64> {
        let pipeline = [
            doc! { "$match": filter },
            doc! { "$group": { "_id": null, "n": { "$sum": {
                "$cond": [{ "$isArray": "$events" }, { "$size": "$events" }, 1]
            } } } },
        ];
        let mut cursor = self.coll.aggregate(pipeline).await?;
        let n = match cursor.try_next().await? {
            Some(d) => match d.get("n") {
                Some(bson::Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
                Some(bson::Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
                Some(bson::Bson::Double(n)) => *n as u64,
                _ => 0,
            },
            None => 0,
        };
        Ok(n)
    }

    /// The relay for this outbox; `client` opens its wake-up subscription.
    pub fn relay(
        &self,
        client: contract::redis::Client,
        conn: Conn,
        publisher: Publisher,
        holder: &str,
        settings: OutboxSettings,
    ) -> Relay {
        let _ = self.bell.set(Bell {
            conn: conn.clone(),
            channel: self.bell_channel(),
        });
        Relay::new(self.clone(), client, conn, publisher, holder, settings)
    }
}
