//! order-svc: the menu, order creation and order lookup.
//!
//! * `GET /api/v1/menu`, `GET /api/v1/menu/{id}`: the menu with live stock;
//! * `POST /api/v1/orders`: validates the request ([`domain`]), then in one
//!   MongoDB transaction reserves the stock of every item (only where enough
//!   is left), stores the order and writes `order.created.v1` (for
//!   `orders-stream`) and a kitchen simulation request (for
//!   `simulate-order-stream`) to the outbox ([`store`], [`events`]); the outbox
//!   relay publishes them. An `Idempotency-Key` makes retries safe
//!   ([`idempotency`]);
//! * `POST` answers, once, the order's tracking token ([`contract::auth`]);
//!   `GET /api/v1/orders/{id}`, the order and its current status, needs it
//!   (`Authorization: Bearer <token>`; without it: 404, as for no order);
//! * order creation is rate-limited per client (429 with `Retry-After`),
//!   bodies are bounded (413), and CORS allows only `CORS_ALLOWED_ORIGINS`;
//! * `/api/v1/admin/...` ([`admin`]) is for operators, with `ADMIN_TOKEN`;
//! * it consumes `order-status-stream` and `deliveries-stream` to move orders
//!   through their lifecycle ([`consumers`]), writing
//!   `order.status_updated.v1` to the outbox with each change.
//!
//! Every error is JSON `{error, message, fields?}` ([`error`]); no input
//! produces a 500, and database contention is retried, never reported.

pub mod admin;
pub mod api;
pub mod consumers;
pub mod domain;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod placing;
pub mod settings;
pub mod store;
pub mod views;

use std::sync::Arc;

use common::{
    service::{Runtime, StartError},
    settings::RETENTION_SWEEP_EVERY,
};
use contract::{
    events::{DeliveriesEvent, OrderStatusEvent},
    streams::groups,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use settings::Settings;

use crate::{
    consumers::StatusHandler,
    settings::{Limits, OrderRate},
    store::Store,
};

/// What request handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Menu, orders, outbox, idempotency keys.
    pub store: Store,
    /// Input limits.
    pub limits: Limits,
    /// Base of the tracking URLs handed out with new orders.
    pub tracker_base_url: Arc<str>,
    /// The per-client limit on order creation.
    pub order_rate: OrderRate,
    /// Trust `X-Forwarded-For` for client addresses.
    pub trust_forwarded_for: bool,
}

/// How often the rate limiter forgets clients it has not seen for a while.
const RATE_LIMIT_CLEANUP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs order-svc on `listener` until `shutdown` is cancelled.
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
    let handler = StatusHandler {
        store: store.clone(),
    };
    rt.consume::<OrderStatusEvent, _>(groups::ORDER_SVC, handler.clone())?;
    rt.consume::<DeliveriesEvent, _>(groups::ORDER_SVC, handler)?;
    rt.relay(&store.outbox);
    let ttl = settings.idempotency_ttl;
    rt.every(RETENTION_SWEEP_EVERY, store.clone(), move |s| async move {
        s.keys.sweep(ttl).await;
    });
    if settings.admin_token.is_none() {
        tracing::warn!("no ADMIN_TOKEN: the admin API refuses every request");
    }
    let (router, limiter) = app(&settings, store, rt.conn.clone());
    if let Some(limiter) = limiter {
        rt.every(RATE_LIMIT_CLEANUP_EVERY, limiter, |l| async move {
            l.retain_recent();
        });
    }
    rt.serve(listener, router).await
}

/// Every route of order-svc (the REST API, the admin API, CORS), and the
/// order-creation rate limiter if there is one: what `run` serves, and what
/// the in-process tests call.
pub fn app(
    settings: &Settings,
    store: Store,
    redis: contract::redis::Conn,
) -> (axum::Router, Option<api::Limiter>) {
    let admin = admin::AdminState {
        store: store.clone(),
        redis,
        ns: settings.common.namespace(),
        token: settings.admin_token.clone().map(Arc::new),
    };
    let (router, limiter) = api::router(AppState {
        store,
        limits: settings.limits,
        tracker_base_url: settings.tracker_base_url.clone().into(),
        order_rate: settings.order_rate,
        trust_forwarded_for: settings.edge.trust_forwarded_for,
    });
    let router = router
        .merge(admin::router(admin))
        .layer(common::http::cors(&settings.edge.cors_allowed_origins));
    (router, limiter)
}

/// Inserts the shipped menu's missing items; returns how many were inserted.
pub async fn seed_menu(settings: &Settings) -> anyhow::Result<usize> {
    let client =
        common::mongo::connect(settings.common.mongo_url.expose(), "order-svc-seed").await?;
    let store = Store::new(
        client,
        &settings.common.mongo_db,
        settings.common.namespace(),
    );
    store.ensure_indexes().await?;
    let items: Vec<store::SeedItem> = serde_json::from_str(store::SEED_MENU)?;
    Ok(store.seed_menu(&items).await?)
}
