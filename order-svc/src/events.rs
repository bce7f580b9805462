//! The events order-svc writes to its outbox, built from committed state.

use contract::{
    Envelope, OrderId,
    events::{Event, OrderCreated, OrderStatusUpdated, SimulationOrderRequested},
    status::{HANDOVER, OrderStatus},
    streams::{Stream, services},
};

use crate::store::Order;

/// The service name used as `source`.
pub const SOURCE: &str = services::ORDER_SVC;

fn order_id(order: &Order) -> OrderId {
    OrderId::from_bytes(order.id.bytes())
}

fn envelope<E: Event>(event: &E, correlation_id: &str) -> (Stream, Envelope) {
    (E::STREAM, Envelope::of(event, correlation_id, SOURCE))
}

/// `order.created.v1` and the kitchen simulation request.
pub fn order_created(order: &Order) -> [(Stream, Envelope); 2] {
    let created = OrderCreated {
        order_id: order_id(order),
        status: order.status,
        customer: order.customer.clone(),
        items: order.items.clone(),
        total_cents: order.total_cents,
        version: order.version,
        created_at: order.created_at,
        tracking_token_hash: order.tracking_token_hash,
    };
    let simulate = SimulationOrderRequested {
        order_id: order_id(order),
    };
    [
        envelope(&created, &order.correlation_id),
        envelope(&simulate, &order.correlation_id),
    ]
}

/// `order.status_updated.v1`.
pub fn order_status_updated(
    order: &Order,
    previous: OrderStatus,
    correlation_id: &str,
) -> Envelope {
    let updated = OrderStatusUpdated {
        order_id: order_id(order),
        status: order.status,
        previous,
        version: order.version,
        customer: (order.status == HANDOVER).then(|| order.customer.clone()),
    };
    Envelope::of(&updated, correlation_id, SOURCE)
}
