//! Event type names. A new incompatible payload gets a new version (`.v2`)
//! and both are published until every consumer reads the new one.

/// An order was accepted and its stock reserved (orders-stream).
pub const ORDER_CREATED_V1: &str = "order.created.v1";
/// An order moved to a new status (orders-stream).
pub const ORDER_STATUS_UPDATED_V1: &str = "order.status_updated.v1";
/// A delivery was created for an order (deliveries-stream).
pub const DELIVERY_CREATED_V1: &str = "delivery.created.v1";
/// A delivery moved to a new status (deliveries-stream).
pub const DELIVERY_STATUS_UPDATED_V1: &str = "delivery.status_updated.v1";
/// The kitchen moved an order on (order-status-stream).
pub const ORDER_STATUS_CHANGED_V1: &str = "order.status_changed.v1";
/// The courier moved a delivery on (delivery-status-stream).
pub const DELIVERY_STATUS_CHANGED_V1: &str = "delivery.status_changed.v1";
/// Please simulate this order's kitchen (simulate-order-stream).
pub const SIMULATION_ORDER_REQUESTED_V1: &str = "simulation.order_requested.v1";
/// Please simulate this delivery's courier (simulate-delivery-stream).
pub const SIMULATION_DELIVERY_REQUESTED_V1: &str = "simulation.delivery_requested.v1";
