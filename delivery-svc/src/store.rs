//! MongoDB access: the `deliveries` collection, with the service's outbox and
//! inbox. Every effect of an event (creating a delivery, changing its status)
//! commits in one transaction with the event's inbox entry and the outgoing
//! events.

use bson::{doc, oid::ObjectId};
use chrono::{DateTime, Utc};
use common::{
    inbox::Inbox,
    mongo::{MaybeMongoError, RetryPolicy, run_transaction},
    outbox::Outbox,
    transition::{Cause, Guarded, Versioned},
};
use contract::{
    Envelope, OrderId,
    status::DeliveryStatus,
    streams::{Namespace, Stream, groups},
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
    /// The order already has its delivery.
    Exists,
    /// This event was handled before (the inbox has it).
    Duplicate,
}

/// Outcome of applying a courier status.
pub type StatusChange = common::transition::StatusChange<DeliveryStatus>;

/// Aborts a transaction that must not commit.
#[derive(Debug, thiserror::Error)]
enum Abort {
    #[error("already processed")]
    Duplicate,
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
    /// Events already handled.
    pub inbox: Inbox,
}

impl Store {
    /// The collections of `db`; Redis keys (the relay lease) in `ns`.
    pub fn new(client: mongodb::Client, db: &str, ns: Namespace) -> Self {
        let db = client.database(db);
        Self {
            deliveries: db.collection("deliveries"),
            outbox: Outbox::new(&db, ns, events::SOURCE),
            inbox: Inbox::new(&db),
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
            Err(Abort::Duplicate) => Ok(Creation::Duplicate),
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
        if !self
            .inbox
            .claim(&mut *s, groups::DELIVERY_SVC, cause.event_id)
            .await?
        {
            return Err(Abort::Duplicate);
        }
        if self
            .deliveries
            .find_one(doc! { "order_id": order_id.to_string() })
            .session(&mut *s)
            .await?
            .is_some()
        {
            return Ok(Creation::Exists);
        }
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
        // The unique index on order_id stays the last line of defence.
        self.deliveries
            .insert_one(&delivery)
            .session(&mut *s)
            .await?;
        for (stream, event) in events::delivery_created(&delivery) {
            self.outbox
                .add(&mut *s, stream, &event, delivery.version)
                .await?;
        }
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
    /// next status, once per event (see `common::transition`).
    pub async fn apply_status(
        &self,
        id: ObjectId,
        to: DeliveryStatus,
        cause: &Envelope,
    ) -> mongodb::error::Result<StatusChange> {
        Guarded {
            client: &self.client,
            collection: &self.deliveries,
            inbox: &self.inbox,
            group: groups::DELIVERY_SVC,
            outbox: &self.outbox,
            stream: Stream::Deliveries,
            event: events::delivery_status_updated,
            effect: None,
        }
        .apply(id, to, Cause::Event(cause), bson::Document::new())
        .await
    }
}
