//! The events order-svc writes to its outbox, built from committed state.

use common::{
    Envelope,
    events::{
        ORDER_CREATED_V1, ORDER_STATUS_UPDATED_V1, OrderCreated, OrderStatus, OrderStatusUpdated,
        SIMULATION_ORDER_REQUESTED_V1, SimulationOrderRequested,
    },
    streams::Stream,
};

use crate::store::Order;

/// The service name used as `source`.
pub const SOURCE: &str = "order-svc";

fn envelope(
    event_type: &str,
    order: &Order,
    correlation_id: &str,
    payload: &impl serde::Serialize,
) -> Envelope {
    Envelope::new(
        event_type,
        order.id.to_hex(),
        correlation_id,
        SOURCE,
        payload,
    )
    .expect("event payloads are plain structs and always serialise")
}

/// `order.created.v1` and the kitchen simulation request.
pub fn order_created(order: &Order) -> [(Stream, Envelope); 2] {
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
    [
        (
            Stream::Orders,
            envelope(ORDER_CREATED_V1, order, &order.correlation_id, &created),
        ),
        (
            Stream::SimulateOrder,
            envelope(
                SIMULATION_ORDER_REQUESTED_V1,
                order,
                &order.correlation_id,
                &simulate,
            ),
        ),
    ]
}

/// `order.status_updated.v1`.
pub fn order_status_updated(
    order: &Order,
    previous: OrderStatus,
    correlation_id: &str,
) -> Envelope {
    let updated = OrderStatusUpdated {
        order_id: order.id.to_hex(),
        status: order.status,
        previous,
        version: order.version,
        customer: (order.status == OrderStatus::OutForDelivery).then(|| order.customer.clone()),
    };
    envelope(ORDER_STATUS_UPDATED_V1, order, correlation_id, &updated)
}
