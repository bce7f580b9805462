//! The events delivery-svc writes to its outbox, built from committed state.
//! Every one is keyed by its order: one order's events stay in order for
//! every consumer.

use contract::{
    DeliveryId, Envelope,
    events::{DeliveryCreated, DeliveryStatusUpdated, Event, SimulationDeliveryRequested},
    status::DeliveryStatus,
    streams::{Stream, services},
};

use crate::store::Delivery;

/// The service name used as `source`.
pub const SOURCE: &str = services::DELIVERY_SVC;

fn delivery_id(d: &Delivery) -> DeliveryId {
    DeliveryId::from_bytes(d.id.bytes())
}

fn envelope<E: Event>(event: &E, correlation_id: &str) -> (Stream, Envelope) {
    (E::STREAM, Envelope::of(event, correlation_id, SOURCE))
}

/// `delivery.created.v1` and the courier simulation request.
pub fn delivery_created(d: &Delivery) -> [(Stream, Envelope); 2] {
    let created = DeliveryCreated {
        delivery_id: delivery_id(d),
        order_id: d.order_id,
        status: d.status,
        address: d.address.clone(),
        version: d.version,
        created_at: d.created_at,
    };
    let simulate = SimulationDeliveryRequested {
        delivery_id: delivery_id(d),
        order_id: d.order_id,
    };
    [
        envelope(&created, &d.correlation_id),
        envelope(&simulate, &d.correlation_id),
    ]
}

/// `delivery.status_updated.v1`.
pub fn delivery_status_updated(
    d: &Delivery,
    previous: DeliveryStatus,
    correlation_id: &str,
) -> Envelope {
    let updated = DeliveryStatusUpdated {
        delivery_id: delivery_id(d),
        order_id: d.order_id,
        status: d.status,
        previous,
        version: d.version,
    };
    Envelope::of(&updated, correlation_id, SOURCE)
}
