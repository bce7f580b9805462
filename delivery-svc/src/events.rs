//! The events delivery-svc writes to its outbox, built from committed state.

use common::{
    Envelope,
    events::{
        DELIVERY_CREATED_V1, DELIVERY_STATUS_UPDATED_V1, DeliveryCreated, DeliveryStatus,
        DeliveryStatusUpdated, SIMULATION_DELIVERY_REQUESTED_V1, SimulationDeliveryRequested,
    },
    streams::Stream,
};

use crate::store::Delivery;

/// The service name used as `source`.
pub const SOURCE: &str = "delivery-svc";

fn envelope(
    event_type: &str,
    d: &Delivery,
    correlation_id: &str,
    payload: &impl serde::Serialize,
) -> Envelope {
    // Keyed by order: one order's events stay in order for every consumer.
    Envelope::new(event_type, &d.order_id, correlation_id, SOURCE, payload)
        .expect("event payloads are plain structs and always serialise")
}

/// `delivery.created.v1` and the courier simulation request.
pub fn delivery_created(d: &Delivery) -> [(Stream, Envelope); 2] {
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
    [
        (
            Stream::Deliveries,
            envelope(DELIVERY_CREATED_V1, d, &d.correlation_id, &created),
        ),
        (
            Stream::SimulateDelivery,
            envelope(
                SIMULATION_DELIVERY_REQUESTED_V1,
                d,
                &d.correlation_id,
                &simulate,
            ),
        ),
    ]
}

/// `delivery.status_updated.v1`.
pub fn delivery_status_updated(
    d: &Delivery,
    previous: DeliveryStatus,
    correlation_id: &str,
) -> Envelope {
    let updated = DeliveryStatusUpdated {
        delivery_id: d.id.to_hex(),
        order_id: d.order_id.clone(),
        status: d.status,
        previous,
        version: d.version,
    };
    envelope(DELIVERY_STATUS_UPDATED_V1, d, correlation_id, &updated)
}
