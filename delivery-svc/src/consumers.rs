//! What delivery-svc reacts to.

use bson::oid::ObjectId;
use common::{
    consumer::{Handler, HandlerError, Message, Outcome},
    events::{
        DELIVERY_STATUS_CHANGED_V1, DeliveryStatusChanged, ORDER_STATUS_UPDATED_V1, OrderStatus,
        OrderStatusUpdated,
    },
};
use tracing::info;

use crate::{
    publish::Events,
    store::{StatusChange, Store},
};

/// `orders-stream`: creates a delivery when an order goes out for delivery.
#[derive(Debug, Clone)]
pub struct OrdersHandler {
    /// Deliveries.
    pub store: Store,
    /// Events out.
    pub events: Events,
}

impl Handler for OrdersHandler {
    async fn handle(&self, msg: &Message) -> Result<Outcome, HandlerError> {
        if msg.envelope.event_type != ORDER_STATUS_UPDATED_V1 {
            return Ok(Outcome::Skipped);
        }
        let p: OrderStatusUpdated = msg.payload()?;
        if p.status != OrderStatus::OutForDelivery {
            return Ok(Outcome::Skipped);
        }
        let customer = p.customer.ok_or_else(|| {
            HandlerError::reject("an out_for_delivery event without the customer's address")
        })?;
        let created = self
            .store
            .create(&p.order_id, &customer.address, &msg.envelope.correlation_id)
            .await
            .map_err(HandlerError::retry)?;
        match created {
            Some(d) => {
                self.events.delivery_created(&d).await;
                info!(order_id = %p.order_id, delivery_id = %d.id, "delivery created");
                Ok(Outcome::Done)
            }
            None => {
                info!(order_id = %p.order_id, "the order already has its delivery; duplicate ignored");
                Ok(Outcome::Skipped)
            }
        }
    }
}

/// `delivery-status-stream`: applies the courier's status changes.
#[derive(Debug, Clone)]
pub struct CourierHandler {
    /// Deliveries.
    pub store: Store,
    /// Events out.
    pub events: Events,
}

impl Handler for CourierHandler {
    async fn handle(&self, msg: &Message) -> Result<Outcome, HandlerError> {
        if msg.envelope.event_type != DELIVERY_STATUS_CHANGED_V1 {
            return Ok(Outcome::Skipped);
        }
        let p: DeliveryStatusChanged = msg.payload()?;
        let id = ObjectId::parse_str(&p.delivery_id).map_err(|_| {
            HandlerError::reject(format!("`{}` is not a delivery id", p.delivery_id))
        })?;
        match self
            .store
            .apply_status(id, p.status)
            .await
            .map_err(HandlerError::retry)?
        {
            StatusChange::Moved { delivery, previous } => {
                self.events
                    .delivery_status_updated(&delivery, previous, &msg.envelope.correlation_id)
                    .await;
                info!(delivery_id = %p.delivery_id, status = p.status.as_str(), "delivery status updated");
                Ok(Outcome::Done)
            }
            StatusChange::Stale(current) => {
                info!(delivery_id = %p.delivery_id, current = current.as_str(), event = p.status.as_str(), "duplicate or stale status event ignored");
                Ok(Outcome::Skipped)
            }
            StatusChange::Early(current) => Err(HandlerError::retry(format!(
                "delivery {} is {}; {} must wait for the statuses before it",
                p.delivery_id,
                current.as_str(),
                p.status.as_str()
            ))),
            StatusChange::Missing => Err(HandlerError::retry(format!(
                "delivery {} does not exist",
                p.delivery_id
            ))),
        }
    }
}
