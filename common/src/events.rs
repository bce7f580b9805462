//! The event contract: type names, payloads and the two lifecycles.
//!
//! A new incompatible payload gets a new version (`.v2`) and both are
//! published until every consumer reads the new one. Every event about an
//! order, including delivery events, uses the order id as envelope `key`, so
//! a consumer handles one order's events in order.
//!
//! # Lifecycles
//!
//! ```text
//! order:    created → confirmed → preparing → out_for_delivery → delivered
//! delivery: waiting_for_pickup → on_the_way → delivered
//! ```
//!
//! A status event is checked against the current status with
//! [`Lifecycle::transition`]: only the *next* status is applied; a status at
//! or behind the current one is a duplicate or stale event (acknowledged,
//! ignored, never applied backwards); a status further ahead is *early* (its
//! predecessor is still being retried), so the handler asks for a retry.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An order was accepted and its stock reserved (orders-stream).
pub const ORDER_CREATED_V1: &str = "order.created.v1";
/// An order moved to a new status (orders-stream).
pub const ORDER_STATUS_UPDATED_V1: &str = "order.status_updated.v1";
/// A delivery was created for an order (deliveries-stream).
pub const DELIVERY_CREATED_V1: &str = "delivery.created.v1";
/// A delivery moved to a new status (deliveries-stream).
pub const DELIVERY_STATUS_UPDATED_V1: &str = "delivery.status_updated.v1";
/// The kitchen moved an order on (order-status-stream).
pub const ORDER_STATUS_CHANGED_V1: &str = "order.status_changed.v1";
/// The courier moved a delivery on (delivery-status-stream).
pub const DELIVERY_STATUS_CHANGED_V1: &str = "delivery.status_changed.v1";
/// Please simulate this order's kitchen (simulate-order-stream).
pub const SIMULATION_ORDER_REQUESTED_V1: &str = "simulation.order_requested.v1";
/// Please simulate this delivery's courier (simulate-delivery-stream).
pub const SIMULATION_DELIVERY_REQUESTED_V1: &str = "simulation.delivery_requested.v1";

/// What a status event means for an entity at some current status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The event's status is the next one: apply it.
    Apply,
    /// The entity is already at or past it: a duplicate or stale event.
    Stale,
    /// It skips ahead: its predecessor has not been applied yet.
    Early,
}

/// A linear status lifecycle.
pub trait Lifecycle: Copy + Eq + Sized + 'static {
    /// Every status, first to last.
    const FLOW: &'static [Self];

    /// The wire name (`out_for_delivery`).
    fn name(self) -> &'static str;

    /// Position in [`Lifecycle::FLOW`].
    fn rank(self) -> usize {
        Self::FLOW.iter().position(|s| *s == self).unwrap_or(0)
    }

    /// The status after this one.
    fn next(self) -> Option<Self> {
        Self::FLOW.get(self.rank() + 1).copied()
    }

    /// Whether this is the last status.
    fn is_final(self) -> bool {
        self.next().is_none()
    }

    /// How an event moving to `to` relates to the current status `self`.
    fn transition(self, to: Self) -> Transition {
        let (from, to) = (self.rank(), to.rank());
        if to == from + 1 {
            Transition::Apply
        } else if to <= from {
            Transition::Stale
        } else {
            Transition::Early
        }
    }
}

/// Status of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Accepted, stock reserved.
    Created,
    /// The kitchen accepted it.
    Confirmed,
    /// Being cooked.
    Preparing,
    /// Handed to a courier.
    OutForDelivery,
    /// At the customer's door.
    Delivered,
}

impl Lifecycle for OrderStatus {
    const FLOW: &'static [Self] = &[
        Self::Created,
        Self::Confirmed,
        Self::Preparing,
        Self::OutForDelivery,
        Self::Delivered,
    ];

    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl OrderStatus {
    /// The wire name (`out_for_delivery`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Confirmed => "confirmed",
            Self::Preparing => "preparing",
            Self::OutForDelivery => "out_for_delivery",
            Self::Delivered => "delivered",
        }
    }
}

/// Status of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Created, waiting for a courier.
    WaitingForPickup,
    /// The courier is on the way.
    OnTheWay,
    /// Handed over.
    Delivered,
}

impl Lifecycle for DeliveryStatus {
    const FLOW: &'static [Self] = &[Self::WaitingForPickup, Self::OnTheWay, Self::Delivered];

    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl DeliveryStatus {
    /// The wire name (`on_the_way`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::WaitingForPickup => "waiting_for_pickup",
            Self::OnTheWay => "on_the_way",
            Self::Delivered => "delivered",
        }
    }
}

/// Who ordered, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Name.
    pub name: String,
    /// Delivery address.
    pub address: String,
    /// Phone number.
    pub phone: String,
}

/// One line of an order, priced when the order was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Menu item id.
    pub item_id: String,
    /// Menu item name at order time.
    pub name: String,
    /// How many.
    pub quantity: u32,
    /// Price of one, in cents, at order time.
    pub unit_price_cents: i64,
}

/// `order.created.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    /// Order id.
    pub order_id: String,
    /// Always `created`.
    pub status: OrderStatus,
    /// Customer.
    pub customer: Customer,
    /// Lines.
    pub items: Vec<OrderLine>,
    /// Server-computed total.
    pub total_cents: i64,
    /// Version of the order after this event (1).
    pub version: u32,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
}

/// `order.status_updated.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatusUpdated {
    /// Order id.
    pub order_id: String,
    /// New status.
    pub status: OrderStatus,
    /// Status before.
    pub previous: OrderStatus,
    /// Version of the order after this event.
    pub version: u32,
    /// Where to deliver; set when the order goes out for delivery, so the
    /// delivery service needs no copy of the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<Customer>,
}

/// `order.status_changed.v1`: the kitchen moved an order on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatusChanged {
    /// Order id.
    pub order_id: String,
    /// Status it should move to.
    pub status: OrderStatus,
}

/// `delivery.created.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryCreated {
    /// Delivery id.
    pub delivery_id: String,
    /// Order it delivers.
    pub order_id: String,
    /// Always `waiting_for_pickup`.
    pub status: DeliveryStatus,
    /// Where to.
    pub address: String,
    /// Version after this event (1).
    pub version: u32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// `delivery.status_updated.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryStatusUpdated {
    /// Delivery id.
    pub delivery_id: String,
    /// Order it delivers.
    pub order_id: String,
    /// New status.
    pub status: DeliveryStatus,
    /// Status before.
    pub previous: DeliveryStatus,
    /// Version after this event.
    pub version: u32,
}

/// `delivery.status_changed.v1`: the courier moved a delivery on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryStatusChanged {
    /// Delivery id.
    pub delivery_id: String,
    /// Order it delivers.
    pub order_id: String,
    /// Status it should move to.
    pub status: DeliveryStatus,
}

/// `simulation.order_requested.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulationOrderRequested {
    /// Order to move along.
    pub order_id: String,
}

/// `simulation.delivery_requested.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulationDeliveryRequested {
    /// Delivery to move along.
    pub delivery_id: String,
    /// Its order.
    pub order_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_next_status_applies() {
        use OrderStatus::*;
        assert_eq!(Created.transition(Confirmed), Transition::Apply);
        assert_eq!(Confirmed.transition(Confirmed), Transition::Stale);
        assert_eq!(Preparing.transition(Confirmed), Transition::Stale);
        assert_eq!(Created.transition(Preparing), Transition::Early);
        assert_eq!(OutForDelivery.next(), Some(Delivered));
        assert!(Delivered.is_final());
        assert_eq!(
            DeliveryStatus::WaitingForPickup.transition(DeliveryStatus::OnTheWay),
            Transition::Apply
        );
        assert_eq!(
            serde_json::to_string(&OutForDelivery).unwrap(),
            "\"out_for_delivery\""
        );
        for s in OrderStatus::FLOW {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in DeliveryStatus::FLOW {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
