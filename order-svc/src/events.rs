//! The events order-svc writes to its outbox, built from committed state.

use contract::{
    Envelope, OrderId,
    events::{
        Event, OrderCancelled, OrderCreated, OrderRejected, OrderStatusUpdated, Restocked,
        SimulationOrderRequested,
    },
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

/// The fact of an order's move from `previous`: `order.cancelled.v1` and
/// `order.rejected.v1` for the exits (with the stock they put back),
/// `order.status_updated.v1` otherwise.
pub fn order_moved(order: &Order, previous: OrderStatus, correlation_id: &str) -> Envelope {
    let restocked = || {
        order
            .items
            .iter()
            .map(|l| Restocked {
                item_id: l.item_id,
                quantity: l.quantity,
            })
            .collect()
    };
    match order.status {
        OrderStatus::Cancelled => Envelope::of(
            &OrderCancelled {
                order_id: order_id(order),
                previous,
                version: order.version,
                reason: order.end_reason.clone(),
                restocked: restocked(),
            },
            correlation_id,
            SOURCE,
        ),
        OrderStatus::Rejected => Envelope::of(
            &OrderRejected {
                order_id: order_id(order),
                previous,
                version: order.version,
                reason: order.end_reason.clone().unwrap_or_default(),
                restocked: restocked(),
            },
            correlation_id,
            SOURCE,
        ),
        status => Envelope::of(
            &OrderStatusUpdated {
                order_id: order_id(order),
                status,
                previous,
                version: order.version,
                customer: (status == HANDOVER).then(|| order.customer.clone()),
            },
            correlation_id,
            SOURCE,
        ),
    }
}
