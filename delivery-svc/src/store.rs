//! MongoDB access: the `deliveries` collection.

use bson::{doc, oid::ObjectId};
use chrono::{DateTime, Utc};
use common::{
    events::{DeliveryStatus, Lifecycle, Transition},
    mongo::{RetryPolicy, is_duplicate_key, run_transaction},
};
use mongodb::{
    ClientSession, Collection, IndexModel,
    options::{IndexOptions, ReturnDocument},
};
use serde::{Deserialize, Serialize};

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Id.
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The order it delivers (unique: one delivery per order).
    pub order_id: String,
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

/// Outcome of applying a courier status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange {
    /// Moved on.
    Moved {
        /// The delivery now.
        delivery: Delivery,
        /// Status before.
        previous: DeliveryStatus,
    },
    /// Duplicate or stale.
    Stale(DeliveryStatus),
    /// Skips ahead of the current status.
    Early(DeliveryStatus),
    /// No such delivery.
    Missing,
}

/// Handle to the deliveries.
#[derive(Debug, Clone)]
pub struct Store {
    client: mongodb::Client,
    deliveries: Collection<Delivery>,
}

impl Store {
    /// The `deliveries` collection of `db`.
    pub fn new(client: mongodb::Client, db: &str) -> Self {
        Self {
            deliveries: client.database(db).collection("deliveries"),
            client,
        }
    }

    /// Creates the unique index on `order_id` (idempotent).
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let unique = IndexOptions::builder().unique(true).build();
        self.deliveries
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "order_id": 1 })
                    .options(unique)
                    .build(),
            )
            .await
            .map(drop)
    }

    /// Creates the order's delivery; `None` if it already has one.
    pub async fn create(
        &self,
        order_id: &str,
        address: &str,
        correlation_id: &str,
    ) -> mongodb::error::Result<Option<Delivery>> {
        let now = Utc::now();
        let delivery = Delivery {
            id: ObjectId::new(),
            order_id: order_id.to_owned(),
            status: DeliveryStatus::WaitingForPickup,
            version: 1,
            address: address.to_owned(),
            correlation_id: correlation_id.to_owned(),
            created_at: now,
            updated_at: now,
        };
        match self.deliveries.insert_one(&delivery).await {
            Ok(_) => Ok(Some(delivery)),
            Err(e) if is_duplicate_key(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One delivery.
    pub async fn get(&self, id: ObjectId) -> mongodb::error::Result<Option<Delivery>> {
        self.deliveries.find_one(doc! { "_id": id }).await
    }

    /// The delivery of an order.
    pub async fn for_order(&self, order_id: &str) -> mongodb::error::Result<Option<Delivery>> {
        self.deliveries
            .find_one(doc! { "order_id": order_id })
            .await
    }

    /// Moves a delivery to `to` if that is its next status.
    pub async fn apply_status(
        &self,
        id: ObjectId,
        to: DeliveryStatus,
    ) -> mongodb::error::Result<StatusChange> {
        let ctx = (self, id, to);
        run_transaction(
            &self.client,
            RetryPolicy::default(),
            &ctx,
            |s, (store, id, to)| Box::pin(store.apply_status_in(s, *id, *to)),
        )
        .await
    }

    async fn apply_status_in(
        &self,
        s: &mut ClientSession,
        id: ObjectId,
        to: DeliveryStatus,
    ) -> mongodb::error::Result<StatusChange> {
        let Some(current) = self
            .deliveries
            .find_one(doc! { "_id": id })
            .session(&mut *s)
            .await?
        else {
            return Ok(StatusChange::Missing);
        };
        match current.status.transition(to) {
            Transition::Stale => return Ok(StatusChange::Stale(current.status)),
            Transition::Early => return Ok(StatusChange::Early(current.status)),
            Transition::Apply => {}
        }
        let updated = self
            .deliveries
            .find_one_and_update(
                doc! { "_id": id, "version": current.version },
                doc! {
                    "$set": { "status": to.as_str(), "updated_at": bson::DateTime::now() },
                    "$inc": { "version": 1 },
                },
            )
            .return_document(ReturnDocument::After)
            .session(&mut *s)
            .await?;
        Ok(
            updated.map_or(StatusChange::Missing, |delivery| StatusChange::Moved {
                delivery,
                previous: current.status,
            }),
        )
    }
}
