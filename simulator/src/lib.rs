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

use axum::Router;
use common::{
    consumer::{Handler, HandlerError, Message, Outcome},
    events::{
        SIMULATION_DELIVERY_REQUESTED_V1, SIMULATION_ORDER_REQUESTED_V1,
        SimulationDeliveryRequested, SimulationOrderRequested,
    },
    service::{Runtime, StartError},
    streams::{Stream, groups},
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

impl Handler for RequestHandler {
    async fn handle(&self, msg: &Message) -> Result<Outcome, HandlerError> {
        let corr = &msg.envelope.correlation_id;
        let (kind, id, order_id) = match msg.envelope.event_type.as_str() {
            SIMULATION_ORDER_REQUESTED_V1 => {
                let p: SimulationOrderRequested = msg.payload()?;
                (Kind::Order, p.order_id.clone(), p.order_id)
            }
            SIMULATION_DELIVERY_REQUESTED_V1 => {
                let p: SimulationDeliveryRequested = msg.payload()?;
                (Kind::Delivery, p.delivery_id, p.order_id)
            }
            _ => return Ok(Outcome::Skipped),
        };
        let started = self
            .timers
            .start(kind, &id, &order_id, corr)
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
        settings.common.stream_maxlen,
        settings.delays,
        &settings.common.service_name,
    )
    .with_poll(settings.poll);
    for stream in [Stream::SimulateOrder, Stream::SimulateDelivery] {
        let handler = RequestHandler {
            timers: timers.clone(),
        };
        rt.consume(stream, groups::SIMULATOR, handler)?;
    }
    rt.sampler(timers.clone(), |t| async move {
        if let Ok(n) = t.pending().await {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("simulator_timers_pending").set(n as f64);
        }
    });
    rt.spawn(|token| timers.run(token));
    rt.serve(listener, Router::new()).await
}
