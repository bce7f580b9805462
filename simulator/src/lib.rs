//! simulator: plays the kitchen and the courier.
//!
//! It consumes `simulate-order-stream` and `simulate-delivery-stream`; each
//! request starts a chain of durable timers ([`timers`]) that publish, after
//! configurable delays,
//!
//! * `order.status_changed.v1` to `order-status-stream`: confirmed → preparing → out_for_delivery;
//! * `delivery.status_changed.v1` to `delivery-status-stream`: on_the_way → delivered.
//!
//! Pending timers live in Redis, so a restart loses nothing and any replica
//! can fire them. It serves only `/healthz` and `/readyz`.
//!
//! Its inbox is the "simulation started" marker: a request is applied with
//! `SET NX` on a key per order (or delivery) in the same script that schedules
//! the first step, so a redelivered or duplicated request, whatever its event
//! id, never starts a second chain.

pub mod settings;
pub mod timers;

use common::{
    consumer::{Handler, HandlerError, Message, Outcome},
    service::{Runtime, StartError},
};
use contract::{
    OrderId,
    events::{OrdersEvent, SimulateDeliveryEvent, SimulateOrderEvent},
    streams::groups,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use settings::Settings;

use crate::timers::{Kind, Timers};

/// Starts a timer chain per simulation request.
#[derive(Debug, Clone)]
pub struct RequestHandler {
    /// The timer set.
    pub timers: Timers,
}

impl RequestHandler {
    async fn start<E>(
        &self,
        msg: &Message<E>,
        kind: Kind,
        id: String,
        order_id: OrderId,
    ) -> Result<Outcome, HandlerError> {
        let corr = &msg.envelope.correlation_id;
        let started = self
            .timers
            .start(kind, &id, order_id, corr)
            .await
            .map_err(HandlerError::from_redis)?;
        if started {
            info!(?kind, %id, "simulation started");
            Ok(Outcome::Done)
        } else {
            info!(?kind, %id, "simulation already started; duplicate request ignored");
            Ok(Outcome::Skipped)
        }
    }
}

impl Handler<SimulateOrderEvent> for RequestHandler {
    async fn handle(&self, msg: &Message<SimulateOrderEvent>) -> Result<Outcome, HandlerError> {
        let SimulateOrderEvent::Requested(p) = &msg.event;
        self.start(msg, Kind::Order, p.order_id.to_string(), p.order_id)
            .await
    }
}

/// The end of an order (cancelled by its customer, or rejected) stops its
/// kitchen: no pending step of it fires.
impl Handler<OrdersEvent> for RequestHandler {
    async fn handle(&self, msg: &Message<OrdersEvent>) -> Result<Outcome, HandlerError> {
        let order_id = match &msg.event {
            OrdersEvent::Cancelled(p) => p.order_id,
            OrdersEvent::Rejected(p) => p.order_id,
            OrdersEvent::Created(_) | OrdersEvent::StatusUpdated(_) => return Ok(Outcome::Skipped),
        };
        let dropped = self
            .timers
            .drop_order(order_id)
            .await
            .map_err(HandlerError::from_redis)?;
        info!(%order_id, dropped, "order ended; its kitchen stops");
        Ok(Outcome::Done)
    }
}

impl Handler<SimulateDeliveryEvent> for RequestHandler {
    async fn handle(&self, msg: &Message<SimulateDeliveryEvent>) -> Result<Outcome, HandlerError> {
        let SimulateDeliveryEvent::Requested(p) = &msg.event;
        self.start(msg, Kind::Delivery, p.delivery_id.to_string(), p.order_id)
            .await
    }
}

/// The OpenAPI document of the simulator (served at `/api/v1/openapi.json`):
/// only the operations routes every service has.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(info(
    title = "foodchain simulator",
    description = "Plays kitchen and courier; it serves only health, readiness and metrics. Generated; do not edit docs/openapi/simulator.json by hand (`cargo run -p apidocs`)."
))]
pub struct ApiDoc;

/// The simulator's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    common::http::openapi_document(<ApiDoc as utoipa::OpenApi>::openapi())
}

/// Runs the simulator until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let mut rt = Runtime::new(&settings.common, shutdown)?;
    let timers = Timers::new(
        rt.conn.clone(),
        rt.namespace(),
        settings.delays,
        &settings.common.service_name,
    )
    .with_poll(settings.poll)
    .with_kitchen(settings.kitchen);
    let handler = RequestHandler {
        timers: timers.clone(),
    };
    rt.consume::<SimulateOrderEvent, _>(groups::SIMULATOR, handler.clone())?;
    rt.consume::<SimulateDeliveryEvent, _>(groups::SIMULATOR, handler.clone())?;
    rt.consume::<OrdersEvent, _>(groups::SIMULATOR, handler)?;
    rt.sampler(timers.clone(), |t| async move {
        if let Ok(n) = t.pending().await {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("simulator_timers_pending").set(n as f64);
        }
    });
    // Each partition's timers fire where its consumers run.
    rt.per_partition(groups::SIMULATOR, move |p, token| {
        timers.clone().run(p, token)
    });
    rt.serve(listener, common::http::openapi_route(openapi()))
        .await
}
