//! An order's timeline: what happened to it and its delivery, in order.
//!
//! The timeline is stored in MongoDB (`timelines`, one document per order)
//! by the service's consumer group, and rebuilt into a [`Snapshot`] for every
//! tracker that connects. Appending is idempotent: an entry whose `event_id`
//! is already there is not added again.
//!
//! Entries are ordered by their step's *stage* in the tracking flow
//! ([`contract::status::tracking_flow`], derived from the order and delivery
//! flows), not by timestamps: timestamps come from different hosts' clocks,
//! while the stage order is the causal order of the flow.

use chrono::{DateTime, Utc};
use common::{
    batch::{Batch, Batcher},
    mongo::{is_duplicate_key, write_errors},
};
use contract::{
    DeliveryId, Envelope, OrderId,
    auth::TokenHash,
    events::{DeliveriesEvent, OrdersEvent},
    status::{DeliveryStatus, OrderStatus, Step},
};
use mongodb::{Collection, bson::doc};
use serde::{Deserialize, Serialize};

/// One status an order or its delivery reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// The event that reported it (unique).
    pub event_id: String,
    /// The step: `{"kind": "order", "status": "preparing"}`.
    #[serde(flatten)]
    pub step: Step,
    /// Version of the order or delivery after this status.
    pub version: u32,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The delivery's id, for delivery entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<DeliveryId>,
    /// For an exit (cancelled, rejected): the step it left from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Step>,
}

impl Entry {
    /// Position of this entry's step in the tracking flow (see the module
    /// docs); an exit comes right after the step it left from.
    pub fn stage(&self) -> usize {
        match self.after {
            Some(previous) => Step::stage_after(previous),
            None => self.step.stage(),
        }
    }

    fn new(e: &Envelope, step: Step, version: u32, delivery_id: Option<DeliveryId>) -> Self {
        Self {
            event_id: e.event_id.to_string(),
            step,
            version,
            at: e.occurred_at,
            delivery_id,
            after: None,
        }
    }

    fn exit(e: &Envelope, step: Step, version: u32, previous: OrderStatus) -> Self {
        Self {
            after: Some(Step::Order(previous)),
            ..Self::new(e, step, version, None)
        }
    }
}

/// What one event tells the timeline: the order, the entry, and (from the
/// order's creation) the hash of its tracking token, which decides who may
/// read the timeline. Nothing personal: no name, address or phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// The order.
    pub order_id: OrderId,
    /// Its new entry.
    pub entry: Entry,
    /// The order's token hash, from `order.created.v1`.
    pub token_hash: Option<TokenHash>,
}

/// What an `orders-stream` event tells the timeline.
pub fn order_fact(e: &Envelope, event: &OrdersEvent) -> Fact {
    match event {
        OrdersEvent::Created(p) => Fact {
            order_id: p.order_id,
            entry: Entry::new(e, Step::Order(p.status), p.version, None),
            token_hash: Some(p.tracking_token_hash),
        },
        OrdersEvent::StatusUpdated(p) => Fact {
            order_id: p.order_id,
            entry: Entry::new(e, Step::Order(p.status), p.version, None),
            token_hash: None,
        },
        OrdersEvent::Cancelled(p) => Fact {
            order_id: p.order_id,
            entry: Entry::exit(
                e,
                Step::Order(OrderStatus::Cancelled),
                p.version,
                p.previous,
            ),
            token_hash: None,
        },
        OrdersEvent::Rejected(p) => Fact {
            order_id: p.order_id,
            entry: Entry::exit(e, Step::Order(OrderStatus::Rejected), p.version, p.previous),
            token_hash: None,
        },
    }
}

/// What a `deliveries-stream` event tells the timeline.
pub fn delivery_fact(e: &Envelope, event: &DeliveriesEvent) -> Fact {
    let (order_id, delivery_id, status, version) = match event {
        DeliveriesEvent::Created(p) => (p.order_id, p.delivery_id, p.status, p.version),
        DeliveriesEvent::StatusUpdated(p) => (p.order_id, p.delivery_id, p.status, p.version),
    };
    Fact {
        order_id,
        entry: Entry::new(e, Step::Delivery(status), version, Some(delivery_id)),
        token_hash: None,
    }
}

/// A delivery's latest state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeliveryState {
    /// Delivery id.
    pub id: Option<DeliveryId>,
    /// Latest status.
    pub status: DeliveryStatus,
}

/// Everything known about an order, as sent to trackers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    /// Order id.
    pub order_id: OrderId,
    /// Latest order status (`None` until its creation was seen).
    pub status: Option<OrderStatus>,
    /// Its delivery, once there is one.
    pub delivery: Option<DeliveryState>,
    /// Every entry, in flow order.
    pub timeline: Vec<Entry>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn empty(order_id: OrderId) -> Self {
        Self {
            order_id,
            status: None,
            delivery: None,
            timeline: Vec::new(),
        }
    }

    /// Builds a snapshot from entries in any order, with duplicates.
    pub fn from_entries(order_id: OrderId, entries: impl IntoIterator<Item = Entry>) -> Self {
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
        self.status = self.timeline.iter().rev().find_map(|e| match e.step {
            Step::Order(s) => Some(s),
            Step::Delivery(_) => None,
        });
        self.delivery = self.timeline.iter().rev().find_map(|e| match e.step {
            Step::Delivery(status) => Some(DeliveryState {
                id: e.delivery_id,
                status,
            }),
            Step::Order(_) => None,
        });
        true
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TimelineDoc {
    #[serde(rename = "_id")]
    order_id: OrderId,
    #[serde(default)]
    entries: Vec<Entry>,
    /// SHA-256 of the order's tracking token (from its creation).
    #[serde(default)]
    token_hash: Option<TokenHash>,
}

/// An order's stored timeline and who may read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// Entries, as stored (any order).
    pub entries: Vec<Entry>,
    /// The order's token hash, once its creation was seen.
    pub token_hash: Option<TokenHash>,
}

/// The `timelines` collection.
#[derive(Debug, Clone)]
pub struct TimelineStore {
    coll: Collection<TimelineDoc>,
    /// Group commit of appends (see [`Appends`]).
    writer: Batcher<Appends>,
}

/// Most appends in one write command.
const MAX_BATCH: usize = 128;

/// Runs (one order's events read together) after which the writer stops
/// lingering: at 100 orders/s about 10 ms of appends, a quarter of what one
/// read of a backlog brings (`CONSUMER_BATCH_SIZE`, 64 events, about 30
/// orders' runs).
pub const LINGER_ENOUGH: usize = 16;

impl TimelineStore {
    /// `timelines` of `db`.
    pub fn new(client: &mongodb::Client, db: &str) -> Self {
        let db = client.database(db);
        Self {
            coll: db.collection("timelines"),
            writer: Batcher::new("timeline_appends", MAX_BATCH, Appends { db }),
        }
    }

    /// Appends a fact's entry unless its event is already there (and records
    /// the token hash it carries); `true` if appended. Appends that arrive
    /// together share one write command (see [`Appends`]).
    pub async fn append(&self, fact: &Fact) -> mongodb::error::Result<bool> {
        let op = Appends::op(fact)?;
        self.writer
            .submit(op)
            .await
            .map_err(mongodb::error::Error::custom)?
    }

    /// The same store, its writer lingering up to `linger` after an append
    /// for more to write with it (`common::batch`), while it holds fewer
    /// than [`LINGER_ENOUGH`] runs: nobody waits on these writes but the
    /// consumer's acknowledgement (the live pushes come from the hub's own
    /// tail of the streams), and at a moderate pace one order's events and
    /// the other orders' come a few milliseconds apart, each otherwise a
    /// write command of its own. A consumer's read of a backlog is enough
    /// runs by itself, and goes at once.
    #[must_use]
    pub fn with_linger(mut self, linger: std::time::Duration) -> Self {
        self.writer = self.writer.with_linger(linger, LINGER_ENOUGH);
        self
    }

    /// [`TimelineStore::append`] for several facts (a consumer's run of one
    /// order's events), in one write command: one result per fact, in order.
    /// A run of one order's new events is one statement (see
    /// [`Appends::op_run`]); only when some of them are already there
    /// (a redelivery) does each go as a statement of its own.
    pub async fn append_all(&self, facts: &[Fact]) -> Vec<mongodb::error::Result<bool>> {
        if let Some(op) = Appends::op_run(facts) {
            match self.writer.submit(op).await {
                Ok(Ok(true)) => return facts.iter().map(|_| Ok(true)).collect(),
                // One of them is there already: one by one, below.
                Ok(Ok(false)) => {}
                Ok(Err(e)) => return facts.iter().map(|_| Err(e.clone())).collect(),
                Err(stopped) => {
                    return facts
                        .iter()
                        .map(|_| Err(mongodb::error::Error::custom(stopped)))
                        .collect();
                }
            }
        }
        let mut ops = Vec::with_capacity(facts.len());
        let mut out: Vec<Option<mongodb::error::Result<bool>>> = Vec::with_capacity(facts.len());
        for fact in facts {
            match Appends::op(fact) {
                Ok(op) => {
                    ops.push(op);
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let n = ops.len();
        let mut written = match self.writer.submit_all(ops).await {
            Ok(results) => results,
            Err(stopped) => (0..n)
                .map(|_| Err(mongodb::error::Error::custom(stopped)))
                .collect(),
        }
        .into_iter();
        out.into_iter()
            .map(|slot| {
                slot.or_else(|| written.next()).unwrap_or_else(|| {
                    Err(mongodb::error::Error::custom("the append got no answer"))
                })
            })
            .collect()
    }

    /// The stored timeline of an order (empty if none).
    pub async fn load(&self, order_id: OrderId) -> mongodb::error::Result<Stored> {
        Ok(self
            .coll
            .find_one(doc! { "_id": order_id.to_string() })
            .await?
            .map(|d| Stored {
                entries: d.entries,
                token_hash: d.token_hash,
            })
            .unwrap_or_default())
    }
}

/// The writer of appends: one `update` command (unordered) for every
/// append queued, each an upsert of its order's document guarded by "this
/// event id is not there yet" (or, for a run of one order's events, "none
/// of these event ids"). Each statement is atomic on its own
/// document; a guard that fails makes its upsert collide with the existing
/// `_id` (duplicate key): that event was already appended, and only that
/// statement fails. Every other statement of the command wrote.
#[derive(Debug)]
struct Appends {
    db: mongodb::Database,
}

impl Appends {
    /// The update statement of one fact.
    fn op(fact: &Fact) -> mongodb::error::Result<bson::Document> {
        Self::statement(std::slice::from_ref(fact))
    }

    /// One statement for a run of several facts of one order, guarded by
    /// "none of these event ids is there yet": `None` for a single fact,
    /// facts of different orders, an event twice in the run (a republished
    /// event read next to its first copy: one statement would push both),
    /// or a fact that does not serialise (each then goes on its own and
    /// reports its own error).
    fn op_run(facts: &[Fact]) -> Option<bson::Document> {
        let (first, rest) = facts.split_first()?;
        if rest.is_empty() || rest.iter().any(|f| f.order_id != first.order_id) {
            return None;
        }
        let mut ids = std::collections::HashSet::with_capacity(facts.len());
        if !facts.iter().all(|f| ids.insert(f.entry.event_id.as_str())) {
            return None;
        }
        Self::statement(facts).ok()
    }

    /// The upsert of `facts` (at least one, all of one order): their
    /// entries pushed in order, the token hash set if one carries it.
    fn statement(facts: &[Fact]) -> mongodb::error::Result<bson::Document> {
        let order_id = facts.first().map(|f| f.order_id.to_string());
        let entries = facts
            .iter()
            .map(|f| bson::to_bson(&f.entry))
            .collect::<Result<Vec<_>, _>>()
            .map_err(mongodb::error::Error::custom)?;
        let ids: Vec<&str> = facts.iter().map(|f| f.entry.event_id.as_str()).collect();
        let mut set = doc! { "updated_at": bson::DateTime::now() };
        if let Some(h) = facts.iter().find_map(|f| f.token_hash) {
            set.insert("token_hash", h.to_string());
        }
        Ok(doc! {
            "q": { "_id": order_id, "entries.event_id": { "$nin": ids } },
            "u": { "$push": { "entries": { "$each": entries } }, "$set": set },
            "upsert": true,
        })
    }
}

impl Batch for Appends {
    type Job = bson::Document;
    type Output = mongodb::error::Result<bool>;

    async fn run(&self, ops: &[bson::Document]) -> Vec<mongodb::error::Result<bool>> {
        let reply = self
            .db
            .run_command(doc! { "update": "timelines", "updates": ops, "ordered": false })
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => return ops.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut out: Vec<mongodb::error::Result<bool>> = ops.iter().map(|_| Ok(true)).collect();
        for (index, e) in write_errors(&reply) {
            if let Some(slot) = out.get_mut(index) {
                *slot = if is_duplicate_key(&e) {
                    Ok(false)
                } else {
                    Err(e)
                };
            }
        }
        out
    }

    fn failed(&self, _: &bson::Document) -> mongodb::error::Result<bool> {
        Err(mongodb::error::Error::custom(
            "appending to the timeline failed",
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn e(id: &str, step: Step, version: u32) -> Entry {
        Entry {
            event_id: id.into(),
            step,
            version,
            at: Utc::now(),
            delivery_id: matches!(step, Step::Delivery(_))
                .then(|| DeliveryId::parse("65f1a2b3c4d5e6f708192a3c").unwrap()),
            after: None,
        }
    }

    #[test]
    fn snapshots_order_by_stage_and_ignore_duplicates() {
        use DeliveryStatus as D;
        use OrderStatus as O;
        let order = OrderId::parse("65f1a2b3c4d5e6f708192a3b").unwrap();
        let s = Snapshot::from_entries(
            order,
            [
                e("7", Step::Order(O::Delivered), 5),
                e("3", Step::Order(O::Preparing), 3),
                e("1", Step::Order(O::Created), 1),
                e("6", Step::Delivery(D::Delivered), 3),
                e("2", Step::Order(O::Confirmed), 2),
                e("4", Step::Order(O::OutForDelivery), 4),
                e("5", Step::Delivery(D::WaitingForPickup), 1),
                e("3", Step::Order(O::Preparing), 3),
                e("5b", Step::Delivery(D::OnTheWay), 2),
            ],
        );
        let ids: Vec<&str> = s.timeline.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3", "4", "5", "5b", "6", "7"]);
        assert_eq!(s.status, Some(O::Delivered));
        assert_eq!(s.delivery.as_ref().map(|d| d.status), Some(D::Delivered));
        assert_eq!(
            serde_json::to_value(&s.timeline[5]).unwrap()["status"],
            "on_the_way"
        );
        assert_eq!(
            serde_json::to_value(&s.timeline[5]).unwrap()["kind"],
            "delivery"
        );
    }

    #[test]
    fn an_exit_comes_right_after_the_step_it_left_from() {
        use OrderStatus as O;
        let order = OrderId::parse("65f1a2b3c4d5e6f708192a3b").unwrap();
        let cancelled = Entry {
            after: Some(Step::Order(O::Confirmed)),
            ..e("x", Step::Order(O::Cancelled), 3)
        };
        let s = Snapshot::from_entries(
            order,
            [
                cancelled,
                e("2", Step::Order(O::Confirmed), 2),
                e("1", Step::Order(O::Created), 1),
            ],
        );
        let ids: Vec<&str> = s.timeline.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "x"]);
        assert_eq!(
            s.timeline[2].stage(),
            2,
            "contiguous: no hole before the exit"
        );
        assert_eq!(s.status, Some(O::Cancelled));
    }
}
