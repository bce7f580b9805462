//! What delivery-svc reacts to. Both handlers commit their effect and their
//! outgoing events in one transaction, then wake the outbox relay; both
//! effects are idempotent (a redelivered event changes nothing).

use bson::oid::ObjectId;
use common::consumer::{Handler, HandlerError, Message, Outcome};
use contract::{
    events::{DeliveryStatusEvent, OrdersEvent},
    status::HANDOVER,
};
use tracing::info;

use crate::store::{Creation, Store};

/// `orders-stream`: creates a delivery when an order goes out for delivery.
#[derive(Debug, Clone)]
pub struct OrdersHandler {
    /// Deliveries and their outbox.
    pub store: Store,
}

impl Handler<OrdersEvent> for OrdersHandler {
    async fn handle(&self, msg: &Message<OrdersEvent>) -> Result<Outcome, HandlerError> {
        let p = match &msg.event {
            OrdersEvent::StatusUpdated(p) if p.status == HANDOVER => p,
            // Only an order handed to a courier gets a delivery: a cancelled
            // or rejected order never reaches out_for_delivery.
            OrdersEvent::StatusUpdated(_)
            | OrdersEvent::Created(_)
            | OrdersEvent::Cancelled(_)
            | OrdersEvent::Rejected(_) => {
                return Ok(Outcome::Skipped);
            }
        };
        let customer = p.customer.as_ref().ok_or_else(|| {
            HandlerError::reject("an out_for_delivery event without the customer's address")
        })?;
        let created = self
            .store
            .create(p.order_id, &customer.address, &msg.envelope)
            .await
            .map_err(HandlerError::from_mongo)?;
        match created {
            Creation::Created(d) => {
                info!(order_id = %p.order_id, delivery_id = %d.id, "delivery created");
                Ok(Outcome::Done)
            }
            Creation::Exists => {
                info!(order_id = %p.order_id, "the order already has its delivery; ignored");
                Ok(Outcome::Skipped)
            }
        }
    }
}

/// `delivery-status-stream`: applies the courier's status changes.
#[derive(Debug, Clone)]
pub struct CourierHandler {
    /// Deliveries and their outbox.
    pub store: Store,
}

impl Handler<DeliveryStatusEvent> for CourierHandler {
    async fn handle(&self, msg: &Message<DeliveryStatusEvent>) -> Result<Outcome, HandlerError> {
        let DeliveryStatusEvent::Changed(p) = &msg.event;
        let id = ObjectId::from_bytes(p.delivery_id.bytes());
        self.store
            .apply_status(id, p.status, &msg.envelope)
            .await
            .map_err(HandlerError::from_mongo)?
            .outcome("delivery", &p.delivery_id.to_string(), p.status)
    }

    /// A run of one order's courier steps read together: their moves in one
    /// transaction, each decided on the delivery as the ones before it left
    /// it, so the run ends as one by one would.
    async fn handle_run(
        &self,
        msgs: &[Message<DeliveryStatusEvent>],
    ) -> Vec<Result<Outcome, HandlerError>> {
        let moves = msgs
            .iter()
            .map(|m| {
                let DeliveryStatusEvent::Changed(p) = &m.event;
                let id = ObjectId::from_bytes(p.delivery_id.bytes());
                (id, p.status, &m.envelope)
            })
            .collect();
        let changes = self.store.apply_statuses(moves).await;
        msgs.iter()
            .zip(changes)
            .map(|(m, change)| {
                let DeliveryStatusEvent::Changed(p) = &m.event;
                change.map_err(HandlerError::from_mongo)?.outcome(
                    "delivery",
                    &p.delivery_id.to_string(),
                    p.status,
                )
            })
            .collect()
    }
}
