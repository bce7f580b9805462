//! MongoDB access: the `deliveries` collection, each delivery holding its
//! own outgoing events (`common::outbox`, "In the document"). Every effect
//! of an event (creating a delivery, changing its status) is written
//! atomically with its events, and is idempotent by itself: one delivery
//! per order (a unique index), statuses that only move forward (see
//! `common::transition`). Both are group-committed: the effects that arrive
//! together share one write, or one transaction (`common::batch`).

use bson::{doc, oid::ObjectId};
use chrono::{DateTime, Utc};
use std::collections::HashSet;

use common::{
    batch::{Batch, Batcher},
    mongo::{is_duplicate_key, write_errors},
    outbox::{self, Outbox},
    transition::{Cause, Guarded, Spec, Versioned},
};
use contract::{
    Envelope, OrderId,
    status::DeliveryStatus,
    streams::{Namespace, Stream},
};
use mongodb::{Collection, IndexModel, options::IndexOptions};
use serde::{Deserialize, Serialize};

use crate::events;

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Id.
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The order it delivers (unique: one delivery per order).
    pub order_id: OrderId,
    /// Current status.
    pub status: DeliveryStatus,
    /// Incremented by every status change.
    pub version: u32,
    /// Where to.
    pub address: String,
    /// Correlation id of the order's flow.
    pub correlation_id: String,
    /// Creation time.
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
}

/// Outcome of an order going out for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Creation {
    /// The delivery was created.
    Created(Delivery),
    /// The order already has its delivery (a redelivered event, say).
    Exists,
}

/// Outcome of applying a courier status.
pub type StatusChange = common::transition::StatusChange<DeliveryStatus>;

impl Versioned for Delivery {
    type Status = DeliveryStatus;
    fn status(&self) -> DeliveryStatus {
        self.status
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn id(&self) -> ObjectId {
        self.id
    }
}

/// Handle to the deliveries.
#[derive(Debug, Clone)]
pub struct Store {
    deliveries: Collection<Delivery>,
    /// Events committed with the deliveries.
    pub outbox: Outbox,
    /// The status writer (see [`common::transition`]).
    moves: Guarded<Delivery>,
    /// The creation writer (see [`Creations`]).
    creations: Batcher<Creations>,
}

/// A delivery to create.
#[derive(Debug)]
struct NewDelivery {
    order_id: OrderId,
    address: String,
    correlation_id: String,
}

/// Most creations in one write.
const MAX_BATCH: usize = 64;

/// The writer of creations (group commit, see `common::batch`): one write
/// for every creation queued, and no transaction. Each delivery is one
/// document holding its own events (see "In the document" in
/// `common::outbox`), so inserting it is atomic with them, and the unique
/// index on `order_id` makes a second delivery of an order impossible: an
/// unordered `insert` (majority write concern) of the batch, where a
/// duplicate key is an order that already has its delivery (a redelivered
/// event, another replica), and every other delivery is inserted. A batch
/// of several first reads which orders already have theirs (one query), so
/// that a redelivered batch does not fail statement by statement; an order
/// twice in a batch gets one delivery.
#[derive(Debug)]
struct Creations {
    deliveries: Collection<Delivery>,
    outbox: Outbox,
}

impl Batch for Creations {
    type Job = NewDelivery;
    type Output = mongodb::error::Result<Creation>;

    async fn run(&self, jobs: &[NewDelivery]) -> Vec<mongodb::error::Result<Creation>> {
        match self.create_all(jobs).await {
            Ok(created) => created,
            Err(e) => jobs.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    fn failed(&self, _: &NewDelivery) -> mongodb::error::Result<Creation> {
        Err(mongodb::error::Error::custom(
            "creating the delivery failed",
        ))
    }
}

impl Creations {
    /// Which of the batch's orders already have their delivery.
    async fn existing(
        &self,
        jobs: &[NewDelivery],
        taken: &mut HashSet<String>,
    ) -> mongodb::error::Result<()> {
        let order_ids: Vec<String> = jobs.iter().map(|j| j.order_id.to_string()).collect();
        let mut existing = self
            .deliveries
            .clone_with_type::<bson::Document>()
            .find(doc! { "order_id": { "$in": &order_ids } })
            .projection(doc! { "order_id": 1 })
            .await?;
        while existing.advance().await? {
            if let Ok(id) = existing.current().get_str("order_id") {
                taken.insert(id.to_owned());
            }
        }
        Ok(())
    }

    async fn create_all(
        &self,
        jobs: &[NewDelivery],
    ) -> mongodb::error::Result<Vec<mongodb::error::Result<Creation>>> {
        let mut taken = HashSet::new();
        // A batch of one (no load) skips the query: the unique index answers.
        if jobs.len() > 1 {
            self.existing(jobs, &mut taken).await?;
        }
        let now = Utc::now();
        // Per job: the statement inserting its delivery, if it has one.
        let mut statement = Vec::with_capacity(jobs.len());
        let mut inserts = Vec::new();
        let mut pending = Vec::new();
        for job in jobs {
            if !taken.insert(job.order_id.to_string()) {
                statement.push(None);
                continue;
            }
            let delivery = Delivery {
                id: ObjectId::new(),
                order_id: job.order_id,
                status: DeliveryStatus::WaitingForPickup,
                version: 1,
                address: job.address.clone(),
                correlation_id: job.correlation_id.clone(),
                created_at: now,
                updated_at: now,
            };
            let events = events::delivery_created(&delivery);
            let refs: Vec<_> = events
                .iter()
                .map(|(stream, event)| (*stream, event, delivery.version))
                .collect();
            let (held, written) =
                self.outbox
                    .in_document(self.deliveries.name(), delivery.id, &refs);
            let mut d = bson::to_document(&delivery).map_err(mongodb::error::Error::custom)?;
            d.insert(outbox::FIELD, held);
            statement.push(Some(inserts.len()));
            inserts.push(d);
            pending.push((delivery, written));
        }
        if inserts.is_empty() {
            return Ok(jobs.iter().map(|_| Ok(Creation::Exists)).collect());
        }
        let reply = self
            .deliveries
            .client()
            .database(&self.deliveries.namespace().db)
            .run_command(doc! {
                "insert": self.deliveries.name(),
                "documents": inserts,
                "ordered": false,
                "writeConcern": { "w": "majority" },
            })
            .await?;
        if let Ok(wc) = reply.get_document("writeConcernError") {
            return Err(mongodb::error::Error::custom(format!(
                "deliveries written without their write concern: {wc}"
            )));
        }
        let mut failed: Vec<Option<mongodb::error::Error>> = vec![None; pending.len()];
        for (i, e) in write_errors(&reply) {
            if let Some(slot) = failed.get_mut(i) {
                *slot = Some(e);
            }
        }
        let mut outcome: Vec<Option<mongodb::error::Result<Creation>>> = Vec::new();
        let mut committed = Vec::new();
        for ((delivery, written), error) in pending.into_iter().zip(failed) {
            outcome.push(Some(match error {
                None => {
                    committed.push(written);
                    Ok(Creation::Created(delivery))
                }
                // The order has its delivery: a redelivery, another replica.
                Some(e) if is_duplicate_key(&e) => Ok(Creation::Exists),
                Some(e) => Err(e),
            }));
        }
        self.outbox.committed(committed);
        Ok(statement
            .into_iter()
            .map(|s| match s {
                None => Ok(Creation::Exists),
                Some(i) => outcome[i].take().unwrap_or(Ok(Creation::Exists)),
            })
            .collect())
    }
}

impl Store {
    /// The collections of `db`; Redis keys (the relay lease) in `ns`.
    pub fn new(client: mongodb::Client, db: &str, ns: Namespace) -> Self {
        let db = client.database(db);
        let deliveries = db.collection("deliveries");
        let outbox = Outbox::new(&db, ns, events::SOURCE).in_documents_of("deliveries");
        let moves = Guarded::new(
            "delivery_moves",
            Spec {
                client: client.clone(),
                collection: deliveries.clone(),
                outbox: outbox.clone(),
                stream: Stream::Deliveries,
                event: events::delivery_status_updated,
                effect: None,
            },
        );
        let creations = Batcher::new(
            "delivery_creations",
            MAX_BATCH,
            Creations {
                deliveries: deliveries.clone(),
                outbox: outbox.clone(),
            },
        );
        Self {
            deliveries,
            outbox,
            moves,
            creations,
        }
    }

    /// Creates the unique index on `order_id` and the outbox index (idempotent).
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let unique = IndexOptions::builder().unique(true).build();
        self.deliveries
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "order_id": 1 })
                    .options(unique)
                    .build(),
            )
            .await?;
        self.outbox.ensure_indexes().await
    }

    /// Creates the order's delivery (once per order, once per event).
    /// Creations that arrive together share one write (see [`Creations`]).
    pub async fn create(
        &self,
        order_id: OrderId,
        address: &str,
        cause: &Envelope,
    ) -> mongodb::error::Result<Creation> {
        let job = NewDelivery {
            order_id,
            address: address.to_owned(),
            correlation_id: cause.correlation_id.clone(),
        };
        self.creations
            .submit(job)
            .await
            .map_err(mongodb::error::Error::custom)?
    }

    /// One delivery.
    pub async fn get(&self, id: ObjectId) -> mongodb::error::Result<Option<Delivery>> {
        self.deliveries.find_one(doc! { "_id": id }).await
    }

    /// The delivery of an order.
    pub async fn for_order(&self, order_id: OrderId) -> mongodb::error::Result<Option<Delivery>> {
        self.deliveries
            .find_one(doc! { "order_id": order_id.to_string() })
            .await
    }

    /// Applies a courier status: moves the delivery to `to` if that is its
    /// next status, at most once (see `common::transition`).
    pub async fn apply_status(
        &self,
        id: ObjectId,
        to: DeliveryStatus,
        cause: &Envelope,
    ) -> mongodb::error::Result<StatusChange> {
        self.moves
            .apply(id, to, Cause::Event(cause), bson::Document::new())
            .await
    }
}
