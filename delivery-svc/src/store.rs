//! MongoDB access: the `deliveries` collection, with the service's outbox.
//! Every effect of an event (creating a delivery, changing its status)
//! commits in one transaction with the outgoing events, and is idempotent by
//! itself: one delivery per order (a unique index), statuses that only move
//! forward (see `common::transition`).

use bson::{doc, oid::ObjectId};
use chrono::{DateTime, Utc};
use common::{
    mongo::{MaybeMongoError, RetryPolicy, is_duplicate_key, run_transaction},
    outbox::Outbox,
    transition::{Cause, Guarded, Versioned},
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

/// Aborts a transaction that must not commit.
#[derive(Debug, thiserror::Error)]
enum Abort {
    #[error("the order already has its delivery")]
    Exists,
    #[error(transparent)]
    Mongo(#[from] mongodb::error::Error),
}

impl Versioned for Delivery {
    type Status = DeliveryStatus;
    fn status(&self) -> DeliveryStatus {
        self.status
    }
    fn version(&self) -> u32 {
        self.version
    }
}

impl MaybeMongoError for Abort {
    fn as_mongo(&self) -> Option<&mongodb::error::Error> {
        match self {
            Self::Mongo(e) => Some(e),
            _ => None,
        }
    }
}

/// Handle to the deliveries.
#[derive(Debug, Clone)]
pub struct Store {
    client: mongodb::Client,
    deliveries: Collection<Delivery>,
    /// Events committed with the deliveries.
    pub outbox: Outbox,
}

impl Store {
    /// The collections of `db`; Redis keys (the relay lease) in `ns`.
    pub fn new(client: mongodb::Client, db: &str, ns: Namespace) -> Self {
        let db = client.database(db);
        Self {
            deliveries: db.collection("deliveries"),
            outbox: Outbox::new(&db, ns, events::SOURCE),
            client,
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
    pub async fn create(
        &self,
        order_id: OrderId,
        address: &str,
        cause: &Envelope,
    ) -> mongodb::error::Result<Creation> {
        let ctx = (self, order_id, address, cause);
        let result = run_transaction(
            &self.client,
            RetryPolicy::default(),
            &ctx,
            |s, (store, order_id, address, cause)| {
                Box::pin(store.create_in(s, *order_id, address, cause))
            },
        )
        .await;
        match result {
            Ok(c) => Ok(c),
            Err(Abort::Exists) => Ok(Creation::Exists),
            Err(Abort::Mongo(e)) => Err(e),
        }
    }

    async fn create_in(
        &self,
        s: &mut ClientSession,
        order_id: OrderId,
        address: &str,
        cause: &Envelope,
    ) -> Result<Creation, Abort> {
        let now = Utc::now();
        let delivery = Delivery {
            id: ObjectId::new(),
            order_id,
            status: DeliveryStatus::WaitingForPickup,
            version: 1,
            address: address.to_owned(),
            correlation_id: cause.correlation_id.clone(),
            created_at: now,
            updated_at: now,
        };
        // The unique index on order_id makes a second delivery impossible;
        // meeting it aborts the transaction.
        match self.deliveries.insert_one(&delivery).session(&mut *s).await {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => return Err(Abort::Exists),
            Err(e) => return Err(e.into()),
        }
        let events = events::delivery_created(&delivery);
        let entries: Vec<_> = events
            .iter()
            .map(|(stream, event)| (*stream, event, delivery.version))
            .collect();
        self.outbox.add_all(&mut *s, &entries).await?;
        Ok(Creation::Created(delivery))
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
        Guarded {
            client: &self.client,
            collection: &self.deliveries,
            outbox: &self.outbox,
            stream: Stream::Deliveries,
            event: events::delivery_status_updated,
            effect: None,
        }
        .apply(id, to, Cause::Event(cause), bson::Document::new())
        .await
    }
}
