//! An order's timeline: what happened to it and its delivery, in order.
//!
//! The timeline is stored in MongoDB (`timelines`, one document per order)
//! by the service's consumer group, and rebuilt into a [`Snapshot`] for every
//! tracker that connects. Appending is idempotent: an entry whose `event_id`
//! is already there is not added again.
//!
//! Entries are ordered by the flow's *stage* (created, confirmed, preparing,
//! out for delivery, waiting for pickup, on the way, delivery delivered, order
//! delivered), not by timestamps: timestamps come from different hosts'
//! clocks, while the stage order is the causal order of the flow.

use chrono::{DateTime, Utc};
use common::{
    Envelope,
    events::{
        DELIVERY_CREATED_V1, DELIVERY_STATUS_UPDATED_V1, DeliveryCreated, DeliveryStatus,
        DeliveryStatusUpdated, ORDER_CREATED_V1, ORDER_STATUS_UPDATED_V1, OrderCreated,
        OrderStatus, OrderStatusUpdated,
    },
    mongo::is_duplicate_key,
};
use mongodb::{Collection, bson::doc};
use serde::{Deserialize, Serialize};

/// Whose status an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The order's.
    Order,
    /// The delivery's.
    Delivery,
}

/// One status an order or its delivery reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The event that reported it (unique).
    pub event_id: String,
    /// Order or delivery.
    pub kind: Kind,
    /// Status reached (`preparing`, `on_the_way`, ...).
    pub status: String,
    /// Version of the order or delivery after this status.
    pub version: u32,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The delivery's id, for delivery entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
}

impl Entry {
    /// Position of this entry's stage in the flow (see the module docs).
    pub fn stage(&self) -> usize {
        let order = |s: OrderStatus| match s {
            OrderStatus::Delivered => 7,
            other => other as usize,
        };
        let status = serde_json::Value::String(self.status.clone());
        match self.kind {
            Kind::Order => serde_json::from_value(status).map_or(usize::MAX, order),
            Kind::Delivery => serde_json::from_value(status)
                .map_or(usize::MAX, |d: DeliveryStatus| 4 + d as usize),
        }
    }
}

/// Why an event could not be turned into an entry.
#[derive(Debug, thiserror::Error)]
#[error("invalid {event_type} payload: {source}")]
pub struct BadPayload {
    event_type: String,
    #[source]
    source: serde_json::Error,
}

/// The order id and entry an event contributes, if it is a timeline event.
pub fn entry_of(e: &Envelope) -> Result<Option<(String, Entry)>, BadPayload> {
    let bad = |source| BadPayload {
        event_type: e.event_type.clone(),
        source,
    };
    let entry = |kind, status: &str, version, delivery_id| Entry {
        event_id: e.event_id.to_string(),
        kind,
        status: status.to_owned(),
        version,
        at: e.occurred_at,
        delivery_id,
    };
    Ok(Some(match e.event_type.as_str() {
        ORDER_CREATED_V1 => {
            let p: OrderCreated = e.payload_as().map_err(bad)?;
            (
                p.order_id,
                entry(Kind::Order, p.status.as_str(), p.version, None),
            )
        }
        ORDER_STATUS_UPDATED_V1 => {
            let p: OrderStatusUpdated = e.payload_as().map_err(bad)?;
            (
                p.order_id,
                entry(Kind::Order, p.status.as_str(), p.version, None),
            )
        }
        DELIVERY_CREATED_V1 => {
            let p: DeliveryCreated = e.payload_as().map_err(bad)?;
            (
                p.order_id,
                entry(
                    Kind::Delivery,
                    p.status.as_str(),
                    p.version,
                    Some(p.delivery_id),
                ),
            )
        }
        DELIVERY_STATUS_UPDATED_V1 => {
            let p: DeliveryStatusUpdated = e.payload_as().map_err(bad)?;
            (
                p.order_id,
                entry(
                    Kind::Delivery,
                    p.status.as_str(),
                    p.version,
                    Some(p.delivery_id),
                ),
            )
        }
        _ => return Ok(None),
    }))
}

/// A delivery's latest state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryState {
    /// Delivery id.
    pub id: String,
    /// Latest status.
    pub status: String,
}

/// Everything known about an order, as sent to trackers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Order id.
    pub order_id: String,
    /// Latest order status (`None` until its creation was seen).
    pub status: Option<String>,
    /// Its delivery, once there is one.
    pub delivery: Option<DeliveryState>,
    /// Every entry, in flow order.
    pub timeline: Vec<Entry>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn empty(order_id: &str) -> Self {
        Self {
            order_id: order_id.to_owned(),
            status: None,
            delivery: None,
            timeline: Vec::new(),
        }
    }

    /// Builds a snapshot from entries in any order, with duplicates.
    pub fn from_entries(order_id: &str, entries: impl IntoIterator<Item = Entry>) -> Self {
        let mut s = Self::empty(order_id);
        for e in entries {
            s.add(e);
        }
        s
    }

    /// Whether the entry's event is already in the timeline.
    pub fn contains(&self, event_id: &str) -> bool {
        self.timeline.iter().any(|e| e.event_id == event_id)
    }

    /// Adds an entry (ignored if already present); `true` if it was new.
    pub fn add(&mut self, entry: Entry) -> bool {
        if self.contains(&entry.event_id) {
            return false;
        }
        let at = self
            .timeline
            .partition_point(|e| (e.stage(), e.version) <= (entry.stage(), entry.version));
        self.timeline.insert(at, entry);
        self.status = self
            .timeline
            .iter()
            .rev()
            .find(|e| e.kind == Kind::Order)
            .map(|e| e.status.clone());
        self.delivery = self
            .timeline
            .iter()
            .rev()
            .find(|e| e.kind == Kind::Delivery)
            .map(|e| DeliveryState {
                id: e.delivery_id.clone().unwrap_or_default(),
                status: e.status.clone(),
            });
        true
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TimelineDoc {
    #[serde(rename = "_id")]
    order_id: String,
    entries: Vec<Entry>,
}

/// The `timelines` collection.
#[derive(Debug, Clone)]
pub struct TimelineStore {
    coll: Collection<TimelineDoc>,
}

impl TimelineStore {
    /// `timelines` of `db`.
    pub fn new(client: &mongodb::Client, db: &str) -> Self {
        Self {
            coll: client.database(db).collection("timelines"),
        }
    }

    /// Appends an entry unless its event is already there; `true` if appended.
    pub async fn append(&self, order_id: &str, entry: &Entry) -> mongodb::error::Result<bool> {
        let entry = bson::to_bson(entry).map_err(mongodb::error::Error::custom)?;
        let event_id = entry
            .as_document()
            .and_then(|d| d.get_str("event_id").ok())
            .unwrap_or_default()
            .to_owned();
        let result = self
            .coll
            .update_one(
                doc! { "_id": order_id, "entries.event_id": { "$ne": &event_id } },
                doc! { "$push": { "entries": entry }, "$set": { "updated_at": bson::DateTime::now() } },
            )
            .upsert(true)
            .await;
        match result {
            Ok(r) => Ok(r.modified_count == 1 || r.upserted_id.is_some()),
            // The document exists and already holds the event: the upsert
            // tried to insert a second document with the same `_id`.
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The stored entries of an order (empty if none).
    pub async fn entries(&self, order_id: &str) -> mongodb::error::Result<Vec<Entry>> {
        Ok(self
            .coll
            .find_one(doc! { "_id": order_id })
            .await?
            .map(|d| d.entries)
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, kind: Kind, status: &str, version: u32) -> Entry {
        Entry {
            event_id: id.into(),
            kind,
            status: status.into(),
            version,
            at: Utc::now(),
            delivery_id: (kind == Kind::Delivery).then(|| "d1".into()),
        }
    }

    #[test]
    fn snapshots_order_by_stage_and_ignore_duplicates() {
        let s = Snapshot::from_entries(
            "o1",
            [
                e("7", Kind::Order, "delivered", 5),
                e("3", Kind::Order, "preparing", 3),
                e("1", Kind::Order, "created", 1),
                e("6", Kind::Delivery, "delivered", 3),
                e("2", Kind::Order, "confirmed", 2),
                e("4", Kind::Order, "out_for_delivery", 4),
                e("5", Kind::Delivery, "waiting_for_pickup", 1),
                e("3", Kind::Order, "preparing", 3),
                e("5b", Kind::Delivery, "on_the_way", 2),
            ],
        );
        let ids: Vec<&str> = s.timeline.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3", "4", "5", "5b", "6", "7"]);
        assert_eq!(s.status.as_deref(), Some("delivered"));
        assert_eq!(
            s.delivery,
            Some(DeliveryState {
                id: "d1".into(),
                status: "delivered".into()
            })
        );
    }
}
