//! The one place order-svc's committed changes become events.
//!
//! Today the events are published right after the transaction commits; if
//! Redis is unreachable at that moment they are logged and lost. The
//! transactional outbox (next step) replaces the body of these functions only.

use common::{
    Envelope,
    events::{
        ORDER_CREATED_V1, ORDER_STATUS_UPDATED_V1, OrderCreated, OrderStatus, OrderStatusUpdated,
        SIMULATION_ORDER_REQUESTED_V1, SimulationOrderRequested,
    },
    publisher::Publisher,
    streams::Stream,
};
use tracing::error;

use crate::store::Order;

/// Publishes order-svc's events.
#[derive(Debug, Clone)]
pub struct Events {
    publisher: Publisher,
    source: String,
}

impl Events {
    /// Events published with `publisher`, `source` naming this service.
    pub fn new(publisher: Publisher, source: &str) -> Self {
        Self {
            publisher,
            source: source.to_owned(),
        }
    }

    fn envelope(
        &self,
        event_type: &str,
        order: &Order,
        correlation_id: &str,
        payload: &impl serde::Serialize,
    ) -> Option<Envelope> {
        Envelope::new(
            event_type,
            order.id.to_hex(),
            correlation_id,
            &self.source,
            payload,
        )
        .inspect_err(|e| error!(error = %e, "cannot serialise event"))
        .ok()
    }

    /// `order.created.v1` and the kitchen simulation request.
    pub async fn order_created(&self, order: &Order) {
        let created = OrderCreated {
            order_id: order.id.to_hex(),
            status: order.status,
            customer: order.customer.clone(),
            items: order.items.clone(),
            total_cents: order.total_cents,
            version: order.version,
            created_at: order.created_at,
        };
        let simulate = SimulationOrderRequested {
            order_id: order.id.to_hex(),
        };
        let events = [
            (
                Stream::Orders,
                self.envelope(ORDER_CREATED_V1, order, &order.correlation_id, &created),
            ),
            (
                Stream::SimulateOrder,
                self.envelope(
                    SIMULATION_ORDER_REQUESTED_V1,
                    order,
                    &order.correlation_id,
                    &simulate,
                ),
            ),
        ];
        self.publish(&events).await;
    }

    /// `order.status_updated.v1`.
    pub async fn order_status_updated(
        &self,
        order: &Order,
        previous: OrderStatus,
        correlation_id: &str,
    ) {
        let updated = OrderStatusUpdated {
            order_id: order.id.to_hex(),
            status: order.status,
            previous,
            version: order.version,
            customer: (order.status == OrderStatus::OutForDelivery).then(|| order.customer.clone()),
        };
        self.publish(&[(
            Stream::Orders,
            self.envelope(ORDER_STATUS_UPDATED_V1, order, correlation_id, &updated),
        )])
        .await;
    }

    async fn publish(&self, events: &[(Stream, Option<Envelope>)]) {
        let events: Vec<(Stream, &Envelope)> = events
            .iter()
            .filter_map(|(s, e)| Some((*s, e.as_ref()?)))
            .collect();
        if let Err(e) = self.publisher.publish_all(&events).await {
            error!(error = %e, count = events.len(), "publishing after commit failed; events lost");
        }
    }
}
