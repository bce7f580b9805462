//! Statuses, their flows, and the steps a tracker sees.
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
//!
//! A tracker follows one order through both flows as [`Step`]s, in
//! [`tracking_flow`] order: the order's flow up to `out_for_delivery`, then
//! its delivery's whole flow, then the order's `delivered`. That order is
//! derived from the two flows, not numbered by hand.

use std::sync::LazyLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// The status the order has when it is handed to its delivery: the last
/// order step before the delivery's flow, and what creates the delivery.
pub const HANDOVER: OrderStatus = OrderStatus::OutForDelivery;

/// One step of an order's tracking: an order status or a delivery status.
/// On the wire: `{"kind": "order", "status": "created"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", content = "status", rename_all = "snake_case")]
pub enum Step {
    /// The order reached a status.
    Order(OrderStatus),
    /// Its delivery reached a status.
    Delivery(DeliveryStatus),
}

static TRACKING_FLOW: LazyLock<Vec<Step>> = LazyLock::new(|| {
    let (before, after) = OrderStatus::FLOW.split_at(HANDOVER.rank() + 1);
    before
        .iter()
        .map(|s| Step::Order(*s))
        .chain(DeliveryStatus::FLOW.iter().map(|s| Step::Delivery(*s)))
        .chain(after.iter().map(|s| Step::Order(*s)))
        .collect()
});

/// Every step of a complete order, in the order a tracker sees them.
pub fn tracking_flow() -> &'static [Step] {
    &TRACKING_FLOW
}

impl Step {
    /// Position in [`tracking_flow`]: the causal order of the steps of one
    /// order (timestamps come from different hosts' clocks; this does not).
    pub fn stage(self) -> usize {
        tracking_flow()
            .iter()
            .position(|s| *s == self)
            .unwrap_or(usize::MAX)
    }

    /// `kind:status`, e.g. `delivery:on_the_way`.
    pub fn label(self) -> String {
        match self {
            Step::Order(s) => format!("order:{}", s.as_str()),
            Step::Delivery(s) => format!("delivery:{}", s.as_str()),
        }
    }

    /// Whether this is the last step of the flow.
    pub fn is_final(self) -> bool {
        tracking_flow().last() == Some(&self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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
        for s in OrderStatus::FLOW {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in DeliveryStatus::FLOW {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn the_tracking_flow_is_both_flows_joined_at_the_handover() {
        let labels: Vec<String> = tracking_flow().iter().map(|s| s.label()).collect();
        assert_eq!(
            labels,
            [
                "order:created",
                "order:confirmed",
                "order:preparing",
                "order:out_for_delivery",
                "delivery:waiting_for_pickup",
                "delivery:on_the_way",
                "delivery:delivered",
                "order:delivered",
            ]
        );
        assert_eq!(Step::Delivery(DeliveryStatus::OnTheWay).stage(), 5);
        assert!(Step::Order(OrderStatus::Delivered).is_final());
        assert_eq!(
            serde_json::to_value(Step::Delivery(DeliveryStatus::OnTheWay)).unwrap(),
            serde_json::json!({"kind": "delivery", "status": "on_the_way"})
        );
    }
}
