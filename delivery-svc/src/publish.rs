//! The one place delivery-svc's committed changes become events (published
//! right after the write; the transactional outbox replaces the body).

use common::{
    Envelope,
    events::{
        DELIVERY_CREATED_V1, DELIVERY_STATUS_UPDATED_V1, DeliveryCreated, DeliveryStatus,
        DeliveryStatusUpdated, SIMULATION_DELIVERY_REQUESTED_V1, SimulationDeliveryRequested,
    },
    publisher::Publisher,
    streams::Stream,
};
use tracing::error;

use crate::store::Delivery;

/// Publishes delivery-svc's events.
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
        d: &Delivery,
        correlation_id: &str,
        payload: &impl serde::Serialize,
    ) -> Option<Envelope> {
        // Keyed by order: one order's events stay in order for every consumer.
        Envelope::new(
            event_type,
            &d.order_id,
            correlation_id,
            &self.source,
            payload,
        )
        .inspect_err(|e| error!(error = %e, "cannot serialise event"))
        .ok()
    }

    /// `delivery.created.v1` and the courier simulation request.
    pub async fn delivery_created(&self, d: &Delivery) {
        let created = DeliveryCreated {
            delivery_id: d.id.to_hex(),
            order_id: d.order_id.clone(),
            status: d.status,
            address: d.address.clone(),
            version: d.version,
            created_at: d.created_at,
        };
        let simulate = SimulationDeliveryRequested {
            delivery_id: d.id.to_hex(),
            order_id: d.order_id.clone(),
        };
        let events = [
            (
                Stream::Deliveries,
                self.envelope(DELIVERY_CREATED_V1, d, &d.correlation_id, &created),
            ),
            (
                Stream::SimulateDelivery,
                self.envelope(
                    SIMULATION_DELIVERY_REQUESTED_V1,
                    d,
                    &d.correlation_id,
                    &simulate,
                ),
            ),
        ];
        self.publish(&events).await;
    }

    /// `delivery.status_updated.v1`.
    pub async fn delivery_status_updated(
        &self,
        d: &Delivery,
        previous: DeliveryStatus,
        correlation_id: &str,
    ) {
        let updated = DeliveryStatusUpdated {
            delivery_id: d.id.to_hex(),
            order_id: d.order_id.clone(),
            status: d.status,
            previous,
            version: d.version,
        };
        self.publish(&[(
            Stream::Deliveries,
            self.envelope(DELIVERY_STATUS_UPDATED_V1, d, correlation_id, &updated),
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
