//! What order-svc reacts to.
//!
//! * `order-status-stream`, `order.status_changed.v1`: the kitchen moved an order on;
//! * `deliveries-stream`, `delivery.status_updated.v1` with status `delivered`:
//!   the courier handed it over, so the order is delivered too.
//!
//! Either way the order moves only to its next status (see
//! [`contract::status::Lifecycle`]), and `order.status_updated.v1` goes to the
//! outbox in the same transaction (see [`common::transition`]).
//!
//! * a stale event (the order is at or past its status: a redelivery, say)
//!   is acknowledged and ignored;
//! * an early one (it skips a status) is deferred until its predecessor has
//!   been applied (which may take a takeover from a dead replica), without
//!   using up attempts, and dead-lettered (`deferred_too_long`) if that never
//!   happens within `CONSUMER_MAX_DEFER_MS`: that needs an operator (see the
//!   dead-letter CLI).

use common::{
    consumer::{Handler, HandlerError, Message, Outcome},
    transition::Cause,
};
use contract::{
    OrderId,
    events::{DeliveriesEvent, OrderStatusEvent},
    status::{DeliveryStatus, OrderStatus},
};

use crate::{domain::oid, store::Store};

/// Applies status events to orders.
#[derive(Debug, Clone)]
pub struct StatusHandler {
    /// Orders (and their outbox).
    pub store: Store,
}

impl StatusHandler {
    async fn advance<E>(
        &self,
        msg: &Message<E>,
        order_id: OrderId,
        to: OrderStatus,
        reason: Option<&str>,
    ) -> Result<Outcome, HandlerError> {
        self.store
            .apply_status(
                oid(order_id.bytes()),
                to,
                Cause::Event(&msg.envelope),
                reason,
            )
            .await
            .map_err(HandlerError::from_mongo)?
            .outcome("order", &order_id.to_string(), to)
    }
}
/// Why a kitchen's `cancelled` is refused.
fn kitchen_cancel() -> HandlerError {
    HandlerError::reject("the kitchen cannot cancel an order (only its customer can); it rejects")
}

impl Handler<OrderStatusEvent> for StatusHandler {
    async fn handle(&self, msg: &Message<OrderStatusEvent>) -> Result<Outcome, HandlerError> {
        let OrderStatusEvent::Changed(p) = &msg.event;
        if p.status == OrderStatus::Cancelled {
            return Err(kitchen_cancel());
        }
        self.advance(msg, p.order_id, p.status, p.reason.as_deref())
            .await
    }

    /// A run of one order's status events (the kitchen's steps read
    /// together): their moves in one transaction, each decided on the order
    /// as the ones before it left it, so the run ends as one by one would.
    async fn handle_run(
        &self,
        msgs: &[Message<OrderStatusEvent>],
    ) -> Vec<Result<Outcome, HandlerError>> {
        let moves = msgs
            .iter()
            .filter_map(|m| {
                let OrderStatusEvent::Changed(p) = &m.event;
                (p.status != OrderStatus::Cancelled).then(|| {
                    let id = oid(p.order_id.bytes());
                    (id, p.status, Cause::Event(&m.envelope), p.reason.as_deref())
                })
            })
            .collect();
        let mut changes = self.store.apply_statuses(moves).await.into_iter();
        msgs.iter()
            .map(|m| {
                let OrderStatusEvent::Changed(p) = &m.event;
                if p.status == OrderStatus::Cancelled {
                    return Err(kitchen_cancel());
                }
                changes
                    .next()
                    .ok_or_else(|| HandlerError::retry("the move got no answer"))?
                    .map_err(HandlerError::from_mongo)?
                    .outcome("order", &p.order_id.to_string(), p.status)
            })
            .collect()
    }
}

impl Handler<DeliveriesEvent> for StatusHandler {
    async fn handle(&self, msg: &Message<DeliveriesEvent>) -> Result<Outcome, HandlerError> {
        match &msg.event {
            DeliveriesEvent::StatusUpdated(p) if p.status == DeliveryStatus::Delivered => {
                self.advance(msg, p.order_id, OrderStatus::Delivered, None)
                    .await
            }
            DeliveriesEvent::StatusUpdated(_) | DeliveriesEvent::Created(_) => Ok(Outcome::Skipped),
        }
    }
}
