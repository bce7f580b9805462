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
//! * `GET /api/v1/orders/{id}`: the order and its current status;
//! * it consumes `order-status-stream` and `deliveries-stream` to move orders
//!   through their lifecycle ([`consumers`]), writing
//!   `order.status_updated.v1` to the outbox with each change.
//!
//! Every error is JSON `{error, message, fields?}` ([`error`]); no input
//! produces a 500, and database contention is retried, never reported.

pub mod api;
pub mod consumers;
pub mod domain;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod settings;
pub mod store;
pub mod views;

use axum::http::{HeaderName, HeaderValue, Method, header};
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
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use settings::Settings;

use crate::{consumers::StatusHandler, settings::Limits, store::Store};

/// What request handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Menu, orders, outbox, inbox, idempotency keys.
    pub store: Store,
    /// Input limits.
    pub limits: Limits,
}

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
    let retention = (common.inbox_retention, settings.idempotency_ttl);
    rt.every(
        RETENTION_SWEEP_EVERY,
        (store.clone(), retention),
        |(s, (inbox, keys))| async move {
            s.inbox.sweep(inbox).await;
            s.keys.sweep(keys).await;
        },
    );
    let router = api::router(AppState {
        store,
        limits: settings.limits,
    })
    .layer(cors(&settings.cors_allow_origin));
    rt.serve(listener, router).await
}

fn cors(allow: &str) -> CorsLayer {
    let origin = if allow.trim() == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            allow
                .split(',')
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            HeaderName::from_static(api::CORRELATION_HEADER),
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            header::LOCATION,
            HeaderName::from_static(api::CORRELATION_HEADER),
        ])
}

/// Inserts the shipped menu's missing items; returns how many were inserted.
pub async fn seed_menu(settings: &Settings) -> anyhow::Result<usize> {
    let client = common::mongo::connect(&settings.common.mongo_url, "order-svc-seed").await?;
    let store = Store::new(
        client,
        &settings.common.mongo_db,
        settings.common.namespace(),
    );
    store.ensure_indexes().await?;
    let items: Vec<store::SeedItem> = serde_json::from_str(store::SEED_MENU)?;
    Ok(store.seed_menu(&items).await?)
}
