//! delivery-svc: owns deliveries.
//!
//! * consumes `orders-stream`: when an order goes out for delivery
//!   (`order.status_updated.v1` with status `out_for_delivery`) it creates the
//!   order's one delivery (a unique index on `order_id` makes a second one
//!   impossible) and, in the same transaction, writes `delivery.created.v1`
//!   (for `deliveries-stream`) and a courier simulation request (for
//!   `simulate-delivery-stream`) to its outbox;
//! * consumes `delivery-status-stream`: applies each courier status change that
//!   is the delivery's next status, writing `delivery.status_updated.v1` to
//!   the outbox in the same transaction;
//! * serves `GET /api/v1/deliveries/{id}` and `GET /api/v1/deliveries?order_id=`.

pub mod api;
pub mod consumers;
pub mod events;
pub mod settings;
pub mod store;

use common::service::{Runtime, StartError};
use contract::streams::groups;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use settings::Settings;

use crate::{
    consumers::{CourierHandler, OrdersHandler},
    store::Store,
};

/// Runs delivery-svc on `listener` until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let common = &settings.common;
    let mut rt = Runtime::new(common, shutdown)?;
    let store = Store::new(rt.mongo().await?, &common.mongo_db, common.namespace());
    rt.startup("creating indexes", store.clone(), |s| async move {
        s.ensure_indexes().await
    });
    let orders = OrdersHandler {
        store: store.clone(),
    };
    rt.consume(groups::DELIVERY_SVC, orders)?;
    let courier = CourierHandler {
        store: store.clone(),
    };
    rt.consume(groups::DELIVERY_SVC, courier)?;
    rt.relay(&store.outbox);
    rt.serve(listener, api::router(store)).await
}
