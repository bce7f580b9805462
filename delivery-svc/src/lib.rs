//! delivery-svc: owns deliveries.
//!
//! * consumes `orders-stream`: when an order goes out for delivery
//!   (`order.status_updated.v1` with status `out_for_delivery`) it creates the
//!   order's one delivery (a unique index on `order_id` makes a second one
//!   impossible), then publishes `delivery.created.v1` to `deliveries-stream`
//!   and a courier simulation request to `simulate-delivery-stream`;
//! * consumes `delivery-status-stream`: applies each courier status change that
//!   is the delivery's next status and publishes `delivery.status_updated.v1`;
//! * serves `GET /api/v1/deliveries/{id}` and `GET /api/v1/deliveries?order_id=`.

pub mod api;
pub mod consumers;
pub mod publish;
pub mod settings;
pub mod store;

use common::{
    service::{Runtime, StartError},
    streams::{Stream, groups},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use settings::Settings;

use crate::{
    consumers::{CourierHandler, OrdersHandler},
    publish::Events,
    store::Store,
};

/// Runs delivery-svc on `listener` until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let rt = Runtime::new(&settings.common, shutdown)?;
    let store = Store::new(rt.with_mongo().await?, &settings.common.mongo_db);
    let events = Events::new(rt.publisher.clone(), &settings.common.service_name);
    let s = store.clone();
    rt.initialise("creating indexes", move || {
        let s = s.clone();
        async move { s.ensure_indexes().await }
    });
    rt.consume(
        Stream::Orders,
        groups::DELIVERY_SVC,
        OrdersHandler {
            store: store.clone(),
            events: events.clone(),
        },
    )?;
    rt.consume(
        Stream::DeliveryStatus,
        groups::DELIVERY_SVC,
        CourierHandler {
            store: store.clone(),
            events,
        },
    )?;
    rt.serve(listener, api::router(store)).await
}
