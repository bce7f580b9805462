//! The transactional outbox: events commit with the state change that caused
//! them, and a relay publishes them.
//!
//! # Writing
//!
//! An event is written in the same atomic write as the state change that
//! caused it, so that either both commit or neither does: an event can no
//! longer be lost between a commit and a publish, nor published for a change
//! that rolled back. Each event records its aggregate's version (`seq`),
//! which orders the events of one key. There are two places for it:
//!
//! - **In the document** (the services' only place today). A collection
//!   declared with [`Outbox::in_documents_of`] keeps each document's
//!   unpublished events in the document itself, in its `outbox` array:
//!   inserted with it, or `$push`ed by the very update that changes it
//!   ([`Outbox::in_document`] builds both). One document write is atomic
//!   in MongoDB, so a change that touches one document needs no transaction
//!   to commit its event with it: a status move, a delivery's creation. A
//!   lone move so costs one guarded update (plus the read that decided it)
//!   instead of a transaction's find-and-modify, outbox insert and commit;
//!   on the same server that is about twice as many moves per second
//!   (`chaos bench`'s floor, docs/performance.md). Transactions that change
//!   several documents (a placement, a cancel putting stock back) push the
//!   events into their documents in the same way. And as every event of a
//!   key comes from its one document, a document's array is that key's
//!   events in `seq` order: one source per key.
//! - **In the outbox collection** (`outbox_<service>`), with
//!   [`Outbox::add`] inside the caller's transaction: one entry per commit,
//!   holding that commit's events in an `events` array and stamped with the
//!   server time it was written (`$currentDate`, one clock for all
//!   replicas). The services wrote every event there before; the relay
//!   still reads it, first, so that an upgrade leaves nothing behind.
//!
//! # Relaying
//!
//! One [`Relay`] per service is active at a time, across replicas: it holds a
//! lease in Redis (`SET NX PX`, renewed at a third of its TTL by a script that
//! checks the holder), and a replica whose holder died takes over when the
//! lease expires. The active relay loops:
//!
//! 1. read unpublished events: the outbox collection's entries in written
//!    order, up to `batch` events; once it has none, the documents whose
//!    `outbox` holds events (through a multikey index on `outbox.seq`, so
//!    documents without events cost nothing), up to `batch` documents per
//!    collection;
//! 2. publish them in one pipeline, each key's events in `seq` order;
//! 3. remove them: delete the entries (or mark them published, see below),
//!    and `$pull` the published events out of their documents by event id
//!    (an event a move pushed meanwhile stays), with one command per
//!    collection for everything published in the last 20 ms (or the last
//!    256 entries), and always before the next read. The `$pull`s are one
//!    statement per document, not one `update_many`: on SecantusDB a
//!    multi-document write that meets a document an open transaction holds
//!    deadlocks with that transaction, where a single-document statement
//!    waits for it to end.
//!
//! During a rolling upgrade from the version that wrote every event to the
//! outbox collection, an old replica's entry and a new replica's document
//! may hold consecutive events of one order; the relay reads the entries
//! first, but one committed between its two reads goes out after its
//! successor. Consumers defer an early status (see `common::transition`),
//! so that costs a delay, not an effect.
//!
//! # Hand-off
//!
//! Most events need not be read back at all: the process that committed
//! them hands them to its own relay ([`Outbox::committed`], after the write,
//! before the writer answers anyone), and if that relay holds the lease it
//! publishes them as they were written, skipping step 1. It does so only
//! when every event in them is the next of its key: `seq` 1, or the relay
//! itself published `seq − 1` (it remembers the last `seq` per key). An
//! event whose predecessor it has not seen (written by another replica, or
//! before this relay took the lease) may have that predecessor still
//! unpublished, so the relay reads instead, and each key keeps its order.
//! One whose `seq` it already published was published by such a read and is
//! skipped. The relay still reads when another replica rings, at least
//! every `poll` interval, and after taking the lease, so nothing depends on
//! the hand-off: a crash between the write and the hand-off leaves the
//! events for the next read.
//!
//! # One write per commit
//!
//! A group commit of 64 orders writes their events with the orders
//! themselves (one `insert`), and the relay clears them with one `$pull`
//! command; before, it was one outbox entry per commit (one document holding
//! that commit's events), and before that one document per event. What
//! MongoDB spends is mostly per document and per command (index
//! maintenance, cursors, BSON), so each step cut its CPU per order
//! (docs/performance.md).
//!
//! A crash between 2 and 3 (within those 20 ms) republishes those events
//! later: consumers shrug (their effects are idempotent), so that costs a
//! duplicate message, never a duplicate effect. A relay that was paused past
//! its lease (say SIGSTOP) checks the lease again before publishing, so two
//! relays overlap at most for one batch, with the same harmless duplicates.
//!
//! The relay wakes up at once when this process commits an event
//! ([`Outbox::wake`]); a replica that does not hold the lease rings the
//! holder instead, with a Redis `PUBLISH` on `<prefix>outbox-wake:<service>`
//! (not persisted, so no fsync), which the holder's relay subscribes to;
//! and otherwise the relay looks every `poll` interval, so a lost ring only
//! delays. (A MongoDB change stream did this before; it cost the database
//! about a sixth of its CPU per order, see docs/performance.md.) Published
//! events are removed at once by default; with a retention
//! (`OUTBOX_RETENTION_SECS`) they are kept in the outbox collection,
//! marked published (those a document held are copied there as one entry
//! per publishing round), and deleted once older than it (to inspect what
//! went out, at the price of another write per round).

mod relay;

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bson::{Document, doc, oid::ObjectId};
use futures::TryStreamExt;
use mongodb::{ClientSession, Collection, IndexModel};
use redis::aio::ConnectionManager;
use tokio::sync::Notify;

pub use self::relay::Relay;
use contract::{
    Envelope,
    streams::{Namespace, Stream},
};

use crate::publisher::Publisher;

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
    /// Collections whose documents carry their own events (see
    /// "In the document" in the module docs).
    holders: Vec<Arc<str>>,
    ns: Namespace,
    service: String,
}

/// Events a write committed, as stored: an entry of the outbox collection
/// ([`Outbox::add_all`]) or a document's own outbox
/// ([`Outbox::in_document`]).
#[derive(Debug)]
pub struct Written {
    id: ObjectId,
    events: Vec<Document>,
    /// The collection whose document holds them; `None`: the outbox
    /// collection.
    holder: Option<Arc<str>>,
}

/// The field of a document that holds its own unpublished events.
pub const FIELD: &str = "outbox";

/// One event as an outbox stores it.
pub fn event_document(stream: Stream, event: &Envelope, seq: u32) -> Document {
    let mut fields = Document::new();
    for (k, v) in event.to_fields() {
        fields.insert(k, v);
    }
    doc! {
        "stream": stream.name(),
        "key": &event.key,
        "seq": i64::from(seq),
        "event_id": event.event_id.to_string(),
        "fields": fields,
    }
}

/// The indexed path of the events documents hold.
const HELD_SEQ: &str = "outbox.seq";

/// The `n` of a counting `$group`.
fn count_of(d: &Document) -> u64 {
    match d.get("n") {
        Some(bson::Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(bson::Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(bson::Bson::Double(n)) => *n as u64,
        _ => 0,
    }
}

/// The wake-up channel of a service's relays.
#[derive(Debug)]
struct Bell {
    conn: ConnectionManager,
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
            holders: Vec::new(),
            ns,
            service: service.to_owned(),
        }
    }

    /// Declares that the documents of `collection` keep their own events in
    /// their `outbox` field (see "In the document" in the module docs): the
    /// relay reads and clears them there too. Call it before cloning.
    #[must_use]
    pub fn in_documents_of(mut self, collection: &str) -> Self {
        self.holders.push(Arc::from(collection));
        self
    }

    /// Whether the documents of `collection` keep their own events.
    pub fn holds(&self, collection: &str) -> bool {
        self.holders.iter().any(|h| &**h == collection)
    }

    /// What a write puts in a document's own outbox: `events`, in this
    /// order, as `$push`ed to (or inserted as) its `outbox` array, and the
    /// [`Written`] to hand to [`Outbox::committed`] once the write is
    /// durable. `collection` must be one of [`Outbox::in_documents_of`].
    pub fn in_document(
        &self,
        collection: &str,
        id: ObjectId,
        events: &[(Stream, &Envelope, u32)],
    ) -> (Vec<Document>, Written) {
        let holder = self
            .holders
            .iter()
            .find(|h| &***h == collection)
            .cloned()
            .unwrap_or_else(|| panic!("{collection} keeps no events of outbox_{}", self.service));
        let docs: Vec<Document> = events
            .iter()
            .map(|(stream, event, seq)| event_document(*stream, event, *seq))
            .collect();
        let written = Written {
            id,
            events: docs.clone(),
            holder: Some(holder),
        };
        (docs, written)
    }

    /// Creates the indexes the relay reads by (idempotent): the outbox
    /// collection's, and one on the events of each collection that keeps
    /// its own (multikey, so only documents with events are in it).
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        self.coll
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "published": 1, "written_at": 1, "_id": 1 })
                    .build(),
            )
            .await?;
        for holder in &self.holders {
            self.db
                .collection::<Document>(holder)
                .create_index(IndexModel::builder().keys(doc! { HELD_SEQ: 1 }).build())
                .await?;
        }
        Ok(())
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
        if events.is_empty() {
            return Ok(None);
        }
        let events: Vec<Document> = events
            .iter()
            .map(|(stream, event, seq)| event_document(*stream, event, *seq))
            .collect();
        // An upsert, so that `$currentDate` stamps the entry with the
        // database's clock: one clock for every replica that writes.
        let id = ObjectId::new();
        let update = doc! {
            "q": { "_id": id },
            "u": {
                "$currentDate": { "written_at": true },
                "$setOnInsert": { "events": &events, "published": false },
            },
            "upsert": true,
        };
        let reply = self
            .db
            .run_command(doc! { "update": self.coll.name(), "updates": [update], "ordered": true })
            .session(&mut *s)
            .await?;
        crate::mongo::check_write_reply(&reply, 1)?;
        Ok(Some(Written {
            id,
            events,
            holder: None,
        }))
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

    /// Unpublished events, in the outbox collection and in documents.
    pub async fn backlog(&self) -> mongodb::error::Result<u64> {
        Ok(self.count_events(doc! { "published": false }).await? + self.held().await?)
    }

    /// Events kept (published or not): in the outbox collection, and
    /// (unpublished) in documents.
    pub async fn len(&self) -> mongodb::error::Result<u64> {
        Ok(self.count_events(doc! {}).await? + self.held().await?)
    }

    /// Events that documents hold, read through the index on them.
    async fn held(&self) -> mongodb::error::Result<u64> {
        let mut n = 0;
        for holder in &self.holders {
            let pipeline = [
                doc! { "$match": { HELD_SEQ: { "$gte": 0 } } },
                doc! { "$group": { "_id": null, "n": { "$sum": { "$size": format!("${FIELD}") } } } },
            ];
            let mut cursor = self
                .db
                .collection::<Document>(holder)
                .aggregate(pipeline)
                .await?;
            if let Some(d) = cursor.try_next().await? {
                n += count_of(&d);
            }
        }
        Ok(n)
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
        Ok(cursor.try_next().await?.map_or(0, |d| count_of(&d)))
    }

    /// The relay for this outbox; `client` opens its wake-up subscription.
    pub fn relay(
        &self,
        client: redis::Client,
        conn: ConnectionManager,
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
