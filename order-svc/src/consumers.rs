//! What order-svc reacts to.
//!
//! * `order-status-stream`, `order.status_changed.v1`: the kitchen moved an order on;
//! * `deliveries-stream`, `delivery.status_updated.v1` with status `delivered`:
//!   the courier handed it over, so the order is delivered too.
//!
//! Either way the order moves only to its next status (see
//! [`common::events::Lifecycle`]), and `order.status_updated.v1` goes to the
//! outbox in the same transaction, together with the event's inbox entry.
//!
//! * an event already applied (inbox) is acknowledged and ignored;
//! * a stale one (the order is at or past its status) likewise;
//! * an early one (it skips a status) is deferred until its predecessor has
//!   been applied (which may take a takeover from a dead replica), without
//!   using up attempts, and dead-lettered (`deferred_too_long`) if that never
//!   happens within `CONSUMER_MAX_DEFER_MS`: that needs an operator (see the
//!   dead-letter CLI).

use common::{
    consumer::{Handler, HandlerError, Message, Outcome},
    events::{
        DELIVERY_STATUS_UPDATED_V1, DeliveryStatus, DeliveryStatusUpdated, ORDER_STATUS_CHANGED_V1,
        OrderStatus, OrderStatusChanged,
    },
};

use crate::{domain::parse_id, store::Store};

/// Applies status events to orders.
#[derive(Debug, Clone)]
pub struct StatusHandler {
    /// Orders (and their outbox and inbox).
    pub store: Store,
}

impl StatusHandler {
    async fn advance(
        &self,
        msg: &Message,
        order_id: &str,
        to: OrderStatus,
    ) -> Result<Outcome, HandlerError> {
        let id = parse_id(order_id)
            .ok_or_else(|| HandlerError::reject(format!("`{order_id}` is not an order id")))?;
        self.store
            .apply_status(id, to, &msg.envelope)
            .await
            .map_err(HandlerError::from_mongo)?
            .outcome("order", order_id, to)
    }
}
impl Handler for StatusHandler {
    async fn handle(&self, msg: &Message) -> Result<Outcome, HandlerError> {
        match msg.envelope.event_type.as_str() {
            ORDER_STATUS_CHANGED_V1 => {
                let p: OrderStatusChanged = msg.payload()?;
                self.advance(msg, &p.order_id, p.status).await
            }
            DELIVERY_STATUS_UPDATED_V1 => {
                let p: DeliveryStatusUpdated = msg.payload()?;
                if p.status != DeliveryStatus::Delivered {
                    return Ok(Outcome::Skipped);
                }
                self.advance(msg, &p.order_id, OrderStatus::Delivered).await
            }
            _ => Ok(Outcome::Skipped),
        }
    }
}
