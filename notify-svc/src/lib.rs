//! notify-svc: keeps each order's timeline and pushes it to browsers.
//!
//! * A consumer group (`notify-svc`) on `orders-stream` and `deliveries-stream`
//!   persists every timeline event in MongoDB ([`consumers`], [`timeline`]).
//! * Every replica also tails both streams itself and fans events out to the
//!   sockets it holds ([`hub`]), so a tracker connected to any replica gets
//!   every update, whichever replica's group member handled the event.
//! * `GET /ws/orders/{id}`: snapshot on connect, then one message per new
//!   status, in order; ping/pong keep-alive ([`ws`]).
//! * `GET /api/v1/orders/{id}/timeline`: the same snapshot as JSON.
//! * Both need the order's tracking token (its hash arrives with
//!   `order.created.v1`); without it, 404 as for an unknown order. Payloads
//!   carry statuses only, no personal data. Sessions are capped per client,
//!   frames are small, idle sessions close ([`api`]).
//! * `GET /`, `/orders`, `/track/{id}`: the web app (menu, cart, checkout,
//!   live tracker, "my orders"); `GET /ops`: the operator console. Static
//!   files compiled into the binary ([`web`]).
//! * After a crowd of trackers leaves, freed memory goes back to the system
//!   ([`memory`]).

pub mod api;
pub mod consumers;
pub mod hub;
pub mod memory;
pub mod settings;
pub mod timeline;
pub mod web;
pub mod ws;

use common::service::{Runtime, StartError};
use contract::{
    events::{DeliveriesEvent, OrdersEvent},
    redis as redis_conn,
    streams::groups,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use settings::Settings;

use crate::{consumers::TimelineHandler, hub::Hub, timeline::TimelineStore};

/// Runs notify-svc on `listener` until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let mut rt = Runtime::new(&settings.common, shutdown.clone())?;
    let store = TimelineStore::new(&rt.mongo().await?, &settings.common.mongo_db)
        .with_linger(settings.timeline_linger);
    let handler = TimelineHandler {
        store: store.clone(),
    };
    rt.consume::<OrdersEvent, _>(groups::NOTIFY_SVC, handler.clone())?;
    rt.consume::<DeliveriesEvent, _>(groups::NOTIFY_SVC, handler)?;

    let hub = Hub::new(settings.recent_ttl);
    rt.sampler(hub.clone(), |h| {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("websocket_sessions").set(h.subscribers() as f64);
        std::future::ready(())
    });
    // Every partition is tailed by every replica (a tracker may be on any).
    let ns = rt.namespace();
    let partitions: Vec<u16> = ns.partition_range().collect();
    let tails: Vec<&[u16]> = if rt.redis.is_cluster() {
        partitions.chunks(1).collect()
    } else {
        vec![&partitions]
    };
    for parts in tails {
        let tail_conn = redis_conn::blocking(&rt.redis, hub::TAIL_BLOCK)?;
        let (h, keys) = (hub.clone(), hub::tail_keys(&ns, parts));
        rt.spawn(move |token| hub::tail(h, tail_conn, keys, token));
    }

    let state = api::AppState::new(&settings, store, hub, shutdown);
    let sessions = state.sessions.clone();
    rt.spawn(move |token| memory::trim_after_crowds(sessions, token));
    let router = api::router(state).layer(common::http::cors(&settings.edge.cors_allowed_origins));
    rt.serve(listener, router).await
}
