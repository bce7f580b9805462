//! What delivery-svc reacts to. Both handlers commit their effect, the
//! event's inbox entry and their outgoing events in one transaction, then
//! wake the outbox relay.

use bson::oid::ObjectId;
use common::{
    consumer::{Handler, HandlerError, Message, Outcome},
    events::{
        DELIVERY_STATUS_CHANGED_V1, DeliveryStatusChanged, ORDER_STATUS_UPDATED_V1, OrderStatus,
        OrderStatusUpdated,
    },
};
use tracing::info;

use crate::store::{Creation, Store};

/// `orders-stream`: creates a delivery when an order goes out for delivery.
#[derive(Debug, Clone)]
pub struct OrdersHandler {
    /// Deliveries, outbox, inbox.
    pub store: Store,
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
            .create(&p.order_id, &customer.address, &msg.envelope)
            .await
            .map_err(HandlerError::from_mongo)?;
        match created {
            Creation::Created(d) => {
                self.store.outbox.wake();
                info!(order_id = %p.order_id, delivery_id = %d.id, "delivery created");
                Ok(Outcome::Done)
            }
            Creation::Exists => {
                info!(order_id = %p.order_id, "the order already has its delivery; ignored");
                Ok(Outcome::Skipped)
            }
            Creation::Duplicate => {
                info!(order_id = %p.order_id, "event already handled (inbox); duplicate ignored");
                Ok(Outcome::Skipped)
            }
        }
    }
}

/// `delivery-status-stream`: applies the courier's status changes.
#[derive(Debug, Clone)]
pub struct CourierHandler {
    /// Deliveries, outbox, inbox.
    pub store: Store,
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
        self.store
            .apply_status(id, p.status, &msg.envelope)
            .await
            .map_err(HandlerError::from_mongo)?
            .outcome("delivery", &p.delivery_id, p.status)
    }
}
