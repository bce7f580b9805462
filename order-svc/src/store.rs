//! MongoDB access: the menu and the orders.
//!
//! Placing an order reserves the stock of every line (all or nothing, never
//! below zero) and stores the order in one transaction; this replica's
//! orders are placed in batches by one writer so that they never conflict
//! with each other (see [`crate::placing`]).
//!
//! The same transaction writes the order's events to the outbox (see
//! [`common::outbox`]) and, when the request carried one, its idempotency key
//! with the response (see [`crate::idempotency`]). A status event moves the
//! order with a guarded update in the transaction that writes its event (see
//! [`common::transition`]).

use bson::{doc, oid::ObjectId};
use chrono::{DateTime, Utc};
use common::{
    mongo::{BoxFuture, MaybeMongoError},
    outbox::Outbox,
    transition::{Cause, Effect, Guarded, Spec, Versioned},
};
use contract::{
    auth::{TokenHash, TrackingToken},
    events::{Customer, OrderLine},
    status::OrderStatus,
    streams::{Namespace, Stream},
};
use futures::TryStreamExt;
use mongodb::{
    ClientSession, Collection, IndexModel,
    options::{IndexOptions, ReturnDocument},
};
use serde::{Deserialize, Serialize};

use crate::{
    domain::NewOrder,
    error::FieldErrors,
    events,
    idempotency::{self, Key, Keys, Reply},
};

/// A menu item as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MenuItem {
    /// Id.
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// Stable human key, unique (seeding upserts by it).
    pub slug: String,
    /// Display name.
    pub name: String,
    /// One line about it.
    pub description: String,
    /// Menu section.
    pub category: String,
    /// Price of one, in cents.
    pub price_cents: i64,
    /// Units left.
    pub stock: i64,
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Id.
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// Current status.
    pub status: OrderStatus,
    /// Incremented by every status change (optimistic concurrency, event ordering).
    pub version: u32,
    /// Customer.
    pub customer: Customer,
    /// Lines, priced at order time.
    pub items: Vec<OrderLine>,
    /// Sum of the lines.
    pub total_cents: i64,
    /// Id of the request that created it.
    pub correlation_id: String,
    /// SHA-256 of its tracking token (orders older than tokens have none:
    /// nobody can read them through the API).
    #[serde(default)]
    pub tracking_token_hash: TokenHash,
    /// Creation time.
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
    /// Why it was cancelled or rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
}

/// Puts the stock of every line of an order back, in the transaction that
/// moves it to cancelled or rejected: the compensation of both, done exactly
/// once because it happens only with the one move that applies (the status
/// guard).
struct Restock {
    menu: Collection<MenuItem>,
}

impl Effect<Order> for Restock {
    fn run<'a>(
        &'a self,
        s: &'a mut ClientSession,
        after: &'a Order,
    ) -> BoxFuture<'a, mongodb::error::Result<()>> {
        Box::pin(async move {
            if !matches!(after.status, OrderStatus::Cancelled | OrderStatus::Rejected) {
                return Ok(());
            }
            for line in &after.items {
                self.menu
                    .update_one(
                        doc! { "_id": ObjectId::from_bytes(line.item_id.bytes()) },
                        doc! { "$inc": { "stock": i64::from(line.quantity) } },
                    )
                    .session(&mut *s)
                    .await?;
            }
            Ok(())
        })
    }
}

/// Why an order could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// Items that are not on the menu.
    #[error("unknown items")]
    UnknownItems(FieldErrors),
    /// Items without enough stock.
    #[error("insufficient stock")]
    InsufficientStock {
        /// Per line.
        fields: FieldErrors,
        /// Item names.
        names: Vec<String>,
    },
    /// The idempotency key was stored by a request that committed first.
    #[error("idempotency key already used")]
    KeyTaken,
    /// The database failed.
    #[error(transparent)]
    Mongo(#[from] mongodb::error::Error),
}

impl From<idempotency::StoreError> for PlaceError {
    fn from(e: idempotency::StoreError) -> Self {
        match e {
            idempotency::StoreError::Taken(_) => Self::KeyTaken,
            idempotency::StoreError::Mongo(e) => Self::Mongo(e),
        }
    }
}

impl MaybeMongoError for PlaceError {
    fn as_mongo(&self) -> Option<&mongodb::error::Error> {
        match self {
            Self::Mongo(e) => Some(e),
            _ => None,
        }
    }
}

/// A placed order and the API's answer to it (stored with the order for
/// idempotent replays).
#[derive(Debug, Clone)]
pub struct Placed {
    /// The order.
    pub order: Order,
    /// The answer, as the API layer built it.
    pub reply: Reply,
}

/// The outcome of applying a status event to an order.
pub type StatusChange = common::transition::StatusChange<OrderStatus>;

impl Versioned for Order {
    type Status = OrderStatus;
    fn status(&self) -> OrderStatus {
        self.status
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn id(&self) -> ObjectId {
        self.id
    }
}

/// One seed entry (`seed/menu.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct SeedItem {
    /// Unique key.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// One line about it.
    pub description: String,
    /// Menu section.
    pub category: String,
    /// Price of one, in cents.
    pub price_cents: i64,
    /// Initial stock.
    pub stock: i64,
}

/// The menu shipped with the project.
pub const SEED_MENU: &str = include_str!("../../seed/menu.json");

/// Handle to order-svc's collections.
#[derive(Debug, Clone)]
pub struct Store {
    menu: Collection<MenuItem>,
    orders: Collection<Order>,
    /// Events committed with the orders.
    pub outbox: Outbox,
    /// Idempotency keys and their responses.
    pub keys: Keys,
    /// The order writer (see [`crate::placing`]).
    placer: crate::placing::Placer,
    /// The status writer (see [`common::transition`]).
    moves: Guarded<Order>,
}

impl Store {
    /// order-svc's collections of `db`; Redis keys (the relay lease) in `ns`.
    pub fn new(client: mongodb::Client, db: &str, ns: Namespace) -> Self {
        let db = client.database(db);
        let menu = db.collection("menu");
        let orders = db.collection("orders");
        let outbox = Outbox::new(&db, ns, events::SOURCE);
        let keys = Keys::new(&db);
        let placer = crate::placing::Placer::new(crate::placing::Collections {
            client: client.clone(),
            db: db.clone(),
            menu: db.collection("menu"),
            orders: db.collection("orders"),
            outbox: outbox.clone(),
            keys: keys.clone(),
        });
        let moves = Guarded::new(
            "order_moves",
            Spec {
                client: client.clone(),
                collection: orders.clone(),
                outbox: outbox.clone(),
                stream: Stream::Orders,
                event: events::order_moved,
                effect: Some(Box::new(Restock { menu: menu.clone() })),
            },
        );
        Self {
            menu,
            orders,
            outbox,
            keys,
            placer,
            moves,
        }
    }

    /// Creates the indexes (idempotent).
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let unique = IndexOptions::builder().unique(true).build();
        self.menu
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "slug": 1 })
                    .options(unique)
                    .build(),
            )
            .await?;
        self.menu
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "category": 1, "name": 1 })
                    .build(),
            )
            .await?;
        self.outbox.ensure_indexes().await
    }

    /// The whole menu, by category then name.
    pub async fn menu(&self) -> mongodb::error::Result<Vec<MenuItem>> {
        self.menu
            .find(doc! {})
            .sort(doc! { "category": 1, "name": 1 })
            .await?
            .try_collect()
            .await
    }

    /// One menu item.
    pub async fn menu_item(&self, id: ObjectId) -> mongodb::error::Result<Option<MenuItem>> {
        self.menu.find_one(doc! { "_id": id }).await
    }

    /// One order.
    pub async fn order(&self, id: ObjectId) -> mongodb::error::Result<Option<Order>> {
        self.orders.find_one(doc! { "_id": id }).await
    }

    /// Places an order: all of its stock is reserved and the order, its
    /// events and its idempotency key with `reply(order)` (the API's answer)
    /// are stored, or nothing changes. Batched with the other orders of this
    /// replica (see [`crate::placing`]).
    pub async fn place_order(
        &self,
        new: &NewOrder,
        correlation_id: &str,
        key: Option<&Key>,
        token: &TrackingToken,
        reply: fn(&Order) -> Reply,
    ) -> Result<Placed, PlaceError> {
        self.placer
            .place(new, correlation_id, key, token, reply)
            .await
    }

    /// Moves the order to `to` if its lifecycle allows it now, once (see
    /// [`common::transition`]): the next status of the flow for the kitchen
    /// and the courier, or an exit (cancelled, rejected, with `reason`),
    /// which puts the order's stock back in the same transaction.
    pub async fn apply_status(
        &self,
        id: ObjectId,
        to: OrderStatus,
        cause: Cause<'_>,
        reason: Option<&str>,
    ) -> mongodb::error::Result<StatusChange> {
        self.moves.apply(id, to, cause, end_reason(reason)).await
    }

    /// [`Store::apply_status`] for a run of moves `(order, status, cause,
    /// reason)`, each decided on what the ones before it did, in one
    /// transaction (see [`common::transition::Guarded::apply_run`]). One
    /// result per move, in order.
    pub async fn apply_statuses(
        &self,
        moves: Vec<(ObjectId, OrderStatus, Cause<'_>, Option<&str>)>,
    ) -> Vec<mongodb::error::Result<StatusChange>> {
        let moves = moves
            .into_iter()
            .map(|(id, to, cause, reason)| (id, to, cause, end_reason(reason)))
            .collect();
        self.moves.apply_run(moves).await
    }

    /// Adds a menu item; `Ok(None)` if its slug is taken.
    pub async fn add_menu_item(&self, item: &MenuItem) -> mongodb::error::Result<Option<()>> {
        match self.menu.insert_one(item).await {
            Ok(_) => Ok(Some(())),
            Err(e) if common::mongo::is_duplicate_key(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Changes the given fields of a menu item; the item after, if it exists.
    pub async fn update_menu_item(
        &self,
        id: ObjectId,
        changes: bson::Document,
    ) -> mongodb::error::Result<Option<MenuItem>> {
        if changes.is_empty() {
            return self.menu_item(id).await;
        }
        self.menu
            .find_one_and_update(doc! { "_id": id }, doc! { "$set": changes })
            .return_document(ReturnDocument::After)
            .await
    }

    /// Adds `quantity` to a menu item's stock (one atomic `$inc`: a
    /// concurrent order's reservation is never lost); the item after.
    pub async fn restock(
        &self,
        id: ObjectId,
        quantity: i64,
    ) -> mongodb::error::Result<Option<MenuItem>> {
        self.menu
            .find_one_and_update(doc! { "_id": id }, doc! { "$inc": { "stock": quantity } })
            .return_document(ReturnDocument::After)
            .await
    }

    /// The newest orders, optionally only those at `status`.
    pub async fn orders_by_status(
        &self,
        status: Option<OrderStatus>,
        limit: i64,
    ) -> mongodb::error::Result<Vec<Order>> {
        let filter = match status {
            Some(s) => doc! { "status": bson::to_bson(&s).map_err(mongodb::error::Error::custom)? },
            None => doc! {},
        };
        self.orders
            .find(filter)
            .sort(doc! { "created_at": -1 })
            .limit(limit)
            .await?
            .try_collect()
            .await
    }

    /// How many orders created since `since` are at each status.
    pub async fn status_counts_since(
        &self,
        since: DateTime<Utc>,
    ) -> mongodb::error::Result<Vec<(String, i64)>> {
        let pipeline = [
            doc! { "$match": { "created_at": { "$gte": bson::DateTime::from_chrono(since) } } },
            doc! { "$group": { "_id": "$status", "count": { "$sum": 1 } } },
            doc! { "$sort": { "_id": 1 } },
        ];
        let rows: Vec<bson::Document> = self
            .orders
            .clone_with_type::<bson::Document>()
            .aggregate(pipeline)
            .await?
            .try_collect()
            .await?;
        Ok(rows
            .iter()
            .filter_map(|d| {
                let status = d.get_str("_id").ok()?.to_owned();
                let count = d
                    .get_i64("count")
                    .ok()
                    .or_else(|| d.get_i32("count").ok().map(i64::from))?;
                Some((status, count))
            })
            .collect())
    }

    /// Inserts the seed items that are missing (by slug); never touches existing ones.
    pub async fn seed_menu(&self, items: &[SeedItem]) -> mongodb::error::Result<usize> {
        let mut inserted = 0;
        for item in items {
            let r = self
                .menu
                .update_one(
                    doc! { "slug": &item.slug },
                    doc! { "$setOnInsert": {
                        "_id": ObjectId::new(),
                        "name": &item.name,
                        "description": &item.description,
                        "category": &item.category,
                        "price_cents": item.price_cents,
                        "stock": item.stock,
                    }},
                )
                .upsert(true)
                .await?;
            inserted += usize::from(r.upserted_id.is_some());
        }
        Ok(inserted)
    }
}

/// The extra field of an exit with a reason.
fn end_reason(reason: Option<&str>) -> bson::Document {
    let mut set = bson::Document::new();
    if let Some(r) = reason {
        set.insert("end_reason", r);
    }
    set
}
