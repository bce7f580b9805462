//! MongoDB access: the `deliveries` collection, with the service's outbox.
//! Every effect of an event (creating a delivery, changing its status)
//! commits in one transaction with the outgoing events, and is idempotent by
//! itself: one delivery per order (a unique index), statuses that only move
//! forward (see `common::transition`). Both are group-committed: the
//! effects that arrive together share one transaction (`common::batch`).

use bson::{doc, oid::ObjectId};
use chrono::{DateTime, Utc};
use std::collections::HashSet;

use common::{
    batch::{Batch, Batcher},
    mongo::{RetryPolicy, is_duplicate_key, run_transaction},
    outbox::{Outbox, Written},
    transition::{Cause, Guarded, Spec, Versioned},
    writes::Writes,
};
use contract::{
    Envelope, OrderId,
    status::DeliveryStatus,
    streams::{Namespace, Stream},
};
use mongodb::{ClientSession, Collection, IndexModel, options::IndexOptions};
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

/// Most creations in one transaction.
const MAX_BATCH: usize = 64;

/// The writer of creations (group commit, see `common::batch`): one
/// transaction for every creation queued. It reads which of the batch's
/// orders already have their delivery (one query), inserts the others and
/// their events (one command, `common::writes`), and commits. An order twice in a
/// batch gets one delivery; a delivery inserted meanwhile by another
/// replica makes the insert meet the unique index, and the batch runs
/// again, finding it.
#[derive(Debug)]
struct Creations {
    client: mongodb::Client,
    deliveries: Collection<Delivery>,
    outbox: Outbox,
}

impl Batch for Creations {
    type Job = NewDelivery;
    type Output = mongodb::error::Result<Creation>;

    async fn run(&self, jobs: &[NewDelivery]) -> Vec<mongodb::error::Result<Creation>> {
        let mut last = mongodb::error::Error::custom("deliveries kept colliding");
        for _ in 0..3 {
            let result = run_transaction(
                &self.client,
                RetryPolicy::default(),
                &(self, jobs),
                |s, (this, jobs)| Box::pin(this.create_all(s, jobs)),
            )
            .await;
            match result {
                Ok((created, written)) => {
                    self.outbox.committed(written);
                    return created.into_iter().map(Ok).collect();
                }
                // A lone creation met the unique index: the order has its delivery.
                Err(e) if is_duplicate_key(&e) && jobs.len() == 1 => {
                    return vec![Ok(Creation::Exists)];
                }
                Err(e) if is_duplicate_key(&e) => last = e,
                Err(e) => return jobs.iter().map(|_| Err(e.clone())).collect(),
            }
        }
        jobs.iter().map(|_| Err(last.clone())).collect()
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
        s: &mut ClientSession,
        jobs: &[NewDelivery],
        taken: &mut HashSet<String>,
    ) -> mongodb::error::Result<()> {
        let order_ids: Vec<String> = jobs.iter().map(|j| j.order_id.to_string()).collect();
        let mut existing = self
            .deliveries
            .clone_with_type::<bson::Document>()
            .find(doc! { "order_id": { "$in": &order_ids } })
            .projection(doc! { "order_id": 1 })
            .session(&mut *s)
            .await?;
        while let Some(d) = existing.next(&mut *s).await {
            if let Ok(id) = d?.get_str("order_id") {
                taken.insert(id.to_owned());
            }
        }
        Ok(())
    }

    async fn create_all(
        &self,
        s: &mut ClientSession,
        jobs: &[NewDelivery],
    ) -> mongodb::error::Result<(Vec<Creation>, Option<Written>)> {
        let mut taken = HashSet::new();
        // Even a batch of one asks first: the writes then go out as one
        // command, which may not open a transaction (common::writes), so a
        // lone creation is still three round trips (read, write, commit).
        self.existing(s, jobs, &mut taken).await?;
        let now = Utc::now();
        let mut created = Vec::new();
        let outcomes: Vec<Creation> = jobs
            .iter()
            .map(|job| {
                if !taken.insert(job.order_id.to_string()) {
                    return Creation::Exists;
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
                created.push(delivery.clone());
                Creation::Created(delivery)
            })
            .collect();
        if created.is_empty() {
            return Ok((outcomes, None));
        }
        // The unique index on order_id makes a second delivery impossible.
        let mut writes = Writes::new();
        for d in &created {
            let d = bson::to_document(d).map_err(mongodb::error::Error::custom)?;
            writes.insert(&self.deliveries, d);
        }
        let events: Vec<_> = created
            .iter()
            .flat_map(|d| {
                events::delivery_created(d)
                    .into_iter()
                    .map(move |(stream, event)| (stream, event, d.version))
            })
            .collect();
        let entries: Vec<_> = events.iter().map(|(st, ev, v)| (*st, ev, *v)).collect();
        let written = self.outbox.write_with(&mut *s, writes, &entries).await?;
        Ok((outcomes, written))
    }
}

impl Store {
    /// The collections of `db`; Redis keys (the relay lease) in `ns`.
    pub fn new(client: mongodb::Client, db: &str, ns: Namespace) -> Self {
        let db = client.database(db);
        let deliveries = db.collection("deliveries");
        let outbox = Outbox::new(&db, ns, events::SOURCE);
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
                client: client.clone(),
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
    /// Creations that arrive together share one transaction (see
    /// [`Creations`]).
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

    /// [`Store::apply_status`] for a run of moves `(delivery, status,
    /// cause)`, each decided on what the ones before it did, in one
    /// transaction (see `common::transition::Guarded::apply_run`). One result
    /// per move, in order.
    pub async fn apply_statuses(
        &self,
        moves: Vec<(ObjectId, DeliveryStatus, &Envelope)>,
    ) -> Vec<mongodb::error::Result<StatusChange>> {
        let moves = moves
            .into_iter()
            .map(|(id, to, cause)| (id, to, Cause::Event(cause), bson::Document::new()))
            .collect();
        self.moves.apply_run(moves).await
    }
}
