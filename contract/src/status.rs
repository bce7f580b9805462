//! Statuses, their flows, and the steps a tracker sees.
//!
//! ```text
//! order:    created → confirmed → preparing → out_for_delivery → delivered
//!              │  ╰──────────┴──────────┴─→ cancelled   (the customer)
//!              ╰─→ rejected                              (the kitchen, at the confirm step)
//! delivery: waiting_for_pickup → on_the_way → delivered
//! ```
//!
//! A status event is checked against the current status with
//! [`Lifecycle::transition`]: only the *next* status is applied; a status at
//! or behind the current one is a duplicate or stale event (acknowledged,
//! ignored, never applied backwards); a status further ahead is *early* (its
//! predecessor is still being retried), so the handler asks for a retry.
//! Besides the flow, a lifecycle may have *exits*: terminal statuses reachable
//! only from some statuses of the flow (an order is cancelled while created,
//! confirmed or preparing; rejected while created). An exit from anywhere
//! else is *refused*, and a terminal status never moves again: everything
//! after it is stale. Which of a cancel and the kitchen's next move wins is
//! decided by the one guarded transition that applies first.
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
    /// An exit that the current status no longer allows (a cancel once the
    /// order is out for delivery).
    Refused,
}

/// A linear status lifecycle.
pub trait Lifecycle: Copy + Eq + Sized + 'static {
    /// The path, first to last.
    const FLOW: &'static [Self];

    /// Terminal statuses off the path, each with the statuses it can be
    /// reached from.
    const EXITS: &'static [(Self, &'static [Self])] = &[];

    /// The wire name (`out_for_delivery`).
    fn name(self) -> &'static str;

    /// Position in [`Lifecycle::FLOW`] (`None` for an exit).
    fn rank(self) -> Option<usize> {
        Self::FLOW.iter().position(|s| *s == self)
    }

    /// The status after this one on the path.
    fn next(self) -> Option<Self> {
        Self::FLOW.get(self.rank()? + 1).copied()
    }

    /// Whether this status ends the lifecycle (the last of the path, or an exit).
    fn is_final(self) -> bool {
        Self::FLOW.last() == Some(&self) || Self::EXITS.iter().any(|(e, _)| *e == self)
    }

    /// The statuses a move to `self` applies from: its predecessor on the
    /// path, or the statuses an exit may leave from (none for the first).
    /// `from.transition(to) == Apply` exactly when `to.predecessors()`
    /// contains `from`, so a guarded update can filter on them.
    fn predecessors(self) -> &'static [Self] {
        if let Some((_, from)) = Self::EXITS.iter().find(|(e, _)| *e == self) {
            return from;
        }
        match self.rank() {
            Some(r) if r > 0 => &Self::FLOW[r - 1..r],
            _ => &[],
        }
    }

    /// How an event moving to `to` relates to the current status `self`.
    fn transition(self, to: Self) -> Transition {
        if self.is_final() {
            return Transition::Stale;
        }
        if let Some((_, from)) = Self::EXITS.iter().find(|(e, _)| *e == to) {
            return if from.contains(&self) {
                Transition::Apply
            } else {
                Transition::Refused
            };
        }
        let (Some(from), Some(to)) = (self.rank(), to.rank()) else {
            return Transition::Refused;
        };
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
    /// Cancelled by the customer before it went out; its stock is back.
    Cancelled,
    /// Refused by the kitchen at the confirm step; its stock is back.
    Rejected,
}

impl Lifecycle for OrderStatus {
    const FLOW: &'static [Self] = &[
        Self::Created,
        Self::Confirmed,
        Self::Preparing,
        Self::OutForDelivery,
        Self::Delivered,
    ];

    const EXITS: &'static [(Self, &'static [Self])] = &[
        (
            Self::Cancelled,
            &[Self::Created, Self::Confirmed, Self::Preparing],
        ),
        (Self::Rejected, &[Self::Created]),
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
            Self::Cancelled => "cancelled",
            Self::Rejected => "rejected",
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
    let handover = HANDOVER.rank().unwrap_or_default();
    let (before, after) = OrderStatus::FLOW.split_at(handover + 1);
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
    /// An exit (cancelled, rejected) has no position of its own: it comes
    /// right after the step it left from (see [`Step::stage_after`]).
    pub fn stage(self) -> usize {
        tracking_flow()
            .iter()
            .position(|s| *s == self)
            .unwrap_or(usize::MAX)
    }

    /// The stage of an exit that left from `previous`.
    pub fn stage_after(previous: Step) -> usize {
        previous.stage().saturating_add(1)
    }

    /// `kind:status`, e.g. `delivery:on_the_way`.
    pub fn label(self) -> String {
        match self {
            Step::Order(s) => format!("order:{}", s.as_str()),
            Step::Delivery(s) => format!("delivery:{}", s.as_str()),
        }
    }

    /// Whether nothing comes after this step: the order was delivered,
    /// cancelled or rejected.
    pub fn is_final(self) -> bool {
        match self {
            Step::Order(s) => s.is_final(),
            Step::Delivery(_) => false,
        }
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
        // Exits: cancelled while created, confirmed or preparing; rejected while created.
        for from in [Created, Confirmed, Preparing] {
            assert_eq!(from.transition(Cancelled), Transition::Apply, "{from:?}");
        }
        assert_eq!(OutForDelivery.transition(Cancelled), Transition::Refused);
        assert_eq!(Created.transition(Rejected), Transition::Apply);
        assert_eq!(Confirmed.transition(Rejected), Transition::Refused);
        // Nothing moves a terminal order.
        for terminal in [Delivered, Cancelled, Rejected] {
            assert!(terminal.is_final());
            for to in [Confirmed, OutForDelivery, Delivered, Cancelled, Rejected] {
                assert_eq!(
                    terminal.transition(to),
                    Transition::Stale,
                    "{terminal:?} -> {to:?}"
                );
            }
        }
        assert_eq!(
            DeliveryStatus::WaitingForPickup.transition(DeliveryStatus::OnTheWay),
            Transition::Apply
        );
        // The predecessors are exactly the statuses a move applies from.
        let all = [
            Created,
            Confirmed,
            Preparing,
            OutForDelivery,
            Delivered,
            Cancelled,
            Rejected,
        ];
        for to in all {
            for from in all {
                assert_eq!(
                    from.transition(to) == Transition::Apply,
                    to.predecessors().contains(&from),
                    "{from:?} -> {to:?}"
                );
            }
        }
        for s in OrderStatus::FLOW.iter().chain([&Cancelled, &Rejected]) {
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
        assert!(Step::Order(OrderStatus::Cancelled).is_final());
        assert_eq!(Step::stage_after(Step::Order(OrderStatus::Preparing)), 3);
        assert_eq!(
            serde_json::to_value(Step::Delivery(DeliveryStatus::OnTheWay)).unwrap(),
            serde_json::json!({"kind": "delivery", "status": "on_the_way"})
        );
    }
}
