//! What order-svc reacts to.
//!
//! * `order-status-stream`, `order.status_changed.v1`: the kitchen moved an order on;
//! * `deliveries-stream`, `delivery.status_updated.v1` with status `delivered`:
//!   the courier handed it over, so the order is delivered too.
//!
//! Either way the order moves only to its next status (see
//! [`common::events::Lifecycle`]); the change is published as
//! `order.status_updated.v1`. Duplicates and stale events are acknowledged
//! and ignored; an event that skips ahead is retried until its predecessor
//! has been applied (or dead-lettered after `MAX_ATTEMPTS`).

use common::{
    consumer::{Handler, HandlerError, Message, Outcome},
    events::{
        DELIVERY_STATUS_UPDATED_V1, DeliveryStatus, DeliveryStatusUpdated, ORDER_STATUS_CHANGED_V1,
        OrderStatus, OrderStatusChanged,
    },
};
use tracing::info;

use crate::{
    domain::parse_id,
    publish::Events,
    store::{StatusChange, Store},
};

/// Applies status events to orders.
#[derive(Debug, Clone)]
pub struct StatusHandler {
    /// Orders.
    pub store: Store,
    /// Where the resulting events go.
    pub events: Events,
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
        match self
            .store
            .apply_status(id, to)
            .await
            .map_err(HandlerError::retry)?
        {
            StatusChange::Moved { order, previous } => {
                self.events
                    .order_status_updated(&order, previous, &msg.envelope.correlation_id)
                    .await;
                info!(order_id, status = to.as_str(), "order status updated");
                Ok(Outcome::Done)
            }
            StatusChange::Stale(current) => {
                info!(
                    order_id,
                    current = current.as_str(),
                    event = to.as_str(),
                    "duplicate or stale status event ignored"
                );
                Ok(Outcome::Skipped)
            }
            StatusChange::Early(current) => Err(HandlerError::retry(format!(
                "order {order_id} is {}; {} must wait for the statuses before it",
                current.as_str(),
                to.as_str()
            ))),
            StatusChange::Missing => Err(HandlerError::retry(format!(
                "order {order_id} does not exist"
            ))),
        }
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
